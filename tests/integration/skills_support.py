"""Shared helpers for the skills/gateway integration tests (real Docker engine)."""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import docker
import pytest

from perstack_sandbox import engine
from perstack_sandbox.config import load_config
from perstack_sandbox.launch import LaunchOptions, open_expert
from perstack_sandbox.plan import plan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
EXAMPLE_CONFIG = EXAMPLES / "perstack.toml"
STDLIB_SKILL = ROOT / "tests" / "fixtures" / "stdlib_skill.py"
EGRESS_PROBE = EXAMPLES / "egress_probe.mjs"
CLI_TIMEOUT_S = 900  # the first run may build the example image (npm + PyPI downloads)
DEADLINE_S = 180
LABEL_EXPERT = "perstack-sandbox.expert"


def quiet(_line: str) -> None:
    """Swallow build progress in tests."""


@functools.cache
def engine_answers() -> bool:
    """Return whether a Docker engine answers."""
    try:
        return bool(docker.from_env(timeout=10).ping())
    except docker.errors.DockerException:
        return False


def require_engine() -> None:
    """Skip without an engine, unless under CI, where a missing engine is a failure."""
    if engine_answers():
        return
    if os.environ.get("CI"):
        pytest.fail("CI is set but no Docker engine answers")
    pytest.skip("no Docker engine (and CI is unset)")


@functools.cache
def registry_host() -> str:
    """Return the npm registry's host, derived at run time (never written down)."""
    out = subprocess.run(
        ["npm", "config", "get", "registry"], capture_output=True, text=True, check=True
    ).stdout.strip()
    host = urlsplit(out).hostname
    assert host, "npm config get registry gave no host"
    return host


@functools.cache
def ensure_image(config_path: Path, expert: str) -> str:
    """Build (or reuse) the per-expert image once per test session."""
    config, _ = load_config(config_path)
    return engine.ensure_expert_image(plan(config, expert), progress=quiet)


def write_expert(folder: Path, toml: str) -> Path:
    """Write a test Expert folder (perstack.toml + the stdlib skill + the Node probe)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # pytest makes tmp folders 0700: skills run as other uids
    shutil.copy2(STDLIB_SKILL, folder / "stdlib_skill.py")
    shutil.copy2(EGRESS_PROBE, folder / "egress_probe.mjs")
    path = folder / "perstack.toml"
    path.write_text(toml, encoding="utf-8")
    for file in folder.iterdir():
        file.chmod(0o644)
    return path


def unique(prefix: str) -> str:
    """Return a fresh expert key, so Docker labels identify one test's objects."""
    return f"{prefix}-{secrets.token_hex(3)}"


def stdlib_skill(name: str, *args: str, **extra: object) -> str:
    """Return the TOML of a local stdlib skill (python3 stdlib_skill.py ARGS)."""
    lines = [
        f'[experts."EXPERT".skills."{name}"]',
        'type = "mcpStdioSkill"',
        'command = "python3"',
        f"args = {['stdlib_skill.py', *args]!r}".replace("'", '"'),
    ]
    for key, value in extra.items():
        rendered = str(value).lower() if isinstance(value, bool) else repr(value)
        lines.append(f"{key} = {rendered}".replace("'", '"'))
    return "\n".join(lines) + "\n"


def expert_toml(expert: str, *skills: str) -> str:
    """Return a whole perstack.toml for one Expert with the given skill tables."""
    head = f'[experts."{expert}"]\ninstruction = "integration test expert"\n\n'
    return head + "\n".join(skills).replace('"EXPERT"', f'"{expert}"')


@asynccontextmanager
async def started(config_path: Path, expert: str, **options: object):
    """Start an Expert in-process (image built once) and yield its gateway."""
    ensure_image(config_path, expert)
    launch = LaunchOptions(config_path=config_path, expert=expert, progress=quiet, **options)  # type: ignore[arg-type]
    async with open_expert(launch) as gateway:
        yield gateway


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `perstack-sandbox ARGS` in a subprocess and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "perstack_sandbox", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def labelled_containers(expert: str) -> list[object]:
    """Return every container (running or not) labelled with this expert key.

    docker-py lists, then inspects each container: one removed in between (a teardown, `down`)
    is skipped rather than failing the listing.
    """
    client = docker.from_env()
    return client.containers.list(
        all=True, filters={"label": f"{LABEL_EXPERT}={expert}"}, ignore_removed=True
    )


def text_of(result: object) -> str:
    """Join the text blocks of a CallToolResult."""
    return "".join(getattr(block, "text", "") for block in getattr(result, "content", []))
