"""Module-level targets that test children run (children import this module as ``targets``).

Helpers only APPEND to this file: each test module's functions live in their own section.
"""

from __future__ import annotations

import functools
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


# --- test_process.py (more) -----------------------------------------------------------------


def pr_parent_pid() -> int:
    return os.getppid()


def pr_exit_with_received(conn: Any) -> None:
    """Wait for an exit code from the test, then leave with it."""
    sys.exit(conn.recv())


def pr_raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def pr_default_daemon() -> bool:
    """The daemon flag a Process built in this child gets by default."""
    return aioproc.Process(target=return_value).daemon


def pr_daemon_tries_start() -> tuple[str, str]:
    async def main() -> None:
        await aioproc.Process(target=return_value, args=(1,)).start()

    return _grp_spawn_error_of(main)


def pr_socket_send(sock: Any, data: bytes) -> None:
    sock.sendall(data)
    sock.close()


# --- test_group.py (more) -------------------------------------------------------------------

#: Set by a test in the parent; a child sees the parent's value only if it was forked from it.
grp_marker = "unset"


def grp_start_info() -> tuple[int, str]:
    """(the parent's pid as this child sees it, ``grp_marker`` as this child sees it)."""
    return os.getppid(), grp_marker


def grp_behave(gate: str | None, kind: str, arg: Any) -> Any:
    """Wait for ``gate`` (if any), then: "return" ``arg``, "raise" ValueError(``arg``),
    "exit" with code ``arg`` (SystemExit) or "hard_exit" with code ``arg`` (os._exit)."""
    if gate is not None:
        grp_wait_for_file(gate)
    if kind == "return":
        return arg
    if kind == "raise":
        raise ValueError(arg)
    if kind == "exit":
        sys.exit(arg)
    if kind == "hard_exit":
        os._exit(arg)
    raise AssertionError(f"unknown behaviour {kind!r}")


def _grp_raise_on_sigterm(signum: int, frame: Any) -> None:
    raise ValueError("SIGTERM turned into an exception")


def grp_raise_on_sigterm(ready_path: str) -> None:
    """Turn SIGTERM into a ValueError (so the child exits 1 with an exception when stopped)."""
    signal.signal(signal.SIGTERM, _grp_raise_on_sigterm)
    _grp_write(ready_path, str(os.getpid()))
    time.sleep(LONG)


def pr_quiet_segfault() -> None:
    """segfault() without faulthandler's report (a fork child inherits pytest's handler)."""
    import faulthandler

    faulthandler.disable()
    segfault()


def pr_return_unrebuildable() -> Any:
    """A value that pickles in the child but cannot be unpickled in the parent."""
    return UnrebuildableError("one", "two")


# --- test_faults.py -------------------------------------------------------------------------
# Children report to the test through a multiprocessing Connection (``conn``): the test awaits
# the message instead of sleeping.


def flt_crash(kind: str, conn: Any = None) -> None:
    """Die without a Python exception: "segfault", "exit" (os._exit(3)) or "sleep" (until the
    test SIGKILLs it from outside; ``conn`` gets the pid once it runs)."""
    if kind == "segfault":
        import ctypes
        import faulthandler
        import resource

        faulthandler.disable()  # a fork child inherits pytest's handler and would report
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
        ctypes.string_at(0)
    if kind == "exit":
        os._exit(3)
    if conn is not None:
        conn.send(os.getpid())
    time.sleep(LONG)


def flt_wait_and_return(conn: Any, value: Any) -> Any:
    """Return ``value`` once the test sends anything on ``conn``."""
    conn.recv()
    return value


def flt_report_and_sleep(conn: Any) -> None:
    conn.send(os.getpid())
    time.sleep(LONG)


def flt_ignore_sigterm(conn: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn.send(os.getpid())
    time.sleep(LONG)


class FltLockedError(Exception):
    """Cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class FltTwoArgError(Exception):
    """Pickles, but cannot be rebuilt: BaseException.__reduce__ passes only ``args``."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} and {second}")


