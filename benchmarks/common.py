"""What every scenario shares: rows, the alternating runner, the probes, statistics.

A scenario is a function ``run(quick: bool) -> list[Row]``. It builds a list of :class:`Case`
(one per library and backend), and :func:`alternate` runs one repetition of each case in turn,
``reps`` times, so that slow drifts of the machine (other processes, thermal state) spread over
every library alike. A case whose library is not importable becomes a row with the status
"not installed"; a case that raises becomes a row with the status "error: ...", and the other
cases go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import IO, Any

#: The repository root (benchmarks/..): children import ``benchmarks.targets`` from it.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Every start method this benchmark uses for multiprocessing-based libraries, unless a
#: scenario says otherwise: aioproc's default, so that every library pays the same per-child
#: cost and the comparison is about what happens around the start.
METHOD = "forkserver"

#: distribution name of each library, for its version and for "not installed".
DISTRIBUTIONS = {
    "aioproc": "aioproc",
    "anyio": "anyio",
    "trio": "trio",
    "uvloop": "uvloop",
    "attrs": "attrs",
    "aioprocessing": "aioprocessing",
    "aiomultiprocess": "aiomultiprocess",
    "trio_parallel": "trio-parallel",
    "matplotlib": "matplotlib",
}


@dataclasses.dataclass
class Row:
    """One library (on one backend) in one scenario case, over every repetition."""

    scenario: str
    case: str
    library: str
    backend: str
    method: str
    status: str = "ok"
    note: str = ""
    #: One dict of metrics per repetition; keys starting with "_" hold series (for plots).
    reps: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    loadavg: list[float] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        return cls(**data)


@dataclasses.dataclass
class Case:
    """One library on one backend: ``fn()`` runs one repetition and returns its metrics."""

    library: str
    backend: str
    method: str
    fn: Callable[[], dict[str, Any]]
    requires: tuple[str, ...] = ()
    note: str = ""
    #: The case label of this one's row, when one alternate() call runs several cases.
    case: str | None = None


def missing(modules: tuple[str, ...]) -> str | None:
    """The first of ``modules`` that cannot be imported, or None."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            return name
    return None


def version(module: str) -> str:
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def alternate(scenario: str, case: str, cases: list[Case], reps: int) -> list[Row]:
    """Run every case once per repetition, in turn; return one row per case."""
    rows = [
        Row(scenario, c.case or case, c.library, c.backend, c.method, note=c.note) for c in cases
    ]
    for row, c in zip(rows, cases, strict=True):
        absent = missing(c.requires)
        if absent is not None:
            row.status = f"not installed ({absent})"
    for rep in range(reps):
        for row, c in zip(rows, cases, strict=True):
            if row.status != "ok":
                continue
            log(f"{scenario} {row.case}: {c.library} [{c.backend}] rep {rep + 1}/{reps}")
            before = descendants()
            try:
                metrics = c.fn()
            except Exception as exc:  # noqa: BLE001 - one library failing must not stop the rest
                traceback.print_exc()
                row.status = f"error: {type(exc).__name__}: {exc}"[:300]
                metrics = None
            leaked = reap_leftovers(before)
            if metrics is not None:
                if leaked:
                    metrics["leaked_children"] = leaked
                row.reps.append(metrics)
            row.loadavg.append(os.getloadavg()[0])
    return rows


# --- probes ------------------------------------------------------------------------------


def proc_status(field: str, pid: int | str = "self") -> int:
    """An integer field of /proc/PID/status (``Threads``; ``VmRSS`` in KiB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def threads(pid: int | str = "self") -> int:
    return proc_status("Threads", pid)


def rss_kib() -> int:
    return proc_status("VmRSS")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir itself opened


#: The sampler process: prints "ready", then samples /proc/PID/status every INTERVAL s until
#: its stdin has something (or closes), then prints its samples as JSON [[time, threads], ...].
_SAMPLER = """
import json, select, sys, time
path, interval = f"/proc/{sys.argv[1]}/status", float(sys.argv[2])
samples = []
print("ready", flush=True)
while not select.select([sys.stdin], [], [], interval)[0]:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("Threads:"):
                    samples.append((time.monotonic(), int(line.split()[1])))
                    break
    except OSError:
        break
