"""`down` against live runs: the owner notices, tells its client, exits 1; `--all` is per user.

Other sessions run their own sandboxes on this engine right now. Every run here is started
with its own made-up owner user (LOGNAME/USER, which the owner labels record), so `down
--all` as that user can only ever see this test's runs; nothing else is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from mcp_types.version import LATEST_HANDSHAKE_VERSION
from skills_support import (
    ROOT,
    ensure_image,
    expert_toml,
    labelled_containers,
    require_engine,
    run_cli,
    stdlib_skill,
    unique,
    write_expert,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = [pytest.mark.docker]

START_DEADLINE_S = 120  # a sandbox with one local skill, on 2 busy cores
NOTICE_DEADLINE_S = 10  # "within seconds": the owner sees its container go and exits


@pytest.fixture(autouse=True)
def _engine() -> None:
    require_engine()


def owner_env(tmp_path: Path, name: str) -> dict[str, str]:
    """Return the environment of a CLI process acting as a made-up user with its own state."""
    user = f"pstest-{secrets.token_hex(4)}-{name}"
    return {
        "LOGNAME": user,
        "USER": user,
        "PERSTACK_SANDBOX_STATE": str(tmp_path / f"state-{name}"),
    }


class StdioClient:
    """A minimal MCP client over a `run` process's pipes: JSON-RPC lines, read in a thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        """Start reading the server's stdout into a queue."""
        self.process = process
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(line))

    def send(self, message: dict[str, Any]) -> None:
        """Write one JSON-RPC message."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
        self.process.stdin.flush()

    def request(self, method: str, params: dict[str, Any], deadline_s: float) -> dict[str, Any]:
        """Send a request and return its result (waiting at most `deadline_s`)."""
        self._next_id += 1
        ident = self._next_id
        self.send({"id": ident, "method": method, "params": params})
        answer = self.wait_for(lambda m: m.get("id") == ident, deadline_s)
        assert "result" in answer, answer
        return answer["result"]

    def wait_for(
        self, condition: Callable[[dict[str, Any]], bool], deadline_s: float
    ) -> dict[str, Any]:
        """Return the first message from the server that meets `condition`, within the deadline."""
        end = time.monotonic() + deadline_s
        while (left := end - time.monotonic()) > 0:
            try:
                message = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if condition(message):
                return message
        pytest.fail(f"no such message from the server within {deadline_s} s")


@contextlib.contextmanager
def serving(config: Path, expert: str, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """Start `run EXPERT` over stdio; kill it on exit if it still runs."""
    process = subprocess.Popen(
        [sys.executable, "-m", "perstack_sandbox", "run", expert, "-c", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def wait_running(expert: str, process: subprocess.Popen[str]) -> None:
    """Wait until the run's sandbox and proxy containers are up (fail if the run died)."""
    end = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < end:
        if process.poll() is not None:
            pytest.fail(f"`run` exited {process.returncode}: {process.communicate()[1]}")
        states = [c.status for c in labelled_containers(expert)]  # type: ignore[attr-defined]
        if states.count("running") == 2:  # the sandbox and its proxy
            return
        time.sleep(0.2)  # polling the engine's view; the condition, not the sleep, decides
    pytest.fail(f"run of {expert} not up within {START_DEADLINE_S} s")


def run_id_of(env: dict[str, str]) -> str:
    """Return the one run recorded in this process's own state directory."""
    runs = [path.name for path in (Path(env["PERSTACK_SANDBOX_STATE"]) / "runs").iterdir()]
    assert len(runs) == 1, runs
    return runs[0]


def local_expert(folder: Path, prefix: str) -> tuple[Path, str]:
    """Write an Expert with one local stdlib skill; build its image once."""
    expert = unique(prefix)
    config = write_expert(folder, expert_toml(expert, stdlib_skill("calc")))
    ensure_image(config, expert)
    return config, expert


def test_down_run_makes_its_owner_tell_its_client_and_exit_1(tmp_path: Path) -> None:
    """`down RUN`: within seconds the client gets an error log message and the owner exits 1.

    Fails when: the owner does not watch its sandbox (before issue 12 it kept serving with
    dead skills). Seen failing (no message within 10 s) with the run's gateway given no
    `ends_when` watcher (`run.Run._started`).
    """
    config, expert = local_expert(tmp_path / "expert", "down")
    env = owner_env(tmp_path, "owner")
    with serving(config, expert, env) as process:
        client = StdioClient(process)
        client.request(
            "initialize",
            {
                "protocolVersion": LATEST_HANDSHAKE_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "0"},
            },
            START_DEADLINE_S,
        )
        client.send({"method": "notifications/initialized"})
        tools = client.request("tools/list", {}, START_DEADLINE_S)["tools"]
        assert "echo" in {tool["name"] for tool in tools}
        run_id = run_id_of(env)
        done = run_cli("down", run_id)
        assert done.returncode == 0, done.stderr
        taken = time.monotonic()
        notice = client.wait_for(
            lambda m: m.get("method") == "notifications/message", NOTICE_DEADLINE_S
        )
        code = process.wait(timeout=NOTICE_DEADLINE_S)
        elapsed = time.monotonic() - taken
        stderr = process.communicate()[1]
    assert notice["params"]["level"] == "error"
    assert f"run {run_id} is over" in notice["params"]["data"]
    assert "was removed" in notice["params"]["data"]
    assert code == 1, stderr
    assert f"error: run {run_id} is over: its sandbox container was removed" in stderr
    assert "Traceback" not in stderr
    assert elapsed < NOTICE_DEADLINE_S
    print(f"owner noticed and exited {elapsed:.2f} s after `down` returned")  # noqa: T201


def test_down_all_takes_down_only_this_users_runs_and_asks_first(tmp_path: Path) -> None:
    """`down --all` as one user leaves another user's live run alone; without --yes it refuses.

    Fails when: `--all` ignores the owner user (before issue 12 every labelled object of every
    owner went). Seen failing (the other user's run was taken down) with `runs_to_take_down`
    matching any `pstest-` user, so that the check could not reach anyone else's runs.
    """
    config_a, expert_a = local_expert(tmp_path / "a", "mine")
    config_b, expert_b = local_expert(tmp_path / "b", "theirs")
    env_a, env_b = owner_env(tmp_path, "a"), owner_env(tmp_path, "b")
    with serving(config_a, expert_a, env_a) as mine, serving(config_b, expert_b, env_b) as theirs:
        wait_running(expert_a, mine)
        wait_running(expert_b, theirs)
        refused = run_cli("down", "--all", env=env_a)  # stdin is no terminal here
        assert refused.returncode == 2, refused.stderr
        assert "add --yes" in refused.stderr
        assert len(labelled_containers(expert_a)) == 2  # sandbox and proxy
        done = run_cli("down", "--all", "--yes", env=env_a)
        assert done.returncode == 0, done.stderr
        assert mine.wait(timeout=NOTICE_DEADLINE_S) == 1
        assert labelled_containers(expert_a) == []
        assert theirs.poll() is None
        assert [c.status for c in labelled_containers(expert_b)] == ["running", "running"]  # type: ignore[attr-defined]
        run_b = run_id_of(env_b)
        assert run_b not in done.stderr
        assert run_cli("down", run_b).returncode == 0
        assert theirs.wait(timeout=NOTICE_DEADLINE_S) == 1
    assert labelled_containers(expert_b) == []
