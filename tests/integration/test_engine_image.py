"""The sandbox base image: its tools, Node's fetch through the proxy, and the trusted CA."""

from __future__ import annotations

import json

import anyio
import pytest
from engine_support import run_in

from perstack_sandbox import images, state
from perstack_sandbox.engine import open_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.usefixtures("state_home")]

AUDIT_DEADLINE_S = 30.0
MIN_NODE_MAJOR = 24  # NODE_USE_ENV_PROXY arrived in the 24 line
# A fetch whose outcome does not matter: only whether the proxy saw it (allowlist is empty,
# so the proxy refuses before any lookup and nothing leaves the host).
NODE_FETCH = (
    "fetch('https://example.com/').then(r => console.log(r.status))"
    ".catch(e => console.log('refused', e.cause?.code ?? e.message))"
)


async def test_node_npm_python_and_uv_are_installed(plan_factory, empty_expert_image):
    """The base has Node 24+, npm, Python 3 and uv on the PATH."""
    async with open_sandbox(
        plan_factory(), image=empty_expert_image, run=state.create_run("i")
    ) as sb:
        node = await run_in(sb, ["node", "--version"])
        tools = await run_in(sb, ["sh", "-c", "npm --version && python3 --version && uv --version"])
    assert int(node.stdout.decode().lstrip("v").split(".")[0]) >= MIN_NODE_MAJOR
    assert tools.code == 0, tools.stderr
    assert b"Python 3." in tools.stdout
    assert b"uv " in tools.stdout


async def test_node_fetch_goes_through_the_proxy_when_asked(plan_factory, empty_expert_image):
    """With the proxy variables and NODE_USE_ENV_PROXY=1, Node's fetch asks the proxy."""
    run = state.create_run("node")
    async with open_sandbox(plan_factory(), image=empty_expert_image, run=run) as sb:
        result = await run_in(sb, ["node", "-e", NODE_FETCH], env=sb.proxy_env())
        assert result.code == 0, result.stderr
        with anyio.fail_after(AUDIT_DEADLINE_S):
            while b"example.com" not in run.audit_path.read_bytes():  # noqa: ASYNC110 - a file
                await anyio.sleep(0.05)
    decisions = [json.loads(line) for line in run.audit_path.read_text().splitlines() if line]
    assert any(d.get("host") == "example.com" and d.get("method") == "CONNECT" for d in decisions)


async def test_the_host_ca_bundle_is_trusted_inside_unless_opted_out(
    plan_factory, empty_expert_image
):
    """With the host CA on, every host certificate is trusted inside; opted out, none is added."""
    is_trusted = images.is_host_ca_enabled() and images.HOST_CA_BUNDLE.is_file()
    added = "/usr/local/share/ca-certificates/perstack-host-bundle.crt"
    async with open_sandbox(
        plan_factory(), image=empty_expert_image, run=state.create_run("c")
    ) as sb:
        inside = await run_in(sb, ["cat", "/etc/ssl/certs/ca-certificates.crt"])
        marker = await run_in(sb, ["test", "-s", added])
    assert (marker.code == 0) == is_trusted
    if is_trusted:
        host_certs = set(_certificates(images.HOST_CA_BUNDLE.read_text()))
        assert host_certs
        assert host_certs <= set(_certificates(inside.stdout.decode()))


def _certificates(bundle: str) -> list[str]:
    """Split a PEM bundle into its certificates' base64 bodies."""
    blocks = bundle.split("-----BEGIN CERTIFICATE-----")[1:]
    return ["".join(block.split("-----END CERTIFICATE-----")[0].split()) for block in blocks]
