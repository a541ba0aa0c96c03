"""Launch inputs are checked before Docker: secrets, env files, tool arguments, CLI exit codes."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from perstack_sandbox import state
from perstack_sandbox.engine import Sandbox
from perstack_sandbox.errors import MissingEnvError, UsageError
from perstack_sandbox.launch import LaunchOptions, parse_tool_args, prepare
from perstack_sandbox.run import build_sessions, check_workspace

if TYPE_CHECKING:
    from pathlib import Path

CANARY = "c4nary-secret-value"
TOML = """
envPath = ["secrets/app.env"]

[experts."e"]
instruction = "test"

[experts."e".skills."api"]
type = "mcpStdioSkill"
command = "python3"
args = ["server.py"]
requiredEnv = ["API_TOKEN", "REGION"]

[experts."e".skills."db"]
type = "mcpStdioSkill"
command = "python3"
args = ["db.py"]
requiredEnv = ["DB_PASSWORD", "REGION"]
"""


def _config(tmp_path: Path, env_file: str | None = None) -> Path:
    tmp_path.mkdir(exist_ok=True)
    tmp_path.chmod(0o755)  # the local skills' uids must be able to read the Expert's folder
    (tmp_path / "perstack.toml").write_text(TOML)
    if env_file is not None:
        (tmp_path / "secrets").mkdir()
        (tmp_path / "secrets" / "app.env").write_text(env_file)
    return tmp_path / "perstack.toml"


def test_prepare_reads_the_tomls_env_path_relative_to_the_config(tmp_path, monkeypatch):
    """The envPath files resolve against the config folder; the real environment wins."""
    monkeypatch.chdir("/")
    monkeypatch.setenv("REGION", "from-environment")
    config = _config(tmp_path, f"API_TOKEN={CANARY}\nDB_PASSWORD=pw\nREGION=from-file\n")
    prepared = prepare(LaunchOptions(config_path=config, expert="e"))
    api = prepared.secrets["api"].values
    assert api["API_TOKEN"].reveal() == CANARY
    assert api["REGION"].reveal() == "from-environment"
    assert set(prepared.secrets["db"].values) == {"DB_PASSWORD", "REGION"}


def test_prepare_names_every_missing_variable_and_its_skills(tmp_path, monkeypatch):
    """All missing variables are reported at once, each with the skills that need it."""
    for name in ("API_TOKEN", "REGION", "DB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    config = _config(tmp_path)
    with pytest.raises(MissingEnvError) as caught:
        prepare(LaunchOptions(config_path=config, expert="e"))
    message = str(caught.value)
    assert "API_TOKEN (needed by 'api')" in message
    assert "DB_PASSWORD (needed by 'db')" in message
    assert "REGION (needed by 'api', 'db')" in message


def test_cli_env_path_replaces_the_tomls_env_path(tmp_path, monkeypatch):
    """`--env-path` files are read instead of envPath (which would be missing here)."""
    for name in ("API_TOKEN", "REGION", "DB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    config = _config(tmp_path)
    other = tmp_path / "other.env"
    other.write_text("API_TOKEN=t\nREGION=r\nDB_PASSWORD=p\n")
    prepared = prepare(LaunchOptions(config_path=config, expert="e", env_paths=(other,)))
    assert prepared.secrets["db"].values["DB_PASSWORD"].reveal() == "p"


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"text"'])
def test_tool_arguments_must_be_a_json_object(text):
    """`--args` must parse as a JSON object."""
    with pytest.raises(UsageError):
        parse_tool_args(text)


def test_tool_arguments_default_to_an_empty_object():
    """No `--args` means `{}`; an object parses as it is."""
    assert parse_tool_args(None) == {}
    assert parse_tool_args('{"a": [1]}') == {"a": [1]}


def test_call_with_missing_env_exits_2_without_touching_docker(tmp_path):
    """The CLI reports missing variables with exit code 2 and one message, no traceback."""
    config = _config(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    done = subprocess.run(
        [sys.executable, "-m", "perstack_sandbox", "call", "e", "tool", "-c", str(config)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: missing environment variables: ")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("command", "report"),
    [(["tools", "e"], "tools_report"), (["call", "e", "echo"], "call_report")],
)
@pytest.mark.parametrize("flag", [[], ["--prefix-tools"]])
def test_prefix_tools_flag_reaches_the_launch_of_tools_and_call(
    tmp_path, monkeypatch, command, report, flag
):
    """`tools` and `call` accept --prefix-tools, so an Expert with colliding tools is usable."""
    from perstack_sandbox import cli, launch  # noqa: PLC0415 - patched below

    seen: list[LaunchOptions] = []

    def capture(options, *_args, **_kwargs):
        seen.append(options)
        return "captured"

    monkeypatch.setattr(launch, report, capture)
    monkeypatch.setattr(sys, "argv", ["perstack-sandbox", *command, *flag, "-c", str(tmp_path)])
    cli.main()
    assert [options.prefix_tools for options in seen] == [bool(flag)]


class _RecordingSandbox(Sandbox):
    """A Sandbox value whose exec only records the environment it was given."""

    def exec_stdio(self, argv, *, env, user, workdir):  # noqa: ARG002 - the same signature
        """Return the exec's environment instead of starting anything."""
        return env


