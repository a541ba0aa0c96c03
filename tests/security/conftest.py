"""The attack suite's set-up: one hostile Expert started the way the product starts it.

A package fixture writes a test Expert (the hostile server as two skills, `hostile` and
`decoy`, each with its own secret), plants canary variables in this process's environment,
and starts it through `perstack_sandbox.launch.open_expert` (real engine, real proxy, real
gateway). Every attack then runs as code inside the `hostile` skill, once under each
isolation (runc, then gVisor): the fixture is parametrised, so every test runs in both.

Without an engine these tests skip, unless `CI` is set, where a missing engine fails them.
"""

from __future__ import annotations

import functools
import os
import secrets
from typing import TYPE_CHECKING

import docker
import pytest
from support import (
    CLI_ENV_FILE,
    EXPERT,
    UNREACHABLE,
    Canaries,
    Hostile,
    Listener,
    UdpEcho,
    environment_restored,
    host_addresses,
    host_bridge_addresses,
    quiet,
    registry_host,
    write_expert,
)

from perstack_sandbox import state
from perstack_sandbox.isolation import ISOLATIONS
from perstack_sandbox.launch import LaunchOptions, open_expert

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


@functools.cache
def _engine_answers() -> bool:
    try:
        return bool(docker.from_env(timeout=10).ping())
    except docker.errors.DockerException:
        return False


def require_engine() -> None:
    """Skip without an engine, unless under CI, where a missing engine is a failure."""
    if _engine_answers():
        return
    if os.environ.get("CI"):
        pytest.fail("CI is set but no Docker engine answers")
    pytest.skip("no Docker engine (and CI is unset)")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run async tests and the session's sandbox on asyncio (the orchestrator's backend)."""
    return "asyncio"


@pytest.fixture(scope="package")
def canaries() -> Iterator[Canaries]:
    """Plant canaries in this process's environment while the attack suite runs."""
    planted = Canaries.fresh()
    saved = {name: os.environ.get(name) for name in planted.values}
    os.environ.update(planted.values)
    yield planted
    environment_restored(saved)


@pytest.fixture(scope="package")
def skill_secrets() -> Iterator[dict[str, str]]:
    """Give each skill its own random secret, from the orchestrator's environment."""
    values = {
        "HOSTILE_TOKEN": f"hostile-{secrets.token_hex(12)}",
        "DECOY_SECRET": f"decoy-{secrets.token_hex(12)}",
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    yield values
    environment_restored(saved)


@pytest.fixture(scope="package")
def security_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the attack suite's runs in their own state directory."""
    saved = {state.STATE_ENV: os.environ.get(state.STATE_ENV)}
    os.environ[state.STATE_ENV] = str(tmp_path_factory.mktemp("security-state"))
    yield
    environment_restored(saved)


@pytest.fixture(scope="package", params=ISOLATIONS)
async def hostile(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    canaries: Canaries,
    skill_secrets: dict[str, str],
    security_state: None,
) -> AsyncIterator[Hostile]:
    """Start the hostile Expert under one isolation; yield it; tear it down after its tests.

    pytest groups the tests by isolation, so one sandbox runs at a time. A missing gVisor is
    a failure (the error says how to install it), never a skip.
    """
    del security_state
    require_engine()
    isolation = request.param
    folder = tmp_path_factory.mktemp("hostile-expert")
    config, env_canaries = write_expert(folder, registry_host())
    workspace = tmp_path_factory.mktemp("hostile-workspace")
    workspace.chmod(0o755)  # an ordinary folder: skills write it through the workspace layer
    options = LaunchOptions(
        config_path=config,
        expert=EXPERT,
        env_paths=(folder / CLI_ENV_FILE,),
        workspace=workspace,
        prefix_tools=True,
        progress=quiet,
        isolation=isolation,
    )
    async with open_expert(options) as gateway:
        run = state.latest_run()
        assert run is not None
        yield Hostile(
            gateway, run, skill_secrets, canaries, workspace, config, isolation, env_canaries
        )


@pytest.fixture(scope="package")
def host_listeners() -> Iterator[list[Listener]]:
    """Listen on the host: all addresses, and each Docker bridge's host address."""
    listeners = [Listener("0.0.0.0")]  # noqa: S104 - the attack target: "anything on the host"
    listeners += [Listener(address) for address in host_bridge_addresses()]
    yield listeners
    for listener in listeners:
        listener.close()


@pytest.fixture(scope="package")
def udp_echo() -> Iterator[UdpEcho]:
    """Echo UDP on every host address (a listener of ours)."""
    echo = UdpEcho()
    yield echo
    echo.close()


@pytest.fixture(scope="module")
async def no_route_out(hostile: Hostile, host_listeners: list[Listener]) -> dict[str, str]:
    """Guard of every direct-egress module: the sandbox reaches no listener of ours on the host.

    It aims only at this machine (the host's own addresses and the sandbox's gateway), so a
    broken protection fails here, before any test aims at an outside address.
    """
    everywhere = host_listeners[0]
    calls = {
        f"{address}:{everywhere.port}": (address, everywhere.port) for address in host_addresses()
    }
    calls |= {f"{lis.address}:{lis.port}": (lis.address, lis.port) for lis in host_listeners[1:]}
    code = (
        f"gw = default_gateway()\ncalls = {calls!r}\n"
        f"if gw: calls['gateway ' + gw] = (gw, {everywhere.port})\n"
        "emit(in_parallel({k: (tcp_connect, *v) for k, v in calls.items()}))"
    )
    outcomes: dict[str, str] = await hostile.probe(code)
    reached = {target: seen for target, seen in outcomes.items() if seen not in UNREACHABLE}
    accepted = [peer for listener in host_listeners for peer in listener.accepted]
    if reached or accepted:
        pytest.fail(f"GUARD: the sandbox reached the host: {reached} {accepted}; stopping here")
    return outcomes
