"""Module-level targets that benchmark children run.

Every forkserver or spawn child imports this module, so it imports nothing but the standard
library: the benchmarks measure the libraries, not the import time of their own helpers.
"""

from __future__ import annotations

import os
import time
from typing import Any


def noop() -> None:
    """The trivial target of the sequential start+wait scenario."""


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def sleep_stamp(seconds: float) -> int:
    """Sleep; return when the target began (``time.monotonic_ns``), for worker pools."""
    began = time.monotonic_ns()
    time.sleep(seconds)
    return began


async def asleep(seconds: float) -> None:
    """aiomultiprocess runs coroutine functions only."""
    import asyncio

    await asyncio.sleep(seconds)


def exit_after(delay: float, path: str) -> None:
    """Sleep, then write the time of exit to ``path`` and leave at once (``os._exit``).

    The exit-detection scenario measures from this timestamp to the parent noticing, so the
    child's own interpreter teardown is not counted against the library that watches it.
    """
    time.sleep(delay)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    stamp = time.monotonic_ns()
    os.write(fd, str(stamp).encode())
    os._exit(0)


async def aexit_after(delay: float, path: str) -> None:
    """:func:`exit_after` for aiomultiprocess (its targets must be coroutine functions)."""
    exit_after(delay, path)


def mark_and_sleep(directory: str, index: int, seconds: float) -> None:
    """Create ``directory/index`` (so the parent knows this child runs), then sleep.

    Keeps the default SIGTERM disposition: it dies at once when terminated.
    """
    with open(os.path.join(directory, str(index)), "w"):
        pass
    time.sleep(seconds)


def wait_gate(gate: Any) -> None:
    """Block until every write end of ``gate`` (a multiprocessing Connection) is closed."""
    try:
        gate.recv_bytes()
    except EOFError:
        pass


def stamp(path: str, seconds: float) -> None:
    """The breakdown's target: sleep, and write when it began and when it ended to ``path``.

    Both stamps are ``time.monotonic_ns()``; the file is opened between them, so the write
    itself (a few microseconds) falls after the end stamp, where every library pays it alike.
    The sleep gives the parent time to have the child's exit watched by the exit observer.
    """
    began = time.monotonic_ns()
    time.sleep(seconds)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    ended = time.monotonic_ns()
    os.write(fd, f"{began} {ended}".encode())
    os.close(fd)
