"""Removal on a stalled engine: the reaper and the owner's teardown wait, with a ceiling.

No Docker here: a fake engine times out (as the real one did under 40 force-removals on 2
cores: API reads timing out, "context deadline exceeded") until a fake clock reaches a given
time, or refuses for good. A real stall cannot be forced reliably, so it is not attempted.
"""

from __future__ import annotations

import itertools
import os
import socket
from types import SimpleNamespace
from typing import TYPE_CHECKING

import docker.errors
import pytest
import requests
from clock_support import FakeClock

from perstack_sandbox import docker_edge, state
from perstack_sandbox.docker_edge import (
    LABEL_MANAGED,
    LABEL_OWNER_PID,
    LABEL_OWNER_START,
    LABEL_RUN,
    docker_errors,
)
from perstack_sandbox.engine import _containers, _lifecycle, _patience, _reaper, _sweep, _workspace
from perstack_sandbox.errors import EngineError

if TYPE_CHECKING:
    from pathlib import Path

OWNER = _reaper.Owner(pid=4242, start_ticks="777", host=socket.gethostname())
LABELS = {LABEL_MANAGED: "1", LABEL_OWNER_PID: "4242", LABEL_OWNER_START: "777", LABEL_RUN: "r"}
STALL_S = 900.0  # five times the reaper's old deadline (180 s)


def api_error(status: int, explanation: str) -> docker.errors.APIError:
    """Return docker-py's error for an engine answer of `status`."""
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("refused", response=response, explanation=explanation)


def mapped(cause: Exception) -> EngineError:
    """Return `cause` as the Docker edge maps it."""
    try:
        with docker_errors("removing a sandbox container"):
            raise cause
    except EngineError as exc:
        return exc
    raise AssertionError("not mapped")  # pragma: no cover


STALLS = [
    requests.exceptions.ReadTimeout("UnixHTTPConnectionPool: Read timed out. (read timeout=120)"),
    api_error(500, "get state: context deadline exceeded"),
    requests.exceptions.ConnectionError("Connection refused"),
]
# What a stalled engine answers (no refused connection): the owner waits through these.
ENGINE_STALLS = STALLS[:2]


class FakeEngine:
    """A Docker API holding one run's containers, volume and network.

    Until the clock reaches `recovers_at`, every call fails in turn with each of `stalls`
    (a read timeout costs the caller `docker_edge.API_TIMEOUT_S`); `refusal` fails every call.
    """

    def __init__(self, clock: FakeClock, recovers_at: float = 0.0) -> None:
        """Hold two containers, a volume and a network of the owner."""
        self.clock = clock
        self.recovers_at = recovers_at
        self.refusal: Exception | None = None
        self.stalls: list[Exception] = list(STALLS)
        self.calls = 0
        self.held = {
            "container": [
                {"Id": name, "Names": [f"/{name}"], "Labels": LABELS} for name in ("c1", "c2")
            ],
            "volume": [{"Name": "v1", "Labels": LABELS}],
            "network": [{"Id": "n1", "Name": "n1", "Labels": LABELS}],
        }

    def _answer(self) -> None:
        self.calls += 1
        if self.refusal is not None:
            raise self.refusal
        if self.clock.now < self.recovers_at:
            failure = self.stalls[self.calls % len(self.stalls)]
            if isinstance(failure, requests.exceptions.ReadTimeout):
                self.clock.now += docker_edge.API_TIMEOUT_S
            raise failure

    def _remove(self, kind: str, key: str, value: str) -> None:
        self._answer()
        self.held[kind] = [item for item in self.held[kind] if item[key] != value]

    def containers(self, **_: object) -> list[dict[str, object]]:
        """List the containers."""
        self._answer()
        return list(self.held["container"])

    def volumes(self, **_: object) -> dict[str, object]:
        """List the volumes."""
        self._answer()
        return {"Volumes": list(self.held["volume"])}

    def networks(self, **_: object) -> list[dict[str, object]]:
        """List the networks."""
        self._answer()
        return list(self.held["network"])

    def remove_container(self, container_id: str, **_: object) -> None:
        """Remove a container."""
        self._remove("container", "Id", container_id)

    def remove_volume(self, name: str, **_: object) -> None:
        """Remove a volume."""
        self._remove("volume", "Name", name)

    def remove_network(self, network_id: str) -> None:
        """Remove a network."""
        self._remove("network", "Id", network_id)

    def is_empty(self) -> bool:
        """Tell whether every object is gone."""
        return not any(self.held.values())


@pytest.fixture
def clock() -> FakeClock:
    """Return a fake clock at zero."""
    return FakeClock()


