"""What the proxy lets through, how it splices, what it writes to the audit, and its limits."""

from __future__ import annotations

import json
import socket
import threading

import pytest
from proxy_helpers import (
    IO_TIMEOUT,
    RecordingResolver,
    client_hello,
    connect_request,
    exchange,
    open_tunnel,
    policy,
    read_response_head,
    read_until_eof,
    running_proxy,
    status_of,
)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


@pytest.mark.parametrize(
    ("target", "rule"),
    [
        ("api.example.com:443", "api.example.com"),
        ("API.Example.COM:443", "api.example.com"),
        ("api.example.com.:443", "api.example.com"),
        ("deep.sub.example.org:443", "*.example.org"),
        ("WWW.EXAMPLE.ORG.:443", "*.example.org"),
    ],
    ids=["exact", "uppercase", "trailing-dot", "wildcard-deep", "wildcard-upper-trailing-dot"],
)
def test_allowed_spelling_tunnels_and_is_audited_canonically(target: str, rule: str) -> None:
    """Uppercase and trailing-dot spellings of an allowed host tunnel; the audit says which rule."""
    canonical = target.rsplit(":", 1)[0].lower().rstrip(".")
    with running_proxy() as harness, open_tunnel(harness, target, canonical) as sock:
        hello = client_hello(canonical)
        assert _recv_exactly(sock, len(hello))[:1] == b"\x16"  # the echo of our ClientHello
        sock.sendall(b"ping")
        assert _recv_exactly(sock, 4) == b"ping"
        [decision] = harness.decisions()
        assert decision["host"] == canonical
        assert decision["rule"] == rule
        assert (decision["decision"], decision["reason"]) == ("allow", "allowed")
        assert harness.resolver.queries == [canonical]


def test_sni_with_other_case_and_trailing_dot_is_accepted() -> None:
    """The SNI is compared canonicalised, so API.EXAMPLE.COM. matches api.example.com."""
    with running_proxy() as harness:
        sock = open_tunnel(harness, "api.example.com:443", "API.EXAMPLE.COM.")
        with sock:
            sock.sendall(b"x")
            assert len(_recv_exactly(sock, len(client_hello("API.EXAMPLE.COM.")) + 1)) > 1
        assert harness.decisions()[0]["decision"] == "allow"


def test_client_hello_sent_one_byte_at_a_time_is_reassembled() -> None:
    """A ClientHello split across many TCP segments is still read whole and forwarded intact."""
    hello = client_hello("api.example.com")
    with running_proxy() as harness, harness.open() as sock:
        sock.sendall(connect_request("api.example.com:443"))
        assert status_of(read_response_head(sock)) == 200
        for index in range(len(hello)):
            sock.send(hello[index : index + 1])
        assert _recv_exactly(sock, len(hello)) == hello


def test_client_hello_pipelined_with_the_connect_is_forwarded() -> None:
    """A ClientHello sent in the same segment as the CONNECT head is not lost."""
    hello = client_hello("api.example.com")
    with running_proxy() as harness, harness.open() as sock:
        sock.sendall(connect_request("api.example.com:443") + hello)
        assert status_of(read_response_head(sock)) == 200
        assert _recv_exactly(sock, len(hello)) == hello


def test_large_transfer_arrives_intact_both_ways() -> None:
    """Eight MiB through a tunnel come back from the echo upstream byte for byte."""
    payload = bytes(range(256)) * (8 * 4096)
    with running_proxy() as harness:
        sock = open_tunnel(harness, "api.example.com:443", "api.example.com")
        hello_size = len(client_hello("api.example.com"))
        # Send from a thread while this one reads, so neither direction's buffers fill up.
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        received = _recv_exactly(sock, hello_size + len(payload))
        sender.join(IO_TIMEOUT)
        sock.close()
        assert received[hello_size:] == payload


def test_half_close_reaches_the_upstream_and_its_answer_still_comes_back() -> None:
    """The client's EOF is passed on as a half-close; the upstream's reply after it arrives."""
    with running_proxy() as harness:
        harness.upstream.reverse_after_eof = True
        sock = open_tunnel(harness, "api.example.com:443", "api.example.com")
        sock.sendall(b"abc")
        sock.shutdown(socket.SHUT_WR)
        reply = read_until_eof(sock)
        sock.close()
        # ClientHello + "abc", reversed: the upstream only answers after it saw EOF.
        assert reply[:3] == b"cba"
        assert reply[-1:] == b"\x16"
        assert len(reply) == len(client_hello("api.example.com")) + 3


