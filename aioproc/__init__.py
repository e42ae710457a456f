"""aioproc: async-first processes for anyio (asyncio, uvloop, trio).

``multiprocessing.Process`` with an awaitable lifecycle, process groups with structured
concurrency, and exit events::

    async with aioproc.open_group() as group:
        await group.spawn(work, 1)
        async for event in group.events():
            print(event.name, event.exitcode)

Where to read on (each module owns one idea):

- ``_process.py``  the Process facade, ``run()`` and the module functions; its docstring has
  the diagram of how a child is started, watched and signalled
- ``_group.py``    process groups: one watcher task per child inside a task group
- ``_watch.py``    exit watching: one watcher per child feeds every waiter
- ``_launcher.py`` the seam that makes processes (multiprocessing today), start methods
- ``_child.py``    the child-side bootstrap: process group, watchdog, result
- ``_wire.py``     the frame pipe between child and parent
- ``_events.py``   ``ExitEvent``
- ``_errors.py``   every error, and how a child's exception is rebuilt in the parent
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, TypeVarTuple

from ._errors import (
    ProcessError,
    ProcessFailed,
    ProcessStateError,
    RemoteTraceback,
    SpawnError,
)
from ._events import ExitEvent
from ._group import EventStream, ProcessGroup, open_group
from ._launcher import Context
from ._process import (
    DEFAULT_GRACE,
    Process,
    active_children,
    cpu_count,
    current_process,
)

__all__ = [
    "DEFAULT_GRACE",
    "EventStream",
    "ExitEvent",
    "Process",
    "ProcessError",
    "ProcessFailed",
    "ProcessGroup",
    "ProcessStateError",
    "RemoteTraceback",
    "SpawnError",
    "active_children",
    "cpu_count",
    "current_process",
    "open_group",
    "run",
]

__version__ = "0.1.0"

T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")


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
