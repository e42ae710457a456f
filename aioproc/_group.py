"""Process groups: structured concurrency for child processes.

A group is a task group whose tasks are watchers, one per child. A watcher waits for its
child and checks it (the child's :class:`ExitEvent` is recorded the moment its exit is seen,
so events come in exit order whatever order the tasks run in); when the watcher is cancelled
-- the group is cancelled, its body raised, a checked sibling failed, or the block ended and
the child is a daemon -- it stops its child (SIGTERM, ``grace``, SIGKILL) and reaps it before
letting the cancellation go on. So the one rule "no child outlives its group" is one
mechanism: the task group's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVarTuple

import anyio
import anyio.abc

from ._errors import ProcessStateError
from ._events import ExitEvent
from ._launcher import Context, resolve_context
from ._process import DEFAULT_GRACE, Process

__all__ = ["ProcessGroup", "open_group"]

PosArgsT = TypeVarTuple("PosArgsT")


def open_group(
    *,
    grace: float = DEFAULT_GRACE,
    max_running: int | None = None,
    context: str | Context | None = None,
) -> ProcessGroup:
    """A group of child processes, to be used as ``async with aioproc.open_group() as group``.

    ``grace`` is the time between SIGTERM and SIGKILL when the group stops a child;
    ``max_running`` bounds how many of its children run at once (``spawn`` waits for a slot);
    ``context`` is the start method for its children (default: forkserver on Linux).
    """
    return ProcessGroup(grace=grace, max_running=max_running, context=context, _stacklevel=2)


class ProcessGroup:
    """Children that cannot outlive the ``async with`` block they were spawned in.

    Leaving the block normally waits for every non-daemon child, then stops the daemon ones.
    Leaving it by an exception or a cancellation stops every child and reaps all of them
    before the exception propagates. A checked child (``check=True``) that fails cancels the
    group like a failing task in a task group: the block raises an ``ExceptionGroup`` holding
    the child's failure.
    """

    def __init__(
        self,
        *,
        grace: float = DEFAULT_GRACE,
        max_running: int | None = None,
        context: str | Context | None = None,
        _stacklevel: int = 1,
    ) -> None:
        if not (isinstance(grace, (int, float)) and grace >= 0 and not math.isnan(grace)):
            raise ValueError(f"grace must be a number of seconds >= 0, not {grace!r}")
        if max_running is not None and (
            not isinstance(max_running, int) or isinstance(max_running, bool) or max_running < 1
        ):
            raise ValueError(f"max_running must be a positive int or None, not {max_running!r}")
        self._grace = float(grace)
        self._max_running = max_running
        self._context = resolve_context(context, stacklevel=_stacklevel + 1)
        self._processes: list[Process] = []
        self._events: list[ExitEvent] = []
        self._changed = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._slots: anyio.Semaphore | None = None
        self._daemon_scopes: dict[Process, anyio.CancelScope] = {}
        self._entered = False
        self._stopping_daemons = False
        #: Non-daemonic children whose watcher has not finished: leaving normally waits for 0.
        self._non_daemons_watched = 0
        self._closed = False

    @property
    def processes(self) -> list[Process]:
        """Every child spawned in this group, in spawn order."""
        return list(self._processes)

    @property
    def running(self) -> list[Process]:
        """The children still alive."""
        return [p for p in self._processes if p.is_alive()]

    async def spawn(
        self,
        target: Callable[[*PosArgsT], Any],
        *args: *PosArgsT,
        name: str | None = None,
        daemon: bool | None = None,
        check: bool = True,
    ) -> Process:
        """Start ``target(*args)`` in a child of this group; return it once it runs.

        Keyword arguments for the target go through :func:`functools.partial`.
        """
        process = Process(target=target, args=args, name=name, daemon=daemon)
        return await self.start(process, check=check)

    async def start(self, process: Process, *, check: bool = True) -> Process:
        """Start an unstarted :class:`Process` (or subclass) as a child of this group."""
        tg = self._require_open()
        if not isinstance(process, Process):
            raise TypeError(f"group.start() takes an aioproc.Process, not {type(process).__name__}")
        if self._slots is not None:
            await self._slots.acquire()
        try:
            await process._start(self._context)
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise
        self._processes.append(process)
        # The exit is recorded the moment the watcher sees it, not when this child's watcher
        # task next runs: a child that exited while it started (or before its task's first
        # turn) must not be listed after a sibling that exited later.
        if _exited(process):
            self._record_exit(process)
        else:
            process._on_exit = functools.partial(self._record_exit, process)
        if not process.daemon:
            self._non_daemons_watched += 1
        scope = anyio.CancelScope()
        if process.daemon:
            # Registered now, not when the watcher first runs: a block that ends right after
            # this spawn (no checkpoint in between) must still find the daemon to stop.
            self._daemon_scopes[process] = scope
            if self._stopping_daemons:
                scope.cancel()  # spawned from outside while the block stops its daemons
        tg.start_soon(self._watch, process, check, scope, name=f"aioproc watcher {process.name}")
        return process

    def events(self, *, follow: bool = False) -> EventStream:
        """Iterate over children's exits as :class:`ExitEvent`, in the order they exited.

        Each iterator gets every event once, including those of children that exited before
        it began (the group keeps every child and its event for as long as it lives). It ends
        when every child spawned so far has exited -- or, with ``follow=True``, only once the
        group has closed: the way for a long-running program that keeps spawning to follow
        exits, from a task outside the ``async with`` block::

            async with anyio.create_task_group() as tg:
                async with aioproc.open_group() as group:
                    tg.start_soon(log_exits, group)   # async for ev in group.events(follow=True)
                    ...
        """
        return EventStream(self, follow)

    # --- the block --------------------------------------------------------------------------

    async def __aenter__(self) -> ProcessGroup:
        if self._entered:
            raise ProcessStateError("a process group can be entered only once")
        self._entered = True
        if self._max_running is not None:
            self._slots = anyio.Semaphore(self._max_running)
        # Wake (not replace) the event: a follower may already wait on it, from before entry.
        self._notify()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        assert tg is not None
        try:
            if exc is None:
                try:
                    await self._wait_for_non_daemons()
                except BaseException as error:  # noqa: BLE001 - handed to the task group below
                    exc = error
                else:
                    self._stopping_daemons = True
                    for scope in list(self._daemon_scopes.values()):
                        scope.cancel()
            if exc is None:
                return await tg.__aexit__(None, None, None)
            return await tg.__aexit__(type(exc), exc, exc.__traceback__)
        finally:
            self._closed = True
            self._notify()

    async def _wait_for_non_daemons(self) -> None:
        while self._non_daemons_watched:
            await self._changed.wait()

    def _record_exit(self, process: Process) -> None:
        # Called by whatever saw the exit, which may be sync code outside any event loop (at
        # interpreter exit): it only records. Iterators are woken by the child's watcher task.
        self._events.append(process._exit_event())

    async def _watch(self, process: Process, check: bool, scope: anyio.CancelScope) -> None:
        """One per child: wait for it, stop it if cancelled, check it."""
        try:
            with scope:
                try:
                    await process.wait()
                except anyio.get_cancelled_exc_class():
                    await process._stop_shielded(self._grace)
                    if not (check and process._failure() is not None):
                        raise
                    # It had failed on its own before the stop reached it: that is a
                    # failure, not a stop, and must not be lost. Raised below, instead of
                    # the cancellation.
        finally:
            self._daemon_scopes.pop(process, None)
            if not process.daemon:
                self._non_daemons_watched -= 1
            if self._slots is not None:
                self._slots.release()
            self._notify()
        if check and _exited(process) and (error := process._failure()) is not None:
            raise error

    # --- plumbing ---------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _require_open(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise ProcessStateError("use the group in `async with aioproc.open_group() as group`")
        if self._closed:
            raise ProcessStateError("this process group is closed: spawn inside its block")
        return self._tg


def _exited(process: Process) -> bool:
    watcher = process._watcher
    return watcher is not None and watcher.finished


class EventStream:
    """An async iterator over a group's :class:`ExitEvent` (see :meth:`ProcessGroup.events`)."""

    def __init__(self, group: ProcessGroup, follow: bool) -> None:
        self._group = group
        self._follow = follow
        self._next = 0

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ExitEvent:
        group = self._group
        while True:
            if self._next < len(group._events):
                event = group._events[self._next]
                self._next += 1
                return event
            all_exited = len(group._events) >= len(group._processes)
            if all_exited and (group._closed or not self._follow):
                raise StopAsyncIteration
            await group._changed.wait()
