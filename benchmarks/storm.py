"""Scenario 1, the storm: N children of 0.5 s started at once from N tasks.

A 1 ms ticker task measures the event loop's lag all the while (p50, p99, max over ticks);
a sampler process counts the parent's OS threads (peak minus the count just before the storm),
and the parent's CPU time (user + system, all its threads) over the storm is divided by N.
Each child's start latency runs from the moment the storm began (every child is asked for at
once) until the library says the child runs (``start()`` returned), or, for worker pools,
until the target began (it returns its own ``time.monotonic_ns()``): a library that blocks
the loop while it starts makes the later children wait, and that shows.
"""

from __future__ import annotations

import functools
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks import targets
from benchmarks.common import (
    METHOD,
    ROOT,
    Case,
    LagTrace,
    Row,
    ThreadSampler,
    alternate,
    backend_requires,
    lag_metrics,
    pct,
    run_on,
)

#: Worker pools (trio-parallel, anyio.to_process) start at most this many workers at once:
#: their default cap is os.cpu_count() (2 here: a 200-child storm would take 50 s), and a
#: cold pool of 1,000 interpreters does not fit in this machine's time budget.
POOL_CAP = 200

Task = Callable[[int, "Storm"], Awaitable[None]]


class Storm:
    """What the tasks of one storm record."""

    def __init__(self, n: int, seconds: float) -> None:
        self.n = n
        self.seconds = seconds
        self.starts: list[float] = []
        self.bad_exits = 0
        self.begin()

    def begin(self) -> None:
        """The storm begins now: every child is asked for at this moment."""
        self.t0 = time.perf_counter()
        self.t0_ns = time.monotonic_ns()

    def started(self, began_ns: int | None = None) -> None:
        """A child runs: now, or at ``began_ns`` (``time.monotonic_ns()`` in the child)."""
        if began_ns is None:
            self.starts.append(time.perf_counter() - self.t0)
        else:
            self.starts.append((began_ns - self.t0_ns) / 1e9)

    def exited(self, code: int | None) -> None:
        if code != 0:
            self.bad_exits += 1


async def _storm(n: int, seconds: float, make: Callable[[Storm], Any]) -> dict[str, Any]:
    """One storm on the running loop; ``make(storm)`` is an async context manager -> task."""
    import anyio

    storm = Storm(n, seconds)
    trace = LagTrace()
    with ThreadSampler() as sampler:
        async with anyio.create_task_group() as outer:
            outer.start_soon(trace.run)
            await anyio.sleep(0.05)  # the ticker settles
            async with make(storm) as task:
                sampler.reset()
                cpu0 = _cpu_s()
                storm.begin()
                t0 = storm.t0
                async with anyio.create_task_group() as tg:
                    for i in range(n):
                        tg.start_soon(task, i, storm)
                t1 = time.perf_counter()
                cpu = _cpu_s() - cpu0
                extra = sampler.extra
            outer.cancel_scope.cancel()
    window = trace.window(t0, t1)
    metrics = lag_metrics(window)
    metrics.update(
        threads_before=sampler.baseline,
        threads_extra=extra,
        wall_s=t1 - t0,
        cpu_ms_per_child=cpu / n * 1e3,
        start_p50_ms=pct(storm.starts, 50) * 1e3,
        start_max_ms=max(storm.starts, default=float("nan")) * 1e3,
        bad_exits=storm.bad_exits,
        _lag=[(round(t, 5), round(lag * 1e3, 4)) for t, lag in window],
        _starts=[round(s * 1e3, 3) for s in storm.starts],
    )
    return metrics


