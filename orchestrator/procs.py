"""Processes: which one owns an engine object, and whether it still runs.

A pid alone is not an identity (pids are reused), so an owner is its pid and its start time in
clock ticks since boot, both read from procfs. Only the standard library is imported here: the
reaper (`engine._reaper`) checks its owner with these while it waits, as a small interpreter.
"""

from __future__ import annotations

import os
from pathlib import Path


def process_start_ticks(pid: int) -> str:
    """Return a process's start time in clock ticks since boot ('' when unknown).

    Together with the pid it identifies one process even after the pid is reused.
    """
    fields = _stat_fields(pid)
    return fields[19] if fields else ""


def is_process_alive(pid: int, start_ticks: str = "") -> bool:
    """Tell whether process `pid` (started at `start_ticks`, when given) still runs.

    A zombie is dead: it runs no code, it only waits for its parent to read its status.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _stat_fields(pid)
    if fields is None:
        return True  # no procfs (macOS): the signal probe is all we know
    return fields[0] != "Z" and (not start_ticks or start_ticks == fields[19])


def _stat_fields(pid: int) -> list[str] | None:
    """Return the fields of `/proc/PID/stat` after the command name (state first), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces and parentheses.
    return stat.rsplit(")", 1)[1].split()
