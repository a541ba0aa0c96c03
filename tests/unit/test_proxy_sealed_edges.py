"""The sealed path's edges: live sealed tunnels and the pending share, short values, targets."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import string
from typing import TYPE_CHECKING, Any

import pytest
from proxy_helpers import exchange, read_response_head, status_of
from sealed_harness import HOST, OTHER, PLACEHOLDERS, TOKENS, VALUES, Sealed, get, open_sealed

from perstack_sandbox.plan import Secret, SkillSecrets, seal_secrets
from perstack_sandbox_proxy import _seal
from perstack_sandbox_proxy._http import Refusal
from perstack_sandbox_proxy._seal import (
    MIN_MASKED_BYTES,
    Replacer,
    SealedValue,
    SealState,
    mask,
    substitute,
)
from perstack_sandbox_proxy._sealed_target import in_origin_form

if TYPE_CHECKING:
    import http.client
    import socket

LIVE_TUNNELS = 40  # more than the default maxPendingPerSkill (32)
PENDING_SHARE = 32


def _connect_as(skill: str) -> bytes:
    credential = base64.b64encode(f"{skill}:{TOKENS[skill]}".encode()).decode()
    return (
        f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n"
        f"Proxy-Authorization: Basic {credential}\r\n\r\n"
    ).encode()


def _half_open(sealed: Sealed, skill: str, stack: contextlib.ExitStack) -> socket.socket:
    """Open a tunnel as ``skill`` and leave it waiting for its ClientHello (pending)."""
    sock = stack.enter_context(sealed.harness.open())
    sock.sendall(_connect_as(skill))
    assert status_of(read_response_head(sock)) == 200
    return sock


def test_forty_live_sealed_tunnels_of_one_skill_all_work_and_pending_ones_still_count() -> None:
    """40 kept-alive sealed tunnels all answer; 32 half-open ones beside them fill the share.

    Fails when: the session does not mark a sealed tunnel established before handing it to the
    relay (checked by hand: without `shares.established(self)` in `_terminate`, the 33rd
    sealed connection got 503 skill-pending-limit).
    """
    with open_sealed() as sealed, contextlib.ExitStack() as stack:
        live: list[http.client.HTTPSConnection] = []
        for _ in range(LIVE_TUNNELS):
            conn = sealed.connection("one")
            stack.callback(conn.close)
            response, _ = get(conn, "/", {})
            assert response.status == 200
            live.append(conn)
        assert sealed.harness.server.shares.pending["one"] == 0
        for conn in live:  # every one of them is still alive, on its first connection
            assert get(conn, "/again", {})[0].status == 200
        for _ in range(PENDING_SHARE):
            _half_open(sealed, "one", stack)
        refused = exchange(sealed.harness, _connect_as("one"))
        assert refused.endswith(b"\r\n\r\nskill-pending-limit\n")
        shares = sealed.harness.server.shares
        assert (shares.pending["one"], shares.open["one"]) == (
            PENDING_SHARE,
            LIVE_TUNNELS + PENDING_SHARE,
        )


# --- short values -------------------------------------------------------------------------

# Every letter and digit: a placeholder as short as its value (one character) is in here.
EVERY_CHARACTER = string.ascii_letters + string.digits


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _short_value_seal() -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """Return the orchestrator's seal message (one: a long key, DEBUG=1) and its placeholders."""
    resolved = {
        "one": SkillSecrets("one", {"ONE_KEY": Secret(VALUES["one"]), "DEBUG": Secret("1")}),
        "two": SkillSecrets("two", {"TWO_KEY": Secret(VALUES["two"])}),
    }
    sealed = seal_secrets(resolved, ("pinned.example.org",))
    placeholders = {
        skill: {name: value.reveal() for name, value in found.values.items()}
        for skill, found in sealed.placeholders.items()
    }
    return json.loads(sealed.message()), placeholders


