"""Helpers of the attack suite: the test Expert, snippets in the sandbox, host listeners, audit."""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import docker

if TYPE_CHECKING:
    from perstack_sandbox.gateway import Gateway
    from perstack_sandbox.isolation import Isolation
    from perstack_sandbox.state import RunState

HERE = Path(__file__).resolve().parent
EXPERT_FILES = ("hostile_server.py", "probes.py", "kernel_probes.py")
EXPERT = "hostile-expert"
LABEL_RUN = "perstack-sandbox.run"
LABEL_ROLE = "perstack-sandbox.role"
CALL_DEADLINE_S = 120  # one snippet in a sandbox on a busy 2-core host (builds excluded)
# Both "no route" (ENETUNREACH) and "a next hop that never answers" (EHOSTUNREACH: the internal
# network's gateway has no host end) fail locally; anything else means a packet got somewhere.
UNREACHABLE = frozenset({"ENETUNREACH", "EHOSTUNREACH"})
# Env files in the Expert's folder, world-readable as a default umask makes them: the defaults,
# the TOML's envPath, a --env-path file, and another `.env*` file.
ENV_FILES = (".env", ".env.local", "secrets/app.env", "cli.env", "config/.env.production")
CLI_ENV_FILE = "cli.env"
# Other names of env files: a hard link to `.env`, and a `.env*` link to a file of the folder.
HARD_LINK, ENV_LINK, LINK_TARGET = "notes.txt", ".env.shared", "secrets/shared.txt"
# Every path under /expert the run must cover with an empty file.
HIDDEN_TARGETS = frozenset(f"/expert/{name}" for name in (*ENV_FILES, HARD_LINK, LINK_TARGET))


def quiet(_line: str) -> None:
    """Swallow build progress."""


