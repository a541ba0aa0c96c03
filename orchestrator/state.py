"""The state directory: one folder per run, kept after the run ends so it can be audited.

```
$PERSTACK_SANDBOX_STATE  (default ~/.local/state/perstack-sandbox)
└── runs/<run-id>/
    ├── meta.json     who ran what: expert, image, pid, host, start and end, status
    ├── policy.json   the proxy policy the run enforced
    ├── audit.jsonl   the proxy's decisions, one JSON object per line, written as they happen
    ├── proxy.log     the proxy's own diagnostics (stderr)
    ├── skills.log    the skills' stderr and the gateway's tool-call log
    └── tools.jsonl   the gateway's tool calls: skill, tool, argument shape, duration, outcome
└── builds/<build-id>/  one per fenced per-expert image build (see `_fence`)
    ├── policy.json   the build proxy's allowlist: the registry hosts derived for that build
    ├── audit.jsonl   what the build fetched, and what it was refused
    └── proxy.log     the build proxy's own diagnostics
```

Files are appended line by line while the run is live, so a run that crashed can still be read.
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
BUILDS_DIR: Final = "builds"
BUILD_PREFIX: Final = "build-"


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


def builds_dir() -> Path:
    """Return the folder that holds one subfolder (audit, proxy log) per fenced build."""
    return state_dir() / BUILDS_DIR


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
    """Return the state of an existing run or build (`build-...`), or None when there is none."""
    root = builds_dir() if run_id.startswith(BUILD_PREFIX) else runs_dir()
    path = root / run_id
    return RunState(run_id=run_id, path=path) if path.is_dir() else None


def list_runs() -> list[RunState]:
    """Return every recorded run, oldest first (run ids sort by start time)."""
    root = runs_dir()
    if not root.is_dir():
        return []
    return [RunState(run_id=p.name, path=p) for p in sorted(root.iterdir()) if p.is_dir()]


def latest_run() -> RunState | None:
    """Return the most recent run, or None when there is none."""
    runs = list_runs()
    return runs[-1] if runs else None
