"""Faults: the proxy, a skill, the sandbox container or the engine connection dies mid-run.

Each fault must end in a clear error (no traceback; exit 1 from the CLI), leave the sandbox
without egress, and leave nothing behind once `gc` has run. The audit trail of a run that was
killed stays readable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import anyio
import docker
import pytest
from skills_support import (
    ROOT,
    ensure_image,
    expert_toml,
    registry_host,
    require_engine,
    run_cli,
    started,
    stdlib_skill,
    text_of,
    unique,
    write_expert,
)

from perstack_sandbox import state

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from docker.models.containers import Container

pytestmark = [pytest.mark.docker, pytest.mark.anyio, pytest.mark.usefixtures("state_home")]

FAULT_DEADLINE_S = 120  # start a sandbox, hit it, watch it fail, tear down (2 busy cores)
REPORT_DEADLINE_S = 20  # the proxy's output stream ends within a second of its death
LABEL_EXPERT = "perstack-sandbox.expert"
LABEL_ROLE = "perstack-sandbox.role"
HOSTILE_SERVER = ROOT / "tests" / "security" / "expert" / "hostile_server.py"
# A call whose work is a visible process: once it shows in the sandbox, the call is in flight.
IN_FLIGHT_MARK = "in-flight-call"
SLEEPY_CALL = (
    "run_python",
    "--args",
    json.dumps({"code": f"import time; time.sleep(90)  # {IN_FLIGHT_MARK}"}),
)
# Inside the sandbox: CONNECT to the allowed host through the proxy (with the skill's
# credential from its HTTPS_PROXY), and a direct connect to the proxy's port, printed as one
# JSON list of outcomes.
EGRESS_PROBE = """
import base64, glob, json, os, socket, sys
from urllib.parse import urlsplit
def skill_proxy():
    for path in glob.glob('/proc/[0-9]*/environ'):
        try: env = open(path, 'rb').read().split(b'\\0')
        except OSError: continue
        for item in env:
            if item.startswith(b'HTTPS_PROXY='): return item.split(b'=', 1)[1].decode()
proxy = urlsplit(skill_proxy())
basic = base64.b64encode(f'{proxy.username}:{proxy.password}'.encode()).decode()
auth = f'Proxy-Authorization: Basic {basic}\\r\\n'
out = []
for head in (f'CONNECT {sys.argv[1]}:443 HTTP/1.1\\r\\nHost: {sys.argv[1]}:443\\r\\n{auth}\\r\\n',):
    try:
        with socket.create_connection((proxy.hostname, proxy.port), timeout=5) as s:
            s.sendall(head.encode())
            out.append(s.recv(12).decode(errors='replace') or 'closed')
    except OSError as exc:
        out.append(type(exc).__name__)
try:
    socket.create_connection((sys.argv[2], 443), timeout=5)
    out.append('connected')
except OSError as exc:
    out.append(type(exc).__name__)
print(json.dumps(out))
"""


@pytest.fixture(autouse=True)
def _engine() -> None:
    require_engine()


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio."""
    return "asyncio"


def sleepy_expert(folder: Path, *, egress: bool = False) -> tuple[Path, str]:
    """Write an Expert with one stdlib skill (optionally allowed to reach the registry)."""
    expert = unique("fault")
    extra = {"allowedDomains": [registry_host()]} if egress else {}
    skill = stdlib_skill("sleepy", **extra).replace("stdlib_skill.py", "hostile_server.py")
    config = write_expert(folder, expert_toml(expert, skill))
    shutil.copy2(HOSTILE_SERVER, folder / "hostile_server.py")
    (folder / "hostile_server.py").chmod(0o644)
    ensure_image(config, expert)
    return config, expert


def containers_of(expert: str) -> list[Container]:
    """Return every container labelled with this expert key."""
    # ignore_removed: a container listed and then removed (a teardown) before docker-py
    # inspects it is simply gone, not an error of the test.
    return docker.from_env().containers.list(
        all=True, filters={"label": f"{LABEL_EXPERT}={expert}"}, ignore_removed=True
    )


def objects_of(expert: str) -> list[str]:
    """Name every container and network labelled with this expert key."""
    api = docker.from_env().api
    flt = {"label": f"{LABEL_EXPERT}={expert}"}
    names: list[str] = [c["Names"][0] for c in api.containers(all=True, filters=flt)]
    return names + [n["Name"] for n in api.networks(filters=flt)]


def role(expert: str, name: str) -> Container:
    """Return the running container of `expert` with role `name`."""
    found = [c for c in containers_of(expert) if c.labels.get(LABEL_ROLE) == name]
    assert len(found) == 1, found
    return found[0]


