"""Gateway behaviour inside a real sandbox: pick/omit, lazyInit, collisions, restarts, env."""

from __future__ import annotations

import anyio
import pytest
from skills_support import (
    DEADLINE_S,
    expert_toml,
    labelled_containers,
    require_engine,
    run_cli,
    started,
    stdlib_skill,
    text_of,
    unique,
    write_expert,
)

from perstack_sandbox.errors import SkillError

pytestmark = [pytest.mark.docker, pytest.mark.anyio]


@pytest.fixture(autouse=True)
def _engine():
    require_engine()


@pytest.fixture
def anyio_backend():
    """Run async tests on asyncio."""
    return "asyncio"


async def test_pick_omit_and_lazy_init_in_a_real_sandbox(tmp_path):
    """pick/omit filter each skill's tools; a lazyInit skill starts on first use only."""
    expert = unique("pick")
    config = write_expert(
        tmp_path,
        expert_toml(
            expert,
            stdlib_skill("alpha", pick=["echo", "add"]),
            stdlib_skill("beta", "--only", "whoami,env_names,sleep", omit=["sleep"], lazyInit=True),
        ),
    )
    with anyio.fail_after(DEADLINE_S):
        async with started(config, expert) as gateway:
            assert gateway.skills["alpha"].is_running
            assert not gateway.skills["beta"].is_running
            names = sorted(tool.name for tool in await gateway.list_tools())
            assert names == ["add", "echo", "env_names", "whoami"]
            assert gateway.skills["beta"].is_running
            assert text_of(await gateway.call_tool("add", {"a": 1, "b": 2})) == "3.0"


async def test_a_local_skill_started_as_python_runs_python_3(tmp_path):
    """`command = "python"` (Perstack's own example) starts a Python 3 skill in the sandbox.

    Fails when: the base image has no `python` (seen before issue 12: `exec: python: not found`).
    """
    expert = unique("python")
    skill = stdlib_skill("snake").replace('command = "python3"', 'command = "python"')
    config = write_expert(tmp_path, expert_toml(expert, skill))
    with anyio.fail_after(DEADLINE_S):
        async with started(config, expert) as gateway:
            names = {tool.name for tool in await gateway.list_tools()}
            assert "echo" in names
            assert text_of(await gateway.call_tool("echo", {"text": "hi"})) == "hi"


def test_tool_name_collision_fails_the_start_with_both_skill_names(tmp_path):
    """Two skills offering `echo` stop the run with exit 1, naming both and the remedies."""
    expert = unique("clash")
    config = write_expert(tmp_path, expert_toml(expert, stdlib_skill("one"), stdlib_skill("two")))
    done = run_cli("tools", expert, "-c", str(config))
    assert done.returncode == 1
    assert "'one'" in done.stderr
    assert "'two'" in done.stderr
    assert "--prefix-tools" in done.stderr
    assert "Traceback" not in done.stderr
    assert labelled_containers(expert) == []


async def test_crashed_skill_reports_stderr_and_restarts_once(tmp_path):
    """A crash returns its stderr tail; the next call restarts the skill, only once."""
    expert = unique("crash")
    config = write_expert(tmp_path, expert_toml(expert, stdlib_skill("fragile")))
    with anyio.fail_after(DEADLINE_S):
        async with started(config, expert) as gateway:
            with pytest.raises(SkillError, match="last words of the skill"):
                await gateway.call_tool("crash", {"message": "last words of the skill"})
            assert text_of(await gateway.call_tool("echo", {"text": "alive"})) == "alive"
            with pytest.raises(SkillError):
                await gateway.call_tool("crash", {"message": "second death"})
            with pytest.raises(SkillError, match="already restarted once"):
                await gateway.call_tool("echo", {"text": "dead"})


def test_missing_env_fails_before_any_container_exists(tmp_path):
    """A missing requiredEnv variable exits 2, names it and its skill, and starts nothing."""
    expert = unique("noenv")
    config = write_expert(
        tmp_path,
        expert_toml(expert, stdlib_skill("needs", requiredEnv=["PERSTACK_TEST_ABSENT_KEY"])),
    )
    done = run_cli("tools", expert, "-c", str(config))
    assert done.returncode == 2, done.stderr
    assert "PERSTACK_TEST_ABSENT_KEY (needed by 'needs')" in done.stderr
    assert labelled_containers(expert) == []
