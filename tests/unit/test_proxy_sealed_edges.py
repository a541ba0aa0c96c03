"""The sealed path's edges: live sealed tunnels and the pending share, short values, targets."""

from __future__ import annotations

import base64
import contextlib
import http.client
from typing import TYPE_CHECKING

from proxy_helpers import exchange, read_response_head, status_of
from sealed_harness import HOST, TOKENS, Sealed, get, open_sealed

if TYPE_CHECKING:
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
