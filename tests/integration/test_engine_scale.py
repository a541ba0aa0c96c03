"""Many sandboxes on one engine: concurrent first starts, small subnets, clients that close.

These are the heavy tests (tens of sandboxes on two cores): each is bounded by a deadline and
removes what it made even when it fails; the owners' reapers back that up. Assertions are
about this test's own runs and networks, never about global counts.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import select
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import docker
import pytest
from engine_support import objects_of_run, wait_until

from perstack_sandbox import engine, state
from perstack_sandbox.engine import _containers, _egress, _subnets
from perstack_sandbox.errors import EngineError
from perstack_sandbox.plan import Limits

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import scale

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("state_home")]

FIRST_STARTS = 32
STARTS_DEADLINE_S = 600  # 32 sandboxes (64 containers) on 2 shared cores
POOL_NETWORKS = 48  # Docker's default address pools hold about 31 networks
CLOSED_BY_SDK = 20
LIST_TOOLS = 40
CLEAN_DEADLINE_S = 30
# Waits for "go" on stdin (so that every start happens at once), starts a sandbox, prints its
# run id, and holds it until stdin closes.
FIRST_START = r"""
import sys, anyio, anyio.to_thread
from perstack_sandbox import state
from perstack_sandbox.engine import open_sandbox
from perstack_sandbox.plan import SandboxPlan

async def main():
    plan = SandboxPlan(expert="first-start", config_dir=sys.argv[2], skills=())
    print("loaded", flush=True)
    sys.stdin.readline()
    run = state.create_run(plan.expert)
    async with open_sandbox(plan, image=sys.argv[1], run=run):
        print(run.run_id, flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)

anyio.run(main)
"""


def read_line(child: subprocess.Popen[str], deadline_s: float) -> str:
    """Return the child's next stdout line, or '' when none comes in time."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], deadline_s)
    return child.stdout.readline().strip() if ready else ""


def stderr_tail(child: subprocess.Popen[str]) -> str:
    """Return the end of a failed child's stderr (it has exited or is killed first)."""
    if child.poll() is None:
        child.kill()
    _, err = child.communicate(timeout=STARTS_DEADLINE_S)
    return err[-800:]


def remove_network_when_unused(api: docker.APIClient, name: str) -> None:
    """Remove this test's own egress network once its proxies are gone (bounded)."""

    def removed() -> bool:
        for network in api.networks(names=[name]):
            try:
                api.remove_network(network["Id"])
            except docker.errors.APIError:
                return False
        return True

    assert wait_until(removed, CLEAN_DEADLINE_S, interval_s=0.5)


def test_thirty_two_simultaneous_first_starts_all_succeed_on_one_egress_network(
    empty_expert_image, docker_api, tmp_path, monkeypatch
):
    """32 processes start at once with no egress network: one is made, every start succeeds.

    The network has a name of this test's own, so the shared one is never touched. Seen
    failing without the engine-wide lock (`_engine_lock` yielding True at once), three runs:
    31, 29 and 19 of 32 starts failed with "network ... is ambiguous (2 matches found on
    name)".
    """
    name = f"itest-egress-{secrets.token_hex(4)}"
    monkeypatch.setenv(_egress.EGRESS_NETWORK_ENV, name)
    expert = tmp_path / "expert"
    expert.mkdir()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_START, empty_expert_image, str(expert)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for _ in range(FIRST_STARTS)
    ]
    try:
        assert all(read_line(c, STARTS_DEADLINE_S) == "loaded" for c in children)
        for child in children:  # every child is past its imports: go, all at once
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        run_ids = [read_line(c, STARTS_DEADLINE_S) for c in children]
        failed = [child for child, run_id in zip(children, run_ids, strict=True) if not run_id]
        assert not failed, f"{len(failed)} failed: {stderr_tail(failed[0])}"
        egress = [n for n in docker_api.networks(names=[name]) if n["Name"] == name]
        assert len(egress) == 1
        attached = docker_api.inspect_network(egress[0]["Id"])["Containers"]
        assert len(attached) == FIRST_STARTS  # every proxy, on that one network
        assert not docker_api.containers(all=True, filters={"name": f"{name}-lock"})
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
        assert all(c.wait(timeout=STARTS_DEADLINE_S) == 0 for c in children)
        assert all(objects_of_run(docker_api, run_id) == [] for run_id in run_ids)
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()  # its teardown (or its reaper) removes its sandbox
        for child in children:
            child.wait(timeout=STARTS_DEADLINE_S)
        remove_network_when_unused(docker_api, name)


def network_spec(run_id: str, tmp_path: Path) -> _containers.SandboxSpec:
    """Return a spec that is enough to create one run's internal network."""
    run = state.RunState(run_id=run_id, path=tmp_path / run_id)
    run.path.mkdir()
    return _containers.SandboxSpec(run_id, "subnets", "", Limits(), "", None, "", run=run)


def subnet_of(api: docker.APIClient, network_id: str) -> ipaddress.IPv4Network:
    """Return the IPv4 subnet the engine gave a network."""
    config = api.inspect_network(network_id)["IPAM"]["Config"]
    return ipaddress.IPv4Network(config[0]["Subnet"])


