"""How a sealed tunnel is set up: both handshakes at once, the upstream session resumed."""

from __future__ import annotations

import base64
import ssl
from typing import TYPE_CHECKING

from proxy_helpers import client_hello, read_response_head, status_of
from sealed_echo import handle
from sealed_harness import HOST, OTHER, TOKENS, Sealed, get, open_sealed

from perstack_sandbox_proxy._ca import upstream_context

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Coroutine
    from typing import Any

    Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


def _recording(resumed: list[bool]) -> Handler:
    """Return an echo handler that records whether each connection resumed a session."""

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        resumed.append(writer.get_extra_info("ssl_object").session_reused)
        await handle(reader, writer)

    return record


def test_a_second_sealed_tunnel_to_a_host_resumes_its_upstream_session() -> None:
    """The first tunnel to a host makes a full handshake upstream; the next one resumes it.

    Seen failing (every handshake full) with the session no longer offered by `wrap_bio`.
    """
    resumed: list[bool] = []
    with open_sealed(_recording(resumed)) as sealed:
        for _ in range(2):
            _one_request(sealed, "one", HOST)
    assert resumed == [False, True]


def _one_request(sealed: Sealed, skill: str, host: str) -> None:
    """One GET on a new tunnel; return once the tunnel has ended (its session then kept)."""
    ended = _closes(sealed)
    conn = sealed.connection(skill, host)
    get(conn, "/", {})
    conn.close()
    sealed.harness.wait_for(lambda: _closes(sealed) > ended, "the tunnel's end")


def _closes(sealed: Sealed) -> int:
    return sum(line["event"] == "close" for line in sealed.harness.audit())


def test_a_session_is_offered_only_to_the_host_it_was_made_with() -> None:
    """A session from one host's handshake is not offered to another host.

    Seen failing (the second host resumed the first's session) with one session for all hosts.
    """
    resumed: list[bool] = []
    with open_sealed(_recording(resumed)) as sealed:
        for skill, host in (("one", HOST), ("two", OTHER)):
            _one_request(sealed, skill, host)
    assert resumed == [False, False]


def test_the_upstream_context_verifies_as_the_default_context_does() -> None:
    """Same verification mode, host name check, X.509 flags and trusted roots as the default."""
    ours, default = upstream_context(), ssl.create_default_context()
    assert ours.verify_mode == ssl.CERT_REQUIRED
    assert ours.check_hostname
    assert ours.verify_flags == default.verify_flags
    assert ours.cert_store_stats() == default.cert_store_stats()
    assert ours.minimum_version == default.minimum_version
    assert ours.options == default.options


def test_a_client_gone_after_the_upstream_handshake_leaves_no_upstream_connection_open() -> None:
    """A client handshake that fails after the upstream one (run beside it) has ended closes it.

    Seen failing (the upstream connection stayed open) with the close of the upstream streams
    in `handshakes` and of the socket in `relay` removed.
    """
    opened: list[int] = []
    ended: list[int] = []

    async def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened.append(1)
        while await reader.read(65536):
            pass
        ended.append(1)
        writer.close()

    with open_sealed(track) as sealed:
        credential = base64.b64encode(f"one:{TOKENS['one']}".encode()).decode()
        with sealed.harness.open() as sock:
            sock.sendall(
                f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n"
                f"Proxy-Authorization: Basic {credential}\r\n\r\n".encode()
            )
            assert status_of(read_response_head(sock)) == 200
            sock.sendall(client_hello(HOST))
            # The client's handshake stays unfinished until the upstream's has ended.
            sealed.harness.wait_for(lambda: bool(opened), "the upstream handshake")
        sealed.harness.wait_for(
            lambda: any(
                line.get("reason") == "sealed-handshake-failed" for line in sealed.sealed_lines()
            ),
            "the failed handshake's line",
        )
        sealed.harness.wait_for(
            lambda: len(ended) == len(opened), "every upstream connection closed"
        )