class FltBrokenStrError(Exception):
    """Pickles fine, but str() of it raises."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


def flt_raise(kind: str, message: str) -> None:
    """Raise an exception that cannot make the trip home in one way or another."""
    if kind == "unpicklable":
        raise FltLockedError(message)
    if kind == "unrebuildable":
        raise FltTwoArgError(message, "more")
    if kind == "child_only_class":
        # A class that exists only in the child: it pickles and round-trips here, but the
        # parent cannot import its module.
        import types

        module = types.ModuleType("flt_child_only")

        class ChildOnlyError(Exception):
            pass

        ChildOnlyError.__module__ = module.__name__
        ChildOnlyError.__qualname__ = ChildOnlyError.__name__
        module.ChildOnlyError = ChildOnlyError  # type: ignore[attr-defined]
        sys.modules[module.__name__] = module
        raise ChildOnlyError(message)
    if kind == "broken_str":
        raise FltBrokenStrError(message)
    raise AssertionError(f"unknown kind {kind!r}")


def flt_socket_name(sock: Any) -> Any:
    try:
        return sock.getsockname()
    finally:
        sock.close()


def flt_fork_grandchildren(conn: Any, count: int, ignore_sigterm: bool = False) -> None:
    """Fork ``count`` grandchildren (plain os.fork) that sleep; send their pids; sleep."""
    pids = []
    for _ in range(count):
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # a grandchild: never return into the bootstrap
            try:
                os.close(ready_r)
                if ignore_sigterm:
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                os.write(ready_w, b"!")
                time.sleep(LONG)
            finally:
                os._exit(0)
        os.close(ready_w)
        os.read(ready_r, 1)  # the grandchild runs (and ignores SIGTERM if asked)
        os.close(ready_r)
        pids.append(pid)
    conn.send(pids)
    time.sleep(LONG)


def flt_nested_group(conn: Any) -> None:
    """Run an aioproc group in this child: two grandchildren, one of which forks a
    great-grandchild; send every descendant's pid; sleep until stopped."""
    import multiprocessing

    async def main() -> None:
        async with aioproc.open_group() as group:
            reader, writer = multiprocessing.Pipe(duplex=False)
            forker = await group.spawn(flt_fork_grandchildren, writer, 1)
            sleeper = await group.spawn(flt_report_and_sleep, writer)
            writer.close()
            received: list[Any] = []
            while len(received) < 2:
                await anyio.wait_readable(reader.fileno())
                received.append(reader.recv())
            great = next(r for r in received if isinstance(r, list))
            conn.send([forker.pid, sleeper.pid, *great])
            await anyio.sleep(LONG)

    anyio.run(main)


def flt_exit_code(code: int) -> None:
    os._exit(code)


def flt_sleep(seconds: float) -> None:
    time.sleep(seconds)


def flt_wait_for_path(path: str, value: Any) -> Any:
    """Return ``value`` once ``path`` exists (a gate that costs the parent no fd to open)."""
    deadline = time.monotonic() + LONG
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} was never opened")
        time.sleep(0.005)
    return value


def pr_unpickle_slowly(ready_path: str) -> str:
    """Called while a child's bootstrap unpickles its Process (before READY): says so, blocks."""
    _grp_write(ready_path, str(os.getpid()))
    time.sleep(LONG)
    return "unpickled"


def pr_fork_in_fork() -> Any:
    """In a fork child: start a grandchild with fork too (the parent's start lock is copied)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fork warning, known here
        return anyio.run(functools.partial(aioproc.run, return_value, 2, context="fork"))


# --- test_inherit.py --------------------------------------------------------------------------


def inh_print(out: str, err: str) -> None:
    print(out, flush=True)
    print(err, file=sys.stderr, flush=True)


def inh_getenv(name: str) -> str | None:
    return os.environ.get(name)


# --- test_faults.py (signals) -----------------------------------------------------------------


def flt_blocked_signals_of_other_threads() -> list[int]:
    """The signals blocked by each thread of this process other than the main one."""
    masks = []
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == os.getpid():
            continue
        with open(f"/proc/self/task/{tid}/status") as f:
            for line in f:
                if line.startswith("SigBlk:"):
                    masks.append(int(line.split()[1], 16))
    return masks


def flt_fallback_watchdog_masks() -> list[int]:
    """Start the parent-death guard's fallback thread, then report as above."""
    from aioproc import _child

    _child._start_watchdog()
    return flt_blocked_signals_of_other_threads()


class FltBootGate:
    """An argument that, unpickled in the child's bootstrap (before READY), waits for a gate."""

    def __init__(self, gate: str) -> None:
        self.gate = gate

    def __reduce__(self) -> tuple[Any, ...]:
        return (flt_wait_for_path, (self.gate, "unpickled"))
