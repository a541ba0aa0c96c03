"""The service's API without Docker: request validation, error answers, addresses, routes."""

from __future__ import annotations

import json

import anyio
import httpx2
import pytest

from perstack_sandbox.errors import (
    ConfigError,
    ConfigIssue,
    EngineError,
    InputError,
    MissingEnvError,
    UsageError,
)
from perstack_sandbox.service import parse_address, parse_create, parse_pool
from perstack_sandbox.service._address import check_listen
from perstack_sandbox.service._api import CreateRun, error_body, status_for
from perstack_sandbox.service._app import build_app, openapi_document
from perstack_sandbox.service._metrics import DecisionTail, Metrics
from perstack_sandbox.service._pools import Pools, open_pools
from perstack_sandbox.service._runs import Runs, RunSettings
from perstack_sandbox.text import error_lines

pytestmark = pytest.mark.anyio
SECRET = "s3cr3t-value-never-shown"  # noqa: S105 - a marker to look for, not a credential


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio."""
    return "asyncio"


def test_a_body_with_config_text_and_secrets_is_accepted() -> None:
    """Text config, expert and env parse; the secret is handed out only by `secrets()`."""
    body = parse_create(
        b'{"config": "x", "expert": "demo", "env": {"KEY": "%s"}}' % SECRET.encode()
    )
    assert body.secrets() == {"KEY": SECRET}
    assert SECRET not in repr(body)
    assert body.isolation == "runc"


def test_a_body_carries_the_cli_run_choices_sealing_tool_changes_and_backend() -> None:
    """The choices `tools`/`call`/`run` pass to a service parse, with the CLI's defaults."""
    body = parse_create(
        b'{"config": "x", "expert": "demo", "seal_secrets": true,'
        b' "seal_passthrough": ["pinned.example"], "accept_tool_changes": true,'
        b' "backend": "kubernetes"}'
    )
    assert (body.seal_secrets, body.seal_passthrough) == (True, ["pinned.example"])
    assert (body.accept_tool_changes, body.backend) == (True, "kubernetes")
    plain = parse_create(b'{"config": "x", "expert": "demo"}')
    assert (plain.seal_secrets, plain.accept_tool_changes, plain.backend) == (
        False,
        False,
        "docker",
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"not json", "not JSON"),
        (b'{"config": "x", "expert": "demo", "backend": "nomad"}', "backend:"),
        (b"[1]", "must be a JSON object"),
        (b'{"expert": "demo"}', "exactly one of `config`"),
        (b'{"expert": "demo", "config": "x", "config_path": "/p"}', "exactly one of `config`"),
        (b'{"config": "x"}', "expert: Field required"),
        (b'{"config": "x", "expert": "demo", "colour": 1}', "colour: Extra inputs"),
        (b'{"config": "x", "expert": "demo", "isolation": "kvm"}', "isolation:"),
        (b'{"config": "x", "expert": "demo", "limits": {"pids": "many"}}', "limits.pids:"),
    ],
)
def test_a_bad_body_is_a_usage_error_that_names_the_field(raw: bytes, expected: str) -> None:
    """Malformed bodies raise UsageError (answered 400) saying what is wrong."""
    with pytest.raises(UsageError) as caught:
        parse_create(raw)
    assert expected in str(caught.value)


def test_a_bad_secret_value_is_never_quoted_in_the_error() -> None:
    """A non-string secret is refused without echoing the value it was given."""
    with pytest.raises(UsageError) as caught:
        parse_create(b'{"config": "x", "expert": "d", "env": {"KEY": ["%s"]}}' % SECRET.encode())
    assert "env.KEY" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_input_errors_are_400_and_failures_500_with_the_cli_lines() -> None:
    """Bad input maps to 400, a failed run to 500; the lines are the CLI's `error_lines`."""
    config = ConfigError([ConfigIssue('experts."x".version', "bad version")])
    assert status_for(config) == 400
    assert status_for(MissingEnvError("SERVE_KEY is not set")) == 400
    assert status_for(EngineError("engine down")) == 500
    assert error_body(config) == {"error": str(config), "lines": error_lines(config)}
    assert error_body(config)["lines"] == ['error: experts."x".version: bad version']


