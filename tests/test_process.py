"""aioproc.Process, aioproc.run(), the errors and the module functions.

Children synchronise with the test through multiprocessing pipes (the child sends, the test
waits for the pipe to be readable), never through sleeps. Targets live in tests/targets.py.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import re
import signal
import socket
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import targets
from procfs import running

import aioproc

pytestmark = pytest.mark.anyio

#: Start methods whose children are pickled; SpawnError tests use them explicitly.
PICKLING_METHODS = ["forkserver", "spawn"]


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def pipe() -> Iterator[tuple[multiprocessing.connection.Connection, Any]]:
    """(reader, writer): the child gets the writer, the test reads."""
    reader, writer = multiprocessing.Pipe(duplex=False)
    yield reader, writer
    reader.close()
    writer.close()


async def recv(conn: multiprocessing.connection.Connection) -> Any:
    """What the child sent, without blocking the event loop."""
    with anyio.fail_after(30):
        await anyio.wait_readable(conn.fileno())
    return conn.recv()


async def until_gone(pid: int) -> None:
    """Wait until pid no longer runs (a process we are not the parent of: poll /proc)."""
    with anyio.fail_after(10):
        while running(pid):
            await anyio.sleep(0.005)


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def started(target: Any, *args: Any, **kwargs: Any) -> aioproc.Process:
    p = aioproc.Process(target=target, args=args, **kwargs)
    await p.start()
    return p


# --- constructor parity with multiprocessing.Process --------------------------------------------


def test_group_must_be_none() -> None:
    with pytest.raises(ValueError, match="group must be None"):
        aioproc.Process("a group", targets.return_value)  # type: ignore[arg-type]


def test_target_must_be_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        aioproc.Process(target=42)


def test_default_name_counts_like_multiprocessing() -> None:
    first = aioproc.Process(target=targets.return_value)
    second = aioproc.Process(target=targets.return_value)
    m1 = re.fullmatch(r"Process-(\d+)", first.name)
    m2 = re.fullmatch(r"Process-(\d+)", second.name)
    assert m1 is not None and m2 is not None
    assert int(m2.group(1)) > int(m1.group(1))


def test_subclass_default_name_uses_class_name() -> None:
    assert re.fullmatch(r"TaggedProcess-\d+", targets.TaggedProcess("t").name)


def test_initial_state() -> None:
    p = aioproc.Process(target=targets.return_value, name="fresh")
    assert p.name == "fresh"
    assert p.pid is None
    assert p.exitcode is None
    assert p.daemon is False
    assert not p.is_alive()
    assert repr(p).startswith("<Process ")
    assert "name='fresh'" in repr(p) and "initial" in repr(p) and "pid" not in repr(p)


def test_daemon_setter_before_start() -> None:
    p = aioproc.Process(target=targets.return_value)
    p.daemon = True
    assert p.daemon is True
    assert aioproc.Process(target=targets.return_value, daemon=True).daemon is True
    assert "daemon" in repr(p)


def test_context_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown start method 'nope'"):
        aioproc.Process(target=targets.return_value, context="nope")


def test_context_wrong_type() -> None:
    with pytest.raises(TypeError, match="context must be"):
        aioproc.Process(target=targets.return_value, context=42)  # type: ignore[arg-type]


def test_context_fork_warns() -> None:
    with pytest.warns(RuntimeWarning, match="fork"):
        aioproc.Process(target=targets.return_value, context="fork")
    with pytest.warns(RuntimeWarning, match="fork"):
        aioproc.Process(target=targets.return_value, context=multiprocessing.get_context("fork"))


async def test_name_set_before_start_reaches_child() -> None:
    p = aioproc.Process(target=targets.process_info)
    p.name = "renamed"
    async with p:
        pass
    assert await p.result() == ("Process", "renamed", p.pid, False)


async def test_args_and_kwargs() -> None:
    p = aioproc.Process(target=targets.add, args=(2,), kwargs={"b": 40})
    await p.start()
    assert await p.result() == 42


async def test_no_target_returns_none() -> None:
    p = aioproc.Process()
    await p.start()
    assert await p.wait() == 0
    assert await p.result() is None


@pytest.mark.parametrize("as_context", [False, True], ids=["name", "context"])
@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
async def test_context_selects_start_method(method: str, as_context: bool) -> None:
    context: Any = multiprocessing.get_context(method) if as_context else method
    if method == "fork":
        with pytest.warns(RuntimeWarning):
            p = aioproc.Process(target=targets.pr_parent_pid, context=context)
    else:
        p = aioproc.Process(target=targets.pr_parent_pid, context=context)
    await p.start()
    parent = await p.result()
    # forkserver children are children of the fork server; fork and spawn ones are ours.
    if method == "forkserver":
        assert parent != os.getpid()
    else:
        assert parent == os.getpid()


# --- start() ---------------------------------------------------------------------------------


async def test_start_returns_once_child_runs(pipe: Any) -> None:
    reader, writer = pipe
    p = await started(targets.send_pid_and_sleep, writer)
    try:
        assert p.pid is not None
        assert p.is_alive()
        assert p.exitcode is None
        assert running(p.pid)
        # The bootstrap has run: the child already leads its own process group.
        assert os.getpgid(p.pid) == p.pid
        assert f"pid={p.pid} started" in repr(p)
        assert await recv(reader) == p.pid
    finally:
        await p.stop()


async def test_pid_is_the_childs_own() -> None:
    p = await started(targets.own_pid)
    assert p.ident == p.pid
    assert await p.result() == p.pid


async def test_concurrent_starts_start_once() -> None:
    p = aioproc.Process(target=targets.return_value, args=("once",))
    errors: list[BaseException] = []

    async def start() -> None:
        try:
            await p.start()
        except aioproc.ProcessStateError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(start)
        tg.start_soon(start)
    assert len(errors) == 1
    assert await p.result() == "once"


class _SlowToUnpickle:
    """An argument whose unpickling in the child, before the child reports READY, blocks."""

    def __init__(self, ready_path: str) -> None:
        self.ready_path = ready_path

    def __reduce__(self) -> tuple[Any, ...]:
        return (targets.pr_unpickle_slowly, (self.ready_path,))


@pytest.mark.parametrize("method", PICKLING_METHODS)  # fork pickles nothing
async def test_start_cancelled_midway_kills_and_reaps(method: str, tmp_path: Path) -> None:
    ready = tmp_path / "unpickling"
    slow = _SlowToUnpickle(str(ready))
    p = aioproc.Process(target=targets.return_value, args=(slow,), context=method)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(p.start)
            with anyio.fail_after(30):
                while not ready.exists():  # the child exists and is in its bootstrap
                    await anyio.sleep(0.002)
            scope.cancel()
    assert scope.cancelled_caught
    # start() killed and reaped the child before it let the cancellation go on.
    assert p.pid == int(ready.read_text())
    assert p.exitcode == -signal.SIGKILL
    assert not p.is_alive()
    assert not os.path.exists(f"/proc/{p.pid}")
    assert aioproc.active_children() == []


async def test_start_cancelled_before_it_began() -> None:
    p = aioproc.Process(target=targets.return_value, args=("later",))
    with anyio.CancelScope() as scope:
        scope.cancel()
        await p.start()
    assert scope.cancelled_caught
    assert p.pid is None
    assert not p.is_alive()
    # Nothing happened: the process can still be started.
    await p.start()
    assert await p.result() == "later"


# --- exit codes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "args", "code"),
    [
        (targets.return_value, (1,), 0),
        (targets.exit_with, (3,), 3),
        (targets.raise_value_error, ("boom",), 1),
        (targets.hard_exit, (7,), 7),
    ],
    ids=["return", "sys.exit", "raise", "os._exit"],
)
async def test_exit_codes(target: Any, args: tuple[Any, ...], code: int) -> None:
    p = await started(target, *args)
    assert await p.wait() == code
    assert p.exitcode == code
    assert not p.is_alive()
    assert f"exitcode={code}" in repr(p)


@pytest.mark.parametrize("how", [targets.exit_with, targets.hard_exit], ids=["sys.exit", "_exit"])
async def test_nonzero_exit_is_process_failed(how: Any) -> None:
    p = await started(how, 3)
    with pytest.raises(aioproc.ProcessFailed, match="exited with code 3") as info:
        await p.result()
    assert info.value.exitcode == 3
    assert info.value.signal is None
    assert info.value.process is p


async def test_sigkill_from_outside_is_a_failure() -> None:
    p = await started(targets.sleep_long)
    assert p.pid is not None
    os.kill(p.pid, signal.SIGKILL)
    assert await p.wait() == -signal.SIGKILL
    with pytest.raises(aioproc.ProcessFailed, match="SIGKILL") as info:
        await p.result()
    assert info.value.signal is signal.SIGKILL
    assert info.value.exitcode == -signal.SIGKILL
    assert info.value.process is p
    assert info.value.remote_traceback is None


async def test_sigterm_from_outside_is_a_failure() -> None:
    p = await started(targets.sleep_long)
    assert p.pid is not None
    os.kill(p.pid, signal.SIGTERM)
    assert await p.wait() == -signal.SIGTERM
    with pytest.raises(aioproc.ProcessFailed) as info:
        await p.result()
    assert info.value.signal is signal.SIGTERM


async def test_segfault() -> None:
    p = await started(targets.pr_quiet_segfault)
    assert await p.wait() == -signal.SIGSEGV
    with pytest.raises(aioproc.ProcessFailed, match="SIGSEGV") as info:
        await p.result()
    assert info.value.signal is signal.SIGSEGV


# --- wait() / join() -----------------------------------------------------------------------------


async def test_wait_and_join_return_exitcode_again_and_again() -> None:
    p = await started(targets.exit_with, 5)
    assert await p.join() == 5
    assert await p.wait() == 5
    assert await p.join() == 5


async def test_concurrent_waiters_all_get_the_exitcode(pipe: Any) -> None:
    reader, writer = pipe
    p = await started(targets.pr_exit_with_received, reader)
    got: list[object] = []

    async def waiter(method: Any) -> None:
        try:
            got.append(await method())
        except aioproc.ProcessFailed as exc:
            got.append(exc.exitcode)

    async with anyio.create_task_group() as tg:
        for method in [p.wait, p.wait, p.join, p.join, p.result, p.wait]:
            tg.start_soon(waiter, method)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        writer.send(4)
    assert got == [4] * 6


async def test_cancelled_waiter_leaves_child_running(pipe: Any) -> None:
    reader, writer = pipe
    p = await started(targets.receive_and_return, reader)
    with anyio.move_on_after(0.05) as scope:
        await p.wait()
    assert scope.cancelled_caught
    assert p.is_alive()
    assert p.exitcode is None
    writer.send("still here")
    assert await p.result() == "still here"
    assert p.exitcode == 0


async def test_cancelling_one_waiter_does_not_disturb_another(pipe: Any) -> None:
    reader, writer = pipe
    p = await started(targets.receive_and_return, reader)
    scopes: list[anyio.CancelScope] = []
    got: list[object] = []

    async def cancelled_waiter() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await p.wait()
            got.append("not cancelled")

    async def patient_waiter() -> None:
        got.append(await p.result())

    async with anyio.create_task_group() as tg:
        tg.start_soon(cancelled_waiter)  # first: it is the one that watches the child
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(patient_waiter)
        await anyio.wait_all_tasks_blocked()
        scopes[0].cancel()
        await anyio.wait_all_tasks_blocked()
        assert p.is_alive()
        writer.send(["value"])
    assert got == [["value"]]


# --- terminate() / kill() ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "signum"),
    [("terminate", signal.SIGTERM), ("kill", signal.SIGKILL)],
)
async def test_terminate_and_kill(method: str, signum: signal.Signals) -> None:
    p = await started(targets.sleep_long)
    getattr(p, method)()
    assert await p.wait() == -signum
    # Stopped by aioproc: not a failure, but there is no result either.
    with pytest.raises(aioproc.ProcessFailed, match="stopped by aioproc") as info:
        await p.result()
    assert info.value.signal is signum


@pytest.mark.parametrize("method", ["terminate", "kill", "stop"])
async def test_signals_reach_grandchildren(pipe: Any, method: str) -> None:
    reader, writer = pipe
    p = await started(targets.fork_grandchild_and_sleep, writer)
    grandchild = await recv(reader)
    try:
        assert running(grandchild)
        if method == "stop":
            await p.stop(grace=5)
        else:
            getattr(p, method)()
            await p.wait()
        await until_gone(grandchild)
    finally:
        _kill_quietly(grandchild)
        await p.stop()


async def test_terminate_and_kill_after_exit_are_noops() -> None:
    p = await started(targets.return_value, "done")
    assert await p.wait() == 0
    p.terminate()
    p.kill()
    assert p.exitcode == 0
    # Not marked as stopped: the result is still there.
    assert await p.result() == "done"


# --- stop() --------------------------------------------------------------------------------------


async def test_stop_graceful_child() -> None:
    p = await started(targets.sleep_long)
    pid = p.pid
    assert await p.stop(grace=5) == -signal.SIGTERM
    assert p.exitcode == -signal.SIGTERM
    assert not p.is_alive()
    assert not os.path.exists(f"/proc/{pid}")  # reaped
    with pytest.raises(aioproc.ProcessFailed, match="stopped"):
        await p.result()


async def test_stop_escalates_to_sigkill(pipe: Any) -> None:
    reader, writer = pipe
    p = await started(targets.ignore_sigterm_and_sleep, writer)
    assert await recv(reader) == p.pid  # SIGTERM is ignored from now on
    assert await p.stop(grace=0.2) == -signal.SIGKILL
    assert p.exitcode == -signal.SIGKILL
    assert not os.path.exists(f"/proc/{p.pid}")
    with pytest.raises(aioproc.ProcessFailed, match="stopped"):
        await p.result()


async def test_stop_after_exit_returns_the_exitcode() -> None:
    p = await started(targets.exit_with, 3)
    await p.wait()
    assert await p.stop() == 3
    # A child that had already failed on its own is still a failure.
    with pytest.raises(aioproc.ProcessFailed, match="exited with code 3"):
        await p.result()


async def test_stop_without_grace() -> None:
    p = await started(targets.sleep_long)
    assert await p.stop(grace=0) in (-signal.SIGTERM, -signal.SIGKILL)
    assert not os.path.exists(f"/proc/{p.pid}")


async def test_concurrent_stops() -> None:
    p = await started(targets.sleep_long)
    codes: list[int] = []

    async def stop() -> None:
        codes.append(await p.stop())

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(stop)
    assert codes == [-signal.SIGTERM] * 3


async def test_stop_twice() -> None:
    p = await started(targets.sleep_long)
    assert await p.stop() == -signal.SIGTERM
    assert await p.stop() == -signal.SIGTERM


async def test_stop_cancelled_mid_grace_kills_and_reaps(pipe: Any) -> None:
    reader, writer = pipe
    p = await started(targets.ignore_sigterm_and_sleep, writer)
    assert await recv(reader) == p.pid
    with anyio.move_on_after(0.1) as scope:
        await p.stop(grace=60)
    assert scope.cancelled_caught
    # Killed and reaped before the cancellation reached this scope.
    assert p.exitcode == -signal.SIGKILL
    assert not os.path.exists(f"/proc/{p.pid}")


async def test_stop_negative_grace() -> None:
    p = await started(targets.sleep_long)
    try:
        with pytest.raises(ValueError, match="grace"):
            await p.stop(grace=-1)
        assert p.is_alive()
    finally:
        await p.stop()


# --- result() ------------------------------------------------------------------------------------


async def test_result_value() -> None:
    value = {"a": [1, 2.5, "three"], "b": (None, True)}
    p = await started(targets.return_value, value)
    assert await p.result() == value
    assert await p.result() == value  # asked twice


async def test_result_kwargs_through_partial() -> None:
    p = await started(functools.partial(targets.add, 2, b=3))
    assert await p.result() == 5


async def test_child_exception_is_reraised_with_traceback_and_note() -> None:
    p = await started(targets.raise_value_error, "boom")
    with pytest.raises(ValueError) as info:
        await p.result()
    exc = info.value
    assert str(exc) == "boom"
    cause = exc.__cause__
    assert isinstance(cause, aioproc.RemoteTraceback)
    assert "raise_value_error" in cause.tb
    assert "targets.py" in cause.tb
    assert "ValueError: boom" in cause.tb
    assert "raise_value_error" in str(cause)
    assert "_child.py" not in cause.tb  # starts at the user's code, not the bootstrap
    notes = getattr(exc, "__notes__", [])
    assert any(p.name in note and str(p.pid) in note for note in notes)
    assert await p.wait() == 1


async def test_child_custom_exception() -> None:
    p = await started(targets.raise_custom_error, "custom")
    with pytest.raises(targets.CustomError, match="custom") as info:
        await p.result()
    assert isinstance(info.value.__cause__, aioproc.RemoteTraceback)
    # Asked again: the same failure.
    with pytest.raises(targets.CustomError):
        await p.result()


async def test_unpicklable_exception() -> None:
    p = await started(targets.raise_unpicklable_error, "with a lock")
    with pytest.raises(aioproc.ProcessFailed) as info:
        await p.result()
    err = info.value
    assert "UnpicklableError" in str(err)
    assert "with a lock" in str(err)
    assert err.remote_traceback is not None
    assert "raise_unpicklable_error" in err.remote_traceback
    assert err.exitcode == 1
    assert err.process is p


async def test_exception_that_cannot_be_rebuilt() -> None:
    p = await started(targets.raise_unrebuildable_error, "one", "two")
    with pytest.raises(aioproc.ProcessFailed) as info:
        await p.result()
    err = info.value
    assert "UnrebuildableError" in str(err)
    assert "one and two" in str(err)
    assert err.remote_traceback is not None
    assert "raise_unrebuildable_error" in err.remote_traceback


async def test_keyboard_interrupt_in_child_is_process_failed() -> None:
    p = await started(targets.pr_raise_keyboard_interrupt)
    with pytest.raises(aioproc.ProcessFailed, match="KeyboardInterrupt") as info:
        await p.result()
    assert info.value.remote_traceback is not None
    assert "pr_raise_keyboard_interrupt" in info.value.remote_traceback


@pytest.mark.parametrize(
    ("target", "type_name"),
    [(targets.return_lambda, "lambda"), (targets.return_lock, "lock")],
    ids=["lambda", "lock"],
)
async def test_unpicklable_result(target: Any, type_name: str) -> None:
    p = await started(target)
    with pytest.raises(aioproc.ProcessFailed, match="could not be pickled") as info:
        await p.result()
    err = info.value
    assert ("function" if type_name == "lambda" else type_name) in str(err)
    # The pickling error itself; its type and wording vary across Python versions
    # ("Can't pickle local object" on 3.11, "Can't get local object" on 3.13).
    assert isinstance(err.__cause__, (pickle.PicklingError, TypeError, AttributeError))
    assert type_name in str(err.__cause__)
    assert err.exitcode != 0


async def test_result_that_cannot_be_unpickled() -> None:
    p = await started(targets.pr_return_unrebuildable)
    with pytest.raises(aioproc.ProcessFailed, match="could not be unpickled") as info:
        await p.result()
    assert isinstance(info.value.__cause__, TypeError)
    assert info.value.process is p
    assert p.exitcode == 0


async def test_big_result_arrives_intact() -> None:
    size = 50 * 1024 * 1024
    p = await started(targets.big_bytes, size)
    value = await p.result()
    assert len(value) == size + 3
    assert value == targets.big_bytes(size)


# --- SpawnError ----------------------------------------------------------------------------------


async def _assert_spawn_error(p: aioproc.Process, *fragments: str) -> None:
    before = aioproc.active_children()
    with pytest.raises(aioproc.SpawnError) as info:
        await p.start()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "module-level function" in message
    assert p.pid is None
    assert not p.is_alive()
    assert aioproc.active_children() == before


@pytest.mark.parametrize("method", PICKLING_METHODS)
async def test_spawn_error_lambda_target(method: str) -> None:
    p = aioproc.Process(target=lambda: 1, context=method)
    await _assert_spawn_error(p, "target", "lambda", repr(method))


@pytest.mark.parametrize("method", PICKLING_METHODS)
async def test_spawn_error_nested_function_target(method: str) -> None:
    def nested() -> int:
        return 1

    p = aioproc.Process(target=nested, context=method)
    await _assert_spawn_error(p, "target", "nested")


@pytest.mark.parametrize("method", PICKLING_METHODS)
async def test_spawn_error_lock_argument(method: str) -> None:
    p = aioproc.Process(target=targets.return_value, args=(threading.Lock(),), context=method)
    await _assert_spawn_error(p, "argument 0", "lock")


@pytest.mark.parametrize("method", PICKLING_METHODS)
async def test_spawn_error_open_file_argument(method: str) -> None:
    with open(os.devnull) as f:
        p = aioproc.Process(target=targets.return_value, args=(f,), context=method)
        await _assert_spawn_error(p, "argument 0", "TextIOWrapper")


@pytest.mark.parametrize("method", PICKLING_METHODS)
async def test_spawn_error_keyword_argument(method: str) -> None:
    p = aioproc.Process(
        target=targets.add, args=(1,), kwargs={"b": threading.Lock()}, context=method
    )
    await _assert_spawn_error(p, "keyword argument 'b'")


@pytest.mark.parametrize("method", PICKLING_METHODS)
async def test_spawn_error_subclass_attribute(method: str) -> None:
    p = targets.TaggedProcess(threading.Lock(), context=method)  # type: ignore[arg-type]
    await _assert_spawn_error(p, "attribute 'tag'", "TaggedProcess")


@pytest.mark.parametrize("method", PICKLING_METHODS)
async def test_spawn_error_target_the_child_cannot_import(method: str) -> None:
    # A module that exists only in the parent: the target pickles, but the child cannot
    # load it. Under fork the child would inherit the module, so the method is explicit.
    ghost = types.ModuleType("pr_ghost_module")
    exec("def ghost():\n    return 1\n", ghost.__dict__)
    sys.modules["pr_ghost_module"] = ghost
    try:
        p = aioproc.Process(target=ghost.ghost, context=method)
        with pytest.raises(aioproc.SpawnError, match="could not load its target") as info:
            await p.start()
    finally:
        del sys.modules["pr_ghost_module"]
    assert "pr_ghost_module" in str(info.value)
    assert not p.is_alive()
    assert aioproc.active_children() == []


async def test_socket_argument_is_passed_as_in_multiprocessing() -> None:
    # multiprocessing sends sockets to children (as fds); aioproc does the same.
    ours, theirs = socket.socketpair()
    with ours, theirs:
        p = await started(targets.pr_socket_send, theirs, b"over the socket")
        assert await p.result() is None
        ours.settimeout(10)
        assert ours.recv(100) == b"over the socket"


async def test_fork_pickles_nothing() -> None:
    with pytest.warns(RuntimeWarning, match="fork"):
        p = aioproc.Process(target=lambda: 41 + 1, context="fork")
    await p.start()
    assert await p.result() == 42


# --- subclassing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("daemon", [False, True])
async def test_subclass_run_and_attributes(daemon: bool) -> None:
    p = targets.TaggedProcess("my-tag", name="tagged", daemon=daemon)
    await p.start()
    info = await p.result()
    assert info == {
        "tag": "my-tag",
        "is_self": True,
        "type": "TaggedProcess",
        "name": "tagged",
        "pid": p.pid,
        "os_pid": p.pid,
        "daemon": daemon,
    }
    assert p.exitcode == 0


# --- async with ----------------------------------------------------------------------------------


async def test_async_with_starts_and_waits_for_non_daemon(pipe: Any) -> None:
    reader, writer = pipe
    p = aioproc.Process(target=targets.receive_and_return, args=(reader,))
    async with p as entered:
        assert entered is p
        assert p.pid is not None and p.is_alive()
        writer.send("waited for")
    assert p.exitcode == 0
    assert await p.result() == "waited for"


async def test_async_with_an_already_started_process() -> None:
    p = await started(targets.return_value, 7)
    async with p:
        pass
    assert await p.result() == 7


async def test_async_with_stops_a_daemon() -> None:
    p = aioproc.Process(target=targets.sleep_long, daemon=True)
    async with p:
        assert p.is_alive()
    assert p.exitcode == -signal.SIGTERM
    assert not os.path.exists(f"/proc/{p.pid}")
    with pytest.raises(aioproc.ProcessFailed, match="stopped"):
        await p.result()


async def test_async_with_error_in_body_stops_child() -> None:
    p = aioproc.Process(target=targets.sleep_long)
    with pytest.raises(RuntimeError, match="body failed"):
        async with p:
            raise RuntimeError("body failed")
    assert p.exitcode == -signal.SIGTERM
    assert not os.path.exists(f"/proc/{p.pid}")


async def test_async_with_cancelled_stops_child() -> None:
    p = aioproc.Process(target=targets.sleep_long)
    with anyio.CancelScope() as scope:
        async with p:
            scope.cancel()
            await anyio.sleep(targets.LONG)
    assert scope.cancelled_caught
    assert p.exitcode == -signal.SIGTERM
    assert not os.path.exists(f"/proc/{p.pid}")


async def test_async_with_cancelled_while_waiting_stops_child() -> None:
    p = await started(targets.sleep_long)
    with anyio.move_on_after(0.05) as scope:
        async with p:
            pass  # leaving normally: waits for the non-daemon child, then the deadline
    assert scope.cancelled_caught
    assert p.exitcode == -signal.SIGTERM
    assert not os.path.exists(f"/proc/{p.pid}")


# --- aioproc.run() -------------------------------------------------------------------------------


async def test_run_returns_the_value() -> None:
    assert await aioproc.run(targets.add, 20, 22) == 42
    assert await aioproc.run(functools.partial(targets.add, 1, b=2)) == 3


async def test_run_name_and_context() -> None:
    kind, name, pid, daemon = await aioproc.run(targets.process_info, name="one-shot")
    assert (kind, name, daemon) == ("Process", "one-shot", False)
    assert pid != os.getpid()
    assert await aioproc.run(targets.pr_parent_pid, context="spawn") == os.getpid()


async def test_run_raises_the_childs_exception() -> None:
    with pytest.raises(targets.CustomError, match="from run") as info:
        await aioproc.run(targets.raise_custom_error, "from run")
    assert isinstance(info.value.__cause__, aioproc.RemoteTraceback)
    with pytest.raises(aioproc.ProcessFailed, match="exited with code 9"):
        await aioproc.run(targets.exit_with, 9)


async def test_cancelled_run_leaves_no_child(pipe: Any) -> None:
    reader, writer = pipe
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(aioproc.run, targets.send_pid_and_sleep, writer)
            pid = await recv(reader)
            assert running(pid)
            scope.cancel()
    assert scope.cancelled_caught
    assert not running(pid)
    assert aioproc.active_children() == []


# --- module functions ----------------------------------------------------------------------------


def test_cpu_count() -> None:
    assert aioproc.cpu_count() == multiprocessing.cpu_count()


async def test_active_children() -> None:
    p = aioproc.Process(target=targets.sleep_long)
    assert p not in aioproc.active_children()
    await p.start()
    q = await started(targets.sleep_long)
    assert set(aioproc.active_children()) >= {p, q}
    await p.stop()
    assert p not in aioproc.active_children()
    assert q in aioproc.active_children()
    await q.stop()
    assert aioproc.active_children() == []


def test_current_process_in_parent() -> None:
    me = aioproc.current_process()
    assert me is aioproc.current_process()
    assert isinstance(me, aioproc.Process)
    assert me.name == multiprocessing.current_process().name == "MainProcess"
    assert me.daemon is False
    assert me.pid == os.getpid()
    assert me.is_alive()
    assert "current" in repr(me)


async def test_current_process_cannot_be_managed() -> None:
    me = aioproc.current_process()
    with pytest.raises(aioproc.ProcessStateError):
        await me.start()
    with pytest.raises(aioproc.ProcessStateError):
        me.terminate()
    with pytest.raises(aioproc.ProcessStateError):
        await me.wait()


@pytest.mark.parametrize("daemon", [False, True])
async def test_current_process_in_child(daemon: bool) -> None:
    p = await started(targets.process_info, name="info", daemon=daemon)
    assert await p.result() == ("Process", "info", p.pid, daemon)


@pytest.mark.parametrize("daemon", [False, True])
async def test_daemon_default_inherited_in_child(daemon: bool) -> None:
    p = await started(targets.pr_default_daemon, daemon=daemon)
    assert await p.result() is daemon


# --- daemon rules --------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [targets.grp_daemon_tries_run, targets.pr_daemon_tries_start])
async def test_daemon_may_not_have_children(target: Any) -> None:
    p = await started(target, daemon=True)
    kind, message = await p.result()
    assert kind == "SpawnError"
    assert "daemonic processes are not allowed to have children" in message


async def test_non_daemon_may_have_children() -> None:
    assert await aioproc.run(targets.start_a_child) == 1


async def test_fork_child_may_fork_children() -> None:
    # The child is forked while the parent's start thread holds aioproc's fork lock.
    with pytest.warns(RuntimeWarning, match="fork"):
        p = aioproc.Process(target=targets.pr_fork_in_fork, context="fork")
    with anyio.fail_after(30):  # a deadlocked child is stopped on the way out
        async with p:
            pass
    assert await p.result() == 2


# --- close() -------------------------------------------------------------------------------------


async def test_close() -> None:
    p = await started(targets.sleep_long)
    with pytest.raises(aioproc.ProcessStateError, match="running"):
        p.close()
    await p.stop()
    p.close()
    p.close()


# --- errors --------------------------------------------------------------------------------------


def test_error_hierarchy() -> None:
    assert issubclass(aioproc.ProcessFailed, aioproc.ProcessError)
    assert issubclass(aioproc.SpawnError, aioproc.ProcessError)
    assert issubclass(aioproc.ProcessStateError, aioproc.ProcessError)
    assert issubclass(aioproc.ProcessStateError, RuntimeError)
    assert issubclass(aioproc.ProcessError, Exception)


def test_process_failed_pickles() -> None:
    err = aioproc.ProcessFailed("gone", exitcode=-9, remote_traceback="tb text")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is aioproc.ProcessFailed
    assert str(copy) == "gone"
    assert copy.exitcode == -9
    assert copy.signal is signal.SIGKILL
    assert copy.remote_traceback == "tb text"
    assert copy.process is None
