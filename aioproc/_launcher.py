r"""The seam between aioproc and whatever makes processes: launch, signal, watch, release.

Everything aioproc does to a child goes through a :class:`Handle`: its pid, the fd carrying its
frames (``_wire.py``), an fd that fires on its exit with ``poll()`` for the status,
``signal()`` and ``close()``. :func:`launch` builds :class:`LocalHandle`\ s on
:mod:`multiprocessing`; another launcher (a cluster) can sit beside it by producing the same
handle.

Forkserver starts talk to the fork server from the event loop (``_forkserver.py`` owns the
server); spawn and fork starts block, and run in one of two start threads of aioproc's own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import resource
import select
import struct
import threading
import warnings
from collections.abc import Iterator
from multiprocessing import context as context_module
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import anyio
import anyio.lowlevel
import anyio.to_thread

from . import _child, _forkserver
from ._child import InheritedFd, Payload
from ._errors import SpawnError
from ._wire import poll_now

if TYPE_CHECKING:
    from ._process import Process

__all__ = ["BootSlot", "Handle", "default_context", "launch", "resolve_context"]

logger = logging.getLogger("aioproc.launcher")

Context = multiprocessing.context.BaseContext

#: forkserver where the platform has it (Linux: no fork-in-a-threaded-parent deadlocks, cheap
#: starts once the server runs), spawn elsewhere.
DEFAULT_METHOD = (
    "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
)

FORK_WARNING = (
    "the 'fork' start method copies a multi-threaded parent (the event loop plus aioproc's "
    "start thread), which can deadlock the child on a lock held by another thread; prefer the "
    "default ('forkserver') or 'spawn'"
)


def default_context() -> Context:
    return multiprocessing.get_context(DEFAULT_METHOD)


def resolve_context(context: str | Context | None, *, stacklevel: int) -> Context | None:
    """Check a user's ``context=`` argument; ``None`` stays None (decided at start)."""
    if context is None:
        return None
    if isinstance(context, str):
        methods = multiprocessing.get_all_start_methods()
        if context not in methods:
            raise ValueError(
                f"unknown start method {context!r}: use one of {', '.join(map(repr, methods))}, "
                "or pass a multiprocessing context"
            )
        ctx: Context = multiprocessing.get_context(context)
    elif isinstance(context, Context):
        ctx = context
    else:
        raise TypeError(
            "context must be a start-method name ('forkserver', 'spawn', 'fork') or a "
            f"multiprocessing context, not {type(context).__name__}"
        )
    if ctx.get_start_method() == "fork":
        warnings.warn(FORK_WARNING, RuntimeWarning, stacklevel=stacklevel + 1)
    return ctx


# --- what crosses the boundary ----------------------------------------------------------------


class _DryRunPopen:
    """Stands in for a spawning Popen while we find which part of a process won't pickle."""

    @staticmethod
    def duplicate_for_child(fd: int) -> int:
        return fd

    @staticmethod
    def DupFd(fd: int) -> int:  # noqa: N802 - mirrors multiprocessing's Popen.DupFd
        return fd


def _parts(process: Process) -> Iterator[tuple[str, object]]:
    target = getattr(process, "_target", None)
    if target is not None:
        yield f"target {target!r}", target
    for i, arg in enumerate(getattr(process, "_args", ())):
        yield f"argument {i} ({type(arg).__name__})", arg
    for key, value in getattr(process, "_kwargs", {}).items():
        yield f"keyword argument {key!r} ({type(value).__name__})", value
    for key, value in process.__getstate__().items():
        if key not in ("_target", "_args", "_kwargs"):
            yield f"attribute {key!r} of {type(process).__name__}", value


