"""Warm pools on a real engine: secret-free until claimed, claimed once, refilled, left clean.

The example Expert's sandboxes are started ahead of time by a `WarmPool`; a run claims one with
`open_run(..., pool=pool)`, which grants the proxy fresh per-skill credentials over its control
channel before any skill starts.
"""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from engine_support import objects_of_run, reaper_of, wait_until
from skills_support import DEADLINE_S, EXAMPLE_CONFIG, ensure_image, require_engine, text_of

from perstack_sandbox import engine, state
from perstack_sandbox.engine import SKILL_UID_FIRST
from perstack_sandbox.errors import UsageError
from perstack_sandbox.plan import Limits
from perstack_sandbox.pool import WarmPool, WarmSandbox
from perstack_sandbox.run import open_run

if TYPE_CHECKING:
    import docker

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.usefixtures("state_home")]

EXPERT = "demo"
PROXY_PORT = 3128
AUDIT_DEADLINE_S = 20
CHILD_DEADLINE_S = 180
# A stand-in service: keep a pool of one, report the warm sandbox's run id, wait to be killed.
POOL_HOLDER = r"""
import sys, anyio
from perstack_sandbox.pool import WarmPool

async def main():
    async with WarmPool(sys.argv[1], "demo", 1) as pool:
        await pool.wait_ready()
        print(pool.warm_run_ids[0], flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


@pytest.fixture(scope="module", autouse=True)
def example_image() -> str:
    """Build (or reuse) the example's image once for this module."""
    require_engine()
    return ensure_image(EXAMPLE_CONFIG, EXPERT)


def _inspect(api: docker.APIClient, run_id: str, role: str) -> dict[str, Any]:
    """Return the inspect document of `run_id`'s only container with `role`."""
    found = api.containers(
        all=True,
        filters={"label": [f"perstack-sandbox.run={run_id}", f"perstack-sandbox.role={role}"]},
    )
    assert len(found) == 1, found
    return dict(api.inspect_container(found[0]["Id"]))


def _host_pids(api: docker.APIClient, container_id: str) -> list[tuple[int, int]]:
    """Return (host pid, uid) of every process in the container."""
    top = api.top(container_id, ps_args="-o pid,uid")
    return [(int(row[0]), int(row[1])) for row in top["Processes"]]


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""  # the process ended meanwhile


def _connect_status(sandbox: engine.Sandbox, token: str | None) -> str:
    """CONNECT to the example's allowed host through the proxy (from the host); its status."""
    head = "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
    if token is not None:
        basic = base64.b64encode(f"egress-probe:{token}".encode()).decode()
        head += f"Proxy-Authorization: Basic {basic}\r\n"
    with socket.create_connection((sandbox.proxy_host_ip, PROXY_PORT), timeout=30) as sock:
        sock.sendall((head + "\r\n").encode())
        return sock.recv(4096).split(b"\r\n", 1)[0].decode()


async def _decision(run_path: Path, count: int) -> dict[str, Any]:
    """Wait (bounded) for the `count`-th decision of egress-probe about example.com."""
    with anyio.fail_after(AUDIT_DEADLINE_S):
        while True:
            lines = (run_path / "audit.jsonl").read_text(encoding="utf-8").splitlines()
            found = [
                json.loads(line)
                for line in lines
                if '"event":"decision"' in line and '"host":"example.com"' in line
            ]
            if len(found) >= count:
                return found[count - 1]
            await anyio.sleep(0.05)


async def _claim_ungranted(pool: WarmPool) -> WarmSandbox:
    claimed = await pool.claim()
    assert claimed.sandbox.credentials == {}
    return claimed


async def _remove(claimed: WarmSandbox) -> None:
    """Do what the claiming run would at its end: close the control client, tear down."""
    if claimed.control is not None:
        await claimed.control.close()
    await engine.teardown(claimed.run, "finished")


async def test_a_claimed_sandbox_runs_the_example_experts_skills() -> None:
    """A run on a claimed warm sandbox lists the tools of all three skills and calls them."""
    with anyio.fail_after(DEADLINE_S):
        async with WarmPool(EXAMPLE_CONFIG, EXPERT, 1) as pool:
            await pool.wait_ready()
            warm_id = pool.warm_run_ids[0]
            async with open_run(EXAMPLE_CONFIG, EXPERT, pool=pool) as run:
                assert run.run_id == warm_id
                names = {tool.name for tool in await run.list_tools()}
                assert {"echo", "get_current_time", "fetch_status"} <= names
                echoed = await run.call_tool("echo", {"message": "from the pool"})
                assert "from the pool" in text_of(echoed)
            assert state.open_run(warm_id).read_meta()["status"] == "finished"  # type: ignore[union-attr]


