"""`client setup` and `client list` against sample existing configurations of each client.

The samples hold what users have in those files (other servers, other settings); the entry
written must be the shape each client's documentation describes, and nothing else may change.
"""

from __future__ import annotations

import copy
import json
import stat
from pathlib import Path

import pytest

from perstack_sandbox import cli
from perstack_sandbox.cli._clients import CLIENTS, sandboxed_servers

EXAMPLE = Path(__file__).parents[2] / "examples" / "perstack.toml"
OTHER = {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory"]}
SAMPLES: dict[str, dict[str, object]] = {
    "claude-desktop": {
        "mcpServers": {"memory": OTHER, "remote": {"command": "uvx", "args": ["mcp-server-time"]}},
        "globalShortcut": "Alt+Space",
    },
    "claude-code": {
        "numStartups": 12,
        "projects": {"/home/u/project": {"mcpServers": {"local": OTHER}, "allowedTools": []}},
        "mcpServers": {"memory": {"type": "stdio", **OTHER, "env": {}}},
    },
    "cursor": {"mcpServers": {"memory": OTHER, "docs": {"url": "https://example.com/mcp"}}},
    "vscode": {
        "inputs": [{"type": "promptString", "id": "api-key", "password": True}],
        "servers": {"memory": {"type": "stdio", **OTHER}},
    },
}
FILES = {
    "claude-desktop": ".config/Claude/claude_desktop_config.json",
    "claude-code": ".claude.json",
    "cursor": ".cursor/mcp.json",
    "vscode": ".config/Code/User/mcp.json",
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Give the test its own home (Linux layout: XDG_CONFIG_HOME under it)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    return tmp_path


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the console script with `args`; return (exit code, stdout, stderr)."""
    monkeypatch.setattr("sys.argv", ["perstack-sandbox", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def write_sample(home: Path, client: str) -> Path:
    """Write the client's sample configuration (mode 0600) and return its path."""
    path = home / FILES[client]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(SAMPLES[client], indent=4))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("client", list(CLIENTS))
def test_setup_merges_the_documented_entry_and_keeps_everything_else(
    client: str, home: Path, monkeypatch, capsys
) -> None:
    """The other servers and settings stay; the entry has the client's documented shape."""
    path = write_sample(home, client)
    before = path.read_text()
    code, _, err = run_cli(
        monkeypatch, capsys, "client", "setup", "demo", "--client", client, "-c", str(EXAMPLE)
    )
    assert code == 0, err
    written = json.loads(path.read_text())
    key = CLIENTS[client].servers_key
    entry = written[key].pop("perstack-demo")
    assert written == SAMPLES[client]  # every other key and server exactly as it was
    expected_keys = {"command", "args", "env"} | ({"type"} if CLIENTS[client].typed else set())
    assert set(entry) == expected_keys
    if CLIENTS[client].typed:
        assert entry["type"] == "stdio"
    assert Path(entry["command"]).is_absolute()
    assert entry["args"][entry["args"].index("run") :] == [
        "run",
        "demo",
        "--config",
        str(EXAMPLE.absolute()),
    ]
    assert entry["env"] == {}
    backups = list(path.parent.glob(f"{path.name}.*.bak"))
    assert [b.read_text() for b in backups] == [before]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"added perstack-demo in {path}" in err


@pytest.mark.parametrize("client", list(CLIENTS))
def test_setup_creates_a_missing_file_with_only_the_entry(
    client: str, home: Path, monkeypatch, capsys
) -> None:
    """Without a file, setup creates it (and its folders), and there is nothing to back up."""
    code, _, err = run_cli(
        monkeypatch, capsys, "client", "setup", "demo", "--client", client, "-c", str(EXAMPLE)
    )
    assert code == 0, err
    path = home / FILES[client]
    written = json.loads(path.read_text())
    assert list(written) == [CLIENTS[client].servers_key]
    assert list(written[CLIENTS[client].servers_key]) == ["perstack-demo"]
    assert not list(path.parent.glob("*.bak"))


def test_setup_twice_updates_its_entry_and_keeps_each_previous_file(
    home: Path, monkeypatch, capsys
) -> None:
    """A second setup replaces the same entry (no duplicate) and says so."""
    path = write_sample(home, "cursor")
    args = ["client", "setup", "demo", "--client", "cursor", "-c", str(EXAMPLE)]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    monkeypatch.setattr("perstack_sandbox.cli._clients.datetime", _Later)
    code, _, err = run_cli(monkeypatch, capsys, *args, "--name", "perstack-demo")
    assert code == 0
    assert "updated perstack-demo" in err
    servers = json.loads(path.read_text())["mcpServers"]
    assert list(servers) == ["memory", "docs", "perstack-demo"]
    assert len(list(path.parent.glob("mcp.json.*.bak"))) == 2


class _Later:
    """A clock one day later, so the second backup gets its own name."""

    @staticmethod
    def now(tz: object = None) -> object:
        from datetime import datetime, timedelta  # noqa: PLC0415 - only this fake needs it

        return datetime.now(tz) + timedelta(days=1)  # type: ignore[arg-type]


def test_print_writes_nothing_and_prints_the_entry(home: Path, monkeypatch, capsys) -> None:
    """--print shows the JSON to merge and leaves the client's file alone."""
    path = write_sample(home, "vscode")
    before = path.read_text()
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "client",
        "setup",
        "demo",
        "--client",
        "vscode",
        "--print",
        "-c",
        str(EXAMPLE),
    )
    assert code == 0
    assert json.loads(out)["servers"]["perstack-demo"]["type"] == "stdio"
    assert str(path) in err
    assert path.read_text() == before
    assert not list(path.parent.glob("*.bak"))


