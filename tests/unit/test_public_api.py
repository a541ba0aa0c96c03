"""The public surface: sorted re-exports, a light import, and input errors before any engine."""

from __future__ import annotations

import json
import subprocess
import sys

import anyio
import pytest

import perstack_sandbox
from perstack_sandbox import audit, config, engine, gateway, images, plan, skills, state
from perstack_sandbox.config import parse_config
from perstack_sandbox.errors import EngineError, MissingEnvError, RunError, UsageError
from perstack_sandbox.run import open_run, prepare_run

TOML = """
[experts."e"]
instruction = "test"

[experts."e".skills."api"]
type = "mcpStdioSkill"
command = "python3"
args = ["server.py"]
requiredEnv = ["API_TOKEN"]
"""
NO_ENGINE = "unix:///nonexistent/docker.sock"


@pytest.fixture
def config_path(tmp_path, monkeypatch):
    """Write the test Expert, point the state dir at tmp and the engine nowhere."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "state"))
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    (tmp_path / "expert").mkdir()
    path = tmp_path / "expert" / "perstack.toml"
    path.write_text(TOML)
    return path


@pytest.mark.parametrize(
    "package", [perstack_sandbox, audit, config, engine, gateway, images, plan, skills]
)
def test_public_names_are_sorted_and_importable(package):
    """`__all__` is sorted (constants, classes, functions: ruff's order) and every name exists."""

    def kind(name):
        return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)

    assert list(package.__all__) == sorted(package.__all__, key=kind)
    assert all(hasattr(package, name) for name in package.__all__)


def test_importing_the_package_loads_neither_the_mcp_sdk_nor_docker():
    """The package's names load on first use, so importing it (and `--help`) stays fast."""
    code = (
        "import json, sys, perstack_sandbox; "
        "print(json.dumps([m for m in ('mcp', 'docker', 'uvicorn') if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(done.stdout) == []


def test_an_unknown_public_name_is_an_attribute_error():
    """A name that is not public is not invented by the lazy loader."""
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = perstack_sandbox.nope


def test_secrets_come_only_from_the_mapping_given(config_path, monkeypatch):
    """The host environment is not a source: a value there but not in `secrets` is missing."""
    config, _ = parse_config(config_path.read_text(), config_dir=str(config_path.parent))
    monkeypatch.setenv("API_TOKEN", "from-the-environment")
    with pytest.raises(MissingEnvError, match="API_TOKEN"):
        prepare_run(config, "e", secrets={})
    prepared = prepare_run(config, "e", secrets={"API_TOKEN": "given", "OTHER": "unused"})
    assert prepared.secrets["api"].values["API_TOKEN"].reveal() == "given"
    assert set(prepared.secrets["api"].values) == {"API_TOKEN"}


def test_a_config_parsed_from_text_needs_an_absolute_expert_folder(config_path):
    """Without `config_dir` the Expert's folder is '.', which is refused rather than mounted."""
    config, _ = parse_config(config_path.read_text())
    with pytest.raises(UsageError, match="not absolute"):
        prepare_run(config, "e", secrets={"API_TOKEN": "t"})


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"secrets": {}}, MissingEnvError),
        ({"secrets": {"API_TOKEN": "t"}, "isolation": "kvm"}, UsageError),
    ],
)
async def test_bad_input_fails_on_entry_before_any_run_folder_or_engine_call(
    config_path, options, error
):
    """Entering a run with bad input raises our error and creates nothing (no engine here)."""
    run = open_run(config_path, "e", **options)
    with anyio.fail_after(30), pytest.raises(error):
        async with run:
            pytest.fail("the run must not start")
    assert not state.runs_dir().exists()


def test_a_run_that_is_not_started_has_an_id_but_no_folder_or_gateway(config_path):
    """`run_id` is known at once; the folder, plan and gateway only inside `async with`."""
    run = open_run(config_path, "e")
    assert run.run_id
    for name in ("path", "plan", "gateway"):
        with pytest.raises(RunError, match="open_run"):
            getattr(run, name)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_expert_folder_the_skills_cannot_read_is_refused_on_entry(config_path):
    """The library checks the Expert's folder too, before any image build or run folder.

    Fails when: `prepare_run` leaves out `check_expert_folder` (seen by hand: the run went on
    to the image build and failed with EngineError, the engine being nowhere).
    """
    config_path.parent.chmod(0o700)
    run = open_run(config_path, "e", secrets={"API_TOKEN": "t"})
    with anyio.fail_after(30), pytest.raises(UsageError, match="skills cannot read"):
        async with run:
            pytest.fail("the run must not start")
    assert not state.runs_dir().exists()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_env_paths_given_to_open_run_are_hidden_by_its_plan(config_path, monkeypatch):
    """`open_run(env_paths=...)` reaches the run's plan: each file inside the folder is hidden."""

    async def no_engine(*_args: object, **_kwargs: object) -> str:
        # DOCKER_HOST alone is not enough: an earlier test of the session may hold a client.
        raise EngineError("no engine in a unit test")

    monkeypatch.setattr(engine, "ensure_expert_image_async", no_engine)
    (config_path.parent / "keys.vars").write_text("API_TOKEN=t\n")
    run = open_run(config_path, "e", secrets={"API_TOKEN": "t"}, env_paths=["keys.vars"])
    with anyio.fail_after(30), pytest.raises(EngineError):  # planned, then no engine to build on
        async with run:
            pytest.fail("the run must not start")
    hidden = {(file.target, file.origin) for file in run.plan.hidden}
    assert ("/expert/keys.vars", "--env-path") in hidden