async def test_a_claimed_skill_reaches_its_host_only_with_the_fresh_credential(
    docker_api: docker.APIClient,
) -> None:
    """The egress probe's granted token is allowed example.com; after a new grant it is refused.

    The skill keeps the token it started with; a later grant (as a next claim's would be)
    replaces every earlier one, so that token gets 403 no-skill-credential. Seen failing by
    hand with `_control.grant` merging grants (`skills=server.policy.skills + grants`): the
    old token was still allowed (reason "resolve-failed", the host matched its rule).
    """
    with anyio.fail_after(DEADLINE_S):
        async with (
            WarmPool(EXAMPLE_CONFIG, EXPERT, 1) as pool,
            open_run(EXAMPLE_CONFIG, EXPERT, pool=pool) as run,
        ):
            await run.call_tool("fetch_status", {"url": "https://example.com/"})
            fresh = await _decision(run.path, 1)
            assert (fresh["skill"], fresh["rule"]) == ("egress-probe", "example.com")
            assert fresh["reason"] not in {"no-skill-credential", "not-allowed"}
            proxy = _inspect(docker_api, run.run_id, "proxy")["Id"]
            await engine.send_grant(proxy, {"egress-probe": "a-later-grant-token-0123456789"}, {})
            await run.call_tool("fetch_status", {"url": "https://example.com/"})
            stale = await _decision(run.path, 2)
            assert (stale["decision"], stale["reason"]) == ("deny", "no-skill-credential")


async def test_a_warm_proxy_refuses_every_connect_before_its_grant() -> None:
    """Before a claim's grant, the proxy answers 403 to a CONNECT with or without a credential.

    The policy's top-level list holds the Expert's hosts (example.com), for the record only.
    Seen failing by hand with the `require_grant` check dropped from `_tunnel._allowed_domains`:
    the bare CONNECT got "502 Bad Gateway" (allowed by that list, then unresolvable here).
    """
    with anyio.fail_after(DEADLINE_S):
        async with WarmPool(EXAMPLE_CONFIG, EXPERT, 1) as pool:
            claimed = await _claim_ungranted(pool)
            try:
                for token in (None, "any-token-0123456789abcdefghijklmnop"):
                    status = await anyio.to_thread.run_sync(_connect_status, claimed.sandbox, token)
                    assert status == "HTTP/1.1 403 Forbidden"
                decision = await _decision(claimed.run.path, 2)
                assert decision["reason"] == "no-skill-credential"
            finally:
                await _remove(claimed)


async def test_a_warm_sandbox_holds_no_secret_and_runs_no_skill_before_its_claim(
    docker_api: docker.APIClient,
) -> None:
    """Unclaimed: no skill process, no credential in the proxy's policy or any process's env.

    Then claimed and run: the skills' fresh tokens are in their own processes only, in neither
    container's config (they went over the exec's standard input). Seen failing by hand with
    `start_sandbox` making tokens for a warm sandbox too (as for a run of its own): the
    proxy's policy environment held all three.
    """
    with anyio.fail_after(DEADLINE_S):
        async with WarmPool(EXAMPLE_CONFIG, EXPERT, 1) as pool:
            await pool.wait_ready()
            run_id = pool.warm_run_ids[0]
            proxy, box = (_inspect(docker_api, run_id, role) for role in ("proxy", "sandbox"))
            policy = json.loads(
                next(
                    v for v in proxy["Config"]["Env"] if v.startswith("PERSTACK_PROXY_POLICY=")
                ).split("=", 1)[1]
            )
            assert (policy["skills"], policy["requireGrant"]) == ({}, True)
            processes = _host_pids(docker_api, box["Id"])
            assert all(uid < SKILL_UID_FIRST for _pid, uid in processes)
            assert not [pid for pid, _ in processes if b"_PROXY=" in _environ(pid)]
            async with open_run(EXAMPLE_CONFIG, EXPERT, pool=pool) as run:
                assert run.run_id == run_id
                await run.list_tools()
                tokens = {
                    line.split(b"@")[0].rsplit(b":", 1)[1].decode()
                    for pid, uid in _host_pids(docker_api, box["Id"])
                    if uid >= SKILL_UID_FIRST
                    for line in _environ(pid).split(b"\0")
                    if line.startswith(b"HTTPS_PROXY=") and b"@" in line
                }
                assert len(tokens) == 3
                configs = json.dumps(
                    [_inspect(docker_api, run_id, role) for role in ("proxy", "sandbox")]
                )
                assert [token for token in tokens if token in configs] == []


