"""The installed wheel as an agent runtime embeds it, from a folder outside the checkout.

The wheel's `run` is driven by the official MCP SDK's stdio client (in the wheel's own venv),
which is SIGKILLed mid-run; the wheel's `serve` makes a run, serves a tool call, deletes it.
"""

from __future__ import annotations

import json
import shutil
import signal
from typing import TYPE_CHECKING

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from wheel_support import ROOT, objects_of, only_run, start, wait_until

from perstack_sandbox import state

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

    from wheel_support import Installed

pytestmark = [pytest.mark.docker]
START_DEADLINE_S = 300  # a sandbox of three skills from cached images, on 2 busy cores
CLEAN_DEADLINE_S = 30  # the run notices its closed stdin and tears down (README, "Teardown")
EXIT_TIMEOUT_S = 60


def report_of(stdout: Path, process: subprocess.Popen[str]) -> dict[str, object] | None:
    """Return the client's JSON report once printed; fail at once if the client died."""
    assert process.poll() is None, stdout.with_suffix(".stderr").read_text()[-3000:]
    lines = stdout.read_text().splitlines()
    return json.loads(lines[0]) if lines else None


def test_a_killed_sdk_client_of_the_wheels_run_leaves_none_of_its_objects(
    installed: Installed, tmp_path: Path
) -> None:
    """SDK stdio client lists and calls `run`; SIGKILLed mid-run, every object of its run goes.

    Nothing cleans up but the run itself and its reaper (no `gc`). Seen failing by hand with
    the run process and its reaper SIGKILLed too: its containers and network stayed.
    """
    home = tmp_path / "state"
    client_script = shutil.copy(ROOT / "tests" / "wheel" / "sdk_client.py", installed.work)
    stdout, stderr = tmp_path / "client.out", tmp_path / "client.stderr"
    with stdout.open("w") as out, stderr.open("w") as err:
        command = [installed.python, "-I", client_script, installed.cli, str(installed.config)]
        client = start(command, installed, home, stdout=out, stderr=err)
    try:
        assert wait_until(lambda: report_of(stdout, client) is not None, START_DEADLINE_S)
        report = report_of(stdout, client)
        assert report is not None
        assert {"echo", "get_current_time"} <= set(report["tools"])  # type: ignore[arg-type]
        assert "from the wheel" in str(report["echo"])
        assert str(report["package"]).startswith(str(installed.venv))
        assert report["checkout_importable"] is False
        run_id = only_run(home)
        assert run_id is not None
        assert objects_of(run_id) != []  # mid-run: there is something to leave behind
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=EXIT_TIMEOUT_S)
        assert wait_until(lambda: objects_of(run_id) == [], CLEAN_DEADLINE_S), objects_of(run_id)
        run = state.RunState(run_id, home / state.RUNS_DIR / run_id)
        assert wait_until(lambda: not run.is_journal_open(), CLEAN_DEADLINE_S)
    finally:
        if client.poll() is None:
            client.kill()


@pytest.mark.anyio
async def test_the_wheels_serve_creates_a_run_serves_a_tool_call_and_deletes_it(
    installed: Installed, tmp_path: Path
) -> None:
    """`serve` from the wheel: POST a run of the example, call echo on its MCP URL, DELETE it."""
    home, sock = tmp_path / "state", tmp_path / "s.sock"
    stderr = tmp_path / "serve.stderr"
    with stderr.open("w") as err:
        command = [installed.cli, "serve", "--listen", f"unix:{sock}"]
        service = start(command, installed, home, stderr=err)
    try:
        listening = wait_until(
            lambda: "listening on" in stderr.read_text() or service.poll() is not None,
            START_DEADLINE_S,
        )
        assert listening, stderr.read_text()
        assert service.poll() is None, stderr.read_text()
        transport = httpx2.AsyncHTTPTransport(uds=str(sock))
        body = {"config_path": str(installed.config), "expert": "demo", "env": {}}
        with anyio.fail_after(START_DEADLINE_S):
            async with httpx2.AsyncClient(
                transport=transport, base_url="http://localhost", timeout=START_DEADLINE_S
            ) as api:
                created = await api.post("/v1/runs", json=body)
                assert created.status_code == 201, created.text
                run = created.json()
                await call_echo(sock, run["mcp"]["url"], run["mcp"]["token"])
                assert objects_of(run["id"]) != []
                assert (await api.delete(f"/v1/runs/{run['id']}")).status_code == 204
                assert objects_of(run["id"]) == []  # DELETE answers once torn down
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=EXIT_TIMEOUT_S) == 0, stderr.read_text()
    finally:
        if service.poll() is None:
            service.kill()


async def call_echo(sock: Path, url: str, token: str) -> None:
    """Call `echo` with the MCP SDK's streamable-HTTP client on a run's endpoint."""
    transport = httpx2.AsyncHTTPTransport(uds=str(sock))
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(transport=transport, headers=headers, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        echoed = await client.call_tool("echo", {"message": "served by the wheel"})
    assert "served by the wheel" in "".join(getattr(b, "text", "") for b in echoed.content)
