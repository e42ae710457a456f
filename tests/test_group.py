"""Process groups: ``aioproc.open_group()``, ``ProcessGroup`` and ``ExitEvent``.

Children are synchronised with gate files, never with sleeps: a child waits until the test
creates its gate (``targets.grp_wait_for_file``), and reports back by writing a file. What the
tests check about "no child outlives its group" they check right after the ``async with``
block, before anything else runs: ``exitcode``, ``is_alive()`` and ``/proc/<pid>``.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import re
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import pytest
import targets
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from procfs import running, state

import aioproc
from aioproc import ExitEvent, ProcessFailed, ProcessStateError, RemoteTraceback

pytestmark = pytest.mark.anyio

#: Upper bound for waiting on something that happens in milliseconds; only reached on failure.
WAIT = 30
POLL = 0.005
DAEMONIC = r"daemonic processes (are not allowed to|may not) have children"


# --- helpers --------------------------------------------------------------------------------


def _assert_reaped(processes: list[aioproc.Process]) -> None:
    """Every process has exited and been reaped: nothing is left of it in /proc."""
    for p in processes:
        assert p.exitcode is not None, p
        assert not p.is_alive(), p
        assert p.pid is not None and state(p.pid) is None, (p, state(p.pid or 0))


async def _until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(WAIT):
        while not predicate():
            await anyio.sleep(POLL)


async def _wait_for_file(path: Path) -> str:
    """Wait until a child has written ``path``; return what it wrote."""
    await _until(path.exists)
    return path.read_text()


async def _wait_until_asleep(ready: Path) -> None:
    """Wait until a grp_raise_on_sigterm child has written ``ready`` and sleeps: a SIGTERM that
    lands just before its time.sleep() starts is handled only when the sleep ends (CPython
    checks for signals between bytecodes), so its handler would not run when it is stopped."""
    pid = int(await _wait_for_file(ready))
    await _until(lambda: state(pid) == "S")


async def _grandchild_gone(pid: int) -> None:
    """A grandchild gets the same signal as its parent (the child's process group), but
    signals are delivered asynchronously: give it the moment it needs to act on it."""
    await _until(lambda: not running(pid))


def _leaves(exc: BaseException | None) -> list[BaseException]:
    """The exceptions in a (nested) exception group, in order."""
    if exc is None:
        return []
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


async def _events(group: aioproc.ProcessGroup) -> list[ExitEvent]:
    with anyio.fail_after(WAIT):
        return [ev async for ev in group.events()]


def _block_until_exited(pid: int) -> None:
    """Block the event loop (no checkpoint) until the child has exited and its exit status is
    ready to be collected, so that aioproc has not had a chance to see the exit yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):  # reaped already: by the fork server
        ppid = 0
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if ppid == os.getpid():  # our own child (fork, spawn): ask without reaping it
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        elif state(pid) is None:  # the fork server reaped it ...
            time.sleep(0.05)  # ... and sends us its status right after
            return
        time.sleep(0.001)
    raise AssertionError(f"child {pid} did not exit")


# --- spawn, start, processes, running -------------------------------------------------------


async def test_spawn_returns_a_started_child_and_the_group_lists_them(tmp_path: Path) -> None:
    gates = [tmp_path / f"gate{i}" for i in range(3)]
    async with aioproc.open_group() as group:
        assert group.processes == [] and group.running == []
        a = await group.spawn(targets.grp_wait_for_file, str(gates[0]), "a", name="a")
        assert isinstance(a, aioproc.Process)
        assert isinstance(a.pid, int) and a.is_alive() and a.exitcode is None
        assert running(a.pid)
        assert a.name == "a" and a.daemon is False
        # Keyword arguments for the target go through functools.partial.
        b = await group.spawn(
            functools.partial(targets.grp_behave, kind="return", arg="b"), str(gates[1])
        )
        c = await group.spawn(targets.grp_wait_for_file, str(gates[2]), "c", daemon=True)
        assert c.daemon is True and c.is_alive()
        assert group.processes == [a, b, c]
        assert group.running == [a, b, c]

        gates[1].touch()
        await b.wait()
        assert group.processes == [a, b, c]
        assert group.running == [a, c]
        gates[0].touch()
        gates[2].touch()
        await a.wait()
        await c.wait()
        assert group.running == []
    assert group.processes == [a, b, c]
    assert [await p.result() for p in group.processes] == ["a", "b", "c"]
    _assert_reaped(group.processes)


