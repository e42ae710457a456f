"""The private pipe from a child to its parent: length-prefixed frames, one kind byte each.

The child writes with blocking ``os.write``; the parent reads non-blocking, whatever is there,
each time the pipe is readable -- so a 50 MB result streams while the child writes it instead of
leaving the child blocked on a full pipe (pitfall 16), and the event loop never blocks on it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct

__all__ = ["FrameReader", "Kind", "poll_now", "write_frame"]

_HEADER = struct.Struct("!Q")
#: Frames above this size get a bigger pipe (fewer wake-ups for the parent), best effort.
_BIG_FRAME = 1 << 16
_BIG_PIPE = 1 << 20
_CHUNK = 1 << 18


class Kind:
    """The kind byte that starts each frame."""

    READY = b"R"  # bootstrap done: own process group, target loaded
    LOAD_FAILED = b"L"  # the target could not be loaded in the child; body: traceback text
    VALUE = b"V"  # the target returned; body: pickled value
    RAISED = b"E"  # the target raised; body: pickled (data, type name, message, traceback)
    UNPICKLABLE = b"U"  # the value could not be pickled; body as for RAISED, plus its type


def poll_now(fd: int, events: int) -> int:
    """The poll events of ``fd`` right now, without waiting (POLLERR and POLLHUP come whether
    asked for or not). poll(), not select(): a parent with hundreds of children, and the
    fork children it copies its fd numbers to, have fds above select()'s FD_SETSIZE."""
    poller = select.poll()
    poller.register(fd, events)
    return sum(revents for _, revents in poller.poll(0))


def write_frame(fd: int, kind: bytes, body: bytes = b"") -> None:
    """Write one frame on a blocking fd (child side)."""
    if len(body) > _BIG_FRAME:
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _BIG_PIPE)
        except OSError:  # over the user's pipe-buffer quota: the default size still works
            pass
    view = memoryview(_HEADER.pack(len(body) + 1) + kind)
    while view:
        view = view[os.write(fd, view) :]
    view = memoryview(body)
    while view:
        view = view[os.write(fd, view) :]


class FrameReader:
    """Collects frames from a non-blocking fd (parent side)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.eof = False
        self.frames: list[bytearray] = []
        self._head = bytearray()
        self._body: bytearray | None = None
        self._filled = 0

    def read_available(self, budget: int | None = None) -> None:
        """Read until the pipe is empty, at end of file, or ``budget`` bytes; never blocks."""
        left = budget if budget is not None else -1
        try:
            while not self.eof and left != 0:
                if self._body is None:
                    chunk = os.read(self.fd, _HEADER.size - len(self._head))
                    if not chunk:
                        self.eof = True
                        break
                    self._head += chunk
                    if len(self._head) == _HEADER.size:
                        (size,) = _HEADER.unpack(self._head)
                        self._head.clear()
                        # One buffer of exactly the frame's size, filled in place: the parent
                        # holds the payload once, not once per growing copy.
                        self._body = bytearray(size)
                        self._filled = 0
                    continue
                want = _CHUNK if left < 0 else min(_CHUNK, left)
                view = memoryview(self._body)[self._filled : self._filled + want]
                n = os.readv(self.fd, [view])
                if n == 0:
                    self.eof = True
                    break
                self._filled += n
                if left > 0:
                    left = max(0, left - n)
                if self._filled == len(self._body):
                    self.frames.append(self._body)
                    self._body = None
        except BlockingIOError:
            pass
        except OSError as exc:  # the fd went away under us: treat as end of file
            if exc.errno != errno.EBADF:
                raise
            self.eof = True
