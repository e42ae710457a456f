"""A parent program for tests that kill or interrupt the parent itself.

Usage: parent_program.py START_METHOD BACKEND WORKDIR [MODE]. Starts a group with a daemon and a
non-daemon child (each of which forks a grandchild), prints ``PIDS <pid> ...`` (children and
grandchildren) and then waits forever, until it is killed or interrupted. On
KeyboardInterrupt it prints ``INTERRUPTED`` after the group has stopped its children.

MODE ``nested``: the non-daemon child runs an aioproc group of its own instead, with one
grandchild that forks a great-grandchild; ``PIDS`` lists all five descendants.

MODE ``gil``: the non-daemon child, once it has forked its grandchild, holds the GIL in C code
for good (no Python code of its own can run again: signal handlers, threads).
"""

from __future__ import annotations

import itertools
import os
import sys
import time
import warnings
from pathlib import Path

import anyio

import aioproc


def _fork_grandchild(path: str) -> None:
    """Fork a grandchild that sleeps; write its pid to ``path``."""
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    _write(path, str(pid))


def sleeper_with_grandchild(path: str) -> None:
    _fork_grandchild(path)
    time.sleep(600)


def gil_holder_with_grandchild(path: str) -> None:
    _fork_grandchild(path)
    sum(itertools.repeat(1))  # a C loop that never lets go of the GIL


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


async def _read_pids(paths: list[str]) -> list[int]:
    while not all(os.path.exists(p) for p in paths):
        await anyio.sleep(0.01)
    return [int(pid) for p in paths for pid in Path(p).read_text().split()]


def nested_group_child(method: str, path: str) -> None:
    """A child with an aioproc group of its own: a grandchild that forks a great-grandchild."""

    async def main() -> None:
        async with aioproc.open_group(context=method, grace=2.0) as group:
            inner = path + "-inner"
            grandchild = await group.spawn(sleeper_with_grandchild, inner)
            [great_grandchild] = await _read_pids([inner])
            _write(path, f"{grandchild.pid} {great_grandchild}")
            await anyio.sleep(600)

    anyio.run(main)


async def main(method: str, workdir: str, mode: str) -> None:
    async with aioproc.open_group(context=method, grace=2.0) as group:
        paths = [os.path.join(workdir, f"grandchild-{i}") for i in range(2)]
        first: tuple[object, ...] = {
            "nested": (nested_group_child, method),
            "gil": (gil_holder_with_grandchild,),
        }.get(mode, (sleeper_with_grandchild,))
        children = [
            await group.spawn(*first, paths[0], daemon=False),
            await group.spawn(sleeper_with_grandchild, paths[1], daemon=True),
        ]
        pids = [p.pid for p in children] + await _read_pids(paths)
        print("PIDS", *pids, flush=True)
        await anyio.sleep(600)


if __name__ == "__main__":
    warnings.simplefilter("ignore")  # the 'fork' start method warns, on purpose
    interrupted = False
    try:
        mode = sys.argv[4] if len(sys.argv) > 4 else "plain"
        anyio.run(main, sys.argv[1], sys.argv[3], mode, backend=sys.argv[2])
    except* KeyboardInterrupt:  # bare on asyncio, inside an exception group on trio
        interrupted = True
    if interrupted:
        print("INTERRUPTED", flush=True)
        sys.exit(130)