def test_a_one_character_secret_leaves_the_rest_of_its_owners_request_intact() -> None:
    """DEBUG=1 beside a long key: both arrive as real values; Host and every other byte unchanged.

    Fails when: placeholders and masked values may be as short as one character (checked by
    hand: with both minimums set to 1 in plan/_sealing.py and proxy/_seal.py, the response's
    `HTTP/1.1` reached the client as `HTTP/E.E`, DEBUG's placeholder, and the call failed).
    """
    message, placeholders = _short_value_seal()
    one = placeholders["one"]
    target = f"/v1?debug={one['DEBUG']}&note={EVERY_CHARACTER}"
    headers = {
        "Authorization": f"Bearer {one['ONE_KEY']}",
        "X-Debug": one["DEBUG"],
        "X-Note": EVERY_CHARACTER,
    }
    with open_sealed(message=message) as sealed:
        response, echoed = get(sealed.connection("one"), target, headers)
        lines = sealed.sealed_lines()
    assert response.status == 200
    digests = echoed["sha256"]
    assert digests["authorization"] == _sha256(f"Bearer {VALUES['one']}")
    assert digests["x-debug"] == _sha256("1")
    assert digests["x-note"] == _sha256(EVERY_CHARACTER)
    assert digests["host"] == _sha256(HOST)
    assert echoed["targetSha256"] == _sha256(f"/v1?debug=1&note={EVERY_CHARACTER}")
    assert sorted(lines[-1]["variables"]) == ["DEBUG", "ONE_KEY"]


def test_another_skills_request_holding_a_short_values_character_passes_unmangled() -> None:
    """Skill two sends every character; it is not refused, and the response is not masked.

    Fails when: placeholders may be one character (checked by hand as above: 403
    foreign-placeholder), or values shorter than the minimum are masked in responses
    (checked by hand: masking every value, the status line's `1`s became DEBUG's 16-character
    placeholder and the client could not read the response).
    """
    message, _ = _short_value_seal()
    target = f"/items/1?page=1&note={EVERY_CHARACTER}"
    with open_sealed(message=message) as sealed:
        response, echoed = get(sealed.connection("two", OTHER), target, {"X-Echo-Back": "1"})
    assert response.status == 200
    assert echoed["target"] == target
    assert (response.getheader("X-Echoed"), echoed["echoed"]) == ("1", "1")


def test_a_substituted_value_is_never_scanned_again() -> None:
    """A real value holding another of the skill's placeholders goes up exactly as it is.

    Fails when: substitution replaces one placeholder after another (checked by hand: with a
    loop of `bytes.replace` per value, B's placeholder inside A's value became B's value).
    """
    inner = b"PB-placeholder-00"
    state = SealState()
    state.by_skill = {
        "s": (
            SealedValue("A", b"PA-placeholder-00", b"value-of-a[" + inner + b"]"),
            SealedValue("B", inner, b"value-of-b-000000"),
        )
    }
    head = b"GET / HTTP/1.1\r\nAuthorization: PA-placeholder-00\r\n\r\n"
    out, used, owner = substitute(head, state, "s")
    assert out == b"GET / HTTP/1.1\r\nAuthorization: value-of-a[PB-placeholder-00]\r\n\r\n"
    assert (used, owner) == (["A"], None)


def test_a_masked_value_is_never_scanned_again() -> None:
    """A placeholder holding another real value reaches the skill exactly as it is.

    Fails when: masking replaces one value after another (checked by hand: with a loop of
    `bytes.replace` per value, the second value inside the first placeholder was masked).
    """
    second = b"second-value-0000"
    replacer = Replacer({b"first-value-00000000": b"P[" + second + b"]P", second: b"Q" * 17})
    assert mask(b"<first-value-00000000>", replacer) == b"<P[second-value-0000]P>"


# --- request targets ----------------------------------------------------------------------


