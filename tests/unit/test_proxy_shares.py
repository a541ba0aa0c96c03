"""Fairness: each skill's share of the proxy, and the bounded pool of unauthenticated clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from typing import TYPE_CHECKING, Any

from proxy_helpers import (
    client_hello,
    connect_request,
    exchange,
    policy,
    read_response_head,
    read_until_eof,
    running_proxy,
    status_of,
)

from perstack_sandbox_proxy._fairness import (
    SKILL_CONNECTION_LIMIT,
    SKILL_PENDING_LIMIT,
    Shares,
    skill_share,
)
from perstack_sandbox_proxy._policy import Limits
from perstack_sandbox_proxy._resolver import SystemResolver

if TYPE_CHECKING:
    import pytest
    from proxy_helpers import ProxyHarness

HOSTILE_TOKEN = "hostile-token-0123456789abcdefghijklmno"  # noqa: S105 - a test token
DECOY_TOKEN = "decoy-token-0123456789abcdefghijklmnopq"  # noqa: S105 - a test token


def _limits(**values: int) -> Limits:
    return Limits(**values)  # type: ignore[arg-type]


# --- the bookkeeping ----------------------------------------------------------------------


def test_every_skill_share_and_the_unauthenticated_pool_fit_under_the_global_cap() -> None:
    """The per-skill share is cut so that all skills plus the pool never exceed maxConnections."""
    limits = _limits(max_connections=100, max_unauthenticated=40, max_connections_per_skill=50)
    assert skill_share(limits, 1) == 50
    assert skill_share(limits, 2) == 30
    assert skill_share(limits, 3) * 3 + 40 <= 100
    assert skill_share(limits, 500) == 1


def test_a_full_unauthenticated_pool_evicts_its_oldest_member() -> None:
    """With the pool full, a new connection pushes out the one that has waited longest."""
    shares: Shares[str] = Shares(_limits(max_unauthenticated=2), skills=2)
    assert shares.opened("a") is None
    assert shares.opened("b") is None
    assert shares.opened("c") == "a"
    shares.heard("b")  # b sent its head: no longer evictable
    assert shares.opened("d") is None
    assert shares.opened("e") == "c"
    assert shares.unauthenticated == 2


def test_a_skill_is_refused_beyond_its_pending_share_until_one_is_spliced() -> None:
    """Pending connections of one skill are capped; a spliced one frees a pending slot."""
    shares: Shares[int] = Shares(_limits(max_pending_per_skill=2), skills=2)
    assert shares.admit(1, "hostile") is None
    assert shares.admit(2, "hostile") is None
    assert shares.admit(3, "hostile") == SKILL_PENDING_LIMIT
    assert shares.admit(4, "decoy") is None
    shares.established(1)
    assert shares.admit(5, "hostile") is None
    assert (shares.open, shares.pending) == ({"hostile": 3, "decoy": 1}, {"hostile": 2, "decoy": 1})


def test_a_skill_is_refused_beyond_its_connection_share_until_one_closes() -> None:
    """Open connections of one skill, spliced or not, are capped; a close frees a slot."""
    limits = _limits(max_connections_per_skill=2, max_pending_per_skill=5)
    shares: Shares[int] = Shares(limits, skills=2)
    for key in (1, 2):
        assert shares.admit(key, "hostile") is None
        shares.established(key)
    assert shares.admit(3, "hostile") == SKILL_CONNECTION_LIMIT
    assert shares.admit(4, "decoy") is None
    shares.released(1)
    assert shares.admit(5, "hostile") is None
    assert shares.open == {"hostile": 2, "decoy": 1}


def test_releasing_gives_back_exactly_what_was_held() -> None:
    """After every key is released, no count is left over, whatever stage each reached."""
    shares: Shares[int] = Shares(_limits(max_unauthenticated=3), skills=1)
    shares.opened(1)
    shares.opened(2)
    shares.heard(2)
    shares.opened(3)
    shares.admit(3, "s")
    shares.opened(4)
    shares.admit(4, "s")
    shares.established(4)
    shares.admit(5, None)  # no per-skill limits (a policy without skills)
    for key in (1, 2, 3, 4, 5):
        shares.released(key)
        shares.released(key)  # a second release changes nothing
    assert (shares.unauthenticated, shares.open, shares.pending) == (0, {"s": 0}, {"s": 0})


# --- through the proxy --------------------------------------------------------------------


def _skills_policy(**limits: float) -> dict[str, Any]:
    document = policy(allowed=("api.example.com",), **limits)
    document["skills"] = {
        HOSTILE_TOKEN: {"skill": "hostile", "allowedDomains": ["api.example.com"]},
        DECOY_TOKEN: {"skill": "decoy", "allowedDomains": ["api.example.com"]},
    }
    return document


def _connect_as(token: str) -> bytes:
    basic = base64.b64encode(f"x:{token}".encode()).decode()
    return connect_request("api.example.com:443")[:-2] + (
        f"Proxy-Authorization: Basic {basic}\r\n\r\n".encode()
    )


def _pending(harness: ProxyHarness, token: str, stack: contextlib.ExitStack) -> socket.socket:
    """Open a tunnel as the skill of ``token`` and leave it waiting for its ClientHello."""
    sock = stack.enter_context(harness.open())
    sock.sendall(_connect_as(token))
    assert status_of(read_response_head(sock)) == 200
    return sock


def _decoy_tunnel_echoes(harness: ProxyHarness) -> bool:
    with harness.open() as sock:
        sock.sendall(_connect_as(DECOY_TOKEN))
        if status_of(read_response_head(sock)) != 200:
            return False
        hello = client_hello("api.example.com")
        sock.sendall(hello)
        echoed = b""
        while len(echoed) < len(hello) and (chunk := sock.recv(65536)):
            echoed += chunk
        return echoed == hello


def test_a_skill_past_its_pending_share_gets_503_while_its_sibling_still_tunnels() -> None:
    """The hostile skill's third half-open tunnel is refused and audited; the decoy's works."""
    with running_proxy(_skills_policy(maxPendingPerSkill=2)) as harness:
        with contextlib.ExitStack() as stack:
            _pending(harness, HOSTILE_TOKEN, stack)
            _pending(harness, HOSTILE_TOKEN, stack)
            refused = exchange(harness, _connect_as(HOSTILE_TOKEN))
            assert status_of(refused) == 503
            assert refused.endswith(b"\r\n\r\nskill-pending-limit\n")
            assert _decoy_tunnel_echoes(harness)
        harness.wait_for(lambda: harness.server.active == 0, "every connection closed")
        denied = [d for d in harness.decisions() if d["reason"] == "skill-pending-limit"]
        assert [(d["skill"], d["decision"]) for d in denied] == [("hostile", "deny")]
        assert denied[0]["host"] == "api.example.com"
        assert denied[0]["dialled"] is None  # refused before any DNS or dial


def test_a_skill_holding_its_whole_share_in_idle_tunnels_leaves_its_sibling_room() -> None:
    """With maxConnections=6 and 2 skills, 2 idle tunnels fill the hostile's share, not the cap."""
    document = _skills_policy(maxConnections=6, maxUnauthenticated=2)
    with running_proxy(document) as harness, contextlib.ExitStack() as stack:
        for _ in range(2):
            _pending(harness, HOSTILE_TOKEN, stack).sendall(client_hello("api.example.com"))
        harness.wait_for(lambda: harness.server.shares.pending["hostile"] == 0, "both spliced")
        refused = exchange(harness, _connect_as(HOSTILE_TOKEN))
        assert refused.endswith(b"\r\n\r\nskill-connection-limit\n")
        assert _decoy_tunnel_echoes(harness)