@pytest.mark.parametrize(("isolation", "expected"), [("runc", []), ("gvisor", ["gvisor"])])
def test_the_entry_runs_under_the_isolation_asked_for(
    home: Path, monkeypatch, capsys, isolation, expected
) -> None:
    """--isolation gvisor reaches the entry's command line; runc, the default, stays implicit."""
    del home
    args = ["client", "setup", "demo", "--client", "cursor", "--print", "-c", str(EXAMPLE)]
    code, out, _ = run_cli(monkeypatch, capsys, *args, "--isolation", isolation)
    assert code == 0
    argv = json.loads(out)["mcpServers"]["perstack-demo"]["args"]
    assert [argv[i + 1] for i, arg in enumerate(argv) if arg == "--isolation"] == expected


def test_a_file_with_comments_is_left_alone_with_exit_2(home: Path, monkeypatch, capsys) -> None:
    """VS Code allows comments in mcp.json; we do not rewrite what we cannot parse."""
    path = home / FILES["vscode"]
    path.parent.mkdir(parents=True)
    text = '{\n  // my servers\n  "servers": {}\n}\n'
    path.write_text(text)
    code, _, err = run_cli(
        monkeypatch, capsys, "client", "setup", "demo", "--client", "vscode", "-c", str(EXAMPLE)
    )
    assert code == 2
    assert "not plain JSON" in err
    assert path.read_text() == text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "--client", "cursor"], "no expert 'nope'"),
        (["demo", "--client", "emacs"], "unknown client 'emacs'"),
    ],
)
def test_an_unknown_expert_or_client_is_bad_input_and_writes_nothing(
    home: Path, monkeypatch, capsys, args: list[str], message: str
) -> None:
    """The Expert is planned and the client looked up before any file is touched."""
    code, _, err = run_cli(monkeypatch, capsys, "client", "setup", *args, "-c", str(EXAMPLE))
    assert code == 2
    assert message in err
    assert not (home / ".cursor").exists()


def test_docker_host_is_passed_on_when_set(home: Path, monkeypatch, capsys) -> None:
    """A client started from a desktop may lack DOCKER_HOST: the entry carries it."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/user/1000/docker.sock")
    run_cli(
        monkeypatch, capsys, "client", "setup", "demo", "--client", "cursor", "-c", str(EXAMPLE)
    )
    entry = json.loads((home / FILES["cursor"]).read_text())["mcpServers"]["perstack-demo"]
    assert entry["env"] == {"DOCKER_HOST": "unix:///run/user/1000/docker.sock"}


def test_list_shows_which_clients_start_which_experts(home: Path, monkeypatch, capsys) -> None:
    """`client list` names the configured servers and their Experts, per client and file."""
    write_sample(home, "claude-code")
    run_cli(
        monkeypatch, capsys, "client", "setup", "demo", "--client", "cursor", "-c", str(EXAMPLE)
    )
    code, out, _ = run_cli(monkeypatch, capsys, "client", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("claude-desktop  not configured (no file)")
    assert lines[2].startswith("claude-code     not configured")
    assert lines[4] == "cursor          configured: perstack-demo (Expert demo)"
    assert lines[5].strip() == str(home / FILES["cursor"])


@pytest.mark.parametrize(
    ("client", "platform", "expected"),
    [
        (
            "claude-desktop",
            "darwin",
            "Library/Application Support/Claude/claude_desktop_config.json",
        ),
        ("claude-desktop", "win32", "AppData/Roaming/Claude/claude_desktop_config.json"),
        ("vscode", "darwin", "Library/Application Support/Code/User/mcp.json"),
        ("vscode", "win32", "AppData/Roaming/Code/User/mcp.json"),
        ("cursor", "win32", ".cursor/mcp.json"),
        ("claude-code", "darwin", ".claude.json"),
    ],
)
def test_each_client_file_is_where_its_documentation_puts_it(
    client: str, platform: str, expected: str
) -> None:
    """The macOS and Windows locations (APPDATA unset: its default under the home)."""
    home = Path("/home/u")
    assert CLIENTS[client].config_path(platform=platform, home=home, environ={}) == home / expected
    appdata = CLIENTS[client].config_path(
        platform=platform, home=home, environ={"APPDATA": "/x/Roaming"}
    )
    assert appdata.as_posix().endswith(expected.removeprefix("AppData/"))


def test_sandboxed_servers_ignore_other_entries() -> None:
    """Only entries that run `perstack-sandbox run EXPERT` count as sandboxed Experts."""
    document = copy.deepcopy(SAMPLES["claude-desktop"])
    document["mcpServers"]["mine"] = {  # type: ignore[index]
        "command": "/opt/venv/bin/perstack-sandbox",
        "args": ["run", "web", "--config", "/p/perstack.toml"],
    }
    document["mcpServers"]["odd"] = {"command": "/bin/run", "args": ["run"]}  # type: ignore[index]
    assert sandboxed_servers(document, CLIENTS["claude-desktop"]) == [("mine", "web")]
