"""Module-level targets that test children run (children import this module as ``targets``).

Helpers only APPEND to this file: each test module's functions live in their own section.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

import anyio

import aioproc

# --- test_process.py ------------------------------------------------------------------------

#: How long a child that must be stopped by the test sleeps: far longer than any test.
LONG = 60


def return_value(value: Any) -> Any:
    return value


def add(a: int, b: int = 0) -> int:
    return a + b


def own_pid() -> int:
    return os.getpid()


def raise_value_error(message: str) -> None:
    raise ValueError(message)


class CustomError(Exception):
    pass


def raise_custom_error(message: str) -> None:
    raise CustomError(message)


class UnpicklableError(Exception):
    """Cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable_error(message: str) -> None:
    raise UnpicklableError(message)


class UnrebuildableError(Exception):
    """Pickles, but cannot be unpickled: BaseException.__reduce__ passes only ``args``."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} and {second}")


def raise_unrebuildable_error(first: str, second: str) -> None:
    raise UnrebuildableError(first, second)


def exit_with(code: int) -> None:
    sys.exit(code)


def hard_exit(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    import ctypes
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
    ctypes.string_at(0)


def sleep_long() -> None:
    time.sleep(LONG)


def send_pid_and_sleep(conn: Any) -> None:
    conn.send(os.getpid())
    time.sleep(LONG)


def ignore_sigterm_and_sleep(conn: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn.send(os.getpid())
    time.sleep(LONG)


def receive_and_return(conn: Any) -> Any:
    return conn.recv()


def fork_grandchild_and_sleep(conn: Any) -> None:
    pid = os.fork()
    if pid == 0:  # the grandchild
        try:
            time.sleep(LONG)
        finally:
            os._exit(0)
    conn.send(pid)
    time.sleep(LONG)


def return_lambda() -> Any:
    return lambda: None


def return_lock() -> Any:
    return threading.Lock()


def big_bytes(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + b"end"


def process_info() -> tuple[str, str, int, bool]:
    me = aioproc.current_process()
    return type(me).__name__, me.name, os.getpid(), me.daemon


def start_a_child() -> Any:
    return anyio.run(aioproc.run, return_value, 1)


class TaggedProcess(aioproc.Process):
    """Overrides run(); its __init__ attributes must reach the child."""

    def __init__(self, tag: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tag = tag

    def run(self) -> dict[str, Any]:
        me = aioproc.current_process()
        return {
            "tag": self.tag,
            "is_self": me is self,
            "type": type(me).__name__,
            "name": me.name,
            "pid": me.pid,
            "os_pid": os.getpid(),
            "daemon": me.daemon,
        }


# --- test_group.py --------------------------------------------------------------------------
# Gates are files: a child waits until the test creates its gate file, and reports back by
# writing a file atomically (write a temporary file, then rename it).


def _grp_write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def grp_return(value: Any = None) -> Any:
    return value


def grp_sleep(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def grp_sleep_long() -> None:
    time.sleep(LONG)


def grp_raise_value_error(message: str) -> None:
    raise ValueError(message)


def grp_exit(code: int) -> None:
    """Leave with ``code`` through SystemExit (no Python exception reaches the parent)."""
    sys.exit(code)


def grp_hard_exit(code: int) -> None:
    os._exit(code)


def grp_wait_for_file(path: str, value: Any = "released") -> Any:
    """Wait until ``path`` exists, then return ``value``; fail loudly after LONG seconds."""
    deadline = time.monotonic() + LONG
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} was never opened")
        time.sleep(0.005)
    return value


def grp_ignore_sigterm(ready_path: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _grp_write(ready_path, str(os.getpid()))
    time.sleep(LONG)


def grp_fork_grandchild(pid_path: str) -> None:
    pid = os.fork()
    if pid == 0:  # the grandchild: sleep, and never return into the bootstrap
        try:
            time.sleep(LONG)
        finally:
            os._exit(0)
    _grp_write(pid_path, str(pid))
    time.sleep(LONG)


def _grp_find(exc: BaseException, cls: type[BaseException]) -> BaseException | None:
    if isinstance(exc, cls):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _grp_find(inner, cls)
            if found is not None:
                return found
    return None


def _grp_spawn_error_of(main: Any) -> tuple[str, str]:
    """Run ``main`` in a fresh event loop; say which SpawnError (if any) it raised."""
    try:
        anyio.run(main)
    except BaseException as exc:
        found = _grp_find(exc, aioproc.SpawnError)
        if found is None:
            return "other", repr(exc)
        return type(found).__name__, str(found)
    return "no error", ""


def grp_daemon_tries_run() -> tuple[str, str]:
    async def main() -> None:
        await aioproc.run(grp_return, 1)

    return _grp_spawn_error_of(main)


def grp_daemon_tries_group() -> tuple[str, str]:
    async def main() -> None:
        async with aioproc.open_group() as group:
            await group.spawn(grp_return, 1)

    return _grp_spawn_error_of(main)


class GrpEchoProcess(aioproc.Process):
    """A subclass that overrides run(); adopted by a group through ``group.start``."""

    def __init__(self, value: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.value = value

    def run(self) -> tuple[str, Any, str]:
        return ("echo", self.value, aioproc.current_process().name)
