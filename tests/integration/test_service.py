"""`serve` through its real socket: runs created, used over MCP, audited, deleted, drained.

Each test starts its own `perstack-sandbox serve` process on a Unix socket in its tmp folder,
with its own state directory, and talks to it with httpx2 and the official MCP SDK client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import httpx2
import pytest
from engine_support import reaper_of, wait_until
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from skills_support import (
    DEADLINE_S,
    ROOT,
    ensure_image,
    expert_toml,
    labelled_containers,
    require_engine,
    run_cli,
    stdlib_skill,
    text_of,
    unique,
    write_expert,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

pytestmark = [pytest.mark.docker, pytest.mark.anyio]
LISTEN_DEADLINE_S = 60  # the start-up sweep lists the engine's objects first
CREATE_TIMEOUT_S = 300  # the image is built beforehand; a start on 2 busy cores
POLL_S = 0.2  # how often a test reads /metrics while it waits for the pool


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio."""
    return "asyncio"


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    """Start `serve` on a socket in tmp_path (own state dir); stop it with SIGTERM after."""
    require_engine()
    monkeypatch.setenv("PERSTACK_SANDBOX_STATE", str(tmp_path / "state"))
    service = Service(tmp_path / "s.sock")
    service.start()
    try:
        yield service
    finally:
        service.stop()


class Service:
    """One `serve` process on a Unix socket."""

    def __init__(self, socket_path: Path, *flags: str, listen: str = "") -> None:
        """Remember where it listens (`listen`, else the socket) and its extra `flags`."""
        self.socket_path = socket_path
        self.flags = flags
        self.listen = listen or f"unix:{socket_path}"
        self.process: subprocess.Popen[str] | None = None
        self.stderr_path = socket_path.with_suffix(".stderr")

    def start(self) -> None:
        """Start it and wait until it announces its socket."""
        command = [sys.executable, "-m", "perstack_sandbox", "serve"]
        command += ["--listen", self.listen, *self.flags]
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(command, stderr=stderr, cwd=ROOT, text=True)
        announced = wait_until(
            lambda: (
                "listening on" in self.stderr_path.read_text()
                or self.process is None
                or self.process.poll() is not None
            ),
            LISTEN_DEADLINE_S,
        )
        assert announced, self.stderr_path.read_text()
        assert self.process.poll() is None, self.stderr_path.read_text()

    def stop(self) -> int | None:
        """SIGTERM it (a drain) and return its exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=DEADLINE_S)

    def http(self, token: str | None = None) -> httpx2.AsyncClient:
        """Return a client of the API over the socket."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx2.AsyncHTTPTransport(uds=str(self.socket_path))
        return httpx2.AsyncClient(
            transport=transport, base_url="http://localhost", headers=headers, timeout=60
        )

    async def create(self, body: dict[str, object]) -> httpx2.Response:
        """POST /v1/runs."""
        async with self.http() as http:
            return await http.post("/v1/runs", json=body, timeout=CREATE_TIMEOUT_S)

    @asynccontextmanager
    async def mcp(self, url: str, token: str) -> AsyncIterator[Client]:
        """Yield the MCP SDK's client on a run's endpoint with `token`."""
        async with (
            self.http(token) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            yield client


def calc_expert(tmp_path: Path, *extra: str) -> tuple[Path, str]:
    """Write an Expert with the stdlib skill (and `extra` skill tables); build its image."""
    expert = unique("serve")
    config = write_expert(tmp_path / "expert", expert_toml(expert, stdlib_skill("calc"), *extra))
    ensure_image(config, expert)
    return config, expert


async def test_a_run_is_created_listed_called_audited_and_deleted_through_the_socket(
    served: Service, tmp_path: Path
) -> None:
    """POST, GET, a tool call with the MCP SDK on mcp.url, audit, metrics, DELETE: nothing left."""
    config, expert = calc_expert(tmp_path)
    with anyio.fail_after(CREATE_TIMEOUT_S):
        created = await served.create({"config_path": str(config), "expert": expert})
        assert created.status_code == 201, created.text
        run = created.json()
        assert run["tools"] > 0
        async with served.http() as http:
            listed = (await http.get("/v1/runs")).json()["runs"]
            assert [item["id"] for item in listed] == [run["id"]]
            shown = (await http.get(f"/v1/runs/{run['id']}")).json()
            assert shown["status"] == "running"
            assert shown["skills"] == ["calc"]
        async with served.mcp(run["mcp"]["url"], run["mcp"]["token"]) as client:
            echoed = await client.call_tool("echo", {"text": "through the service"})
        assert text_of(echoed) == "through the service"
        async with served.http() as http:
            audit = (await http.get(f"/v1/runs/{run['id']}/audit")).json()
            assert [call["tool"] for call in audit["calls"]] == ["echo"]
            metrics = (await http.get("/metrics")).text
            assert 'perstack_sandbox_tool_calls_total{outcome="ok",skill="calc"} 1.0' in metrics
            assert 'perstack_sandbox_runs{state="running"} 1.0' in metrics
            assert labelled_containers(expert) != []
            deleted = await http.delete(f"/v1/runs/{run['id']}")
            assert deleted.status_code == 204
            assert labelled_containers(expert) == []  # DELETE returned after the teardown
            assert (await http.get(f"/v1/runs/{run['id']}")).status_code == 404


async def test_a_runs_token_does_not_open_another_run(served: Service, tmp_path: Path) -> None:
    """Run A's token is refused (401) on run B's endpoint; each token opens its own run.

    Seen failing by hand: with `_RunEndpoint` checking only that the bearer token belongs to
    some run (`any(run.opens_with(token) for run in runs.all())` in place of its own run's
    `opens_with`), B's endpoint answered A's initialize with 200 (`assert 200 == 401`).
    """
    config, expert = calc_expert(tmp_path)
    with anyio.fail_after(CREATE_TIMEOUT_S * 2):
        first = (await served.create({"config_path": str(config), "expert": expert})).json()
        second = (await served.create({"config_path": str(config), "expert": expert})).json()
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "probe", "version": "1"},
            },
        }
        headers = {"Accept": "application/json, text/event-stream"}
        async with served.http(first["mcp"]["token"]) as http:
            refused = await http.post(second["mcp"]["url"], json=initialize, headers=headers)
            own = await http.post(first["mcp"]["url"], json=initialize, headers=headers)
        assert refused.status_code == 401
        assert own.status_code == 200
        async with served.mcp(second["mcp"]["url"], second["mcp"]["token"]) as client:
            assert (await client.list_tools()).tools


