"""Our egress proxy against Squid, the same CONNECT workload through each, in one run.

Everything runs on loopback and stops by itself:

- a sink/echo upstream on 127.0.0.3:443 (CONNECT goes to port 443 only, so this needs root);
- Squid (the Debian package) in the foreground (`squid -N`), configured the way Perstack
  configures it: a `dstdomain` allowlist, CONNECT to port 443 only, deny everything else, no
  cache. Squid resolves the allowlisted name through a `hosts_file` in the temp dir;
- this proxy as a child process (`python -m perstack_sandbox_proxy`, under the Python running
  the benchmark), its test-only `testHosts` answering the same name with the same address and
  `testAllowCidrs` opened for that one address; or, with `--ours image`, its image as it ships
  (bench/_ours_image.py).

Both see the same name, the same upstream and the same client. Each tunnel starts with a real
TLS ClientHello carrying the right SNI (our proxy checks it), then a one-line command for the
sink: ECHO (answer PONG, then echo), UP n (swallow n bytes, answer OK), DOWN n (send n bytes).

Then the sealed path (bench/_sealed_rows.py): our sealed skill against our plain tunnel and
a bumping Squid (Debian's squid-openssl), over HTTPS to a loopback upstream.

Run: `python bench/proxy_vs_squid.py` (`--help` for options; `make bench` calls `main()`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import _sealed_rows
from _ours_image import ours_in_image
from _procs import cpu_seconds, free_port, rss_kib, squid_process, stop, wait_listening
from _tunnel_sink import Sink, SinkHandler, drain, recv_exactly, send_zeros

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
SQUID = shutil.which("squid") or "/usr/sbin/squid"
NAME = "sink.bench.test"
SINK_HOST = "127.0.0.3"
SINK_PORT = 443
PROXY_HOST = "127.0.0.1"
# Every wait in the benchmark is bounded by this.
DEADLINE = 60.0
LATENCY_SAMPLES = 300
CONCURRENT = 200
MIB = 1024 * 1024


# --- the two proxies --------------------------------------------------------------------


SQUID_CONF = """\
http_port {host}:{port}
acl allowed_domains dstdomain {name}
acl SSL_ports port 443
acl CONNECT method CONNECT
http_access deny CONNECT !SSL_ports
http_access allow CONNECT allowed_domains
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


@contextlib.contextmanager
def _squid(workdir: Path) -> Iterator[tuple[int, int]]:
    port = free_port(PROXY_HOST)
    workdir.chmod(0o777)  # squid drops root privileges to its own user before writing logs
    (workdir / "hosts").write_text(f"{SINK_HOST} {NAME}\n")
    conf = workdir / "squid.conf"
    conf.write_text(SQUID_CONF.format(host=PROXY_HOST, port=port, name=NAME, dir=workdir))
    with squid_process(SQUID, conf, PROXY_HOST, port, "squid") as pid:
        yield port, pid