async def wait_until(
    condition: Callable[[], bool], what: str, deadline: float = FAULT_DEADLINE_S
) -> None:
    """Poll `condition()` until it is true; fail naming `what` after `deadline` seconds."""
    with anyio.move_on_after(deadline):
        while not condition():  # noqa: ASYNC110 - polling the engine's view of a container
            await anyio.sleep(0.1)
        return
    pytest.fail(f"not within {deadline} s: {what}")


async def wait_for_call(process: subprocess.Popen[str], expert: str) -> None:
    """Wait until the SLEEPY_CALL runs in the sandbox; fail with the CLI's stderr if it died."""
    await wait_until(
        lambda: process.poll() is not None or call_in_flight(expert), "the call is in flight"
    )
    if process.poll() is not None:
        _out, err = process.communicate()
        pytest.fail(f"`call` exited {process.returncode} before its call was in flight:\n{err}")


def call_in_flight(expert: str) -> bool:
    """Tell whether the sandbox of `expert` runs the SLEEPY_CALL's process right now."""
    try:
        sandbox = role(expert, "sandbox")
    except AssertionError:
        return False
    if sandbox.status != "running":
        return False
    processes = sandbox.top().get("Processes") or []
    return any(IN_FLIGHT_MARK in " ".join(p) for p in processes)


def probe_egress(expert: str, proxy_host_ip: str) -> list[str]:
    """Run EGRESS_PROBE in the sandbox as a skill uid; return its outcomes."""
    sandbox = role(expert, "sandbox")
    done = sandbox.exec_run(
        ["python3", "-c", EGRESS_PROBE, registry_host(), proxy_host_ip], user="10001"
    )
    output = done.output
    assert isinstance(output, bytes)
    outcomes: list[str] = json.loads(output.decode().strip().splitlines()[-1])
    return outcomes


def assert_clear_failure(done: subprocess.CompletedProcess[str] | tuple[int, str]) -> str:
    """Assert exit 1 with an `error:` line and no traceback; return stderr."""
    code, stderr = (done.returncode, done.stderr) if not isinstance(done, tuple) else done
    assert code == 1, stderr
    assert "Traceback" not in stderr
    assert "error: " in stderr
    return stderr


async def test_killing_the_proxy_leaves_no_egress_and_the_gateway_says_so(tmp_path: Path) -> None:
    """After `docker kill` of the proxy, proxy and direct attempts fail and calls are refused.

    The proxy first demonstrably works (a CONNECT to the allowed host is answered 200).
    Fails when: the gateway is not told (checked by hand: `egress_problem` returning None; the
    calls then keep succeeding as if nothing happened).
    """
    config, expert = sleepy_expert(tmp_path, egress=True)
    with anyio.fail_after(FAULT_DEADLINE_S):
        async with started(config, expert) as gateway:
            proxy = role(expert, "proxy")
            egress_ip = next(
                n["IPAddress"]
                for n in proxy.attrs["NetworkSettings"]["Networks"].values()
                if n["IPAddress"]
                and n["NetworkID"] != role(expert, "sandbox").attrs["HostConfig"]["NetworkMode"]
            )
            before = await anyio.to_thread.run_sync(probe_egress, expert, egress_ip)
            assert before[0].startswith("HTTP/1.1 200")
            proxy.kill()
            refused = None
            with anyio.fail_after(REPORT_DEADLINE_S):
                while refused is None or not refused.is_error:
                    refused = await gateway.call_tool("run_python", {"code": "print(1)"})
                    await anyio.sleep(0.1)
            after = await anyio.to_thread.run_sync(probe_egress, expert, egress_ip)
    assert "egress is down" in text_of(refused)
    assert "proxy" in text_of(refused)
    assert after[0] in {"ConnectionRefusedError", "TimeoutError", "OSError", "closed"}
    assert after[1] in {"OSError", "TimeoutError"}  # EHOSTUNREACH: no way out at all
    assert objects_of(expert) == []
    run = state.latest_run()
    assert run is not None
    calls = [json.loads(line) for line in run.tools_path.read_text().splitlines()]
    assert calls[-1]["outcome"] == "refused-egress-down"


