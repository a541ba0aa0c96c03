"""The bundled example Expert, listed and called through the CLI and through the gateway."""

from __future__ import annotations

import json
import os
import sys

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from skills_support import (
    DEADLINE_S,
    EXAMPLE_CONFIG,
    ROOT,
    ensure_image,
    require_engine,
    run_cli,
    text_of,
)

pytestmark = [pytest.mark.docker, pytest.mark.anyio]
EXAMPLE = ("-c", str(EXAMPLE_CONFIG))
TOKEN = "integration-test-token-0123456789"  # noqa: S105 - a test-only token


@pytest.fixture(scope="module", autouse=True)
def example_image():
    """Build (or reuse) the example's image once for this module."""
    require_engine()
    return ensure_image(EXAMPLE_CONFIG, "demo")


@pytest.fixture
def anyio_backend():
    """Run async tests on asyncio."""
    return "asyncio"


def test_tools_command_lists_tools_of_both_example_skills():
    """`tools --json` shows the everything server's and the time server's tools."""
    done = run_cli("tools", "demo", *EXAMPLE, "--json")
    assert done.returncode == 0, done.stderr
    names = {tool["name"] for tool in json.loads(done.stdout)}
    assert {"echo", "get-sum", "get_current_time", "convert_time", "fetch_status"} <= names


def test_both_example_skills_work_under_gvisor_too():
    """`tools --isolation gvisor`: the npx and uvx skills start and list their tools in gVisor."""
    done = run_cli("tools", "demo", *EXAMPLE, "--json", "--isolation", "gvisor")
    assert done.returncode == 0, done.stderr
    names = {tool["name"] for tool in json.loads(done.stdout)}
    assert {"echo", "get-sum", "get_current_time", "convert_time", "fetch_status"} <= names


def test_call_command_prints_call_tool_results_of_each_skill():
    """`call` prints each skill's CallToolResult as JSON on stdout."""
    echo = run_cli("call", "demo", *EXAMPLE, "echo", "--args", '{"message": "hi there"}')
    assert echo.returncode == 0, echo.stderr
    assert "hi there" in json.loads(echo.stdout)["content"][0]["text"]
    now = run_cli("call", "demo", *EXAMPLE, "get_current_time", "--args", '{"timezone": "UTC"}')
    assert now.returncode == 0, now.stderr
    result = json.loads(now.stdout)
    assert result.get("isError") is not True
    assert "UTC" in result["content"][0]["text"]


def test_call_command_with_bad_arguments_json_exits_2_before_starting():
    """Malformed `--args` is bad input: exit code 2 and one clear message."""
    done = run_cli("call", "demo", *EXAMPLE, "echo", "--args", "{not json")
    assert done.returncode == 2
    assert "--args is not valid JSON" in done.stderr
    assert "Traceback" not in done.stderr


async def test_gateway_over_stdio_serves_both_skills_to_the_sdk_client():
    """The SDK's stdio client lists and calls both skills through `run`."""
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "perstack_sandbox", "run", "demo", *EXAMPLE],
        env={**os.environ},
        cwd=str(ROOT),
    )
    with anyio.fail_after(DEADLINE_S):
        async with Client(server, mode="legacy") as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert {"echo", "get_current_time"} <= names
            assert "ping" in text_of(await client.call_tool("echo", {"message": "ping"}))
            now = await client.call_tool("get_current_time", {"timezone": "UTC"})
            assert not now.is_error
            assert "UTC" in text_of(now)


async def test_gateway_over_http_serves_both_skills_with_a_bearer_token():
    """`run --http 127.0.0.1:0` serves streamable HTTP; the SDK client uses the token."""
    command = [
        sys.executable,
        "-m",
        "perstack_sandbox",
        "run",
        "demo",
        *EXAMPLE,
        "--http",
        "127.0.0.1:0",
    ]
    env = {**os.environ, "PERSTACK_SANDBOX_TOKEN": TOKEN}
    with anyio.fail_after(DEADLINE_S):
        async with await anyio.open_process(command, env=env, cwd=ROOT) as process:
            try:
                url, announced = await _read_url(process)
                assert TOKEN not in announced  # a token the user chose is never echoed
                async with httpx2.AsyncClient() as raw:
                    refused = await raw.post(
                        url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}
                    )
                    assert refused.status_code == 401
                headers = {"Authorization": f"Bearer {TOKEN}"}
                async with (
                    httpx2.AsyncClient(headers=headers) as http,
                    Client(streamable_http_client(url, http_client=http)) as client,
                ):
                    names = {tool.name for tool in (await client.list_tools()).tools}
                    assert {"echo", "get_current_time"} <= names
                    echoed = await client.call_tool("echo", {"message": "over http"})
                    assert "over http" in text_of(echoed)
                    now = await client.call_tool("get_current_time", {"timezone": "UTC"})
                    assert "UTC" in text_of(now)
            finally:
                process.terminate()
                with anyio.move_on_after(30):
                    await process.wait()


async def _read_url(process: anyio.abc.Process) -> tuple[str, str]:
    """Read the gateway's stderr until it announces its URL and token; return both texts."""
    assert process.stderr is not None
    seen = ""
    async for chunk in process.stderr:
        seen += chunk.decode()
        if "bearer token: " not in seen:
            continue
        for line in seen.splitlines():
            if line.startswith("gateway: "):
                return line.removeprefix("gateway: ").strip(), seen
    pytest.fail(f"the gateway never announced its URL; stderr:\n{seen}")
