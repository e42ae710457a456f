"""Turn a run's raw results into docs/benchmarks.md and its PNG plots.

The raw results (``benchmarks/last-run.json`` after a run) are a dict: the environment
(:func:`environment`) plus ``scenarios``, one entry per scenario with its rows
(:class:`benchmarks.common.Row` as JSON). ``python benchmarks/run.py --render RAW`` re-renders
the report without measuring again.
"""

from __future__ import annotations

import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from benchmarks.common import Row, median, pct, version

#: The libraries whose versions the report lists.
LIBRARIES = (
    "aioproc",
    "anyio",
    "trio",
    "uvloop",
    "attrs",
    "aioprocessing",
    "aiomultiprocess",
    "trio_parallel",
    "matplotlib",
)

#: Typography of the tables (escaped: ruff rightly flags look-alike characters in source).
DASH = "\u2013"
TIMES = "\u00d7"
MINUS = "\u2212"

LAG_PNG = "benchmarks-storm-lag.png"
START_PNG = "benchmarks-start-latency.png"

TITLES = {
    "storm": "1. Storm: N children of 0.5 s started at once from N tasks",
    "seq": "2. Sequential start+wait of a trivial target",
    "exit": "3. Exit detection: child exits → the parent knows",
    "cancel": "4. Cancel a group of 100 running children → all reaped",
    "scale": "5. Scale: 2,000 children alive at once",
}


def environment(quick: bool) -> dict[str, Any]:
    """What the report says about the machine and the software, taken before the run."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "commit": _commit(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": quick,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "versions": {name: version(name) for name in LIBRARIES},
        "loadavg_start": os.getloadavg(),
    }


def _commit() -> str:
    """The repository's commit, marked "+ local changes" when aioproc/ differs from it."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "aioproc"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" + local changes in aioproc/" if dirty else "")


# --- formatting ------------------------------------------------------------------------


