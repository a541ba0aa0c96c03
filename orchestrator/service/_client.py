"""`tools`, `call` and `run` with `--server`: the same commands, through a running service.

The command reads its config's warnings and secrets the way it always does (env files, then
the environment), sends the service only the variables the Expert's skills require, uses the
run's MCP endpoint, and deletes the run when done. `run` bridges this process's stdio to the
run's endpoint message by message, so the MCP client on stdio sees the service's gateway.
"""

from __future__ import annotations

import json
import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from perstack_sandbox.config import load_config
from perstack_sandbox.errors import InputError, RunError, UsageError
from perstack_sandbox.gateway import result_payload, tools_payload
from perstack_sandbox.plan import host_secrets
from perstack_sandbox.plan import plan as make_plan
from perstack_sandbox.service._server import TOKEN_ENV
from perstack_sandbox.text import printable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from perstack_sandbox.launch import LaunchOptions
    from perstack_sandbox.service._address import Address

START_TIMEOUT_S: Final = 900.0  # POST /v1/runs answers once the skills are up (a build, first)
CALL_TIMEOUT_S: Final = 300.0


class ServiceInputError(InputError):
    """The service refused the request as bad input (its message is the CLI's own)."""


def _http(address: Address) -> httpx2.AsyncClient:
    """Return an HTTP client to the service (its token from $PERSTACK_SANDBOX_TOKEN on TCP)."""
    headers = {}
    if not address.is_unix and os.environ.get(TOKEN_ENV):
        headers["Authorization"] = f"Bearer {os.environ[TOKEN_ENV]}"
    if address.path is not None:
        transport = httpx2.AsyncHTTPTransport(uds=str(address.path))
        return httpx2.AsyncClient(transport=transport, base_url="http://localhost", headers=headers)
    return httpx2.AsyncClient(base_url=f"http://{address.host}:{address.port}", headers=headers)


def _body(options: LaunchOptions) -> dict[str, Any]:
    """Return the `POST /v1/runs` body of a command: config path, expert, required secrets."""
    config, warnings = load_config(options.config_path)
    for warning in warnings:
        options.warn(printable(str(warning)))
    secrets = host_secrets(config, env_paths=options.env_paths, warn=options.warn)
    wanted = {
        name for skill in make_plan(config, options.expert).skills for name in skill.env_names
    }
    env = {name: value.reveal() for name, value in secrets.items() if name in wanted}
    body: dict[str, Any] = {
        "config_path": str(options.config_path.resolve()),
        "expert": options.expert,
        "env": env,
        "isolation": options.isolation,
        "prefix_tools": options.prefix_tools,
        "seal_secrets": options.seal_secrets,
        "seal_passthrough": list(options.seal_passthrough),
        "accept_tool_changes": options.accept_tool_changes,
        "backend": options.backend,
    }
    if options.workspace is not None:
        body["workspace"] = str(options.workspace.resolve())  # the service has its own cwd
    return body


def _raise_for(response: httpx2.Response, what: str) -> None:
    if response.is_success:
        return
    try:
        message = str(response.json().get("error") or response.text)
    except ValueError:
        message = response.text
    error = ServiceInputError if 400 <= response.status_code < 500 else RunError  # noqa: PLR2004
    raise error(f"{message}" if error is ServiceInputError else f"{what}: {message}")


@asynccontextmanager
async def _service_run(address: Address, options: LaunchOptions) -> AsyncIterator[Client]:
    """Create a run on the service, yield an MCP client on its endpoint, delete it on exit."""
    body = _body(options)
    try:
        async with _http(address) as http:
            response = await http.post("/v1/runs", json=body, timeout=START_TIMEOUT_S)
            _raise_for(response, f"the service at {address} could not start the run")
            created = response.json()
            try:
                async with _mcp(address, created["mcp"]) as client:
                    yield client
            finally:
                with anyio.CancelScope(shield=True):
                    await http.delete(f"/v1/runs/{created['id']}", timeout=START_TIMEOUT_S)
    except httpx2.HTTPError as exc:
        raise RunError(f"cannot reach the service at {address}: {exc}") from exc


@asynccontextmanager
async def _mcp(address: Address, mcp: dict[str, str]) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {mcp['token']}"}
    transport = httpx2.AsyncHTTPTransport(uds=str(address.path)) if address.path else None
    async with (
        httpx2.AsyncClient(headers=headers, transport=transport, timeout=CALL_TIMEOUT_S) as http,
        Client(streamable_http_client(mcp["url"], http_client=http)) as client,
    ):
        yield client


def tools_via(address: Address, options: LaunchOptions, *, as_json: bool) -> str:
    """List the Expert's tools through the service; return the text to print.

    Raises:
        InputError: the service refused the input (the CLI's own message).
        RunError: the service is unreachable or the run failed.

    """

    async def report() -> str:
        async with _service_run(address, options) as client:
            tools = (await client.list_tools()).tools
        if as_json:
            return json.dumps(tools_payload(tools), indent=2, sort_keys=True)
        return printable("\n".join(tool.name for tool in tools))

    return anyio.run(report)


def call_via(address: Address, options: LaunchOptions, tool: str, arguments: dict[str, Any]) -> str:
    """Call one tool through the service; return the CallToolResult as JSON.

    Raises:
        InputError: the service refused the input. RunError: the service or the run failed.
        UsageError: the tool does not exist (the gateway said so).

    """

    async def report() -> str:
        async with _service_run(address, options) as client:
            try:
                result = await client.call_tool(tool, arguments)
            except MCPError as exc:  # the gateway refused: no such tool, bad arguments
                raise UsageError(str(exc)) from exc
        return json.dumps(result_payload(result), indent=2, sort_keys=True)

    return anyio.run(report)


def bridge_via(address: Address, options: LaunchOptions) -> None:
    """Serve the run's MCP endpoint on this process's stdio until stdin closes.

    Raises:
        InputError: the service refused the input. RunError: the service or the run failed.

    """
    anyio.run(_bridge, address, options)


async def _bridge(address: Address, options: LaunchOptions) -> None:
    body = _body(options)
    try:
        async with _http(address) as http:
            response = await http.post("/v1/runs", json=body, timeout=START_TIMEOUT_S)
            _raise_for(response, f"the service at {address} could not start the run")
            created = response.json()
            try:
                await _pipe(address, created["mcp"])
            finally:
                with anyio.CancelScope(shield=True):
                    await http.delete(f"/v1/runs/{created['id']}", timeout=START_TIMEOUT_S)
    except httpx2.HTTPError as exc:
        raise RunError(f"cannot reach the service at {address}: {exc}") from exc


async def _pipe(address: Address, mcp: dict[str, str]) -> None:
    """Copy messages stdin -> endpoint and endpoint -> stdout until stdin ends."""
    headers = {"Authorization": f"Bearer {mcp['token']}"}
    transport = httpx2.AsyncHTTPTransport(uds=str(address.path)) if address.path else None
    async with (
        httpx2.AsyncClient(headers=headers, transport=transport, timeout=CALL_TIMEOUT_S) as http,
        streamable_http_client(mcp["url"], http_client=http) as (remote_read, remote_write),
        stdio_server() as (local_read, local_write),
        anyio.create_task_group() as group,
    ):

        async def upstream() -> None:
            async for message in local_read:
                if not isinstance(message, Exception):
                    await remote_write.send(message)
            group.cancel_scope.cancel()  # stdin closed: the client is done

        async def downstream() -> None:
            async for message in remote_read:
                if not isinstance(message, Exception):
                    await local_write.send(message)

        group.start_soon(upstream)
        group.start_soon(downstream)
