"""The Kubernetes backend on a real cluster (kind or k3s): NOT run on the development machines.

Selected by PERSTACK_SANDBOX_K8S_IT=1 (see conftest.py and README, "Kubernetes backend").
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import perstack_sandbox
from perstack_sandbox import state
from perstack_sandbox.config import load_config
from perstack_sandbox.kube import KubernetesBackend
from perstack_sandbox.plan import plan

pytestmark = pytest.mark.anyio

FIXTURE = Path(__file__).parent.parent / "fixtures" / "kube_it.toml"

SECRET = "kube-it-secret-value"  # noqa: S105 - a test value
DEADLINE_S = 300  # image pulls on a fresh node; the build happened before the suite
PROBE = (
    "import socket,sys\n"
    "def tried(f):\n"
    "    try:\n        f(); return 'open'\n"
    "    except OSError as e:\n        return type(e).__name__\n"
    "print(tried(lambda: socket.getaddrinfo('example.com', 443)))\n"
    "print(tried(lambda: socket.create_connection(('1.1.1.1', 443), timeout=3)))\n"
    "print(tried(lambda: socket.create_connection(('169.254.169.254', 80), timeout=3)))\n"
    "print(tried(lambda: open('/var/run/secrets/kubernetes.io/serviceaccount/token')))\n"
)


async def test_tools_are_listed_and_called_through_the_cluster(state_dir):
    """open_run(backend="kubernetes") lists both skills' tools and calls the time server."""
    del state_dir
    with anyio.fail_after(DEADLINE_S):
        async with perstack_sandbox.open_run(
            FIXTURE, "kube-it", secrets={"KUBE_IT_SECRET": SECRET}, backend="kubernetes"
        ) as run:
            names = {tool.name for tool in await run.list_tools()}
            assert "get_current_time" in names
            result = await run.call_tool("get_current_time", {"timezone": "UTC"})
            assert not result.is_error


async def test_the_sandbox_reaches_nothing_but_its_proxy(state_dir):
    """From a skill's container: no DNS, no direct 443, no metadata, no service-account token."""
    del state_dir
    config, _ = load_config(FIXTURE)
    sandbox_plan = plan(config, "kube-it")
    image = await perstack_sandbox.build_image(FIXTURE, "kube-it")
    run = state.create_run("kube-it")
    with anyio.fail_after(DEADLINE_S):
        async with KubernetesBackend().open_sandbox(sandbox_plan, image=image, run=run) as box:
            async with box.exec_stdio(
                ["python3", "-I", "-c", PROBE], env={}, user=box.skill_uid(0), workdir="/"
            ) as process:
                output = b""
                async for chunk in process.stdout:
                    output += chunk
            lines = output.decode().split()
            assert lines[0] == "gaierror"
            assert "open" not in lines


async def test_down_and_gc_leave_nothing_of_a_run(state_dir):
    """After a run ends, ps no longer lists it (every labelled object was deleted)."""
    del state_dir
    backend = KubernetesBackend()
    with anyio.fail_after(DEADLINE_S):
        async with perstack_sandbox.open_run(
            FIXTURE, "kube-it", secrets={"KUBE_IT_SECRET": SECRET}, backend=backend
        ) as run:
            assert run.run_id in {info.run_id for info in await backend.list_runs()}
        assert run.run_id not in {info.run_id for info in await backend.list_runs()}
