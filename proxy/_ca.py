"""The per-run CA of the sealed path (docs/architecture.md, decision 38).

The CA's key is made here, in the proxy's memory, when the orchestrator seals a run; it never
leaves this process (only the certificate goes back, over the control channel). The CA is
name-constrained to the sealed hosts' domains, so even a stolen copy of the certificate's trust
could vouch for nothing else. Leaf certificates are issued per host on first use and cached;
Python's ssl loads a chain only from files, so each leaf is written to a private folder on the
proxy's own tmpfs, loaded, and unlinked at once.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from collections.abc import Iterable

# Longer than any run; a clock skew between the sandbox and the proxy must not break TLS.
VALIDITY: Final = dt.timedelta(days=2)
BACKDATE: Final = dt.timedelta(hours=1)
# The sealed path reads HTTP/1.1 only: never let a client pick a protocol we cannot read.
ALPN: Final = ["http/1.1"]


class RunCA:
    """A CA made for one run, and the TLS server contexts of the hosts it vouches for."""

    def __init__(self, run: str, domains: Iterable[str]) -> None:
        """Make the CA's key and certificate, name-constrained to ``domains`` (``*.`` dropped)."""
        self._key = ec.generate_private_key(ec.SECP256R1())
        # One leaf key for every host of the run: issuing a leaf is then a signature only.
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "perstack-sandbox"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"perstack-sandbox sealed run {run}"[:64]),
            ]
        )
        # No sealed host at all: "invalid" (RFC 6761, never resolvable) keeps the CA vouching
        # for nothing rather than for everything.
        permitted = sorted({domain.removeprefix("*.") for domain in domains}) or ["invalid"]
        self._name = name
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .add_extension(
                x509.NameConstraints([x509.DNSName(d) for d in permitted], None),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self._contexts: dict[str, ssl.SSLContext] = {}

    @property
    def pem(self) -> str:
        """The CA certificate, PEM-encoded (public: the sandbox trusts it)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def server_context(self, host: str) -> ssl.SSLContext:
        """Return the TLS server context that presents a certificate for ``host``."""
        context = self._contexts.get(host)
        if context is None:
            context = self._contexts[host] = self._issue(host)
        return context

    def _issue(self, host: str) -> ssl.SSLContext:
        now = dt.datetime.now(dt.UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self._name)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(ALPN)
        key = self._leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        chain = leaf.public_bytes(serialization.Encoding.PEM) + self.certificate.public_bytes(
            serialization.Encoding.PEM
        )
        _load_chain(context, chain, key)
        return context


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _load_chain(context: ssl.SSLContext, chain: bytes, key: bytes) -> None:
    """Load ``chain`` and ``key`` through files that exist only for the duration of the call."""
    with tempfile.TemporaryDirectory(prefix="leaf-") as folder:  # 0700, on the proxy's tmpfs
        cert_path, key_path = Path(folder) / "chain.pem", Path(folder) / "key.pem"
        cert_path.write_bytes(chain)
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key)
        context.load_cert_chain(cert_path, key_path)


# Hosts whose last upstream TLS session is kept (a sealed skill talks to a few API hosts).
MAX_SESSIONS: Final = 256


class UpstreamContext(ssl.SSLContext):
    """The client context of re-originated connections; it offers each host its last session.

    A resumed TLS 1.3 session skips the server's certificate, its signature and their
    verification (docs/architecture.md, decision 59): the session came from a fully verified
    handshake with the same host name, and a server without that session's key cannot finish
    the resumed handshake.
    """

    def __init__(self, *_protocol: object) -> None:
        """Start with no session (the protocol is taken by ``ssl.SSLContext.__new__``)."""
        self._sessions: dict[str, ssl.SSLSession] = {}

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,  # noqa: FBT001, FBT002 - ssl.SSLContext's signature
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        """Wrap as ``ssl.SSLContext`` does, offering ``server_hostname``'s last session."""
        if session is None and isinstance(server_hostname, str):
            session = self._sessions.get(server_hostname)
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def remember(self, host: str, tls: object) -> None:
        """Keep the session of ``tls`` (the upstream's ``ssl.SSLObject``) for ``host``.

        Only a full handshake's: reading a session costs about as much as resuming saves,
        and the kept one serves until the server stops taking it (then a full handshake
        replaces it).
        """
        if not isinstance(tls, ssl.SSLObject) or tls.session_reused:
            return
        session = tls.session
        if session is None or not session.has_ticket:
            return
        if host not in self._sessions and len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        self._sessions[host] = session


def upstream_context(extra_pem: str = "") -> UpstreamContext:
    """Return the client context for re-originating upstream: full verification, HTTP/1.1.

    The system CAs (the image trusts the host's bundle too); ``extra_pem`` adds test-only
    anchors (the policy's ``testUpstreamCa``, set by the security suite only). It verifies as
    ``ssl.create_default_context()`` does: the same checks, flags and trust.
    """
    context = UpstreamContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, hostname checked
    context.verify_flags = ssl.create_default_context().verify_flags
    context.load_default_certs()
    if extra_pem:
        context.load_verify_locations(cadata=extra_pem)
    context.set_alpn_protocols(ALPN)
    return context
