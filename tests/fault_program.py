"""Fault scenarios that need a process of their own (run by tests/test_faults.py).

Usage: ``fault_program.py SCENARIO START_METHOD BACKEND ARG``; prints one line
``RESULT <json>`` and exits 0, or dies with a traceback.

- ``big-result SIZE``: one child returns ``SIZE`` bytes; checks them and reports the parent's
  peak memory (``ru_maxrss``) before and after. In a process of its own because ``ru_maxrss``
  is a high-water mark of the whole process.
- ``fd-limit WORKDIR``: lowers ``RLIMIT_NOFILE`` until only a few children fit, starts children
  until a start fails, releases them, and reports what failed, what the others returned and
  the fds before and after. In a process of its own because the limit is process-wide.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import warnings
from typing import Any

import anyio

import aioproc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import targets  # children import it by this name too

#: Fds left free under the lowered limit: room for a few children (each holds 4 in the
#: parent, plus a few more while it starts), not for many.
FD_ROOM = 24


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def _intact(data: bytes, size: int) -> bool:
    """``data == targets.big_bytes(size)``, without building a second copy to compare with."""
    full = size // 256 * 256
    if len(data) != full + 3 or data[full:] != b"end":
        return False
    chunk = bytes(range(256)) * 4096
    view = memoryview(data)
    for offset in range(0, full, len(chunk)):
        part = view[offset : offset + len(chunk)]
        if part != chunk[: len(part)]:
            return False
    return True


async def big_result(method: str, size: int) -> dict[str, Any]:
    # Warm up: the fork server (or resource tracker) and every import are in the baseline.
    assert await aioproc.run(targets.big_bytes, 1 << 20, context=method)
    gc.collect()
    before = _max_rss_bytes()
    data = await aioproc.run(targets.big_bytes, size, context=method)
    peak = _max_rss_bytes()
    return {"intact": _intact(data, size), "length": len(data), "before": before, "peak": peak}


def _fds() -> list[int]:
    return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))


def _limit_with_room(fds: list[int], room: int) -> int:
    """The smallest RLIMIT_NOFILE that leaves ``room`` fd numbers free below it."""
    limit = room
    while limit - sum(1 for fd in fds if fd < limit) < room:
        limit += 1
    return limit


async def fd_limit(method: str, workdir: str) -> dict[str, Any]:
    for _ in range(2):  # warm up: server or tracker running, worker threads made
        assert await aioproc.run(targets.return_value, 0, context=method) == 0
    gc.collect()
    before = _fds()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # A directory as the gate: making it needs no fd, which we are about to run out of.
    gate = os.path.join(workdir, "gate")
    started: list[aioproc.Process] = []
    error: BaseException | None = None
    resource.setrlimit(resource.RLIMIT_NOFILE, (_limit_with_room(before, FD_ROOM), hard))
    try:
        with anyio.fail_after(60):
            async with aioproc.open_group(context=method) as group:
                for i in range(FD_ROOM):
                    try:
                        started.append(await group.spawn(targets.flt_wait_for_path, gate, i))
                    except aioproc.SpawnError as exc:
                        error = exc
                        break
                alive = [p.is_alive() for p in started]
                os.mkdir(gate)
        results = [await p.result() for p in started]
        exitcodes = [p.exitcode for p in started]
        gc.collect()
        after = _fds()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return {
        "started": len(started),
        "alive_when_start_failed": alive,
        "error_type": type(error).__name__ if error is not None else None,
        "error": str(error) if error is not None else None,
        "results": results,
        "exitcodes": exitcodes,
        "fds_before": before,
        "fds_after": after,
        "active_children": len(aioproc.active_children()),
        "run_after": await aioproc.run(targets.return_value, "after", context=method),
    }


def main() -> None:
    warnings.simplefilter("ignore")  # the 'fork' start method warns, on purpose
    scenario, method, backend, arg = sys.argv[1:5]
    if scenario == "big-result":
        result = anyio.run(big_result, method, int(arg), backend=backend)
    elif scenario == "fd-limit":
        result = anyio.run(fd_limit, method, arg, backend=backend)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    print("RESULT", json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