def _pickling_error(process: Process, method: str, exc: BaseException) -> SpawnError:
    culprit = "the process object"
    multiprocessing.context.set_spawning_popen(_DryRunPopen())  # type: ignore[arg-type]
    try:
        for what, value in _parts(process):
            try:
                reduction.ForkingPickler.dumps(value)
            except Exception as part_exc:  # noqa: BLE001 - we are looking for the culprit
                culprit, exc = what, part_exc
                break
    finally:
        multiprocessing.context.set_spawning_popen(None)
    return SpawnError(
        f"cannot send {culprit} to the child of {process.name!r} under the {method!r} start "
        f"method: {type(exc).__name__}: {exc}. Targets and arguments are pickled: use a "
        "module-level function (not a lambda, closure or nested function) and picklable "
        "arguments"
    )


# --- handles ---------------------------------------------------------------------------------


class Handle(Protocol):
    """A launched child, as the rest of aioproc sees it.

    Nothing here waits: the watcher (``_watch.py``) waits for :attr:`result_fd` and
    :meth:`exit_fd` to be readable, reads the frames and calls :meth:`poll`, and calls
    :meth:`close` once it no longer watches either fd.
    """

    pid: int
    #: The child's frames (see ``_wire.py``).
    result_fd: int
    #: True when the exit status could not be known (then ``poll()`` reports 255): whatever
    #: the child sent over its frame pipe is all there is to judge it by.
    status_lost: bool

    def poll(self) -> int | None:
        """The exit code if the child has exited and its status is known; never blocks."""
        ...

    def exit_fd(self) -> int:
        """An fd that becomes readable when :meth:`poll` may have news of the exit.

        It may change while the child runs; watchers ask again whenever it fires.
        """
        ...

    def signal(self, signum: int) -> bool:
        """Send ``signum`` to the child and its descendants; nothing once it has exited.

        Returns whether the child was still running: a child that has exited (even if its
        status is not known yet) was not stopped by this signal.
        """
        ...

    def close(self) -> None:
        """Release the fds (after exit; at interpreter exit, whatever the state)."""
        ...

    def fds(self) -> list[int]:
        """Every fd this handle holds (a forked sibling closes them, ``_child.py``)."""
        ...


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or the process is already gone
        return None


