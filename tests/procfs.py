"""What /proc says about a process: the tests' one reader of a process's state."""

from __future__ import annotations


def state(pid: int) -> str | None:
    """The state letter of ``pid``'s main thread (R, S, D, Z, ...), None once it is reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: reaped between open and read
        return None


def running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has died: it only waits for its reaper)."""
    return state(pid) not in (None, "Z")
