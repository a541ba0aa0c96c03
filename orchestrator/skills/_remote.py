"""`RemoteSkillSession`: an mcpSseSkill reached from the host through the sandbox's proxy."""

from __future__ import annotations

import contextlib
import ssl
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import httpx2
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from perstack_sandbox.audit import NULL_SINK
from perstack_sandbox.errors import SkillError
from perstack_sandbox.skills._session import SkillSession, failure_reason

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import anyio.abc

    from perstack_sandbox.audit import AuditSink
    from perstack_sandbox.skills._process import SkillProcess
    from perstack_sandbox.skills._spec import SkillSpec


class RemoteSkillSession(SkillSession):
    """An mcpSseSkill: SSE or streamable HTTP from the host, through the sandbox's proxy.

    The endpoint is tried with the transport its path suggests (`.../sse` means SSE), then with
    the other one, so servers that speak streamable HTTP are accepted too.
    """

    def __init__(
        self,
        spec: SkillSpec,
        endpoint: str,
        *,
        proxy_url: str | None,
        audit: AuditSink = NULL_SINK,
    ) -> None:
        """Prepare the session; every byte goes through `proxy_url` (an HTTP CONNECT proxy).

        `proxy_url=None` (a direct connection) exists for tests against loopback servers; a run
        always passes the sandbox's proxy.
        """
        super().__init__(spec, _no_process, audit=audit)
        self.endpoint = endpoint
        self._proxy_url = proxy_url

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        kinds = ("sse", "http") if self.endpoint.rstrip("/").endswith("/sse") else ("http", "sse")
        self._handshaken = False
        try:
            try:
                await self._serve_over(kinds[0], task_status)
            except Exception:
                if self._handshaken:
                    raise
                failed, retry = kinds
                self.audit.info(f"skill {self.name!r}: {failed} transport failed; trying {retry}")
                await self._serve_over(retry, task_status)
        except Exception as exc:
            if not self._handshaken:
                raise
            self.audit.warning(f"remote skill {self.name!r} failed: {failure_reason(exc)}")
        finally:
            self._client = None
            self._stopped.set()
        if not self._stop.is_set():
            self._failures += 1
            self._death = f"remote skill {self.name!r} lost its connection to {self.endpoint}"

    async def _serve_over(self, kind: str, task_status: anyio.abc.TaskStatus[None]) -> None:
        def client(
            headers: dict[str, str] | None = None,
            timeout: httpx2.Timeout | None = None,
            auth: httpx2.Auth | None = None,
        ) -> httpx2.AsyncClient:
            return httpx2.AsyncClient(
                proxy=self._proxy_url,
                verify=ssl.create_default_context(),
                trust_env=False,
                headers=headers,
                timeout=timeout or httpx2.Timeout(self.spec.timeout_s),
                auth=auth,
            )

        async with contextlib.AsyncExitStack() as stack:
            if kind == "sse":
                streams = sse_client(self.endpoint, httpx_client_factory=client)
            else:
                http = await stack.enter_async_context(client())
                streams = streamable_http_client(self.endpoint, http_client=http)
            read, write = await stack.enter_async_context(streams)
            await self._hold(read, write, task_status)


@asynccontextmanager
async def _no_process() -> AsyncIterator[SkillProcess]:
    raise SkillError("a remote skill has no process")
    yield  # pragma: no cover - unreachable; makes this an async generator
