"""Fuzzing: random bytes and mutated requests never crash the proxy nor make it dial elsewhere.

The default run is short; with CI=true each test keeps drawing fresh examples for a minute.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxy_helpers import (
    UPSTREAM_HOST,
    client_hello,
    connect_request,
    exchange,
    read_until_eof,
    running_proxy,
    status_of,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from proxy_helpers import ProxyHarness

# Per test: a minute each under CI, a few seconds in a developer's run.
FUZZ_SECONDS = 60.0 if os.environ.get("CI") == "true" else 6.0
STATUSES = {None, 200, 400, 403, 408, 431, 502, 503, 504}
TEMPLATE = connect_request("api.example.com:443") + client_hello("api.example.com") + b"data"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def harness() -> Iterator[ProxyHarness]:
    """One proxy shared by every example, so damage from one example would show in the next."""
    with running_proxy() as proxy:
        yield proxy


def _send_and_half_close(harness: ProxyHarness, data: bytes) -> bytes:
    """Send ``data``, signal EOF, and read whatever comes back until the proxy closes."""
    with harness.open() as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return b""  # the proxy may already have refused and closed: that is fine
        return read_until_eof(sock)


def _assert_still_serving(harness: ProxyHarness, response: bytes) -> None:
    assert response == b"" or response.startswith(b"HTTP/1.1 ")
    assert status_of(response) in STATUSES
    assert status_of(exchange(harness, b"GET /healthz HTTP/1.1\r\n\r\n")) == 200
    assert set(harness.dials) <= {(UPSTREAM_HOST, 443)}


def _run_for_budget(check: Callable[[], None]) -> None:
    deadline = time.monotonic() + FUZZ_SECONDS
    check()
    while time.monotonic() < deadline:
        check()


def test_random_bytes_leave_the_proxy_serving(harness: ProxyHarness) -> None:
    """Arbitrary bytes get a refusal or silence, and the proxy keeps answering health checks."""

    @FUZZ
    @given(data=st.binary(max_size=4096))
    def check(data: bytes) -> None:
        _assert_still_serving(harness, _send_and_half_close(harness, data))

    _run_for_budget(check)
    assert all(line["event"] in {"decision", "close"} for line in harness.audit())


mutation = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate"]),
    st.integers(min_value=0, max_value=len(TEMPLATE) - 1),
    st.binary(min_size=1, max_size=8),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    for kind, position, chunk in mutations:
        at = min(position, max(len(data) - 1, 0))
        if kind == "flip":
            data = data[:at] + bytes([data[at] ^ chunk[0]]) + data[at + 1 :] if data else data
        elif kind == "insert":
            data = data[:at] + chunk + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + len(chunk) :]
        else:
            data = data[:at]
    return data


def test_mutated_requests_leave_the_proxy_serving(harness: ProxyHarness) -> None:
    """CONNECT requests with flipped, inserted or deleted bytes never crash the proxy."""

    @FUZZ
    @given(mutations=st.lists(mutation, min_size=1, max_size=4))
    def check(mutations: list[tuple[str, int, bytes]]) -> None:
        _assert_still_serving(harness, _send_and_half_close(harness, _mutate(TEMPLATE, mutations)))

    # The unmutated template is a valid tunnel: mutations start from something that works.
    assert _send_and_half_close(harness, TEMPLATE).endswith(TEMPLATE[-4:])
    _run_for_budget(check)
    lines = harness.audit_stream.getvalue().splitlines()
    assert all(line.isascii() and line.isprintable() for line in lines)
