r"""MCP client configurations that start a sandboxed Expert (`client setup`, `client list`).

Each client keeps its servers in its own JSON file, in one of two documented shapes:

| client         | file (user scope)                                          | servers under |
|----------------|------------------------------------------------------------|---------------|
| claude-desktop | `claude_desktop_config.json` in Claude's config folder     | `mcpServers`  |
| claude-code    | `~/.claude.json`                                           | `mcpServers`  |
| cursor         | `~/.cursor/mcp.json`                                       | `mcpServers`  |
| vscode         | `mcp.json` in the VS Code user profile folder              | `servers`     |

Claude's config folder is `~/Library/Application Support/Claude` on macOS, `%APPDATA%\Claude`
on Windows and `$XDG_CONFIG_HOME/Claude` elsewhere; VS Code's profile folder is `Code/User`
under the same roots. An entry is `{"command": ..., "args": [...], "env": {...}}`; Claude
Code and VS Code also want `"type": "stdio"`. Paths in it are absolute: clients start servers
from folders of their own choosing.

Writing merges: every other key and server of the file stays as it was, the previous file is
copied to `<file>.<time>.bak`, and the new file replaces it atomically with the old mode.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from perstack_sandbox.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

PROGRAM: Final = "perstack-sandbox"
SERVER_PREFIX: Final = "perstack-"
# Passed on to the server when set here: a client started from a desktop may not have it.
FORWARDED_ENV: Final = ("DOCKER_HOST",)


@dataclass(frozen=True, slots=True)
class Client:
    """One MCP client: where its user configuration lives and how it lists servers."""

    name: str
    servers_key: str
    typed: bool  # entries carry "type": "stdio"

    def config_path(
        self, *, platform: str, home: Path, environ: Mapping[str, str] | None = None
    ) -> Path:
        """Return this client's user configuration file on `platform` (`sys.platform`)."""
        env = os.environ if environ is None else environ
        if self.name == "claude-code":
            return home / ".claude.json"
        if self.name == "cursor":
            return home / ".cursor" / "mcp.json"
        if platform == "darwin":
            root = home / "Library" / "Application Support"
        elif platform == "win32":
            root = Path(env.get("APPDATA") or home / "AppData" / "Roaming")
        else:
            root = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
        if self.name == "vscode":
            return root / "Code" / "User" / "mcp.json"
        return root / "Claude" / "claude_desktop_config.json"

    def entry(self, argv: Sequence[str], env: Mapping[str, str]) -> dict[str, Any]:
        """Return the server entry that runs `argv` (argv[0] the command) with `env`."""
        body: dict[str, Any] = {"type": "stdio"} if self.typed else {}
        body |= {"command": argv[0], "args": list(argv[1:]), "env": dict(env)}
        return body


CLIENTS: Final = {
    client.name: client
    for client in (
        Client("claude-desktop", "mcpServers", typed=False),
        Client("claude-code", "mcpServers", typed=True),
        Client("cursor", "mcpServers", typed=False),
        Client("vscode", "servers", typed=True),
    )
}


def client_named(name: str) -> Client:
    """Return the known client `name`.

    Raises:
        UsageError: no such client.

    """
    client = CLIENTS.get(name)
    if client is None:
        raise UsageError(f"unknown client {name!r}: one of {', '.join(CLIENTS)}")
    return client


def server_name(expert: str) -> str:
    """Return the server key for an Expert: `perstack-` and the key in safe characters."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", expert).strip("-") or "expert"
    return SERVER_PREFIX + slug


def run_argv(  # noqa: PLR0913, PLR0917 - the command line's parts, in its order
    program: Sequence[str],
    expert: str,
    config_path: Path,
    env_paths: Sequence[Path] = (),
    workspace: Path | None = None,
    isolation: str = "runc",
) -> list[str]:
    """Return the command line that serves `expert` over stdio, every path made absolute."""
    argv = [*program, "run", expert, "--config", str(config_path.absolute())]
    for path in env_paths:
        argv += ["--env-path", str(path.absolute())]
    if workspace is not None:
        argv += ["--workspace", str(workspace.absolute())]
    if isolation != "runc":  # the default stays implicit, as a user would type it
        argv += ["--isolation", isolation]
    return argv


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the variables (names in FORWARDED_ENV) the server entry should carry."""
    env = os.environ if environ is None else environ
    return {name: env[name] for name in FORWARDED_ENV if env.get(name)}


def read_config(path: Path) -> dict[str, Any]:
    """Return a client's JSON configuration ({} when the file does not exist).

    Raises:
        UsageError: the file is unreadable or not a plain JSON object (nothing is changed).

    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    try:
        document = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise UsageError(
            f"{path} is not plain JSON ({exc}; comments or trailing commas?); nothing was "
            "changed: add the entry that --print shows by hand"
        ) from exc
    if not isinstance(document, dict):
        raise UsageError(f"{path} holds JSON but not an object; nothing was changed")
    return document


def merged(
    document: dict[str, Any], client: Client, name: str, entry: dict[str, Any]
) -> dict[str, Any]:
    """Return `document` with server `name` set to `entry`, everything else kept.

    Raises:
        UsageError: the servers key holds something other than an object.

    """
    servers = document.get(client.servers_key, {})
    if not isinstance(servers, dict):
        raise UsageError(f"{client.servers_key!r} in the {client.name} configuration is no object")
    return {**document, client.servers_key: {**servers, name: entry}}


def write_config(
    path: Path, document: dict[str, Any], *, now: datetime | None = None
) -> Path | None:
    """Write `document` to `path` atomically; return the backup of the old file, if any.

    A link (a dotfiles manager's) is followed, so its target is what changes; the old file's
    mode is kept.

    Raises:
        UsageError: the file or its backup cannot be written.

    """
    target = path.resolve() if path.is_symlink() else path
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    backup = target.with_name(f"{target.name}.{stamp}.bak") if target.exists() else None
    temporary = target.with_name(f".{target.name}.{PROGRAM}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if backup is not None:
            shutil.copy2(target, backup)
        temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        if backup is not None:
            temporary.chmod(stat.S_IMODE(backup.stat().st_mode))
        temporary.replace(target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise UsageError(f"cannot write {target}: {exc}") from exc
    return backup


def sandboxed_servers(document: dict[str, Any], client: Client) -> list[tuple[str, str]]:
    """Return (server name, Expert) of each entry that runs `perstack-sandbox run EXPERT`."""
    servers = document.get(client.servers_key)
    if not isinstance(servers, dict):
        return []
    found = []
    for name, entry in servers.items():
        if not isinstance(entry, dict):
            continue
        argv = [entry.get("command"), *(entry.get("args") or [])]
        words = [str(word) for word in argv]
        if "run" not in words:
            continue
        start = words.index("run")
        runs_us = any(Path(w).name == PROGRAM or w == "perstack_sandbox" for w in words[:start])
        if runs_us and start + 1 < len(words):
            found.append((str(name), words[start + 1]))
    return found
