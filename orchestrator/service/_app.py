"""The service's HTTP app: the JSON API under `/v1`, each run's MCP endpoint, health, metrics.

```
GET    /healthz                      200 {"status": "ok"|"draining"}   (no token)
GET    /metrics                      Prometheus text
GET    /v1/openapi.json              this API's OpenAPI document
POST   /v1/runs                      201 {"id", "mcp": {"url", "token"}, "tools", "pooled"}
GET    /v1/runs                      {"runs": [...]}
GET    /v1/runs/{id}                 the run: status, expert, started, skills, tools, pooled
DELETE /v1/runs/{id}                 204 once torn down
GET    /v1/runs/{id}/audit           the `audit --json` document
*      /v1/runs/{id}/mcp             that run's streamable-HTTP MCP endpoint (its own token)
```

On TCP every route but `/healthz` and the MCP endpoints wants the service's bearer token; on a
Unix socket the socket's mode (0600) is the gate. An MCP endpoint opens with its run's token
only: never the service's, never another run's (decision 30).
"""

from __future__ import annotations

import functools
import hmac
from typing import TYPE_CHECKING, Any, Final

import anyio.to_thread
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from perstack_sandbox.audit import summarise
from perstack_sandbox.errors import SandboxError
from perstack_sandbox.service._api import CreateRun, error_body, parse_create, status_for
from perstack_sandbox.service._metrics import CONTENT_TYPE
from perstack_sandbox.service._runs import DrainingError, UnknownRunError

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.requests import Request
    from starlette.types import Message, Receive, Scope, Send

    from perstack_sandbox.service._metrics import Metrics
    from perstack_sandbox.service._runs import ManagedRun, Runs

OPEN_PATHS: Final = frozenset({"/healthz"})


def _error(exc: SandboxError) -> JSONResponse:
    if isinstance(exc, UnknownRunError):
        return JSONResponse(error_body(exc), status_code=404)
    if isinstance(exc, DrainingError):
        return JSONResponse(error_body(exc), status_code=503)
    return JSONResponse(error_body(exc), status_code=status_for(exc))


def _bearer(scope: Scope) -> bytes:
    headers = {name.lower(): value for name, value in scope.get("headers", [])}
    scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
    return given.strip() if scheme.lower() == b"bearer" else b""


async def _refuse(send: Send, status: int, why: str) -> None:
    await JSONResponse({"error": why}, status_code=status, headers=_CHALLENGE)(
        {"type": "http"}, _no_body, send
    )


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


_CHALLENGE: Final = {"www-authenticate": "Bearer"}


class _RunEndpoint:
    """ASGI: `/v1/runs/{id}/mcp`, opened by that run's token only."""

    def __init__(self, runs: Runs) -> None:
        self._runs = runs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        managed: ManagedRun | None
        try:
            managed = self._runs.get(str(scope.get("path_params", {}).get("run_id", "")))
        except UnknownRunError:
            managed = None
        # One answer for "no such run" and "not its token": a token learns nothing of others.
        if managed is None or not managed.opens_with(_bearer(scope).decode("latin-1")):
            await _refuse(send, 401, "missing or wrong bearer token for this run")
            return
        app = managed.app
        if app is None:
            await _refuse(send, 404, "the run is stopping")
            return
        managed.touch()
        await app(scope, receive, send)


class ServiceGuard:
    """ASGI middleware: on TCP, every route but the open ones wants the service's token."""

    def __init__(self, app: Any, *, token: str | None) -> None:  # noqa: ANN401 - any ASGI app
        """Wrap `app`; with no `token` (a Unix socket) everything passes."""
        self._app, self._token = app, (token or "").encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the service token, except for open paths and the runs' own endpoints."""
        path = str(scope.get("path", ""))
        is_exempt = path in OPEN_PATHS or path.endswith(("/mcp", "/mcp/"))
        is_checked = scope["type"] == "http" and self._token and not is_exempt
        if is_checked and not hmac.compare_digest(_bearer(scope), self._token):
            await _refuse(send, 401, "missing or wrong bearer token")
            return
        await self._app(scope, receive, send)