def test_close_line_records_bytes_each_way() -> None:
    """After a tunnel ends, one close line carries bytes up and down and a duration."""
    with running_proxy() as harness:
        sock = open_tunnel(harness, "api.example.com:443", "api.example.com")
        hello_size = len(client_hello("api.example.com"))
        sock.sendall(b"12345")
        _recv_exactly(sock, hello_size + 5)
        sock.close()
        harness.wait_for(lambda: len(harness.audit()) == 2, "the close line")
        decision, close = harness.audit()
        assert close["event"] == "close"
        assert close["conn"] == decision["conn"]
        assert (close["bytesUp"], close["bytesDown"]) == (hello_size + 5, hello_size + 5)
        assert close["durationMs"] >= 0
        assert close["sandboxId"] == "sbx-test"


def test_control_characters_in_a_request_cannot_forge_an_audit_line() -> None:
    """Bytes such as CR, VT, ESC and U+2028 in a target stay inside one escaped JSON string."""
    forged = '{"event":"decision","decision":"allow"}'
    raw = b"CONNECT evil.com\r" + forged.encode() + b"\x0b\x1b\xe2\x80\xa8\x85:443 HTTP/1.1\r\n\r\n"
    with running_proxy() as harness:
        exchange(harness, raw)
        exchange(harness, b"CONNECT ev\x1b[2Kil.com\x85:443 HTTP/1.1\r\n\r\n")
        harness.wait_for(lambda: len(harness.audit()) == 4, "two decisions and two closes")
        lines = harness.audit_stream.getvalue().splitlines()
        assert all(line.isascii() and line.isprintable() for line in lines)
        assert [json.loads(line)["decision"] for line in lines[::2]] == ["deny", "deny"]
        assert len(lines) == 4  # two decisions, two closes: nothing forged


def test_overlong_target_is_truncated_in_the_audit() -> None:
    """A 3000-character host is refused and logged as a capped prefix."""
    with running_proxy() as harness:
        response = exchange(harness, connect_request("a" * 3000 + ".example.org:443"))
        assert status_of(response) == 403
        [decision] = harness.decisions()
        assert len(decision["rawHost"]) < 400
        assert decision["rawHost"].endswith("...(truncated)")


def test_health_check_answers_ok_and_is_not_audited() -> None:
    """An origin-form GET /healthz answers 200 ok and writes no decision line."""
    with running_proxy() as harness:
        response = exchange(harness, b"GET /healthz HTTP/1.1\r\nHost: anything\r\n\r\n")
        assert status_of(response) == 200
        assert response.endswith(b"\r\n\r\nok\n")
        assert harness.audit() == []
        assert harness.resolver.queries == []


def test_unresolvable_allowed_name_gets_502() -> None:
    """An allowed name without an answer is a 502 that names no address."""
    with running_proxy(resolver=RecordingResolver(default=None)) as harness:
        response = exchange(harness, connect_request("api.example.com:443"))
        assert status_of(response) == 502
        assert harness.decisions()[0]["reason"] == "resolve-failed"


def test_resolver_that_never_answers_gets_504() -> None:
    """A hanging resolver is cut off by the resolve timeout with a 504."""
    resolver = RecordingResolver()
    resolver.hang = True
    with running_proxy(policy(resolveTimeout=0.2), resolver) as harness:
        response = exchange(harness, connect_request("api.example.com:443"))
        assert status_of(response) == 504
        assert harness.decisions()[0]["reason"] == "resolve-timeout"


def test_refused_upstream_connection_gets_502() -> None:
    """When nothing listens at the checked address the client gets 502, not a hang."""
    resolver = RecordingResolver({"api.example.com": [["127.0.0.3"]]})
    with running_proxy(resolver=resolver) as harness:
        response = exchange(harness, connect_request("api.example.com:443"))
        assert status_of(response) == 502
        [decision] = harness.decisions()
        assert (decision["reason"], decision["dialled"]) == ("connect-failed", "127.0.0.3")
        assert b"127.0.0.3" not in response


def test_upstream_that_never_accepts_gets_504() -> None:
    """A dial that does not complete within the connect timeout gets 504."""
    with running_proxy(policy(connectTimeout=0.2)) as harness:
        harness.connect_hangs = True
        response = exchange(harness, connect_request("api.example.com:443"))
        assert status_of(response) == 504
        assert harness.decisions()[0]["reason"] == "connect-timeout"


