"""Children never outlive their parent: killed, terminated or interrupted.

Each test runs tests/parent_program.py as a subprocess (a group with a daemon and a non-daemon
child, each with an os.fork() grandchild; in "nested" mode the non-daemon child runs an aioproc
group of its own, whose child forks a great-grandchild; in "gil" mode the non-daemon child holds
the GIL for good), then kills or interrupts it and checks /proc for survivors. Survivors are
SIGKILLed at the end, pass or fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procfs import running

PROGRAM = Path(__file__).with_name("parent_program.py")
METHODS = ["forkserver", "spawn", "fork"]


def _wait_gone(pids: list[int], within: float) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = [p for p in pids if running(p)]
        if not alive:
            return []
        time.sleep(0.02)
    return [p for p in pids if running(p)]


@pytest.fixture
def parent(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    started: list[tuple[subprocess.Popen[str], list[int]]] = []

    def start(
        method: str, backend: str = "asyncio", mode: str = "plain"
    ) -> tuple[subprocess.Popen[str], list[int]]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        env["PYTHONPATH"] = os.pathsep.join([str(PROGRAM.parent.parent), env.get("PYTHONPATH", "")])
        proc = subprocess.Popen(
            [sys.executable, str(PROGRAM), method, backend, str(tmp_path), mode],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        started.append((proc, []))
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("PIDS"), line
        pids = [int(x) for x in line.split()[1:]]
        started[-1] = (proc, pids)
        assert len(pids) == (5 if mode == "nested" else 4) and all(running(p) for p in pids)
        return proc, pids

    yield start
    for proc, pids in started:
        for pid in [proc.pid, *pids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.communicate()


@pytest.mark.parametrize("method", METHODS)
def test_parent_sigkill_takes_every_child_along(parent, method: str) -> None:  # type: ignore[no-untyped-def]
    proc, pids = parent(method)
    proc.kill()
    proc.wait()
    assert _wait_gone(pids, within=1.0) == []


@pytest.mark.parametrize("method", METHODS)
def test_parent_sigterm_takes_every_child_along(parent, method: str) -> None:  # type: ignore[no-untyped-def]
    proc, pids = parent(method)
    proc.terminate()
    proc.wait()
    assert _wait_gone(pids, within=1.0) == []


@pytest.mark.parametrize("method", METHODS)
def test_parent_sigkill_takes_nested_group_descendants_along(parent, method: str) -> None:  # type: ignore[no-untyped-def]
    # The kernel kills the child's process group as the parent dies, then the grandchild's
    # as the child dies (the great-grandchild is in the grandchild's group).
    proc, pids = parent(method, mode="nested")
    proc.kill()
    proc.wait()
    assert _wait_gone(pids, within=1.0) == []


@pytest.mark.parametrize("method", METHODS)
def test_parent_sigkill_takes_a_child_that_holds_the_gil_along(parent, method: str) -> None:  # type: ignore[no-untyped-def]
    # No Python code can run in that child any more: the kernel itself SIGKILLs its process
    # group when the parent's liveness pipe loses its writer.
    proc, pids = parent(method, mode="gil")
    proc.kill()
    proc.wait()
    assert _wait_gone(pids, within=1.0) == []


@pytest.mark.parametrize("method", METHODS)
def test_parent_sigterm_takes_nested_group_descendants_along(parent, method: str) -> None:  # type: ignore[no-untyped-def]
    proc, pids = parent(method, mode="nested")
    proc.terminate()
    proc.wait()
    assert _wait_gone(pids, within=1.0) == []


#: The grace of parent_program's group.
GRACE = 2.0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("method", METHODS)
def test_ctrl_c_stops_children_gracefully(parent, method: str, backend: str) -> None:  # type: ignore[no-untyped-def]
    proc, pids = parent(method, backend)
    interrupted = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=GRACE + 5.0)
    # KeyboardInterrupt reached the program, after its group had stopped the children.
    assert "INTERRUPTED" in out
    assert proc.returncode == 130
    assert time.monotonic() - interrupted < GRACE + 1.0
    # The group stopped and reaped its children before KeyboardInterrupt left it, and their
    # grandchildren (same process groups) with them.
    assert [p for p in pids if running(p)] == []


@pytest.mark.parametrize("method", METHODS)
def test_ctrl_c_stops_nested_group_descendants(parent, method: str) -> None:  # type: ignore[no-untyped-def]
    proc, pids = parent(method, mode="nested")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=GRACE + 5.0)
    assert "INTERRUPTED" in out and proc.returncode == 130
    # The nested group's own children end by their parent-death guard, when the child that
    # started them is stopped: a few milliseconds later.
    assert _wait_gone(pids, within=1.0) == []
