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
    ├── journal.jsonl every engine object the run is about to create (name, kind, labels),
    │                 written and fsynced BEFORE the create call; a last line closes it
    └── cover         an empty file (0444), bound over each env file under /expert
└── builds/<build-id>/  one per fenced per-expert image build (see `_fence`)
    ├── policy.json   the build proxy's allowlist: the registry hosts derived for that build
    ├── audit.jsonl   what the build fetched, and what it was refused
    ├── proxy.log     the build proxy's own diagnostics
    └── journal.jsonl as for a run
└── contexts/<host>/<pid>-<start>-<kind>-<random>/  an image build's context while it builds;
                      a build killed mid-way leaves it to `gc` or the owner's reaper
```

Files are appended line by line while the run is live, so a run that crashed can still be read.
The journal is the run's write-ahead log: whatever point a run is killed at, everything it may
have created is named there, so `ps`, `doctor`, `gc` and the owner's reaper find it; an open
journal (no closing line) whose owner is gone is a run that ended without its teardown.

The state is private: the directory and every folder in it are 0700, every file 0600, all owned
by the invoking user. Policies name each skill's hosts, logs carry the skills' stderr, and a
sandbox whose workspace could reach them must still read nothing (`run.check_workspace` also
refuses such a workspace). A state directory left with wider modes by an older version is made
private, everything under it included, the next time a run or build is recorded. Files are
opened without following links and with their mode set through the descriptor.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from perstack_sandbox.errors import UsageError
from perstack_sandbox.procs import is_process_alive, process_start_ticks

if TYPE_CHECKING:
    from collections.abc import Iterator

STATE_ENV: Final = "PERSTACK_SANDBOX_STATE"
META_FILE: Final = "meta.json"
AUDIT_FILE: Final = "audit.jsonl"
PROXY_LOG_FILE: Final = "proxy.log"
SKILLS_LOG_FILE: Final = "skills.log"
POLICY_FILE: Final = "policy.json"
TOOLS_FILE: Final = "tools.jsonl"
COVER_FILE: Final = "cover"
COVER_MODE: Final = 0o444  # the skills read it (as nothing); nobody writes it
RUNS_DIR: Final = "runs"
BUILDS_DIR: Final = "builds"
BUILD_PREFIX: Final = "build-"
CONTEXTS_DIR: Final = "contexts"
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
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
    return state_dir() / RUNS_DIR


def ensure_state_dir() -> Path:
    """Create the state directory private (0700), or make an existing one private; return it.

    A state directory whose own mode is not 0700 (made by an older version, or by hand) has
    every folder under it set to 0700 and every file to 0600, once.

    Raises:
        UsageError: it belongs to another user, or is not a folder, or cannot be made.

    """
    root = state_dir()
    try:
        root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        found = root.stat()
    except OSError as exc:
        raise UsageError(f"cannot create the state directory {root}: {exc.strerror}") from exc
    if not stat.S_ISDIR(found.st_mode):
        raise UsageError(f"the state directory {root} is not a folder")
    if found.st_uid != os.getuid():
        raise UsageError(
            f"the state directory {root} belongs to uid {found.st_uid}, not to you (uid "
            f"{os.getuid()}); set {STATE_ENV} to a folder of your own"
        )
    if stat.S_IMODE(found.st_mode) != DIR_MODE:
        make_private(root)
    return root


def make_private(root: Path) -> None:
    """Set `root` and every folder under it to 0700 and every file to 0600 (links untouched).

    Raises:
        UsageError: a mode could not be changed (a file of another user, say).

    """
    try:
        root.chmod(DIR_MODE)
        for top, folders, files in os.walk(root):  # never descends through a link
            for names, mode in ((folders, DIR_MODE), (files, FILE_MODE)):
                for path in (Path(top, name) for name in names):
                    if not path.is_symlink():  # only we can write here: no race to a link
                        path.chmod(mode)
    except OSError as exc:
        raise UsageError(
            f"cannot make the state directory private: {exc.filename}: {exc.strerror}"
        ) from exc


def private_folder(path: Path, *, exist_ok: bool = False) -> Path:
    """Create `path` (a new folder under the state directory) and its parents there, 0700.

    Raises:
        UsageError: the state directory is not usable (see `ensure_state_dir`).
        FileExistsError: `path` exists already (unless `exist_ok`).

    """
    root = ensure_state_dir()
    for folder in reversed([path, *path.parents]):
        if folder.is_relative_to(root) and folder != root:
            folder.mkdir(mode=DIR_MODE, exist_ok=exist_ok or folder != path)
            folder.chmod(DIR_MODE)  # mkdir's mode passes through the umask
    return path


def private_fd(path: Path, *, append: bool) -> int:
    """Open `path` for writing (appending, or truncated), made 0600; never through a link.

    Raises:
        OSError: it cannot be opened (a link planted in its place gives ELOOP).

    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_APPEND if append else os.O_TRUNC
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # the file may have existed with a wider mode
    except OSError:
        os.close(fd)
        raise
    return fd


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` as a private (0600) file.

    Raises:
        OSError: it cannot be written.

    """
    with os.fdopen(private_fd(path, append=False), "w", encoding="utf-8") as file:
        file.write(text)


def builds_dir() -> Path:
    """Return the folder that holds one subfolder (audit, proxy log) per fenced build."""
    return state_dir() / BUILDS_DIR


@contextlib.contextmanager
def build_context(kind: str) -> Iterator[Path]:
    """Yield a new private folder for the context of an image build of `kind`; remove it after.

    It lives in the state directory, named after this host and process (pid and start time),
    so that a build killed mid-way leaves a folder `remove_dead_contexts` knows to be garbage
    (docs/architecture.md, decision 67).

    Raises:
        UsageError: the state directory is not usable (see `ensure_state_dir`).

    """
    pid = os.getpid()
    name = f"{pid}-{process_start_ticks(pid)}-{kind}-{secrets.token_hex(4)}"
    path = private_folder(state_dir() / CONTEXTS_DIR / socket.gethostname() / name)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_dead_contexts() -> list[str]:
    """Remove the build contexts of this host whose process is gone; name them.

    Folders of other hosts (a state directory on a shared home) are never touched: their
    processes cannot be seen from here.
    """
    root = state_dir() / CONTEXTS_DIR / socket.gethostname()
    try:
        found = sorted(root.iterdir())
    except OSError:  # none yet (or unreadable): nothing to remove
        return []
    removed = []
    for path in found:
        pid, start_ticks, *_ = [*path.name.split("-", 2), ""]
        if pid.isdigit() and not is_process_alive(int(pid), start_ticks):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"build context {path.name}")
    return removed


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
    def cover_path(self) -> Path:
        """`cover`: the empty file bound over env files (see `expert_folder`)."""
        return self.path / COVER_FILE

    def write_cover(self) -> Path:
        """Create the run's empty, read-only cover file; return its path.

        Raises:
            OSError: it cannot be created.

        """
        fd = private_fd(self.cover_path, append=False)
        try:
            os.fchmod(fd, COVER_MODE)
        finally:
            os.close(fd)
        return self.cover_path

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
        fd = private_fd(self.journal_path, append=True)  # 0600, never through a link
        try:
            os.write(fd, line.encode())  # one write: appended whole, even by two processes
            os.fsync(fd)
        finally:
            os.close(fd)
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
        write_private(tmp, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.meta_path)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def create_run(expert: str, *, run_id: str | None = None) -> RunState:
    """Create the folder of a new run and write its first meta.json.

    Raises:
        UsageError: the state directory belongs to another user or cannot be made.
        OSError: the run's folder exists already, or cannot be written.

    """
    rid = run_id or new_run_id()
    path = private_folder(runs_dir() / rid)
    run = RunState(run_id=rid, path=path)
    for name in (AUDIT_FILE, PROXY_LOG_FILE, SKILLS_LOG_FILE, TOOLS_FILE):
        os.close(private_fd(path / name, append=True))
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
