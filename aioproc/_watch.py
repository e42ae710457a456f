"""Exit watching: one watcher per child feeds every waiter of that child.

A child has two things worth waiting on: its frame pipe (READY, then a value or an exception)
and its exit. Only one task may wait on an fd at a time (pitfall 8), so the watcher's lock
elects one task to do the waiting -- the first ``wait()``, ``result()``, ``start()`` or group
watcher to ask -- while the others queue on the lock and find the answer already there.
Cancelling the task that waits costs nothing: the watcher keeps what it has read, and the next
task in line carries on. No thread is involved: this is ``anyio.wait_readable`` on fds.

Once the child has exited, the watcher drains its pipe and releases its fds: at the end of a
watch, or in ``poll()`` (``exitcode``, ``is_alive()``) when no task is watching, so a child that
nobody awaits leaks nothing either.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from ._launcher import Handle
from ._wire import FrameReader, Kind

__all__ = ["Watcher"]

#: Bytes read from the frame pipe per wake-up: a 500 MB result streams in slices, so the event
#: loop runs other tasks between them.
READ_BUDGET = 1 << 20


class Watcher:
    def __init__(self, handle: Handle, on_finish: Callable[[], None]) -> None:
        self.handle = handle
        self._reader = FrameReader(handle.result_fd)
        self._on_finish = on_finish
        self._lock = anyio.Lock()
        #: True once READY (or LOAD_FAILED) arrived.
        self.ready = False
        #: The LOAD_FAILED traceback, if the child could not load its target.
        self.load_error: str | None = None
        #: The frame carrying the outcome (VALUE, RAISED or UNPICKLABLE), if any arrived.
        self.outcome: bytearray | None = None
        #: Set once the child exited, its last frames were read and its fds released.
        self.exitcode: int | None = None

    @property
    def finished(self) -> bool:
        return self.exitcode is not None

    def poll(self) -> int | None:
        """The exit code if the child has exited, without waiting.

        With no task watching, this also reads what the child has written so far -- a child
        writing a big result can only finish once it is read -- and, once the child has
        exited, finishes the watch: nobody waits on our fds, so they can be closed now.
        """
        if self.exitcode is not None:
            return self.exitcode
        idle = not self._lock.locked()
        if idle:
            self._read(READ_BUDGET)
        code = self.handle.poll()
        if code is not None and idle:
            self._finish()
        return code

    async def until(self, done: Callable[[], bool]) -> None:
        """Watch the child until ``done()`` (checked after every frame and at exit)."""
        while not done():
            async with self._lock:
                if done():
                    return
                await self._watch(done)

    async def _watch(self, done: Callable[[], bool]) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._pump, done, tg.cancel_scope)
            await self.handle.wait()
            tg.cancel_scope.cancel()
        # Every wait on our fds ended with the task group: safe to close them.
        if self.exitcode is None and self.handle.poll() is not None:
            self._finish()

    async def _pump(self, done: Callable[[], bool], scope: anyio.CancelScope) -> None:
        while not self._reader.eof:
            await anyio.wait_readable(self.handle.result_fd)
            self._read(READ_BUDGET)
            if done():
                scope.cancel()
                return

    def _finish(self) -> None:
        # The child is gone, so everything it wrote is in the pipe: read it all now, without
        # waiting for EOF, which a grandchild holding the pipe may keep from coming (pitfall 20).
        self._read(None)
        self.exitcode = self.handle.poll()
        # Forget the child before closing its fds: a fork start in a start thread copies the
        # list of live children, and its child closes their fds (_child.py). A child listed
        # with fds already closed here would close fd numbers reused by then -- its own pipe.
        self._on_finish()
        self.handle.close()

    def _read(self, budget: int | None) -> None:
        self._reader.read_available(budget)
        for frame in self._reader.frames:
            kind = bytes(frame[:1])
            if kind == Kind.READY:
                self.ready = True
            elif kind == Kind.LOAD_FAILED:
                self.ready = True
                self.load_error = frame[1:].decode(errors="replace")
            else:
                self.outcome = frame
        self._reader.frames.clear()