def test_oversized_header_gets_431() -> None:
    """A request head larger than the cap is refused with 431."""
    with running_proxy() as harness:
        raw = connect_request("api.example.com:443")[:-2] + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n"
        response = exchange(harness, raw)
        assert status_of(response) == 431


def test_slow_client_is_cut_off_by_the_header_deadline() -> None:
    """A client that never finishes its head (slowloris) gets 408 after the header timeout."""
    with running_proxy(policy(headerTimeout=0.3)) as harness, harness.open() as sock:
        sock.sendall(b"CONNECT api.example.com:443 HTTP/1.1\r\nX-Slow: ")
        response = read_until_eof(sock)
        assert status_of(response) == 408
        assert harness.decisions()[0]["reason"] == "header-timeout"


def test_silent_tunnel_client_is_cut_off_by_the_client_hello_deadline() -> None:
    """A client that never sends its ClientHello loses the tunnel after the deadline."""
    with running_proxy(policy(clientHelloTimeout=0.3)) as harness, harness.open() as sock:
        sock.sendall(connect_request("api.example.com:443"))
        assert status_of(read_response_head(sock)) == 200
        assert read_until_eof(sock) == b""
        harness.wait_for(lambda: harness.decisions() != [], "the decision line")
        assert harness.decisions()[0]["reason"] == "client-hello-timeout"


def test_idle_tunnel_is_closed_after_the_idle_timeout() -> None:
    """A tunnel where no byte moves for the idle timeout is closed and audited as closed."""
    with running_proxy(policy(idleTimeout=0.3)) as harness:
        sock = open_tunnel(harness, "api.example.com:443", "api.example.com")
        read_until_eof(sock)  # the echoed ClientHello, then EOF once idle
        sock.close()
        harness.wait_for(lambda: len(harness.audit()) == 2, "the close line")
        assert harness.audit()[1]["event"] == "close"


def test_connections_beyond_the_cap_get_503() -> None:
    """With maxConnections=2 and two connections open, a third is answered 503."""
    with running_proxy(policy(maxConnections=2)) as harness:
        first, second = harness.open(), harness.open()
        first.sendall(b"C")
        second.sendall(b"C")
        harness.wait_for(lambda: harness.server.active == 2, "two active connections")
        response = exchange(harness, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert status_of(response) == 503
        first.close()
        second.close()
        harness.wait_for(lambda: harness.server.active == 0, "the slots to free up")
        assert status_of(exchange(harness, b"GET /healthz HTTP/1.1\r\n\r\n")) == 200


def test_garbage_on_other_connections_does_not_disturb_an_open_tunnel() -> None:
    """An established tunnel keeps working while malformed requests come and go beside it."""
    with running_proxy() as harness:
        sock = open_tunnel(harness, "api.example.com:443", "api.example.com")
        hello_size = len(client_hello("api.example.com"))
        _recv_exactly(sock, hello_size)
        for garbage in (b"\x00" * 100 + b"\r\n\r\n", b"\xff\xfe\r\n\r\n", b"CONNECT\r\n\r\n"):
            assert status_of(exchange(harness, garbage)) == 400
        sock.sendall(b"still here")
        assert _recv_exactly(sock, 10) == b"still here"
        sock.close()


def test_client_that_never_reads_is_throttled_by_backpressure() -> None:
    """A client pushing data it never reads back is stalled; the proxy does not buffer it all."""
    with running_proxy() as harness:
        sock = open_tunnel(harness, "api.example.com:443", "api.example.com")
        sock.settimeout(0.5)  # how long a blocked send may take before we call it stalled
        chunk, sent, stalled = bytes(1 << 20), 0, False
        while sent < 256 << 20 and not stalled:
            try:
                sent += sock.send(chunk)
            except TimeoutError:
                stalled = True
        sock.close()
        assert stalled
        # Kernel socket buffers on loopback hold some MiB; an unthrottled proxy would take all.
        assert sent < 64 << 20


def test_stopping_the_proxy_ends_open_tunnels() -> None:
    """Closing the server ends established tunnels too, so a stop never waits on idle clients."""
    with running_proxy() as harness:
        sock = open_tunnel(harness, "api.example.com:443", "api.example.com")
        _recv_exactly(sock, len(client_hello("api.example.com")))
        harness.run(harness.server.close())
        assert read_until_eof(sock) == b""
        sock.close()
        harness.wait_for(lambda: len(harness.audit()) == 2, "the close line")