print(json.dumps(samples), flush=True)
"""


class ThreadSampler:
    """Samples the parent's OS thread count every ``interval`` s, from another process.

    Another process, not a thread of the parent: a sampler thread competes for the GIL, and
    measurably added 1-2 ms to the event-loop lag p99 of the storm it watched. Sampled from
    outside, a loop frozen by a blocking ``start()`` is still seen. ``reset()`` takes the
    baseline (the count at that moment, read directly); ``extra`` is the peak since then minus
    the baseline, and ends the sampling. ``pid``: sample that process instead of this one.
    """

    def __init__(self, interval: float = 0.002, pid: int | None = None) -> None:
        self.interval = interval
        self.pid = os.getpid() if pid is None else pid
        self.baseline = 0
        self._since = 0.0
        self._extra: int | None = None
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> ThreadSampler:
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _SAMPLER, str(self.pid), str(self.interval)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the thread sampler did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()
        if self._proc is not None:
            self._proc.wait()

    def reset(self) -> None:
        """Start counting from now: the current count is the baseline."""
        self.baseline = threads(self.pid)
        self._since = time.monotonic()

    def _stop(self) -> list[tuple[float, int]]:
        proc = self._proc
        if proc is None or proc.returncode is not None or proc.stdin is None:
            return []
        out, _ = proc.communicate("stop\n", timeout=30)
        return [(t, n) for t, n in json.loads(out or "[]")]

    @property
    def extra(self) -> int:
        if self._extra is None:
            try:
                now = [threads(self.pid)]
            except OSError:  # another process, gone by now: its samples say it all
                now = []
            samples = [n for t, n in self._stop() if t >= self._since]
            self._extra = max(0, max([*now, *samples], default=0) - self.baseline)
        return self._extra


OBSERVER = os.path.join(ROOT, "benchmarks", "observer.py")


class Observer:
    """The other process that stamps the kernel's report of each exit (``observer.py``)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        #: pid -> whether the observer watched it from before its exit.
        self.watching: dict[int, bool] = {}

    def __enter__(self) -> Observer:
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", OBSERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        if self._readline() != ["ready"]:
            raise RuntimeError("the exit observer did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            self._proc.wait(timeout=10)
            assert self._proc.stdout is not None
            self._proc.stdout.close()

    def _readline(self) -> list[str]:
        assert self._proc is not None and self._proc.stdout is not None
        stdout: IO[bytes] = self._proc.stdout
        return stdout.readline().decode().split()

    def watch(self, pid: int) -> None:
        """Hand ``pid`` over; return once the observer holds its pidfd (or cannot)."""
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(f"{pid}\n".encode())
        self._proc.stdin.flush()
        answer = self._readline()
        if answer[1:] != [str(pid)]:
            raise RuntimeError(f"the exit observer answered {answer!r} for {pid}")
        self.watching[pid] = answer[0] == "watching"

    def exited(self, pid: int) -> int | None:
        """When the observer saw ``pid`` exit (``monotonic_ns``); None if it came too late."""
        if not self.watching.pop(pid):
            return None
        answer = self._readline()
        if answer[:2] != ["exited", str(pid)]:
            raise RuntimeError(f"the exit observer answered {answer!r} for {pid}")
        return int(answer[2])


def _children_of(pid: int) -> set[int]:
    kids: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.update(int(x) for x in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return kids


def descendants(pid: int | None = None) -> set[int]:
    """Every live descendant of ``pid`` (default: this process)."""
    todo = [os.getpid() if pid is None else pid]
    found: set[int] = set()
    while todo:
        for kid in _children_of(todo.pop()):
            if kid not in found:
                found.add(kid)
                todo.append(kid)
    return found


def helper_pids() -> set[int]:
    """Long-lived helper processes that outlive a case by design (fork server, trackers)."""
    pids: set[int] = set()
    from multiprocessing import forkserver, resource_tracker

    for pid in (
        getattr(forkserver._forkserver, "_forkserver_pid", None),
        getattr(resource_tracker._resource_tracker, "_pid", None),
    ):
        if pid:
            pids.add(pid)
    core = sys.modules.get("aiomultiprocess.core")
    manager = getattr(core, "_manager", None) if core is not None else None
    process = getattr(manager, "_process", None)
    if process is not None and process.pid:
        pids.add(process.pid)
    return pids


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def reap_leftovers(before: set[int], grace: float = 3.0) -> int:
    """Kill whatever a case left running (other than the shared helpers); return how many.

    A library that returns before its children are gone is not wrong per se (a pool keeps
    its workers), but nothing may survive into the next case's measurement.
    """
    deadline = time.monotonic() + grace
    while True:
        helpers = helper_pids()
        left = {p for p in descendants() - before - helpers if not _is_zombie(p)}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(left)


def zombies_of_self() -> int:
    return sum(1 for pid in _children_of(os.getpid()) if _is_zombie(pid))


# --- event loops -------------------------------------------------------------------------

BACKENDS = ("asyncio", "trio", "uvloop")


def run_on(backend: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``anyio.run(fn, *args)`` on ``backend``: "asyncio", "trio" or "uvloop"."""
    import anyio

    if backend == "uvloop":
        import uvloop

        return anyio.run(
            fn, *args, backend="asyncio", backend_options={"loop_factory": uvloop.new_event_loop}
        )
    return anyio.run(fn, *args, backend=backend)


def backend_requires(backend: str) -> tuple[str, ...]:
    return {"asyncio": (), "trio": ("trio",), "uvloop": ("uvloop",)}[backend]


class LagTrace:
    """A 1 ms ticker's record of how late each tick woke: (start offset s, lag s) pairs."""

    PERIOD = 0.001

    def __init__(self) -> None:
        self.origin = time.perf_counter()
        self.ticks: list[tuple[float, float]] = []

    async def run(self) -> None:
        import anyio

        period = self.PERIOD
        while True:
            t0 = time.perf_counter()
            await anyio.sleep(period)
            lag = time.perf_counter() - t0 - period
            self.ticks.append((t0 - self.origin, max(0.0, lag)))

    def window(self, start: float, end: float) -> list[tuple[float, float]]:
        """Ticks that began in [start, end] (perf_counter times), offsets from ``start``."""
        a, b = start - self.origin, end - self.origin
        return [(t - a, lag) for t, lag in self.ticks if a <= t <= b]


def lag_metrics(window: list[tuple[float, float]]) -> dict[str, Any]:
    lags = [lag for _, lag in window]
    return {
        "lag_p50_ms": pct(lags, 50) * 1e3,
        "lag_p99_ms": pct(lags, 99) * 1e3,
        "lag_max_ms": max(lags, default=math.nan) * 1e3,
        "ticks": len(lags),
    }


# --- statistics --------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation between closest ranks); NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: list[float]) -> float:
    return pct([v for v in values if not math.isnan(v)], 50)


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    """``with timer() as t: ...`` then ``t[0]`` is the elapsed time in seconds."""
    out: list[float] = []
    start = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - start)


def warm_forkserver() -> None:
    """Start the shared fork server the way aioproc does (with its preload) before measuring.

    Every multiprocessing-based library of a scenario then shares one warm server, and no
    library's first start pays the ~45 ms of starting it.
    """
    import aioproc
    from benchmarks import targets

    run_on("asyncio", aioproc.run, targets.noop)