def _num(value: float, digits: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if digits is None:
        magnitude = abs(value)
        digits = 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2 if magnitude >= 1 else 3
    return f"{value:,.{digits}f}"


def _spread(values: list[float], digits: int | None = None) -> str:
    """``median (min-max)`` over repetitions; just the value for one repetition."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return DASH
    mid = _num(median(values), digits)
    if len(values) == 1:
        return mid
    return f"{mid} ({_num(min(values), digits)}{DASH}{_num(max(values), digits)})"


def _ratio(value: float, reference: float) -> str:
    if not reference or math.isnan(reference) or math.isnan(value):
        return DASH
    r = value / reference
    return f"{r:,.1f}{TIMES}" if r < 100 else f"{r:,.0f}{TIMES}"


def _metric(row: Row, key: str) -> list[float]:
    return [r[key] for r in row.reps if key in r]


def _med(row: Row | None, key: str) -> float:
    if row is None or not row.reps:
        return math.nan
    return median(_metric(row, key))


def _table(header: list[str], body: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(_md(cell).replace("|", "\\|") for cell in row) + " |" for row in body
    ]
    return lines


def _md(text: str) -> str:
    """``__main__`` in code quotes (bare, markdown would make it a bold "main")."""
    return re.sub(r"(?<!`)__main__(?!`)", "`__main__`", text)


def _label(row: Row) -> str:
    return row.library if row.backend in ("-", "") else f"{row.library} [{row.backend}]"


def _status(row: Row) -> str | None:
    """None for a row with figures; else what to print instead of them."""
    if row.status != "ok":
        return row.status
    if not row.reps:
        return "no repetition completed"
    return None


def _rows_of(raw: dict[str, Any], scenario: str) -> list[Row]:
    for entry in raw.get("scenarios", []):
        if entry["scenario"] == scenario:
            return [Row.from_json(r) for r in entry["rows"]]
    return []


def _find(rows: list[Row], case: str | None, library: str, backend: str) -> Row | None:
    """The row of ``library`` (its name, or the name before ``:``) with figures."""
    for row in rows:
        named = row.library == library or row.library.startswith(library + ":")
        if named and (case is None or row.case == case) and row.backend == backend and row.reps:
            return row
    return None


# --- the scenarios' tables ---------------------------------------------------------------


#: The storm's cases that are probes of the machine, not storms.
PROBE = "probe: "


def _storm(rows: list[Row]) -> list[str]:
    out: list[str] = []
    cases = [c for c in dict.fromkeys(r.case for r in rows) if not c.startswith(PROBE)]
    for case in cases:
        group = [r for r in rows if r.case == case]
        ref = _find(group, case, "aioproc", "asyncio")
        ref_p99 = _med(ref, "lag_p99_ms")
        ref_max = _med(ref, "lag_max_ms")
        out += ["", f"**{case}**" + (" — the ticker alone, no children" if case == "idle" else "")]
        out.append("")
        header = [
            "library",
            "start method",
            "lag p50 ms",
            "lag p99 ms",
            "lag max ms",
            "OS threads before",
            "extra OS threads (peak)",
        ]
        if case != "idle":
            header += [
                "start latency p50 ms",
                "all done s",
                "parent CPU per child ms",
                "bad exit codes",
                "p99 / aioproc",
                "max / aioproc",
            ]
        header.append("notes")
        body = []
        for row in group:
            status = _status(row)
            if status is not None:
                body.append(
                    [_label(row), row.method, *[DASH] * (len(header) - 4), status, row.note]
                )
                continue
            cells = [
                _label(row),
                row.method,
                _spread(_metric(row, "lag_p50_ms")),
                _spread(_metric(row, "lag_p99_ms")),
                _spread(_metric(row, "lag_max_ms")),
                _spread(_metric(row, "threads_before"), 0),
                _spread(_metric(row, "threads_extra"), 0),
            ]
            if case != "idle":
                bad = sum(_metric(row, "bad_exits"))
                cells += [
                    _spread(_metric(row, "start_p50_ms")),
                    _spread(_metric(row, "wall_s")),
                    _spread(_metric(row, "cpu_ms_per_child")),
                    f"**{bad}**" if bad else "0",
                    _ratio(_med(row, "lag_p99_ms"), ref_p99),
                    _ratio(_med(row, "lag_max_ms"), ref_max),
                ]
            leaked = sum(_metric(row, "leaked_children"))
            note = row.note + (f"; {leaked} children left running (killed)" if leaked else "")
            cells.append(note)
            body.append(cells)
        out += _table(header, body)
    probes = [r for r in rows if r.case.startswith(PROBE)]
    if probes:
        out += ["", f"**{probes[0].case}** — the kernel's cost of a growing fd table", ""]
        body = []
        for row in probes:
            status = _status(row)
            if status is not None:
                body.append([_label(row), DASH, DASH, DASH, status + "; " + row.note])
                continue
            slow = [f"fd {fd}: {_num(ms)}" for fd, ms in row.reps[0].get("_slow", [])]
            body.append(
                [
                    _label(row),
                    _spread(_metric(row, "pipe_max_ms")),
                    _spread(_metric(row, "slow_calls"), 0),
                    ", ".join(slow) or DASH,
                    row.note,
                ]
            )
        out += _table(
            [
                "fresh interpreter",
                "slowest os.pipe() ms",
                "calls over 1 ms",
                "calls over 1 ms, first repetition (ms)",
                "notes",
            ],
            body,
        )
    return out


def _seq(rows: list[Row]) -> list[str]:
    header = [
        "start method, `__main__` imports",
        "multiprocessing ms",
        "aioproc [asyncio] ms",
        "aioproc / mp",
        "aioproc [trio] ms",
        "aioproc / mp",
    ]
    body = []
    for case in dict.fromkeys(r.case for r in rows):
        group = [r for r in rows if r.case == case]
        mp = next((r for r in group if r.library == "multiprocessing"), None)
        mp_ms = _med(mp, "start_wait_ms")
        cells = [case, _cell(mp, "start_wait_ms")]
        for backend in ("asyncio", "trio"):
            row = next((r for r in group if r.library == "aioproc" and r.backend == backend), None)
            cells += [_cell(row, "start_wait_ms"), _ratio(_med(row, "start_wait_ms"), mp_ms)]
        body.append(cells)
    return ["", *_table(header, body), *_breakdown(rows)]


#: The breakdown's columns: (metric, header).
BREAKDOWN = (
    ("fork_called", "parent calls fork()"),
    ("child_runs", "child runs"),
    ("target_begins", "target begins"),
    ("start_returns", "start() returns"),
    ("exit_reported", "target end → kernel reports exit"),
    ("exit_seen", "kernel's report → wait()/join() returns"),
    ("end_to_wait", "target end → wait()/join() returns"),
)


def _breakdown(rows: list[Row]) -> list[str]:
    """Where a start+wait's time goes, per start method (bare ``__main__``), against plain."""
    parts = [r for r in rows if r.reps and any("target_begins_ms" in rep for rep in r.reps)]
    if not parts:
        return []
    header = [
        "start method, `__main__` imports",
        "library",
        *[f"{title} ms" for _, title in BREAKDOWN],
        "worker-thread round trip ms",
    ]
    body = []
    for case in dict.fromkeys(r.case for r in parts):
        group = [r for r in parts if r.case == case]
        mp = next((r for r in group if r.library == "multiprocessing"), None)
        for row in group:
            body.append(
                [
                    case,
                    _label(row) if row.library != "aioproc" else f"aioproc [{row.backend}]",
                    *[_num(_med(row, f"{key}_ms")) for key, _ in BREAKDOWN],
                    _num(_med(row, "thread_hop_ms")),
                ]
            )
        ref = next((r for r in group if r.library == "aioproc" and r.backend == "asyncio"), None)
        if mp is not None and ref is not None:
            body.append(
                [
                    case,
                    f"**aioproc [asyncio] {MINUS} multiprocessing**",
                    *[
                        _signed(_med(ref, f"{key}_ms") - _med(mp, f"{key}_ms"))
                        for key, _ in BREAKDOWN
                    ],
                    DASH,
                ]
            )
    return [
        "",
        "**Where the time goes**: medians in ms; the first four phases are measured from the "
        "moment the start+wait began, the last three from the target's end",
        "",
        *_table(header, body),
    ]


def _diff(row: Row | None, ref: Row | None, key: str) -> float:
    return _med(row, key) - _med(ref, key)


def _signed(value: float) -> str:
    if value is None or math.isnan(value):
        return DASH
    return ("+" if value >= 0 else MINUS) + _num(abs(value))


def _cell(row: Row | None, key: str) -> str:
    if row is None:
        return "not run"
    status = _status(row)
    if status is not None:
        return status
    return _spread(_metric(row, key))


def _pooled(row: Row | None, key: str) -> list[float]:
    if row is None:
        return []
    return [x for rep in row.reps for x in rep.get(key, [])]


#: The exit-detection row that measures the kernel's own notification: the floor.
FLOOR = "multiprocessing: wait_readable(pidfd_open(pid))"


def _exit(rows: list[Row]) -> list[str]:
    ref = _find(rows, None, "aioproc: await p.wait()", "asyncio")
    ref_p99 = pct(_pooled(ref, "_from_kernel"), 99)
    header = [
        "library",
        "from the kernel's report: p50 ms",
        "p99 ms (all repetitions)",
        "max ms",
        "p99 per repetition",
        "from `os._exit`: p50 ms",
        "p99 ms",
        "max ms",
        "kernel teardown p50 ms",
        "observer woke after the library (worst ms)",
        "p99 / aioproc",
        "notes",
    ]
    body = []
    for row in rows:
        status = _status(row)
        if status is not None:
            body.append([_label(row), *[DASH] * (len(header) - 3), status, row.note])
            continue
        lat = _pooled(row, "_latencies")
        kernel = _pooled(row, "_from_kernel")
        behind = [x for x in kernel if x < 0]
        behind_text = f"{len(behind)} of {len(kernel)}" + (
            f" ({_num(-min(behind))})" if behind else ""
        )
        late = sum(_metric(row, "observer_late"))
        note = row.note + (f"; {late} exits the observer saw too late (left out)" if late else "")
        body.append(
            [
                _label(row),
                _num(pct(kernel, 50)),
                _num(pct(kernel, 99)),
                _num(max(kernel, default=math.nan)),
                _spread(_metric(row, "kernel_p99_ms")),
                _num(pct(lat, 50)),
                _num(pct(lat, 99)),
                _num(max(lat)),
                _num(pct(_pooled(row, "_teardown"), 50)),
                behind_text,
                _ratio(pct(kernel, 99), ref_p99),
                note,
            ]
        )
    case = rows[0].case if rows else ""
    return ["", f"**{case}**", "", *_table(header, body)]


def _cancel(rows: list[Row]) -> list[str]:
    ref = _find(rows, None, "aioproc", "asyncio")
    ref_ms = _med(ref, "cancel_ms")
    header = [
        "library",
        "start method",
        "cancel → all reaped ms",
        "left alive / zombies at scope exit",
        "time to start all s",
        "/ aioproc",
        "notes",
    ]
    body = []
    for row in rows:
        status = _status(row)
        if status is not None:
            body.append([_label(row), row.method, DASH, DASH, DASH, status, row.note])
            continue
        alive, zombies = sum(_metric(row, "left_alive")), sum(_metric(row, "left_zombies"))
        body.append(
            [
                _label(row),
                row.method,
                _spread(_metric(row, "cancel_ms")),
                f"{alive} / {zombies}" if not (alive or zombies) else f"**{alive} / {zombies}**",
                _spread(_metric(row, "start_all_s")),
                _ratio(_med(row, "cancel_ms"), ref_ms),
                row.note,
            ]
        )
    case = rows[0].case if rows else ""
    return ["", f"**{case}**", "", *_table(header, body)]


def _scale(rows: list[Row]) -> list[str]:
    ref = next((r for r in rows if r.library.startswith("multiprocessing") and r.reps), None)
    header = [
        "library",
        "start all s",
        "reap all s",
        "parent RSS per child KiB",
        "parent fds per child",
        "extra OS threads",
        "RSS / multiprocessing",
        "notes",
    ]
    body = []
    for row in rows:
        status = _status(row)
        if status is not None:
            body.append([_label(row), DASH, DASH, DASH, DASH, DASH, status, row.note])
            continue
        body.append(
            [
                _label(row),
                _spread(_metric(row, "start_all_s")),
                _spread(_metric(row, "reap_all_s")),
                _spread(_metric(row, "rss_per_child_kib")),
                _spread(_metric(row, "fds_per_child")),
                _spread(_metric(row, "threads_extra"), 0),
                _ratio(_med(row, "rss_per_child_kib"), _med(ref, "rss_per_child_kib")),
                row.note,
            ]
        )
    case = rows[0].case if rows else ""
    return ["", f"**{case}**", "", *_table(header, body)]


RENDER: dict[str, Callable[[list[Row]], list[str]]] = {
    "storm": _storm,
    "seq": _seq,
    "exit": _exit,
    "cancel": _cancel,
    "scale": _scale,
}


# --- goals -------------------------------------------------------------------------------


def _is_aioproc(row: Row) -> bool:
    return row.library == "aioproc" or row.library.startswith("aioproc:")


def _goal(
    what: str,
    value: float,
    limit: float,
    unit: str,
    detail: str = "",
    digits: int | None = None,
    floor: float | None = None,
    floor_name: str = "the reference alone",
) -> tuple[str, str, str, str]:
    """One line of the goals table. ``floor``: what a reference with no library measured."""
    target = f"≤ {limit:g} {unit}"
    if value is None or math.isnan(value):
        return what, "not measured", target, "not measured"
    met = "met" if value <= limit else "**not met**"
    if value > limit and floor is not None and not math.isnan(floor) and floor > limit:
        met += (
            f"; {floor_name} measured {_num(floor)} {unit} here: below that is impossible on "
            "this machine"
        )
    shown = f"{_num(value, digits)} {unit}" + (f" ({detail})" if detail else "")
    return what, shown, target, met


def goals(raw: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(goal, measured, target, met?) for every goal of the issue, from aioproc's rows."""
    out = []
    storm = _rows_of(raw, "storm")
    storm_case = next((r.case for r in storm if r.case.startswith("N=") and r.reps), "N=200")
    control = _find(storm, storm_case, "control", "asyncio")
    for backend in ("asyncio", "trio", "uvloop"):
        row = _find(storm, storm_case, "aioproc", backend)
        for key, limit, label in (("lag_p99_ms", 2, "p99"), ("lag_max_ms", 10, "max")):
            value = _med(row, key)
            detail = []
            if label == "max" and row is not None and len(row.reps) > 1:
                detail.append(f"worst repetition {_num(max(_metric(row, key)))} ms")
            if control is not None:
                share = value - _med(control, key)
                detail.append(
                    f"control {_num(_med(control, key))} ms, aioproc's own share "
                    f"{_signed(share)} ms"
                )
            out.append(
                _goal(
                    f"storm {storm_case}: event-loop lag {label} [{backend}]",
                    value,
                    limit,
                    "ms",
                    "; ".join(detail),
                    floor=_med(control, key),
                    floor_name="the control (CPU contention alone, no library in the loop)",
                )
            )
    thread_rows = [r for r in storm + _rows_of(raw, "scale") if _is_aioproc(r)]
    peaks = [(t, r) for r in thread_rows for t in _metric(r, "threads_extra")]
    if peaks:
        peak, where = max(peaks, key=lambda p: p[0])
        out.append(
            _goal(
                "extra OS threads in the parent, any number of children",
                peak,
                4,
                "threads",
                f"worst: {where.scenario} {where.case} [{where.backend}]",
                digits=0,
            )
        )
    else:
        out.append(_goal("extra OS threads in the parent", math.nan, 4, "threads"))
    seq = _rows_of(raw, "seq")
    for row in seq:
        if row.library == "aioproc" and row.method == "forkserver":
            out.append(
                _goal(
                    f"sequential start+wait, default method ({row.case}) [{row.backend}]",
                    _med(row, "start_wait_ms"),
                    5,
                    "ms",
                )
            )
    for row in seq:
        if row.library != "aioproc" or row.backend != "asyncio":
            continue
        mp = next(
            (r for r in seq if r.case == row.case and r.library == "multiprocessing"),
            None,
        )
        ratio = _med(row, "start_wait_ms") / _med(mp, "start_wait_ms") if mp else math.nan
        detail = f"{_num(_med(row, 'start_wait_ms'))} vs {_num(_med(mp, 'start_wait_ms'))} ms"
        if ratio > 1.1 and not math.isnan(_med(row, "target_begins_ms")):
            detail += (
                f"; the target begins {_signed(_diff(row, mp, 'target_begins_ms'))} ms later, "
                f"its end is seen {_signed(_diff(row, mp, 'end_to_wait_ms'))} ms later: "
                "see the breakdown"
            )
        out.append(
            _goal(
                f"start+wait / plain multiprocessing ({row.case}) [{row.backend}]",
                ratio,
                1.1,
                TIMES,
                detail,
            )
        )
    exit_rows = _rows_of(raw, "exit")
    floor = _find(exit_rows, None, FLOOR, "asyncio")
    floor_p99 = pct(_pooled(floor, "_from_kernel"), 99) if floor else math.nan
    for row in exit_rows:
        if _is_aioproc(row) and row.reps:
            kernel = _pooled(row, "_from_kernel")
            detail = (
                f"{len(kernel)} exits; from `os._exit`: p99 "
                f"{_num(pct(_pooled(row, '_latencies'), 99))} ms"
            )
            if floor is not None:
                detail += f"; a pidfd on the loop, no library: p99 {_num(floor_p99)} ms"
            out.append(
                _goal(
                    f"exit detection p99 (from the kernel's report), "
                    f"{row.library.split(': ', 1)[1]} [{row.backend}]",
                    pct(kernel, 99),
                    1,
                    "ms",
                    detail,
                    floor=floor_p99,
                    floor_name="a pidfd on the loop with no library",
                )
            )
    for row in _rows_of(raw, "cancel"):
        if _is_aioproc(row) and row.reps:
            left = sum(_metric(row, "left_alive")) + sum(_metric(row, "left_zombies"))
            out.append(
                _goal(
                    f"cancel {row.case} → all reaped [{row.backend}]",
                    _med(row, "cancel_ms") if left == 0 else math.inf,
                    150,
                    "ms",
                    "all reaped" if left == 0 else f"{left} children left",
                )
            )
    for row in _rows_of(raw, "scale"):
        if _is_aioproc(row) and row.reps:
            out.append(_fds_goal(row))
            out.append(
                _goal(
                    f"scale {row.case}: parent RSS per child [{row.backend}]",
                    _med(row, "rss_per_child_kib"),
                    50,
                    "KiB",
                )
            )
    return out


def _fds_goal(row: Row) -> tuple[str, str, str, str]:
    """The fds goal: per child, apart from the few fds a parent holds once (its poller)."""
    what = f"scale {row.case}: parent fds per child [{row.backend}]"
    value = _med(row, "fds_per_child")
    match = re.fullmatch(r"N=(\d+)", row.case)
    once = round((value - 3) * int(match.group(1))) if match and not math.isnan(value) else 0
    if not 0 < once <= 4:
        return _goal(what, value, 3, "fds")
    return (
        what,
        f"{value:.4f} fds (3 per child, plus {once} for the whole parent: the event loop's "
        "epoll poller, one per loop)",
        "≤ 3 fds",
        "met (per child)",
    )


# --- plots -------------------------------------------------------------------------------


def _plot_lag(storm: list[Row], path: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    case = next((r.case for r in storm if r.case.startswith("N=") and r.reps), None)
    rows = [r for r in storm if r.case == case and r.reps and any("_lag" in x for x in r.reps)]
    if not rows:
        return False
    cols = 3
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(5 * cols, 2.8 * nrows), sharey=True, squeeze=False
    )
    for ax, row in zip(axes.flat, rows, strict=False):
        # The repetition with the median p99: typical, not the best or the worst.
        reps = sorted(row.reps, key=lambda r: r["lag_p99_ms"])
        rep = reps[len(reps) // 2]
        ts = [t for t, _ in rep["_lag"]]
        lags = [max(lag, 0.01) for _, lag in rep["_lag"]]
        ax.plot(ts, lags, ".", markersize=2, color="tab:red" if _is_aioproc(row) else "C0")
        ax.set_yscale("log")
        ax.axhline(2, color="gray", linestyle="--", linewidth=0.8)
        ax.axhline(10, color="gray", linestyle=":", linewidth=0.8)
        ax.set_title(_label(row), fontsize=9)
        ax.set_xlabel("s since the storm began", fontsize=8)
        ax.set_ylabel("tick lag, ms", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rows) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"Event-loop lag of a 1 ms ticker during the storm ({case}); "
        "dashed: 2 ms, dotted: 10 ms (aioproc's goals)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _plot_starts(storm: list[Row], path: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    case = next((r.case for r in storm if r.case.startswith("N=") and r.reps), None)
    rows = [r for r in storm if r.case == case and r.reps and any("_starts" in x for x in r.reps)]
    if not rows:
        return False
    data = [[max(s, 0.01) for rep in r.reps for s in rep["_starts"]] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
    ax.boxplot(data, vert=False, whis=(0, 100), widths=0.6)
    ax.set_yticks(range(1, len(rows) + 1), [_label(r) for r in rows], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(
        "start latency, ms (storm begins → child known running; pools: → target began); "
        "whiskers min-max",
        fontsize=8,
    )
    ax.set_title(f"Start latency per child during the storm ({case}), all repetitions")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# --- the page ----------------------------------------------------------------------------


def write(raw: dict[str, Any], out_dir: str) -> list[str]:
    """Write benchmarks.md and the plots into ``out_dir``; return the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    storm = _rows_of(raw, "storm")
    plots = {}
    for name, fn in ((LAG_PNG, _plot_lag), (START_PNG, _plot_starts)):
        path = os.path.join(out_dir, name)
        if fn(storm, path):
            plots[name] = path
            written.append(path)
    md = os.path.join(out_dir, "benchmarks.md")
    with open(md, "w") as f:
        f.write("\n".join(_page(raw, plots)) + "\n")
    written.insert(0, md)
    return written


def _page(raw: dict[str, Any], plots: dict[str, str]) -> list[str]:
    versions = raw.get("versions", {})
    loads = [raw.get("loadavg_start", [math.nan] * 3), raw.get("loadavg_end", [math.nan] * 3)]
    out = [
        "# aioproc benchmarks",
        "",
        "Written by `make bench` ([`benchmarks/run.py`](../benchmarks/run.py)); every figure "
        "below comes from one run of it. Re-run it on a quiet machine before quoting a figure.",
        "",
    ]
    if raw.get("quick"):
        out += ["> **Quick run** (`--quick`): tiny sizes, one repetition. Not a measurement.", ""]
    out += _table(
        ["", ""],
        [
            ["run", f"{raw.get('started', '?')} → {raw.get('finished', '?')}"],
            ["machine", f"{raw.get('cpu', '?')}, {raw.get('cpus', '?')} CPUs"],
            ["system", raw.get("platform", "?")],
            ["Python", f"{raw.get('implementation', '')} {raw.get('python', '?')}"],
            ["aioproc commit", raw.get("commit", "?")],
            [
                "load average (1/5/15 min)",
                "start "
                + " / ".join(_num(x, 2) for x in loads[0])
                + ", end "
                + " / ".join(_num(x, 2) for x in loads[1]),
            ],
            ["libraries", ", ".join(f"{k} {v}" for k, v in versions.items())],
        ],
    )
    busy = max((entry.get("loadavg_end", [0])[0] for entry in raw.get("scenarios", [])), default=0)
    cpus = raw.get("cpus") or 1
    first = raw.get("loadavg_start", [math.nan])[0]
    if busy > cpus and first <= cpus:
        out += [
            "",
            f"> The machine was quiet when the run began (1-minute load average {_num(first, 2)} "
            f"on {cpus} CPUs). The load average then rose to {_num(busy)} with the benchmark's "
            "own children: the storms and the scale scenario start hundreds to thousands of "
            "processes at once, and the 1-minute average keeps them for minutes after (it "
            "decays with a 1-minute time constant), so the load printed at the start and end "
            "of each scenario includes the scenarios before it.",
        ]
    elif busy > cpus:
        out += [
            "",
            f"> The machine was busy during this run (1-minute load average up to {_num(busy)} "
            f"on {cpus} CPUs, part of it from the benchmark's own children, part from other "
            "work): absolute times are inflated. Libraries alternate within each scenario, "
            "so the ratios are fairer than the absolute figures.",
        ]
    out += ["", "## Goals", ""]
    out += [
        "aioproc's goals from issue 4, on its default start method (forkserver). Measured = "
        "median over repetitions (exit detection: p99 of all exits of all repetitions; "
        "threads: the worst repetition of any storm or scale run).",
        "",
    ]
    out += _table(["goal", "measured", "target", ""], [list(g) for g in goals(raw)])
    out += [
        "",
        "What the references mean:",
        "",
        "- **Storm lag**: the *control* is a loop that only ticks while *another* process runs "
        "the same aioproc storm (same N, same children, same start method): the lag that CPU "
        "contention with the children's start-up causes on this 2-core machine, whatever the "
        "library. A loop that runs the storm itself cannot tick better than one that only "
        "ticks beside it, so a p99 (or max) below the control's is impossible on this machine; "
        "*aioproc's own share* is aioproc's figure minus the control's. The control's loop "
        "does no I/O, though, and a loop that does (aioproc's: every child's READY and exit) "
        "pays a second floor: asyncio, trio and libuv sleep in epoll with millisecond "
        "timeouts, rounded up, so a wake-up just before a timer is due makes the timer late by "
        "up to 1 ms. The idle rows *loop woken by I/O* measure it alone (no children, no "
        "work, no contention): compare their p99 with the idle ticker's.",
        "- **Exit detection** is measured from the *kernel's report* of the exit: the moment a "
        "pidfd of the child becomes readable, as seen by an observer process that is neither "
        "the parent nor the library (see scenario 3). The figure *from `os._exit`* (the "
        "child's last stamp) also contains the kernel's teardown of the exiting process "
        "(~1-1.5 ms here), which no library can shorten; the goal is about what the library "
        "adds. *A pidfd on the loop, no library* is the best an event loop can do: "
        "`wait_readable(pidfd_open(pid))` with nothing else.",
        "- **Start+wait ratios** compare with plain multiprocessing on the same start method; "
        "where aioproc is slower, the breakdown under scenario 2 shows in which phase.",
    ]
    out += ["", "## Scenarios", ""]
    out += [
        f"Cells are *median (min{DASH}max)* over repetitions. Every multiprocessing-based library "
        "uses the forkserver start method and shares one warm fork server (started by aioproc, "
        "with its preload), so that every library pays the same price per child and the "
        "comparison is about what happens around the start. Each scenario runs in a fresh "
        "interpreter; inside it, the libraries alternate, one repetition each in turn.",
    ]
    for entry in raw.get("scenarios", []):
        name = entry["scenario"]
        out += ["", f"### {TITLES.get(name, name)}", ""]
        load = entry.get("loadavg_start", [math.nan])[0], entry.get("loadavg_end", [math.nan])[0]
        out.append(
            f"Took {_num(entry.get('seconds', math.nan), 0)} s; 1-minute load average "
            f"{_num(load[0], 2)} at the start, {_num(load[1], 2)} at the end."
        )
        if "error" in entry:
            out += ["", f"**The scenario failed: {entry['error']}.**"]
        rows = [Row.from_json(r) for r in entry["rows"]]
        if rows:
            out += RENDER[name](rows)
        out += ["", *NOTES.get(name, [])]
        if name == "storm":
            for png in (LAG_PNG, START_PNG):
                if png in plots:
                    out += ["", f"![{png}]({png})"]
    out += ["", *_changes(raw)]
    return out


NOTES = {
    "storm": [
        "How: N tasks each start one child (target: `time.sleep(0.5)`) and await its exit; a "
        "ticker task sleeps 1 ms in a loop and records how late each tick wakes. *lag* is over "
        "ticks, so a loop frozen for seconds contributes a single tick: look at *max* for "
        "freezes. *OS threads before* is the parent's `Threads` (/proc/PID/status) just before "
        "the storm: the loop's thread, plus worker threads that earlier work left idle (trio "
        "keeps idle worker threads for 10 s: the trio-parallel row leaves 40 behind for the "
        "rows after it; aioproc uses one to grow the fd table; 40 idle threads made no "
        "measurable difference to aioproc's lag in a separate check); *extra OS threads* is the "
        "peak during the storm (sampled every 2 ms from another process: a sampler thread "
        "would compete for the GIL and add lag) minus that. *start latency* "
        "runs from the moment the storm began (all N children are asked for at once) until the "
        "library reports the child running; worker pools report no such moment, so for them it "
        "runs until the target began (it returns its own `time.monotonic_ns()`). "
        "*parent CPU per child*: the parent's CPU time (user + system, all its threads, "
        "`getrusage`) over the storm, divided by N; it includes the ticker's own CPU use. "
        "*bad exit codes*: children whose exit code, as the library reported it, was not 0 "
        "although every child exits 0 (multiprocessing's "
        "reaping race, pitfall 3). The *idle* rows are the ticker alone: the instrument's floor. "
        "The *control* row is the ticker alone while another process "
        "(`python -m benchmarks.storm --external`) runs exactly the aioproc [asyncio] storm: "
        "the same N tasks running the same function on a warm fork server of its own, watched "
        "by the same thread sampler; its *OS threads* and *CPU per child* are that other "
        "process's (no ticker in it). It is what the children's start-up costs a loop through "
        "CPU contention on this machine, whatever the library; aioproc's own share is its "
        "excess over the control. "
        "aioproc's `start()` returns once the child has run its bootstrap and reported READY; "
        "multiprocessing's (and so aioprocessing's and aiomultiprocess's) as soon as the "
        "child exists, so their start latencies are not the same moment. "
        "The *fd-table probe* runs in fresh interpreters, outside any storm: it shows what a "
        "growing fd table costs a multi-threaded process on this kernel, the cause of the "
        "storm's worst lags before aioproc grew the table ahead of need (see *Changes*).",
    ],
    "seq": [
        "How: each configuration is a program of its own ([`benchmarks/seq.py`](../benchmarks/"
        "seq.py)) that starts and waits for 2 unmeasured children, then 15 measured ones, one "
        "after another (target: a function that returns at once); the cell is the median per "
        "child. *anyio+trio+attrs in `__main__`*: the program imports them at top level, which "
        "forkserver and spawn children repeat unless the fork server preloaded them. aioproc "
        "imports anyio and attrs itself, so its *bare* configuration still has them loaded.",
        "",
        "The breakdown: each program then starts 15 more children (after one unmeasured) "
        "whose target sleeps 5 ms and stamps when it began and ended; every stamp is "
        "`time.monotonic_ns()` (`CLOCK_MONOTONIC`, one clock for all processes). With fork, "
        "`os.register_at_fork` hooks stamp when the parent calls `fork()` (*parent calls "
        "fork()*) and when the child first runs Python code after it (*child runs*, after the "
        "interpreter's own after-fork hooks). *target end → kernel reports exit* ends when a "
        "pidfd of the child fires in the exit observer (another process, as in scenario 3): "
        "the child's own wind-down after the target (multiprocessing's `_bootstrap` epilogue; "
        "aioproc's result frame) plus the kernel's teardown. *kernel's report "
        "→ wait()/join() returns* is the parent's detection: a blocking `waitpid` for plain "
        "fork and spawn `join()`, the fork server's status pipe for plain forkserver, aioproc's "
        "poller on the event loop. *worker-thread round trip*: one `anyio.to_thread.run_sync` "
        "of a no-op, the hop aioproc's fork and spawn starts take (forkserver starts take none). "
        "Where aioproc's fork start+wait goes beyond plain multiprocessing (the rows *aioproc "
        f"{MINUS} multiprocessing*): it prepares more before it calls `fork()` (the payload, the "
        "frame pipe, the hop to its start thread); `fork()` itself takes longer until the "
        "child runs (a parent with asyncio, anyio and aioproc loaded has more to copy, and it "
        "forks from a worker thread while the loop thread wakes up beside it on 2 cores); the "
        "child's bootstrap (its own process group, loading the Process object, READY, arming"
        " the parent-death guard) runs before the target; `start()` returns only once READY "
        "has arrived, where plain `start()` returns right after `fork()`; after the target the"
        " child sends its result frame. Under"
        " spawn the child also imports aioproc's child side (`aioproc._child`, "
        "`aioproc._process` and what they import) before the target, and has more to tear down"
        " after it.",
    ],
    "exit": [
        "How: children are started one after another; each sleeps 20 ms, writes "
        "`time.monotonic_ns()` to a file and calls `os._exit(0)`; the parent takes "
        "`time.monotonic_ns()` the moment the library reports the exit. Each exit is measured "
        "from two zeros. *From `os._exit`*: the child's stamp; this includes the kernel's "
        "teardown of the exiting process (unmapping its memory, closing its fds), which no "
        "library can avoid. *From the kernel's report*: the moment a pidfd of the child became "
        "readable in the *exit observer* ([`benchmarks/observer.py`](../benchmarks/observer.py)), "
        "a process of its own (`python -I -S`, started once per repetition) that is neither "
        "the parent nor the library: the parent hands it each child's pid right after the "
        "start and goes on once it holds the pidfd (20 ms before the exit); it blocks in "
        "`poll()` and stamps the time first thing when it wakes. That is what the library adds "
        "on top of the kernel. *kernel teardown*: from the `os._exit` stamp to the kernel's "
        "report. The observer is not the bottleneck: it sleeps in `poll()` until the exit and "
        "then does a few microseconds of work, with the other core free for it (the exiting "
        "child's core has just finished the teardown; the exit wakes at most the fork server "
        "and the parent besides). The *wait_readable(pidfd_open(pid))* row checks it: there "
        "the parent waits on the very same kernel notification, so its figure from the "
        "kernel's report is the observer's lead over an event loop woken by the same event; "
        "an observer slower than the parent would make it negative. *observer woke after the "
        "library* counts the exits where that happened anyway (the observer was not scheduled "
        "at once): those figures are too small, never too large, so a late observer can only "
        "flatter a library, and the p99 rests on the exits it saw in time. The two "
        "*multiprocessing: "
        "wait_readable(...)* rows are references with no library: the fork server's status "
        "pipe (what the stdlib's `sentinel` is under forkserver: the server must wake, reap "
        "and write first) and a pidfd (the kernel's notification; it carries no exit status).",
    ],
    "cancel": [
        "How: N children are started (N tasks), each creates a marker file and sleeps 60 s with "
        "the default SIGTERM disposition; once all markers exist, the enclosing cancel scope "
        "is cancelled and the time until the scope has exited is measured. At that moment the "
        "parent counts its descendants still alive and its zombie children (other than the "
        "fork server and the resource tracker). aioproc stops gracefully (SIGTERM, grace "
        "5 s, SIGKILL); the worker pools SIGKILL.",
    ],
    "scale": [
        "How: each measurement is a fresh program ([`benchmarks/scale.py`](../benchmarks/"
        "scale.py)); every child blocks reading a pipe whose write end only the parent holds. "
        "Per child = (parent `VmRSS` and open fds with every child alive, minus the same just "
        "before the first start) / N; then the parent closes the pipe and waits for every "
        "child to be reaped.",
    ],
}

#: The hand-written section on core changes (rendered verbatim, figures substituted).
CHANGES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "changes.md")


def _changes(raw: dict[str, Any]) -> list[str]:
    """``benchmarks/changes.md`` minus its comment, with this run's figures filled in."""
    try:
        with open(CHANGES) as f:
            text = f.read()
    except OSError:
        return ["## Changes to aioproc measured here", "", "(benchmarks/changes.md is missing)"]
    text = re.sub(r"<!--.*?-->\s*", "", text, flags=re.S)

    def figure(match: re.Match[str]) -> str:
        parts = [p.strip() for p in match.group(1).split(" / ")]
        if len(parts) not in (5, 6):
            return f"(bad reference: {match.group(0)})"
        scenario, case, library, backend, key = parts[:5]
        unit = f" {parts[5]}" if len(parts) == 6 else ""
        row = _find(_rows_of(raw, scenario), case, library, backend)
        values = _metric(row, key) if row is not None else []
        digits = 0 if key.startswith("threads") else None
        return _spread(values, digits) + unit if values else "not measured in this run"

    text = re.sub(r"\{\{(.+?)\}\}", figure, text)
    return ["## Changes to aioproc measured here", "", *text.rstrip("\n").split("\n")]
