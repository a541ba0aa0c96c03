"""A run's end and the operations on many runs: teardown, signals, ps, gc, down, doctor.

`teardown` removes every object labelled with the run id (not only the ones this process
remembers creating) and records how the run ended; the others are the CLI's entry points over
the labelled objects of this engine (`_sweep`) and `doctor`'s checks (`_doctor`).
"""

from __future__ import annotations

import signal
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio

from perstack_sandbox.docker_edge import LABEL_RUN, is_transient, is_unreachable, owner_user
from perstack_sandbox.engine import _containers, _doctor, _patience, _sweep
from perstack_sandbox.errors import EngineError
from perstack_sandbox.images import no_progress

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from perstack_sandbox.engine._sweep import RunInfo
    from perstack_sandbox.state import RunState


async def teardown(run: RunState, status: str) -> None:
    """Remove every object of `run`, close its journal and record `status` (call it shielded).

    While the engine is timing out or busy, the removal is repeated with backoff for up to
    `_patience.PATIENCE_S` (decision 66): a run closed on a stalled engine is removed once it
    answers. An engine that refuses the connection fails the teardown at once, so a command
    says so and exits; its reaper, which outlives it, keeps trying. A process killed meanwhile
    (SIGKILL) leaves the rest to its reaper.

    Raises:
        EngineError: the engine refused a removal for good, refused the connection, or still
            failed after `_patience.PATIENCE_S` (`gc` removes what is left).

    """
    try:
        await remove_patiently(run.run_id)
    except EngineError as exc:
        run.update_meta(status=f"{status}; teardown failed: {exc}")
        raise EngineError(
            f"tearing down run {run.run_id} failed ({exc}); `perstack-sandbox gc` removes "
            f"what is left (objects labelled {LABEL_RUN}={run.run_id})"
        ) from exc
    # The status first: an owner killed between the two (an MCP client's SIGKILL after its
    # SIGTERM) then leaves an open journal, which its reaper closes without touching the
    # status; the other order left a closed journal and a run recorded as still running.
    run.update_meta(status=status, ended=datetime.now(UTC).isoformat(timespec="seconds"))
    if run.journal_path.exists():
        run.close_journal(f"torn down by its owner ({status})")


async def remove_patiently(
    run_id: str,
    *,
    clock: Callable[[], float] = anyio.current_time,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> None:
    """Remove the objects of `run_id`, repeating while the engine stalls (decision 66).

    The waits are the event loop's, not a worker thread's: a process interrupted meanwhile
    starts no further attempt, so it exits once the engine call under way returns.

    Raises:
        EngineError: the engine refused a removal for good, refused the connection, or
            still failed after `_patience.PATIENCE_S`.

    """
    start, backoff = clock(), _patience.Backoff()
    while True:
        try:
            await anyio.to_thread.run_sync(_containers.remove_run, run_id)
        except EngineError as exc:
            if (
                not is_transient(exc)
                or is_unreachable(exc)
                or clock() - start >= _patience.PATIENCE_S
            ):
                raise
        else:
            return
        await sleep(backoff.next_delay())


@asynccontextmanager
async def cancel_on_signals() -> AsyncIterator[anyio.CancelScope]:
    """Cancel the body on SIGINT or SIGTERM, so every sandbox in it is torn down.

    Use it around `open_sandbox` in a command: `async with cancel_on_signals(): ...`.
    """
    async with anyio.create_task_group() as group:
        scope = group.cancel_scope

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    scope.cancel()
                    return

        group.start_soon(watch)
        try:
            yield scope
        finally:
            scope.cancel()  # stop watching: the body is done


def list_sandboxes() -> list[RunInfo]:
    """Return every run with labelled containers, networks or volumes on this engine, oldest first.

    Raises:
        EngineError: the engine could not be reached.

    """
    return _sweep.list_runs()


def collect_garbage(*, include_images: bool = False) -> list[str]:
    """Remove every labelled object whose owning process is gone (on this host); name them.

    Objects of live owners, and of owners on other hosts, are never touched. The journals of
    runs (in this state directory) whose owner died before its teardown are closed. The
    shared egress network goes once no container uses it. With `include_images`, images that
    no current recipe uses (older base/proxy builds, experts built on an older base) go too.

    Raises:
        EngineError: the engine refused a removal or could not be reached.

    """
    removed = _sweep.collect_garbage()
    return removed + (_sweep.remove_superseded_images() if include_images else [])


def take_down(run_id: str) -> list[str]:
    """Remove the objects of one run (`run_id`); name them.

    Unlike `collect_garbage`, this removes objects of live owners too: it is what the user
    asked for. The owner notices within seconds (`Sandbox.wait_stopped`) and exits.

    Raises:
        EngineError: the engine refused a removal or could not be reached.

    """
    return _sweep.take_down(run_id)


def runs_to_take_down(*, everyone: bool = False) -> list[RunInfo]:
    """Return the runs `down --all` takes down: this user's (`owner_user()`), or every run.

    Raises:
        EngineError: the engine could not be reached.

    """
    me = owner_user()
    return [run for run in _sweep.list_runs() if everyone or run.owner_user == me]


def diagnose(
    *, fix: bool = False, progress: Callable[[str], None] = no_progress
) -> list[_doctor.Check]:
    """Report the engine, storage driver, cgroup version, images, gVisor, leftovers (`doctor`).

    Raises:
        ImageBuildError: `fix` was asked and a build failed.
        EngineError: `fix` was asked and the engine, npm or pip failed.

    """
    return _doctor.diagnose(fix=fix, progress=progress)
