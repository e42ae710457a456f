"""Scenario 5, scale: 2,000 children alive at once.

Every child blocks on a gate (a pipe whose only write end the parent holds). The parent
starts them all, measures its own RSS (``VmRSS``), open fds (``/proc/self/fd``) and OS threads
with every child alive, then closes the gate: every child reads EOF and returns, and the parent
waits until all are reaped. Per child = (at peak - before the first start) / N.

RSS is the high-water mark of one process's allocator, so each measurement runs in a fresh
program of its own -- this file, as ``__main__``::

    python benchmarks/scale.py --lib aioproc --backend asyncio --n 2000

which prints one JSON line of metrics.
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

METHOD = "forkserver"


def _snapshot() -> tuple[int, int]:
    import gc

    from benchmarks.common import fd_count, rss_kib

    gc.collect()
    return rss_kib(), fd_count()


def _result(
    n: int, before: tuple[int, int], peak: tuple[int, int], times: list[float], threads: int
) -> dict[str, Any]:
    t0, t_started, t_released, t_reaped = times
    return {
        "start_all_s": t_started - t0,
        "reap_all_s": t_reaped - t_released,
        "rss_per_child_kib": (peak[0] - before[0]) / n,
        "fds_per_child": (peak[1] - before[1]) / n,
        "threads_extra": threads,
        "rss_before_mib": before[0] / 1024,
        "rss_peak_mib": peak[0] / 1024,
    }


def _aioproc(n: int, backend: str) -> dict[str, Any]:
    import functools
    import multiprocessing
    import time

    import anyio

    import aioproc
    from benchmarks import targets
    from benchmarks.common import ThreadSampler, run_on

    async def main() -> dict[str, Any]:
        gate_r, gate_w = multiprocessing.get_context(METHOD).Pipe(duplex=False)
        await aioproc.run(targets.noop)  # fork server, start threads, caches: all warm
        with ThreadSampler() as sampler:
            before = _snapshot()
            sampler.reset()
            t0 = time.perf_counter()
            async with aioproc.open_group() as group:
                async with anyio.create_task_group() as tg:
                    for _ in range(n):
                        tg.start_soon(functools.partial(group.spawn, targets.wait_gate, gate_r))
                t_started = time.perf_counter()
                peak = _snapshot()
                threads = sampler.extra
                gate_r.close()
                gate_w.close()
                t_released = time.perf_counter()
            t_reaped = time.perf_counter()
        if len(group.processes) != n or any(p.exitcode != 0 for p in group.processes):
            raise RuntimeError("not every child ran and exited 0")
        return _result(n, before, peak, [t0, t_started, t_released, t_reaped], threads)

    result: dict[str, Any] = run_on(backend, main)
    return result


def _mp(n: int) -> dict[str, Any]:
    import multiprocessing
    import time

    from benchmarks import targets
    from benchmarks.common import ThreadSampler

    ctx = multiprocessing.get_context(METHOD)
    gate_r, gate_w = ctx.Pipe(duplex=False)
    warm = ctx.Process(target=targets.noop)
    warm.start()
    warm.join()
    warm.close()
    with ThreadSampler() as sampler:
        before = _snapshot()
        sampler.reset()
        t0 = time.perf_counter()
        procs = [ctx.Process(target=targets.wait_gate, args=(gate_r,)) for _ in range(n)]
        for p in procs:
            p.start()
        t_started = time.perf_counter()
        peak = _snapshot()
        threads = sampler.extra
        gate_r.close()
        gate_w.close()
        t_released = time.perf_counter()
        for p in procs:
            p.join()
        t_reaped = time.perf_counter()
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError("not every child exited 0")
    for p in procs:
        p.close()
    return _result(n, before, peak, [t0, t_started, t_released, t_reaped], threads)


def child_main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", choices=["aioproc", "mp"], required=True)
    parser.add_argument("--backend", default="asyncio")
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args(argv)
    result = _mp(args.n) if args.lib == "mp" else _aioproc(args.n, args.backend)
    print(json.dumps(result))


# --- the scenario (runs in the benchmark runner) -----------------------------------------


def _program(lib: str, backend: str, n: int) -> dict[str, Any]:
    import json
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), "--lib", lib]
    cmd += ["--backend", backend, "--n", str(n)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed: {proc.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run(quick: bool) -> list[Row]:
    import functools

    from benchmarks.common import Case, alternate, backend_requires

    n, reps = (10, 1) if quick else (2000, 2)
    cases = [
        Case(
            "aioproc: open_group() + spawn() from N tasks",
            backend,
            METHOD,
            functools.partial(_program, "aioproc", backend, n),
            requires=backend_requires(backend),
        )
        for backend in ("asyncio", "trio")
    ]
    cases.append(
        Case(
            "multiprocessing: start() all, join() all",
            "-",
            METHOD,
            functools.partial(_program, "mp", "-", n),
            note="synchronous, no event loop",
        )
    )
    return alternate("scale", f"N={n}", cases, reps)


if __name__ == "__main__":
    child_main()
