"""The classic multiprocessing "daemon processes" tutorial, made async with aioproc.

Three children run side by side:

- ``worker``      prints its argument, works for a moment and exits;
- ``non-daemon``  sleeps 10 s: a non-daemon child is waited for when its group ends;
- ``daemon``      sleeps 20 s: a daemon child is *stopped* (SIGTERM), not waited for.

Leaving the group waits for the non-daemon child (10 s), then stops the daemon child, which is
still asleep: its "exiting" line never prints.

Run it::

    python examples/seed_demo.py                   # 10 s, on asyncio
    python examples/seed_demo.py --fast            # 0.5 s (sleeps scaled by 0.05)
    python examples/seed_demo.py --backend trio
    AIOPROC_DEMO_SCALE=0.2 python examples/seed_demo.py
"""

from __future__ import annotations

import argparse
import os
import time

import anyio

import aioproc

# --- the children: plain synchronous functions, defined at module level -------------------
# Children are started with forkserver (or spawn), which re-imports this module in the child:
# targets must live at module level, and the program itself under `if __name__ == "__main__"`.


def announce(what: str) -> None:
    """Print `<what>: <name>:<pid>` for the process this runs in."""
    me = aioproc.current_process()
    # flush=True: a child's stdout is a pipe or a file, so block-buffered; flush each line so
    # the lines of parent and children interleave in the order they happened.
    print(f"{what}: {me.name}:{me.pid}", flush=True)


def worker(arg: int) -> None:
    announce("starting")
    print(arg, flush=True)
    time.sleep(0.1)  # "work": still alive when the parent lists its children
    announce("exiting")


def sleeper(seconds: float) -> None:
    announce("starting")
    time.sleep(seconds)  # a blocking sleep is fine: this is a separate process
    announce("exiting")


# --- the parent: async ---------------------------------------------------------------------


async def main(scale: float) -> None:
    print(f"the number of CPU is {aioproc.cpu_count()}", flush=True)

    # Every child belongs to the group: none can outlive the `async with` block.
    async with aioproc.open_group() as group:
        # spawn() returns once the child runs, so its pid is known.
        await group.spawn(sleeper, 20 * scale, name="daemon", daemon=True)
        await group.spawn(sleeper, 10 * scale, name="non-daemon")
        worker_proc = await group.spawn(worker, 100, name="worker")

        # The children still alive (a set underneath: sort them into start order).
        for child in sorted(aioproc.active_children(), key=lambda p: p.pid or 0):
            print(f"child: {child.name}:{child.pid}", flush=True)

        await worker_proc.wait()  # multiprocessing's join(), but awaitable

        # Leaving the block waits for "non-daemon" (10 s), then stops "daemon" (SIGTERM, and
        # SIGKILL if it ignored that for 5 s), which is still asleep: no "exiting" line.

    # Each child's exit, in the order they exited.
    async for event in group.events():
        how = "stopped by the group" if event.stopped else "finished"
        if event.signal is not None:
            how += f" ({event.signal.name})"
        print(f"{event.name}: exitcode={event.exitcode}, {how}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--fast", action="store_true", help="scale the sleeps by 0.05")
    options = parser.parse_args()
    scale = 0.05 if options.fast else float(os.environ.get("AIOPROC_DEMO_SCALE", "1.0"))
    anyio.run(main, scale, backend=options.backend)
