"""The reaper: a watcher process that removes what its owner process leaves on the engine.

```
owner (this process) ───── pipe ─────► reaper (a session of its own; stdin is the pipe)
  holds the write end                   reads {"journal": PATH} lines; end of file means the
  for its whole life                    owner is gone: removes every container, then volume
                                        and network, labelled with the owner's pid, start
                                        time and host, and closes the journals it was told of
```

In-process teardown stays the normal path. The reaper is for when it cannot finish: an MCP
client closes the server's stdin, then SIGTERMs and SIGKILLs its process group seconds later
(the Python SDK waits 2 s, then 2 s more); a second Ctrl-C; the OOM killer. Its own session
keeps a signal to the owner's process group from reaching it, and it removes only objects whose
owner is dead (the rule `gc` follows), so it never races a live run. Until the owner is gone it
has imported nothing but the standard library (and this package's `state` and `procs`, which
import nothing else): an idle reaper is one small interpreter (docs/architecture.md, decision
26).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from perstack_sandbox import state
from perstack_sandbox.engine import _patience
from perstack_sandbox.errors import EngineError
from perstack_sandbox.procs import is_process_alive, process_start_ticks

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

OWNER_EXIT_TIMEOUT_S: Final = 30.0  # end of file, then the owner's interpreter shuts down
POLL_INTERVAL_S: Final = 0.05
# A create call in flight when the owner died still completes in the engine: after a crash the
# sweep goes on until nothing new has appeared for this long.
SETTLE_S: Final = 5.0
SWEEP_INTERVAL_S: Final = 0.5  # between passes of a sweep that must settle
LOG_FILE: Final = "reaper.log"


@dataclass(slots=True)
class _Watch:
    owner: int
    process: subprocess.Popen[bytes]
    write_fd: int
    journals: list[str] = field(default_factory=list)


_lock = threading.Lock()
_watch: _Watch | None = None


def guard(journal: Path | None = None) -> None:
    """Make sure this process has a running reaper, and tell it about `journal`.

    Call it before creating an engine object owned by this process. Safe from any thread.

    Raises:
        OSError: the reaper process could not be started.
        UsageError: the state directory (where its log goes) is not usable.

    """
    global _watch  # noqa: PLW0603 - one reaper per process, by design
    with _lock:
        watch = _watch
        if watch is None or watch.owner != os.getpid() or watch.process.poll() is not None:
            watch = _watch = _respawn(watch)
        if journal is not None and str(journal) not in watch.journals:
            watch.journals.append(str(journal))
            try:
                _send(watch.write_fd, str(journal))
            except OSError:  # it died since the poll: a new one learns every journal
                watch = _watch = _respawn(watch)


def _respawn(previous: _Watch | None) -> _Watch:
    """Start this process's reaper; let go of a dead one's pipe, or a forked parent's."""
    if previous is None:
        return _spawn([])
    with contextlib.suppress(OSError):
        # After a fork the parent's write end is ours too: keeping it would make the
        # parent's reaper wait for this process as well.
        os.close(previous.write_fd)
    return _spawn(previous.journals if previous.owner == os.getpid() else [])


def pid() -> int | None:
    """Return the pid of this process's reaper, or None when none was started."""
    watch = _watch
    return watch.process.pid if watch is not None and watch.owner == os.getpid() else None


def _send(write_fd: int, journal: str) -> None:
    os.write(write_fd, (json.dumps({"journal": journal}) + "\n").encode())


