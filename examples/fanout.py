"""Fan out: many small CPU-bound jobs, at most one per CPU at a time, results as they finish.

Run it::

    python examples/fanout.py                  # 20 jobs, on asyncio
    python examples/fanout.py --jobs 100 --backend trio
"""

from __future__ import annotations

import argparse

import anyio

import aioproc


def size(i: int) -> int:
    """How big job ``i`` is: sizes vary, so jobs finish out of order."""
    return 200_000 * (1 + (i * 7) % 10)


def job(i: int) -> int:
    """The work, run in a child process: a sum of squares (pure Python, holds its own GIL)."""
    return sum(k * k for k in range(size(i)))


async def report(group: aioproc.ProcessGroup, jobs: int) -> None:
    """Print each result as its child exits, then the total."""
    total = 0
    done = 0
    # follow=True: keep following until the group closes. Without it the iteration ends as soon
    # as every child spawned *so far* has exited, which can happen between two spawns.
    async for event in group.events(follow=True):
        value = await event.process.result()  # the job's return value (or its exception)
        done += 1
        total += value
        print(f"[{done:{len(str(jobs))}}/{jobs}] {event.name} -> {value}", flush=True)
    print(f"total: {total}", flush=True)


async def main(jobs: int) -> None:
    # The reporter runs in a task group *around* the process group: it follows the exits until
    # the process group closes, so it must outlive the process group's block.
    # max_running: spawn() waits for a free slot, so at most cpu_count() jobs run at once.
    async with (
        anyio.create_task_group() as tg,
        aioproc.open_group(max_running=aioproc.cpu_count()) as group,
    ):
        tg.start_soon(report, group, jobs)  # results print while later jobs wait for a slot
        for i in range(jobs):
            await group.spawn(job, i, name=f"job-{i}")
        # Leaving the process group waits for every job; then the reporter prints the total.


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="how many jobs (default 20)")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    options = parser.parse_args()
    anyio.run(main, options.jobs, backend=options.backend)