@pytest.mark.parametrize(
    ("text", "rendered", "is_loopback"),
    [
        ("unix:/run/s.sock", "unix:/run/s.sock", True),
        ("127.0.0.1:8787", "127.0.0.1:8787", True),
        ("localhost:1", "localhost:1", True),
        ("[::1]:9", "::1:9", True),
        ("0.0.0.0:8787", "0.0.0.0:8787", False),
        ("10.1.2.3:80", "10.1.2.3:80", False),
    ],
)
def test_addresses_parse_and_know_whether_they_are_loopback(
    text: str, rendered: str, *, is_loopback: bool
) -> None:
    """unix:PATH and HOST:PORT parse; only a socket or a loopback host counts as local."""
    address = parse_address(text)
    assert str(address) == rendered
    assert address.is_loopback is is_loopback


@pytest.mark.parametrize("text", ["unix:", "8787", "host:port", ":80", "127.0.0.1:70000"])
def test_a_malformed_address_is_refused(text: str) -> None:
    """Neither unix:PATH nor HOST:PORT: a usage error."""
    with pytest.raises(UsageError, match=r"unix:PATH or HOST:PORT|needs a path"):
        parse_address(text)


def test_a_non_loopback_listen_address_needs_allow_remote() -> None:
    """0.0.0.0 is refused unless --allow-remote says so; loopback never needs it."""
    with pytest.raises(UsageError, match="--allow-remote"):
        check_listen(parse_address("0.0.0.0:8787"), allow_remote=False)
    check_listen(parse_address("0.0.0.0:8787"), allow_remote=True)
    check_listen(parse_address("127.0.0.1:8787"), allow_remote=False)


@pytest.mark.parametrize("text", ["demo", "demo=0", "=2", "demo=x"])
def test_a_malformed_pool_is_refused(text: str) -> None:
    """--pool wants EXPERT=N with N from 1."""
    with pytest.raises(UsageError, match="EXPERT=N"):
        parse_pool(text)


def test_a_pool_spec_parses() -> None:
    """EXPERT=N gives the expert and the size (an expert key may hold '=')."""
    spec = parse_pool("a=b=3")
    assert (spec.expert, spec.size) == ("a=b", 3)


def test_the_openapi_document_describes_the_run_routes() -> None:
    """The document is OpenAPI 3.1 with the create body's schema from CreateRun."""
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    paths = document["paths"]
    assert isinstance(paths, dict)
    assert {"/v1/runs", "/v1/runs/{run_id}", "/v1/runs/{run_id}/audit"} <= set(paths)
    assert "expert" in json_of(paths["/v1/runs"]["post"]["requestBody"])["properties"]


def json_of(body: dict[str, dict[str, dict[str, dict[str, object]]]]) -> dict[str, object]:
    """Return the JSON schema of a request body."""
    return body["content"]["application/json"]["schema"]


async def answers(token: str | None, *requests: tuple[str, str, dict[str, str]]) -> list[int]:
    """Send `requests` (method, path, headers) to a service app with no runs; return statuses."""
    metrics = Metrics()
    async with anyio.create_task_group() as group:
        runs = Runs(group, settings=RunSettings(), metrics=metrics, pools=Pools())
        app = build_app(runs, metrics, mcp_url=str, token=token)
        transport = httpx2.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx2.AsyncClient(transport=transport, base_url="http://t") as http:
            statuses = [
                (await http.request(method, path, headers=headers, json={})).status_code
                for method, path, headers in requests
            ]
    return statuses


async def test_the_service_token_guards_every_route_but_health_on_tcp() -> None:
    """With a token: 401 without it, 200 with it; /healthz open; the service token opens no run.

    Seen failing by hand with `ServiceGuard`'s token comparison turned off: the unguarded
    routes answered 200 (`[200, 200, 200, 200, 200, 401]`).
    """
    good = {"Authorization": "Bearer t0ken"}
    statuses = await answers(
        "t0ken",
        ("GET", "/v1/runs", {}),
        ("GET", "/v1/runs", {"Authorization": "Bearer wrong"}),
        ("GET", "/v1/runs", good),
        ("GET", "/metrics", {}),
        ("GET", "/healthz", {}),
        ("POST", "/v1/runs/nope/mcp", good),
    )
    assert statuses == [401, 401, 200, 401, 200, 401]


