"""Exit watching: one watcher per child feeds every waiter of that child.

A child has two fds worth waiting on: its frame pipe (READY, then a value or an exception) and
its exit fd. Only one task may wait on an fd at a time (pitfall 8), so the watcher's lock elects
one task to do the waiting -- the first ``wait()``, ``result()``, ``start()`` or group watcher
to ask -- while the others queue on the lock and find the answer already there. Cancelling
the task that waits costs nothing: the watcher keeps what it has read, and the next task in
line carries on. No thread is involved: this is ``anyio.wait_readable`` on two fds.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from ._launcher import Handle
from ._wire import FrameReader, Kind

__all__ = ["Watcher"]


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
        """The exit code if the child has exited, without waiting or reading its frames."""
        if self.exitcode is not None:
            return self.exitcode
        return self.handle.poll()

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
            while self.handle.poll() is None:
                await anyio.wait_readable(self.handle.exit_fd)
                if self.handle.poll() is None:
                    # A pidfd is readable a moment before waitpid() has the status.
                    await anyio.sleep(0.0005)
            # The child is gone, so everything it wrote is in the pipe: take it now, since
            # a grandchild holding the pipe open may keep EOF from ever coming (pitfall 20).
            self._read()
            tg.cancel_scope.cancel()
        if self.handle.poll() is not None and self.exitcode is None:
            # Every waiter on our fds is gone with the task group: safe to close them.
            self.exitcode = self.handle.poll()
            self.handle.close()
            self._on_finish()

    async def _pump(self, done: Callable[[], bool], scope: anyio.CancelScope) -> None:
        while not self._reader.eof:
            await anyio.wait_readable(self.handle.result_fd)
            self._read()
            if done():
                scope.cancel()
                return

    def _read(self) -> None:
        self._reader.read_available()
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
