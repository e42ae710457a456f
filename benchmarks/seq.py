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
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.common import Row

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.append(ROOT)

IMPORTS_ENV = "AIOPROC_BENCH_MAIN_IMPORTS"
if os.environ.get(IMPORTS_ENV) == "heavy":
    import anyio  # noqa: F401
    import attrs  # noqa: F401
    import trio  # noqa: F401

METHODS = ("forkserver", "spawn", "fork")
WARMUP = 2


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


def _measure_aioproc(method: str, n: int, backend: str) -> list[float]:
    import time
    import warnings

    import anyio

    import aioproc
    from benchmarks import targets

    warnings.simplefilter("ignore", RuntimeWarning)  # context="fork" warns, by design

    async def main() -> list[float]:
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
        return times

    result: list[float] = anyio.run(main, backend=backend)
    return result


def child_main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", choices=["aioproc", "mp"], required=True)
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--backend", default="asyncio")
    parser.add_argument("--n", type=int, default=10)
    args = parser.parse_args(argv)
    if args.lib == "mp":
        times = _measure_mp(args.method, args.n)
    else:
        times = _measure_aioproc(args.method, args.n, args.backend)
    print(json.dumps(times))


# --- the scenario (runs in the benchmark runner) -----------------------------------------


def _program(lib: str, method: str, imports: str, backend: str, n: int) -> dict[str, float]:
    import json
    import statistics
    import subprocess

    env = dict(os.environ)
    env[IMPORTS_ENV] = imports
    cmd = [sys.executable, os.path.abspath(__file__), "--lib", lib, "--method", method]
    cmd += ["--backend", backend, "--n", str(n)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed: {proc.stderr.strip()[-500:]}")
    times = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "start_wait_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "n": len(times),
    }


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
