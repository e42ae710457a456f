"""The fork server: multiprocessing's own, started by aioproc so that its preload really works.

Every forkserver child is a fork of one server process: what the server has imported, each
child has for free; what it has not, each child imports again. The stdlib means to preload the
parent's main module in the server, but on Python 3.11-3.13 that is a no-op (CPython
gh-126631: the server is never told the main module's path) and the server ignores the parent's
``sys.path``. So every child re-runs the main module and everything it imports -- 90-160 ms per
child once ``__main__`` imports anyio and trio (pitfall 4).

aioproc launches the stdlib's server itself, through :func:`serve`, which

- takes the parent's ``sys.path``;
- imports aioproc's child side and the modules of the user's own
  :func:`multiprocessing.set_forkserver_preload` list -- not the parent's event loop (trio,
  uvloop) unless the main module imports it: children seldom need it, and everything in the
  server makes every fork dearer (measured: trio and uvloop in the server cost each child
  0.5 ms more CPU, 3.1 ms instead of 2.5 ms counting every process, and raised the event-loop
  lag p99 of a storm of 200 starts from 1.2-1.5 ms to 1.9-2.1 ms);
- imports the main module as ``__mp_main__``, as each child would, so that children skip it.
  If that fails the server carries on without it: each child then imports the main module
  itself, as without aioproc, and reports its own failure;
- freezes the garbage collector's view of all that (:func:`gc.freeze`), so children do not
  touch -- and copy -- the inherited objects when they collect;
- then runs :func:`multiprocessing.forkserver.main`, which serves forks as usual.

The stdlib keeps owning the server afterwards: connecting, passing fds, reaping, restarting it
if it dies (a restarted server is the stdlib's own, slower but correct, until aioproc's next
start finds it alive or dead). Python 3.14 reworked the server; there aioproc only sets the
preload list.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys
from collections.abc import Callable
from multiprocessing import connection, forkserver, process, resource_tracker, spawn, util
from typing import Any, NamedTuple

import anyio

__all__ = [
    "ASYNC_CLIENT",
    "Unreachable",
    "connect",
    "differences",
    "ensure_running",
    "is_running",
    "restart",
    "serve",
    "server_pid",
]

#: Modules every aioproc child needs, beyond what the parent asked for: its bootstrap, the
#: Process class it unpickles, the fd passing of forkserver children.
_ALWAYS = (
    "aioproc._child",
    "aioproc._process",
    "multiprocessing.popen_forkserver",
    "runpy",
    "pkgutil",
)

_OWN_LAUNCH = sys.version_info < (3, 14)

#: multiprocessing.util, for its private helpers (untyped).
_util: Any = util


def _preload_list(server: Any) -> list[str]:
    asked: list[str] = list(getattr(server, "_preload_modules", ["__main__"]))
    return asked + [m for m in _ALWAYS if m not in asked]


#: Whether aioproc speaks the server's protocol itself, from the event loop (the protocol of
#: Python 3.11-3.13), instead of calling multiprocessing's blocking client in a thread.
ASYNC_CLIENT = _OWN_LAUNCH


def ensure_running() -> None:
    """Start the fork server unless it runs (blocking: call it from a worker thread)."""
    server: Any = forkserver._forkserver
    if not _OWN_LAUNCH:  # pragma: no cover - Python 3.14+
        if getattr(server, "_forkserver_pid", None) is None:
            forkserver.set_forkserver_preload(_preload_list(server))
        return
    with server._lock:
        resource_tracker.ensure_running()
        if not _alive(server):
            _launch(server)


def is_running() -> bool:
    """Whether the server and the resource tracker its children use both run; never blocks.

    False also when another thread is busy with either: the caller then takes the blocking
    path (:func:`ensure_running`), which waits for it.
    """
    server: Any = forkserver._forkserver
    tracker: Any = resource_tracker._resource_tracker
    if not server._lock.acquire(blocking=False):
        return False
    try:
        if not _alive(server):
            return False
    finally:
        server._lock.release()
    if not tracker._lock.acquire(blocking=False):
        return False
    try:
        # Asked with waitpid (the tracker is a child of ours), not with multiprocessing's
        # probe message, which wakes the tracker up at every start.
        if tracker._fd is None or tracker._pid is None:
            return False
        try:
            return os.waitpid(tracker._pid, os.WNOHANG)[0] == 0
        except ChildProcessError:
            return False
    finally:
        tracker._lock.release()


def _alive(server: Any) -> bool:
    """Whether the server process lives; forgets a dead one. Call with ``server._lock`` held."""
    if server._forkserver_pid is None:
        return False
    try:
        # Ours to ask: the server is a child of this process (the stdlib does the same).
        pid, _ = os.waitpid(server._forkserver_pid, os.WNOHANG)
    except ChildProcessError:  # reaped by someone else: gone all the same
        pid = server._forkserver_pid
    if pid == 0:
        return True
    os.close(server._forkserver_alive_fd)
    server._forkserver_address = None
    server._forkserver_alive_fd = None
    server._forkserver_pid = None
    return False


class Unreachable(ConnectionError):
    """The fork server went away before it made a child: a start may be retried.

    That is: it refused the connection, hung up on the request, or died with nothing holding
    the new child's data pipe (so no child exists that could run the target).
    """


def restart(pid: int) -> None:
    """Replace server ``pid``, found unreachable (blocking: call it from a worker thread).

    A SIGKILLed server still counts as running to waitpid() for a moment after its socket
    stops answering; make sure it is gone, then launch a new one.
    """
    server: Any = forkserver._forkserver
    with server._lock:
        if server._forkserver_pid == pid:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            os.close(server._forkserver_alive_fd)
            server._forkserver_address = None
            server._forkserver_alive_fd = None
            server._forkserver_pid = None
    ensure_running()


def server_pid() -> int | None:
    pid: int | None = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    return pid


async def connect(fds: list[int]) -> tuple[int, int]:
    """Ask the server for a new child: ``ForkServer.connect_to_new_process()``, awaited.

    Returns ``(status_r, data_w)``: the child's pid and then its exit status arrive on the
    first; its preparation data and process object go down the second.
    """
    server: Any = forkserver._forkserver
    tracker: Any = resource_tracker._resource_tracker
    address, alive_fd, tracker_fd = (
        server._forkserver_address,
        server._forkserver_alive_fd,
        tracker._fd,
    )
    if address is None or alive_fd is None or tracker_fd is None:
        raise ConnectionError("the fork server is not running")
    if len(fds) + 4 >= forkserver.MAXFDS_TO_SEND:
        raise ValueError(f"too many fds to pass to a forkserver child ({len(fds)})")
    # Every fd first: running out of them half-way through a request would make the server
    # exit (it only survives an OSError while receiving fds), losing its children's statuses.
    parent_r, child_w = os.pipe()
    try:
        child_r, parent_w = os.pipe()
    except BaseException:
        os.close(parent_r)
        os.close(child_w)
        raise
    try:
        # A bare non-blocking socket, not an anyio stream: this runs once per start, on the
        # event loop, and a local connect() and one sendmsg() rarely have to wait.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            try:
                await _retry(sock, sock.connect, address)
            except (ConnectionRefusedError, FileNotFoundError) as exc:
                raise Unreachable(f"the fork server refused the connection ({exc})") from exc
            allfds = [child_r, child_w, alive_fd, tracker_fd, *fds]
            # multiprocessing.reduction.sendfds(): the count, modulo 256, as the message.
            message = [bytes([len(allfds) % 256])]
            try:
                await _retry(sock, socket.send_fds, sock, message, allfds)
            except OSError as exc:
                raise Unreachable(f"the fork server hung up ({exc!r})") from exc
    except BaseException:
        os.close(parent_r)
        os.close(parent_w)
        raise
    finally:
        os.close(child_r)
        os.close(child_w)
    return parent_r, parent_w


async def _retry(sock: socket.socket, call: Callable[..., object], *args: Any) -> None:
    """``call(*args)`` on non-blocking ``sock``, waiting while it would block."""
    while True:
        try:
            call(*args)
        except BlockingIOError:
            # connect() of a unix socket: the server's backlog is full; send: buffer full.
            await anyio.wait_writable(sock)
        else:
            return


def _launch(server: Any) -> None:
    """The stdlib's ForkServer.ensure_running(), with serve() as the server's entry point."""
    preload = _preload_list(server)
    data = spawn.get_preparation_data("ignore")
    main: tuple[str, str] | None = None
    if "__main__" in preload:
        if "init_main_from_path" in data:
            main = ("path", data["init_main_from_path"])
        elif "init_main_from_name" in data:
            main = ("name", data["init_main_from_name"])
    preload = [m for m in preload if m != "__main__"]
    with socket.socket(socket.AF_UNIX) as listener:
        address = connection.arbitrary_address("AF_UNIX")  # type: ignore[attr-defined]
        listener.bind(address)
        if not _util.is_abstract_socket_namespace(address):
            os.chmod(address, 0o600)
        listener.listen()
        # Every client holds the write end of the "alive" pipe; the server exits at its EOF.
        alive_r, alive_w = os.pipe()
        try:
            # sys.path first: aioproc itself may be importable only through the parent's.
            cmd = (
                f"import sys; sys.path[:] = {sys.path!r}; "
                "from aioproc._forkserver import serve; "
                f"serve({listener.fileno()}, {alive_r}, {preload!r}, {main!r})"
            )
            exe = spawn.get_executable()
            args = [exe, *_util._args_from_interpreter_flags(), "-c", cmd]
            pid = _util.spawnv_passfds(exe, args, [listener.fileno(), alive_r])
        except BaseException:
            os.close(alive_w)
            raise
        finally:
            os.close(alive_r)
        server._forkserver_address = address
        server._forkserver_alive_fd = alive_w
        server._forkserver_pid = pid
        global _launched
        _launched = _Launched(pid, _environ_data(), _stdio_ids())


class _Launched(NamedTuple):
    """What a server that aioproc launched inherited from the parent at launch."""

    pid: int
    environ: dict[bytes, bytes] | None
    stdio: tuple[tuple[int, int] | None, ...]


_launched: _Launched | None = None


def _environ_data() -> dict[bytes, bytes] | None:
    data = getattr(os.environ, "_data", None)  # the raw form: comparing it is one C call
    return dict(data) if isinstance(data, dict) else None


def _stdio_ids() -> tuple[tuple[int, int] | None, ...]:
    ids: list[tuple[int, int] | None] = []
    for fd in (1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            ids.append(None)
        else:
            ids.append((st.st_dev, st.st_ino))
    return tuple(ids)


def differences() -> tuple[tuple[bool, bool], dict[str, str] | None]:
    """What a forkserver child must take from the parent: stdout, stderr, environment.

    A child inherits those of the server, as they were when it was launched (pitfall 18).
    Returns which of fds 1 and 2 now refer to other files, and the parent's environment if it
    changed; everything, for a server that aioproc did not launch.
    """
    server: Any = forkserver._forkserver
    launched = _launched
    if launched is None or launched.pid != server._forkserver_pid:
        return (True, True), dict(os.environ)
    now = _stdio_ids()
    stdio = (now[0] != launched.stdio[0], now[1] != launched.stdio[1])
    # Compared in its raw form, without a copy: one C-level dict comparison per start.
    same = getattr(os.environ, "_data", None) == launched.environ
    environ = None if same else dict(os.environ)
    return stdio, environ


def serve(listener_fd: int, alive_r: int, preload: list[str], main: tuple[str, str] | None) -> None:
    """The fork server's entry point (runs in the server process)."""
    for name in preload:
        try:
            __import__(name)
        except ImportError:
            pass  # as the stdlib: a module the server cannot import, each child imports
    if main is not None:
        kind, where = main
        current: Any = process.current_process()
        # As while a child imports it: a main module that starts processes at import time,
        # outside `if __name__ == "__main__":`, fails here instead of forking from the server.
        current._inheriting = True
        try:
            if kind == "path":
                spawn.import_main_path(where)
            else:
                spawn._fixup_main_from_name(where)  # type: ignore[attr-defined]
        except BaseException:  # noqa: BLE001 - whatever it is, each child will report it
            pass
        finally:
            del current._inheriting
    gc.collect()
    gc.freeze()
    forkserver.main(listener_fd, alive_r, [])
