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
- ``_forkserver.py`` the fork server, started by aioproc so that its preload works
- ``_child.py``    the child-side bootstrap: fds, process group, parent-death guard, result
- ``_wire.py``     the frame pipe between child and parent
- ``_events.py``   ``ExitEvent``
- ``_errors.py``   every error, and how a child's exception is rebuilt in the parent
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._errors import (
        ProcessError,
        ProcessFailed,
        ProcessStateError,
        RemoteTraceback,
        SpawnError,
    )
    from ._events import ExitEvent
    from ._group import EventStream, ProcessGroup, open_group
    from ._process import (
        DEFAULT_GRACE,
        Process,
        active_children,
        cpu_count,
        current_process,
        run,
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

#: Where each public name lives. They are imported on first use (PEP 562): every child
#: imports this package to run its target and needs little of it -- importing anyio, attrs
#: and the launcher up front would double a spawn child's start-up time.
_HOME = {
    **dict.fromkeys(
        ["ProcessError", "ProcessFailed", "ProcessStateError", "RemoteTraceback", "SpawnError"],
        "._errors",
    ),
    "ExitEvent": "._events",
    **dict.fromkeys(["EventStream", "ProcessGroup", "open_group"], "._group"),
    **dict.fromkeys(
        ["DEFAULT_GRACE", "Process", "active_children", "cpu_count", "current_process", "run"],
        "._process",
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'aioproc' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # once found, a plain module attribute
    return value


def __dir__() -> list[str]:
    return [*__all__, "__version__"]