def test_more_sandbox_networks_than_the_default_pools_hold_get_small_distinct_subnets(
    docker_api, tmp_path
):
    """48 networks made at once (Docker's pools hold ~31) each get their own /28 of the range.

    Not checked by hand against the default pools: exhausting them would break every other
    sandbox on this shared engine (the issue measured 29 of 32 starts there).
    """
    specs = [network_spec(f"subnets-{secrets.token_hex(4)}", tmp_path) for _ in range(48)]
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            networks = list(pool.map(_containers.create_internal_network, specs))
        subnets = [subnet_of(docker_api, network) for network in networks]
        configured = _subnets.configured_pool()
        assert len(set(subnets)) == POOL_NETWORKS
        assert all(s.prefixlen == configured.prefix for s in subnets)
        assert all(s.subnet_of(configured.network) for s in subnets)
        assert not any(s.overlaps(route) for s in subnets for route in _subnets.host_routes())
        assert all(len(spec.run.journal()) == 1 for spec in specs if spec.run is not None)
    finally:
        for spec in specs:
            _containers.remove_run(spec.run_id)


def test_two_starts_that_pick_the_same_subnet_both_succeed_and_a_full_range_is_an_error(
    docker_api, tmp_path, monkeypatch
):
    """Both pick the first /28 of a two-subnet range; the engine refuses one, which re-picks.

    Both are made blind to existing networks, so they must collide. A third start finds the
    range full: a clear error naming the setting. Seen failing without the retry (the overlap
    error re-raised): one of the two starts failed with "Pool overlaps".
    """
    monkeypatch.setenv(_subnets.POOL_ENV, f"10.214.{secrets.randbelow(256)}.0/27")
    monkeypatch.setattr(_subnets.secrets, "randbelow", lambda _n: 0)
    monkeypatch.setattr(_containers, "_engine_subnets", lambda _api: [])
    specs = [network_spec(f"collide-{secrets.token_hex(4)}", tmp_path) for _ in range(3)]
    barrier = threading.Barrier(2)

    def create(spec: _containers.SandboxSpec) -> str:
        barrier.wait()
        return _containers.create_internal_network(spec)

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            first, second = pool.map(create, specs[:2])
        assert {subnet_of(docker_api, first), subnet_of(docker_api, second)} == set(
            _subnets.configured_pool().network.subnets(new_prefix=28)
        )
        with pytest.raises(EngineError, match=_subnets.POOL_ENV):
            _containers.create_internal_network(specs[2])
    finally:
        for spec in specs:
            _containers.remove_run(spec.run_id)


def run_fleet(size: int, tmp_path: Path) -> scale.Fleet:
    """Run the benchmark's fleet of `size` in this test's state dir; remove what it left."""
    scale.ensure_image()
    state_dir = tmp_path / "fleet"
    log = tmp_path / "fleet.log"
    try:
        with log.open("w") as errlog:
            fleet = anyio.run(scale.run_fleet, size, state_dir, errlog)
    finally:
        for run in scale._runs(state_dir):
            engine.take_down(run.run_id)  # only when it failed is there anything to take down
    for failure in fleet.failures:
        print(failure)  # noqa: T201 - shown by pytest when the test fails
    print(log.read_text()[-3000:])  # noqa: T201
    return fleet


@pytest.mark.usefixtures("docker_api")
def test_twenty_runs_closed_by_the_sdk_stdio_client_leave_nothing_within_30_s(tmp_path):
    """20 `run` processes, closed the SDK's way (stdin, SIGTERM, SIGKILL), leave 0 objects.

    No `gc` runs. Seen failing on the code before the reaper: 20 networks and one run's
    containers were still there a minute later, and every run's state said "running".
    """
    fleet = run_fleet(CLOSED_BY_SDK, tmp_path)
    assert fleet.listed == CLOSED_BY_SDK, fleet.failures
    assert len(fleet.run_ids) == CLOSED_BY_SDK
    assert fleet.leftovers == 0
    assert fleet.clean_after_s <= CLEAN_DEADLINE_S
    runs = list(scale._runs(tmp_path / "fleet"))
    # The reapers close the journals of runs they cleaned once nothing more appears.
    assert wait_until(lambda: not any(run.is_journal_open() for run in runs), CLEAN_DEADLINE_S)
    assert all(run.read_meta()["status"] != "running" for run in runs)


@pytest.mark.usefixtures("docker_api")
def test_forty_sandboxes_of_the_example_expert_all_list_their_tools(tmp_path):
    """40 concurrent sandboxes of examples/perstack.toml all list tools and call echo.

    Seen failing before start slots (`_gate`), with other work on the host (load average
    about 40): 12 of 40 listed; the other proxies were not ready within 20 s, or their
    skills missed the 60 s handshake.
    """
    fleet = run_fleet(LIST_TOOLS, tmp_path)
    assert fleet.listed == LIST_TOOLS, fleet.failures
    assert len(fleet.echo_ms) == LIST_TOOLS * scale.ECHO_CALLS
    assert fleet.leftovers == 0