def _running(pid: int) -> bool:
    """False if ``pid`` has exited, even before its exit status can be read (a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - no /proc: assume it runs, as before
        return True


class LocalHandle:
    """A child started by :mod:`multiprocessing`, with aioproc owning its reaping.

    Three fds per child: the frame pipe, one fd for the exit, and multiprocessing's
    parent-death pipe (``multiprocessing.parent_process()`` in the child watches its other
    end; aioproc's own guard uses one liveness pipe for all children, ``_liveness``).

    - fork, spawn: the exit is watched on a pidfd, which fires when the child is gone,
      whoever holds its sentinel pipe (pitfall 7), and waitpid() has the status by then
      (pitfall 6). The sentinel itself is closed at once. Without pidfds (not Linux), the
      sentinel it is.
    - forkserver: the fork server reaps the child and writes its status to the status pipe,
      which only the server holds. If the server dies first (killed from outside), the pipe
      reads EOF while the child may still run: from then on a pidfd watches the child, and
      its status, which went with the server, is reported as 255, as multiprocessing does.
    """

    def __init__(self, inner: multiprocessing.process.BaseProcess, result_fd: int) -> None:
        popen: Any = inner._popen  # type: ignore[attr-defined]
        self._inner = inner
        self._popen = popen
        self._forkserver = popen.method == "forkserver"
        self.pid: int = popen.pid
        self.result_fd = result_fd
        self.returncode: int | None = None
        #: True when the exit status went with a dead fork server (``returncode`` is then 255).
        self.status_lost = False
        self._pidfd: int | None = None
        self._closed = False
        if not self._forkserver:
            self._pidfd = _pidfd_open(self.pid)
            if self._pidfd is not None:
                self._drop_sentinel()

    def _drop_sentinel(self) -> None:
        """Close multiprocessing's sentinel (the pidfd replaces it); keep the rest."""
        popen = self._popen
        kept = tuple(fd for fd in getattr(popen.finalizer, "_args", ()) if fd != popen.sentinel)
        popen.finalizer.cancel()
        popen.finalizer = _util.Finalize(popen, _util.close_fds, kept)
        os.close(popen.sentinel)
        popen.sentinel = None

    def fds(self) -> list[int]:
        # multiprocessing's own (the sentinel, if kept, and the write end of the child's
        # parent-death pipe), which must not stay open in a forked sibling.
        fds = [self.result_fd, *getattr(self._popen.finalizer, "_args", ())]
        if self._pidfd is not None:
            fds.append(self._pidfd)
        return fds

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        code: int | None
        if self._forkserver:
            code = self._poll_server()
        else:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                # Someone called waitpid(-1) or installed a SIGCHLD handler that reaps
                # (pitfall 9): the status is gone. Report it as the stdlib does.
                logger.warning("exit status of pid %d was taken by another reaper", self.pid)
                code = 255
            else:
                if pid == 0:
                    return None
                code = os.waitstatus_to_exitcode(status)
        if code is not None:
            self.returncode = code
            self._popen.returncode = code  # lets multiprocessing's close() see it finished
        return code

    def _poll_server(self) -> int | None:
        if self._pidfd is not None:  # orphaned: the server died before the child
            if not poll_now(self._pidfd, select.POLLIN):
                return None
            self.status_lost = True
            return _ORPHAN_STATUS
        if not poll_now(self._popen.sentinel, select.POLLIN):
            return None
        try:
            code: int = forkserver.read_signed(self._popen.sentinel)
            return code
        except (OSError, EOFError):
            pass
        logger.warning("the fork server died before pid %d: its exit status will be lost", self.pid)
        self._pidfd = _pidfd_open(self.pid)
        if self._pidfd is None or poll_now(self._pidfd, select.POLLIN):
            self.status_lost = True
            return _ORPHAN_STATUS  # already gone
        return None

    def exit_fd(self) -> int:
        return self._pidfd if self._pidfd is not None else int(self._popen.sentinel)

    def signal(self, signum: int) -> bool:
        if self.poll() is not None or not _running(self.pid):
            return False
        # Each child leads its own process group (the bootstrap did that before start()
        # returned), so this reaches its descendants too.
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                return False
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.close(self.result_fd)
        if self._pidfd is not None:
            os.close(self._pidfd)
        if self.returncode is not None:
            self._inner.close()
        else:
            # Never reaped (interpreter exit): still release multiprocessing's fds.
            self._popen.close()


#: The exit code reported when the fork server died before it could report the real one.
_ORPHAN_STATUS = 255


#: Serialises fork starts. A fork child copies every fd of its parent, the pipes of a sibling
#: that the other start thread is starting at that moment included: two children holding each
#: other's parent-death pipe kept each other from seeing their parent die (when a watchdog
#: thread waited on that pipe) and both outlived a SIGKILLed parent. In sequence a child can
#: hold only pipes of siblings started before it, and closes those (``_child.py``).
_FORK_LOCK = threading.Lock()


def _new_fork_lock() -> None:
    # A fork child is forked while its parent's start thread holds _FORK_LOCK, and inherits it
    # held by a thread that does not exist in the child: its own fork starts would wait forever.
    global _FORK_LOCK
    _FORK_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_fork_lock)

#: Threads that may run blocking starts (spawn, fork) at once. One or two keep event-loop lag
#: low even in a storm of starts (pitfall 5); more only add GIL contention. Not anyio's default
#: limiter, which web frameworks share with their sync endpoints.
START_THREADS = 2
_thread_limiter: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar(
    "aioproc_thread_limiter"
)


def _limiter() -> anyio.CapacityLimiter:
    try:
        return _thread_limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(START_THREADS)
        _thread_limiter.set(limiter)
        return limiter