async def test_bad_input_gets_400_with_the_message_the_cli_prints(
    served: Service, tmp_path: Path
) -> None:
    """A missing variable and a bad config: 400 whose lines are the CLI's stderr lines."""
    config, expert = calc_expert(tmp_path, stdlib_skill("keyed", requiredEnv=["SERVE_TEST_KEY"]))
    env = {key: value for key, value in os.environ.items() if key != "SERVE_TEST_KEY"}
    cli = run_cli("tools", expert, "-c", str(config), env=env)
    assert cli.returncode == 2
    with anyio.fail_after(DEADLINE_S):
        missing = await served.create({"config_path": str(config), "expert": expert})
    assert missing.status_code == 400
    assert "SERVE_TEST_KEY" in missing.json()["error"]
    assert missing.json()["lines"] == cli.stderr.splitlines()
    bad = tmp_path / "bad" / "perstack.toml"
    bad.parent.mkdir()
    bad.write_text('[experts."x"]\nversion = 3\n')
    cli = run_cli("tools", "x", "-c", str(bad))
    assert cli.returncode == 2
    with anyio.fail_after(DEADLINE_S):
        invalid = await served.create({"config_path": str(bad), "expert": "x"})
        as_text = await served.create({"config": bad.read_text(), "expert": "x"})
    assert invalid.status_code == 400
    assert invalid.json()["lines"] == cli.stderr.splitlines()
    assert as_text.json()["lines"] == cli.stderr.splitlines()


async def test_tools_with_server_goes_through_the_service(served: Service, tmp_path: Path) -> None:
    """`tools --server unix:PATH` lists the Expert's tools from a run of the service."""
    config, expert = calc_expert(tmp_path)
    done = await anyio.to_thread.run_sync(
        lambda: run_cli(
            "tools", expert, "-c", str(config), "--server", f"unix:{served.socket_path}"
        )
    )
    assert done.returncode == 0, done.stderr
    assert "echo" in done.stdout.split()
    assert labelled_containers(expert) == []  # the command deleted its run


async def test_sigterm_drains_every_run_and_exits_0(served: Service, tmp_path: Path) -> None:
    """SIGTERM with a run open: the run is torn down, the socket removed, and the exit is 0."""
    config, expert = calc_expert(tmp_path)
    with anyio.fail_after(CREATE_TIMEOUT_S):
        created = await served.create({"config_path": str(config), "expert": expert})
    assert created.status_code == 201
    assert labelled_containers(expert) != []
    code = await anyio.to_thread.run_sync(served.stop)
    assert code == 0, served.stderr_path.read_text()
    assert labelled_containers(expert) == []
    assert not served.socket_path.exists()