async def test_spawn_and_start_outside_the_block_raise() -> None:
    group = aioproc.open_group()
    before = aioproc.Process(target=targets.grp_return, args=(1,))
    with pytest.raises(ProcessStateError):
        await group.spawn(targets.grp_return, 1)
    with pytest.raises(ProcessStateError):
        await group.start(before)
    assert before.pid is None

    async with group:
        inside = await group.spawn(targets.grp_return, 2)

    after = aioproc.Process(target=targets.grp_return, args=(3,))
    with pytest.raises(ProcessStateError):
        await group.spawn(targets.grp_return, 3)
    with pytest.raises(ProcessStateError):
        await group.start(after)
    assert after.pid is None
    assert group.processes == [inside]
    assert aioproc.active_children() == []


async def test_a_group_can_be_entered_only_once() -> None:
    group = aioproc.open_group()
    async with group:
        pass
    with pytest.raises(ProcessStateError):
        async with group:
            pass

    nested = aioproc.open_group()
    with pytest.raises(ExceptionGroup) as info:
        async with nested, nested:
            pass
    [error] = _leaves(info.value)
    assert isinstance(error, ProcessStateError)


async def test_start_adopts_a_built_process_subclass() -> None:
    async with aioproc.open_group() as group:
        echo = targets.GrpEchoProcess({"x": 1}, name="echo")
        assert echo.pid is None
        adopted = await group.start(echo)
        assert adopted is echo
        assert isinstance(echo.pid, int)
        assert group.processes == [echo]
    assert await echo.result() == ("echo", {"x": 1}, "echo")
    [event] = await _events(group)
    assert event.process is echo and event.ok and event.exitcode == 0


async def test_start_rejects_what_is_not_an_unstarted_aioproc_process() -> None:
    loose = aioproc.Process(target=targets.grp_return, args=(1,))
    await loose.start()
    async with aioproc.open_group(max_running=1) as group:
        with pytest.raises(TypeError, match=r"aioproc\.Process"):
            await group.start(object())  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"aioproc\.Process"):
            await group.start(multiprocessing.Process(target=targets.grp_return))  # type: ignore[arg-type]
        with pytest.raises(ProcessStateError):
            await group.start(loose)  # already started, outside the group
        mine = await group.spawn(targets.grp_return, 2)  # the refused starts left the slot free
        with pytest.raises(ProcessStateError):
            await group.start(mine)  # already a child of this group
        assert group.processes == [mine]
    assert await loose.result() == 1
    assert await mine.result() == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"grace": -1},
        {"grace": math.nan},
        {"grace": "1"},
        {"grace": None},
        {"max_running": 0},
        {"max_running": -2},
        {"max_running": 1.5},
        {"max_running": "2"},
        {"context": "no-such-method"},
    ],
    ids=repr,
)
async def test_invalid_arguments_raise_value_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        aioproc.open_group(**kwargs)


# --- leaving the block normally -------------------------------------------------------------