def _cpu_s() -> float:
    """This process's CPU time so far (user + system, every thread), in seconds."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _simple(task: Task) -> Callable[[Storm], Any]:
    """A library with no per-storm set-up: the context manager just yields ``task``."""
    import contextlib

    @contextlib.asynccontextmanager
    async def make(storm: Storm) -> Any:
        yield task

    return make


# --- the libraries ----------------------------------------------------------------------


async def _aioproc(i: int, storm: Storm) -> None:
    import aioproc

    p = aioproc.Process(target=targets.sleep, args=(storm.seconds,))
    await p.start()
    storm.started()
    storm.exited(await p.wait())


async def _mp_on_loop(i: int, storm: Storm) -> None:
    import anyio

    p = multiprocessing.get_context(METHOD).Process(target=targets.sleep, args=(storm.seconds,))
    p.start()  # blocks the loop: the stdlib call, made where an async program makes it
    storm.started()
    await anyio.wait_readable(p.sentinel)
    p.join()
    storm.exited(p.exitcode)
    p.close()


async def _mp_to_thread(i: int, storm: Storm) -> None:
    import anyio.to_thread

    p = multiprocessing.get_context(METHOD).Process(target=targets.sleep, args=(storm.seconds,))
    await anyio.to_thread.run_sync(p.start)
    storm.started()
    await anyio.to_thread.run_sync(p.join)
    storm.exited(p.exitcode)
    p.close()


async def _aioprocessing(i: int, storm: Storm) -> None:
    import aioprocessing

    p = aioprocessing.AioProcess(
        target=targets.sleep, args=(storm.seconds,), context=multiprocessing.get_context(METHOD)
    )
    p.start()
    storm.started()
    await p.coro_join()
    storm.exited(p.exitcode)


async def _aiomultiprocess(i: int, storm: Storm) -> None:
    import aiomultiprocess

    p = aiomultiprocess.Process(target=targets.asleep, args=(storm.seconds,))
    p.start()
    storm.started()
    await p.join()
    storm.exited(p.exitcode)


def _trio_parallel(storm: Storm) -> Any:
    import contextlib

    import trio
    import trio_parallel

    @contextlib.asynccontextmanager
    async def make(storm: Storm) -> Any:
        limiter = trio.CapacityLimiter(min(storm.n, POOL_CAP))
        async with trio_parallel.open_worker_context(
            worker_type=trio_parallel.WorkerType.FORKSERVER
        ) as ctx:

            async def task(i: int, storm: Storm) -> None:
                began = await ctx.run_sync(targets.sleep_stamp, storm.seconds, limiter=limiter)
                storm.started(began)

            yield task

    return make(storm)


def _to_process(storm: Storm) -> Any:
    import contextlib

    import anyio
    import anyio.to_process

    @contextlib.asynccontextmanager
    async def make(storm: Storm) -> Any:
        limiter = anyio.CapacityLimiter(min(storm.n, POOL_CAP))

        async def task(i: int, storm: Storm) -> None:
            began = await anyio.to_process.run_sync(
                targets.sleep_stamp, storm.seconds, limiter=limiter
            )
            storm.started(began)

        yield task

    return make(storm)


async def _idle(seconds: float) -> dict[str, Any]:
    """The ticker alone, no children: the instrument's own floor on this backend."""
    import anyio

    trace = LagTrace()
    with ThreadSampler() as sampler:
        async with anyio.create_task_group() as tg:
            tg.start_soon(trace.run)
            await anyio.sleep(0.05)
            sampler.reset()
            t0 = time.perf_counter()
            await anyio.sleep(seconds)
            t1 = time.perf_counter()
            tg.cancel_scope.cancel()
    metrics = lag_metrics(trace.window(t0, t1))
    metrics.update(threads_extra=sampler.extra, wall_s=t1 - t0)
    return metrics


#: The writer of the woken-idle case: writes one byte to fd argv[1] at random moments, on
#: average every WAKE_INTERVAL s, for argv[2] s.
_WAKER = """
import os, random, sys, time
fd, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    time.sleep(random.uniform(0, 2 * float(sys.argv[3])))
    os.write(fd, b"x")
"""
#: About as often as aioproc's loop wakes in a storm of 200: for each child, READY and its
#: exit (its last frame, its exit status), over about a second.
WAKE_INTERVAL = 0.0015


async def _idle_woken(seconds: float) -> dict[str, Any]:
    """The ticker, in a loop that unrelated I/O also wakes: no children, no work.

    asyncio, trio and libuv sleep in epoll with a timeout in whole milliseconds, rounded up:
    a wake-up just before a timer is due makes the next sleep overshoot it by up to 1 ms. Any
    program whose loop does I/O pays it; this is its size, without CPU contention.
    """
    import os
    import sys

    import anyio

    trace = LagTrace()
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)

    async def reader() -> None:
        while True:
            await anyio.wait_readable(read_fd)
            try:
                os.read(read_fd, 4096)
            except BlockingIOError:
                pass

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(trace.run)
            tg.start_soon(reader)
            await anyio.sleep(0.05)
            cmd = [sys.executable, "-I", "-S", "-c", _WAKER]
            cmd += [str(write_fd), str(seconds), str(WAKE_INTERVAL)]
            async with await anyio.open_process(cmd, pass_fds=[write_fd]) as waker:
                t0 = time.perf_counter()
                await waker.wait()
                t1 = time.perf_counter()
            tg.cancel_scope.cancel()
    finally:
        os.close(read_fd)
        os.close(write_fd)
    metrics = lag_metrics(trace.window(t0, t1))
    metrics.update(threads_extra=0, wall_s=t1 - t0)
    return metrics


