"""The benchmark suite cannot rot: every scenario runs at tiny sizes (``run.py --quick``).

This asserts that each scenario ran and produced figures for aioproc and for every library it
is compared with, and that the report and its plots were written -- never how fast anything
was: timings belong to ``make bench`` and docs/benchmarks.md, not to a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 110

#: Per scenario: the libraries (a row's name, or the part before ":") that must have figures.
EXPECTED = {
    "storm": [
        "idle ticker (no children)",
        "aioproc",
        "multiprocessing",
        "aioprocessing",
        "aiomultiprocess",
        "trio-parallel",
        "anyio.to_process.run_sync()",
    ],
    "seq": ["aioproc", "multiprocessing"],
    "exit": ["aioproc", "aiomultiprocess", "aioprocessing", "multiprocessing"],
    "cancel": [
        "aioproc",
        "trio-parallel",
        "anyio.to_process.run_sync(cancellable=True)",
        "multiprocessing",
    ],
    "scale": ["aioproc", "multiprocessing"],
}
BACKENDS = {"storm": {"asyncio", "trio", "uvloop"}, "seq": {"asyncio", "trio"}}


def _library(name: str) -> str:
    return name.split(":", 1)[0]


def test_every_scenario_runs_and_writes_the_report(tmp_path: Path) -> None:
    raw_path = tmp_path / "raw.json"
    out = tmp_path / "docs"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--quick",
            "--out",
            str(out),
            "--raw",
            str(raw_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = json.loads(raw_path.read_text())

    scenarios = {entry["scenario"]: entry for entry in raw["scenarios"]}
    assert set(scenarios) == set(EXPECTED)
    for name, entry in scenarios.items():
        assert "error" not in entry, (name, entry.get("error"))
        rows = entry["rows"]
        broken = [(r["library"], r["backend"], r["status"]) for r in rows if r["status"] != "ok"]
        assert broken == [], name
        empty = [(r["library"], r["backend"]) for r in rows if not r["reps"]]
        assert empty == [], name
        libraries = {_library(r["library"]) for r in rows}
        assert set(EXPECTED[name]) <= libraries, (name, libraries)
        aioproc_backends = {r["backend"] for r in rows if _library(r["library"]) == "aioproc"}
        assert BACKENDS.get(name, {"asyncio", "trio"}) <= aioproc_backends, name
        # Every repetition produced figures, not just an empty dict.
        assert all(rep for r in rows for rep in r["reps"]), name

    # The measurements the report's goals rest on are there (not only rows with some figures).
    exits = [r for r in scenarios["exit"]["rows"] if _library(r["library"]) == "aioproc"]
    assert all(rep["_from_kernel"] for r in exits for rep in r["reps"])
    assert all(
        "target_begins_ms" in rep and "exit_seen_ms" in rep
        for r in scenarios["seq"]["rows"]
        for rep in r["reps"]
    )
    control = [r for r in scenarios["storm"]["rows"] if r["library"].startswith("control")]
    assert control and all("cpu_ms_per_child" in rep for r in control for rep in r["reps"])

    page = (out / "benchmarks.md").read_text()
    assert "## Goals" in page
    assert "## Changes to aioproc measured here" in page
    assert "bad reference" not in page and "{{" not in page
    for name in ("storm", "seq", "exit", "cancel", "scale"):
        assert f"### {_title_number(name)}." in page
    for png in ("benchmarks-storm-lag.png", "benchmarks-start-latency.png"):
        data = (out / png).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), png
        assert f"]({png})" in page


def _title_number(name: str) -> int:
    return list(EXPECTED).index(name) + 1