#: How long a starting child may hold its boot slot (below) before it counts as started for
#: pacing: a child that hangs while it boots (its main module waits for input at import) must
#: not hold up every other start for long. Forkserver children boot in 1-3 ms here, spawn
#: children in 25-60 ms.
BOOT_SLOT_SECONDS = 0.1

_boot_slots: anyio.lowlevel.RunVar[anyio.Semaphore] = anyio.lowlevel.RunVar("aioproc_boot_slots")


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class BootSlot:
    """A place among the children booting at once, from the start request until READY.

    There are as many places as usable CPUs minus one (at least one): however many starts
    are asked for at once, children booting (a fork, unpickling, imports: CPU work) never
    take every CPU from the event loop. Measured in a storm of 200 starts on 2 cores: with
    every child free to boot at once, the loop's lag was p99 2.3-2.6 ms (1 ms ticker); with
    one at a time, p99 1.4-2.1 ms, for 200 starts in 0.55 s instead of 0.35 s. A start
    asked for alone is not slowed at all.
    """

    def __init__(self) -> None:
        try:
            self._slots = _boot_slots.get()
        except LookupError:
            self._slots = anyio.Semaphore(max(1, _usable_cpus() - 1))
            _boot_slots.set(self._slots)
        self._held = False

    async def __aenter__(self) -> BootSlot:
        await self._slots.acquire()
        self._held = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.release()


#: File descriptors one start may need at once (its pipes, the fork server's socket, a pidfd,
#: spawning an interpreter), with room for a second start in the other start thread.
_START_FDS = 16


def _check_fds(process: Process, method: str) -> None:
    """Refuse a start that would run out of file descriptors, before anything is made.

    Out of fds half-way, multiprocessing leaks the pipes it has made (fork: for good; spawn:
    until the failed Popen is collected), and a fork server whose client fails mid-request
    exits (CPython 3.11-3.13), losing the exit status of every child it runs.
    """
    held: list[int] = []
    try:
        for _ in range(_START_FDS):
            held.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        raise SpawnError(
            f"could not start {process.name!r} ({method}): out of file descriptors (a start "
            f"needs up to {_START_FDS}): raise RLIMIT_NOFILE or run fewer children at once"
        ) from exc
    finally:
        for fd in held:
            os.close(fd)


async def launch(context: Context, process: Process, daemon: bool) -> LocalHandle:
    """Start ``process`` in a new child; return once the child exists.

    Forkserver starts talk to the fork server from the event loop, without threads. Spawn and
    fork starts block (fork() itself, or spawning an interpreter) and run in one of aioproc's
    start threads. Either way a start that has begun is finished even if the caller is
    cancelled, so that no child is left unaccounted for: the caller then kills it.
    """
    method = context.get_start_method()
    await _make_fd_room()
    if method == "forkserver" and _forkserver.ASYNC_CLIENT:
        if not _forkserver.is_running():
            # Starting the server spawns an interpreter and waits for it: off the loop.
            await anyio.to_thread.run_sync(_forkserver.ensure_running, limiter=_limiter())
        server = _forkserver.server_pid()
        try:
            with anyio.CancelScope(shield=True):
                return await _launch_forkserver(context, process, daemon)
        except SpawnError as exc:
            if server is None or not isinstance(exc.__cause__, _forkserver.Unreachable):
                raise
        # The server died (killed from outside) before it got the request: once more, with a
        # new one. Only then: a request it got may have made a child, which must not run twice.
        assert server is not None
        logger.warning("the fork server (pid %d) is gone: starting a new one", server)
        await anyio.to_thread.run_sync(_forkserver.restart, server, limiter=_limiter())
        with anyio.CancelScope(shield=True):
            return await _launch_forkserver(context, process, daemon)
    # multiprocessing leaks what it has made when it runs out of fds half-way through a
    # start (our own forkserver client makes every fd first, so it needs no such check).
    _check_fds(process, method)
    return await anyio.to_thread.run_sync(
        _launch_blocking, context, process, daemon, limiter=_limiter()
    )


