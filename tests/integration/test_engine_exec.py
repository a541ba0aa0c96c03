"""exec_stdio: byte streams in and out of a sandboxed process, as the skills layer uses them."""

from __future__ import annotations

import json

import anyio
import pytest
from engine_support import EXEC_DEADLINE_S, drain, run_in

from perstack_sandbox import state
from perstack_sandbox.engine import SKILL_UID_COUNT, Sandbox, open_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.usefixtures("state_home")]


@pytest.fixture
async def sandbox(plan_factory, empty_expert_image):
    """One started sandbox for the test."""
    plan = plan_factory()
    async with open_sandbox(
        plan, image=empty_expert_image, run=state.create_run(plan.expert)
    ) as sb:
        yield sb


async def test_bytes_sent_to_cat_come_back_unchanged_and_eof_ends_it(sandbox):
    """Closing stdin half-closes the socket: cat sees EOF, echoes every byte and exits 0."""
    payload = bytes(range(256)) * 1024 + b"\n"
    result = await run_in(sandbox, ["cat"], stdin=payload)
    assert result.stdout == payload
    assert result.code == 0


async def test_stderr_is_separated_from_stdout_and_the_exit_code_is_reported(sandbox):
    """Frames of the two streams are demultiplexed, and wait() returns the exit status."""
    result = await run_in(sandbox, ["sh", "-c", "echo out; echo err >&2; echo more; exit 7"])
    assert result.stdout == b"out\nmore\n"
    assert result.stderr == b"err\n"
    assert result.code == 7


async def test_a_line_protocol_works_interactively_over_the_streams(sandbox):
    """A request/response exchange works line by line, as an MCP session over stdio does."""
    echo = "import sys\nfor line in sys.stdin: print(line.strip().upper(), flush=True)"
    env = {"PATH": "/usr/bin:/bin"}
    with anyio.fail_after(EXEC_DEADLINE_S):
        async with sandbox.exec_stdio(
            ["python3", "-c", echo], env=env, user=sandbox.skill_uid(0), workdir="/"
        ) as process:
            for word in (b"ping", b"pong"):
                await process.stdin.send(word + b"\n")
                assert await process.stdout.receive() == word.upper() + b"\n"
            await process.stdin.aclose()
            assert await drain(process.stdout) == b""
            assert await process.wait() == 0


async def test_the_environment_is_exactly_the_exec_environment(sandbox):
    """A process sees the variables passed to exec_stdio plus LANG from the image, nothing else."""
    env = {"ONLY_THIS": "1", "PATH": "/usr/bin:/bin", "HOME": "/home/env-probe"}
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    result = await run_in(sandbox, ["python3", "-c", code], env=env)
    seen = result.json()
    assert set(seen) == {"ONLY_THIS", "PATH", "HOME", "LANG"}
    assert seen["ONLY_THIS"] == "1"


async def test_each_skill_runs_as_its_own_uid(sandbox):
    """skill_uid(i) gives distinct non-root uids, and the process runs as the one asked for."""
    first = await run_in(sandbox, ["id", "-u"], skill=0)
    second = await run_in(sandbox, ["id", "-u"], skill=1)
    assert int(first.stdout) == sandbox.skill_uid(0) >= 10001
    assert int(second.stdout) == sandbox.skill_uid(1) != sandbox.skill_uid(0)


async def test_home_is_private_and_a_home_planted_by_another_skill_is_refused(sandbox):
    """The launcher makes HOME mode 700; a HOME another uid created first makes it refuse to run."""
    home = {"HOME": "/home/shared-name"}
    made = await run_in(sandbox, ["stat", "-c", "%a %u", "/home/shared-name"], env=home, skill=0)
    assert made.stdout.split() == [b"700", str(sandbox.skill_uid(0)).encode()]
    planted = await run_in(sandbox, ["true"], env=home, skill=1)
    assert planted.code == 126
    assert b"not this skill's own directory" in planted.stderr
    peek = await run_in(sandbox, ["ls", "/home/shared-name"], skill=1)
    assert peek.code != 0


async def test_a_restarted_skill_reuses_its_own_home(sandbox):
    """Running again as the same uid with the same HOME works (a skill restart)."""
    home = {"HOME": "/home/again"}
    assert (await run_in(sandbox, ["true"], env=home, skill=2)).code == 0
    assert (await run_in(sandbox, ["true"], env=home, skill=2)).code == 0


async def test_kill_ends_the_process_and_everything_it_started(sandbox):
    """kill() stops the process tree of that skill's uid, and leaves other skills running."""
    env = {"PATH": "/usr/bin:/bin"}
    tree = ["sh", "-c", "sleep 600 & sleep 600 & echo started; wait"]
    with anyio.fail_after(EXEC_DEADLINE_S):
        async with (
            sandbox.exec_stdio(
                ["sleep", "600"], env=env, user=sandbox.skill_uid(4), workdir="/"
            ) as bystander,
            sandbox.exec_stdio(tree, env=env, user=sandbox.skill_uid(3), workdir="/") as process,
        ):
            assert await process.stdout.receive() == b"started\n"
            await process.kill()
            assert await process.wait() is not None
            count = (
                "import os; print(sum(1 for p in os.listdir('/proc')"
                " if p.isdigit() and os.stat('/proc/' + p).st_uid == {}))"
            )
            left = await run_in(
                sandbox, ["python3", "-c", count.format(sandbox.skill_uid(3))], skill=0
            )
            assert left.stdout == b"0\n"
            alive = await run_in(
                sandbox, ["python3", "-c", count.format(sandbox.skill_uid(4))], skill=0
            )
            assert alive.stdout == b"1\n"
            await bystander.kill()


async def test_only_skill_uids_may_run_processes(sandbox):
    """exec_stdio refuses root and the sandbox's own idle uid."""
    for uid in (0, 10000):
        with pytest.raises(ValueError, match="not a skill uid"):
            async with sandbox.exec_stdio(["true"], env={}, user=uid, workdir="/"):
                pass


def test_skill_uids_are_bounded_by_the_users_in_the_image():
    """skill_uid refuses an index beyond the users baked into the base image."""
    sandbox = Sandbox("r", "c", "1.2.3.4", 3128, "p", "5.6.7.8", "n")
    assert sandbox.skill_uid(SKILL_UID_COUNT - 1) == 10000 + SKILL_UID_COUNT
    with pytest.raises(ValueError, match="outside"):
        sandbox.skill_uid(SKILL_UID_COUNT)
    assert json.loads(json.dumps(sandbox.proxy_env()))["NO_PROXY"] == "localhost,127.0.0.1,::1"
