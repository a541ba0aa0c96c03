"""The sealed path of the proxy, in process: TLS termination, substitution and masking."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import urllib.request
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st
from proxy_helpers import (
    IO_TIMEOUT,
    ProxyHarness,
    RecordingResolver,
)
from sealed_certs import make_certificates
from sealed_harness import (
    HOST,
    OTHER,
    PLACEHOLDERS,
    TOKENS,
    VALUES,
    Sealed,
    get,
    open_sealed,
    seal_message,
    send_control,
    skills_policy,
    start_upstream,
)

from perstack_sandbox_proxy._ca import RunCA
from perstack_sandbox_proxy._seal import Masker, Replacer, mask

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def sealed() -> Iterator[Sealed]:
    """Run a sealed proxy (pinned.example.org passes through) in a background loop."""
    with open_sealed() as running:
        yield running


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_skills_own_placeholder_reaches_its_host_as_the_real_value(sealed: Sealed) -> None:
    """The upstream gets the real value in header and URL; the audit names the variable only."""
    conn = sealed.connection("one")
    _, echoed = get(
        conn, f"/v1?key={PLACEHOLDERS['one']}", {"Authorization": f"Bearer {PLACEHOLDERS['one']}"}
    )
    assert echoed["sha256"]["authorization"] == _sha256(f"Bearer {VALUES['one']}")
    assert echoed["targetSha256"] == _sha256(f"/v1?key={VALUES['one']}")
    # The echoed body carried the real value back: it arrives masked.
    assert echoed["target"] == f"/v1?key={PLACEHOLDERS['one']}"
    lines = sealed.sealed_lines()
    assert lines[-1]["variables"] == ["ONE_KEY"]
    assert lines[-1]["host"] == HOST
    assert VALUES["one"] not in sealed.harness.audit_stream.getvalue()


def test_a_real_value_in_a_response_reaches_the_skill_as_its_placeholder(sealed: Sealed) -> None:
    """An upstream echoing the value back in a header and in the body shows only the placeholder."""
    conn = sealed.connection("one")
    response, echoed = get(conn, "/", {"X-Echo-Back": PLACEHOLDERS["one"]})
    assert response.getheader("X-Echoed") == PLACEHOLDERS["one"]
    assert echoed["echoed"] == PLACEHOLDERS["one"]


def test_a_chunked_response_is_masked_across_chunk_boundaries(sealed: Sealed) -> None:
    """The value split over 7-byte chunks is still replaced, and the body still parses."""
    conn = sealed.connection("one")
    response, echoed = get(conn, "/chunked", {"X-Echo-Back": PLACEHOLDERS["one"]})
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert echoed["echoed"] == PLACEHOLDERS["one"]
    assert VALUES["one"] not in json.dumps(echoed)


def test_another_skills_placeholder_is_refused_and_audited(sealed: Sealed) -> None:
    """Skill two sending skill one's placeholder gets 403; nothing reaches the upstream."""
    conn = sealed.connection("two", OTHER)
    conn.request("GET", "/", headers={"Authorization": f"Bearer {PLACEHOLDERS['one']}"})
    response = conn.getresponse()
    assert response.status == 403
    refusal = sealed.sealed_lines()[-1]
    assert (refusal["decision"], refusal["reason"]) == ("deny", "foreign-placeholder")
    assert (refusal["skill"], refusal["placeholderOf"], refusal["host"]) == ("two", "one", OTHER)


def test_a_host_header_naming_another_host_is_refused(sealed: Sealed) -> None:
    """Inside a terminated tunnel, a request for another Host gets 421 and is not relayed."""
    conn = sealed.connection("one")
    conn.putrequest("GET", "/", skip_host=True)
    conn.putheader("Host", OTHER)
    conn.putheader("Authorization", PLACEHOLDERS["one"])
    conn.endheaders()
    assert conn.getresponse().status == 421
    assert sealed.sealed_lines()[-1]["reason"] == "sealed-host-mismatch"


