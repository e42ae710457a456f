"""The examples run as real programs, on both backends, with the output a user would see.

PYTHONUNBUFFERED is removed from the children's environment (this machine sets it, and it
hides every buffering bug): the examples must flush their own output.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import aioproc

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 60

backends = pytest.mark.parametrize("backend", ["asyncio", "trio"])


def run_example(name: str, *args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr
    return proc.stdout.splitlines()


def index_of(lines: list[str], pattern: str) -> int:
    """The index of the only line that fully matches ``pattern``."""
    found = [i for i, line in enumerate(lines) if re.fullmatch(pattern, line)]
    assert len(found) == 1, f"{pattern!r} matched {len(found)} lines in:\n" + "\n".join(lines)
    return found[0]


@backends
def test_seed_demo(backend: str) -> None:
    lines = run_example("seed_demo.py", "--fast", "--backend", backend)

    assert lines[0] == f"the number of CPU is {aioproc.cpu_count()}"

    # The worker: starting, its argument, exiting, all from the same pid.
    start = index_of(lines, r"starting: worker:(\d+)")
    worker_pid = lines[start].rsplit(":", 1)[1]
    arg = index_of(lines, r"100")
    worker_exit = index_of(lines, rf"exiting: worker:{worker_pid}")
    assert start < arg < worker_exit

    # Every child was alive when the parent listed them.
    pids = {}
    for name in ("worker", "daemon", "non-daemon"):
        line = lines[index_of(lines, rf"child: {name}:(\d+)")]
        pids[name] = line.rsplit(":", 1)[1]
    assert pids["worker"] == worker_pid

    # The sleepers started; the non-daemon one was waited for, the daemon one was stopped.
    index_of(lines, rf"starting: daemon:{pids['daemon']}")
    index_of(lines, rf"starting: non-daemon:{pids['non-daemon']}")
    non_daemon_exit = index_of(lines, rf"exiting: non-daemon:{pids['non-daemon']}")
    assert not any(line.startswith("exiting: daemon:") for line in lines)
    assert worker_exit < non_daemon_exit

    # The summary from the group's exit events, in exit order.
    assert lines[-3:] == [
        "worker: exitcode=0, finished",
        "non-daemon: exitcode=0, finished",
        "daemon: exitcode=-15, stopped by the group (SIGTERM)",
    ]


def load_fanout() -> ModuleType:
    """The example as a module, to compute the expected results in this process."""
    spec = importlib.util.spec_from_file_location("fanout", EXAMPLES / "fanout.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@backends
def test_fanout(backend: str) -> None:
    jobs = 6
    lines = run_example("fanout.py", "--jobs", str(jobs), "--backend", backend)
    fanout = load_fanout()
    expected = {i: fanout.job(i) for i in range(jobs)}

    # One progress line per job, counting up, each job once with its own result; then the total.
    assert len(lines) == jobs + 1, "\n".join(lines)
    seen = []
    for count, line in enumerate(lines[:-1], start=1):
        match = re.fullmatch(r"\[\s*(\d+)/(\d+)\] job-(\d+) -> (\d+)", line)
        assert match, line
        assert (int(match[1]), int(match[2])) == (count, jobs)
        i = int(match[3])
        assert int(match[4]) == expected[i]
        seen.append(i)
    assert sorted(seen) == list(range(jobs))
    assert lines[-1] == f"total: {sum(expected.values())}"
