"""The sandbox's network: no name resolves, only its own proxy is reachable, sandboxes are apart.

Every address probed here belongs to this test's own Docker networks or to the host's end of
them; nothing is sent anywhere else.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import subprocess
import threading
from contextlib import AsyncExitStack
from urllib.parse import urlsplit

import anyio
import pytest
from engine_support import run_in

from perstack_sandbox import state
from perstack_sandbox.engine import open_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.usefixtures("state_home")]

CONNECT_TIMEOUT_S = 2.0  # unreachable targets on a bridge fail by timeout, not by refusal
# Tries every target at once; prints {"ip:port": "connected" | error name}.
CONNECT_PROBE = r"""
import json, socket, sys, threading
results = {}
def attempt(target):
    host, port = target.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(float(sys.argv[1]))
    try:
        s.connect((host, int(port)))
        results[target] = "connected"
    except OSError as exc:
        results[target] = type(exc).__name__
    finally:
        s.close()
threads = [threading.Thread(target=attempt, args=(t,)) for t in sys.argv[2:]]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(results))
"""

# Resolves every name at once (a failed lookup waits for resolver timeouts); prints
# {"name": "resolved" | error name}.
RESOLVE_PROBE = r"""
import json, socket, sys, threading
results = {}
def lookup(name):
    try:
        socket.getaddrinfo(name, 443)
        results[name] = "resolved"
    except OSError as exc:
        results[name] = type(exc).__name__
threads = [threading.Thread(target=lookup, args=(n,)) for n in sys.argv[1:]]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(results))
"""


def registry_host() -> str:
    """Return the npm registry's host name, read from npm at run time."""
    out = subprocess.run(
        ["npm", "config", "get", "registry"], capture_output=True, text=True, check=True
    ).stdout
    host = urlsplit(out.strip().splitlines()[-1]).hostname
    assert host
    return host


async def connect_from(sandbox, targets: list[str]) -> dict[str, str]:
    """Try a TCP connection from inside `sandbox` to each `ip:port`."""
    argv = ["python3", "-c", CONNECT_PROBE, str(CONNECT_TIMEOUT_S), *targets]
    result = await run_in(sandbox, argv)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def container_ip(docker_api, container_id: str, network_id: str) -> str:
    """Return a container's address on one network."""
    networks = docker_api.inspect_container(container_id)["NetworkSettings"]["Networks"]
    return next(n["IPAddress"] for n in networks.values() if n["NetworkID"] == network_id)


def gateway_of(docker_api, network_id: str) -> str:
    """Return the host-side gateway address Docker reserved for a network."""
    return docker_api.inspect_network(network_id)["IPAM"]["Config"][0]["Gateway"]


async def test_no_name_resolves_inside_the_sandbox(plan_factory, empty_expert_image):
    """Registry, host and example names all fail to resolve: no resolver is reachable."""
    plan = plan_factory()
    names = [registry_host(), "host.docker.internal", "example.com", "kubernetes.default.svc"]
    async with open_sandbox(plan, image=empty_expert_image, run=state.create_run("n")) as sb:
        result = await run_in(sb, ["python3", "-c", RESOLVE_PROBE, "localhost", *names])
    assert result.code == 0, result.stderr
    answers = result.json()
    assert answers.pop("localhost") == "resolved"  # the probe works: /etc/hosts still answers
    assert set(answers) == set(names)
    assert "resolved" not in answers.values(), answers


async def test_only_the_proxy_is_reachable_and_not_the_host(
    plan_factory, empty_expert_image, docker_api
):
    """The proxy's sandbox-side port connects; its egress side and a host listener do not."""
    plan = plan_factory()
    async with open_sandbox(plan, image=empty_expert_image, run=state.create_run("n")) as sb:
        egress_net = next(
            n["NetworkID"]
            for n in docker_api.inspect_container(sb.proxy_container_id)["NetworkSettings"][
                "Networks"
            ].values()
            if n["NetworkID"] != sb.network_id
        )
        with host_listener(gateway_of(docker_api, egress_net)) as (host_ip, host_port):
            # Control: the listener works, from the host itself.
            socket.create_connection((host_ip, host_port), timeout=CONNECT_TIMEOUT_S).close()
            results = await connect_from(
                sb,
                [
                    f"{sb.proxy_ip}:{sb.proxy_port}",
                    f"{sb.proxy_host_ip}:{sb.proxy_port}",
                    f"{host_ip}:{host_port}",
                    f"{gateway_of(docker_api, sb.network_id)}:{host_port}",
                ],
            )
    assert results.pop(f"{sb.proxy_ip}:{sb.proxy_port}") == "connected"
    assert "connected" not in results.values(), results