def _send(conn: http.client.HTTPSConnection, target: str) -> http.client.HTTPResponse:
    """Send GET ``target`` with the right Host (http.client would take it from an absolute URL)."""
    conn.putrequest("GET", target, skip_host=True)
    conn.putheader("Host", HOST)
    conn.putheader("Authorization", f"Bearer {PLACEHOLDERS['one']}")
    conn.endheaders()
    return conn.getresponse()


@pytest.mark.parametrize(
    ("target", "status", "reason"),
    [
        ("https://evil.example.net/steal", 421, "sealed-target-mismatch"),
        ("//evil.example.net/steal", 400, "sealed-bad-target"),
        (f"https://{HOST}@evil.example.net/steal", 421, "sealed-target-mismatch"),
        (f"https://{HOST}:8443/steal", 421, "sealed-target-mismatch"),
        (f"http://{HOST}/steal", 400, "sealed-bad-target"),
        (f"https://{HOST}//evil.example.net/steal", 400, "sealed-bad-target"),
        (f"{HOST}:443", 400, "sealed-bad-target"),
    ],
)
def test_a_target_not_naming_the_tunnels_host_in_origin_form_is_refused_before_substitution(
    target: str, status: int, reason: str
) -> None:
    """With a correct Host, a target that may route elsewhere is refused, audited, not sent.

    Fails when: only the Host header is checked (checked by hand: without `in_origin_form`
    in `_checked_request`, all seven were forwarded with the value substituted).
    """
    with open_sealed() as sealed:
        response = _send(sealed.connection("one"), target)
        lines = sealed.sealed_lines()
    assert response.status == status
    assert [(line["decision"], line["reason"]) for line in lines] == [("deny", reason)]


@pytest.mark.parametrize(
    ("target", "origin"),
    [
        (f"https://{HOST}/v1?key={{}}", "/v1?key={}"),
        (f"HTTPS://{HOST.upper()}:443/v1?key={{}}", "/v1?key={}"),
        (f"https://{HOST}?key={{}}", "/?key={}"),
    ],
)
def test_an_absolute_form_target_naming_the_tunnels_host_goes_up_in_origin_form(
    target: str, origin: str
) -> None:
    """The upstream gets the origin form, with the skill's placeholder substituted in it.

    Fails when: absolute-form targets are forwarded as they are (checked by hand: without
    `in_origin_form`, the echo server got the absolute form).
    """
    with open_sealed() as sealed:
        echoed = json.loads(
            _send(sealed.connection("one"), target.format(PLACEHOLDERS["one"])).read()
        )
    assert echoed["target"] == origin.format(PLACEHOLDERS["one"])  # masked on its way back
    assert echoed["targetSha256"] == _sha256(origin.format(VALUES["one"]))


def test_only_options_may_ask_for_the_asterisk_target() -> None:
    """`OPTIONS *` passes unchanged; `GET *` is refused."""
    head = f"OPTIONS * HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    assert in_origin_form(head, "OPTIONS", HOST) == head
    with pytest.raises(Refusal, match="sealed-bad-target"):
        in_origin_form(head.replace(b"OPTIONS", b"GET"), "GET", HOST)


def test_two_empty_sealed_values_do_not_fail_the_seal() -> None:
    """Empty values (each with the placeholder "") are left out, not taken for a reused one.

    Seen failing (2026-11-30) with the reuse check before the empty-value check: two required
    variables set to "" failed the seal with "placeholder used twice", and the run with it.
    """
    empty = {"placeholder": "", "value": ""}
    long_value = {"placeholder": "p" * MIN_MASKED_BYTES, "value": "v" * MIN_MASKED_BYTES}
    parsed = _seal._parse_skills(
        {"a": {"X": empty, "Y": empty, "KEY": long_value}, "b": {"Z": empty}}, {"a", "b"}
    )
    assert [sealed.variable for sealed in parsed["a"]] == ["KEY"]
    assert parsed["b"] == ()
