"""The immediate path: a resolver that answers at once, and a dial without a task (decision 46).

The rest of the proxy's unit tests await the resolver; these run the same checks through the
path a table resolver (the policy's test hosts, the benchmarks) takes.
"""

from __future__ import annotations

import pytest
from proxy_helpers import (
    ImmediateResolver,
    connect_request,
    exchange,
    open_tunnel,
    policy,
    running_proxy,
    status_of,
)


def test_allowed_name_tunnels_after_one_immediate_answer() -> None:
    """Bytes cross the tunnel, the name is looked up once, and the checked address is dialled."""
    resolver = ImmediateResolver()
    with running_proxy(resolver=resolver) as harness:
        with open_tunnel(harness, "API.example.com:443", "api.example.com") as sock:
            sock.sendall(b"ping")
            echoed = b""
            # The sink echoes the ClientHello first; the ping may arrive in a later read.
            while not echoed.endswith(b"ping"):
                chunk = sock.recv(65536)
                assert chunk, f"the tunnel closed after {len(echoed)} bytes"
                echoed += chunk
        harness.wait_for(lambda: len(harness.decisions()) == 1, "the decision line")
        [decision] = harness.decisions()
        assert (decision["decision"], decision["dialled"]) == ("allow", "127.0.0.2")
        assert resolver.queries == ["api.example.com"]
        assert harness.dials == [("127.0.0.2", 443)]


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        ([["10.0.0.1"]], "non-public-address"),
        ([["169.254.169.254"]], "non-public-address"),
        ([["127.0.0.2", "192.168.0.1"]], "non-public-address"),
        ([["127.0.0.1"]], "own-address"),
        ([["not-an-ip"]], "bad-answer"),
    ],
    ids=["private", "metadata", "mixed", "own-address", "not-an-address"],
)
def test_refused_immediate_answer_is_never_dialled(answers: list[list[str]], reason: str) -> None:
    """Every immediate answer is checked as an awaited one is: refused with 403, not dialled.

    Seen failing: with `check_answers` skipped on the immediate path, the private answers were
    dialled and the client got 502 instead of 403.
    """
    resolver = ImmediateResolver({"api.example.com": answers})
    with running_proxy(resolver=resolver) as harness:
        response = exchange(harness, connect_request("api.example.com:443"))
        assert status_of(response) == 403
        assert harness.decisions()[0]["reason"] == reason
        assert harness.dials == []


def test_rebinding_answer_is_refused_on_the_next_immediate_lookup() -> None:
    """Each CONNECT asks again: the second, private answer is refused, undialled."""
    resolver = ImmediateResolver({"api.example.com": [["127.0.0.2"], ["10.0.0.1"]]})
    with running_proxy(resolver=resolver) as harness:
        open_tunnel(harness, "api.example.com:443", "api.example.com").close()
        harness.wait_for(lambda: len(harness.decisions()) == 1, "the first decision")
        response = exchange(harness, connect_request("api.example.com:443"))
        assert status_of(response) == 403
        assert harness.dials == [("127.0.0.2", 443)]


def test_unknown_name_gets_502_from_the_immediate_resolver() -> None:
    """A name the table does not hold is a 502 ``resolve-failed``."""
    with running_proxy(resolver=ImmediateResolver(default=None)) as harness:
        response = exchange(harness, connect_request("api.example.com:443"))
        assert status_of(response) == 502
        assert harness.decisions()[0]["reason"] == "resolve-failed"


def test_refused_first_address_is_followed_by_the_next_checked_one() -> None:
    """When the first address refuses the handshake, the next checked address is dialled."""
    resolver = ImmediateResolver({"api.example.com": [["127.0.0.3", "127.0.0.2"]]})
    with running_proxy(resolver=resolver) as harness:
        open_tunnel(harness, "api.example.com:443", "api.example.com").close()
        harness.wait_for(lambda: len(harness.decisions()) == 1, "the decision line")
        assert harness.decisions()[0]["dialled"] == "127.0.0.2"
        assert harness.dials == [("127.0.0.3", 443), ("127.0.0.2", 443)]


def test_every_address_refusing_gets_502_on_the_immediate_path() -> None:
    """When no checked address takes the handshake the client gets 502 ``connect-failed``."""
    resolver = ImmediateResolver({"api.example.com": [["127.0.0.3", "127.0.0.4"]]})
    with running_proxy(resolver=resolver) as harness:
        response = exchange(harness, connect_request("api.example.com:443"))
        assert status_of(response) == 502
        assert harness.decisions()[0]["reason"] == "connect-failed"
        assert harness.dials == [("127.0.0.3", 443), ("127.0.0.4", 443)]


def test_hanging_resolver_falls_back_to_the_awaited_lookup_and_times_out() -> None:
    """Without an immediate answer the proxy awaits the resolver, bounded by its timeout."""
    resolver = ImmediateResolver()
    resolver.hang = True
    with running_proxy(policy(resolveTimeout=0.2), resolver) as harness:
        response = exchange(harness, connect_request("api.example.com:443"))
        assert status_of(response) == 504
        assert harness.decisions()[0]["reason"] == "resolve-timeout"
