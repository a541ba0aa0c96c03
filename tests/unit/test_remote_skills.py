"""Remote (mcpSseSkill) sessions against loopback MCP servers: SSE, streamable HTTP, fallback."""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager

import anyio
import pytest
import uvicorn
from mcp.server.mcpserver import MCPServer

from perstack_sandbox.gateway import open_gateway
from perstack_sandbox.skills import RemoteSkillSession, SkillSpec

pytestmark = pytest.mark.anyio
DEADLINE_S = 30


@pytest.fixture
def anyio_backend():
    """Run async tests on asyncio (uvicorn needs it)."""
    return "asyncio"


def _server() -> MCPServer:
    server = MCPServer("remote-test")

    @server.tool()
    def shout(text: str) -> str:
        """Return the text in capitals."""
        return text.upper()

    return server


@asynccontextmanager
async def serving(app):
    """Serve an ASGI app on a free loopback port; yield the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # listening already: clients may connect before uvicorn accepts
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve, [sock])
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        server.should_exit = True


async def _shout_through(endpoint: str) -> str:
    remote = RemoteSkillSession(SkillSpec("remote", timeout_s=10), endpoint, proxy_url=None)
    async with open_gateway([remote]) as gateway:
        assert [tool.name for tool in await gateway.list_tools()] == ["shout"]
        result = await gateway.call_tool("shout", {"text": "quiet"})
        return result.content[0].text


async def test_remote_skill_speaks_streamable_http():
    """An endpoint that speaks streamable HTTP is listed and called through the gateway."""
    with anyio.fail_after(DEADLINE_S):
        async with serving(_server().streamable_http_app()) as base:
            assert await _shout_through(f"{base}/mcp") == "QUIET"


async def test_remote_skill_speaks_sse():
    """An `/sse` endpoint is reached over the SSE transport."""
    with anyio.fail_after(DEADLINE_S):
        async with serving(_server().sse_app()) as base:
            assert await _shout_through(f"{base}/sse") == "QUIET"


async def test_remote_skill_falls_back_to_sse_when_streamable_http_fails():
    """An SSE server on a path that does not say so is still accepted (after HTTP fails)."""
    with anyio.fail_after(DEADLINE_S):
        async with serving(_server().sse_app(sse_path="/events")) as base:
            assert await _shout_through(f"{base}/events") == "QUIET"