@functools.cache
def registry_host() -> str:
    """Return the npm registry's host, derived at run time (never written down)."""
    out = subprocess.run(
        ["npm", "config", "get", "registry"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    host = urlsplit(out).hostname
    assert host, "npm config get registry gave no host"
    return host


def expert_toml(allowed: str) -> str:
    """Return the test Expert: `hostile` and `decoy`, the same server with different secrets."""
    return f"""\
envPath = ["secrets/app.env"]

[experts."{EXPERT}"]
instruction = "security suite: a hostile skill and a decoy that holds a secret"

[experts."{EXPERT}".skills."hostile"]
type = "mcpStdioSkill"
command = "python3"
args = ["/expert/hostile_server.py"]
requiredEnv = ["HOSTILE_TOKEN"]
allowedDomains = ["{allowed}"]

[experts."{EXPERT}".skills."decoy"]
type = "mcpStdioSkill"
command = "python3"
args = ["/expert/hostile_server.py"]
requiredEnv = ["DECOY_SECRET"]
"""


def write_expert(folder: Path, allowed: str) -> tuple[Path, dict[str, str]]:
    """Write the test Expert folder (readable by the skills' uids); return perstack.toml.

    With it come env files holding canaries, each world-readable: the map of their names (and
    the other names of env files) to the canary each holds is returned too.
    """
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # pytest makes tmp folders 0700; skills run as other uids
    for name in EXPERT_FILES:
        shutil.copy2(HERE / "expert" / name, folder / name)
    config = folder / "perstack.toml"
    config.write_text(expert_toml(allowed), encoding="utf-8")
    canaries = {}
    for name in (*ENV_FILES, LINK_TARGET):
        canaries[name] = f"envfile-canary-{secrets.token_hex(12)}"
        (folder / name).parent.mkdir(mode=0o755, exist_ok=True)
        (folder / name).write_text(f"LEAKED_VALUE={canaries[name]}\n", encoding="utf-8")
    (folder / HARD_LINK).hardlink_to(folder / ".env")
    (folder / ENV_LINK).symlink_to(LINK_TARGET)
    canaries |= {HARD_LINK: canaries[".env"], ENV_LINK: canaries[LINK_TARGET]}
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    return config, canaries


@dataclass(frozen=True)
class Canaries:
    """Random values planted in the orchestrator's environment; none may reach a sandbox."""

    values: dict[str, str]

    @classmethod
    def fresh(cls) -> Canaries:
        """Make new canaries, one of them shaped like a cloud credential."""
        token = secrets.token_hex(12)
        return cls(
            {
                "AWS_SECRET_ACCESS_KEY": f"canary-{token}aws",
                "AWS_ACCESS_KEY_ID": f"AKIACANARY{token[:10].upper()}",
                f"PERSTACK_CANARY_{token[:6].upper()}": f"canary-{token}host",
                "GITHUB_TOKEN": f"ghp_canary{token}",
            }
        )

    def found_in(self, text: str) -> list[str]:
        """Name every canary whose value occurs in `text`."""
        return [name for name, value in self.values.items() if value in text]


@dataclass
class Hostile:
    """The started Expert: its gateway and run, and the hostile skill as a code runner."""

    gateway: Gateway
    run: RunState
    secrets: dict[str, str]
    canaries: Canaries
    workspace: Path
    run_config: Path
    isolation: Isolation
    env_canaries: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    async def python(self, code: str, *, skill: str = "hostile") -> dict[str, Any]:
        """Run `code` in the sandbox as `skill`; return {'exit', 'stdout', 'stderr'}."""
        with anyio.fail_after(CALL_DEADLINE_S):
            result = await self.gateway.call_tool(f"{skill}__run_python", {"code": code})
        text = "".join(getattr(block, "text", "") for block in result.content)
        assert not result.is_error, text
        answer: dict[str, Any] = json.loads(text)
        return answer

    async def probe(self, code: str, *, skill: str = "hostile") -> Any:
        """Run `code` (with `from probes import *`); return what it `emit`ted."""
        done = await self.python(f"from probes import *\n{code}", skill=skill)
        assert done["exit"] == 0, done
        return json.loads(done["stdout"].strip().splitlines()[-1])

    async def whoami(self, skill: str) -> dict[str, int]:
        """Return the uid and pid of `skill`'s server process."""
        result = await self.gateway.call_tool(f"{skill}__whoami", {})
        answer: dict[str, int] = json.loads(result.content[0].text)  # type: ignore[union-attr]
        return answer

    async def visible_pids_of(self, uid: int) -> list[int]:
        """Return the pids of `uid`'s processes that the hostile skill sees in /proc."""
        code = (
            "import glob\nfound = []\n"
            "for path in glob.glob('/proc/[0-9]*/status'):\n"
            "    try: lines = dict(l.split(':', 1) for l in open(path) if ':' in l)\n"
            "    except OSError: continue\n"
            f"    if lines['Uid'].split()[0] == '{uid}': found.append(int(path.split('/')[2]))\n"
            "emit(sorted(found))"
        )
        found: list[int] = await self.probe(code)
        return found

    def audit_lines(self) -> list[dict[str, Any]]:
        """Return the proxy's audit of this run so far (written live by the engine)."""
        return read_jsonl(self.run.audit_path)

    def containers(self) -> list[Any]:
        """Return every container of this run (docker-py objects)."""
        return docker.from_env().containers.list(
            all=True, filters={"label": f"{LABEL_RUN}={self.run.run_id}"}
        )

    def container(self, role: str) -> Any:
        """Return the container of this run with `role` (sandbox or proxy; runc: one sandbox)."""
        found = [c for c in self.containers() if c.labels.get(LABEL_ROLE) == role]
        assert len(found) == 1, found
        return found[0]

    def container_of(self, skill: str) -> Any:
        """Return the sandbox container `skill` runs in (under gVisor, each skill has its own)."""
        suffix = {"hostile": "sandbox", "decoy": "sandbox-1"}[skill]
        (found,) = [c for c in self.containers() if c.name.endswith(f"-{suffix}")]
        return found


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Parse every complete JSON line of `path`."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def decisions_for(lines: list[dict[str, Any]], raw_host: str) -> list[tuple[str, str]]:
    """Return (decision, reason) of every audit decision whose raw host is `raw_host`."""
    return [
        (line["decision"], line["reason"])
        for line in lines
        if line.get("event") == "decision" and line.get("rawHost") == raw_host
    ]


class Listener:
    """A TCP listener of ours on the host that counts the connections it accepts."""

    def __init__(self, address: str) -> None:
        """Listen on `address` (any free port) and accept in a daemon thread."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, 0))
        self.sock.listen(16)
        self.address, self.port = self.sock.getsockname()[:2]
        self.accepted: list[str] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.accepted.append(f"{peer[0]}:{peer[1]}")
            conn.close()

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()


def host_bridge_addresses() -> list[str]:
    """Return the host's own IPv4 addresses on Docker bridges (docker0, the egress network...).

    Internal networks of sandboxes have no host address (by design): they are left out.
    """
    api = docker.from_env().api
    found = set()
    for network in api.networks():
        if network.get("Driver") != "bridge":
            continue
        for config in (network.get("IPAM") or {}).get("Config") or []:
            gateway = config.get("Gateway")
            if gateway and ":" not in gateway and _is_local(gateway):
                found.add(gateway)
    return sorted(found)


class UdpEcho:
    """A UDP echo listener of ours on all host addresses; counts what reaches it."""

    def __init__(self) -> None:
        """Bind 0.0.0.0 on any free port and echo in a daemon thread."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", 0))  # noqa: S104 - the attack target: "anything on the host"
        self.port = self.sock.getsockname()[1]
        self.received: list[str] = []
        threading.Thread(target=self._echo, daemon=True).start()

    def _echo(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(512)
                self.received.append(f"{peer[0]}:{peer[1]}")
                self.sock.sendto(data, peer)
            except OSError:
                return

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()


def host_addresses() -> list[str]:
    """Return every IPv4 address of this host except loopback (its LAN address included)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {line.split()[3].split("/")[0] for line in out.splitlines() if " inet " in line}
    return sorted(address for address in found if not address.startswith("127."))


def _is_local(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def environment_restored(saved: dict[str, str | None]) -> None:
    """Put back the variables `saved` maps to their old values (None: was unset)."""
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
