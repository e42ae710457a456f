"""Scenario 3, exit detection: from a child's exit to the parent knowing it.

The child sleeps a little (so that the parent is already waiting), writes
``time.monotonic_ns()`` to a file and leaves with ``os._exit(0)``; the parent takes
``time.monotonic_ns()`` as soon as the library reports the exit: ``await p.wait()`` returns,
the group's exit event arrives, ``join()`` returns. ``CLOCK_MONOTONIC`` is one clock for every
process of the machine. Children are started one after another, each on a warm fork server;
the latency includes the kernel's teardown of the exiting process, which every library pays.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks import targets
from benchmarks.common import METHOD, Case, Row, alternate, backend_requires, pct, run_on

#: How long each child sleeps before it exits.
DELAY = 0.02

Sample = Callable[[str], Awaitable[int]]


async def _aioproc_wait(path: str) -> int:
    import aioproc

    p = aioproc.Process(target=targets.exit_after, args=(DELAY, path))
    await p.start()
    await p.wait()
    return time.monotonic_ns()


async def _aioproc_event(path: str) -> int:
    import aioproc

    async with aioproc.open_group() as group:
        await group.spawn(targets.exit_after, DELAY, path)
        async for _event in group.events():
            return time.monotonic_ns()
    raise AssertionError("no exit event")


async def _mp_sentinel(path: str) -> int:
    import anyio

    p = multiprocessing.get_context(METHOD).Process(target=targets.exit_after, args=(DELAY, path))
    p.start()
    await anyio.wait_readable(p.sentinel)
    seen = time.monotonic_ns()
    p.join()
    p.close()
    return seen


async def _mp_pidfd(path: str) -> int:
    import anyio

    p = multiprocessing.get_context(METHOD).Process(target=targets.exit_after, args=(DELAY, path))
    p.start()
    assert p.pid is not None
    pidfd = os.pidfd_open(p.pid)
    try:
        await anyio.wait_readable(pidfd)
        seen = time.monotonic_ns()
    finally:
        os.close(pidfd)
    p.join()
    p.close()
    return seen


async def _mp_to_thread(path: str) -> int:
    import anyio.to_thread

    p = multiprocessing.get_context(METHOD).Process(target=targets.exit_after, args=(DELAY, path))
    p.start()
    await anyio.to_thread.run_sync(p.join)
    seen = time.monotonic_ns()
    p.close()
    return seen


async def _aioprocessing(path: str) -> int:
    import aioprocessing

    p = aioprocessing.AioProcess(
        target=targets.exit_after, args=(DELAY, path), context=multiprocessing.get_context(METHOD)
    )
    p.start()
    await p.coro_join()
    return time.monotonic_ns()


async def _aiomultiprocess(path: str) -> int:
    import aiomultiprocess

    p = aiomultiprocess.Process(target=targets.aexit_after, args=(DELAY, path))
    p.start()
    await p.join()
    return time.monotonic_ns()


async def _samples(sample: Sample, m: int) -> list[float]:
    """``m`` children one after another; the detection latency of each, in ms."""
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-exit-") as tmp:
        for i in range(m):
            path = os.path.join(tmp, str(i))
            seen = await sample(path)
            with open(path) as f:  # noqa: ASYNC230 - after the measurement, a few bytes
                exited = int(f.read())
            out.append((seen - exited) / 1e6)
    return out


def _rep(backend: str, sample: Sample, m: int) -> dict[str, Any]:
    latencies: list[float] = run_on(backend, _samples, sample, m)
    return {
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "max_ms": max(latencies),
        "n": len(latencies),
        "_latencies": [round(x, 4) for x in latencies],
    }


def cases(m: int) -> list[Case]:
    def case(
        library: str, backend: str, sample: Sample, requires: tuple[str, ...] = (), note: str = ""
    ) -> Case:
        return Case(
            library,
            backend,
            METHOD,
            functools.partial(_rep, backend, sample, m),
            requires=(*backend_requires(backend), *requires),
            note=note,
        )

    out = [case("aioproc: await p.wait()", b, _aioproc_wait) for b in ("asyncio", "trio", "uvloop")]
    out += [case("aioproc: group exit event", b, _aioproc_event) for b in ("asyncio", "trio")]
    out += [
        case(
            "aiomultiprocess: await p.join()",
            "asyncio",
            _aiomultiprocess,
            ("aiomultiprocess",),
            "polls exitcode every 5 ms",
        ),
        case(
            "aioprocessing: await p.coro_join()",
            "asyncio",
            _aioprocessing,
            ("aioprocessing",),
            "join() in a thread",
        ),
        case(
            "multiprocessing: join() in anyio.to_thread",
            "asyncio",
            _mp_to_thread,
            note="the naive facade",
        ),
        case(
            "multiprocessing: wait_readable(sentinel)",
            "asyncio",
            _mp_sentinel,
            note="reference: the fork server's status pipe, no library",
        ),
        case(
            "multiprocessing: wait_readable(pidfd_open(pid))",
            "asyncio",
            _mp_pidfd,
            note="reference: the kernel's own exit notification, no exit status",
        ),
    ]
    return out


def run(quick: bool) -> list[Row]:
    try:
        import aiomultiprocess
    except ImportError:
        pass
    else:
        aiomultiprocess.set_start_method(METHOD)
    m, reps = (3, 1) if quick else (40, 3)
    return alternate("exit", f"{m} children per repetition", cases(m), reps)