def test_keep_alive_chunked_uploads_and_posts_work(sealed: Sealed) -> None:
    """Three requests share one connection: a GET, a chunked POST and a sized POST."""
    conn = sealed.connection("one")
    get(conn, "/a", {})
    conn.request("POST", "/b", body=iter([b"hello ", b"chunked"]), encode_chunked=True)
    assert json.loads(conn.getresponse().read())["body"] == "hello chunked"
    conn.request("POST", "/c", body=b"sized body")
    assert json.loads(conn.getresponse().read())["body"] == "sized body"
    opened = [line for line in sealed.harness.decisions() if line["skill"] == "one"]
    assert len(opened) == 1


def test_a_websocket_upgrade_is_relayed_as_bytes(sealed: Sealed) -> None:
    """After 101 the tunnel carries bytes both ways."""
    conn = sealed.connection("one")
    conn.request("GET", "/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    response = conn.getresponse()
    assert response.status == 101
    sock = conn.sock
    assert sock is not None
    sock.sendall(b"frame-bytes")
    assert sock.recv(64) == b"frame-bytes"


def test_alpn_never_offers_h2(sealed: Sealed) -> None:
    """A client offering h2 first gets http/1.1 (or nothing), never h2."""
    conn = sealed.connection("one")
    assert conn._context is not None
    conn._context.set_alpn_protocols(["h2", "http/1.1"])
    conn.connect()
    assert isinstance(conn.sock, ssl.SSLSocket)
    assert conn.sock.selected_alpn_protocol() in {None, "http/1.1"}


def test_a_passthrough_host_stays_a_plain_tunnel(sealed: Sealed) -> None:
    """pinned.example.org presents the upstream's own certificate (no run CA, no substitution)."""
    conn = sealed.connection("two", "pinned.example.org")
    conn._context = ssl.create_default_context(cadata=sealed.certificates.ca)
    _, echoed = get(conn, "/", {"Authorization": PLACEHOLDERS["two"]})
    assert ["Authorization", PLACEHOLDERS["two"]] in echoed["headers"]


def test_a_skill_without_sealed_values_gets_a_plain_tunnel(sealed: Sealed) -> None:
    """Skill bare has no values: the run's CA is not what its tunnel presents."""
    conn = sealed.connection("bare")
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/")


def test_an_upstream_certificate_that_fails_verification_ends_the_tunnel() -> None:
    """With no test CA trusted, the upstream's certificate is refused and audited."""
    certificates = make_certificates(HOST)
    document = skills_policy(certificates)
    del document["testUpstreamCa"]
    harness = ProxyHarness(document, RecordingResolver())
    harness.start()
    try:
        start_upstream(harness, certificates)
        ca = send_control(harness, seal_message())["caCertificate"]
        conn = Sealed(harness, certificates, ca).connection("one")
        with pytest.raises((ConnectionError, http.client.HTTPException, ssl.SSLError, OSError)):
            get(conn, "/", {})
        harness.wait_for(
            lambda: any(
                line.get("reason") == "upstream-certificate-refused" for line in harness.audit()
            ),
            "the refusal line",
        )
    finally:
        harness.stop()


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"op": "seal", "skills": {"nobody": {}}}, "unknown skill"),
        (
            {"op": "seal", "skills": {"one": {"K": {"placeholder": "short", "value": "longer"}}}},
            "at least 16 long",
        ),
        (
            {
                "op": "seal",
                "skills": {"one": {"K": {"placeholder": "P" * 20, "value": "longer" * 4}}},
            },
            "as long as a value",
        ),
        ({"op": "seal", "skills": []}, "skills must be an object"),
        ({"op": "nope"}, "unknown op"),
    ],
)
def test_a_malformed_seal_message_is_refused_without_echoing_values(
    message: dict[str, Any], error: str
) -> None:
    """Each malformed message gets ok=false and a reason that names keys only."""
    certificates = make_certificates(HOST)
    harness = ProxyHarness(skills_policy(certificates), RecordingResolver())
    harness.start()
    try:
        reply = send_control(harness, message)
    finally:
        harness.stop()
    assert reply["ok"] is False
    assert error in reply["error"]
    assert "longer" not in reply["error"]


