"""Sealed-path rows for bench/proxy_vs_squid.py: ours sealed, ours plain, a bumping Squid.

The workload is bench/sealed_path.py's, against its HTTPS upstream on 127.0.0.5:443: setup is
a new connection with CONNECT, TLS and one small GET; then 64 MiB down and 64 MiB up in one
request each on an open connection. Three candidates, in alternating order:

- ours, plain tunnel: the ``plain`` skill of a proxy with two skills (TLS end to end);
- ours, sealed: the ``sealed`` skill of the same proxy, its tunnel terminated with the run's CA
  and re-originated upstream with full verification (docs/architecture.md, decision 37);
- Squid, bumping: Debian's squid-openssl with ``ssl_bump peek step1`` then ``bump all``, a CA
  of its own and the upstream verified against the same CA bundle. Peeking first pins the
  server connection to its client, as ours is (no pool of upstream TLS connections). Squid
  substitutes nothing: its row is the bare price of terminating and re-originating TLS.
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import statistics
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from _procs import cpu_seconds, squid_process
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sealed_path import NAME, UPSTREAM, Upstream, bulk, proxy, setup

from perstack_sandbox_proxy._ca import RunCA

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CERTGEN = "/usr/lib/squid/security_file_certgen"
PROXY_HOST = "127.0.0.1"
# A median of 100 setups moved by up to 0.6 between runs on a loaded 2-core machine.
SETUP_SAMPLES = 300
ROUNDS = 5
BULK_ROUNDS = 3
CANDIDATES = ("plain", "sealed", "squid")

BUMP_CONF = """\
http_port {host}:{port} ssl-bump tls-cert={dir}/ca.pem tls-key={dir}/ca.key \
generate-host-certificates=on dynamic_cert_mem_cache_size=4MB
sslcrtd_program {certgen} -s {dir}/ssl_db -M 4MB
sslcrtd_children 1 startup=1 idle=1
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile={dir}/upstream-ca.pem
acl allowed_domains dstdomain {name}
acl SSL_ports port 443
acl CONNECT method CONNECT
http_access deny CONNECT !SSL_ports
http_access allow allowed_domains
http_access deny all
cache deny all
hosts_file {dir}/hosts
dns_nameservers 127.0.0.1
access_log stdio:{dir}/access.log
cache_log {dir}/cache.log
pid_filename {dir}/squid.pid
coredump_dir {dir}
visible_hostname bench
shutdown_lifetime 0 seconds
"""


def squid_can_bump(squid: str) -> bool:
    """Tell whether ``squid`` is built with OpenSSL (Debian's squid-openssl) and can bump."""
    built = subprocess.run([squid, "-v"], capture_output=True, text=True, check=False).stdout
    return "--with-openssl" in built and shutil.which(CERTGEN) is not None


def _write_ca(directory: Path) -> str:
    """Write a CA certificate and key for Squid to sign its certificates with; return the PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench bumping squid")])
    now = datetime.now(UTC)
    usage = x509.KeyUsage(
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
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    (directory / "ca.pem").write_bytes(pem)
    (directory / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem.decode()


@contextlib.contextmanager
def _bumping_squid(
    squid: str, directory: Path, upstream_ca: str, port: int
) -> Iterator[tuple[str, int]]:
    """Run a bumping Squid on ``port``; yield its CA's certificate (the client trusts it), pid."""
    directory.mkdir()
    directory.chmod(0o777)  # squid drops root privileges to its own user before writing logs
    trust = _write_ca(directory)
    (directory / "ca.key").chmod(0o644)  # read by squid's user; a throwaway key in a temp dir
    (directory / "upstream-ca.pem").write_text(upstream_ca)
    (directory / "hosts").write_text(f"{UPSTREAM[0]} {NAME}\n")
    subprocess.run(
        [CERTGEN, "-c", "-s", str(directory / "ssl_db"), "-M", "4MB"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for path in (directory / "ssl_db", *(directory / "ssl_db").rglob("*")):
        shutil.chown(path, "proxy", "proxy")  # Debian runs squid as `proxy`
    conf = directory / "squid.conf"
    conf.write_text(
        BUMP_CONF.format(host=PROXY_HOST, port=port, name=NAME, dir=directory, certgen=CERTGEN)
    )
    with squid_process(squid, conf, PROXY_HOST, port, "bumping squid") as pid:
        yield trust, pid


@contextlib.contextmanager
def _upstream() -> Iterator[str]:
    """Serve the HTTPS upstream; yield the CA that signed its certificate."""
    upstream_ca = RunCA("bench-upstream", [NAME])
    server = http.server.ThreadingHTTPServer(UPSTREAM, Upstream)
    server.socket = upstream_ca.server_context(NAME).wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield upstream_ca.pem
    finally:
        server.shutdown()
        server.server_close()


# name -> (port, skill credential to present, CA the client trusts, pid whose CPU counts)
Targets = dict[str, tuple[int, str, str, int]]


def _setups(targets: Targets) -> dict[str, dict[str, float]]:
    samples: dict[str, list[float]] = {name: [] for name in targets}
    cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
    for round_number in range(ROUNDS):
        order = list(targets) if round_number % 2 == 0 else list(targets)[::-1]
        for name in order:
            port, skill, trust, pid = targets[name]
            before = cpu_seconds(pid)
            samples[name] += [setup(port, skill, trust) for _ in range(SETUP_SAMPLES // ROUNDS)]
            cpu[name] += cpu_seconds(pid) - before
    return {
        name: {
            "setup p50 (ms)": statistics.median(values),
            "CPU per setup (us)": cpu[name] / len(values) * 1e6,
        }
        for name, values in samples.items()
    }


def measure(squid: str, directory: Path, port: int) -> dict[str, dict[str, float]]:
    """Run the three candidates (bumping Squid on ``port``); return figures per candidate."""
    with (
        _upstream() as upstream_ca,
        proxy(directory, upstream_ca) as (ours, run_ca, pid),
        _bumping_squid(squid, directory / "squid", upstream_ca, port) as (squid_ca, squid_pid),
    ):
        targets: Targets = {
            "plain": (ours, "plain", upstream_ca, pid),
            "sealed": (ours, "sealed", run_ca, pid),
            "squid": (port, "plain", squid_ca, squid_pid),
        }
        for target_port, skill, trust, _ in targets.values():
            for _ in range(10):  # warm-up: Squid's certificate cache, our leaf certificates
                setup(target_port, skill, trust)
        figures = _setups(targets)
        for label, upload in (("download 64 MiB (MiB/s)", False), ("upload 64 MiB (MiB/s)", True)):
            for name, rate in _bulk_rates(targets, label, upload=upload).items():
                figures[name][label] = rate
    return figures


def _bulk_rates(targets: Targets, label: str, *, upload: bool) -> dict[str, float]:
    """Median rate per candidate over BULK_ROUNDS; a failed transfer is reported, not counted."""
    rates: dict[str, list[float]] = {name: [] for name in targets}
    for round_number in range(BULK_ROUNDS):
        order = list(targets) if round_number % 2 == 0 else list(targets)[::-1]
        for name in order:
            target_port, skill, trust, _ = targets[name]
            try:
                rates[name].append(bulk(target_port, skill, trust, upload=upload))
            except OSError as exc:
                print(f"sealed rows: {name}, {label}, round {round_number}: {exc!r}")
    return {
        name: statistics.median(values) if values else float("nan")
        for name, values in rates.items()
    }


def table(figures: dict[str, dict[str, float]]) -> str:
    """Format the sealed rows: each candidate, then sealed/plain and sealed/squid."""
    lines = [
        (
            f"{'metric':<26} {'plain':>9} {'sealed':>9} {'squid-bump':>11} "
            f"{'sealed/plain':>13} {'sealed/squid':>13}"
        ),
        "-" * 86,
    ]
    for label in figures["plain"]:
        plain, sealed, squid = (figures[name][label] for name in CANDIDATES)
        lines.append(
            f"{label:<26} {plain:>9.2f} {sealed:>9.2f} {squid:>11.2f} "
            f"{sealed / plain:>13.2f} {sealed / squid:>13.2f}"
        )
    return "\n".join(lines)