async def _control(n: int, seconds: float) -> dict[str, Any]:
    """The ticker alone, while *another* process runs the same aioproc storm.

    What the children's start-up (and the rest of the machine) costs a loop that does nothing
    else: CPU contention on a small machine, which no library in this process can avoid. The
    other process runs exactly what the aioproc [asyncio] rows run (:func:`_aioproc` from N
    tasks, on a warm fork server of its own); its OS threads are sampled the same way (the
    sampler's own CPU use is part of both), and it reports its CPU time per child.
    """
    import sys

    import anyio

    trace = LagTrace()
    marks: dict[str, float] = {}
    words: dict[str, list[str]] = {}
    extra = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(trace.run)
        await anyio.sleep(0.05)
        cmd = [sys.executable, "-m", "benchmarks.storm", "--external", str(n), str(seconds)]
        async with await anyio.open_process(cmd, cwd=ROOT, stderr=None) as proc:
            assert proc.stdout is not None
            with ThreadSampler(pid=proc.pid) as sampler:
                buffer = b""
                async for chunk in proc.stdout:
                    buffer += chunk
                    *lines, rest = buffer.split(b"\n")
                    buffer = rest
                    for line in lines:
                        word, *values = line.decode().split()
                        if word == "start":
                            sampler.reset()
                        elif word == "end":
                            extra = sampler.extra
                        marks[word] = time.perf_counter()
                        words[word] = values
            code = await proc.wait()
        tg.cancel_scope.cancel()
    if code != 0 or not {"start", "end", "cpu"} <= set(marks):
        raise RuntimeError(f"the external storm failed (exit code {code})")
    window = trace.window(marks["start"], marks["end"])
    metrics = lag_metrics(window)
    metrics.update(
        threads_before=sampler.baseline,
        threads_extra=extra,
        wall_s=marks["end"] - marks["start"],
        cpu_ms_per_child=float(words["cpu"][0]) / n * 1e3,
        _lag=[(round(t, 5), round(lag * 1e3, 4)) for t, lag in window],
    )
    return metrics


def _external(n: int, seconds: float) -> None:
    """The other process of :func:`_control`: an aioproc storm, no ticker."""
    import sys

    import anyio

    import aioproc

    async def main() -> None:
        await aioproc.run(targets.noop)  # a warm fork server, as in this process
        print("start", flush=True)
        storm = Storm(n, seconds)
        cpu0 = _cpu_s()
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(_aioproc, i, storm)
        cpu = _cpu_s() - cpu0
        print("end", flush=True)
        print(f"cpu {cpu}", flush=True)
        if storm.bad_exits:
            sys.exit(1)

    anyio.run(main)


def cases(n: int, seconds: float) -> list[Case]:
    def storm(backend: str, make: Callable[[Storm], Any]) -> Callable[[], dict[str, Any]]:
        return functools.partial(run_on, backend, _storm, n, seconds, make)

    pool_note = (
        f"worker pool: limiter raised to {min(n, POOL_CAP)} (default cap: os.cpu_count()), "
        "cold workers; start = until the target began"
    )
    if n > POOL_CAP:
        pool_note += f"; at most {POOL_CAP} run at once, later jobs reuse warm workers"
    out = [
        Case(
            "aioproc",
            backend,
            METHOD,
            storm(backend, _simple(_aioproc)),
            requires=("aioproc", *backend_requires(backend)),
        )
        for backend in ("asyncio", "trio", "uvloop")
    ]
    out += [
        Case(
            "control: the same aioproc storm, run by another process",
            "asyncio",
            METHOD,
            functools.partial(run_on, "asyncio", _control, n, seconds),
            requires=("aioproc",),
            note="this loop only ticks: the lag that CPU contention alone causes",
        ),
        Case(
            "multiprocessing: start() on the loop",
            "asyncio",
            METHOD,
            storm("asyncio", _simple(_mp_on_loop)),
            note="exit awaited with wait_readable(sentinel)",
        ),
        Case(
            "multiprocessing: start()/join() in anyio.to_thread",
            "asyncio",
            METHOD,
            storm("asyncio", _simple(_mp_to_thread)),
            note="the naive facade; anyio's default 40-thread limiter",
        ),
        Case(
            "aioprocessing: AioProcess + coro_join()",
            "asyncio",
            METHOD,
            storm("asyncio", _simple(_aioprocessing)),
            requires=("aioprocessing",),
            note="start() is synchronous, on the loop",
        ),
        Case(
            "aiomultiprocess: Process + join()",
            "asyncio",
            METHOD,
            storm("asyncio", _simple(_aiomultiprocess)),
            requires=("aiomultiprocess",),
            note="start() is synchronous, on the loop; join() polls every 5 ms",
        ),
        Case(
            "trio-parallel: run_sync()",
            "trio",
            f"{METHOD} workers",
            storm("trio", _trio_parallel),
            requires=("trio", "trio_parallel"),
            note=pool_note,
        ),
        Case(
            "anyio.to_process.run_sync()",
            "asyncio",
            "subprocess workers",
            storm("asyncio", _to_process),
            note=pool_note,
        ),
    ]
    return out