@contextlib.contextmanager
def cli_in_background(
    *args: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """Start `perstack-sandbox ARGS` as a child process; kill it on exit if still running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "perstack_sandbox", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


async def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait (bounded) for a background CLI to exit; return its code and stderr."""
    _out, err = await anyio.to_thread.run_sync(
        lambda: process.communicate(timeout=FAULT_DEADLINE_S)
    )
    return process.returncode, err


async def test_killing_the_skill_process_mid_call_is_a_clear_error_and_nothing_remains(
    tmp_path: Path,
) -> None:
    """`call` whose skill is SIGKILLed exits 1 naming the skill; gc finds nothing left."""
    config, expert = sleepy_expert(tmp_path)
    with cli_in_background("call", expert, *SLEEPY_CALL, "-c", str(config)) as process:
        await wait_for_call(process, expert)
        killed = role(expert, "sandbox").exec_run(["sh", "-c", "kill -KILL -1"], user="10001")
        assert killed.exit_code == 0, killed.output
        stderr = assert_clear_failure(await finish(process))
    assert "skill 'sleepy' exited with code 137" in stderr
    assert run_cli("gc").returncode == 0
    assert objects_of(expert) == []


async def test_killing_the_sandbox_container_mid_call_is_a_clear_error_and_nothing_remains(
    tmp_path: Path,
) -> None:
    """`call` whose sandbox container is killed exits 1 with a clear message; gc finds nothing."""
    config, expert = sleepy_expert(tmp_path)
    with cli_in_background("call", expert, *SLEEPY_CALL, "-c", str(config)) as process:
        await wait_for_call(process, expert)
        role(expert, "sandbox").kill()
        assert_clear_failure(await finish(process))
    assert run_cli("gc").returncode == 0
    assert objects_of(expert) == []


class EngineRelay:
    """A Unix socket that relays to the Docker engine's socket, until `cut()` drops it all."""

    def __init__(self, path: Path) -> None:
        """Listen at `path` and relay every connection to the engine in daemon threads."""
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(64)
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine.connect(engine_socket())
            self.sockets += [client, engine]
            for source, sink in ((client, engine), (engine, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Drop every relayed connection and stop listening: the engine is gone."""
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.path.unlink(missing_ok=True)


def engine_socket() -> str:
    """Return the path of the engine's Unix socket (DOCKER_HOST, else the default)."""
    configured = os.environ.get("DOCKER_HOST", "")
    return (
        configured.removeprefix("unix://")
        if configured.startswith("unix://")
        else ("/var/run/docker.sock")
    )


async def test_losing_the_engine_connection_mid_call_is_a_clear_error_and_gc_cleans_up(
    tmp_path: Path,
) -> None:
    """`call` through a relay to the engine that is cut mid-call exits 1; `gc` then cleans up."""
    config, expert = sleepy_expert(tmp_path / "expert")
    relay = EngineRelay(tmp_path / "engine.sock")
    try:
        env = {"DOCKER_HOST": f"unix://{relay.path}"}
        with cli_in_background("call", expert, *SLEEPY_CALL, "-c", str(config), env=env) as process:
            await wait_for_call(process, expert)
            relay.cut()
            stderr = assert_clear_failure(await finish(process))
    finally:
        relay.cut()
    assert "engine" in stderr.lower()
    assert objects_of(expert) != []  # the teardown could not reach the engine...
    assert run_cli("gc").returncode == 0
    assert objects_of(expert) == []  # ...and gc removed what was left


async def test_a_killed_runs_audit_trail_is_still_readable(tmp_path: Path) -> None:
    """SIGKILL of the orchestrator mid-run: `audit RUN --json` reads what the proxy decided."""
    config, expert = sleepy_expert(tmp_path, egress=True)
    with cli_in_background("call", expert, *SLEEPY_CALL, "-c", str(config)) as process:
        await wait_for_call(process, expert)
        proxy = role(expert, "proxy")
        egress_ip = next(
            n["IPAddress"]
            for n in proxy.attrs["NetworkSettings"]["Networks"].values()
            if n["IPAddress"]
        )
        outcomes = await anyio.to_thread.run_sync(probe_egress, expert, egress_ip)
        assert outcomes[0].startswith("HTTP/1.1 200")
        run = state.latest_run()
        assert run is not None
        await wait_until(lambda: registry_host() in run.audit_path.read_text(), "audited", 10)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=FAULT_DEADLINE_S)
    done = run_cli("audit", run.run_id, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["ended"] is None
    assert summary["status"] == "running"
    registry = {h["host"]: h for h in summary["hosts"]}[registry_host()]
    assert registry["reasons"] == {"client-hello-eof": 1}  # the probe sent no ClientHello
    assert run_cli("gc").returncode == 0
    assert objects_of(expert) == []


async def test_ctrl_c_during_a_call_exits_130_and_leaves_nothing(tmp_path: Path) -> None:
    """SIGINT to `call` mid-call: exit 130 (as `build` does), one line, the sandbox removed.

    Before issue 12 `call` exited 1 here and `build` 130; seen failing (exit 1) with
    `open_expert` raising RunError instead of RunInterruptedError.
    """
    config, expert = sleepy_expert(tmp_path)
    with cli_in_background("call", expert, *SLEEPY_CALL, "-c", str(config)) as process:
        await wait_for_call(process, expert)
        process.send_signal(signal.SIGINT)
        code, stderr = await finish(process)
    assert code == 130, stderr
    assert "error: interrupted by a signal; run " in stderr
    assert "Traceback" not in stderr
    assert objects_of(expert) == []