async def test_leaving_normally_waits_for_non_daemons_then_stops_daemons(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    body_done = anyio.Event()
    running_after_body: list[aioproc.Process] = []

    async def open_gate_after_the_body(group: aioproc.ProcessGroup) -> None:
        await body_done.wait()
        # The block has ended and now waits for the worker; the daemon is still running.
        running_after_body.extend(group.running)
        gate.touch()

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            async with aioproc.open_group() as group:
                worker = await group.spawn(targets.grp_wait_for_file, str(gate), "done")
                daemon = await group.spawn(targets.grp_sleep_long, daemon=True, name="daemon")
                quick = await group.spawn(targets.grp_return, "quick", daemon=True)
                await quick.wait()
                tg.start_soon(open_gate_after_the_body, group)
                body_done.set()
            _assert_reaped(group.processes)

    assert running_after_body == [worker, daemon]
    assert await worker.result() == "done"
    assert worker.exitcode == 0
    assert daemon.exitcode == -signal.SIGTERM
    events = await _events(group)
    # The daemon was stopped only once the worker had exited.
    assert [ev.process for ev in events] == [quick, worker, daemon]
    quick_ev, worker_ev, daemon_ev = events
    assert (worker_ev.exitcode, worker_ev.stopped, worker_ev.ok) == (0, False, True)
    assert (quick_ev.exitcode, quick_ev.stopped, quick_ev.ok) == (0, False, True)
    assert daemon_ev.stopped and daemon_ev.ok and daemon_ev.error is None
    assert daemon_ev.signal is signal.SIGTERM
    with pytest.raises(ProcessFailed, match="stopped"):
        await daemon.result()


async def test_a_daemon_spawned_just_before_the_block_ends_is_stopped() -> None:
    # No checkpoint between the spawn and the end of the block: the group has not run
    # anything for this child yet, and must still stop it.
    with anyio.fail_after(WAIT):
        async with aioproc.open_group() as group:
            daemon = await group.spawn(targets.grp_sleep_long, daemon=True)
    _assert_reaped([daemon])
    assert daemon.exitcode == -signal.SIGTERM
    [event] = await _events(group)
    assert event.stopped and event.ok


async def test_a_daemon_that_ignores_sigterm_is_killed_after_grace(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    async with aioproc.open_group(grace=0.2) as group:
        stubborn = await group.spawn(targets.grp_ignore_sigterm, str(ready), daemon=True)
        await _wait_for_file(ready)
    _assert_reaped([stubborn])
    assert stubborn.exitcode == -signal.SIGKILL
    [event] = await _events(group)
    assert event.signal is signal.SIGKILL
    assert event.stopped and event.ok and event.error is None


# --- leaving by an exception or a cancellation ----------------------------------------------


@pytest.mark.parametrize("how", ["body raises", "scope cancelled", "deadline"])
async def test_leaving_abnormally_stops_and_reaps_every_child(tmp_path: Path, how: str) -> None:
    ready, pid_file = tmp_path / "ready", tmp_path / "grandchild"
    boom = RuntimeError("boom")
    caught: BaseException | None = None
    scope = anyio.move_on_after(WAIT) if how == "deadline" else anyio.CancelScope()
    try:
        with scope:
            async with aioproc.open_group(grace=0.2) as group:
                plain = await group.spawn(targets.grp_sleep_long, name="plain")
                daemon = await group.spawn(targets.grp_sleep_long, daemon=True)
                stubborn = await group.spawn(targets.grp_ignore_sigterm, str(ready))
                forker = await group.spawn(targets.grp_fork_grandchild, str(pid_file))
                await _wait_for_file(ready)
                grandchild = int(await _wait_for_file(pid_file))
                assert running(grandchild)
                if how == "body raises":
                    raise boom
                if how == "scope cancelled":
                    scope.cancel()
                else:
                    scope.deadline = anyio.current_time()
                await anyio.sleep_forever()
    except ExceptionGroup as eg:
        caught = eg
    # Right after the block: every child has been stopped and reaped.
    _assert_reaped(group.processes)
    assert group.running == []
    assert aioproc.active_children() == []
    await _grandchild_gone(grandchild)

    if how == "body raises":
        assert _leaves(caught) == [boom]
    else:
        assert caught is None
        assert scope.cancelled_caught
    assert plain.exitcode == daemon.exitcode == forker.exitcode == -signal.SIGTERM
    assert stubborn.exitcode == -signal.SIGKILL
    events = await _events(group)
    assert Counter(ev.process for ev in events) == Counter(group.processes)
    assert all(ev.stopped and ev.ok and ev.error is None for ev in events)


async def test_body_exception_is_raised_in_an_exception_group() -> None:
    try:
        async with aioproc.open_group() as group:
            child = await group.spawn(targets.grp_sleep_long)
            raise KeyError("from the body")
    except* KeyError as eg:
        [error] = eg.exceptions
        assert error.args == ("from the body",)
    _assert_reaped([child])


# --- failing children -----------------------------------------------------------------------

FAILURES: dict[str, tuple[Callable[..., Any], tuple[Any, ...], int]] = {
    "raises": (targets.grp_raise_value_error, ("bad news",), 1),
    "exits nonzero": (targets.grp_exit, (3,), 3),
    "os._exit": (targets.grp_hard_exit, (4,), 4),
    "outside SIGKILL": (targets.grp_sleep_long, (), -signal.SIGKILL),
}


@pytest.mark.parametrize(
    ("failure", "daemon"),
    [("raises", False), ("exits nonzero", True), ("os._exit", False), ("outside SIGKILL", True)],
)
async def test_a_failing_checked_child_cancels_the_group(
    tmp_path: Path, failure: str, daemon: bool
) -> None:
    target, args, exitcode = FAILURES[failure]
    ready = tmp_path / "ready"
    with pytest.raises(ExceptionGroup) as info:
        with anyio.fail_after(WAIT):
            async with aioproc.open_group() as group:
                plain = await group.spawn(targets.grp_sleep_long)
                sibling_daemon = await group.spawn(targets.grp_sleep_long, daemon=True)
                # Exits 1 with an exception when stopped: still not a failure.
                raiser = await group.spawn(targets.grp_raise_on_sigterm, str(ready))
                await _wait_until_asleep(ready)
                bad = await group.spawn(target, *args, name="bad", daemon=daemon)
                if failure == "outside SIGKILL":
                    assert bad.pid is not None
                    os.kill(bad.pid, signal.SIGKILL)
                await anyio.sleep_forever()
    _assert_reaped(group.processes)

    events = {ev.process: ev for ev in await _events(group)}
    bad_ev = events.pop(bad)
    assert bad.exitcode == bad_ev.exitcode == exitcode
    assert not bad_ev.ok and not bad_ev.stopped
    # The group raises the child's own failure, and only it: stopped siblings are no failures.
    assert _leaves(info.value) == [bad_ev.error]
    error = bad_ev.error
    if failure == "raises":
        assert type(error) is ValueError and str(error) == "bad news"
        assert f"raised in child process 'bad' (pid {bad.pid})" in error.__notes__
        assert isinstance(error.__cause__, RemoteTraceback)
        assert "grp_raise_value_error" in str(error.__cause__)
    else:
        assert isinstance(error, ProcessFailed)
        assert error.process is bad and error.exitcode == exitcode
        expected_signal = signal.SIGKILL if failure == "outside SIGKILL" else None
        assert error.signal is expected_signal
    assert set(events) == {plain, sibling_daemon, raiser}
    for ev in events.values():
        assert ev.stopped and ev.ok and ev.error is None
    assert plain.exitcode == sibling_daemon.exitcode == -signal.SIGTERM
    assert raiser.exitcode == 1


async def test_unchecked_children_fail_without_affecting_the_group(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with anyio.fail_after(WAIT):
        async with aioproc.open_group() as group:
            waiting = await group.spawn(targets.grp_wait_for_file, str(gate), "still here")
            raised = await group.spawn(targets.grp_raise_value_error, "quiet", check=False)
            exited = await group.spawn(targets.grp_exit, 3, check=False)
            hard = await group.spawn(targets.grp_hard_exit, 4, check=False, daemon=True)
            killed = await group.spawn(targets.grp_sleep_long, check=False)
            assert killed.pid is not None
            os.kill(killed.pid, signal.SIGKILL)
            stream = group.events()
            seen = [await anext(stream) for _ in range(4)]  # the group has handled all four
            await anyio.lowlevel.checkpoint()
            assert waiting.is_alive()
            gate.touch()

    assert await waiting.result() == "still here"
    assert {ev.process for ev in seen} == {raised, exited, hard, killed}
    events = {ev.process: ev for ev in await _events(group)}
    assert events[waiting].ok and not events[waiting].stopped and events[waiting].exitcode == 0
    expected = {raised: (1, ValueError), exited: (3, ProcessFailed), hard: (4, ProcessFailed)}
    expected[killed] = (-signal.SIGKILL, ProcessFailed)
    for p, (exitcode, error_type) in expected.items():
        ev = events[p]
        assert p.exitcode == ev.exitcode == exitcode
        assert type(ev.error) is error_type
        assert not ev.ok and not ev.stopped
        with pytest.raises(error_type) as info:
            await p.result()
        assert info.value is ev.error
    assert str(events[raised].error) == "quiet"
    assert events[killed].signal is signal.SIGKILL


@pytest.mark.parametrize("how", ["body raises", "scope cancelled"])
async def test_a_checked_child_that_failed_before_the_group_stopped_it_is_reported(
    how: str,
) -> None:
    """The child fails on its own; the group is cancelled before its watcher saw the exit.

    It was not stopped (it had exited), so its failure must not be lost: the block raises it.
    """
    boom = RuntimeError("boom")
    caught: BaseException | None = None
    try:
        with anyio.CancelScope() as scope:
            async with aioproc.open_group() as group:
                early = await group.spawn(targets.grp_raise_value_error, "early", name="early")
                assert early.pid is not None
                _block_until_exited(early.pid)
                if how == "body raises":
                    raise boom
                scope.cancel()
                await anyio.lowlevel.checkpoint()
    except BaseExceptionGroup as eg:
        caught = eg
    _assert_reaped([early])
    [event] = await _events(group)
    assert not event.stopped and type(event.error) is ValueError
    leaves = _leaves(caught)
    assert any(leaf is event.error for leaf in leaves), leaves
    assert (boom in leaves) == (how == "body raises")


@pytest.mark.parametrize("how", ["daemon at normal exit", "body raises"])
async def test_children_stopped_by_the_group_are_not_failures(tmp_path: Path, how: str) -> None:
    ready = [tmp_path / "ready0", tmp_path / "ready1"]
    boom = RuntimeError("boom")
    daemon = how == "daemon at normal exit"
    caught: BaseException | None = None
    try:
        async with aioproc.open_group() as group:
            for path in ready:
                # SIGTERM raises ValueError in these: they exit 1 with an exception.
                await group.spawn(targets.grp_raise_on_sigterm, str(path), daemon=daemon)
            for path in ready:
                await _wait_until_asleep(path)
            if not daemon:
                raise boom
    except ExceptionGroup as eg:
        caught = eg
    assert _leaves(caught) == ([] if daemon else [boom])
    events = await _events(group)
    assert len(events) == 2
    for ev in events:
        assert ev.exitcode == 1 and ev.signal is None
        assert ev.stopped and ev.ok and ev.error is None
        with pytest.raises(ProcessFailed, match="stopped"):
            await ev.process.result()


async def test_terminating_a_child_inside_the_group_is_not_a_failure() -> None:
    async with aioproc.open_group() as group:
        victim = await group.spawn(targets.grp_sleep_long)
        victim.terminate()
        assert await victim.wait() == -signal.SIGTERM
        after = await group.spawn(targets.grp_return, "after")
    assert await after.result() == "after"
    victim_ev, after_ev = await _events(group)
    assert victim_ev.process is victim and victim_ev.stopped and victim_ev.ok
    assert after_ev.process is after and after_ev.ok and not after_ev.stopped


# --- events() -------------------------------------------------------------------------------


async def test_events_come_in_exit_order_once_to_every_iterator(tmp_path: Path) -> None:
    order = [2, 0, 3, 1]
    gates = [tmp_path / f"gate{i}" for i in range(4)]
    seen: dict[str, list[ExitEvent]] = {}

    async def collect(key: str, stream: aioproc.EventStream) -> None:
        seen[key] = [ev async for ev in stream]

    with anyio.fail_after(WAIT):
        async with aioproc.open_group() as group:
            procs = [
                await group.spawn(targets.grp_wait_for_file, str(gates[i]), i, name=f"e{i}")
                for i in range(4)
            ]
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect, "concurrent 1", group.events())
                tg.start_soon(collect, "concurrent 2", group.events())
                driver = group.events()
                for k, i in enumerate(order):
                    if k == 2:  # two children have exited before this iterator begins
                        tg.start_soon(collect, "late", group.events())
                    gates[i].touch()
                    ev = await anext(driver)  # the next gate opens once this child's exit is in
                    assert ev.process is procs[i]
                with pytest.raises(StopAsyncIteration):
                    await anext(driver)
            seen["all exited"] = [ev async for ev in group.events()]
        seen["closed"] = [ev async for ev in group.events()]

    expected = [procs[i] for i in order]
    reference = seen["closed"]
    for key, events in seen.items():
        assert [ev.process for ev in events] == expected, key
        assert all(a is b for a, b in zip(events, reference, strict=True)), key
    assert [await p.result() for p in expected] == order


async def test_events_are_in_exit_order_whatever_order_the_watchers_run(tmp_path: Path) -> None:
    # A child whose exit is seen before the group's task watching it first runs (CI caught one
    # that exited during its own start) is listed before a sibling that exited after it.
    gate = tmp_path / "gate"
    async with aioproc.open_group() as group:
        later = await group.spawn(targets.grp_wait_for_file, str(gate), name="later")
        first = await group.spawn(targets.grp_hard_exit, 3, check=False, name="first")
        # No checkpoint from here to the end of the block: no watcher task runs meanwhile.
        _block_until_exited(first.pid)  # type: ignore[arg-type]
        assert first.exitcode == 3
        gate.touch()
        _block_until_exited(later.pid)  # type: ignore[arg-type]
        assert later.exitcode == 0
    assert [ev.process for ev in await _events(group)] == [first, later]


async def test_events_end_when_every_child_spawned_so_far_has_exited(tmp_path: Path) -> None:
    gates = [tmp_path / "a", tmp_path / "b"]
    got: list[aioproc.Process] = []
    done = anyio.Event()

    async def collect(stream: aioproc.EventStream) -> None:
        async for ev in stream:
            got.append(ev.process)
        done.set()

    with anyio.fail_after(WAIT):
        async with aioproc.open_group() as group, anyio.create_task_group() as tg:
            assert [ev async for ev in group.events()] == []  # no child: ends at once
            a = await group.spawn(targets.grp_wait_for_file, str(gates[0]))
            tg.start_soon(collect, group.events())
            b = await group.spawn(targets.grp_wait_for_file, str(gates[1]))
            gates[0].touch()
            await _until(lambda: got == [a])
            await anyio.lowlevel.checkpoint()
            assert not done.is_set()  # b, spawned while it iterated, is still running
            gates[1].touch()
            await done.wait()
    assert got == [a, b]


@pytest.mark.parametrize(
    ("started", "leaving"),
    [("inside the block", "normally"), ("before the block", "normally"), ("inside", "raising")],
)
async def test_follow_yields_as_children_are_spawned_until_the_group_closes(
    started: str, leaving: str
) -> None:
    group = aioproc.open_group()
    send, receive = anyio.create_memory_object_stream[ExitEvent](10)
    ended = anyio.Event()
    following = anyio.Event()

    async def follow() -> None:
        async with send:
            following.set()
            async for ev in group.events(follow=True):
                await send.send(ev)
        ended.set()

    caught: BaseException | None = None
    with anyio.fail_after(WAIT):
        async with receive, anyio.create_task_group() as tg:
            if started == "before the block":
                tg.start_soon(follow)
                await following.wait()
            try:
                async with group:
                    if started != "before the block":
                        tg.start_soon(follow)
                    a = await group.spawn(targets.grp_return, "a")
                    assert (await receive.receive()).process is a
                    # Every child spawned so far has exited: a plain iterator ends here ...
                    assert [ev.process async for ev in group.events()] == [a]
                    # ... and the follower goes on.
                    b = await group.spawn(targets.grp_return, "b")
                    assert (await receive.receive()).process is b
                    await anyio.lowlevel.checkpoint()
                    assert not ended.is_set()
                    if leaving == "raising":
                        raise RuntimeError("leaving")
            except ExceptionGroup as eg:
                caught = eg
            await ended.wait()
            assert [ev async for ev in receive] == []
    assert len(_leaves(caught)) == (1 if leaving == "raising" else 0)


async def test_exit_event_fields_and_frozen() -> None:
    async with aioproc.open_group() as group:
        ok = await group.spawn(targets.grp_return, "v", name="ok")
        raised = await group.spawn(targets.grp_raise_value_error, "bad", name="raised", check=False)
        exited = await group.spawn(targets.grp_exit, 3, name="exited", check=False)
        killed = await group.spawn(targets.grp_sleep_long, name="killed", check=False)
        await group.spawn(targets.grp_sleep_long, name="stopped", daemon=True)
        assert killed.pid is not None
        os.kill(killed.pid, signal.SIGKILL)
        for p in (ok, raised, exited, killed):
            await p.wait()
    events = {ev.name: ev for ev in await _events(group)}
    assert set(events) == {"ok", "raised", "exited", "killed", "stopped"}
    for p in group.processes:
        ev = events[p.name]
        assert isinstance(ev, ExitEvent)
        assert ev.process is p and ev.name == p.name and ev.pid == p.pid
        assert ev.exitcode == p.exitcode
        assert ev.ok is (ev.error is None)

    def fields(ev: ExitEvent) -> tuple[Any, ...]:
        return ev.exitcode, ev.signal, type(ev.error), ev.ok, ev.stopped

    assert fields(events["ok"]) == (0, None, type(None), True, False)
    assert fields(events["raised"]) == (1, None, ValueError, False, False)
    assert fields(events["exited"]) == (3, None, ProcessFailed, False, False)
    killed_fields = (-9, signal.SIGKILL, ProcessFailed, False, False)
    assert fields(events["killed"]) == killed_fields
    assert fields(events["stopped"]) == (-15, signal.SIGTERM, type(None), True, True)
    assert isinstance(events["killed"].signal, signal.Signals)
    assert isinstance(events["stopped"].signal, signal.Signals)

    ev = events["ok"]
    for name, value in [
        ("process", None),
        ("name", "other"),
        ("pid", 1),
        ("exitcode", 1),
        ("error", ValueError()),
        ("stopped", True),
        ("ok", False),
        ("signal", signal.SIGTERM),
    ]:
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(ev, name, value)
    assert fields(ev) == (0, None, type(None), True, False) and ev.name == "ok"


# --- max_running ----------------------------------------------------------------------------


async def test_max_running_bounds_the_children_alive_at_once(tmp_path: Path) -> None:
    n, limit = 5, 2
    gates = [tmp_path / f"gate{i}" for i in range(n)]
    exits_at_spawn: list[int] = []
    most_running = 0

    with anyio.fail_after(WAIT):
        async with aioproc.open_group(max_running=limit) as group:

            async def spawner() -> None:
                nonlocal most_running
                for i in range(n):
                    p = await group.spawn(targets.grp_wait_for_file, str(gates[i]), i)
                    assert p.is_alive()
                    exits_at_spawn.append(sum(q.exitcode is not None for q in group.processes))
                    most_running = max(most_running, len(group.running))

            async with anyio.create_task_group() as tg:
                tg.start_soon(spawner)
                for i in range(n):
                    # Let the spawner fill every slot it can, then free one.
                    await _until(lambda i=i: len(group.processes) == min(i + limit, n))
                    assert len(group.running) <= limit
                    assert len(aioproc.active_children()) <= limit
                    gates[i].touch()
                    await group.processes[i].wait()
    # Each spawn beyond the limit returned only after one more child had exited.
    assert exits_at_spawn == [0, 0, 1, 2, 3]
    assert most_running == limit
    assert [await p.result() for p in group.processes] == list(range(n))


# --- daemons may not have children ----------------------------------------------------------


@pytest.mark.parametrize("target", [targets.grp_daemon_tries_group, targets.grp_daemon_tries_run])
async def test_a_daemon_child_may_not_have_children(target: Callable[[], Any]) -> None:
    async with aioproc.open_group() as group:
        daemon = await group.spawn(target, daemon=True)
        kind, message = await daemon.result()
    assert kind == "SpawnError"
    assert re.search(DAEMONIC, message), message


async def test_a_non_daemon_child_may_have_children() -> None:
    async with aioproc.open_group() as group:
        parent = await group.spawn(targets.grp_daemon_tries_group)
    assert await parent.result() == ("no error", "")


# --- context --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "our_child", "forked"),
    [
        ("spawn", True, False),
        ("forkserver", False, False),
        ("fork", True, True),
        (multiprocessing.get_context("spawn"), True, False),
    ],
    ids=["spawn", "forkserver", "fork", "spawn context object"],
)
async def test_group_context_applies_to_its_children(
    monkeypatch: pytest.MonkeyPatch, context: Any, our_child: bool, forked: bool
) -> None:
    monkeypatch.setattr(targets, "grp_marker", "set in the parent")
    if forked:
        with pytest.warns(RuntimeWarning, match="fork"):
            group = aioproc.open_group(context=context)
    else:
        group = aioproc.open_group(context=context)
    async with group:
        child = await group.spawn(targets.grp_start_info)
        adopted = await group.start(aioproc.Process(target=targets.grp_start_info))
    for p in (child, adopted):
        ppid, marker = await p.result()
        assert (ppid == os.getpid()) is our_child  # forkserver children are the server's
        assert marker == ("set in the parent" if forked else "unset")


@pytest.mark.parametrize(
    ("group_context", "own_context"), [("spawn", "forkserver"), ("forkserver", "spawn")]
)
async def test_a_childs_own_context_wins(group_context: str, own_context: str) -> None:
    async with aioproc.open_group(context=group_context) as group:
        own = await group.start(aioproc.Process(target=targets.grp_start_info, context=own_context))
        plain = await group.spawn(targets.grp_start_info)
    own_ppid, _ = await own.result()
    plain_ppid, _ = await plain.result()
    assert (own_ppid == os.getpid()) is (own_context == "spawn")
    assert (plain_ppid == os.getpid()) is (group_context == "spawn")


# --- property: group semantics for any mix of children --------------------------------------

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"loop_factory": uvloop.new_event_loop}),
    "trio": ("trio", {}),
}