@contextlib.contextmanager
def _ours(workdir: Path, where: str) -> Iterator[tuple[int, int]]:
    """Run our proxy on the host (``where`` "host") or as it ships ("image"); yield port, pid."""
    port = free_port(PROXY_HOST)
    policy = {
        "allowedDomains": [NAME],
        "sandboxId": "bench",
        "testAllowCidrs": [f"{SINK_HOST}/32"],
        "testHosts": {NAME: SINK_HOST},
    }
    with (workdir / "audit.jsonl").open("wb") as audit:
        if where == "image":
            with ours_in_image(policy, PROXY_HOST, port, audit) as pid:
                yield port, pid
            return
        (workdir / "policy.json").write_text(json.dumps(policy))
        args = ["--policy", str(workdir / "policy.json"), "--listen", f"{PROXY_HOST}:{port}"]
        process = subprocess.Popen(
            [sys.executable, "-m", "perstack_sandbox_proxy", *args],
            cwd=REPO,
            stdout=audit,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening(PROXY_HOST, port, process, "our proxy")
            yield port, process.pid
        finally:
            stop(process)


# --- the workload -----------------------------------------------------------------------


def _client_hello() -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=NAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


HELLO = _client_hello()
CONNECT = f"CONNECT {NAME}:443 HTTP/1.1\r\nHost: {NAME}:443\r\n\r\n".encode()


def _tunnel(port: int, command: bytes) -> socket.socket:
    """Open a tunnel through the proxy at ``port`` and send the ClientHello and ``command``."""
    sock = socket.create_connection((PROXY_HOST, port), DEADLINE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(CONNECT)
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += recv_exactly(sock, 1)
    if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        sock.close()
        raise RuntimeError(f"tunnel refused: {head!r}")
    sock.sendall(HELLO + command)
    return sock


def _setup_latency(port: int, count: int) -> list[float]:
    """Seconds from TCP connect to the first byte back from the upstream, per tunnel."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        with _tunnel(port, b"ECHO\n") as sock:
            recv_exactly(sock, 5)
            samples.append(time.perf_counter() - started)
    return samples


def _upload(port: int, size: int) -> float:
    """Seconds to push ``size`` bytes through an open tunnel until the sink confirms."""
    with _tunnel(port, f"UP {size}\n".encode()) as sock:
        started = time.perf_counter()
        send_zeros(sock, size)
        recv_exactly(sock, 3)
        return time.perf_counter() - started


def _download(port: int, size: int) -> float:
    """Seconds to receive ``size`` bytes from the sink through an open tunnel."""
    with _tunnel(port, f"DOWN {size}\n".encode()) as sock:
        started = time.perf_counter()
        drain(sock, size)
        return time.perf_counter() - started


async def _async_tunnel(port: int, payload: bytes) -> None:
    reader, writer = await asyncio.open_connection(PROXY_HOST, port)
    try:
        writer.write(CONNECT)
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"tunnel refused: {head!r}")
        writer.write(HELLO + b"ECHO\n" + payload)
        await reader.readexactly(5 + len(payload))
    finally:
        writer.close()


async def _concurrent(port: int) -> float:
    """Seconds for CONCURRENT tunnels, started together, each to echo 64 KiB."""
    payload = os.urandom(64 * 1024)
    started = time.perf_counter()
    async with asyncio.timeout(DEADLINE):
        await asyncio.gather(*(_async_tunnel(port, payload) for _ in range(CONCURRENT)))
    return time.perf_counter() - started


@dataclass
class Figures:
    """One proxy's results (medians over interleaved rounds)."""

    rss_start_kib: float = 0.0
    rss_after_kib: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_us: float = 0.0  # the proxy's CPU time per tunnel set up and closed
    up_1m: float = 0.0  # MiB/s
    up_64m: float = 0.0
    down_64m: float = 0.0
    concurrent_ms: float = 0.0


ROUNDS = 5


def _alternating(names: list[str], round_number: int) -> list[str]:
    return names if round_number % 2 == 0 else names[::-1]


def _interleaved(ports: dict[str, int], measure: Callable[[int], float]) -> dict[str, float]:
    """Median of ROUNDS samples per proxy, alternating which proxy goes first each round."""
    samples: dict[str, list[float]] = {name: [] for name in ports}
    for round_number in range(ROUNDS):
        for name in _alternating(list(ports), round_number):
            samples[name].append(measure(ports[name]))
    return {name: statistics.median(values) for name, values in samples.items()}


def _latencies(
    proxies: dict[str, tuple[int, int]], cpu: dict[str, float], count: int
) -> dict[str, list[float]]:
    """``count`` setup latencies per proxy, taken in alternating blocks.

    Adds each proxy's CPU seconds over its own blocks to ``cpu``: unlike a latency, that
    hardly moves with the machine's load.
    """
    samples: dict[str, list[float]] = {name: [] for name in proxies}
    for round_number in range(ROUNDS):
        for name in _alternating(list(proxies), round_number):
            port, pid = proxies[name]
            before = cpu_seconds(pid)
            samples[name] += _setup_latency(port, count // ROUNDS)
            cpu[name] = cpu.get(name, 0.0) + cpu_seconds(pid) - before
    return {name: sorted(values) for name, values in samples.items()}


COLUMNS: tuple[tuple[str, Callable[[int], float]], ...] = (
    ("up_1m", lambda port: 1 / statistics.median(_upload(port, MIB) for _ in range(5))),
    ("up_64m", lambda port: 64 / _upload(port, 64 * MIB)),
    ("down_64m", lambda port: 64 / _download(port, 64 * MIB)),
    ("concurrent_ms", lambda port: asyncio.run(_concurrent(port)) * 1000),
)


def _measure(
    proxies: dict[str, tuple[int, int]], tunnels: int = LATENCY_SAMPLES
) -> dict[str, Figures]:
    """Measure every proxy in ``proxies`` (name -> (port, pid)), interleaving the rounds.

    ``tunnels`` tunnels per proxy give the setup latencies and the CPU per tunnel.
    """
    ports = {name: port for name, (port, _) in proxies.items()}
    figures = {name: Figures(rss_start_kib=rss_kib(pid)) for name, (_, pid) in proxies.items()}
    for port in ports.values():
        _setup_latency(port, 50)  # warm-up
    cpu: dict[str, float] = {}
    for name, latency in _latencies(proxies, cpu, tunnels).items():
        figures[name].p50_ms = statistics.median(latency) * 1000
        figures[name].p99_ms = latency[int(len(latency) * 0.99) - 1] * 1000
        figures[name].cpu_us = cpu[name] / len(latency) * 1e6
    for attr, measure in COLUMNS:
        for name, value in _interleaved(ports, measure).items():
            setattr(figures[name], attr, value)
    time.sleep(1)  # let both proxies settle to idle before reading memory again
    for name, (_, pid) in proxies.items():
        figures[name].rss_after_kib = rss_kib(pid)
    return figures


ROWS = (
    ("tunnel setup p50 (ms)", "p50_ms", "lower"),
    ("tunnel setup p99 (ms)", "p99_ms", "lower"),
    ("CPU per tunnel (us)", "cpu_us", "lower"),
    ("upload 1 MiB (MiB/s)", "up_1m", "higher"),
    ("upload 64 MiB (MiB/s)", "up_64m", "higher"),
    ("download 64 MiB (MiB/s)", "down_64m", "higher"),
    (f"{CONCURRENT} concurrent tunnels (ms)", "concurrent_ms", "lower"),
    ("idle RSS at start (MiB)", "rss_start_kib", "lower"),
    ("idle RSS after load (MiB)", "rss_after_kib", "lower"),
)


def _table(ours: Figures, squid: Figures) -> str:
    lines = [
        f"{'metric':<30} {'squid':>10} {'ours':>10} {'ours/squid':>11}  better",
        "-" * 72,
    ]
    for label, attr, better in ROWS:
        mine, theirs = float(getattr(ours, attr)), float(getattr(squid, attr))
        scale = 1024 if attr.startswith("rss") else 1
        lines.append(
            f"{label:<30} {theirs / scale:>10.2f} {mine / scale:>10.2f} "
            f"{mine / theirs if theirs else float('nan'):>11.2f}  {better}"
        )
    return "\n".join(lines)


def _check_environment() -> None:
    if os.geteuid() != 0:
        raise SystemExit("proxy_vs_squid: needs root (the upstream listens on port 443)")
    if not Path(SQUID).exists():
        raise SystemExit("proxy_vs_squid: squid is not installed (apt-get install squid-openssl)")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/proxy_vs_squid.py", description=__doc__.split("\n\n", 1)[0]
    )
    parser.add_argument(
        "--ours",
        choices=("host", "image"),
        default="host",
        help="run our proxy under this Python on the host (default), or as it ships: its image "
        "and hardening, on the host's network",
    )
    parser.add_argument(
        "--tunnels",
        type=int,
        default=LATENCY_SAMPLES,
        help=f"tunnels per proxy for the setup and CPU rows (default {LATENCY_SAMPLES}; more "
        "narrows their spread on a busy machine)",
    )
    parser.add_argument(
        "--no-sealed", action="store_true", help="skip the sealed-path rows (and the bumping Squid)"
    )
    args = parser.parse_args(argv)
    if args.tunnels < ROUNDS:
        parser.error(f"--tunnels must be at least {ROUNDS} (one per round)")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the workload through Squid and through our proxy; print the ratio tables."""
    args = _arguments(argv if argv is not None else sys.argv[1:])
    _check_environment()
    sink = Sink((SINK_HOST, SINK_PORT), SinkHandler)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
            work = Path(tmp)
            work.chmod(0o755)  # squid's unprivileged user must reach its own subdirectory
            (work / "squid").mkdir()
            (work / "ours").mkdir()
            with _squid(work / "squid") as squid, _ours(work / "ours", args.ours) as ours:
                figures = _measure({"squid": squid, "ours": ours}, args.tunnels)
    finally:
        sink.shutdown()
        sink.server_close()
    print(f"CONNECT through each proxy to a loopback sink; {sys.platform}, {os.cpu_count()} cpus")
    print(_table(figures["ours"], figures["squid"]))
    if not args.no_sealed:
        _sealed()


def _sealed() -> None:
    """Print the sealed-path rows, against our plain tunnel and a bumping Squid."""
    if not _sealed_rows.squid_can_bump(SQUID):
        print("\nsealed rows skipped: this squid cannot bump TLS (apt-get install squid-openssl)")
        return
    with tempfile.TemporaryDirectory(prefix="bench-sealed-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        figures = _sealed_rows.measure(SQUID, work, free_port(PROXY_HOST))
    print("\nHTTPS through each: setup = new connection, CONNECT, TLS, one small GET")
    print(_sealed_rows.table(figures))


if __name__ == "__main__":
    main()