def _spawn(journals: Sequence[str]) -> _Watch:
    owner = os.getpid()
    log = state.ensure_state_dir() / LOG_FILE
    # The folder this package was imported from (site-packages, or a checkout's `src/`), as
    # the owner found it (links not resolved): the reaper imports the same code.
    package_root = str(Path(__file__).parents[__name__.count(".")])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }
    read_fd, write_fd = os.pipe()  # not inheritable: no other child keeps the owner "alive"
    try:
        process = subprocess.Popen(  # noqa: S603 - our own module, with our own arguments
            [
                sys.executable,
                *("-m", __name__),
                *("--owner-pid", str(owner), "--owner-start", process_start_ticks(owner)),
                *("--owner-host", socket.gethostname(), "--log", str(log)),
            ],
            stdin=read_fd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    except OSError:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    watch = _Watch(owner=owner, process=process, write_fd=write_fd, journals=list(journals))
    for journal in journals:
        _send(write_fd, journal)
    return watch


# --- the reaper process -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Owner:
    """The process whose objects a reaper removes once it is gone."""

    pid: int
    start_ticks: str
    host: str

    def is_alive(self) -> bool:
        """Tell whether the owner still runs (see `is_process_alive`)."""
        return is_process_alive(self.pid, self.start_ticks)


def _read_journals(stream: Callable[[], bytes]) -> list[Path]:
    journals: list[Path] = []
    for line in iter(stream, b""):
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            journals.append(Path(json.loads(line)["journal"]))
    return journals


def _wait_for_exit(owner: Owner) -> bool:
    deadline = time.monotonic() + OWNER_EXIT_TIMEOUT_S
    while owner.is_alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


def sweep_until_settled(
    sweep: Callable[[], tuple[list[str], bool]],
    *,
    must_settle: bool,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Call `sweep` until a pass removes nothing (and, if `must_settle`, for `SETTLE_S` more).

    `sweep` returns what it removed and whether the engine was busy (a network still in use,
    a removal already in progress, an engine unreachable or timing out). Finding something or
    being busy asks for the settle window: the dead owner may have had more creates in flight.
    After a busy pass the next waits longer (`_patience.Backoff`); a pass that removes or
    finds nothing busy starts the backoff again. Returns everything removed.

    Raises:
        EngineError: the engine was still busy after `PATIENCE_S` (what is left stays for
            `gc`), or `sweep` raised it (a permanent refusal).

    """
    removed: list[str] = []
    start = quiet_since = clock()
    backoff = _patience.Backoff()
    while True:
        found, is_busy = sweep()
        now = clock()
        removed += found
        if found or is_busy:
            must_settle, quiet_since = True, now
        if not must_settle or now - quiet_since >= SETTLE_S:
            return removed
        if now - start >= _patience.PATIENCE_S:
            raise EngineError(
                f"the engine was still busy or unreachable after {_patience.PATIENCE_S:.0f} s "
                f"({len(removed)} object(s) removed); `perstack-sandbox gc` removes the rest"
            )
        if is_busy:
            sleep(backoff.next_delay())
        else:
            backoff.reset()
            sleep(SWEEP_INTERVAL_S)


def _close_journals(journals: Sequence[Path], removed: int) -> int:
    closed = 0
    for path in journals:
        run = state.RunState(run_id=path.parent.name, path=path.parent)
        if not run.is_journal_open():
            continue
        how = f"owner died before its teardown finished; its reaper removed {removed} object(s)"
        run.close_journal(how)
        if run.meta_path.is_file() and run.read_meta().get("status") in {"starting", "running"}:
            run.update_meta(status=f"ended: {how}", ended=_now())
        closed += 1
    return closed


def _append_private(path: Path, text: str) -> None:
    fd = state.private_fd(path, append=True)  # the log names runs and objects: 0600, like the state
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def reap(
    owner: Owner,
    journals: Sequence[Path],
    log: Callable[[str], None],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Once `owner` is gone, remove its objects and close its open journals.

    The build contexts the owner left (decision 67) go first: they need no engine.
    While the engine is unreachable, timing out or busy, the sweep goes on with backoff for
    up to `_patience.PATIENCE_S` (decision 66). Each removed object is logged as it goes, so
    a reaper that stops still says what it did; the journals stay open when it stops.

    Raises:
        EngineError: the engine refused a removal for good, or was still busy or
            unreachable after `_patience.PATIENCE_S`.

    """
    crashed = [path for path in journals if _is_open(path)]
    for line in state.remove_dead_contexts():  # the owner's builds killed mid-way, if any
        log(f"removed {line}")

    def sweep() -> tuple[list[str], bool]:
        found, is_busy = _remove_owned(owner, log)
        for line in found:
            log(f"removed {line}")
        return found, is_busy

    removed = sweep_until_settled(sweep, must_settle=bool(crashed), clock=clock, sleep=sleep)
    closed = _close_journals(crashed, len(removed))
    if removed or closed:  # a clean exit leaves nothing: no line for it
        log(f"owner {owner.pid} gone: removed {len(removed)} object(s), closed {closed} journal(s)")


def _remove_owned(owner: Owner, log: Callable[[str], None]) -> tuple[list[str], bool]:
    # Only now: until its owner is gone the reaper has imported nothing but the stdlib.
    from perstack_sandbox import docker_edge  # noqa: PLC0415
    from perstack_sandbox.engine import _sweep  # noqa: PLC0415

    filters = {
        "label": [
            f"{docker_edge.LABEL_MANAGED}=1",
            f"{docker_edge.LABEL_OWNER_PID}={owner.pid}",
            f"{docker_edge.LABEL_OWNER_HOST}={owner.host}",
        ]
    }

    def is_someone_else(labels: dict[str, str]) -> bool:  # the pid was reused since
        return labels.get(docker_edge.LABEL_OWNER_START, owner.start_ticks) != owner.start_ticks

    try:
        return _sweep.remove_labelled(filters, keep=is_someone_else), False
    except EngineError as exc:
        if not docker_edge.is_transient(exc):
            raise
        # A network still has an endpoint (a container the engine is removing, a cancelled
        # build's step), or the engine is stalled or away: this pass counts as busy, and a
        # later one retries.
        log(f"busy, retrying: {exc}")
        return [], True


def _is_open(path: Path) -> bool:
    return state.RunState(run_id=path.parent.name, path=path.parent).is_journal_open()


def main(argv: Sequence[str] | None = None) -> int:
    """Run as a reaper: wait for the owner to go, then remove what it left."""
    parser = argparse.ArgumentParser(prog="reaper", description=__doc__.splitlines()[0])
    parser.add_argument("--owner-pid", type=int, required=True)
    parser.add_argument("--owner-start", default="")
    parser.add_argument("--owner-host", required=True)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    owner = Owner(args.owner_pid, args.owner_start, args.owner_host)

    def log(message: str) -> None:
        if args.log is not None:
            with contextlib.suppress(OSError):
                _append_private(args.log, f"{_now()} reaper {os.getpid()}: {message}\n")

    journals = _read_journals(sys.stdin.buffer.readline)
    if not _wait_for_exit(owner):
        log(f"owner {owner.pid} closed the pipe but still runs: nothing removed")
        return 0
    try:
        reap(owner, journals, log)
    except Exception as exc:  # noqa: BLE001 - the top of a process: say why, and stop
        log(f"owner {owner.pid} gone, but removing its objects failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
