"""A gateway's streamable-HTTP endpoint as an ASGI app that another server mounts.

`run --http` serves one gateway on its own port (`_transports.serve_http`); `serve` holds many
runs in one process and mounts each run's endpoint under its own path. The endpoint is the same
MCP server with the same plain-JSON answers; who may reach it (a bearer token per run) is the
mounting server's concern.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings

from perstack_sandbox.gateway._plain_json import PlainJsonResponses
from perstack_sandbox.gateway._server import make_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from perstack_sandbox.gateway._core import Gateway
    from perstack_sandbox.gateway._guard import ASGIApp


@asynccontextmanager
async def mounted_endpoint(
    gateway: Gateway, *, allowed_hosts: Sequence[str] | None, allowed_origins: Sequence[str] = ()
) -> AsyncIterator[ASGIApp]:
    """Yield the ASGI app of `gateway`'s streamable-HTTP endpoint while its sessions run.

    `allowed_hosts` (e.g. `127.0.0.1:8080`) turns on the SDK's DNS-rebinding check of the Host
    and Origin headers; None leaves it off (a Unix socket, which no web page can reach).
    Leaving the context ends every MCP session of the endpoint.
    """
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=allowed_hosts is not None,
        allowed_hosts=list(allowed_hosts or ()),
        allowed_origins=list(allowed_origins),
    )
    manager = StreamableHTTPSessionManager(app=make_server(gateway), security_settings=security)
    async with manager.run():
        yield PlainJsonResponses(StreamableHTTPASGIApp(manager))