def build_app(
    runs: Runs, metrics: Metrics, *, mcp_url: Callable[[str], str], token: str | None
) -> ServiceGuard:
    """Return the service's ASGI app over `runs`; `mcp_url(id)` is a run's endpoint URL."""
    api = _Api(runs, metrics, mcp_url)
    routes = [
        Route("/healthz", api.health, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/v1/openapi.json", api.openapi, methods=["GET"]),
        Route("/v1/runs", api.create, methods=["POST"]),
        Route("/v1/runs", api.list_runs, methods=["GET"]),
        Route("/v1/runs/{run_id}", api.show, methods=["GET"]),
        Route("/v1/runs/{run_id}", api.delete, methods=["DELETE"]),
        Route("/v1/runs/{run_id}/audit", api.audit, methods=["GET"]),
        Route("/v1/runs/{run_id}/mcp", _RunEndpoint(runs)),
    ]
    return ServiceGuard(Starlette(routes=routes), token=token)


class _Api:
    def __init__(self, runs: Runs, metrics: Metrics, mcp_url: Callable[[str], str]) -> None:
        self._runs, self._metrics, self._mcp_url = runs, metrics, mcp_url

    async def health(self, _request: Request) -> Response:
        status = "draining" if self._runs.is_draining else "ok"
        return JSONResponse({"status": status, "runs": len(self._runs.all())})

    async def metrics(self, _request: Request) -> Response:
        await self._runs.count_decisions()
        return Response(self._metrics.exposition(), media_type=CONTENT_TYPE)

    async def openapi(self, _request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def create(self, request: Request) -> Response:
        try:
            body = parse_create(await request.body())
            managed = await self._runs.create(body)
        except SandboxError as exc:
            return _error(exc)
        mcp = {"url": self._mcp_url(managed.run_id), "token": managed.token}
        created = {"id": managed.run_id, "mcp": mcp, "tools": managed.tools}
        return JSONResponse({**created, "pooled": managed.pooled}, 201)

    async def list_runs(self, _request: Request) -> Response:
        return JSONResponse({"runs": [run.view() for run in self._runs.all()]})

    async def show(self, request: Request) -> Response:
        try:
            return JSONResponse(self._runs.get(request.path_params["run_id"]).view())
        except SandboxError as exc:
            return _error(exc)

    async def delete(self, request: Request) -> Response:
        try:
            await self._runs.delete(request.path_params["run_id"])
        except SandboxError as exc:
            return _error(exc)
        return Response(status_code=204)

    async def audit(self, request: Request) -> Response:
        run_id = str(request.path_params["run_id"])
        try:
            self._runs.check_held(run_id)  # only runs this service holds or held
            summary = await anyio.to_thread.run_sync(functools.partial(summarise, run_id))
        except SandboxError as exc:
            return _error(exc)
        return JSONResponse(summary.to_json())


@functools.cache
def openapi_document() -> dict[str, object]:
    """Return the OpenAPI 3.1 document of the API (request schema from `CreateRun`)."""
    created = {
        "type": "object",
        "required": ["id", "mcp", "tools", "pooled"],
        "properties": {
            "id": {"type": "string"},
            "mcp": {
                "type": "object",
                "properties": {"url": {"type": "string"}, "token": {"type": "string"}},
            },
            "tools": {"type": "integer"},
            "pooled": {"type": "boolean", "description": "claimed from a warm pool, else cold"},
        },
    }
    error = {"type": "object", "properties": {"error": {"type": "string"}, "lines": {}}}
    json_of: Callable[[object], dict[str, object]] = lambda schema: {  # noqa: E731
        "content": {"application/json": {"schema": schema}}
    }
    run_path = {"parameters": [{"name": "run_id", "in": "path", "required": True}]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "perstack-sandbox serve", "version": "1"},
        "paths": {
            "/v1/runs": {
                "post": {
                    "requestBody": json_of(CreateRun.model_json_schema()),
                    "responses": {
                        "201": {"description": "started", **json_of(created)},
                        "400": {"description": "bad input (the CLI's message)", **json_of(error)},
                        "503": {"description": "draining", **json_of(error)},
                    },
                },
                "get": {"responses": {"200": {"description": "the runs held"}}},
            },
            "/v1/runs/{run_id}": {
                **run_path,
                "get": {"responses": {"200": {"description": "the run"}, "404": {}}},
                "delete": {"responses": {"204": {"description": "torn down"}, "404": {}}},
            },
            "/v1/runs/{run_id}/audit": {
                **run_path,
                "get": {"responses": {"200": {"description": "the `audit --json` document"}}},
            },
            "/v1/runs/{run_id}/mcp": {
                **run_path,
                "post": {"description": "the run's streamable-HTTP MCP endpoint (its token)"},
            },
        },
    }
