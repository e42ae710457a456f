"""Run the aioproc benchmark suite and write docs/benchmarks.md and its plots.

::

    python benchmarks/run.py --out docs            # everything (make bench)
    python benchmarks/run.py --quick --out /tmp/b  # tiny sizes, 1 repetition (the smoke test)
    python benchmarks/run.py --only storm,exit     # some scenarios
    python benchmarks/run.py --render benchmarks/last-run.json --out docs   # re-render only

Each scenario runs in a fresh interpreter of its own (``--scenario NAME``), so one scenario's
children, threads and memory cannot colour the next one's figures, and a library that crashes
or hangs costs one scenario, not the run. Inside a scenario, every library runs in the same
process, alternating, repetition after repetition.

The top of this file imports only the standard library and ``benchmarks.targets`` (itself
standard library only): forkserver and spawn children, and anyio's process workers, import it
again as ``__mp_main__``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.append(ROOT)

# The module the children's targets live in, as a real program's main imports its workers'
# module: a fork server that preloads the main module then has it, for every library alike
# (they share one fork server). It imports only the standard library. Without it, this main
# module's children imported it each, and the storm's control (whose main, benchmarks.storm,
# imports it) had lighter children than the storm it is compared with.
from benchmarks import targets as _targets  # noqa: E402, F401

#: name -> module, in the order they run and appear in the report.
SCENARIOS = {
    "storm": "benchmarks.storm",
    "seq": "benchmarks.seq",
    "exit": "benchmarks.exitdetect",
    "cancel": "benchmarks.cancel",
    "scale": "benchmarks.scale",
}
#: A scenario that takes longer than this is stopped and reported as such.
TIMEOUT = {"storm": 900, "seq": 600, "exit": 600, "cancel": 600, "scale": 900}


def _run_scenario_here(name: str, quick: bool, result: str) -> None:
    """In the scenario's own interpreter: run it, write its rows as JSON to ``result``."""
    import importlib

    # Imported up front, so that no case pays for the import. (aioproc's fork server does not
    # preload them: this main module does not import them at the top.)
    for optional in ("trio", "uvloop"):
        try:
            importlib.import_module(optional)
        except ImportError:
            pass
    from benchmarks.common import warm_forkserver

    warm_forkserver()
    module = importlib.import_module(SCENARIOS[name])
    load = os.getloadavg()
    started = time.time()
    rows = module.run(quick)
    with open(result, "w") as f:
        json.dump(
            {
                "scenario": name,
                "rows": [row.to_json() for row in rows],
                "loadavg_start": load,
                "loadavg_end": os.getloadavg(),
                "seconds": time.time() - started,
            },
            f,
        )


def _run_scenario(name: str, quick: bool) -> dict:
    """Run one scenario in a fresh interpreter; its result, or a record of how it failed."""
    from benchmarks.common import log

    fd, path = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), "--scenario", name, "--result", path]
    if quick:
        cmd.append("--quick")
    log(f"scenario {name}: starting")
    started = time.time()
    load = os.getloadavg()
    try:
        proc = subprocess.run(cmd, timeout=TIMEOUT[name], cwd=ROOT, check=False)
        with open(path) as f:
            text = f.read()
        if proc.returncode == 0 and text:
            data = json.loads(text)
        else:
            data = {"error": f"scenario process exited with code {proc.returncode}"}
    except subprocess.TimeoutExpired:
        data = {"error": f"timed out after {TIMEOUT[name]} s"}
    finally:
        os.unlink(path)
    data.setdefault("scenario", name)
    data.setdefault("rows", [])
    data.setdefault("loadavg_start", load)
    data.setdefault("loadavg_end", os.getloadavg())
    data.setdefault("seconds", time.time() - started)
    log(f"scenario {name}: done in {data['seconds']:.0f} s {data.get('error', '')}")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs"), help="report directory")
    parser.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    parser.add_argument(
        "--raw",
        help="where to keep the raw results as JSON (default: benchmarks/last-run.json; "
        "none for --quick)",
    )
    parser.add_argument("--render", metavar="RAW", help="only re-render the report from RAW")
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.scenario:
        _run_scenario_here(args.scenario, args.quick, args.result)
        return 0

    from benchmarks import report

    if args.render:
        with open(args.render) as f:
            raw = json.load(f)
    else:
        names = args.only.split(",") if args.only else list(SCENARIOS)
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(unknown)}")
        raw = report.environment(quick=args.quick)
        raw["scenarios"] = [_run_scenario(name, args.quick) for name in names]
        raw["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        raw["loadavg_end"] = os.getloadavg()
        if args.raw is None and not args.quick:
            args.raw = os.path.join(ROOT, "benchmarks", "last-run.json")
        if args.raw:
            os.makedirs(os.path.dirname(os.path.abspath(args.raw)), exist_ok=True)
            with open(args.raw, "w") as f:
                json.dump(raw, f)
    written = report.write(raw, args.out)
    for path in written:
        print(path)
    failed = [s["scenario"] for s in raw["scenarios"] if "error" in s]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
