"""A config sent to the service as text: what it names relative to a folder is refused (400)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import anyio
import httpx2
import pytest

from perstack_sandbox.config import parse_config
from perstack_sandbox.errors import ConfigError, UsageError
from perstack_sandbox.launch import LaunchOptions
from perstack_sandbox.service import parse_create
from perstack_sandbox.service._api import check_text_config
from perstack_sandbox.service._app import build_app
from perstack_sandbox.service._client import _body
from perstack_sandbox.service._metrics import Metrics
from perstack_sandbox.service._pools import Pools
from perstack_sandbox.service._runs import Runs, RunSettings

pytestmark = pytest.mark.anyio
PACKAGE_SKILL = """
[experts."demo".skills."time"]
type = "mcpStdioSkill"
command = "uvx"
packageName = "mcp-server-time"
"""
LOCAL_SKILL = """
[experts."demo".skills."probe"]
type = "mcpStdioSkill"
command = "node"
args = ["probe.mjs"]
"""
REMOTE_SKILL = """
[experts."demo".skills."search"]
type = "mcpSseSkill"
endpoint = "https://mcp.example.com/sse"
"""
EXPERT = '[experts."demo"]\ninstruction = "x"\n'


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio."""
    return "asyncio"


def refused(text: str, expert: str = "demo") -> list[str]:
    """Return the TOML paths `check_text_config` refuses in `text` (none: [])."""
    config = parse_config(text, config_dir="/nonexistent")[0]
    try:
        check_text_config(config, expert)
    except ConfigError as error:
        return [issue.path for issue in error.issues]
    return []


def folders_in(path: Path) -> list[str]:
    """Name what `path` holds (a scratch folder left behind would show here)."""
    return [child.name for child in path.iterdir()]


def test_package_and_remote_skills_need_no_folder_and_pass() -> None:
    """npx/uvx and remote skills of a text config resolve nowhere on disk: nothing refused."""
    assert refused(EXPERT + PACKAGE_SKILL + REMOTE_SKILL) == []


def test_env_path_and_a_local_command_are_each_refused_by_their_field() -> None:
    """The envPath and the local skill's command are both named; the package skill is not."""
    text = 'envPath = [".env"]\n' + EXPERT + PACKAGE_SKILL + LOCAL_SKILL
    assert refused(text) == ["envPath", 'experts."demo".skills."probe".command']


def test_only_the_asked_experts_local_skills_count() -> None:
    """A local skill of another Expert is never run, so it is not refused."""
    other = LOCAL_SKILL.replace('"demo"', '"other"')
    text = EXPERT + PACKAGE_SKILL + '[experts."other"]\ninstruction = "y"\n' + other
    assert refused(text) == []
    assert refused(text, expert="other") == ['experts."other".skills."probe".command']


def test_a_relative_workspace_is_refused_naming_the_field() -> None:
    """`workspace` must be absolute: the service's cwd is nothing its client knows."""
    with pytest.raises(UsageError, match="workspace: Value error, must be an absolute path"):
        parse_create(b'{"config": "x", "expert": "demo", "workspace": "ws"}')
    assert parse_create(b'{"config": "x", "expert": "d", "workspace": "/ws"}').workspace == "/ws"


async def test_the_service_answers_400_naming_the_field_and_leaves_no_scratch_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST of a text config with a local skill: 400, the field in `lines`, no scratch left.

    Seen failing by hand with the check turned off: 500, the run went on to start a sandbox
    instead of saying which field cannot resolve.
    """
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    metrics = Metrics()
    body = {"config": EXPERT + LOCAL_SKILL, "expert": "demo"}
    async with anyio.create_task_group() as group:
        runs = Runs(group, settings=RunSettings(), metrics=metrics, pools=Pools())
        app = build_app(runs, metrics, mcp_url=str, token=None)
        transport = httpx2.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx2.AsyncClient(transport=transport, base_url="http://t") as http:
            created = await http.post("/v1/runs", json=body)
    assert created.status_code == 400
    lines = created.json()["lines"]
    assert any('experts."demo".skills."probe".command' in line for line in lines), lines
    assert folders_in(tmp_path) == []


def test_a_client_sends_its_relative_workspace_resolved_against_its_own_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--workspace ws --server ...` sends the absolute folder, which the service accepts."""
    config = tmp_path / "perstack.toml"
    config.write_text(EXPERT + PACKAGE_SKILL)
    monkeypatch.chdir(tmp_path)
    options = LaunchOptions(config_path=config, expert="demo", workspace=Path("ws"))
    sent = _body(options)
    assert sent["workspace"] == str(tmp_path / "ws")
    assert parse_create(json.dumps(sent).encode()).workspace == str(tmp_path / "ws")
