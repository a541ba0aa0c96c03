"""The proxy's main as the engine runs it: policy file in, audit lines out, clean exits.

Here it runs as `python -m perstack_sandbox_proxy` (its installed name); the proxy image copies
the same package as `proxy` and runs `python3 -m proxy` (its imports are relative).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pytest
from proxy_helpers import IO_TIMEOUT, read_until_eof, status_of

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[2]


def _start(policy_path: Path, *listen: str) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "perstack_sandbox_proxy", "--policy", str(policy_path)]
    for address in listen:
        args += ["--listen", address]
    return subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _bound_addresses(stderr: IO[str]) -> list[tuple[str, int]]:
    """Read the startup line and return the addresses it lists."""
    line = stderr.readline()
    assert "listening on" in line, line
    return [(host, int(port)) for host, port in re.findall(r"([\d.]+):(\d+)", line)]


@pytest.fixture
def proxy_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[tuple[str, int]]]]:
    """Run a proxy child process listening on two loopback ports."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"allowedDomains": ["api.example.com"], "sandboxId": "sbx-9"}))
    process = _start(policy, "127.0.0.1:0", "127.0.0.1:0")
    try:
        assert process.stderr is not None
        yield process, _bound_addresses(process.stderr)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(IO_TIMEOUT)


def _exchange(address: tuple[str, int], raw: bytes) -> bytes:
    with socket.create_connection(address, timeout=IO_TIMEOUT) as sock:
        sock.sendall(raw)
        return read_until_eof(sock)


def test_child_process_answers_health_on_every_listen_address_and_stops_on_sigterm(
    proxy_process: tuple[subprocess.Popen[str], list[tuple[str, int]]],
) -> None:
    """Each --listen address answers /healthz; SIGTERM ends the process with status 0."""
    process, addresses = proxy_process
    assert len(addresses) == 2
    for address in addresses:
        assert status_of(_exchange(address, b"GET /healthz HTTP/1.1\r\n\r\n")) == 200
    process.send_signal(signal.SIGTERM)
    assert process.wait(IO_TIMEOUT) == 0


def test_child_process_writes_one_json_audit_line_per_decision_and_close_on_stdout(
    proxy_process: tuple[subprocess.Popen[str], list[tuple[str, int]]],
) -> None:
    """A refused CONNECT shows up on stdout as a decision line and a close line."""
    process, addresses = proxy_process
    assert status_of(_exchange(addresses[0], b"CONNECT evil.com:443 HTTP/1.1\r\n\r\n")) == 403
    assert process.stdout is not None
    decision = json.loads(process.stdout.readline())
    close = json.loads(process.stdout.readline())
    assert (decision["event"], decision["host"], decision["reason"]) == (
        "decision",
        "evil.com",
        "not-allowed",
    )
    assert decision["sandboxId"] == "sbx-9"
    assert (close["event"], close["conn"]) == ("close", decision["conn"])


@pytest.mark.parametrize(
    "content",
    ["{broken", '{"allowedDomains": ["xn--pple-43d.com"]}', '{"limits": {"idleTimeout": 0}}'],
    ids=["not-json", "punycode-domain", "zero-limit"],
)
def test_malformed_policy_exits_2_with_a_message(tmp_path: Path, content: str) -> None:
    """A malformed policy stops the proxy before it listens, with exit status 2."""
    policy = tmp_path / "policy.json"
    policy.write_text(content)
    process = _start(policy, "127.0.0.1:0")
    _, stderr = process.communicate(timeout=IO_TIMEOUT)
    assert process.returncode == 2
    assert "invalid policy" in stderr


def test_listen_address_in_use_exits_1(tmp_path: Path) -> None:
    """An address that cannot be bound ends the proxy with status 1 and a message."""
    policy = tmp_path / "policy.json"
    policy.write_text("{}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = _start(policy, f"127.0.0.1:{port}")
        _, stderr = process.communicate(timeout=IO_TIMEOUT)
    assert process.returncode == 1
    assert "cannot listen" in stderr


def test_bad_listen_argument_exits_2(tmp_path: Path) -> None:
    """A --listen value without a port is a usage error (status 2)."""
    policy = tmp_path / "policy.json"
    policy.write_text("{}")
    process = _start(policy, "127.0.0.1")
    _, stderr = process.communicate(timeout=IO_TIMEOUT)
    assert process.returncode == 2
    assert "HOST:PORT" in stderr