def _launch_blocking(context: Context, process: Process, daemon: bool) -> LocalHandle:
    method = context.get_start_method()
    inherit: _child.Inherit | None = None
    if method == "forkserver":
        _forkserver.ensure_running()
        inherit = _inherit()
    payload = Payload(process)
    # Fork starts hold the lock until the parent's copies of the new child's fds are closed:
    # a sibling forked meanwhile would inherit them.
    with _FORK_LOCK if method == "fork" else contextlib.nullcontext():
        read_fd, write_fd = _result_pipe(process, method, payload)
        fork_copy: int | None = None
        try:
            liveness = _liveness_fd(process, method, payload)
            if method == "fork":
                # A fork child inherits this fd by number, and _forget_liveness() closes the
                # module's own copy in it at fork: it gets a copy of its own.
                liveness = fork_copy = _dup(process, method, payload, liveness)
            inner = _inner_process(context, process, daemon, payload, write_fd, inherit, liveness)
            try:
                # multiprocessing's start() minus two steps: _cleanup(), which polls every
                # child of the program with waitpid, and adding the child to the list it
                # polls. aioproc reaps its own children; left in that list, any start()
                # elsewhere in the program could take their exit status (pitfall 3).
                inner._popen = inner._Popen(inner)
            except BaseException as exc:  # noqa: BLE001 - re-raised, as a SpawnError if we can
                _raise_start_error(process, method, payload, exc)
            inner._sentinel = inner._popen.sentinel
            inner._target, inner._args, inner._kwargs = None, (), {}  # no cycle via payload
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
            if fork_copy is not None:
                os.close(fork_copy)
    return LocalHandle(inner, read_fd)


def _dup(process: Process, method: str, payload: Payload, fd: int) -> int:
    try:
        return os.dup(fd)
    except OSError as exc:
        _raise_start_error(process, method, payload, exc)


async def _launch_forkserver(context: Context, process: Process, daemon: bool) -> LocalHandle:
    """multiprocessing's forkserver start, with its blocking steps awaited on the loop."""
    payload = Payload(process)
    read_fd, write_fd = _result_pipe(process, "forkserver", payload)
    try:
        liveness = _liveness_fd(process, "forkserver", payload)
        inner = _inner_process(context, process, daemon, payload, write_fd, _inherit(), liveness)
        popen: Any = popen_forkserver.Popen.__new__(popen_forkserver.Popen)
        popen.returncode, popen.finalizer, popen._fds = None, None, []
        try:
            # What Popen._launch() pickles, with this Popen as the spawning one, so that fds
            # in the arguments (our pipe, Queues, Connections) are registered for passing.
            buf = io.BytesIO()
            context_module.set_spawning_popen(popen)
            try:
                reduction.dump(spawn.get_preparation_data(inner._name), buf)
                reduction.dump(inner, buf)
            finally:
                context_module.set_spawning_popen(None)
            with anyio.fail_after(_SERVER_TIMEOUT):
                status_r, data_w = await _forkserver.connect(popen._fds)
                # The write end of the data pipe stays open in the parent until the child is
                # closed: the child's parent-death sentinel is its read end.
                popen.sentinel = status_r
                popen.finalizer = _util.Finalize(popen, _util.close_fds, (data_w, status_r))
                # The data first, so the child can read it as soon as it exists, then its pid.
                try:
                    await _write_all(data_w, buf.getbuffer())
                    # The server has passed the child's end of the frame pipe on: ours goes,
                    # so that EOF there means the child (or the server) is gone.
                    os.close(write_fd)
                    write_fd = -1
                    # One wake-up of the loop, not two: the server sends the pid as soon as it
                    # has forked, the child its READY a millisecond later. Wait for READY (or
                    # EOF), briefly, then take the pid, there by then.
                    with anyio.move_on_after(_READY_WAIT):
                        await anyio.wait_readable(read_fd)
                    popen.pid = await _read_pid(status_r)
                except (BrokenPipeError, EOFError) as exc:
                    # The server went away mid-request. If nothing holds the other end of the
                    # data pipe, it never forked: the start can be retried with a new server.
                    # Otherwise a child may have our data, and must not be started twice.
                    if poll_now(data_w, 0) & select.POLLERR:  # no reader left
                        raise _forkserver.Unreachable(f"the fork server went away ({exc})") from exc
                    raise
        except BaseException as exc:  # noqa: BLE001 - re-raised, as a SpawnError if we can
            if popen.finalizer is not None:
                popen.finalizer()
            _raise_start_error(process, "forkserver", payload, exc)
        inner._popen = popen
        inner._sentinel = popen.sentinel
        inner._target, inner._args, inner._kwargs = None, (), {}  # no cycle through payload
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        if write_fd >= 0:
            os.close(write_fd)
    return LocalHandle(inner, read_fd)


