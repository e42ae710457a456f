"""Exit watching: one watcher per child, one poller per event loop, no thread.

A child has two fds worth waiting on: its frame pipe (READY, then a value or an exception)
and its exit fd (``Handle.exit_fd()``). Each watcher registers both, once, in one selector
(epoll) per event loop -- the poller -- and every task that waits for any child waits on the
poller's single fd::

    task A: await p1.wait() ─┐ leads: awaits the poller's fd, reads what is ready,
    task B: await p2.wait()  │ hands it to the watchers it belongs to
    group watcher of p3 ...  ┘ the others sleep on an Event of their watcher

    poller (epoll) ◀── frame pipe, exit fd of p1, p2, p3, ...

The first task to wait leads; when it is done (or cancelled) it wakes one of the others to
take over. Only one task ever waits on an fd (pitfall 8), cancelling a waiter costs nothing
(what was read stays read), and a storm of hundreds of children costs the event loop one
registration, not a task group and two registrations per child per wait.

Once a child has exited, its watcher drains its pipe, leaves the poller and releases its fds,
at the next dispatch or in ``poll()`` (``exitcode``, ``is_alive()``), whichever comes first.
"""

from __future__ import annotations

import selectors
from collections.abc import Callable

import anyio
import anyio.lowlevel

from ._launcher import Handle
from ._wire import FrameReader, Kind

__all__ = ["Watcher"]

#: Bytes read from a frame pipe per wake-up: a 500 MB result streams in slices, so the event
#: loop runs other tasks between them.
READ_BUDGET = 1 << 20
#: How long to wait before asking again when an exit fd fired but the exit status is not there
#: yet (pitfall 6: a pidfd is readable a moment before waitpid() has the status).
STATUS_RETRY = 0.0005

_FRAMES, _EXIT = "frames", "exit"

#: A task waiting without leading: what it waits for, and the Event that wakes it.
_Waiter = tuple[Callable[[], bool], anyio.Event]


