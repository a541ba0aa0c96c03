"""Lifecycle and images: teardown in every way a run can end, gc, down, and image caching.

Nothing of a run remains after an exception, a cancellation, a signal, or a SIGKILL followed
by gc; gc spares live owners; an unchanged expert reuses its image.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

import anyio
import pytest
from engine_support import objects_of_run, run_in

from perstack_sandbox import engine, images, state
from perstack_sandbox.engine import open_sandbox
from perstack_sandbox.errors import ImageBuildError
from perstack_sandbox.plan import (
    WORKSPACE_DIR,
    PackageSpec,
    SandboxPlan,
    SkillLaunch,
    container_argv,
)

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.usefixtures("state_home")]

CHILD_DEADLINE_S = 120  # a child interpreter imports docker, starts a sandbox, reports
# A stand-in orchestrator: start a sandbox, report its run id, then wait to be signalled.
HOLDER = r"""
import sys, anyio
from perstack_sandbox import state
from perstack_sandbox.engine import cancel_on_signals, open_sandbox
from perstack_sandbox.plan import SandboxPlan

async def main():
    plan = SandboxPlan(expert="holder", config_dir=sys.argv[2], skills=())
    run = state.create_run(plan.expert)
    async with cancel_on_signals():
        async with open_sandbox(plan, image=sys.argv[1], run=run):
            print(run.run_id, flush=True)
            await anyio.sleep_forever()
    print("torn down", flush=True)

anyio.run(main)
"""


class Boom(Exception):  # noqa: N818 - the test's own marker exception
    """Raised inside a sandbox to prove teardown on an exception."""


def start_holder(image: str, expert_dir) -> tuple[subprocess.Popen[str], str]:
    """Start HOLDER in a child process and return it with the run id it reported."""
    expert_dir.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, image, str(expert_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], CHILD_DEADLINE_S)
    line = child.stdout.readline().strip() if ready else ""
    if not line:
        child.kill()
        pytest.fail(f"the holder died: {child.stderr.read() if child.stderr else ''}")
    return child, line


async def test_an_exception_in_the_body_leaves_no_object_of_the_run(
    plan_factory, empty_expert_image, docker_api
):
    """Raising inside open_sandbox tears down every container and network of that run."""
    run = state.create_run("boom")

    async def fail_inside() -> None:
        async with open_sandbox(plan_factory(), image=empty_expert_image, run=run) as sb:
            assert objects_of_run(docker_api, run.run_id)
            assert (await run_in(sb, ["true"])).code == 0
            raise Boom

    with pytest.raises(Boom):
        await fail_inside()
    assert objects_of_run(docker_api, run.run_id) == []
    assert run.read_meta()["status"] == "failed"


@pytest.mark.parametrize("after_s", [0.05, 0.3, 0.8])
async def test_cancellation_at_any_point_of_startup_leaves_nothing(
    plan_factory, empty_expert_image, docker_api, after_s
):
    """Cancelling during set-up (networks, containers, readiness) still removes everything."""
    run = state.create_run("cancel")
    with anyio.move_on_after(after_s):
        async with open_sandbox(plan_factory(), image=empty_expert_image, run=run):
            await anyio.sleep_forever()
    assert objects_of_run(docker_api, run.run_id) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_orchestrator_tears_its_sandbox_down(
    empty_expert_image, docker_api, tmp_path, signum
):
    """SIGTERM or SIGINT to the owning process cancels it and its sandbox is removed."""
    child, run_id = start_holder(empty_expert_image, tmp_path / "expert")
    assert objects_of_run(docker_api, run_id)
    child.send_signal(signum)
    out, err = child.communicate(timeout=CHILD_DEADLINE_S)
    assert "torn down" in out, err
    assert objects_of_run(docker_api, run_id) == []


async def test_gc_after_sigkill_removes_the_orphans_and_spares_a_live_owner(
    plan_factory, empty_expert_image, docker_api, tmp_path
):
    """A SIGKILLed owner leaves objects; gc removes exactly those, not this live test's."""
    mine = state.create_run("alive")
    async with open_sandbox(plan_factory(), image=empty_expert_image, run=mine):
        child, orphan = await anyio.to_thread.run_sync(
            start_holder, empty_expert_image, tmp_path / "orphan"
        )
        child.kill()
        child.wait(timeout=CHILD_DEADLINE_S)
        assert objects_of_run(docker_api, orphan)
        removed = await anyio.to_thread.run_sync(engine.collect_garbage)
        assert objects_of_run(docker_api, orphan) == []
        assert any(orphan in line for line in removed)
        assert len(objects_of_run(docker_api, mine.run_id)) == 3
        listed = {info.run_id: info for info in engine.list_sandboxes()}
        assert listed[mine.run_id].is_owner_alive
        assert orphan not in listed
    assert objects_of_run(docker_api, mine.run_id) == []