def test_silent_connections_beyond_the_pool_evict_the_oldest_and_the_audit_says_so() -> None:
    """Silent clients beyond a pool of two evict the oldest (503, audited); a request gets in."""
    with running_proxy(policy(maxUnauthenticated=2)) as harness, contextlib.ExitStack() as stack:
        first = stack.enter_context(harness.open())
        harness.wait_for(lambda: harness.server.shares.unauthenticated == 1, "the first")
        for _ in range(2):
            stack.enter_context(harness.open())
        assert read_until_eof(first).endswith(b"\r\n\r\ntoo-many-unauthenticated\n")
        # The health check is the third newcomer of a full pool: it evicts the second silent one.
        assert status_of(exchange(harness, b"GET /healthz HTTP/1.1\r\n\r\n")) == 200
        evicted = [d for d in harness.decisions() if d["reason"] == "too-many-unauthenticated"]
        assert [(d["decision"], d["skill"]) for d in evicted] == [("deny", None)] * 2


def test_concurrent_lookups_of_one_name_share_one_getaddrinfo_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Five CONNECTs resolving one name at once take one lookup (one thread), not five."""
    calls: list[str] = []

    async def lookups() -> list[list[str]]:
        loop = asyncio.get_running_loop()
        gate = asyncio.Event()

        async def getaddrinfo(host: str, *_: object, **__: object) -> list[tuple[Any, ...]]:
            calls.append(host)
            await gate.wait()
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 443))]

        monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
        resolver = SystemResolver()
        waiting = [asyncio.ensure_future(resolver.resolve("a.example")) for _ in range(5)]
        loop.call_soon(gate.set)  # after every query has joined the one lookup
        answers = await asyncio.gather(*waiting)
        answers.append(await resolver.resolve("a.example"))  # a later query looks up afresh
        return answers

    assert asyncio.run(lookups()) == [["192.0.2.1"]] * 6
    assert calls == ["a.example", "a.example"]