def test_each_stdio_skill_gets_its_own_proxy_credential(tmp_path, monkeypatch):
    """build_sessions gives every stdio skill a proxy URL with its own token, nobody else's."""
    monkeypatch.chdir("/")
    config = _config(tmp_path, f"API_TOKEN={CANARY}\nDB_PASSWORD=pw\nREGION=r\n")
    prepared = prepare(LaunchOptions(config_path=config, expert="e"))
    tokens = {"api": "token-api", "db": "token-db"}
    sandbox = _RecordingSandbox("run", "c", "10.0.0.2", 3128, "p", "10.0.0.3", "n", tokens)
    envs = {s.name: s._factory() for s in build_sessions(prepared, sandbox)}
    assert envs["api"]["HTTPS_PROXY"] == "http://api:token-api@10.0.0.2:3128"
    assert envs["db"]["https_proxy"] == "http://db:token-db@10.0.0.2:3128"
    assert "token-db" not in repr(envs["api"])


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make $HOME a fresh folder, with the state directory at its default place inside it."""
    home = tmp_path / "home" / "user"
    (home / "projects" / "ws").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(state.STATE_ENV, raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    return home


@pytest.mark.parametrize(
    ("relative", "reason"),
    [
        (".", "is your home folder"),
        ("..", "is your home folder"),
        (".local", "overlaps the state directory"),
        (".local/state/perstack-sandbox/runs", "overlaps the state directory"),
    ],
)
def test_a_workspace_that_is_or_holds_the_home_or_the_state_is_refused(
    fake_home: Path, tmp_path: Path, relative: str, reason: str
) -> None:
    """The home (or above it) and any folder overlapping the state directory are refused."""
    workspace = fake_home / relative
    workspace.mkdir(parents=True, exist_ok=True)
    with pytest.raises(UsageError, match=reason):
        check_workspace(workspace, tmp_path / "expert")


def test_a_folder_inside_the_home_is_an_ordinary_workspace(fake_home: Path, tmp_path: Path) -> None:
    """A project folder under the home is accepted: only the home itself and above are refused."""
    check_workspace(fake_home / "projects" / "ws", tmp_path / "expert")


def test_a_workspace_holding_a_moved_state_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$PERSTACK_SANDBOX_STATE inside the workspace is refused like the default place."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "ws" / "records"))
    (tmp_path / "ws").mkdir()
    with pytest.raises(UsageError, match="overlaps the state directory"):
        check_workspace(tmp_path / "ws", tmp_path / "expert")


def test_call_with_the_home_as_workspace_exits_2_before_docker(tmp_path: Path) -> None:
    """`call --workspace ~` is bad input: exit 2, one message, no engine touched."""
    home = tmp_path / "home"
    home.mkdir()
    config = _config(tmp_path / "expert-folder")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "API_TOKEN": "t",
        "REGION": "r",
        "DB_PASSWORD": "p",
        "DOCKER_HOST": "unix:///nonexistent/docker.sock",
    }
    argv = [sys.executable, "-m", "perstack_sandbox", "call", "e", "tool", "-c", str(config)]
    done = subprocess.run(
        [*argv, "--workspace", str(home)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: --workspace {home} is your home folder")
