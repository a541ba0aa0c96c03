"""The run on top of the backend seam: `open_run(backend=...)` uses only the seam's methods.

A backend object that is neither Docker nor Kubernetes (its skills are local processes) runs a
whole run: the gateway, the skill sessions and the run's files work on it unchanged.
"""

from __future__ import annotations

import json
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from perstack_sandbox import engine, images, state
from perstack_sandbox.errors import UsageError
from perstack_sandbox.run import open_run, sandbox_backend
from perstack_sandbox.skills import local_process

SKILL = Path(__file__).parent.parent / "fixtures" / "stdlib_skill.py"
TOML = """
[experts."e"]
instruction = "x"

[experts."e".skills."s"]
type = "mcpStdioSkill"
command = "npx"
packageName = "some-mcp-server"
requiredEnv = ["API_TOKEN"]
"""


class LocalHandle:
    """A sandbox whose skills are local processes of this host (the seam, nothing else)."""

    run_id = "local"

    def __init__(self) -> None:
        """Start with nothing opened."""
        self.envs: list[dict[str, str]] = []

    def proxy_env(self, skill: str | None = None) -> dict[str, str]:
        """Return a proxy URL naming the skill."""
        return {"HTTPS_PROXY": f"http://{skill}@127.0.0.1:9"}

    def skill_uid(self, index: int) -> int:
        """Return the uid the seam promises."""
        return engine.SKILL_UID_FIRST + index

    def host_proxy_url_for(self, skill: str) -> str:
        """Return the host's proxy URL for `skill`."""
        return f"http://{skill}@127.0.0.1:9"

    @asynccontextmanager
    async def exec_stdio(self, argv, *, env, user, workdir):
        """Run the test skill locally with exactly `env`."""
        del argv, user, workdir
        self.envs.append(dict(env))
        async with local_process([sys.executable, str(SKILL)], env=env) as process:
            yield process

    async def egress_problem(self) -> str | None:
        """Report no problem."""
        return None

    async def wait_egress(self) -> None:
        """Return at once: there is no proxy to wait for."""

    async def wait_stopped(self) -> str:
        """Never stop on its own."""
        await anyio.sleep_forever()
        return ""


class LocalBackend:
    """A `SandboxBackend` that opens `LocalHandle`s."""

    name = "docker"

    def __init__(self) -> None:
        """Start with nothing opened."""
        self.handle = LocalHandle()
        self.opened: list[str] = []

    @asynccontextmanager
    async def open_sandbox(  # noqa: PLR0913 - the seam's keyword-only settings
        self, plan, *, image, run, workspace=None, isolation="runc", sealed=None, test_network=None
    ):
        """Yield the one handle, noting what was opened."""
        del workspace, isolation, sealed, test_network
        self.opened.append(f"{plan.expert}@{image}:{run.run_id}")
        yield self.handle

    async def list_runs(self):
        """List nothing."""
        return []

    async def take_down(self, run_id):
        """Name the run."""
        return [run_id]

    async def collect_garbage(self):
        """Collect nothing."""
        return []


@pytest.fixture
def config_path(tmp_path, monkeypatch):
    """Return a config whose one skill needs API_TOKEN; no image step, no engine."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "state"))

    async def built(*_args: object, **_kwargs: object) -> str:
        return "fake:1"

    monkeypatch.setattr(engine, "ensure_expert_image_async", built)
    monkeypatch.setattr(images, "ensure_proxy_image", lambda **_kwargs: "proxy:1")
    monkeypatch.setattr(images, "resolved_packages", lambda _image: [])
    monkeypatch.setattr(engine, "require_isolation", lambda _isolation: None)
    folder = tmp_path / "expert"
    folder.mkdir()
    (folder / "perstack.toml").write_text(TOML)
    return folder / "perstack.toml"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_run_works_on_any_backend_object(config_path):
    """Tools are listed and called through a backend that only implements the seam."""
    backend = LocalBackend()
    with anyio.fail_after(30):
        async with open_run(
            config_path, "e", secrets={"API_TOKEN": "t0ken"}, backend=backend
        ) as run:
            names = {tool.name for tool in await run.list_tools()}
            result = await run.call_tool("echo", {"text": "hi"})
    assert {"echo", "env_names"} <= names
    assert json.dumps(result.model_dump(mode="json")).count("hi") >= 1
    assert backend.opened == [f"e@fake:1:{run.run_id}"]
    assert backend.handle.envs[0]["API_TOKEN"] == "t0ken"  # noqa: S105 - a test value
    assert backend.handle.envs[0]["HTTPS_PROXY"] == "http://s@127.0.0.1:9"


def test_backends_are_chosen_by_name():
    """Docker is the engine's, kubernetes the kube package's, anything else is bad input."""
    assert sandbox_backend("docker") is engine.DOCKER_BACKEND
    assert sandbox_backend("kubernetes").name == "kubernetes"
    with pytest.raises(UsageError, match="unknown backend"):
        sandbox_backend("nomad")  # type: ignore[arg-type]
