"""A run's own sandbox start without an engine: the proxy's address, its grant, its control client.

The engine calls are replaced by fakes that record what they were given (decisions 50, 51).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

import anyio
import pytest

from perstack_sandbox import state
from perstack_sandbox.engine import _containers, _control, _proxybox, _sandbox, _start
from perstack_sandbox.errors import EngineError
from perstack_sandbox.plan import SandboxPlan, SkillLaunch

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """Run on asyncio only."""
    return "asyncio"


@pytest.mark.parametrize(
    ("subnet", "address"),
    [("10.213.0.16/28", "10.213.0.30"), ("172.30.0.8/29", "172.30.0.14")],
)
def test_the_proxy_takes_the_last_address_of_its_subnet(subnet, address):
    """Chosen with the subnet, away from the gateway and the engine's lowest-first picks."""
    network = ipaddress.IPv4Network(subnet)
    assert _proxybox.proxy_address(network) == address
    assert address != str(next(network.hosts()))  # never the gateway's


@dataclass
class FakeClient:
    """A control client exec: answers `reply` with exit status `code`; records what it got."""

    reply: bytes
    code: int
    received: bytearray = field(default_factory=bytearray)
    closed_with_kill: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Wire the streams: stdin into `received`, stdout the reply then its end."""
        send, self.stdout = anyio.create_memory_object_stream[bytes](1)
        send.send_nowait(self.reply)
        send.close()
        self.stdin = self

    async def send(self, item: bytes) -> None:
        """Take the message."""
        self.received.extend(item)

    async def aclose(self) -> None:
        """End of the message."""

    async def pump(self) -> None:
        """Nothing to move: the streams are in memory."""

    async def wait(self) -> int:
        """Return the exit status."""
        return self.code

    async def close(self, *, kill: bool = True) -> None:
        """Record how it was closed."""
        self.closed_with_kill.append(kill)


async def test_a_control_message_is_sent_again_while_the_socket_does_not_answer(monkeypatch):
    """An unbound socket (exit 2) is retried with a new client; no client is ever killed."""
    unbound = json.dumps({"ok": False, "error": "control socket: not there"}).encode()
    clients = [FakeClient(unbound, 2), FakeClient(b'{"ok": true}', 0)]
    opened = iter(clients)

    async def open_control(_proxy: str) -> FakeClient:
        return next(opened)

    monkeypatch.setattr(_control, "open_control", open_control)
    monkeypatch.setattr(_control, "CONTROL_RETRY_S", 0)
    reply = await _control.send_control("proxy-id", {"op": "grant", "skills": {}})
    assert reply == {"ok": True}
    assert [json.loads(c.received) for c in clients] == [{"op": "grant", "skills": {}}] * 2
    assert [c.closed_with_kill for c in clients] == [[False], [False]]


async def test_a_refused_control_message_is_an_engine_error_quoting_the_proxy():
    """`ok: false` with a reason raises EngineError with that reason."""
    refusal = json.dumps({"ok": False, "error": "grant: skills must be an object"}).encode()
    with pytest.raises(EngineError, match="skills must be an object"):
        await _control.send_control("proxy-id", b"{}", control=FakeClient(refusal, 1))  # type: ignore[arg-type]


def _plan(tmp_path) -> SandboxPlan:
    launch = SkillLaunch(
        name="api",
        kind="local",
        argv=("python3", "server.py"),
        package=None,
        env_names=(),
        workdir="/expert",
        allowed_domains=("api.example.com",),
    )
    return SandboxPlan(expert="e", config_dir=str(tmp_path), skills=(launch,))


async def test_a_runs_proxy_starts_without_tokens_and_is_granted_them_once_it_answers(
    tmp_path, monkeypatch
):
    """The proxy's policy requires a grant and holds no token; the grant carries the skill's."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "state"))
    seen: dict[str, object] = {}

    async def start(spec, _run, *, on_proxy, **_options):
        seen["policy"] = json.loads(spec.policy)
        answers = anyio.Event()
        answers.set()
        await on_proxy("proxy-id", answers)
        return _containers.Started(("box",), "proxy-id", "10.0.0.14", "", "net", anyio.Event())

    async def grant_when_answering(proxy_id, _answers, credentials, domains):
        seen["grant"] = (proxy_id, dict(credentials), dict(domains))

    monkeypatch.setattr(_sandbox, "require_isolation", lambda _isolation: None)
    monkeypatch.setattr(_start, "start", start)
    monkeypatch.setattr(_sandbox, "grant_when_answering", grant_when_answering)
    run = state.create_run("e")
    sandbox = await _sandbox.start_sandbox(_plan(tmp_path), image="img", run=run)
    token = sandbox.credentials["api"]
    assert (seen["policy"]["skills"], seen["policy"]["requireGrant"]) == ({}, True)
    assert token not in json.dumps(seen["policy"])
    assert seen["grant"] == ("proxy-id", {"api": token}, {"api": ["api.example.com"]})
    assert token not in run.policy_path.read_text()
