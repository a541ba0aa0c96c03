"""The sealed path against the plain tunnel, through the same proxy process, in one run.

Everything runs on loopback and stops by itself: an HTTPS upstream on 127.0.0.5:443 (needs
root, as `proxy_vs_squid.py`), and this proxy as a child process (its own main, with the
test-only `testHosts`/`testUpstreamCa` keys naming and trusting that upstream). Two skills
share it: `plain` has no sealed value (its tunnel is spliced), `sealed` has one (its tunnel is
terminated with the run's CA, sent the seal message through the real control client). Each
workload alternates between them; the table gives sealed/plain.

- setup: a new connection (CONNECT, TLS, one small GET carrying the skill's key header);
- download and upload: 64 MiB in one request on an open connection.

Run: `python bench/sealed_path.py` (the `make bench` aggregator calls `main()`).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from perstack_sandbox_proxy._ca import RunCA

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[1]
NAME = "upstream.bench.test"
UPSTREAM = ("127.0.0.5", 443)
PROXY_HOST = "127.0.0.1"
DEADLINE = 60.0
SETUP_SAMPLES = 60
BULK = 64 * 1024 * 1024
BLOCK = 256 * 1024
VALUE = "bench-real-value-0123456789abcdef"
PLACEHOLDER = "benchPLACEHOLDERxxxxxxxxxxxxxxxxx"
TOKENS = {"plain": "bench-token-plain", "sealed": "bench-token-sealed"}


class Upstream(http.server.BaseHTTPRequestHandler):
    """GET /small answers 2 bytes, GET /down answers BULK bytes, POST swallows its body."""

    protocol_version = "HTTP/1.1"
    # The head and the body are two writes: with Nagle on, the body waits for the client's
    # delayed ACK (40 ms), which would swamp what the benchmark measures.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        """Answer /small or /down."""
        size = BULK if self.path == "/down" else 2
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        block = bytes(BLOCK)
        while size:
            self.wfile.write(block[: min(size, BLOCK)])
            size -= min(size, BLOCK)

    def do_POST(self) -> None:
        """Read the body, answer 2 bytes."""
        remaining = int(self.headers["Content-Length"])
        while remaining:
            remaining -= len(self.rfile.read(min(remaining, BLOCK)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: object) -> None:
        """Stay quiet."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((PROXY_HOST, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def proxy(workdir: Path, upstream_ca: str) -> Iterator[tuple[int, str, int]]:
    """Run the proxy, seal it; yield its port, the run CA's certificate and its pid."""
    port, control = _free_port(), str(workdir / "control.sock")
    skills = {
        TOKENS[name]: {"skill": name, "allowedDomains": [NAME]} for name in ("plain", "sealed")
    }
    policy = {
        "sandboxId": "bench",
        "skills": skills,
        "testAllowCidrs": [f"{UPSTREAM[0]}/32"],
        "testHosts": {NAME: UPSTREAM[0]},
        "testUpstreamCa": upstream_ca,
    }
    (workdir / "policy.json").write_text(json.dumps(policy))
    args = ["--policy", str(workdir / "policy.json"), "--listen", f"{PROXY_HOST}:{port}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "perstack_sandbox_proxy", *args, "--control", control],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        message = {
            "op": "seal",
            "skills": {"sealed": {"KEY": {"placeholder": PLACEHOLDER, "value": VALUE}}},
        }
        deadline = time.monotonic() + DEADLINE
        while True:
            done = subprocess.run(
                [sys.executable, "-m", "perstack_sandbox_proxy.control", control],
                input=json.dumps(message).encode(),
                capture_output=True,
                check=False,
                timeout=DEADLINE,
            )
            if done.returncode != 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        reply = json.loads(done.stdout)
        yield port, reply["caCertificate"], process.pid
    finally:
        process.terminate()
        process.wait(DEADLINE)


def _connection(port: int, skill: str, trust: str) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cadata=trust)
    conn = http.client.HTTPSConnection(PROXY_HOST, port, timeout=DEADLINE, context=context)
    credential = base64.b64encode(f"{skill}:{TOKENS[skill]}".encode()).decode()
    conn.set_tunnel(NAME, 443, headers={"Proxy-Authorization": f"Basic {credential}"})
    return conn


def setup(port: int, skill: str, trust: str) -> float:
    """Milliseconds for a new connection: CONNECT, TLS, one small GET carrying the key."""
    started = time.perf_counter()
    conn = _connection(port, skill, trust)
    conn.request("GET", "/small", headers={"Authorization": PLACEHOLDER})
    conn.getresponse().read()
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed * 1000


def bulk(port: int, skill: str, trust: str, *, upload: bool) -> float:
    """MiB/s of one BULK upload or download on an open connection."""
    conn = _connection(port, skill, trust)
    conn.request("GET", "/small")
    conn.getresponse().read()  # the tunnel is set up before the clock starts
    started = time.perf_counter()
    if upload:
        conn.request("POST", "/up", body=bytes(BULK))
        conn.getresponse().read()
    else:
        conn.request("GET", "/down")
        response = conn.getresponse()
        while response.read(BLOCK):
            pass
    elapsed = time.perf_counter() - started
    conn.close()
    return BULK / (1024 * 1024) / elapsed


def _measure(port: int, trust: dict[str, str]) -> dict[str, dict[str, float]]:
    setups: dict[str, list[float]] = {"plain": [], "sealed": []}
    for index in range(SETUP_SAMPLES):
        order = ("plain", "sealed") if index % 2 == 0 else ("sealed", "plain")
        for skill in order:
            setups[skill].append(setup(port, skill, trust[skill]))
    figures = {
        skill: {
            "setup p50 (ms)": statistics.median(values),
            "setup p90 (ms)": statistics.quantiles(values, n=10)[-1],
        }
        for skill, values in setups.items()
    }
    for skill in ("plain", "sealed", "sealed", "plain"):  # alternated: warm caches for both
        for label, upload in (("download (MiB/s)", False), ("upload (MiB/s)", True)):
            rate = bulk(port, skill, trust[skill], upload=upload)
            figures[skill][label] = max(figures[skill].get(label, 0.0), rate)
    return figures


def main() -> None:
    """Measure both paths and print sealed/plain."""
    if os.geteuid() != 0:
        raise SystemExit("sealed_path: needs root (the upstream listens on port 443)")
    upstream_ca = RunCA("bench-upstream", [NAME])
    server = http.server.ThreadingHTTPServer(UPSTREAM, Upstream)
    server.socket = upstream_ca.server_context(NAME).wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-sealed-") as tmp,
            proxy(Path(tmp), upstream_ca.pem) as (port, run_ca, _),
        ):
            figures = _measure(port, {"plain": upstream_ca.pem, "sealed": run_ca})
    finally:
        server.shutdown()
        server.server_close()
    print(f"sealed path vs plain tunnel, one proxy, loopback; {os.cpu_count()} cpus")
    print(f"{'metric':<20} {'plain':>10} {'sealed':>10} {'sealed/plain':>13}")
    for label in figures["plain"]:
        plain, sealed = figures["plain"][label], figures["sealed"][label]
        print(f"{label:<20} {plain:>10.2f} {sealed:>10.2f} {sealed / plain:>13.2f}")


if __name__ == "__main__":
    main()
