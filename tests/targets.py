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