class _Poller:
    """The selector of every watched fd of one event loop, and who waits on it."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.leading = False
        #: Events of the tasks that wait without leading; one is woken to take over.
        self.standby: dict[anyio.Event, None] = {}
        #: Set by a dispatch that found an exit fd ready but no status: retry shortly.
        self.stalled = False
        self.closed = False

    async def wait(self, done: Callable[[], bool], waiters: list[_Waiter]) -> None:
        """Return once ``done()`` holds, or when this task is to take over the lead."""
        if self.leading:
            event = anyio.Event()
            waiters.append((done, event))
            self.standby[event] = None
            try:
                await event.wait()
            finally:
                self.standby.pop(event, None)
            return
        self.leading = True
        try:
            while not done():
                await anyio.wait_readable(self.selector.fileno())
                self.dispatch()
                if self.stalled:
                    self.stalled = False
                    await anyio.sleep(STATUS_RETRY)
        finally:
            self.leading = False

    @property
    def idle(self) -> bool:
        """No task waits on this poller."""
        return not self.leading and not self.standby

    def hand_over(self) -> None:
        """Wake one waiting task to lead, if tasks wait and none leads; close when unused.

        Closing an unused poller (the next wait makes a new one) keeps its fd from outliving
        the children it watched: the event loop it belongs to gives no notice of its end.
        """
        if not self.leading and self.standby:
            self.standby.popitem()[0].set()
        elif self.idle and not self.selector.get_map():
            self.close()

    def close(self) -> None:
        self.closed = True
        self.selector.close()

    def dispatch(self) -> None:
        for key, _ in self.selector.select(0):
            watcher, what = key.data
            watcher._ready(what)


_pollers: anyio.lowlevel.RunVar[_Poller] = anyio.lowlevel.RunVar("aioproc_poller")


def _poller() -> _Poller:
    try:
        poller = _pollers.get()
    except LookupError:
        pass
    else:
        if not poller.closed:
            return poller
    poller = _Poller()
    _pollers.set(poller)
    return poller


class Watcher:
    def __init__(self, handle: Handle, on_finish: Callable[[], None]) -> None:
        self.handle = handle
        self._reader = FrameReader(handle.result_fd)
        self._on_finish = on_finish
        self._poller: _Poller | None = None
        self._registered: dict[int, str] = {}  # fd -> _FRAMES or _EXIT
        self._waiters: list[_Waiter] = []
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

        Reads what the child has written so far -- a child writing a big result can only
        finish once it is read -- and, once the child has exited, finishes the watch, unless
        a task waits on the poller: that one may be waiting for this very child, and will
        finish the watch itself (an exit fd stays readable), so it is never left waiting for
        an fd that no longer is in the poller.
        """
        if self.exitcode is not None:
            return self.exitcode
        self._read(READ_BUDGET)
        code = self.handle.poll()
        poller = self._poller
        if code is not None and (poller is None or poller.idle):
            self._finish()
            if poller is not None:
                poller.hand_over()  # closes it if that was its last child
        return code

    async def until(self, done: Callable[[], bool]) -> None:
        """Watch the child until ``done()`` (checked after every change)."""
        poller = _poller()
        try:
            while not done():
                self._join(poller)
                await poller.wait(done, self._waiters)
        finally:
            poller.hand_over()

    # --- the poller's side --------------------------------------------------------------------

    def _join(self, poller: _Poller) -> None:
        """Register our fds with ``poller`` (the current event loop's), once."""
        if self._poller is poller or self.finished:
            return
        self._leave()  # a Process watched from another event loop before
        self._poller = poller
        self._register(self.handle.result_fd, _FRAMES)
        self._register(self.handle.exit_fd(), _EXIT)

    def _register(self, fd: int, what: str) -> None:
        assert self._poller is not None
        self._poller.selector.register(fd, selectors.EVENT_READ, (self, what))
        self._registered[fd] = what

    def _unregister(self, fd: int) -> None:
        if self._registered.pop(fd, None) is not None and self._poller is not None:
            try:
                self._poller.selector.unregister(fd)
            except (KeyError, ValueError, OSError):  # that loop's selector is gone
                pass

    def _leave(self) -> None:
        for fd in list(self._registered):
            self._unregister(fd)
        self._poller = None

    def _ready(self, what: str) -> None:
        """The poller found one of our fds readable."""
        if self.finished:
            return
        if what == _FRAMES:
            self._read(READ_BUDGET)
            if self._reader.eof:
                self._unregister(self.handle.result_fd)  # EOF stays readable: stop asking
        elif self.handle.poll() is not None:
            self._finish()
        else:
            exit_fd = self.handle.exit_fd()
            if exit_fd not in self._registered:
                # The fd to watch changed (a forkserver child outlived its server).
                for fd, kind in list(self._registered.items()):
                    if kind == _EXIT:
                        self._unregister(fd)
                self._register(exit_fd, _EXIT)
            elif self._poller is not None:
                self._poller.stalled = True
        self._notify()

    def _notify(self) -> None:
        # Wake only the tasks whose condition now holds: a waiter for the exit sleeps through
        # READY and the result, instead of waking for each.
        waiting = []
        for done, event in self._waiters:
            if done() or self.finished:
                event.set()
            elif not event.is_set():  # not woken to lead meanwhile
                waiting.append((done, event))
        self._waiters = waiting

    def _finish(self) -> None:
        # The child is gone, so everything it wrote is in the pipe: read it all now, without
        # waiting for EOF, which a grandchild holding the pipe may keep from coming (pitfall 20).
        self._read(None)
        self._leave()  # before the fds close: a selector must not hold a closed fd
        self.exitcode = self.handle.poll()
        # Forget the child before closing its fds: a fork start in a start thread copies the
        # list of live children, and its child closes their fds (_child.py). A child listed
        # with fds already closed here would close fd numbers reused by then -- its own pipe.
        try:
            self._on_finish()
        finally:
            self.handle.close()
            self._notify()

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