def kill_with_its_reaper(service: Service) -> None:
    """SIGKILL the service's reaper (it would clean up at once), then the service."""
    assert service.process is not None
    reaper = reaper_of(service.process.pid)
    assert reaper is not None
    os.kill(reaper, signal.SIGKILL)
    service.process.send_signal(signal.SIGKILL)
    service.process.wait(timeout=DEADLINE_S)


async def test_a_sigkilled_services_objects_are_removed_by_the_next_start(
    served: Service, tmp_path: Path
) -> None:
    """SIGKILL (its reaper killed too) leaves a run's objects; the next `serve` removes them."""
    config, expert = calc_expert(tmp_path)
    with anyio.fail_after(CREATE_TIMEOUT_S):
        created = await served.create({"config_path": str(config), "expert": expert})
    assert created.status_code == 201
    kill_with_its_reaper(served)
    assert labelled_containers(expert) != []  # no teardown ran
    assert served.socket_path.exists()  # a stale socket: the next start must replace it
    await anyio.to_thread.run_sync(served.start)
    assert labelled_containers(expert) == []  # removed before it listened
    stderr = served.stderr_path.read_text()
    assert "left by a process that is gone" in stderr
    async with served.http() as http:
        assert (await http.get("/healthz")).json()["status"] == "ok"
        assert (await http.get("/v1/runs")).json() == {"runs": []}


async def test_run_with_server_bridges_stdio_to_the_services_run(
    served: Service, tmp_path: Path
) -> None:
    """An MCP client on `run --server`'s stdio calls a tool of a run the service holds."""
    config, expert = calc_expert(tmp_path)
    command = ["-m", "perstack_sandbox", "run", expert, "-c", str(config)]
    command += ["--server", f"unix:{served.socket_path}"]
    parameters = StdioServerParameters(
        command=sys.executable, args=command, cwd=str(ROOT), env=dict(os.environ)
    )
    with anyio.fail_after(CREATE_TIMEOUT_S):
        async with Client(parameters) as client:
            echoed = await client.call_tool("echo", {"text": "bridged"})
            async with served.http() as http:
                assert len((await http.get("/v1/runs")).json()["runs"]) == 1
    assert text_of(echoed) == "bridged"
    assert await anyio.to_thread.run_sync(
        lambda: wait_until(lambda: labelled_containers(expert) == [], DEADLINE_S)
    )  # stdin closed: the command deleted its run


@pytest.mark.parametrize("limit", ["--idle-timeout", "--max-lifetime"])
async def test_a_run_is_torn_down_by_its_idle_timeout_or_lifetime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    """`--idle-timeout 2` / `--max-lifetime 2`: the run goes by itself (404, nothing left)."""
    require_engine()
    monkeypatch.setenv("PERSTACK_SANDBOX_STATE", str(tmp_path / "state"))
    service = Service(tmp_path / "s.sock", limit, "2")
    service.start()
    try:
        config, expert = calc_expert(tmp_path)
        with anyio.fail_after(CREATE_TIMEOUT_S):
            run = (await service.create({"config_path": str(config), "expert": expert})).json()
            async with service.http() as http:
                while (await http.get(f"/v1/runs/{run['id']}")).status_code == 200:  # noqa: ASYNC110
                    await anyio.sleep(0.2)
        assert labelled_containers(expert) == []
    finally:
        assert service.stop() == 0


