"""Scenario 2: sequential start+wait of a trivial target, per start method.

aioproc (asyncio and trio) against plain multiprocessing with the same start method, with and
without anyio, trio and attrs imported in ``__main__``. What ``__main__`` imports is what
every forkserver and spawn child imports again, so each configuration runs in a program of
its own -- this file, as ``__main__``::

    python benchmarks/seq.py --lib aioproc --method forkserver --imports heavy --n 20

prints one JSON line: the seconds of each start+wait (after two unmeasured warm-up starts,
the first of which starts the fork server). The top of this file imports only the standard
library, plus anyio, trio and attrs when ``AIOPROC_BENCH_MAIN_IMPORTS=heavy``: that is the
configuration.

With ``--breakdown`` (the scenario always passes it), the program then starts as many children
again with a target that sleeps 5 ms and stamps when it began and ended (``targets.stamp``),
and splits each start+wait in phases, all on ``CLOCK_MONOTONIC`` (one clock for every
process): until the target began, until ``start()`` returned, from the target's end until the
kernel reported the child gone (the exit observer of ``benchmarks/observer.py``, another
process with a pidfd of the child), and from there until ``wait()`` / ``join()`` returned.
With the fork method, ``os.register_at_fork`` hooks also stamp when the parent called
``fork()`` and when the child first ran. aioproc's program also times a round trip through an
anyio worker thread, the hop its fork and spawn starts take.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.common import Row

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.append(ROOT)

# The targets' module, as a real program's main imports the module its workers live in (so a
# fork server that preloads the main module has it). It imports only the standard library.
from benchmarks import targets as _targets  # noqa: E402, F401

IMPORTS_ENV = "AIOPROC_BENCH_MAIN_IMPORTS"
if os.environ.get(IMPORTS_ENV) == "heavy":
    import anyio  # noqa: F401
    import attrs  # noqa: F401
    import trio  # noqa: F401

METHODS = ("forkserver", "spawn", "fork")
WARMUP = 2
#: How long the breakdown's target sleeps: time for the exit observer to take the child's pid.
BREAKDOWN_SLEEP = 0.005
#: The phases of a start+wait (``--breakdown``); each the median over the children, in ms.
PHASES = (
    "fork_called",  # start of the start+wait -> the parent calls fork() (fork only)
    "child_runs",  # start -> fork() returned in the child (fork only)
    "target_begins",  # start -> the target began
    "start_returns",  # start -> start() returned
    "exit_reported",  # the target's end -> the kernel reports the child gone
    "exit_seen",  # the kernel's report -> wait() / join() returned
    "end_to_wait",  # the target's end -> wait() / join() returned
    "total",  # start -> wait() / join() returned (includes the target's sleep)
)


class _ForkStamps:
    """``os.register_at_fork`` hooks: when the parent called fork(), when the child ran.

    The child writes its stamp into shared anonymous memory, which fork leaves shared. The
    child's stamp is taken after the interpreter's own after-fork hooks (threading's).
    """

    def __init__(self) -> None:
        import mmap

        self.shared = mmap.mmap(-1, 8)
        self.called = 0
        os.register_at_fork(before=self._before, after_in_child=self._child)

    def _before(self) -> None:
        import time

        self.called = time.monotonic_ns()

    def _child(self) -> None:
        import time

        self.shared[:8] = time.monotonic_ns().to_bytes(8, "little")

    def reset(self) -> None:
        self.called = 0
        self.shared[:8] = bytes(8)

    def read(self) -> tuple[int, int]:
        return self.called, int.from_bytes(self.shared[:8], "little")


def _phases(
    t0: int,
    started: int,
    waited: int,
    path: str,
    kernel: int | None,
    fork: _ForkStamps | None,
) -> dict[str, float]:
    """One child's phases, in ms, from the parent's stamps and the target's (in ``path``)."""
    with open(path) as f:
        began, ended = (int(x) for x in f.read().split())
    out = {
        "target_begins": (began - t0) / 1e6,
        "start_returns": (started - t0) / 1e6,
        "end_to_wait": (waited - ended) / 1e6,
        "total": (waited - t0) / 1e6,
    }
    if kernel is not None:
        out["exit_reported"] = (kernel - ended) / 1e6
        out["exit_seen"] = (waited - kernel) / 1e6
    if fork is not None:
        called, child = fork.read()
        if called and child:
            out["fork_called"] = (called - t0) / 1e6
            out["child_runs"] = (child - t0) / 1e6
    return out


def _breakdown_mp(method: str, n: int, tmp: str) -> list[dict[str, float]]:
    import multiprocessing
    import time

    from benchmarks import targets
    from benchmarks.common import Observer

    ctx = multiprocessing.get_context(method)
    fork = _ForkStamps() if method == "fork" else None
    out = []
    with Observer() as observer:
        for i in range(1 + n):
            path = os.path.join(tmp, f"mp-{i}")
            if fork is not None:
                fork.reset()
            t0 = time.monotonic_ns()
            p = ctx.Process(target=targets.stamp, args=(path, BREAKDOWN_SLEEP))
            p.start()
            started = time.monotonic_ns()
            assert p.pid is not None
            observer.watch(p.pid)
            p.join()
            waited = time.monotonic_ns()
            if p.exitcode != 0:
                raise RuntimeError(f"child exited with {p.exitcode}")
            kernel = observer.exited(p.pid)
            p.close()
            if i >= 1:
                out.append(_phases(t0, started, waited, path, kernel, fork))
    return out


def _measure_mp(method: str, n: int) -> list[float]:
    import multiprocessing
    import time

    from benchmarks import targets

    ctx = multiprocessing.get_context(method)
    times = []
    for i in range(WARMUP + n):
        t0 = time.perf_counter()
        p = ctx.Process(target=targets.noop)
        p.start()
        p.join()
        elapsed = time.perf_counter() - t0
        if p.exitcode != 0:
            raise RuntimeError(f"child exited with {p.exitcode}")
        p.close()
        if i >= WARMUP:
            times.append(elapsed)
    return times


def _measure_aioproc(
    method: str, n: int, backend: str, tmp: str | None
) -> tuple[list[float], list[dict[str, float]], list[float]]:
    """Start+wait times; with ``tmp``, the breakdown and worker-thread round trips too."""
    import time
    import warnings

    import anyio
    import anyio.to_thread

    import aioproc
    from benchmarks import targets

    warnings.simplefilter("ignore", RuntimeWarning)  # context="fork" warns, by design

    async def breakdown(tmp: str) -> tuple[list[dict[str, float]], list[float]]:
        from benchmarks.common import Observer

        fork = _ForkStamps() if method == "fork" else None
        phases = []
        with Observer() as observer:
            for i in range(1 + n):
                path = os.path.join(tmp, f"aioproc-{i}")
                if fork is not None:
                    fork.reset()
                t0 = time.monotonic_ns()
                p = aioproc.Process(
                    target=targets.stamp, args=(path, BREAKDOWN_SLEEP), context=method
                )
                await p.start()
                started = time.monotonic_ns()
                assert p.pid is not None
                observer.watch(p.pid)
                code = await p.wait()
                waited = time.monotonic_ns()
                if code != 0:
                    raise RuntimeError(f"child exited with {code}")
                kernel = observer.exited(p.pid)
                if i >= 1:
                    phases.append(_phases(t0, started, waited, path, kernel, fork))
        hops = []
        for i in range(1 + n):
            t0 = time.monotonic_ns()
            await anyio.to_thread.run_sync(int)
            if i >= 1:
                hops.append((time.monotonic_ns() - t0) / 1e6)
        return phases, hops

    async def main() -> tuple[list[float], list[dict[str, float]], list[float]]:
        times = []
        for i in range(WARMUP + n):
            t0 = time.perf_counter()
            p = aioproc.Process(target=targets.noop, context=method)
            await p.start()
            code = await p.wait()
            elapsed = time.perf_counter() - t0
            if code != 0:
                raise RuntimeError(f"child exited with {code}")
            if i >= WARMUP:
                times.append(elapsed)
        if tmp is None:
            return times, [], []
        return (times, *await breakdown(tmp))

    result: tuple[list[float], list[dict[str, float]], list[float]]
    result = anyio.run(main, backend=backend)
    return result


def child_main(argv: list[str] | None = None) -> None:
    import argparse
    import json
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", choices=["aioproc", "mp"], required=True)
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--backend", default="asyncio")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--breakdown", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-seq-") as tmp:
        hops: list[float] = []
        phases: list[dict[str, float]] = []
        if args.lib == "mp":
            times = _measure_mp(args.method, args.n)
            if args.breakdown:
                phases = _breakdown_mp(args.method, args.n, tmp)
        else:
            times, phases, hops = _measure_aioproc(
                args.method, args.n, args.backend, tmp if args.breakdown else None
            )
    print(json.dumps({"times": times, "phases": phases, "thread_hop_ms": hops}))


# --- the scenario (runs in the benchmark runner) -----------------------------------------


def _program(lib: str, method: str, imports: str, backend: str, n: int) -> dict[str, Any]:
    import json
    import statistics
    import subprocess

    env = dict(os.environ)
    env[IMPORTS_ENV] = imports
    cmd = [sys.executable, os.path.abspath(__file__), "--lib", lib, "--method", method]
    cmd += ["--backend", backend, "--n", str(n)]
    cmd.append("--breakdown")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed: {proc.stderr.strip()[-500:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    times = result["times"]
    metrics: dict[str, Any] = {
        "start_wait_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "n": len(times),
    }
    for phase in PHASES:
        values = [sample[phase] for sample in result["phases"] if phase in sample]
        if values:
            metrics[f"{phase}_ms"] = statistics.median(values)
    if result["thread_hop_ms"]:
        metrics["thread_hop_ms"] = statistics.median(result["thread_hop_ms"])
    return metrics


def run(quick: bool) -> list[Row]:
    import functools

    from benchmarks.common import Case, alternate, backend_requires

    n, reps = (2, 1) if quick else (15, 3)
    cases = []
    for method in METHODS:
        for imports in ("none", "heavy"):
            label = f"{method}, " + (
                "anyio+trio+attrs in __main__" if imports == "heavy" else "bare __main__"
            )
            cases.append(
                Case(
                    "multiprocessing",
                    "-",
                    method,
                    functools.partial(_program, "mp", method, imports, "asyncio", n),
                    case=label,
                )
            )
            cases += [
                Case(
                    "aioproc",
                    backend,
                    method,
                    functools.partial(_program, "aioproc", method, imports, backend, n),
                    requires=backend_requires(backend),
                    case=label,
                )
                for backend in ("asyncio", "trio")
            ]
    # One pass over every configuration per repetition: drifts of the machine hit all alike.
    return alternate("seq", "", cases, reps)


if __name__ == "__main__":
    child_main()
