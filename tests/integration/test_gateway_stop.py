"""`run` and `run --http` stopped by SIGINT or SIGTERM: exit 0, no traceback, run `stopped`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx2
import pytest
from skills_support import EXAMPLE_CONFIG, ROOT, ensure_image, require_engine

from perstack_sandbox import state

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("state_home")]
TOKEN = "stop-test-token-0123456789"  # noqa: S105 - a test-only token
DEADLINE_S = 180
STOPPED = 0  # a signal is `run`'s normal end (decision 29); one-shot commands keep 130
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "stop-test", "version": "0"},
    },
}


@pytest.fixture(scope="module", autouse=True)
def example_image():
    """Build (or reuse) the example's image once for this module."""
    require_engine()
    return ensure_image(EXAMPLE_CONFIG, "demo")


def _run(*extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "perstack_sandbox", "run", "demo", "-c", str(EXAMPLE_CONFIG)]
    return subprocess.Popen(
        [*command, *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PERSTACK_SANDBOX_TOKEN": TOKEN},
    )


def _stopped(child: subprocess.Popen[str], signum: int) -> str:
    """Send `signum`, wait for the exit (stdin still open), return stderr."""
    child.send_signal(signum)
    code = child.wait(timeout=DEADLINE_S)
    assert child.stderr is not None
    err = child.stderr.read()
    assert code == STOPPED, err
    assert "Traceback" not in err
    assert "stopped: interrupted by a signal" in err
    return err


def _recorded_status() -> str:
    latest = state.latest_run()
    assert latest is not None
    return str(latest.read_meta().get("status"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_run_over_stdio_while_the_client_keeps_stdin_open(signum):
    """`run` answers, then a signal ends it at once: exit 0, no traceback, status stopped."""
    with _run() as child:
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.write(json.dumps(INIT) + "\n")
        child.stdin.flush()
        assert '"id":0' in child.stdout.readline()
        _stopped(child, signum)
        child.stdin.close()
    assert _recorded_status() == "stopped"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_run_over_http(signum):
    """`run --http` answers, then a signal ends it: exit 0, no traceback, status stopped."""
    with _run("--http", "127.0.0.1:0") as child:
        assert child.stderr is not None
        url = ""
        while not url:
            line = child.stderr.readline()
            assert line, "run --http ended before announcing its URL"
            url = line.removeprefix("gateway: ").strip() if line.startswith("gateway: ") else ""
        headers = {
            "Authorization": f"Bearer {TOKEN}",
            "Accept": "application/json, text/event-stream",
        }
        answered = httpx2.post(url, json=INIT, headers=headers, timeout=60)
        assert answered.status_code == 200
        _stopped(child, signum)
    assert _recorded_status() == "stopped"