async def test_down_removes_a_run_even_while_its_owner_lives(
    plan_factory, empty_expert_image, docker_api
):
    """`down RUN` removes that run's objects; the owner's own teardown then finds nothing."""
    run = state.create_run("down")
    async with open_sandbox(plan_factory(), image=empty_expert_image, run=run):
        removed = await anyio.to_thread.run_sync(engine.take_down, run.run_id)
        assert len(removed) == 3
        assert objects_of_run(docker_api, run.run_id) == []


def example_plan(expert_dir) -> SandboxPlan:
    """Return a plan with the two real example packages: one from npm, one from PyPI."""
    expert_dir.mkdir(parents=True, exist_ok=True)
    npm = PackageSpec(
        manager="npm",
        name="@modelcontextprotocol/server-everything",
        version_spec="",
        slug="everything",
    )
    pypi = PackageSpec(manager="pypi", name="mcp-server-time", version_spec="", slug="time")
    return SandboxPlan(
        expert="example",
        config_dir=str(expert_dir),
        skills=tuple(
            SkillLaunch(
                name=package.slug,
                kind=kind,
                argv=container_argv(kind, package, ()),
                package=package,
                env_names=(),
                workdir=WORKSPACE_DIR,
            )
            for kind, package in (("npx", npm), ("uvx", pypi))
        ),
    )


@pytest.mark.usefixtures("base_images")
def test_an_unchanged_expert_reuses_its_image_without_building(tmp_path):
    """The second ensure_expert_image of the same plan builds nothing and returns the same tag."""
    plan = example_plan(tmp_path / "expert")
    first = engine.ensure_expert_image(plan, progress=lambda _line: None)
    steps: list[str] = []
    second = engine.ensure_expert_image(plan, progress=steps.append)
    assert second == first
    assert steps == []
    package = plan.skills[0].package
    assert package is not None
    bumped = plan.skills[0].model_copy(
        update={"package": package.model_copy(update={"version_spec": "^1"})}
    )
    changed = plan.model_copy(update={"skills": (bumped, *plan.skills[1:])})
    assert images.expert_image_name(changed, images.image_id(images.base_image_name())) != first


@pytest.mark.usefixtures("base_images")
def test_resolved_versions_are_recorded_in_the_image_label(tmp_path):
    """Each package's installed version and entry point are in the image's label."""
    name = engine.ensure_expert_image(example_plan(tmp_path / "expert"), progress=lambda _l: None)
    recorded = {p["name"]: p for p in images.resolved_packages(name)}
    assert set(recorded) == {"@modelcontextprotocol/server-everything", "mcp-server-time"}
    for package in recorded.values():
        assert package["version"][0].isdigit()
        assert package["entry"].startswith("/opt/perstack/")


INITIALIZE = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
    b'"capabilities":{},"clientInfo":{"name":"itest","version":"1"}}}\n'
)


@pytest.mark.usefixtures("base_images")
async def test_preinstalled_packages_start_offline_from_their_launch_argv(tmp_path):
    """Both example servers answer initialize in a sandbox that has no route to any registry."""
    plan = example_plan(tmp_path / "expert")
    image = await anyio.to_thread.run_sync(
        lambda: engine.ensure_expert_image(plan, progress=lambda _l: None)
    )
    async with open_sandbox(plan, image=image, run=state.create_run("offline")) as sb:
        for index, launch in enumerate(plan.skills):
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": f"/home/s{index}"}
            async with sb.exec_stdio(
                launch.argv, env=env, user=sb.skill_uid(index), workdir="/"
            ) as process:
                await process.stdin.send(INITIALIZE)
                with anyio.fail_after(60):
                    line = b""
                    while not line.endswith(b"\n"):
                        line += await process.stdout.receive()
                assert b'"result"' in line, (launch.name, line)
                assert b'"protocolVersion"' in line, (launch.name, line)


@pytest.mark.usefixtures("base_images")
def test_a_failed_build_reports_the_failing_step_and_its_output(tmp_path):
    """A package that does not exist fails the build with that step's npm output."""
    missing = "@perstack-sandbox-itest/no-such-package-" + os.urandom(4).hex()
    plan = SandboxPlan(
        expert="broken",
        config_dir=str(tmp_path),
        skills=(
            SkillLaunch(
                name="broken",
                kind="npx",
                argv=("/opt/perstack/entry/broken",),
                package=PackageSpec(manager="npm", name=missing, version_spec="", slug="broken"),
                env_names=(),
                workdir="/workspace",
            ),
        ),
    )
    with pytest.raises(ImageBuildError) as failed:
        engine.ensure_expert_image(plan, progress=lambda _line: None)
    message = str(failed.value)
    assert "npm install" in message
    assert missing in message
    assert "404" in message