@attrs.frozen
class Child:
    daemon: bool
    kind: str  # "return", "raise", "exit" or "gate" (returns once its gate opens)
    code: int  # the exit code for "exit"
    check: bool


class BodyError(Exception):
    pass


@attrs.define
class Scenario:
    group: aioproc.ProcessGroup
    caught: BaseException | None = None
    reached_end: bool = False
    cancelled_caught: bool = False
    followed: list[ExitEvent] = attrs.Factory(list)
    events: list[ExitEvent] = attrs.Factory(list)
    outcomes: dict[str, tuple[str, Any]] = attrs.Factory(dict)


async def _run_scenario(children: list[Child], leave: str, tmp: str) -> Scenario:
    group = aioproc.open_group(grace=1.0)
    s = Scenario(group)
    gates = [os.path.join(tmp, f"gate{i}") for i in range(len(children))]

    async def follow() -> None:
        async for ev in group.events(follow=True):
            s.followed.append(ev)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            try:
                with anyio.CancelScope() as scope:
                    async with group:
                        tg.start_soon(follow)
                        for i, c in enumerate(children):
                            gate = gates[i] if c.kind == "gate" else None
                            kind = "return" if c.kind == "gate" else c.kind
                            arg = c.code if kind == "exit" else f"c{i}"
                            await group.spawn(
                                targets.grp_behave,
                                gate,
                                kind,
                                arg,
                                name=f"c{i}",
                                daemon=c.daemon,
                                check=c.check,
                            )
                        s.reached_end = True
                        if leave == "raise":
                            raise BodyError()
                        if leave == "cancel":
                            scope.cancel()
                            await anyio.sleep_forever()
                        for i, c in enumerate(children):
                            if not c.daemon:
                                Path(gates[i]).touch()
            except BaseExceptionGroup as eg:
                s.caught = eg
            s.cancelled_caught = scope.cancelled_caught
        s.events = [ev async for ev in group.events()]
        for p in group.processes:
            try:
                s.outcomes[p.name] = ("value", await p.result())
            except Exception as exc:
                s.outcomes[p.name] = ("error", exc)
    return s


