"""The child side: everything a child does before and after running its target.

``bootstrap`` is the target of the multiprocessing process that carries an aioproc child. In
order, it: takes the parent's stdout, stderr and environment (forkserver), becomes the leader
of its own process group, loads the Process object, reports READY, arms the parent-death guard
(:func:`guard_parent`), runs ``Process.run()`` and sends back its value or its exception. Every
fd the child is given is set up here, in one place.
"""

from __future__ import annotations

import _thread
import fcntl
import multiprocessing
import os
import pickle
import select
import signal
from multiprocessing import reduction
from typing import TYPE_CHECKING, Any

from ._wire import Kind, poll_now, write_frame

if TYPE_CHECKING:
    from ._errors import ExceptionRecord
    from ._process import Process

__all__ = ["InheritedFd", "Payload", "bootstrap", "current"]

#: The Process object this child runs, once the bootstrap has loaded it.
current: Process | None = None


# --- what crosses the boundary ---------------------------------------------------------------
# Made by the parent at launch (``_launcher.py``), rebuilt here. This module and what it
# imports is all that a spawn child loads before its target: keep it light.


class InheritedFd:
    """An fd that the child receives: by inheritance under fork, by fd passing otherwise."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        # Runs while multiprocessing pickles the process object, so the spawning Popen is set
        # and DupFd registers the fd to be passed to the child.
        return (_rebuild_fd, (reduction.DupFd(self.fd),))


def _rebuild_fd(dup: Any) -> InheritedFd:
    return InheritedFd(dup.detach())


class Payload:
    """The Process object, pickled by the parent at launch but unpickled by the bootstrap.

    Pickling happens inside multiprocessing's own pickling of the launch (so Queues, Locks and
    Connections in the arguments work as they do with the stdlib); unpickling is deferred to the
    child's bootstrap, so a target the child cannot import is reported over the pipe as a
    :class:`SpawnError` instead of a traceback on the child's stderr.
    """

    def __init__(self, obj: Process) -> None:
        self.obj: Process | None = obj
        self.data: bytes | None = None
        self.error: BaseException | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        try:
            data = bytes(reduction.ForkingPickler.dumps(self.obj))
        except BaseException as exc:
            self.error = exc
            raise
        return (_payload_from_bytes, (data,))

    def load(self) -> Process:
        if self.obj is None:
            assert self.data is not None
            self.obj = pickle.loads(self.data)
            self.data = None
        return self.obj


def _payload_from_bytes(data: bytes) -> Payload:
    payload = Payload.__new__(Payload)
    payload.obj, payload.data, payload.error = None, data, None
    return payload


#: What a forkserver child takes from its parent at start: stdout, stderr, the environment.
Inherit = tuple[InheritedFd | None, InheritedFd | None, dict[str, str] | None]


# --- the bootstrap ----------------------------------------------------------------------------


def bootstrap(
    payload: Payload, result: InheritedFd, inherit: Inherit | None, liveness: InheritedFd
) -> None:
    global current
    fd = result.fd
    if inherit is not None:
        # A forkserver child is a fork of the server: it has the server's stdout, stderr and
        # environment, from when the server started. Take the parent's current ones.
        *stdio, environ = inherit
        for target, inherited in zip((1, 2), stdio, strict=True):
            if inherited is not None:
                os.dup2(inherited.fd, target)
                os.close(inherited.fd)
        if environ is not None and os.environ != environ:
            os.environ.clear()
            os.environ.update(environ)
    # Lead a process group, so that terminate/kill/stop reach our descendants too. start()
    # returns only after READY, so the parent never signals a group that does not exist yet.
    os.setpgid(0, 0)
    from . import _process

    # Under fork we inherited the parent's bookkeeping and its fds for our siblings: drop
    # them, or a sibling's parent-death pipe stays open in us (pitfall 14).
    _process.forget_parent_children()
    try:
        process = payload.load()
    except BaseException:  # noqa: BLE001 - whatever it is, the parent must hear of it
        import traceback  # only now: a child that runs fine never needs it

        write_frame(fd, Kind.LOAD_FAILED, traceback.format_exc().encode())
        raise SystemExit(1) from None
    process._become_current()
    current = process
    write_frame(fd, Kind.READY)
    if poll_now(fd, 0) & select.POLLERR:
        # Nobody reads our frames: the parent gave up on this start (its fork server died
        # before it could report our pid, so the start failed). Run nothing.
        raise SystemExit(1)
    # After READY, which it would only delay: a parent that is already gone by now is seen
    # at once. The guard is armed before the target runs.
    guard_parent(liveness.fd)
    try:
        value = process.run()
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the child's failure travels to the parent
        write_frame(fd, Kind.RAISED, pickle.dumps(_exception_record(exc)))
        raise SystemExit(1) from None
    try:
        body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - pickling can fail in any way
        value_type = f"{type(value).__module__}.{type(value).__qualname__}"
        record = (value_type, *_exception_record(exc))
        write_frame(fd, Kind.UNPICKLABLE, pickle.dumps(record))
        raise SystemExit(1) from None
    write_frame(fd, Kind.VALUE, body)


def _exception_record(exc: BaseException) -> ExceptionRecord:
    """(pickled exception or None, type name, message, formatted traceback, why no pickle)."""
    import traceback  # only now: a child that runs fine never needs it

    frames = exc.__traceback__
    # Start the traceback at the user's code, not at this bootstrap.
    while frames is not None and frames.tb_frame.f_globals.get("__name__", "").startswith(
        "aioproc._"
    ):
        frames = frames.tb_next
    tb = "".join(traceback.format_exception(type(exc), exc, frames))
    data: bytes | None = None
    why: str | None = None
    try:
        data = pickle.dumps(exc)
    except Exception as error:  # noqa: BLE001 - any failure means "send the text instead"
        why = f"it could not be pickled ({type(error).__name__}: {error})"
    else:
        # Round-trip here: an exception that pickles but cannot be rebuilt (a custom
        # __init__ with required arguments) would otherwise fail in the parent (pitfall 15).
        try:
            pickle.loads(data)
        except Exception as error:  # noqa: BLE001 - as above
            data = None
            why = f"it could not be rebuilt from its pickle ({type(error).__name__}: {error})"
    cls = type(exc)
    name = cls.__qualname__
    if cls.__module__ != "builtins":
        name = f"{cls.__module__}.{name}"
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the whole failure
        message = "<exception str() failed>"
    return data, name, message, tb, why


def guard_parent(liveness: int) -> None:
    """End this child and its process group as soon as the parent process dies, however.

    ``liveness`` is the read end of the parent's liveness pipe, whose write end only the
    parent holds and nobody ever writes to. Through a file description of its own on that
    pipe, the child asks the kernel for a SIGKILL to its process group when the pipe's last
    writer goes (``O_ASYNC`` with ``F_SETSIG``, ``F_SETOWN``): the kernel sends it while it
    tears down the dead parent, whatever the child is doing -- sleeping, stopped, or holding
    the GIL in C code. No thread, no Python code runs for it; it also works for every start
    method and for SIGKILL, unlike PR_SET_PDEATHSIG, which follows the parent's *thread* and
    does nothing under forkserver (pitfall 11).

    (Not multiprocessing's own parent sentinel: the parent writes the child's data to that
    pipe, and the kernel signals its readers after each write, so the tail of a write still
    under way could kill a child that has already read the data and armed.)

    Where that cannot be armed (no ``F_SETSIG`` outside Linux, no ``/proc``), a watchdog
    thread waits on multiprocessing's parent sentinel instead.
    """
    try:
        # A file description of our own: F_SETOWN belongs to the description, and the one
        # we were given is shared with the parent and with every sibling.
        own = os.open(f"/proc/self/fd/{liveness}", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        own = -1
    os.close(liveness)
    if own >= 0:
        try:
            fcntl.fcntl(own, fcntl.F_SETSIG, signal.SIGKILL)
            fcntl.fcntl(own, fcntl.F_SETOWN, -os.getpid())  # negative: our process group
            fcntl.fcntl(own, fcntl.F_SETFL, fcntl.fcntl(own, fcntl.F_GETFL) | os.O_ASYNC)
        except (AttributeError, OSError):
            os.close(own)
        else:
            # Kept for our whole life, through exec() too: closing it disarms the guard.
            os.set_inheritable(own, True)
            if poll_now(own, select.POLLIN) & select.POLLHUP:
                # The parent died before we armed: nothing will fire now.
                os.killpg(0, signal.SIGKILL)
            return
    _start_watchdog()


def _start_watchdog() -> None:
    """The fallback of :func:`guard_parent`: a thread that waits for the parent's death.

    It waits on multiprocessing's parent sentinel, a pipe whose other end only the parent
    holds, and SIGKILLs the child's process group when it reads EOF.
    """
    parent = multiprocessing.parent_process()
    if parent is None:  # pragma: no cover - only when run outside multiprocessing
        return
    sentinel = parent.sentinel

    def watch() -> None:
        # poll(), not select(): a fork child inherits its parent's fd numbers, which can be
        # above select()'s FD_SETSIZE in a parent with hundreds of children.
        poller = select.poll()
        poller.register(sentinel, select.POLLIN)
        poller.poll()  # readable (EOF) once the parent is gone; PEP 475 retries on signals
        if os.getpgid(0) == os.getpid():
            os.killpg(0, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    # A bare thread: threading.Thread.start() waits until the new thread runs, which would
    # delay the target; this one needs no Thread object (nothing joins it; the child leaves
    # with os._exit) and starts while the target does. It is born with every signal blocked:
    # a signal for the process that the kernel handed to it would not interrupt the main
    # thread, whose Python handler (a SIGTERM handler, KeyboardInterrupt) would then wait
    # until the main thread woke up by itself -- after a time.sleep(60), say.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        _thread.start_new_thread(watch, ())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
