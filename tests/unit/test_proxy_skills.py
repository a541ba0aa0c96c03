"""Per-skill credentials: with ``skills`` in the policy, a CONNECT gets its skill's list."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from proxy_helpers import (
    ProxyHarness,
    client_hello,
    connect_request,
    exchange,
    policy,
    read_response_head,
    running_proxy,
    status_of,
)

from perstack_sandbox_proxy._policy import PolicyError, parse_policy

SEARCH_TOKEN = "search-token-0123456789abcdefghijklmnop"  # noqa: S105 - a test token
MAIL_TOKEN = "mail-token-0123456789abcdefghijklmnopqrs"  # noqa: S105 - a test token


def _skills_policy() -> dict[str, Any]:
    document = policy(allowed=("api.example.com", "*.example.org"))
    document["skills"] = {
        SEARCH_TOKEN: {"skill": "search", "allowedDomains": ["api.example.com"]},
        MAIL_TOKEN: {"skill": "mail", "allowedDomains": ["*.example.org"]},
    }
    return document


def _with_credential(target: str, user: str, token: str) -> bytes:
    basic = base64.b64encode(f"{user}:{token}".encode()).decode()
    request = connect_request(target)
    return request[:-2] + f"Proxy-Authorization: Basic {basic}\r\n\r\n".encode()


def _tunnel(harness: ProxyHarness, raw: bytes, sni: str) -> bytes:
    """Open a tunnel with ``raw`` and send a ClientHello; return what the upstream echoes."""
    with harness.open() as sock:
        sock.sendall(raw)
        head = read_response_head(sock)
        assert status_of(head) == 200, head
        hello = client_hello(sni)
        sock.sendall(hello)
        echoed = b""
        while len(echoed) < len(hello):
            chunk = sock.recv(65536)
            if not chunk:
                break
            echoed += chunk
        return echoed


def test_each_skill_reaches_its_own_hosts_through_its_credential() -> None:
    """A skill's credential opens a tunnel to a host on that skill's own list."""
    with running_proxy(_skills_policy()) as harness:
        raw = _with_credential("api.example.com:443", "search", SEARCH_TOKEN)
        hello = _tunnel(harness, raw, "api.example.com")
        assert hello[:1] == b"\x16"  # the ClientHello came back from the echo upstream
        harness.wait_for(lambda: len(harness.decisions()) == 1, "the decision line")
        decision = harness.decisions()[0]
        assert (decision["decision"], decision["skill"]) == ("allow", "search")


@pytest.mark.parametrize(
    ("token", "target"),
    [(SEARCH_TOKEN, "www.example.org:443"), (MAIL_TOKEN, "api.example.com:443")],
    ids=["search-to-mail-host", "mail-to-search-host"],
)
def test_skill_cannot_reach_another_skills_host(token: str, target: str) -> None:
    """A host on another skill's list (and on the expert's list) is refused before any DNS."""
    with running_proxy(_skills_policy()) as harness:
        response = exchange(harness, _with_credential(target, "x", token))
        assert status_of(response) == 403
        assert response.endswith(b"\r\n\r\nnot-allowed\n")
        assert harness.resolver.queries == []
        assert harness.dials == []


@pytest.mark.parametrize(
    "raw",
    [
        connect_request("api.example.com:443"),
        _with_credential("api.example.com:443", "search", "wrong-token"),
        _with_credential("api.example.com:443", "search", ""),
        _with_credential("api.example.com:443", "search", SEARCH_TOKEN + "x"),
        _with_credential("api.example.com:443", "search", SEARCH_TOKEN).replace(
            b"Basic ", b"Bearer "
        ),
        _with_credential("api.example.com:443", "search", SEARCH_TOKEN).replace(
            b"Proxy-Authorization: Basic ", b"Proxy-Authorization: Basic !"
        ),
        _with_credential("api.example.com:443", "search", SEARCH_TOKEN)[:-2]
        + _with_credential("api.example.com:443", "mail", MAIL_TOKEN).split(b"\r\n")[2]
        + b"\r\n\r\n",
    ],
    ids=["none", "unknown", "empty", "longer", "not-basic", "bad-base64", "two-headers"],
)
def test_missing_or_unknown_credential_is_refused_before_any_lookup(raw: bytes) -> None:
    """Without exactly one valid skill credential the answer is 403 no-skill-credential, no DNS."""
    with running_proxy(_skills_policy()) as harness:
        response = exchange(harness, raw)
        assert status_of(response) == 403
        assert response.endswith(b"\r\n\r\nno-skill-credential\n")
        assert harness.resolver.queries == []
        assert harness.dials == []
        harness.wait_for(lambda: len(harness.decisions()) == 1, "the decision line")
        decision = harness.decisions()[0]
        assert (decision["reason"], decision["skill"]) == ("no-skill-credential", None)


def test_audit_names_the_skill_and_never_holds_its_token() -> None:
    """Allowed and refused decisions name the skill; no audit line contains a token."""
    with running_proxy(_skills_policy()) as harness:
        _tunnel(harness, _with_credential("x.example.org:443", "mail", MAIL_TOKEN), "x.example.org")
        exchange(harness, _with_credential("evil.com:443", "mail", MAIL_TOKEN))
        harness.wait_for(lambda: len(harness.decisions()) == 2, "two decision lines")
        decisions = harness.decisions()
        assert [(d["skill"], d["decision"]) for d in decisions] == [
            ("mail", "allow"),
            ("mail", "deny"),
        ]
        text = harness.audit_stream.getvalue()
        assert MAIL_TOKEN not in text
        assert base64.b64encode(f"mail:{MAIL_TOKEN}".encode()).decode() not in text


def test_policy_without_skills_needs_no_credential() -> None:
    """Without ``skills`` the expert-level list applies and no credential is asked for."""
    with running_proxy() as harness:
        _tunnel(harness, connect_request("api.example.com:443"), "api.example.com")
        harness.wait_for(lambda: len(harness.decisions()) == 1, "the decision line")
        assert harness.decisions()[0]["skill"] is None


@pytest.mark.parametrize(
    "skills",
    [
        [],
        {"": {"skill": "a", "allowedDomains": []}},
        {"t": {"allowedDomains": []}},
        {"t": {"skill": "a", "allowedDomains": ["Evil.com"]}},
    ],
    ids=["not-an-object", "empty-token", "no-skill-name", "non-canonical-domain"],
)
def test_malformed_skills_section_is_rejected(skills: object) -> None:
    """A ``skills`` section of the wrong shape is a policy error, not a silent default."""
    with pytest.raises(PolicyError):
        parse_policy({"allowedDomains": [], "skills": skills})


def test_policy_repr_does_not_show_tokens() -> None:
    """A parsed policy's repr (as in a traceback) holds skill names but no token."""
    parsed = parse_policy(_skills_policy())
    assert "search" in repr(parsed)
    assert SEARCH_TOKEN not in repr(parsed)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("169.254.169.254:443", "host-ip-literal"),
        ("api.example.com:80", "port-not-allowed"),
        ("metadata:443", "host-single-label"),
    ],
)
def test_a_refusal_before_the_allowlist_still_names_the_skill_that_asked(
    target: str, reason: str
) -> None:
    """A request refused for its host or port is attributed to the credential it carried.

    Issue 12: these refusals come before the allowlist check, where the credential used to be
    read, so the metadata-IP attempt was tied to no skill. Seen failing (skill null) with the
    proxy as it was before (the credential read in `_allowed_domains`, after those checks).
    """
    with running_proxy(_skills_policy()) as harness:
        response = exchange(harness, _with_credential(target, "mail", MAIL_TOKEN))
        assert status_of(response) in {400, 403}
        harness.wait_for(lambda: len(harness.decisions()) == 1, "the decision line")
        decision = harness.decisions()[0]
        assert (decision["reason"], decision["skill"]) == (reason, "mail")


def test_plain_http_with_a_credential_is_refused_and_attributed() -> None:
    """A plain-HTTP request that presents a skill's credential is refused, naming the skill.

    Seen failing (skill null) with the proxy as it was before issue 12.
    """
    basic = base64.b64encode(f"search:{SEARCH_TOKEN}".encode()).decode()
    raw = (
        b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n"
        + f"Proxy-Authorization: Basic {basic}\r\n\r\n".encode()
    )
    with running_proxy(_skills_policy()) as harness:
        assert status_of(exchange(harness, raw)) == 403
        harness.wait_for(lambda: len(harness.decisions()) == 1, "the decision line")
        decision = harness.decisions()[0]
        assert (decision["reason"], decision["skill"]) == ("plain-http-refused", "search")


def test_an_unknown_credential_is_attributed_to_no_skill() -> None:
    """A wrong token names no skill (a guessed token must not borrow a skill's name)."""
    with running_proxy(_skills_policy()) as harness:
        exchange(harness, _with_credential("169.254.169.254:443", "search", "wrong"))
        harness.wait_for(lambda: len(harness.decisions()) == 1, "the decision line")
        assert harness.decisions()[0]["skill"] is None