def _check_invariants(children: list[Child], leave: str, s: Scenario) -> None:
    processes = s.group.processes
    spec = {f"c{i}": c for i, c in enumerate(children)}
    # No child outlives its group, and every one was reaped.
    _assert_reaped(processes)
    assert aioproc.active_children() == []
    # One event per child: the events are a permutation of the processes, and every
    # iterator (the follower too) saw the same events in the same order.
    assert Counter(ev.process for ev in s.events) == Counter(processes)
    assert len(s.events) == len(processes)
    assert [ev.process for ev in s.followed] == [ev.process for ev in s.events]
    for ev in s.events:
        assert (ev.name, ev.pid, ev.exitcode) == (
            ev.process.name,
            ev.process.pid,
            ev.process.exitcode,
        )
        assert ev.ok is (ev.error is None)
        if ev.stopped:  # a stop is never a failure
            assert ev.error is None

    leaves = _leaves(s.caught)
    failed = [ev for ev in s.events if ev.error is not None]
    checked_failures = [ev for ev in failed if spec[ev.name].check]
    # Every failing checked child is in the group's exception; nothing else is, but the body's.
    for ev in checked_failures:
        assert any(leaf is ev.error for leaf in leaves), (ev, leaves)
    for leaf in leaves:
        assert isinstance(leaf, BodyError) or any(leaf is ev.error for ev in checked_failures)
    body_errors = [leaf for leaf in leaves if isinstance(leaf, BodyError)]
    assert len(body_errors) == (1 if leave == "raise" and s.reached_end else 0)

    if checked_failures:
        assert s.caught is not None
        return
    # Nothing failed that could cancel the group: the body ran to its end.
    assert s.reached_end
    assert len(processes) == len(children)
    by_name = {ev.name: ev for ev in s.events}
    for name, c in spec.items():
        ev = by_name[name]
        if c.kind == "gate" and (c.daemon or leave != "normal"):
            assert ev.stopped and ev.exitcode == -signal.SIGTERM, ev
            continue
        if leave == "normal" and not c.daemon:
            assert not ev.stopped, ev  # left normally: non-daemons are waited for
        if ev.stopped:
            continue
        if c.kind in ("return", "gate"):
            assert (ev.exitcode, s.outcomes[name]) == (0, ("value", name))
        elif c.kind == "raise":
            assert ev.exitcode == 1 and type(ev.error) is ValueError and str(ev.error) == name
        else:
            assert ev.exitcode == c.code and isinstance(ev.error, ProcessFailed)
    if leave == "normal":
        assert s.caught is None
    elif leave == "cancel":
        assert s.caught is None and s.cancelled_caught


children_strategy = st.lists(
    st.builds(
        Child,
        daemon=st.booleans(),
        kind=st.sampled_from(["return", "raise", "exit", "gate"]),
        code=st.integers(1, 3),
        check=st.booleans(),
    ),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    children=children_strategy,
    leave=st.sampled_from(["normal", "raise", "cancel"]),
    backend=st.sampled_from(sorted(BACKENDS)),
)
def test_group_invariants_hold_for_any_mix_of_children(
    children: list[Child], leave: str, backend: str
) -> None:
    name, options = BACKENDS[backend]
    with tempfile.TemporaryDirectory() as tmp:
        scenario = anyio.run(
            _run_scenario, children, leave, tmp, backend=name, backend_options=options
        )
    _check_invariants(children, leave, scenario)
