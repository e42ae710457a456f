"""Scenario 3, exit detection: from a child's exit to the parent knowing it.

The child sleeps a little (so that the parent is already waiting), writes
``time.monotonic_ns()`` to a file and leaves with ``os._exit(0)``; the parent takes
``time.monotonic_ns()`` as soon as the library reports the exit: ``await p.wait()`` returns,
the group's exit event arrives, ``join()`` returns. ``CLOCK_MONOTONIC`` is one clock for every
process of the machine. Children are started one after another, each on a warm fork server.

Each exit is measured from two zeros:

- *from ``os._exit``*: the child's own stamp. This includes the kernel's teardown of the
  exiting process (unmapping its memory, closing its fds: ~1.5 ms here), which every library
  pays and none can shorten.
- *from the kernel's report*: the moment a pidfd of the child becomes readable, as seen by an
  observer process (``benchmarks/observer.py``, one per repetition) that is neither the parent
  nor the library and does nothing but wait in ``poll()``. The parent hands it each child's pid
  right after the start; it answers once its pidfd is open, long before the child exits. This is
  what the library itself adds: waking up, reaping, delivering.
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
from benchmarks.common import (
    METHOD,
    Case,
    Observer,
    Row,
    alternate,
    backend_requires,
    pct,
    run_on,
)

#: How long each child sleeps before it exits.
DELAY = 0.02

Watch = Callable[[int], None]
Sample = Callable[[str, Watch], Awaitable[int]]


async def _aioproc_wait(path: str, watch: Watch) -> int:
    import aioproc

    p = aioproc.Process(target=targets.exit_after, args=(DELAY, path))
    await p.start()
    assert p.pid is not None
    watch(p.pid)
    await p.wait()
    return time.monotonic_ns()


async def _aioproc_event(path: str, watch: Watch) -> int:
    import aioproc

    async with aioproc.open_group() as group:
        p = await group.spawn(targets.exit_after, DELAY, path)
        assert p.pid is not None
        watch(p.pid)
        async for _event in group.events():
            return time.monotonic_ns()
    raise AssertionError("no exit event")


async def _mp_sentinel(path: str, watch: Watch) -> int:
    import anyio

    p = multiprocessing.get_context(METHOD).Process(target=targets.exit_after, args=(DELAY, path))
    p.start()
    assert p.pid is not None
    watch(p.pid)
    await anyio.wait_readable(p.sentinel)
    seen = time.monotonic_ns()
    p.join()
    p.close()
    return seen


async def _mp_pidfd(path: str, watch: Watch) -> int:
    import anyio

    p = multiprocessing.get_context(METHOD).Process(target=targets.exit_after, args=(DELAY, path))
    p.start()
    assert p.pid is not None
    pidfd = os.pidfd_open(p.pid)
    watch(p.pid)
    try:
        await anyio.wait_readable(pidfd)
        seen = time.monotonic_ns()
    finally:
        os.close(pidfd)
    p.join()
    p.close()
    return seen


async def _mp_to_thread(path: str, watch: Watch) -> int:
    import anyio.to_thread

    p = multiprocessing.get_context(METHOD).Process(target=targets.exit_after, args=(DELAY, path))
    p.start()
    assert p.pid is not None
    watch(p.pid)
    await anyio.to_thread.run_sync(p.join)
    seen = time.monotonic_ns()
    p.close()
    return seen


async def _aioprocessing(path: str, watch: Watch) -> int:
    import aioprocessing

    p = aioprocessing.AioProcess(
        target=targets.exit_after, args=(DELAY, path), context=multiprocessing.get_context(METHOD)
    )
    p.start()
    watch(p.pid)
    await p.coro_join()
    return time.monotonic_ns()


async def _aiomultiprocess(path: str, watch: Watch) -> int:
    import aiomultiprocess

    p = aiomultiprocess.Process(target=targets.aexit_after, args=(DELAY, path))
    p.start()
    assert p.pid is not None
    watch(p.pid)
    await p.join()
    return time.monotonic_ns()


async def _samples(sample: Sample, m: int, observer: Observer) -> dict[str, list[float]]:
    """``m`` children one after another; per child, the detection latency from each zero, ms."""
    out: dict[str, list[float]] = {"from_exit": [], "from_kernel": [], "teardown": []}
    late = 0
    pids: list[int] = []

    def watch(pid: int) -> None:
        pids.append(pid)
        observer.watch(pid)

    with tempfile.TemporaryDirectory(prefix="bench-exit-") as tmp:
        for i in range(m):
            path = os.path.join(tmp, str(i))
            pids.clear()
            seen = await sample(path, watch)
            # After the measurement: a few bytes from a file and a line from a pipe.
            with open(path) as f:  # noqa: ASYNC230
                exited = int(f.read())
            kernel = observer.exited(pids[0])
            out["from_exit"].append((seen - exited) / 1e6)
            if kernel is None:
                late += 1
            else:
                out["from_kernel"].append((seen - kernel) / 1e6)
                out["teardown"].append((kernel - exited) / 1e6)
    out["late"] = [late]
    return out


def _rep(backend: str, sample: Sample, m: int) -> dict[str, Any]:
    with Observer() as observer:
        series: dict[str, list[float]] = run_on(backend, _samples, sample, m, observer)
    latencies, kernel = series["from_exit"], series["from_kernel"]
    return {
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "max_ms": max(latencies),
        "kernel_p50_ms": pct(kernel, 50),
        "kernel_p99_ms": pct(kernel, 99),
        "kernel_max_ms": max(kernel, default=float("nan")),
        "teardown_p50_ms": pct(series["teardown"], 50),
        "n": len(latencies),
        "observer_late": int(series["late"][0]),
        "_latencies": [round(x, 4) for x in latencies],
        "_from_kernel": [round(x, 4) for x in kernel],
        "_teardown": [round(x, 4) for x in series["teardown"]],
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
    m, reps = (3, 1) if quick else (100, 3)
    return alternate("exit", f"{m} children per repetition", cases(m), reps)
