"""Exit events: one frozen record per child, made when aioproc has seen the child exit."""

from __future__ import annotations

import signal as _signal
from typing import TYPE_CHECKING

import attrs

from ._errors import signal_of

if TYPE_CHECKING:
    from ._process import Process

__all__ = ["ExitEvent"]


@attrs.frozen(eq=False)
class ExitEvent:
    """How one child ended.

    ``ok`` is true when the child succeeded (exit code 0) or was stopped by aioproc itself
    (``terminate``, ``kill``, ``stop`` or its group): a stop is never a failure. Otherwise
    ``error`` is the failure that ``Process.result()`` raises: the child's own exception, or a
    :class:`~aioproc.ProcessFailed`.
    """

    #: The :class:`~aioproc.Process` that exited.
    process: Process
    #: Its name.
    name: str
    #: Its pid.
    pid: int
    #: ``0`` success, ``>0`` error exit, ``-N`` killed by signal ``N``.
    exitcode: int
    #: The child's failure, or ``None`` when it succeeded or was stopped by aioproc.
    error: BaseException | None
    #: True when aioproc sent the child a stopping signal before it exited.
    stopped: bool

    @property
    def signal(self) -> _signal.Signals | None:
        """The signal that killed the child, or ``None``."""
        return signal_of(self.exitcode)

    @property
    def ok(self) -> bool:
        """True unless the child failed."""
        return self.error is None
