"""Every error aioproc raises, and how a child's failure is rebuilt in the parent.

A child that raises sends its exception back pickled, with the formatted traceback as text
beside it (see ``_child.py``). The parent re-raises the child's *own* exception type with that
traceback attached as ``__cause__`` -- the way ``concurrent.futures`` does -- and a note naming
the process. Whatever cannot make that trip becomes a :class:`ProcessFailed` that carries the
type name, message and traceback as text, so nothing about the failure is lost.
"""

from __future__ import annotations

import pickle
import signal as _signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._process import Process

__all__ = [
    "ProcessError",
    "ProcessFailed",
    "ProcessStateError",
    "RemoteTraceback",
    "SpawnError",
]


class ProcessError(Exception):
    """Base class of aioproc's own errors."""


class ProcessFailed(ProcessError):
    """A child ended unsuccessfully without a Python exception that could be carried back.

    That is: it exited with a nonzero code, was killed by a signal that aioproc did not send,
    raised an exception that could not be pickled (its type name, message and traceback are in
    the message and :attr:`remote_traceback`), or returned a result that could not be pickled
    (then ``__cause__`` is the pickling error).
    """

    def __init__(
        self,
        message: str,
        *,
        process: Process | None = None,
        exitcode: int | None = None,
        remote_traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        #: The :class:`~aioproc.Process` that failed.
        self.process = process
        #: Its exit code: ``>0`` for an error exit, ``-N`` when killed by signal ``N``.
        self.exitcode = exitcode
        #: The child's formatted traceback, when there was one.
        self.remote_traceback = remote_traceback

    @property
    def signal(self) -> _signal.Signals | None:
        """The signal that killed the child, or ``None``."""
        return signal_of(self.exitcode)

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only fields would be lost by BaseException's default reduce; a nested
        # aioproc failure may have to cross a process boundary itself.
        return (
            _rebuild_failed,
            (type(self), str(self), self.process, self.exitcode, self.remote_traceback),
        )


def _rebuild_failed(
    cls: type[ProcessFailed],
    message: str,
    process: Process | None,
    exitcode: int | None,
    remote_traceback: str | None,
) -> ProcessFailed:
    return cls(message, process=process, exitcode=exitcode, remote_traceback=remote_traceback)


class SpawnError(ProcessError):
    """A child could not be started.

    The message says why: a target or argument that cannot be sent to the child under the
    start method, a daemonic process trying to have children, a child that could not load its
    target, or resource exhaustion (file descriptors, processes, memory).
    """


class ProcessStateError(ProcessError, RuntimeError):
    """A :class:`~aioproc.Process` or group was used in a state that does not allow it.

    For example starting a process twice, changing ``daemon`` after start, or waiting for a
    process that was never started.
    """


class RemoteTraceback(Exception):
    """The child's formatted traceback, attached as ``__cause__`` of a re-raised exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


def signal_of(exitcode: int | None) -> _signal.Signals | None:
    """The signal that a negative exit code stands for."""
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return _signal.Signals(-exitcode)
    except ValueError:  # a real-time signal without a name
        return None


def describe_exit(exitcode: int) -> str:
    sig = signal_of(exitcode)
    if sig is not None:
        return f"was killed by {sig.name}"
    if exitcode < 0:
        return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


#: How a child's exception travels (``_child.py``): its pickle (None if it has none that
#: works), type name, message, formatted traceback, and why there is no pickle.
ExceptionRecord = tuple[bytes | None, str, str, str, str | None]


def rebuild_exception(
    record: ExceptionRecord, *, process: Process, exitcode: int | None
) -> BaseException:
    """The child's exception as the parent re-raises it.

    Only ``Exception`` subclasses are re-raised as themselves: a ``KeyboardInterrupt`` or
    other ``BaseException`` from a child re-raised in the parent would look like the parent's
    own interrupt, so it becomes a :class:`ProcessFailed` naming it instead.
    """
    data, type_name, message, tb, why = record
    label = process_label(process)
    exc: object = None
    if data is not None:
        try:
            exc = pickle.loads(data)
        except Exception as error:  # noqa: BLE001 - any unpickling failure means "use the text"
            why = f"it could not be unpickled in the parent ({type(error).__name__}: {error})"
    if isinstance(exc, Exception):
        exc.__cause__ = RemoteTraceback(tb)
        exc.add_note(f"raised in child {label}")
        return exc
    if exc is not None:
        why = "it is not an Exception, so it is not re-raised as itself"
    return ProcessFailed(
        f"{label} raised {type_name}: {message} ({why}; the child's traceback follows)\n{tb}",
        process=process,
        exitcode=exitcode,
        remote_traceback=tb,
    )


def process_label(process: Process) -> str:
    return f"process {process.name!r} (pid {process.pid})"