def test_a_run_is_sealed_only_once(sealed: Sealed) -> None:
    """A second seal message is refused: a placeholder never changes meaning."""
    reply = send_control(sealed.harness, seal_message())
    assert reply == {"ok": False, "error": "this run is sealed already"}


def test_the_control_client_sends_stdin_and_exits_by_the_reply(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The client relays one document and exits 0 on ok, 1 otherwise, 2 with no socket."""
    import io  # noqa: PLC0415

    from perstack_sandbox_proxy import control  # noqa: PLC0415

    path = str(tmp_path / "c.sock")
    replies = [b'{"ok": true}', b'{"ok": false}']
    received: list[bytes] = []

    def serve_once(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
            received.append(data)
            conn.sendall(replies[len(received) - 1])

    import threading  # noqa: PLC0415

    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        codes = []
        for _ in replies:
            thread = threading.Thread(target=serve_once, args=(listener,))
            thread.start()
            monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"op": "x"}')))
            codes.append(control.main([path]))
            thread.join(IO_TIMEOUT)
    assert codes == [0, 1]
    assert received == [b'{"op": "x"}'] * 2
    assert control.main([str(tmp_path / "none.sock")]) == 2
    assert '{"ok": true}' in capsys.readouterr().out


def _proxy_url(sealed: Sealed, skill: str) -> str:
    address, port = sealed.harness.address
    return f"http://{skill}:{TOKENS[skill]}@{address}:{port}"


def test_httpx_works_through_the_terminating_path(sealed: Sealed) -> None:
    """An httpx client (proxy URL with the skill's credential, the run's CA) gets substituted."""
    context = ssl.create_default_context(cadata=sealed.ca)
    with httpx.Client(
        proxy=_proxy_url(sealed, "one"), verify=context, timeout=IO_TIMEOUT
    ) as client:
        answer_one = client.get(f"https://{HOST}/x", headers={"X-Api-Key": PLACEHOLDERS["one"]})
        answer_two = client.post(f"https://{HOST}/y", content=b"body")
    assert answer_one.json()["sha256"]["x-api-key"] == _sha256(VALUES["one"])
    assert answer_two.json()["body"] == "body"


def test_urllib_works_through_the_terminating_path(sealed: Sealed) -> None:
    """Python's urllib with a ProxyHandler (credential in the URL) gets substituted."""
    context = ssl.create_default_context(cadata=sealed.ca)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": _proxy_url(sealed, "one")}),
        urllib.request.HTTPSHandler(context=context),
    )
    request = urllib.request.Request(
        f"https://{HOST}/u", headers={"Authorization": PLACEHOLDERS["one"]}
    )
    with opener.open(request, timeout=IO_TIMEOUT) as response:
        echoed = json.loads(response.read())
    assert echoed["sha256"]["authorization"] == _sha256(VALUES["one"])


@given(
    prefix=st.binary(max_size=64),
    suffix=st.binary(max_size=64),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_masking_a_stream_cut_anywhere_equals_masking_it_whole(
    prefix: bytes, suffix: bytes, cuts: list[int]
) -> None:
    """However the stream is cut into reads, the masked output is the same and has no value."""
    values = Replacer({b"v4lue-0123456789abcd": b"P" * 20, b"v4lue-0123456789abcdXY": b"Q" * 22})
    whole = prefix + b"v4lue-0123456789abcd" + suffix + b"v4lue-0123456789abcdXY"
    masker, out, start = Masker(values), b"", 0
    for cut in sorted({min(cut, len(whole)) for cut in cuts}):
        out += masker.feed(whole[start:cut])
        start = cut
    out += masker.feed(whole[start:]) + masker.flush()
    assert out == mask(whole, values)
    assert b"v4lue-0123456789abcd" not in out
    assert len(out) == len(whole)


def test_a_run_ca_with_no_sealed_host_vouches_for_nothing() -> None:
    """Sealed skills without allowed hosts still seal; the CA is constrained to `invalid`."""
    ca = RunCA("run", [])
    constraints = ca.certificate.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.value.permitted_subtrees == [x509.DNSName("invalid")]