#: multiprocessing.util, for its private helpers (untyped).
_util: Any = util

#: Seconds a running fork server may take to answer a start before it counts as broken.
_SERVER_TIMEOUT = 30.0
#: Seconds a forkserver start waits for the child's READY before it reads the pid without it
#: (a forkserver child boots in 1-3 ms unless its target's module is heavy to import). Why
#: wait for one event instead of two: every wake-up of the loop can make a timer late by up to
#: 1 ms (asyncio, trio and libuv sleep in epoll with a timeout in whole milliseconds, rounded
#: up, so a wake-up just before a timer is due makes the next sleep overshoot it). Measured: a
#: 1 ms ticker's p99 lateness went from 0.12 to 1.0 ms when unrelated I/O woke its loop 1,500
#: times a second, with no CPU contention at all.
_READY_WAIT = 0.05


async def _write_all(fd: int, data: memoryview) -> None:
    os.set_blocking(fd, False)
    while data:
        try:
            data = data[os.write(fd, data) :]
        except BlockingIOError:
            await anyio.wait_writable(fd)


async def _read_pid(fd: int) -> int:
    os.set_blocking(fd, False)
    data = b""
    while len(data) < _SIGNED.size:
        try:
            chunk = os.read(fd, _SIGNED.size - len(data))
        except BlockingIOError:
            await anyio.wait_readable(fd)
            continue
        if not chunk:
            raise EOFError("the fork server hung up before it sent the child's pid")
        data += chunk
    pid: int = _SIGNED.unpack(data)[0]
    return pid


_SIGNED = struct.Struct("q")  # as multiprocessing.forkserver.SIGNED_STRUCT


def _inherit() -> _child.Inherit:
    # Forkserver children are forks of the server and inherit what it had when it started:
    # hand them the parent's current stdout/stderr (pitfall 18) and environment, where those
    # changed since.
    (out, err), environ = _forkserver.differences()
    stdio = [
        InheritedFd(fd) if changed and _is_open(fd) else None
        for fd, changed in ((1, out), (2, err))
    ]
    return (stdio[0], stdio[1], environ)


def _result_pipe(process: Process, method: str, payload: Payload) -> tuple[int, int]:
    """The frame pipe from the child (``_wire.py``): (read end, write end)."""
    try:
        read_fd, write_fd = os.pipe()
    except OSError as exc:
        _raise_start_error(process, method, payload, exc)
    _note_fd(max(read_fd, write_fd))
    return read_fd, write_fd


#: The size of this process's fd table that aioproc has made sure of, and the highest fd
#: number it has seen a start make.
_fd_table = 0
_fd_high = 0


def _note_fd(fd: int) -> None:
    global _fd_high
    _fd_high = max(_fd_high, fd)


