"""Scenario 4: cancel a group of 100 running children; time until all are reaped.

Each child marks a file when its target runs and then sleeps for a minute with the default
SIGTERM disposition (it honours SIGTERM). Once every child has marked its file, the parent
cancels the enclosing scope and measures until the scope has exited. Right then it checks that
no child is left: none alive, no zombie.

aioproc stops children gracefully (SIGTERM, then SIGKILL after ``grace``); trio-parallel
(``kill_on_cancel=True``) and ``anyio.to_process`` (``cancellable=True``) SIGKILL their workers.
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
    Row,
    alternate,
    backend_requires,
    descendants,
    helper_pids,
    run_on,
    zombies_of_self,
)

#: How long each child would sleep if nobody cancelled it.
LONG = 60.0

Body = Callable[[int, str, Callable[[], None]], Awaitable[None]]


async def _wait_marks(directory: str, n: int) -> None:
    import anyio

    # Polling on purpose: what is watched (other processes' files) has no event to await,
    # and the same poll serves every library alike.
    while len(os.listdir(directory)) < n:  # noqa: ASYNC110
        await anyio.sleep(0.005)


async def _measure(n: int, body: Body) -> dict[str, Any]:
    """Run ``body`` in a cancel scope; it calls ``cancel()`` once all ``n`` children run."""
    import anyio

    before = descendants()
    stamps: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cancel-") as tmp:
        t_begin = time.perf_counter()
        with anyio.CancelScope() as scope:

            def cancel() -> None:
                stamps["cancel"] = time.perf_counter()
                scope.cancel()

            await body(n, tmp, cancel)
        t_end = time.perf_counter()
        left = descendants() - before
        zombies = zombies_of_self()
    if "cancel" not in stamps:
        raise RuntimeError("the body returned without cancelling")
    alive = len(left - helper_pids())
    return {
        "cancel_ms": (t_end - stamps["cancel"]) * 1e3,
        "start_all_s": stamps["cancel"] - t_begin,
        "left_alive": alive,
        "left_zombies": zombies,
    }


async def _aioproc(n: int, tmp: str, cancel: Callable[[], None]) -> None:
    import anyio

    import aioproc

    async with aioproc.open_group() as group:
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(functools.partial(group.spawn, targets.mark_and_sleep, tmp, i, LONG))
        await _wait_marks(tmp, n)
        cancel()
        await anyio.sleep_forever()


async def _trio_parallel(n: int, tmp: str, cancel: Callable[[], None]) -> None:
    import trio
    import trio_parallel

    limiter = trio.CapacityLimiter(n)
    async with (
        trio_parallel.open_worker_context(worker_type=trio_parallel.WorkerType.FORKSERVER) as ctx,
        trio.open_nursery() as nursery,
    ):
        for i in range(n):
            nursery.start_soon(
                functools.partial(
                    ctx.run_sync,
                    targets.mark_and_sleep,
                    tmp,
                    i,
                    LONG,
                    kill_on_cancel=True,
                    limiter=limiter,
                )
            )
        await _wait_marks(tmp, n)
        cancel()
        await trio.sleep_forever()


async def _to_process(n: int, tmp: str, cancel: Callable[[], None]) -> None:
    import anyio
    import anyio.to_process

    limiter = anyio.CapacityLimiter(n)
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(
                functools.partial(
                    anyio.to_process.run_sync,
                    targets.mark_and_sleep,
                    tmp,
                    i,
                    LONG,
                    cancellable=True,
                    limiter=limiter,
                )
            )
        await _wait_marks(tmp, n)
        cancel()
        await anyio.sleep_forever()


async def _mp_terminate(n: int, tmp: str, cancel: Callable[[], None]) -> None:
    """Reference: plain multiprocessing, terminate() all then join() all, in a thread."""
    import anyio
    import anyio.to_thread

    ctx = multiprocessing.get_context(METHOD)
    procs = [ctx.Process(target=targets.mark_and_sleep, args=(tmp, i, LONG)) for i in range(n)]
    for p in procs:
        p.start()

    def stop_all() -> None:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
            p.close()

    try:
        await _wait_marks(tmp, n)
        cancel()
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(stop_all)


def cases(n: int) -> list[Case]:
    def case(
        library: str,
        backend: str,
        method: str,
        body: Body,
        requires: tuple[str, ...] = (),
        note: str = "",
    ) -> Case:
        return Case(
            library,
            backend,
            method,
            functools.partial(run_on, backend, _measure, n, body),
            requires=(*backend_requires(backend), *requires),
            note=note,
        )

    out = [
        case("aioproc: cancel open_group()", b, METHOD, _aioproc, note="SIGTERM, grace 5 s")
        for b in ("asyncio", "trio", "uvloop")
    ]
    out += [
        case(
            "trio-parallel: run_sync(kill_on_cancel=True)",
            "trio",
            f"{METHOD} workers",
            _trio_parallel,
            ("trio_parallel",),
            "SIGKILL; cold workers",
        ),
        case(
            "anyio.to_process.run_sync(cancellable=True)",
            "asyncio",
            "subprocess workers",
            _to_process,
            note="SIGKILL; cold workers",
        ),
        case(
            "multiprocessing: terminate() + join() all",
            "asyncio",
            METHOD,
            _mp_terminate,
            note="reference, in one thread",
        ),
    ]
    return out


def run(quick: bool) -> list[Row]:
    n, reps = (4, 1) if quick else (100, 3)
    return alternate("cancel", f"{n} children", cases(n), reps)