@pytest.fixture
def fake_engine(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    """Put a fake engine in place of the Docker client of the sweep and the volumes."""
    fake = FakeEngine(clock)
    for module in (_sweep, _workspace):
        monkeypatch.setattr(module, "client", lambda: SimpleNamespace(api=fake))
    return fake


@pytest.fixture
def crashed_run(tmp_path: Path) -> state.RunState:
    """Return a run whose owner died with its journal open."""
    run = state.RunState(run_id="r", path=tmp_path / "r")
    run.path.mkdir()
    run.record_intent("network", "n1", LABELS)
    return run


def test_a_reaper_outlasts_an_engine_that_times_out_for_minutes_and_removes_everything(
    clock, fake_engine, crashed_run
):
    """Read timeouts, deadline errors and refused connections for 900 s: then all goes.

    Seen failing with `PATIENCE_S` set back to the old deadline (180 s): the reaper stopped
    with every object left.
    """
    fake_engine.recovers_at = STALL_S
    lines: list[str] = []
    _reaper.reap(OWNER, [crashed_run.journal_path], lines.append, clock=clock, sleep=clock.sleep)
    assert fake_engine.is_empty()
    assert clock.now >= STALL_S
    assert not crashed_run.is_journal_open()
    assert "removed network n1" in lines
    assert lines[-1] == f"owner {OWNER.pid} gone: removed 4 object(s), closed 1 journal(s)"


def test_the_reaper_backs_off_while_the_engine_is_away(clock, fake_engine):
    """Refused connections cost nothing each: the passes thin out instead of hammering."""
    fake_engine.recovers_at = float("inf")
    fake_engine.stalls = [requests.exceptions.ConnectionError("Connection refused")]
    passes: list[float] = []

    def sweep() -> tuple[list[str], bool]:
        passes.append(clock.now)
        return _reaper._remove_owned(OWNER, lambda _line: None)

    with pytest.raises(EngineError, match="still busy or unreachable"):
        _reaper.sweep_until_settled(sweep, must_settle=True, clock=clock, sleep=clock.sleep)
    gaps = [later - earlier for earlier, later in itertools.pairwise(passes)]
    assert max(gaps) <= _patience.BACKOFF_MAX_S
    assert len(passes) < 2 * _patience.PATIENCE_S / _patience.BACKOFF_MAX_S


def test_a_reaper_stops_at_its_ceiling_and_leaves_the_journal_open(clock, fake_engine, crashed_run):
    """An engine that never answers keeps the reaper for `PATIENCE_S`, not forever."""
    fake_engine.recovers_at = float("inf")
    with pytest.raises(EngineError, match="gc"):
        _reaper.reap(OWNER, [crashed_run.journal_path], print, clock=clock, sleep=clock.sleep)
    assert (
        _patience.PATIENCE_S <= clock.now < _patience.PATIENCE_S + 4 * docker_edge.API_TIMEOUT_S
    )  # one pass more
    assert not fake_engine.is_empty()
    assert crashed_run.is_journal_open()  # `gc` closes it once it removed the rest


def test_a_reaper_stops_at_once_on_a_permanent_refusal_and_says_so(
    fake_engine, crashed_run, tmp_path, monkeypatch
):
    """An authorization plugin's denial is not retried: the reaper logs it and exits 1.

    The owner is a child that has exited; the fake engine lists its objects whatever the
    filter (the objects' owner pid is another one).
    """
    fake_engine.refusal = api_error(403, "authorization denied by plugin policy")
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    line = f'{{"journal": "{crashed_run.journal_path}"}}\n'.encode()
    lines = iter([line, b""])
    monkeypatch.setattr(
        _reaper.sys, "stdin", SimpleNamespace(buffer=SimpleNamespace(readline=lambda: next(lines)))
    )
    log = tmp_path / "reaper.log"
    argv = ["--owner-pid", str(dead), "--owner-start", OWNER.start_ticks]
    argv += ["--owner-host", OWNER.host, "--log", str(log)]
    assert _reaper.main(argv) == 1
    assert fake_engine.calls == 1
    assert "authorization denied by plugin policy" in log.read_text()
    assert "removing its objects failed" in log.read_text()
    assert crashed_run.is_journal_open()


@pytest.mark.parametrize(
    ("cause", "is_transient"),
    [
        (requests.exceptions.ReadTimeout("read timed out"), True),
        (requests.exceptions.ConnectionError("refused"), True),
        (api_error(500, "get state: context deadline exceeded"), True),
        (api_error(409, "removal of container c1 is already in progress"), True),
        (api_error(403, "error while removing network: n1 has active endpoints"), True),
        (api_error(403, "authorization denied by plugin policy"), False),
        (api_error(400, "invalid filter"), False),
        (docker.errors.DockerException("Error while fetching server API version"), False),
    ],
)
def test_engine_errors_are_told_transient_or_permanent(cause, is_transient):
    """Unreachable, timing out and busy are worth repeating; other refusals are not."""
    assert docker_edge.is_transient(mapped(cause)) is is_transient


def test_an_engine_error_of_our_own_is_permanent():
    """An error raised by our code (no engine answer under it) is not repeated."""
    assert not docker_edge.is_transient(EngineError("the image is missing"))


def test_the_clients_failure_to_reach_the_engine_is_transient():
    """`docker.from_env` wraps an unreachable socket in a DockerException: still transient."""
    wrapped = docker.errors.DockerException("Error while fetching server API version")
    wrapped.__cause__ = requests.exceptions.ConnectionError("No such file or directory")
    assert docker_edge.is_transient(mapped(wrapped))


def failing(errors: list[EngineError]):
    """Return a `remove_run` that raises each of `errors` in turn, then succeeds; its calls."""
    calls: list[str] = []

    def remove_run(run_id: str) -> None:
        calls.append(run_id)
        if errors:
            raise errors.pop(0)

    return remove_run, calls


async def remove_patiently(clock: FakeClock) -> None:
    """Run the owner's removal of run `r` on the fake clock."""

    async def sleep(seconds: float) -> None:
        clock.sleep(seconds)

    await _lifecycle.remove_patiently("r", clock=clock, sleep=sleep)


@pytest.mark.anyio
async def test_the_owners_removal_is_repeated_through_a_stall_until_it_succeeds(clock, monkeypatch):
    """Transient errors for longer than the old deadline: the removal is repeated until done."""
    calls: list[str] = []

    def remove_run(run_id: str) -> None:
        calls.append(run_id)
        if clock.now < STALL_S:
            raise mapped(ENGINE_STALLS[len(calls) % len(ENGINE_STALLS)])

    monkeypatch.setattr(_containers, "remove_run", remove_run)
    await remove_patiently(clock)
    assert clock.now >= STALL_S
    assert len(calls) < STALL_S / _patience.BACKOFF_MAX_S * 2  # backed off, not hammering


@pytest.mark.anyio
async def test_the_owners_removal_raises_a_permanent_error_at_once(clock, monkeypatch):
    """A refusal that will not pass is not repeated."""
    remove_run, calls = failing([mapped(api_error(400, "invalid filter"))])
    monkeypatch.setattr(_containers, "remove_run", remove_run)
    with pytest.raises(EngineError, match="invalid filter"):
        await remove_patiently(clock)
    assert calls == ["r"]


@pytest.mark.anyio
async def test_the_owners_removal_fails_at_once_when_the_engine_refuses_the_connection(
    clock, monkeypatch
):
    """A stopped engine is not waited for by the owner: its reaper keeps trying instead.

    Seen failing with the refused connection counted as a stall: `call` through a cut relay
    to the engine waited silently instead of exiting 1 (tests/integration/test_faults.py).
    """
    remove_run, calls = failing([mapped(requests.exceptions.ConnectionError("refused"))])
    monkeypatch.setattr(_containers, "remove_run", remove_run)
    with pytest.raises(EngineError, match="unreachable"):
        await remove_patiently(clock)
    assert calls == ["r"]
    assert clock.now == 0


@pytest.mark.parametrize(
    ("cause", "unreachable"),
    [
        (requests.exceptions.ConnectionError("Connection refused"), True),
        (requests.exceptions.ConnectTimeout("connect timed out"), False),
        (requests.exceptions.ReadTimeout("read timed out"), False),
        (api_error(500, "get state: context deadline exceeded"), False),
        (api_error(409, "removal of container c1 is already in progress"), False),
    ],
)
def test_a_refused_connection_is_told_apart_from_a_stall(cause, unreachable):
    """Only an engine that refuses the connection is unreachable; timeouts and 5xx are stalls."""
    assert docker_edge.is_unreachable(mapped(cause)) is unreachable


@pytest.mark.anyio
async def test_the_owners_removal_stops_at_the_ceiling(clock, monkeypatch):
    """An engine that never answers is given up on after `PATIENCE_S`."""

    def remove_run(_run_id: str) -> None:
        raise mapped(STALLS[0])

    monkeypatch.setattr(_containers, "remove_run", remove_run)
    with pytest.raises(EngineError, match="unreachable"):
        await remove_patiently(clock)
    assert _patience.PATIENCE_S <= clock.now < _patience.PATIENCE_S + _patience.BACKOFF_MAX_S


@pytest.mark.anyio
async def test_the_owners_teardown_outlasts_a_stall(crashed_run, monkeypatch):
    """Removals that time out are repeated: the run ends torn down, its journal closed.

    Seen failing with the teardown before this change: the first timeout failed it.
    """
    monkeypatch.setattr(_patience, "BACKOFF_FIRST_S", 0.0)  # no real waiting in a unit test
    remove_run, calls = failing([mapped(cause) for cause in ENGINE_STALLS])
    monkeypatch.setattr(_containers, "remove_run", remove_run)
    await _lifecycle.teardown(crashed_run, "finished")
    assert len(calls) == len(ENGINE_STALLS) + 1
    assert crashed_run.read_meta()["status"] == "finished"
    assert not crashed_run.is_journal_open()


@pytest.mark.anyio
async def test_the_owners_teardown_reports_a_permanent_refusal_at_once(crashed_run, monkeypatch):
    """A denied removal fails the teardown on the first call, naming `gc`."""
    remove_run, calls = failing([mapped(api_error(403, "authorization denied by plugin policy"))])
    monkeypatch.setattr(_containers, "remove_run", remove_run)
    with pytest.raises(EngineError, match="gc"):
        await _lifecycle.teardown(crashed_run, "finished")
    assert len(calls) == 1
    assert "teardown failed" in str(crashed_run.read_meta()["status"])
    assert crashed_run.is_journal_open()