async def _make_fd_room() -> None:
    """Grow the fd table well ahead of need, in a worker thread.

    The kernel grows a process's fd table when an fd number outgrows it (at 256, 512, 1024,
    ...), and in a process with more than one thread each growth waits for an RCU grace
    period: 5-15 ms here, spent in whatever call made the fd -- the event loop's, in a storm
    of starts. Grown here, to 4x the fds in use, it never happens on the loop.
    """
    global _fd_table
    if 2 * _fd_high + 64 < _fd_table:
        return
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    target = max(1024, 1 << (4 * _fd_high).bit_length())
    if soft != resource.RLIM_INFINITY:
        target = min(target, soft)
    if target <= _fd_table:
        return
    _fd_table = target  # at once: concurrent starts need not grow it too
    await anyio.to_thread.run_sync(_reserve_fd, target - 1, limiter=_limiter())


def _reserve_fd(number: int) -> None:
    try:
        probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        # F_DUPFD takes the lowest free fd >= number: it grows the table, never clobbers.
        os.close(fcntl.fcntl(probe, fcntl.F_DUPFD_CLOEXEC, number))
    except OSError:
        pass
    finally:
        os.close(probe)


def _inner_process(
    context: Context,
    process: Process,
    daemon: bool,
    payload: Payload,
    write_fd: int,
    inherit: _child.Inherit | None,
    liveness: int,
) -> Any:
    """The multiprocessing process that carries ``process``: its target is our bootstrap."""
    return context.Process(  # type: ignore[attr-defined]
        target=_child.bootstrap,
        args=(payload, InheritedFd(write_fd), inherit, InheritedFd(liveness)),
        name=process.name,
        daemon=daemon,
    )


# --- the parent's liveness pipe ----------------------------------------------------------------

#: This process's liveness pipe, (read end, write end), made at its first start. Nothing is
#: ever written to it: its write end closes when this process ends, however it ends, and the
#: kernel then SIGKILLs every child that armed a reader of it (``_child.guard_parent``).
_liveness: tuple[int, int] | None = None
_liveness_lock = threading.Lock()  # starts run in two start threads as well as on the loop


def _liveness_fd(process: Process, method: str, payload: Payload) -> int:
    """The read end of the liveness pipe, which every child is given."""
    global _liveness
    with _liveness_lock:
        if _liveness is None:
            try:
                _liveness = os.pipe()
            except OSError as exc:
                _raise_start_error(process, method, payload, exc)
        return _liveness[0]


def _forget_liveness() -> None:
    # A fork of this process (a fork start, or the user's os.fork()) must not hold the write
    # end: it would keep this process "alive" for our children. It makes its own pipe if it
    # starts children. (A fork start's child gets its own copy of the read end, see below.)
    global _liveness, _liveness_lock
    if _liveness is not None:
        for fd in _liveness:
            with contextlib.suppress(OSError):
                os.close(fd)
    _liveness = None
    _liveness_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_liveness)


def _raise_start_error(
    process: Process, method: str, payload: Payload, exc: BaseException
) -> NoReturn:
    """Raise what a failed start raises: a SpawnError that says why, where we can tell."""
    if payload.error is not None:
        raise _pickling_error(process, method, payload.error) from exc
    if isinstance(exc, (OSError, EOFError, TimeoutError, anyio.BrokenResourceError)):
        raise SpawnError(
            f"could not start {process.name!r} ({method}): {type(exc).__name__}: {exc}{_hint(exc)}"
        ) from exc
    raise exc


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _hint(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        return " (out of file descriptors: raise RLIMIT_NOFILE or run fewer children at once)"
    if isinstance(exc, OSError) and exc.errno in (errno.EAGAIN, errno.ENOMEM):
        return " (out of processes or memory: run fewer children at once)"
    if isinstance(exc, (EOFError, ConnectionError, anyio.BrokenResourceError)):
        return " (the fork server went away; the next start launches a new one)"
    if isinstance(exc, TimeoutError):
        return f" (the fork server did not answer within {_SERVER_TIMEOUT:.0f} s)"
    return ""
