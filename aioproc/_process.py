"""The process facade: ``multiprocessing.Process`` with an awaitable lifecycle.

::

    parent (event loop)                                      child
    ───────────────────                                      ─────
    await p.start()          (a boot slot: at most CPUs - 1 children boot at once)
      └─ launch() (_launcher.py) pickles the Process
           forkserver: on the loop ── fds + data ──▶ fork server ── fork ──▶ bootstrap()
           spawn, fork: in one of 2 start threads ───────────────────────▶  (_child.py):
                                                                            setpgid,
      ◀── READY ──────────────────── frame pipe ───────────────────────── load Process, READY
    the liveness pipe's write end ┄┄ parent dies: the kernel SIGKILLs ┄┄▶ guard armed
    await p.wait() / result() / group watcher                               p.run()
      └─ Watcher (_watch.py): one task reads  ◀── frames ──────────────── VALUE / RAISED /
         the frame pipe and awaits the exit   ◀── pidfd / status ──────── exit(code)
    p.terminate() / kill() ── killpg(pid, sig) ──────────────────────────▶ the child's
                                                                            process group

Nothing here blocks the event loop. A start that has begun is never abandoned: if the caller
is cancelled, the child is killed and reaped before the cancellation goes on.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

from . import _child
from ._errors import (
    ProcessFailed,
    ProcessStateError,
    SpawnError,
    describe_exit,
    process_label,
    rebuild_exception,
)
from ._wire import Kind

# A child imports this module to unpickle its Process and run it: it needs none of the parent
# side's machinery (anyio, the launcher, the watcher, attrs for events), which would double a
# spawn child's start-up time. Methods that run in the parent import those when they run.
if TYPE_CHECKING:
    import logging

    from ._events import ExitEvent
    from ._launcher import Context
    from ._watch import Watcher

__all__ = [
    "DEFAULT_GRACE",
    "Process",
    "active_children",
    "cpu_count",
    "current_process",
    "run",
]

T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")


def _logger() -> logging.Logger:
    # Imported when first needed: a child imports this module and rarely logs (logging's
    # import is a tenth of a spawn child's start-up).
    import logging

    return logging.getLogger("aioproc.process")


#: Seconds between SIGTERM and SIGKILL when aioproc stops a child.
DEFAULT_GRACE = 5.0

_counter = itertools.count(1)
#: Children started and not yet finished, for active_children() and interpreter exit.
_live: set[Process] = set()
#: Facades of processes that aioproc did not start (the main process), by pid.
_foreign: dict[int, Process] = {}


class Process:
    """A child process with an awaitable lifecycle.

    Built like :class:`multiprocessing.Process` (same constructor, plus ``context``: a start
    method name or a multiprocessing context; default forkserver on Linux). Subclasses may
    override :meth:`run`; whatever ``run()`` (or ``target``) returns is the process's result.
    """

    def __init__(
        self,
        group: None = None,
        target: Any = None,
        name: str | None = None,
        args: Any = (),
        kwargs: Any = None,
        *,
        daemon: bool | None = None,
        context: str | Context | None = None,
    ) -> None:
        if group is not None:
            raise ValueError(
                "group must be None, as in multiprocessing; for groups of processes use "
                "aioproc.open_group()"
            )
        if target is not None and not callable(target):
            raise TypeError(f"target must be callable, not {type(target).__name__}")
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs) if kwargs is not None else {}
        self._name = name if name is not None else f"{type(self).__name__}-{next(_counter)}"
        self._daemon = current_process().daemon if daemon is None else bool(daemon)
        from ._launcher import resolve_context

        self._context = resolve_context(context, stacklevel=2)
        self._pid: int | None = None
        self._current = False
        self._starting = False
        self._stopping = False  # aioproc sent SIGTERM/SIGKILL: the exit is a stop, not a failure
        self._watcher: Watcher | None = None
        self._error: BaseException | None = None
        self._value: Any = None
        self._decoded = False
        self._stopped_early = False
        #: Called once the watcher saw the exit: how a group records exits in the order seen.
        self._on_exit: Callable[[], None] | None = None

    # --- attributes, as in multiprocessing --------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a string, not {type(name).__name__}")
        self._name = name

    @property
    def daemon(self) -> bool:
        """Whether the child is stopped (not waited for) when its group or owner is done."""
        return self._daemon

    @daemon.setter
    def daemon(self, daemon: bool) -> None:
        if self._started:
            raise ProcessStateError(f"cannot change daemon of {self._label} after it started")
        self._daemon = bool(daemon)

    @property
    def pid(self) -> int | None:
        """The child's pid; ``None`` before start."""
        return self._pid

    ident = pid

    @property
    def exitcode(self) -> int | None:
        """``None`` while running, ``0`` success, ``>0`` error exit, ``-N`` killed by signal N."""
        return None if self._watcher is None else self._watcher.poll()

    def is_alive(self) -> bool:
        if self._current:
            return True
        return self._watcher is not None and self._watcher.poll() is None

    def run(self) -> Any:
        """Runs in the child; override it in a subclass. Returns the process's result."""
        if self._target is not None:
            return self._target(*self._args, **self._kwargs)
        return None

    def __repr__(self) -> str:
        if self._current:
            state = "current"
        elif not self._started:
            state = "initial"
        elif self.exitcode is None:
            state = "started"
        else:
            state = f"stopped exitcode={self.exitcode}"
        daemon = " daemon" if self._daemon else ""
        pid = f" pid={self._pid}" if self._pid is not None else ""
        return f"<{type(self).__name__} name={self._name!r}{pid} {state}{daemon}>"

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the child; returns once it runs (its bootstrap is done) and ``pid`` is known.

        The target, its arguments and the Process object are pickled here (except under the
        fork start method). Nothing blocks the event loop: forkserver starts talk to the fork
        server from it, spawn and fork starts run in one of aioproc's own start threads. If
        this task is cancelled after the child was created, the child is killed and reaped
        before the cancellation propagates.
        """
        await self._start(None)

    async def _start(self, default: Context | None) -> None:
        if self._current:
            raise ProcessStateError(f"{self._label} is the current process; it cannot be started")
        if self._started or self._starting:
            raise ProcessStateError(f"{self._label} was already started; a process starts once")
        if current_process().daemon:
            raise SpawnError(
                f"cannot start {self._name!r}: daemonic processes are not allowed to have "
                "children (as in multiprocessing); make the parent non-daemonic"
            )
        import anyio

        from ._launcher import BOOT_SLOT_SECONDS, BootSlot, default_context, launch
        from ._watch import Watcher

        context = self._context or default or default_context()
        self._starting = True
        try:
            async with BootSlot() as slot:
                handle = await launch(context, self, self._daemon)
                self._pid = handle.pid
                watcher = self._watcher = Watcher(handle, self._finished)
                _live.add(self)
                _logger().debug("started %s", self._label)
                try:
                    with anyio.move_on_after(BOOT_SLOT_SECONDS):
                        await watcher.until(lambda: watcher.ready or watcher.finished)
                    slot.release()  # booted, or slow to: the next start may go
                    await watcher.until(lambda: watcher.ready or watcher.finished)
                    if watcher.load_error is not None or not watcher.ready:
                        await watcher.until(lambda: watcher.finished)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        self.kill()
                        await watcher.until(lambda: watcher.finished)
                    raise
        finally:
            self._starting = False
        if watcher.load_error is not None:
            raise SpawnError(
                f"{self._label} could not load its target: is it importable from the child "
                "(defined at module level, not under `if __name__ == '__main__'`)?\n"
                f"{watcher.load_error}"
            )
        if not watcher.ready:
            raise SpawnError(
                f"{self._label} {describe_exit(watcher.exitcode or 0)} before it could run: "
                "it failed while preparing, before loading its target (its stderr says why). "
                "A common cause: the program starts processes at import time; under the "
                "forkserver and spawn start methods each child imports the main module, so "
                "its entry point must be under `if __name__ == '__main__':`"
            )

    async def wait(self) -> int:
        """Wait until the child exits; return its exit code.

        Any number of tasks may wait at once. Cancelling a waiter does not affect the child.
        For a timeout, wrap it in ``anyio.fail_after()`` or ``anyio.move_on_after()``.
        """
        watcher = self._require_started("wait for")
        await watcher.until(lambda: watcher.finished)
        assert watcher.exitcode is not None
        return watcher.exitcode

    async def join(self) -> int:
        """Alias of :meth:`wait`, the multiprocessing name."""
        return await self.wait()

    def terminate(self) -> None:
        """Send SIGTERM to the child and its descendants (its process group)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL to the child and its descendants (its process group)."""
        self._signal(signal.SIGKILL)

    def _signal(self, signum: signal.Signals) -> None:
        watcher = self._require_started("signal")
        if watcher.poll() is not None:
            return
        # Set before the signal goes (the exit may be seen at once), cleared if it found the
        # child already gone: a child that ended on its own was not stopped.
        stopping, self._stopping = self._stopping, True
        _logger().debug("sending %s to %s", signum.name, self._label)
        if not watcher.handle.signal(signum):
            self._stopping = stopping

    def close(self) -> None:
        """Release what the finished child held, as :meth:`multiprocessing.Process.close`.

        aioproc releases a child's fds by itself as soon as it sees the exit, so this is only
        needed for parity; it raises :class:`~aioproc.ProcessStateError` while the child runs.
        """
        watcher = self._require_started("close")
        if watcher.poll() is None:
            raise ProcessStateError(
                f"cannot close {self._label} while it is running: await p.wait() (or stop()) first"
            )

    async def stop(self, grace: float = DEFAULT_GRACE) -> int:
        """Terminate, wait up to ``grace`` seconds, then kill; return the exit code.

        Always reaps the child before returning. If the calling task is cancelled meanwhile,
        the child is killed and reaped at once, then the cancellation propagates.
        """
        import anyio

        if grace < 0:
            raise ValueError(f"grace must be >= 0, not {grace!r}")
        watcher = self._require_started("stop")
        if watcher.finished:
            assert watcher.exitcode is not None
            return watcher.exitcode
        pgid = watcher.handle.pid
        try:
            self.terminate()
            with anyio.move_on_after(grace):
                code = await self.wait()
                # Descendants in the child's process group got the SIGTERM too, and may
                # outlive it: they get the rest of the grace, then SIGKILL like the child.
                poll = _GROUP_POLL
                while _group_alive(pgid):  # polled: a process group empties without an event
                    await anyio.sleep(poll)
                    poll = min(2 * poll, _GROUP_POLL_MAX)
                return code
        except BaseException:
            with anyio.CancelScope(shield=True):
                self.kill()
                await self.wait()
                _kill_group(pgid)
            raise
        if watcher.finished:
            _logger().warning(
                "descendants of %s ignored SIGTERM for %.1f s; sending SIGKILL", self._label, grace
            )
        else:
            _logger().warning("%s ignored SIGTERM for %.1f s; sending SIGKILL", self._label, grace)
        self.kill()
        _kill_group(pgid)
        with anyio.CancelScope(shield=True):
            code = await self.wait()
        return code

    async def _stop_shielded(self, grace: float) -> None:
        """Graceful stop that a cancellation cannot cut short (groups, ``run()``, errors)."""
        import anyio

        with anyio.CancelScope(shield=True):
            await self.stop(grace)

    async def result(self) -> Any:
        """Wait for the child, then return what its target returned, or raise its failure.

        A child that raised re-raises its own exception here, with the child's traceback as
        ``__cause__`` and a note naming the process. Other failures raise
        :class:`~aioproc.ProcessFailed`.
        """
        await self.wait()
        error = self._failure()
        if error is not None:
            raise error
        if self._stopped_early:
            assert self.exitcode is not None
            raise ProcessFailed(
                f"{self._label} was stopped by aioproc and {describe_exit(self.exitcode)} "
                "before it returned a result",
                process=self,
                exitcode=self.exitcode,
            )
        return self._value

    async def __aenter__(self) -> Process:
        if not self._started:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            await self._stop_shielded(DEFAULT_GRACE)
            return
        try:
            if self._daemon:
                await self.stop()
            else:
                await self.wait()
        except BaseException:
            await self._stop_shielded(DEFAULT_GRACE)
            raise

    # --- outcome ----------------------------------------------------------------------------

    def _failure(self) -> BaseException | None:
        """The child's failure, or None if it succeeded or was stopped by aioproc."""
        watcher = self._watcher
        assert watcher is not None and watcher.exitcode is not None
        if not self._decoded:
            self._decode(watcher)
        return self._error

    def _decode(self, watcher: Watcher) -> None:
        exitcode = watcher.exitcode
        assert exitcode is not None
        frame, watcher.outcome = watcher.outcome, None  # the parent keeps the payload once
        kind = bytes(frame[:1]) if frame is not None else b""
        body = memoryview(frame)[1:] if frame is not None else memoryview(b"")
        self._decoded = True
        if kind == Kind.VALUE and (exitcode == 0 or self._stopping or watcher.handle.status_lost):
            # It returned; a stop that came after that does not take the value away, nor
            # does a fork server that died with the child's exit status (reported as 255).
            try:
                self._value = pickle.loads(body)
            except Exception as exc:  # noqa: BLE001 - reported as the child's failure
                self._error = ProcessFailed(
                    f"the result of {self._label} could not be unpickled in the parent: "
                    f"{type(exc).__name__}: {exc}",
                    process=self,
                    exitcode=exitcode,
                )
                self._error.__cause__ = exc
            return
        if self._stopping:
            # Stopped by aioproc: not a failure, whatever the child did on its way out.
            self._stopped_early = True
            return
        if kind == Kind.RAISED:
            self._error = rebuild_exception(pickle.loads(body), process=self, exitcode=exitcode)
        elif kind == Kind.UNPICKLABLE:
            value_type, *record = pickle.loads(body)
            self._error = ProcessFailed(
                f"the result of {self._label}, of type {value_type}, could not be pickled",
                process=self,
                exitcode=exitcode,
                remote_traceback=record[3],
            )
            self._error.__cause__ = rebuild_exception(
                tuple(record),
                process=self,
                exitcode=exitcode,
            )
        elif exitcode != 0:
            self._error = ProcessFailed(
                f"{self._label} {describe_exit(exitcode)}", process=self, exitcode=exitcode
            )

    def _exit_event(self) -> ExitEvent:
        from ._events import ExitEvent

        watcher = self._watcher
        assert watcher is not None and watcher.exitcode is not None and self._pid is not None
        return ExitEvent(
            process=self,
            name=self._name,
            pid=self._pid,
            exitcode=watcher.exitcode,
            error=self._failure(),
            stopped=self._stopping,
        )

    # --- plumbing ---------------------------------------------------------------------------

    def _finished(self) -> None:
        """The watcher saw the exit (the child's fds are released right after this)."""
        _live.discard(self)
        if self._on_exit is not None:
            self._on_exit()
        import logging

        logger = _logger()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s", self._label, describe_exit(self.exitcode or 0))

    @property
    def _started(self) -> bool:
        return self._watcher is not None

    @property
    def _label(self) -> str:
        return process_label(self)

    def _require_started(self, action: str) -> Watcher:
        if self._watcher is None:
            if self._current:
                raise ProcessStateError(f"cannot {action} the current process")
            raise ProcessStateError(
                f"cannot {action} {self._label}: it has not been started (await p.start())"
            )
        return self._watcher

    def __getstate__(self) -> dict[str, Any]:
        # What the child needs: the parent's watcher, fds and bookkeeping stay behind.
        state = self.__dict__.copy()
        state["_watcher"] = None
        state["_starting"] = False
        return state

    def _become_current(self) -> None:
        """In the child: this object now describes the running process itself."""
        self._current = True
        self._pid = os.getpid()
        self._watcher = None


