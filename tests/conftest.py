"""Every async test runs on asyncio, asyncio+uvloop and trio (anyio's pytest plugin).

``AIOPROC_TEST_START_METHOD=spawn`` (or ``fork``) runs the suite with that start method as
aioproc's default, for ``make matrix``; tests that pass ``context=`` keep theirs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
import uvloop

# Children re-import test modules by path (spawn/forkserver): make `tests` importable.
sys.path.insert(0, os.path.dirname(__file__))

import procfs  # tests/ is on sys.path from here on

#: The start method the suite runs with (``make matrix``), or None for aioproc's default.
START_METHOD = os.environ.get("AIOPROC_TEST_START_METHOD") or None


@pytest.fixture(autouse=True, scope="session")
def start_method() -> Iterator[str]:
    """The default start method of this run (see the module docstring)."""
    from aioproc import _launcher

    default = _launcher.DEFAULT_METHOD
    if START_METHOD is not None:
        _launcher.DEFAULT_METHOD = START_METHOD
    yield _launcher.DEFAULT_METHOD
    _launcher.DEFAULT_METHOD = default


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"loop_factory": uvloop.new_event_loop}), id="uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]


def _children_of(pid: int) -> set[int]:
    kids: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.update(int(x) for x in f.read().split())
        except FileNotFoundError:
            pass
    return kids


@pytest.fixture(autouse=True)
def no_leftover_children() -> Iterator[None]:
    """After each test: no aioproc child alive, and no zombie among our direct children."""
    yield
    import aioproc

    assert aioproc.active_children() == []
    zombies = [pid for pid in _children_of(os.getpid()) if procfs.state(pid) == "Z"]
    assert zombies == []
