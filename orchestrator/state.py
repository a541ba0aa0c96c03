"""The state directory: one folder per run, kept after the run ends so it can be audited.

```
$PERSTACK_SANDBOX_STATE  (default ~/.local/state/perstack-sandbox)
└── runs/<run-id>/
    ├── meta.json     who ran what: expert, image, pid, host, start and end, status
    ├── policy.json   the proxy policy the run enforced
    ├── audit.jsonl   the proxy's decisions, one JSON object per line, written as they happen
    ├── proxy.log     the proxy's own diagnostics (stderr)
    ├── skills.log    the skills' stderr and the gateway's tool-call log
    ├── tools.jsonl   the gateway's tool calls: skill, tool, argument shape, duration, outcome
    └── journal.jsonl every engine object the run is about to create (name, kind, labels),
                      written and fsynced BEFORE the create call; a last line closes it
└── builds/<build-id>/  one per fenced per-expert image build (see `_fence`)
    ├── policy.json   the build proxy's allowlist: the registry hosts derived for that build
    ├── audit.jsonl   what the build fetched, and what it was refused
    ├── proxy.log     the build proxy's own diagnostics
    └── journal.jsonl as for a run
```

Files are appended line by line while the run is live, so a run that crashed can still be read.
The journal is the run's write-ahead log: whatever point a run is killed at, everything it may
have created is named there, so `ps`, `doctor`, `gc` and the owner's reaper find it; an open
journal (no closing line) whose owner is gone is a run that ended without its teardown.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

STATE_ENV: Final = "PERSTACK_SANDBOX_STATE"
META_FILE: Final = "meta.json"
AUDIT_FILE: Final = "audit.jsonl"
PROXY_LOG_FILE: Final = "proxy.log"
SKILLS_LOG_FILE: Final = "skills.log"
POLICY_FILE: Final = "policy.json"
TOOLS_FILE: Final = "tools.jsonl"
JOURNAL_FILE: Final = "journal.jsonl"


def state_dir() -> Path:
    """Return the state directory: `$PERSTACK_SANDBOX_STATE`, else the XDG state home."""
    configured = os.environ.get(STATE_ENV)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "perstack-sandbox"


def runs_dir() -> Path:
    """Return the folder that holds one subfolder per run."""
    return state_dir() / "runs"


def new_run_id() -> str:
    """Return a fresh run id: sortable by start time, unique, and safe in Docker names."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class RunState:
    """The folder of one run and the files in it."""

    run_id: str
    path: Path

    @property
    def meta_path(self) -> Path:
        """`meta.json`: what ran, by whom, and how it ended."""
        return self.path / META_FILE

    @property
    def audit_path(self) -> Path:
        """`audit.jsonl`: the proxy's decisions as JSON lines."""
        return self.path / AUDIT_FILE

    @property
    def proxy_log_path(self) -> Path:
        """`proxy.log`: the proxy's stderr."""
        return self.path / PROXY_LOG_FILE

    @property
    def skills_log_path(self) -> Path:
        """`skills.log`: skills' stderr and the gateway's tool-call log."""
        return self.path / SKILLS_LOG_FILE

    @property
    def tools_path(self) -> Path:
        """`tools.jsonl`: the gateway's tool calls as JSON lines (names and shapes only)."""
        return self.path / TOOLS_FILE

    @property
    def policy_path(self) -> Path:
        """`policy.json`: the policy the proxy enforced."""
        return self.path / POLICY_FILE

    @property
    def journal_path(self) -> Path:
        """`journal.jsonl`: the engine objects the run is about to create, then a closing line."""
        return self.path / JOURNAL_FILE

    def record_intent(self, kind: str, name: str, labels: dict[str, str]) -> None:
        """Journal that a `kind` object `name` with `labels` is about to be created.

        The line is on disk (fsynced) before this returns, so a run killed during the create
        call is still found. Call it before every create, never after.
        """
        self._append({"event": "create", "kind": kind, "name": name, "labels": labels})

    def close_journal(self, how: str) -> None:
        """Journal that nothing the run created is left, and `how` it got there."""
        self._append({"event": "closed", "how": how})

    def journal(self) -> list[dict[str, object]]:
        """Return the journal's entries (a torn last line, from a crash mid-write, is skipped)."""
        try:
            text = self.journal_path.read_text(encoding="utf-8")
        except OSError:
            return []
        entries = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def is_journal_open(self) -> bool:
        """Tell whether the run journalled a create and no closing line (yet)."""
        entries = self.journal()
        return bool(entries) and entries[-1].get("event") != "closed"

    def _append(self, entry: dict[str, object]) -> None:
        line = json.dumps({"at": datetime.now(UTC).isoformat(), **entry}, sort_keys=True) + "\n"
        is_new = not self.journal_path.exists()
        with self.journal_path.open("a", encoding="utf-8") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())
        if is_new:  # the file's own directory entry must survive a crash too
            _fsync_dir(self.path)

    def read_meta(self) -> dict[str, object]:
        """Return meta.json as a dict (empty when missing or unreadable)."""
        try:
            loaded = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def update_meta(self, **fields: object) -> None:
        """Merge `fields` into meta.json (written atomically, so a crash never truncates it)."""
        meta = self.read_meta()
        meta.update(fields)
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(self.meta_path)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def create_run(expert: str, *, run_id: str | None = None) -> RunState:
    """Create the folder of a new run and write its first meta.json.

    Raises:
        OSError: the state directory cannot be created or written.

    """
    rid = run_id or new_run_id()
    path = runs_dir() / rid
    path.mkdir(parents=True, exist_ok=False)
    run = RunState(run_id=rid, path=path)
    for name in (AUDIT_FILE, PROXY_LOG_FILE, SKILLS_LOG_FILE, TOOLS_FILE):
        (path / name).touch()
    run.update_meta(
        run_id=rid,
        expert=expert,
        pid=os.getpid(),
        host=socket.gethostname(),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        status="starting",
    )
    return run


def open_run(run_id: str) -> RunState | None:
    """Return the state of an existing run, or None when there is no such run."""
    path = runs_dir() / run_id
    return RunState(run_id=run_id, path=path) if path.is_dir() else None


def list_runs() -> list[RunState]:
    """Return every recorded run, oldest first (run ids sort by start time)."""
    root = runs_dir()
    if not root.is_dir():
        return []
    return [RunState(run_id=p.name, path=p) for p in sorted(root.iterdir()) if p.is_dir()]


def builds_dir() -> Path:
    """Return the folder that holds one subfolder per fenced image build."""
    return state_dir() / "builds"


def open_journals() -> list[RunState]:
    """Return every run and build folder whose journal is open (oldest first, runs then builds).

    An open journal belongs to a run that is live, or that ended without its teardown.
    """
    found = []
    for root in (runs_dir(), builds_dir()):
        if root.is_dir():
            found += [RunState(run_id=p.name, path=p) for p in sorted(root.iterdir())]
    return [run for run in found if run.journal_path.is_file() and run.is_journal_open()]


def latest_run() -> RunState | None:
    """Return the most recent run, or None when there is none."""
    runs = list_runs()
    return runs[-1] if runs else None