#: How often stop() checks whether a stopped child's descendants have left its process group
#: (first, and at most: the check scans /proc).
_GROUP_POLL = 0.005
_GROUP_POLL_MAX = 0.1


def _group_alive(pgid: int) -> bool:
    """Whether a live process is left in the process group that a stopped child led.

    Safe after the child was reaped: the kernel does not reuse a pid while a process group of
    that id has members. A member that has died but waits for its reaper (orphans go to init,
    or to a container's PID 1, which may take seconds or never come) counts as gone.
    """
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        entries = list(os.scandir("/proc"))
    except OSError:  # pragma: no cover - no /proc: trust killpg
        return True
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                state, _ppid, group = f.read().rsplit(b")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if state != b"Z" and int(group) == pgid:
            return True
    return False


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left in a stopped child's process group (its descendants)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- module functions ---------------------------------------------------------------------


async def run(
    target: Callable[[*PosArgsT], T],
    *args: *PosArgsT,
    name: str | None = None,
    context: str | Context | None = None,
) -> T:
    """Run ``target(*args)`` in a new child process and return its result.

    Raises the child's failure (its own exception, or :class:`ProcessFailed`). If the calling
    task is cancelled, the child is stopped (SIGTERM, then SIGKILL after
    :data:`DEFAULT_GRACE` seconds) and reaped before the cancellation propagates. Keyword
    arguments for the target go through :func:`functools.partial`.
    """
    process = Process(target=target, args=args, name=name, context=context)
    async with process:
        result: Any = await process.result()
        return result  # type: ignore[no-any-return]


def current_process() -> Process:
    """The :class:`Process` that this code runs in.

    In a child started by aioproc, its own Process object (subclass and attributes included);
    elsewhere (the main program) a Process describing the current process.
    """
    if _child.current is not None and _child.current._pid == os.getpid():
        return _child.current
    pid = os.getpid()
    facade = _foreign.get(pid)
    if facade is None:
        mp = multiprocessing.current_process()
        facade = Process(name=mp.name, daemon=bool(mp.daemon))
        facade._become_current()
        _foreign.clear()  # a forked child must not see its parent's facade
        _foreign[pid] = facade
    return facade


def active_children() -> list[Process]:
    """aioproc processes started by this process that are still alive."""
    return [p for p in list(_live) if p.is_alive()]


def cpu_count() -> int:
    """The number of CPUs in the system, as :func:`multiprocessing.cpu_count`."""
    return multiprocessing.cpu_count()


def forget_parent_children() -> None:
    """In a freshly forked child: close the parent's fds for its children and forget them."""
    for process in list(_live):
        watcher = process._watcher
        if watcher is not None:
            for fd in watcher.handle.fds():
                try:
                    os.close(fd)
                except OSError:
                    pass
    _live.clear()
    _foreign.clear()


@atexit.register
def _finish_children_at_exit() -> None:
    """At interpreter exit, as when leaving a group: wait for non-daemonic children, then stop
    the daemonic ones.

    multiprocessing does the same, but its stop of a daemonic child never escalates, so a
    child that ignores SIGTERM hangs the exit (pitfall 12); here it is SIGTERM, up to
    DEFAULT_GRACE seconds, then SIGKILL. An interrupt (Ctrl-C) while waiting stops every
    child instead. No event loop runs any more, so this polls every few milliseconds.
    """
    running = [p for p in list(_live) if p.is_alive()]
    if not running:
        return
    try:
        waiting = [p for p in running if not p.daemon]
        if waiting:
            _logger().debug("waiting for %d non-daemonic children at exit", len(waiting))
        while waiting:
            time.sleep(0.005)
            waiting = [p for p in waiting if p.is_alive()]
    except KeyboardInterrupt:
        _logger().warning("interrupted while waiting for children at exit: stopping them")
    running = [p for p in running if p.is_alive()]
    for p in running:
        p.terminate()
    deadline = time.monotonic() + DEFAULT_GRACE
    while running and time.monotonic() < deadline:
        time.sleep(0.005)
        running = [p for p in running if p.is_alive()]
    for p in running:
        _logger().warning("%s ignored SIGTERM at interpreter exit; sending SIGKILL", p._label)
        p.kill()
    deadline = time.monotonic() + DEFAULT_GRACE  # SIGKILL cannot be ignored; this is a bound
    while running and time.monotonic() < deadline:
        time.sleep(0.005)
        running = [p for p in running if p.is_alive()]
