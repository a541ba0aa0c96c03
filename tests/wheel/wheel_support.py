"""Helpers of the installed-wheel suite: the wheel's venv, a clean environment, the engine."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import docker
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROOT = Path(__file__).resolve().parents[2]
LABEL_RUN = "perstack-sandbox.run"
INSTALL_TIMEOUT_S = 600  # a wheel build and a venv with every dependency, on 2 busy cores
POLL_S = 0.2


@dataclass(frozen=True, slots=True)
class Installed:
    """The venv the wheel is installed in, and a folder outside the checkout to run from."""

    venv: Path
    work: Path

    @classmethod
    def at(cls, venv: str, work: str) -> Installed:
        """Return the installation `.ci/wheel-check.sh` made."""
        return cls(Path(venv), Path(work))

    @property
    def cli(self) -> str:
        """The wheel's `perstack-sandbox` console script."""
        return str(self.venv / "bin" / "perstack-sandbox")

    @property
    def python(self) -> str:
        """The venv's interpreter: the wheel and its dependencies, the MCP SDK among them."""
        return str(self.venv / "bin" / "python")

    @property
    def config(self) -> Path:
        """The bundled example's perstack.toml, copied outside the checkout."""
        return self.work / "examples" / "perstack.toml"

    def environment(self, state: Path) -> dict[str, str]:
        """Return this process's environment with `state` as the state directory.

        PYTHONPATH goes: nothing may come from the checkout.
        """
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return env | {"PERSTACK_SANDBOX_STATE": str(state)}


@contextlib.contextmanager
def install_wheel(dist: Path) -> Iterator[Installed]:
    """Build the wheel into `dist`, install it in a fresh venv outside the checkout; remove both.

    The folder is 0755, as the wheel check's: the example's local skill runs as another uid.
    """
    work = Path(tempfile.mkdtemp(prefix="perstack-wheel-"))
    try:
        work.chmod(0o755)
        pip = ["-m", "pip", "--disable-pip-version-check", "--quiet"]
        _run(sys.executable, *pip, "wheel", ROOT, "--no-deps", "--wheel-dir", dist)
        _run(shutil.which("python3") or "python3", "-m", "venv", work / "venv")
        _run(work / "venv" / "bin" / "python", *pip, "install", next(dist.glob("*.whl")))
        shutil.copytree(ROOT / "examples", work / "examples")
        for path in (work / "examples", *(work / "examples").rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield Installed(work / "venv", work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(*command: str | Path) -> None:
    subprocess.run(command, check=True, timeout=INSTALL_TIMEOUT_S, capture_output=True)


def require_engine() -> None:
    """Skip without an engine, unless under CI, where a missing engine is a failure."""
    try:
        docker.from_env(timeout=10).ping()
    except docker.errors.DockerException:
        if os.environ.get("CI"):
            pytest.fail("CI is set but no Docker engine answers")
        pytest.skip("no Docker engine (and CI is unset)")


def wait_until(condition: Callable[[], bool], deadline_s: float) -> bool:
    """Poll `condition` until it holds (True) or `deadline_s` passes (False)."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def start(
    command: list[str], installed: Installed, state: Path, **streams: object
) -> subprocess.Popen[str]:
    """Start `command` in the wheel's folder with `state` as its state directory."""
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        command, cwd=installed.work, env=installed.environment(state), text=True, **streams
    )


def objects_of(run_id: str) -> list[str]:
    """Name every container, network and volume labelled with `run_id`."""
    api = docker.from_env(timeout=60).api
    label = {"label": f"{LABEL_RUN}={run_id}"}
    names: list[str] = [c["Names"][0] for c in api.containers(all=True, filters=label)]
    names += [n["Name"] for n in api.networks(filters=label)]
    names += [v["Name"] for v in api.volumes(filters=label).get("Volumes") or []]
    return names


def only_run(state: Path) -> str | None:
    """Return the id of the one run recorded under `state`, or None while there is none."""
    runs = sorted((state / "runs").glob("*")) if (state / "runs").is_dir() else []
    return runs[0].name if len(runs) == 1 else None