async def test_two_claims_never_get_the_same_sandbox(docker_api: docker.APIClient) -> None:
    """Two claims made at once get two different sandboxes, each its own containers."""
    claims: list[WarmSandbox] = []
    with anyio.fail_after(DEADLINE_S):
        async with WarmPool(EXAMPLE_CONFIG, EXPERT, 2) as pool:
            await pool.wait_ready()

            async def claim() -> None:
                claims.append(await _claim_ungranted(pool))

            async with anyio.create_task_group() as group:
                group.start_soon(claim)
                group.start_soon(claim)
            try:
                assert len({c.run.run_id for c in claims}) == 2
                assert len({c.sandbox.container_id for c in claims}) == 2
                assert len({c.sandbox.proxy_container_id for c in claims}) == 2
            finally:
                for claimed in claims:
                    await _remove(claimed)
    assert [objects_of_run(docker_api, c.run.run_id) for c in claims] == [[], []]


async def test_the_pool_refills_after_a_claim() -> None:
    """A pool of one is full again after its sandbox was claimed, with a new sandbox."""
    with anyio.fail_after(DEADLINE_S):
        async with WarmPool(EXAMPLE_CONFIG, EXPERT, 1) as pool:
            claimed = await pool.claim()
            claimed.settled.set()  # what a run does once its skills answered
            try:
                await pool.wait_ready()
                assert pool.available == 1
                assert pool.warm_run_ids[0] != claimed.run.run_id
            finally:
                await _remove(claimed)


async def test_closing_the_pool_leaves_no_labelled_object(docker_api: docker.APIClient) -> None:
    """Leaving the pool removes every unclaimed sandbox's objects and closes their journals."""
    with anyio.fail_after(DEADLINE_S):
        async with WarmPool(EXAMPLE_CONFIG, EXPERT, 2) as pool:
            await pool.wait_ready()
            runs = [run for i in pool.warm_run_ids if (run := state.open_run(i)) is not None]
            assert len(runs) == 2
            assert all(objects_of_run(docker_api, run.run_id) for run in runs)
    assert [objects_of_run(docker_api, run.run_id) for run in runs] == [[], []]
    assert not any(run.is_journal_open() for run in runs)
    assert {run.read_meta()["status"] for run in runs} == {"unclaimed"}


async def test_a_run_unlike_the_pools_plan_is_refused_before_it_claims() -> None:
    """Other limits than the pool's are bad input: UsageError, and the sandbox stays warm."""
    with anyio.fail_after(DEADLINE_S):
        async with WarmPool(EXAMPLE_CONFIG, EXPERT, 1) as pool:
            await pool.wait_ready()
            with pytest.raises(UsageError, match="another plan"):
                async with open_run(EXAMPLE_CONFIG, EXPERT, pool=pool, limits=Limits(pids=64)):
                    pass
            assert pool.available == 1


def test_gc_removes_the_pool_of_a_sigkilled_owner(docker_api: docker.APIClient) -> None:
    """A SIGKILLed pool owner (its reaper killed too) leaves a warm sandbox that gc removes."""
    child = subprocess.Popen(
        [sys.executable, "-c", POOL_HOLDER, str(EXAMPLE_CONFIG)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], CHILD_DEADLINE_S)
    run_id = child.stdout.readline().strip() if ready else ""
    reaper = reaper_of(child.pid)
    if reaper is not None:
        os.kill(reaper, signal.SIGKILL)  # first: it would clean up by itself
    child.kill()
    child.wait(timeout=CHILD_DEADLINE_S)
    assert run_id, child.stderr.read() if child.stderr else ""
    assert objects_of_run(docker_api, run_id)
    removed = engine.collect_garbage()
    assert any(run_id in line for line in removed)
    assert wait_until(lambda: not objects_of_run(docker_api, run_id), 30)