async def test_the_host_has_no_address_on_the_internal_network(
    plan_factory, empty_expert_image, docker_api
):
    """The internal bridge carries no host address, so nothing on the host is its gateway."""
    plan = plan_factory()
    async with open_sandbox(plan, image=empty_expert_image, run=state.create_run("n")) as sb:
        gateway = gateway_of(docker_api, sb.network_id)
        with socket.socket() as probe, pytest.raises(OSError, match="assign") as refused:
            probe.bind((gateway, 0))
    assert refused.value.errno == errno.EADDRNOTAVAIL


async def test_two_sandboxes_cannot_reach_each_other(plan_factory, empty_expert_image, docker_api):
    """Neither sandbox reaches the other's container or proxy, on any of their addresses."""
    async with AsyncExitStack() as stack:
        first, second = [
            await stack.enter_async_context(
                open_sandbox(
                    plan_factory(name=f"peer{i}"),
                    image=empty_expert_image,
                    run=state.create_run(f"peer{i}"),
                )
            )
            for i in (1, 2)
        ]
        for me, other in ((first, second), (second, first)):
            other_ip = container_ip(docker_api, other.container_id, other.network_id)
            results = await connect_from(
                me,
                [
                    f"{other_ip}:{other.proxy_port}",
                    f"{other.proxy_ip}:{other.proxy_port}",
                    f"{other.proxy_host_ip}:{other.proxy_port}",
                    f"{me.proxy_ip}:{me.proxy_port}",
                ],
            )
            assert results.pop(f"{me.proxy_ip}:{me.proxy_port}") == "connected"
            assert "connected" not in results.values(), results


class host_listener:  # noqa: N801 - used like a function-style context manager
    """Listen on `ip`, an address of the host on one of our networks, accepting in a thread."""

    def __init__(self, ip: str) -> None:
        """Bind an ephemeral port on `ip`."""
        self._sock = socket.socket()
        self._sock.bind((ip, 0))
        self._sock.listen()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            conn.close()

    def __enter__(self) -> tuple[str, int]:
        """Start accepting; return the address."""
        self._thread.start()
        return self._sock.getsockname()[:2]

    def __exit__(self, *_exc: object) -> None:
        """Stop listening (shutdown wakes the blocked accept)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


AUDIT_DEADLINE_S = 30.0  # the proxy's line travels: proxy -> engine -> attach -> file


async def test_proxy_decisions_reach_the_runs_audit_file_as_they_happen(
    plan_factory, empty_expert_image
):
    """A refused CONNECT is written to the run's audit.jsonl while the sandbox still runs."""
    plan = plan_factory()
    run = state.create_run("audit")
    request = (
        "import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5);"
        "s.sendall(b'CONNECT example.com:443 HTTP/1.1\\r\\nHost: example.com:443\\r\\n\\r\\n');"
        "print(s.recv(64).decode().split()[1])"
    )
    async with open_sandbox(plan, image=empty_expert_image, run=run) as sb:
        refused = await run_in(sb, ["python3", "-c", request, sb.proxy_ip, str(sb.proxy_port)])
        assert refused.stdout.strip() == b"403", refused.stderr
        with anyio.fail_after(AUDIT_DEADLINE_S):
            while b"example.com" not in run.audit_path.read_bytes():  # noqa: ASYNC110 - a file
                await anyio.sleep(0.05)
    lines = [json.loads(line) for line in run.audit_path.read_text().splitlines() if line]
    decision = next(line for line in lines if line.get("event") == "decision")
    assert decision["host"] == "example.com"
    assert decision["decision"] == "deny"
    assert json.loads(run.policy_path.read_text())["allowedDomains"] == []
