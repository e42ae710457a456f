"""A parent program for tests that kill or interrupt the parent itself.

Usage: parent_program.py START_METHOD BACKEND WORKDIR. Starts a group with a daemon and a non-daemon
child (each of which forks a grandchild), prints ``PIDS <pid> ...`` (children and
grandchildren) and then waits forever, until it is killed or interrupted. On
KeyboardInterrupt it prints ``INTERRUPTED`` after the group has stopped its children.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import anyio

import aioproc


def sleeper_with_grandchild(path: str) -> None:
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    with open(path, "w") as f:
        f.write(str(pid))
    time.sleep(600)


async def main(method: str, workdir: str) -> None:
    async with aioproc.open_group(context=method, grace=2.0) as group:
        paths = [os.path.join(workdir, f"grandchild-{i}") for i in range(2)]
        children = [
            await group.spawn(sleeper_with_grandchild, path, daemon=daemon)
            for path, daemon in zip(paths, (False, True), strict=True)
        ]
        while not all(os.path.exists(p) and os.path.getsize(p) for p in paths):
            await anyio.sleep(0.01)
        grandchildren = [int(Path(p).read_text()) for p in paths]
        pids = [p.pid for p in children] + grandchildren
        print("PIDS", *pids, flush=True)
        await anyio.sleep(600)


if __name__ == "__main__":
    warnings.simplefilter("ignore")  # the 'fork' start method warns, on purpose
    interrupted = False
    try:
        anyio.run(main, sys.argv[1], sys.argv[3], backend=sys.argv[2])
    except* KeyboardInterrupt:  # bare on asyncio, inside an exception group on trio
        interrupted = True
    if interrupted:
        print("INTERRUPTED", flush=True)
        sys.exit(130)
