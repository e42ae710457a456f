"""What a child takes from its parent at start: stdout, stderr and the environment, as they are
*now* -- not as they were when the fork server started (pitfall 18).

Forkserver children are forks of the server, which captured its fds and environment once. The
tests change them after the server runs (pytest's ``capfd`` swaps fds 1 and 2 for each test),
under every start method.
"""

from __future__ import annotations

import os
import warnings

import pytest
import targets

import aioproc

pytestmark = pytest.mark.anyio

METHODS = ["forkserver", "spawn", "fork"]

#: Set before any test runs, so before the fork server starts: a test removes it again.
GONE = "AIOPROC_TEST_SET_BEFORE_THE_SERVER"
os.environ[GONE] = "set at import"


def context(method: str) -> str:
    if method == "fork":
        # The warning is the point of asking for fork elsewhere; here it is noise.
        warnings.filterwarnings("ignore", category=RuntimeWarning, message=".*'fork'")
    return method


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("round_", [1, 2], ids=["first", "second"])
async def test_child_writes_to_the_parents_current_stdout_and_stderr(
    capfd: pytest.CaptureFixture[str], method: str, round_: int
) -> None:
    # Twice per method: under forkserver, output was lost from the second capture on.
    assert await aioproc.run(targets.return_value, 0, context=context(method)) == 0
    capfd.readouterr()
    await aioproc.run(
        targets.inh_print,
        f"out {method} {round_}",
        f"err {method} {round_}",
        context=context(method),
    )
    out, err = capfd.readouterr()
    assert f"out {method} {round_}" in out
    assert f"err {method} {round_}" in err


@pytest.mark.parametrize("method", METHODS)
async def test_child_sees_the_parents_current_environment(
    monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    assert await aioproc.run(targets.return_value, 0, context=context(method)) == 0  # a server
    monkeypatch.setenv("AIOPROC_TEST_SET_NOW", f"now {method}")
    monkeypatch.delenv(GONE)
    assert (
        await aioproc.run(targets.inh_getenv, "AIOPROC_TEST_SET_NOW", context=context(method))
        == f"now {method}"
    )
    assert await aioproc.run(targets.inh_getenv, GONE, context=context(method)) is None


async def test_unchanged_environment_is_inherited_as_it_is() -> None:
    assert await aioproc.run(targets.inh_getenv, "PATH") == os.environ.get("PATH")