async def test_a_draining_service_answers_new_runs_503() -> None:
    """While draining, POST /v1/runs is 503 (after validation) and the health says so."""
    statuses = await answers(None, ("POST", "/v1/runs", {}), ("GET", "/v1/runs/x", {}))
    assert statuses == [400, 404]  # a body without expert is bad input before anything else
    metrics = Metrics()
    async with anyio.create_task_group() as group:
        runs = Runs(group, settings=RunSettings(), metrics=metrics, pools=Pools())
        runs.is_draining = True
        app = build_app(runs, metrics, mcp_url=str, token=None)
        transport = httpx2.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx2.AsyncClient(transport=transport, base_url="http://t") as http:
            created = await http.post("/v1/runs", json={"config": "x", "expert": "demo"})
            health = (await http.get("/healthz")).json()
    assert created.status_code == 503
    assert "shutting down" in created.json()["error"]
    assert health["status"] == "draining"


def test_proxy_decisions_are_counted_once_each_by_reason(tmp_path) -> None:
    """Whole decision lines count once across scrapes; a half-written line waits for its end."""
    audit = tmp_path / "audit.jsonl"
    deny = json.dumps({"event": "decision", "decision": "deny", "reason": "not-allowed"})
    allow = json.dumps({"event": "decision", "decision": "allow"})
    audit.write_text(f"{deny}\n{allow}\n" + '{"event": "close"}\n' + deny[:10])
    metrics = Metrics()
    tail = DecisionTail(audit)
    tail.count_new(metrics)
    with audit.open("a") as file:
        file.write(deny[10:] + "\n")
    tail.count_new(metrics)
    tail.count_new(metrics)
    denied = metrics.registry.get_sample_value(
        "perstack_sandbox_proxy_decisions_total", {"decision": "deny", "reason": "not-allowed"}
    )
    allowed = metrics.registry.get_sample_value(
        "perstack_sandbox_proxy_decisions_total", {"decision": "allow", "reason": "allowed"}
    )
    assert (denied, allowed) == (2.0, 1.0)


async def test_pools_need_a_config_that_has_their_expert(tmp_path) -> None:
    """--pool without -c is refused, and so is a pool of an Expert the config lacks."""
    specs = [parse_pool("demo=2")]
    with pytest.raises(UsageError, match="--pool needs --config"):
        async with open_pools(specs, config_path=None, isolation="runc", metrics=Metrics()):
            pass
    config = tmp_path / "perstack.toml"
    config.write_text('[experts."other"]\ninstruction = "x"\n')
    with pytest.raises(InputError, match="demo"):
        async with open_pools(specs, config_path=config, isolation="runc", metrics=Metrics()):
            pass
    async with open_pools([], config_path=None, isolation="runc", metrics=Metrics()) as pools:
        assert pools.held == {}


def create(config, **fields) -> CreateRun:
    """Return a `POST /v1/runs` body for `demo` of `config` with `fields`."""
    return CreateRun(config_path=str(config), expert="demo", **fields)


def test_a_run_gets_the_pool_of_its_config_expert_and_isolation_only(tmp_path) -> None:
    """run_options adds the matching pool (a fallback unless asked for), else nothing."""
    config = tmp_path / "perstack.toml"
    marker = object()
    pools = Pools(config_path=config, held={(str(config.resolve()), "demo", "runc"): marker})
    assert pools.run_options(create(config)) == {"pool": marker, "pool_fallback": True}
    assert pools.run_options(create(config, pool=True)) == {"pool": marker, "pool_fallback": False}
    assert pools.run_options(create(config, pool=False)) == {}
    assert pools.run_options(create(config, isolation="gvisor")) == {}
    assert pools.run_options(create(config, backend="kubernetes")) == {}
    assert pools.run_options(CreateRun(config="", expert="demo")) == {}


def test_an_explicit_pool_request_without_a_pool_is_refused(tmp_path) -> None:
    """`"pool": true` for a run the service keeps no pool of is bad input, not a cold start."""
    config = tmp_path / "perstack.toml"
    pools = Pools(config_path=config, held={(str(config.resolve()), "demo", "runc"): object()})
    with pytest.raises(UsageError, match="no warm pool of 'demo'"):
        pools.run_options(create(config, pool=True, isolation="gvisor"))
    with pytest.raises(UsageError, match="no warm pool of 'other'"):
        pools.run_options(CreateRun(config_path=str(config), expert="other", pool=True))
