"""The allowed path still works, and the run's audit trail shows what was allowed and refused.

A suite that passes when everything is blocked proves nothing: here the hostile skill fetches
the allowed registry host (derived at run time from npm's configuration) through the proxy,
the ordinary way (urllib and Node's fetch, honouring HTTPS_PROXY), and gets a real answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from support import read_jsonl, registry_host

from perstack_sandbox.audit import summarise_run

if TYPE_CHECKING:
    from support import Hostile

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

AUDIT_DEADLINE_S = 10
SUCCESS = {"200", "301", "302", "304"}


async def test_an_https_get_to_the_allowed_host_succeeds_through_the_proxy(
    hostile: Hostile,
) -> None:
    """urllib, following HTTPS_PROXY, gets a real answer from the allowed registry host.

    Fails when: the proxy refuses everything (e.g. an empty allowlist), or the sandbox does not
    trust the host's CA bundle behind the TLS-intercepting proxy.
    """
    assert await hostile.probe(f"emit(https_get('https://{registry_host()}/'))") in SUCCESS


async def test_nodes_fetch_honours_the_proxy_and_reaches_the_allowed_host(
    hostile: Hostile,
) -> None:
    """Node's built-in fetch goes through the proxy (NODE_USE_ENV_PROXY) and gets an answer.

    Fails when: NODE_USE_ENV_PROXY is not passed to skills (checked by hand: fetch then
    tries DNS itself and fails with EAI_AGAIN).
    """
    script = (
        f"fetch('https://{registry_host()}/').then(r => console.log(r.status),"
        " e => console.log('failed', e.cause && e.cause.code))"
    )
    code = (
        "import subprocess\n"
        f"done = subprocess.run(['node', '-e', {script!r}], capture_output=True, text=True,"
        " timeout=30)\nemit(done.stdout.strip())"
    )
    assert await hostile.probe(code) in SUCCESS


async def test_the_runs_audit_shows_the_allowed_and_the_refused_attempts(
    hostile: Hostile,
) -> None:
    """The live run's audit lists allowed and refused hosts, and tool calls by shape only.

    The allowed host comes with bytes, the refused one with its reason; the code that was sent
    never appears in tools.jsonl.

    Fails when: the engine stops copying the proxy's audit to the run folder, or the gateway
    stops writing tools.jsonl (checked by hand: a no-op `ToolCallWriter.emit`, now
    `RunFiles.tool_call`), or writes argument values.
    """
    host = registry_host()
    marker = "refused-for-the-audit.example"
    code = f"emit([https_get('https://{host}/'), connect_via_proxy('{marker}:443')])"
    allowed, refused = await hostile.probe(code)
    assert allowed in SUCCESS
    assert refused == "403 not-allowed"
    with anyio.fail_after(AUDIT_DEADLINE_S):
        while marker not in hostile.run.audit_path.read_text(encoding="utf-8"):  # noqa: ASYNC110 - a file another thread appends to
            await anyio.sleep(0.05)
    summary = summarise_run(hostile.run)
    hosts = {h.host: h for h in summary.hosts}
    assert hosts[host].allowed >= 1
    assert hosts[host].bytes_down > 0
    assert hosts[marker].refused == 1
    assert hosts[marker].reasons == {"not-allowed": 1}
    assert summary.ended is None  # the run is still live
    tools = {(t.skill, t.tool): t for t in summary.tools}
    runner = tools["hostile", "hostile__run_python"]
    assert runner.shapes == [{"code": "str"}]
    assert runner.outcomes.get("ok", 0) >= 1
    calls = read_jsonl(hostile.run.tools_path)
    assert marker not in hostile.run.tools_path.read_text(encoding="utf-8")
    assert all(
        set(call) == {"time", "kind", "skill", "tool", "argShape", "durationMs", "outcome"}
        for call in calls
    )