async def test_on_tcp_the_api_wants_the_service_token_and_a_run_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--listen 127.0.0.1:0`: 401 without the service token; a run's endpoint wants its own."""
    require_engine()
    monkeypatch.setenv("PERSTACK_SANDBOX_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("PERSTACK_SANDBOX_TOKEN", "service-token-for-this-test")
    config, expert = calc_expert(tmp_path)
    served = Service(tmp_path / "unused.sock", listen="127.0.0.1:0")
    served.start()
    try:
        announced = served.stderr_path.read_text()
        assert "service-token-for-this-test" not in announced  # a chosen token is never echoed
        base = "http://" + announced.split("listening on ")[1].split()[0]
        service = {"Authorization": "Bearer service-token-for-this-test"}
        async with httpx2.AsyncClient(base_url=base, timeout=CREATE_TIMEOUT_S) as http:
            assert (await http.get("/v1/runs")).status_code == 401
            assert (await http.get("/healthz")).status_code == 200
            created = await http.post(
                "/v1/runs", json={"config_path": str(config), "expert": expert}, headers=service
            )
            assert created.status_code == 201, created.text
            run = created.json()
            assert run["mcp"]["url"].startswith(base)
            refused = await http.post(run["mcp"]["url"], json={}, headers=service)
            assert refused.status_code == 401  # the service's token opens no run
        headers = {"Authorization": f"Bearer {run['mcp']['token']}"}
        async with (
            httpx2.AsyncClient(headers=headers) as http,
            Client(streamable_http_client(run["mcp"]["url"], http_client=http)) as client,
        ):
            assert text_of(await client.call_tool("echo", {"text": "tcp"})) == "tcp"
    finally:
        assert served.stop() == 0
    assert labelled_containers(expert) == []


def test_a_non_loopback_address_is_refused_without_allow_remote() -> None:
    """`serve --listen 0.0.0.0:PORT` exits 2 naming --allow-remote; nothing listens."""
    done = run_cli("serve", "--listen", "0.0.0.0:0")
    assert done.returncode == 2
    assert "--allow-remote" in done.stderr


def _pool_size(metrics: str, expert: str) -> float | None:
    """Return the pool-size gauge of `expert` in a /metrics page, if present."""
    prefix = f'perstack_sandbox_pool_size{{expert="{expert}"}} '
    line = next((line for line in metrics.splitlines() if line.startswith(prefix)), None)
    return None if line is None else float(line.removeprefix(prefix))


async def test_a_run_claims_a_warm_sandbox_of_the_services_pool_which_refills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve -c CONFIG --pool EXPERT=1`: a run claims the warm sandbox, the pool refills, drain.

    A run with a workspace does not fit the pool: it starts cold (and says so), unless it
    asked for a pool explicitly, which is a 400.
    """
    require_engine()
    monkeypatch.setenv("PERSTACK_SANDBOX_STATE", str(tmp_path / "state"))
    config, expert = calc_expert(tmp_path)
    service = Service(tmp_path / "s.sock", "-c", str(config), "--pool", f"{expert}=1")
    service.start()
    try:

        async def until_one_is_warm() -> None:
            for _ in range(int(CREATE_TIMEOUT_S / POLL_S)):
                async with service.http() as http:
                    if _pool_size((await http.get("/metrics")).text, expert) == 1.0:
                        return
                await anyio.sleep(POLL_S)
            raise AssertionError(f"no warm sandbox of {expert} in {CREATE_TIMEOUT_S} s")

        with anyio.fail_after(CREATE_TIMEOUT_S):
            await until_one_is_warm()
            created = await service.create({"config_path": str(config), "expert": expert})
            assert created.status_code == 201, created.text
            run = created.json()
            async with service.mcp(run["mcp"]["url"], run["mcp"]["token"]) as client:
                echoed = await client.call_tool("echo", {"text": "from the pool"})
            assert text_of(echoed) == "from the pool"
            async with service.http() as http:
                metrics = (await http.get("/metrics")).text
                assert 'perstack_sandbox_run_start_seconds_count{pooled="yes"} 1.0' in metrics
                shown = await http.get(f"/v1/runs/{run['id']}")
                assert shown.json()["status"] == "running"
            await until_one_is_warm()  # the replacement
            assert run["pooled"] is True
            await _check_a_run_that_does_not_fit_the_pool_starts_cold(
                service, config, expert, tmp_path
            )
    finally:
        code = await anyio.to_thread.run_sync(service.stop)
    assert code == 0, service.stderr_path.read_text()
    assert labelled_containers(expert) == []  # the run and the pool's sandbox are gone


async def _check_a_run_that_does_not_fit_the_pool_starts_cold(
    service: Service, config: Path, expert: str, tmp_path: Path
) -> None:
    """Check that a run with a workspace starts cold (`pooled: false`), or 400 with `pool`."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    body = {"config_path": str(config), "expert": expert, "workspace": str(workspace)}
    refused = await service.create({**body, "pool": True})
    assert refused.status_code == 400, refused.text
    assert "workspace cannot use a warm pool" in refused.json()["error"]
    created = await service.create(body)
    assert created.status_code == 201, created.text
    assert created.json()["pooled"] is False
    async with service.http() as http:
        metrics = (await http.get("/metrics")).text
        assert 'perstack_sandbox_run_start_seconds_count{pooled="no"} 1.0' in metrics
        assert (await http.delete(f"/v1/runs/{created.json()['id']}")).status_code == 204
