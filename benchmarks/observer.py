"""The exit observer: when does the kernel report a child gone? (run by exitdetect.py)

A process of its own, started with ``python -I -S benchmarks/observer.py`` (no site, no
imports beyond the standard library's builtins: it is ready in ~10 ms), once per repetition of
the exit-detection scenario. It is neither the child's parent nor the library's: it reads pids,
one per line, on stdin; for each it opens a pidfd and answers ``watching PID`` (or ``late PID``
if the child had already exited when the pidfd was opened, or ``gone PID`` if there was no such
process). It blocks in ``poll()`` on stdin and every pidfd it holds, and the moment a pidfd
fires it takes ``time.monotonic_ns()`` -- before anything else -- and writes
``exited PID NS``. That is the kernel's report of the exit (the pidfd becomes readable in the
exiting task's ``exit_notify()``), seen by a process that does nothing else: the zero from
which a library's exit detection is measured. It exits at EOF on stdin.
"""

from __future__ import annotations

import os
import select
import time


def main() -> None:
    poller = select.poll()
    poller.register(0, select.POLLIN)
    watched: dict[int, int] = {}  # pidfd -> pid
    buffer = b""
    os.write(1, b"ready\n")
    while True:
        events = poller.poll()
        now = time.monotonic_ns()  # first: the stamp is the point of this process
        out = []
        for fd, _mask in events:
            if fd in watched:
                pid = watched.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                out.append(f"exited {pid} {now}\n")
        for fd, _mask in events:
            if fd != 0:
                continue
            chunk = os.read(0, 4096)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                pid = int(line)
                try:
                    pidfd = os.pidfd_open(pid)
                except ProcessLookupError:
                    out.append(f"gone {pid}\n")
                    continue
                probe = select.poll()
                probe.register(pidfd, select.POLLIN)
                if probe.poll(0):
                    os.close(pidfd)
                    out.append(f"late {pid}\n")
                    continue
                watched[pidfd] = pid
                poller.register(pidfd, select.POLLIN)
                out.append(f"watching {pid}\n")
        if out:
            os.write(1, "".join(out).encode())


if __name__ == "__main__":
    main()