#: The fd-table probe (a fresh interpreter): opens pipes until fd 4,200, timing each
#: ``os.pipe()``, with or without a second thread alive; prints the calls that took over 1 ms
#: (their read fd and duration) and the slowest, as JSON.
_FD_PROBE = """
import json, os, sys, threading, time
gate = threading.Event()
if sys.argv[1] == "thread":
    threading.Thread(target=gate.wait).start()
slow, worst, fds = [], 0.0, []
while not fds or fds[-1] < 4200:
    t0 = time.perf_counter()
    fds += os.pipe()
    took = (time.perf_counter() - t0) * 1e3
    worst = max(worst, took)
    if took > 1:
        slow.append((fds[-2], round(took, 3)))
gate.set()
print(json.dumps({"slow": slow, "max_ms": worst}))
"""


def _fd_probe(thread: bool) -> dict[str, Any]:
    import json
    import subprocess
    import sys

    mode = "thread" if thread else "alone"
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _FD_PROBE, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    result = json.loads(out)
    return {
        "pipe_max_ms": result["max_ms"],
        "slow_calls": len(result["slow"]),
        "_slow": result["slow"],
    }


def fd_table_cases() -> list[Case]:
    """Why the fd table must grow off the loop: the kernel's cost of growing it."""
    return [
        Case(
            f"os.pipe() up to fd 4,200, {label}",
            "-",
            "-",
            functools.partial(_fd_probe, thread),
            note=note,
        )
        for thread, label, note in (
            (False, "single-threaded", "no other thread shares the fd table"),
            (True, "a second thread alive", "expand_fdtable() waits for an RCU grace period"),
        )
    ]


def idle_cases(seconds: float) -> list[Case]:
    woken = (
        f"the loop is also woken by unrelated I/O (a pipe written at random moments, "
        f"{1 / WAKE_INTERVAL:.0f} times a second, as often as aioproc's loop wakes in a storm "
        "of 200): the cost of millisecond epoll timeouts, with no CPU contention and no work"
    )
    kinds = [
        (
            "idle ticker (no children)",
            _idle,
            "the instrument's floor: timer granularity of the loop",
        ),
        ("idle ticker, loop woken by I/O (no children)", _idle_woken, woken),
    ]
    return [
        Case(
            label,
            backend,
            "-",
            functools.partial(run_on, backend, fn, seconds),
            requires=backend_requires(backend),
            note=note,
        )
        for label, fn, note in kinds
        for backend in ("asyncio", "trio", "uvloop")
    ]


def run(quick: bool) -> list[Row]:
    _configure_aiomultiprocess()
    if quick:
        sizes = [(6, 1)]
        seconds, idle = 0.1, 0.2
    else:
        sizes = [(200, 3), (1000, 2)]
        seconds, idle = 0.5, 1.0
    rows = alternate("storm", "idle", idle_cases(idle), 1 if quick else 2)
    rows += alternate("storm", "probe: fd-table growth", fd_table_cases(), 1 if quick else 2)
    for n, reps in sizes:
        rows += alternate("storm", f"N={n}", cases(n, seconds), reps)
    return rows


def _configure_aiomultiprocess() -> None:
    try:
        import aiomultiprocess
    except ImportError:
        return
    aiomultiprocess.set_start_method(METHOD)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--external"]:
        _external(int(sys.argv[2]), float(sys.argv[3]))
