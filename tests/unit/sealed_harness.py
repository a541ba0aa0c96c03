"""The sealed path's test harness: a proxy with three skills, two sealed, an HTTPS upstream."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import ssl
from typing import TYPE_CHECKING, Any

from proxy_helpers import IO_TIMEOUT, UPSTREAM_HOST, ProxyHarness, RecordingResolver, policy
from sealed_certs import TestCertificates, make_certificates
from sealed_echo import handle, server_context

from perstack_sandbox_proxy._control import dispatch

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

HOST = "api.example.com"
OTHER = "files.example.org"
TOKENS = {"one": "token-one", "two": "token-two", "bare": "token-bare"}
VALUES = {"one": "real-one-0123456789abcdef", "two": "real-two-fedcba9876543210"}
PLACEHOLDERS = {"one": "PHoneXXXXXXXXXXXXXXXXXXXX", "two": "PHtwoYYYYYYYYYYYYYYYYYYYY"}


class Sealed:
    """A running proxy with three skills (two sealed), an HTTPS echo upstream, the run's CA."""

    def __init__(self, harness: ProxyHarness, certificates: TestCertificates, ca: str) -> None:
        """Keep the harness and the run CA's certificate."""
        self.harness, self.certificates, self.ca = harness, certificates, ca
        self.requests: list[dict[str, Any]] = []

    def connection(self, skill: str, host: str = HOST) -> http.client.HTTPSConnection:
        """Return an HTTPS connection through the proxy as ``skill``, trusting the run's CA."""
        context = ssl.create_default_context(cadata=self.ca)
        address, port = self.harness.address
        conn = http.client.HTTPSConnection(address, port, timeout=IO_TIMEOUT, context=context)
        credential = base64.b64encode(f"{skill}:{TOKENS[skill]}".encode()).decode()
        conn.set_tunnel(host, 443, headers={"Proxy-Authorization": f"Basic {credential}"})
        return conn

    def sealed_lines(self) -> list[dict[str, Any]]:
        """Return the audit's sealed-path lines."""
        return [line for line in self.harness.audit() if line["event"] == "sealed"]


def skills_policy(certificates: TestCertificates) -> dict[str, Any]:
    """Return a policy of three skills (one, two sealed; bare not) trusting the test CA."""
    document = policy()
    document["skills"] = {
        TOKENS["one"]: {"skill": "one", "allowedDomains": [HOST]},
        TOKENS["two"]: {"skill": "two", "allowedDomains": ["*.example.org", "pinned.example.org"]},
        TOKENS["bare"]: {"skill": "bare", "allowedDomains": [HOST]},
    }
    document["testUpstreamCa"] = certificates.ca
    return document


def seal_message(passthrough: tuple[str, ...] = ()) -> dict[str, Any]:
    """Return the seal message for skills one and two."""
    return {
        "op": "seal",
        "skills": {
            skill: {f"{skill.upper()}_KEY": {"placeholder": PLACEHOLDERS[skill], "value": value}}
            for skill, value in VALUES.items()
        },
        "passthrough": list(passthrough),
    }


def start_upstream(
    harness: ProxyHarness, certificates: TestCertificates, handler: Handler = handle
) -> None:
    """Serve ``handler`` over TLS on the harness's upstream address."""
    context = server_context(certificates.chain, certificates.key)

    async def begin() -> None:
        server = await asyncio.start_server(handler, UPSTREAM_HOST, 0, ssl=context)
        harness.upstream_port = server.sockets[0].getsockname()[1]

    harness.run(begin())


def send_control(harness: ProxyHarness, message: dict[str, Any]) -> dict[str, Any]:
    """Dispatch a control ``message`` to the harness's proxy; return the reply."""

    async def ask() -> dict[str, Any]:
        return dispatch(harness.server, json.dumps(message).encode())

    result: dict[str, Any] = harness.run(ask())
    return result


@contextlib.contextmanager
def open_sealed(
    handler: Handler = handle,
    passthrough: tuple[str, ...] = ("pinned.example.org",),
    message: dict[str, Any] | None = None,
) -> Iterator[Sealed]:
    """Run a sealed proxy (``passthrough`` hosts pass through) and an HTTPS upstream.

    ``message`` replaces the default seal message (skills one and two, one value each).
    """
    certificates = make_certificates(HOST, OTHER, "pinned.example.org")
    harness = ProxyHarness(skills_policy(certificates), RecordingResolver())
    harness.start()
    try:
        start_upstream(harness, certificates, handler)
        reply = send_control(harness, message or seal_message(passthrough))
        assert reply["ok"], reply
        yield Sealed(harness, certificates, reply["caCertificate"])
    finally:
        harness.stop()


def get(
    conn: http.client.HTTPSConnection, target: str, headers: dict[str, str]
) -> tuple[http.client.HTTPResponse, dict[str, Any]]:
    """Send one GET on ``conn``; return the response and its JSON body (or {"raw": text})."""
    conn.request("GET", target, headers=headers)
    response = conn.getresponse()
    body = response.read()
    return response, json.loads(body) if body.startswith(b"{") else {"raw": body.decode()}
