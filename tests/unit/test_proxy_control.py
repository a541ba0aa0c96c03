"""The proxy's control channel: one JSON message per connection on a Unix socket, a JSON reply."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from proxy_helpers import (
    IO_TIMEOUT,
    ProxyHarness,
    connect_request,
    policy,
    read_response_head,
    running_proxy,
    status_of,
)

from perstack_sandbox_proxy._control import MAX_MESSAGE_BYTES, send, start_control

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[2]
OLD_TOKEN = "old-token-0123456789abcdefghijklmnopqrstu"  # noqa: S105 - a test token
NEW_TOKEN = "new-token-0123456789abcdefghijklmnopqrstu"  # noqa: S105 - a test token


@pytest.fixture
def controlled(tmp_path: Path) -> Iterator[tuple[ProxyHarness, str]]:
    """Run a proxy that requires a grant and holds none, with its control socket."""
    document = {**policy(allowed=("api.example.com",)), "requireGrant": True}
    path = tmp_path / "control.sock"
    with running_proxy(document) as harness:
        listening = harness.run(start_control(harness.server, path))
        try:
            yield harness, str(path)
        finally:
            listening.close()


def _ask(path: str, message: Any) -> dict[str, Any]:
    raw = message if isinstance(message, bytes) else json.dumps(message).encode()
    reply = json.loads(send(path, raw, timeout=IO_TIMEOUT))
    assert isinstance(reply, dict)
    return reply


def _grant(token: str, domains: tuple[str, ...] = ("api.example.com",)) -> dict[str, Any]:
    return {"op": "grant", "skills": {"search": {"token": token, "allowedDomains": list(domains)}}}


def _status_with(harness: ProxyHarness, token: str) -> int | None:
    basic = base64.b64encode(f"search:{token}".encode()).decode()
    raw = connect_request("api.example.com:443")[:-2]
    with harness.open() as sock:  # only the response head: a tunnel would wait for TLS
        sock.sendall(raw + f"Proxy-Authorization: Basic {basic}\r\n\r\n".encode())
        return status_of(read_response_head(sock))


def test_a_proxy_that_requires_a_grant_refuses_every_credential_before_one(
    controlled: tuple[ProxyHarness, str],
) -> None:
    """With requireGrant and no grant yet, a CONNECT to an allowed host is refused 403."""
    harness, _path = controlled
    assert _status_with(harness, NEW_TOKEN) == 403
    harness.wait_for(lambda: bool(harness.decisions()), "the decision line")
    assert harness.decisions()[-1]["reason"] == "no-skill-credential"


def test_a_grant_lets_its_token_reach_the_skills_hosts(
    controlled: tuple[ProxyHarness, str],
) -> None:
    """After a grant, that skill's token opens a tunnel to a host on its list."""
    harness, path = controlled
    assert _ask(path, _grant(NEW_TOKEN)) == {"ok": True}
    assert _status_with(harness, NEW_TOKEN) == 200
    harness.wait_for(lambda: bool(harness.decisions()), "the decision line")
    assert harness.decisions()[-1]["skill"] == "search"


def test_a_new_grant_replaces_the_old_one_entirely(
    controlled: tuple[ProxyHarness, str],
) -> None:
    """A second grant's token works and the first grant's token is refused from then on."""
    harness, path = controlled
    assert _ask(path, _grant(OLD_TOKEN)) == {"ok": True}
    assert _ask(path, _grant(NEW_TOKEN)) == {"ok": True}
    assert _status_with(harness, OLD_TOKEN) == 403
    assert _status_with(harness, NEW_TOKEN) == 200


def test_an_empty_grant_refuses_everyone(controlled: tuple[ProxyHarness, str]) -> None:
    """A grant of no skills withdraws every earlier token; nothing falls back to the top list."""
    harness, path = controlled
    assert _ask(path, _grant(OLD_TOKEN)) == {"ok": True}
    assert _ask(path, {"op": "grant", "skills": {}}) == {"ok": True}
    assert _status_with(harness, OLD_TOKEN) == 403


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ([1, 2], "must be a JSON object"),
        ({"skills": {}}, "unknown op None"),
        ({"op": "reboot"}, "unknown op 'reboot' (known: grant, seal)"),
        ({"op": "grant"}, "grant: skills must be an object"),
        ({"op": "grant", "skills": {"s": {"allowedDomains": []}}}, "string 'token'"),
        ({"op": "grant", "skills": {"s": {"token": "", "allowedDomains": []}}}, "non-empty"),
        (_grant(NEW_TOKEN, ("API.example.com",)), "not canonical"),
    ],
)
def test_a_bad_message_gets_an_error_reply_and_changes_nothing(
    controlled: tuple[ProxyHarness, str], message: Any, error: str
) -> None:
    """Malformed JSON, an unknown op or a bad grant is answered ok: false; the grant stays."""
    harness, path = controlled
    assert _ask(path, _grant(OLD_TOKEN)) == {"ok": True}
    reply = _ask(path, message)
    assert reply["ok"] is False
    assert error in reply["error"]
    assert _status_with(harness, OLD_TOKEN) == 200


def test_two_skills_sharing_a_token_are_refused(controlled: tuple[ProxyHarness, str]) -> None:
    """A grant that gives two skills one token is refused: the token would not tell them apart."""
    _harness, path = controlled
    entry = {"token": NEW_TOKEN, "allowedDomains": []}
    reply = _ask(path, {"op": "grant", "skills": {"a": entry, "b": entry}})
    assert reply == {"ok": False, "error": "grant: two skills share a token"}


def test_a_message_over_the_limit_is_refused(controlled: tuple[ProxyHarness, str]) -> None:
    """A message longer than MAX_MESSAGE_BYTES gets an error, not an unbounded read."""
    _harness, path = controlled
    reply = _ask(path, b" " * (MAX_MESSAGE_BYTES + 1))
    assert reply["ok"] is False
    assert "longer than" in reply["error"]


def test_the_control_socket_is_private_to_the_proxys_user(
    controlled: tuple[ProxyHarness, str],
) -> None:
    """The socket is mode 0600: no other uid in the container can send a grant."""
    _harness, path = controlled
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600


def _client(path: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "perstack_sandbox_proxy.control", path],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        timeout=IO_TIMEOUT * 3,
        check=False,
    )


def test_the_client_prints_the_reply_and_exits_0_on_ok(
    controlled: tuple[ProxyHarness, str],
) -> None:
    """`python -m ...control` forwards stdin, prints `{"ok": true}` and exits 0."""
    _harness, path = controlled
    done = _client(path, json.dumps(_grant(NEW_TOKEN)).encode())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ok": True}


def test_the_client_exits_1_on_a_refusal_and_2_on_a_missing_socket(
    controlled: tuple[ProxyHarness, str], tmp_path: Path
) -> None:
    """An error reply gives exit status 1; a socket not there (yet) 2, so callers may retry."""
    _harness, path = controlled
    refused = _client(path, b'{"op": "nope"}')
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["ok"] is False
    missing = _client(str(tmp_path / "absent.sock"), b'{"op": "grant", "skills": {}}')
    assert missing.returncode == 2
    assert "control socket" in json.loads(missing.stdout)["error"]
