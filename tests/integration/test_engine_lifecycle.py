"""Lifecycle and images: teardown in every way a run can end, gc, down, and image caching.

Nothing of a run remains after an exception, a cancellation, a signal, or a SIGKILL (its
reaper removes it, or gc when the reaper died too); a run killed at any point of its start is
listed by ps and doctor, network included; gc spares live owners; an unchanged expert reuses
its image.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import anyio
import docker
import pytest
from engine_support import objects_of_run, reaper_of, run_in, wait_until

from perstack_sandbox import engine, images, state
from perstack_sandbox.config import load_config
from perstack_sandbox.engine import _doctor, _sweep, open_sandbox
from perstack_sandbox.errors import EngineError, ImageBuildError
from perstack_sandbox.plan import (
    WORKSPACE_DIR,
    PackageSpec,
    SandboxPlan,
    SkillLaunch,
    container_argv,
    plan,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.usefixtures("state_home")]

CHILD_DEADLINE_S = 120  # a child interpreter imports docker, starts a sandbox, reports
REAPED_DEADLINE_S = 30  # the acceptance bound: a dead owner's objects are gone within it
# A stand-in orchestrator: start a sandbox, report its run id and reaper, wait to be signalled.
HOLDER = r"""
import sys, anyio
from perstack_sandbox import state
from perstack_sandbox.engine import _reaper, cancel_on_signals, open_sandbox
from perstack_sandbox.plan import SandboxPlan

async def main():
    plan = SandboxPlan(expert="holder", config_dir=sys.argv[2], skills=())
    run = state.create_run(plan.expert)
    async with cancel_on_signals():
        async with open_sandbox(plan, image=sys.argv[1], run=run):
            print(run.run_id, _reaper.pid(), flush=True)
            await anyio.sleep_forever()
    print("torn down", flush=True)

anyio.run(main)
"""


class Boom(Exception):  # noqa: N818 - the test's own marker exception
    """Raised inside a sandbox to prove teardown on an exception."""


def spawn_holder(image: str, expert_dir: Path) -> subprocess.Popen[str]:
    """Start HOLDER in a child process."""
    expert_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, image, str(expert_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


def start_holder(image: str, expert_dir: Path) -> tuple[subprocess.Popen[str], str, int]:
    """Start HOLDER and return it with the run id and reaper pid it reported once started."""
    child = spawn_holder(image, expert_dir)
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], CHILD_DEADLINE_S)
    line = child.stdout.readline().split() if ready else []
    if len(line) != 2:
        child.kill()
        pytest.fail(f"the holder died: {child.stderr.read() if child.stderr else ''}")
    return child, line[0], int(line[1])


def kill_owner_and_reaper(child: subprocess.Popen[str], reaper: int | None) -> None:
    """SIGKILL the reaper first (it would clean up), then its owner; reap the owner."""
    if reaper is not None:
        os.kill(reaper, signal.SIGKILL)
    child.kill()
    child.wait(timeout=CHILD_DEADLINE_S)


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
    child, run_id, _ = start_holder(empty_expert_image, tmp_path / "expert")
    assert objects_of_run(docker_api, run_id)
    child.send_signal(signum)
    out, err = child.communicate(timeout=CHILD_DEADLINE_S)
    assert "torn down" in out, err
    assert objects_of_run(docker_api, run_id) == []


async def test_gc_after_sigkill_removes_the_orphans_and_spares_a_live_owner(
    plan_factory, empty_expert_image, docker_api, tmp_path
):
    """A SIGKILLed owner (its reaper killed too) leaves objects; gc removes just those."""
    mine = state.create_run("alive")
    async with open_sandbox(plan_factory(), image=empty_expert_image, run=mine):
        child, orphan, reaper = await anyio.to_thread.run_sync(
            start_holder, empty_expert_image, tmp_path / "orphan"
        )
        kill_owner_and_reaper(child, reaper)
        assert objects_of_run(docker_api, orphan)
        removed = await anyio.to_thread.run_sync(engine.collect_garbage)
        assert objects_of_run(docker_api, orphan) == []
        assert any(orphan in line for line in removed)
        assert len(objects_of_run(docker_api, mine.run_id)) == 3
        listed = {info.run_id: info for info in engine.list_sandboxes()}
        assert listed[mine.run_id].is_owner_alive
        assert orphan not in listed
    assert objects_of_run(docker_api, mine.run_id) == []


def test_a_sigkilled_owner_is_cleaned_up_by_its_reaper_without_gc(
    empty_expert_image, docker_api, tmp_path
):
    """SIGKILL gives no teardown; the owner's reaper removes its objects and closes its run.

    Seen failing with the reaper's sweep disabled (`reap` returning at once): the network and
    both containers were still there after the deadline.
    """
    child, run_id, _ = start_holder(empty_expert_image, tmp_path / "expert")
    assert len(objects_of_run(docker_api, run_id)) == 3
    child.kill()
    child.wait(timeout=CHILD_DEADLINE_S)
    assert wait_until(lambda: not objects_of_run(docker_api, run_id), REAPED_DEADLINE_S)
    run = state.open_run(run_id)
    assert run is not None
    assert wait_until(lambda: not run.is_journal_open(), REAPED_DEADLINE_S)
    assert str(run.read_meta()["status"]).startswith("ended: owner died")


@pytest.mark.parametrize("journalled", [1, 2, 3])
def test_a_run_killed_at_any_point_of_start_up_is_found_by_ps_doctor_and_gc(
    empty_expert_image, docker_api, tmp_path, journalled
):
    """Killed (with its reaper) once it journalled `journalled` objects, a run is still found.

    1: the network was being created; 2: the network exists, the proxy is being created; 3:
    both containers are being created. ps lists whatever exists (the network included), doctor
    names the run, gc removes it all and closes the run's journal. Seen failing before
    networks were listed: with 2, ps said nothing of the run whose network was left.
    """
    child = spawn_holder(empty_expert_image, tmp_path / "expert")
    journal: list[state.RunState] = []

    def has_journalled() -> bool:
        journal[:] = [run for run in state.list_runs() if len(run.journal()) >= journalled]
        return bool(journal)

    try:
        assert wait_until(has_journalled, CHILD_DEADLINE_S, interval_s=0.005)
    finally:
        kill_owner_and_reaper(child, reaper_of(child.pid))
    run_id = journal[0].run_id
    settled = settle(lambda: sorted(objects_of_run(docker_api, run_id)))
    listed = {info.run_id: info for info in engine.list_sandboxes()}
    if settled:
        assert len(listed[run_id].objects) == len(settled)
        assert not listed[run_id].is_owner_alive
    if journalled >= 2:
        assert f"network: perstack-{run_id}-net" in listed[run_id].objects
    leftovers = next(
        c for c in _doctor.diagnose(fix=False, progress=print) if c.name == "leftovers"
    )
    assert not leftovers.is_ok
    assert run_id in leftovers.detail
    removed = engine.collect_garbage()
    assert objects_of_run(docker_api, run_id) == []
    assert len([line for line in removed if run_id in line]) == len(settled)
    assert not journal[0].is_journal_open()
    assert run_id not in {info.run_id for info in engine.list_sandboxes()}
    assert run_id not in {run.run_id for run in _sweep.crashed_runs()}


def settle(look, *, quiet_s: float = 2.0, deadline_s: float = 30.0):
    """Return `look()` once it has not changed for `quiet_s` (creates in flight finish)."""
    seen, since, deadline = look(), time.monotonic(), time.monotonic() + deadline_s
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.25)
        now = look()
        if now != seen:
            seen, since = now, time.monotonic()
    return seen


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


BUILD_STOP_DEADLINE_S = 60  # a stopped build step fails, then its fence comes down
COLD_EXPERT = """
[experts."interrupted"]
instruction = "a fresh skill name makes a fresh image tag: the build runs"

[experts."interrupted".skills."{skill}"]
type = "mcpStdioSkill"
command = "uvx"
packageName = "mcp-server-time"
"""


def owned_objects(api, pid: int) -> list[str]:
    """Name every container and network labelled as owned by process `pid`."""
    flt = {"label": f"perstack-sandbox.owner-pid={pid}"}
    names = [f"container {c['Names'][0]}" for c in api.containers(all=True, filters=flt)]
    return names + [f"network {n['Name']}" for n in api.networks(filters=flt)]


def start_cold_call(api, folder: Path) -> tuple[subprocess.Popen[str], str]:
    """Start `call` on an Expert whose image must be built; return it once its fence is up."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "perstack.toml"
    config.write_text(COLD_EXPERT.format(skill=f"t{os.urandom(4).hex()}"), encoding="utf-8")
    loaded, _ = load_config(config)
    base_id = images.image_id(images.base_image_name())
    assert base_id is not None
    tag = images.expert_image_name(plan(loaded, "interrupted"), base_id)
    child = subprocess.Popen(
        [
            *(sys.executable, "-m", "perstack_sandbox", "call", "interrupted", "get_current_time"),
            *("-c", str(config), "--args", '{"timezone": "UTC"}'),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )

    def is_fence_up() -> bool:  # its proxy runs: everything of the fence exists
        flt = {"label": [f"perstack-sandbox.owner-pid={child.pid}", "perstack-sandbox.role=proxy"]}
        return bool(api.containers(filters=flt))

    if not wait_until(is_fence_up, CHILD_DEADLINE_S):
        child.kill()
        pytest.fail(f"no build fence appeared: {child.communicate()[1][-2000:]}")
    return child, tag


def assert_tagged_only_with_labels(tag: str) -> None:
    """Check that the image is absent or carries its package versions (never a bare tag)."""
    if images.image_id(tag) is not None:
        try:
            assert images.resolved_packages(tag), f"{tag} is tagged without its labels"
        finally:
            docker.from_env().images.remove(tag)


@pytest.mark.usefixtures("base_images")
def test_sigterm_during_an_image_build_stops_it_and_its_fence_comes_down(docker_api, tmp_path):
    """SIGTERM while `call` builds: the build stops, exit 130, no proxy, network or tag left.

    SIGTERM comes as the fence is up, before the package install step, so a build that stops
    leaves no image. Seen failing with the stop disabled (`cancel` never set): the build ran on
    to its end and the image was tagged.
    """
    child, tag = start_cold_call(docker_api, tmp_path / "expert")
    try:
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=BUILD_STOP_DEADLINE_S)
        assert child.returncode == 130, err[-2000:]
        assert owned_objects(docker_api, child.pid) == []
        assert images.image_id(tag) is None
        builds = list(state.builds_dir().iterdir())
        assert builds
        assert not any(state.RunState(b.name, b).is_journal_open() for b in builds)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        assert_tagged_only_with_labels(tag)


@pytest.mark.usefixtures("base_images")
def test_a_process_killed_during_a_build_leaves_nothing_behind(docker_api, tmp_path):
    """SIGKILL during a fenced build (an MCP client's last resort): nothing is left, no gc.

    The engine cancels the build when its client goes; the owner's reaper removes the build's
    proxy and network. Seen failing with the reaper's sweep disabled: the proxy and network
    were still there after the deadline.
    """
    child, tag = start_cold_call(docker_api, tmp_path / "expert")
    try:
        assert contexts_of(child.pid)  # the build's context, in the state directory
        child.kill()
        child.wait(timeout=CHILD_DEADLINE_S)
        assert wait_until(lambda: not owned_objects(docker_api, child.pid), REAPED_DEADLINE_S)
        assert wait_until(lambda: not contexts_of(child.pid), REAPED_DEADLINE_S)
        assert images.image_id(tag) is None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        assert_tagged_only_with_labels(tag)


@pytest.mark.usefixtures("base_images")
def test_a_build_killed_with_its_reaper_leaves_its_context_to_the_next_gc(docker_api, tmp_path):
    """SIGKILL of the owner and its reaper mid-build: `gc` removes the fence and the context.

    Before decision 67 the context was a folder in /tmp, which nothing ever removed.
    """
    child, tag = start_cold_call(docker_api, tmp_path / "expert")
    try:
        [context] = contexts_of(child.pid)
        kill_owner_and_reaper(child, reaper_of(child.pid))
        assert context.is_dir()

        def collected() -> bool:
            try:
                engine.collect_garbage()
            except EngineError:  # the fence's network may still hold the cancelled step
                return False
            return not owned_objects(docker_api, child.pid)

        assert wait_until(collected, REAPED_DEADLINE_S)
        # Not by gc's list of names: a call that removed the context first (it needs no
        # engine) may then fail on the fence's network, and that call's names are lost with
        # its error (seen in a fresh-clone CI run); tests/unit/test_build_contexts.py checks
        # the naming.
        assert not context.exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        assert_tagged_only_with_labels(tag)


def contexts_of(pid: int) -> list[Path]:
    """Return the build contexts that process `pid` holds in the state directory."""
    folder = state.state_dir() / state.CONTEXTS_DIR / socket.gethostname()
    return sorted(folder.glob(f"{pid}-*")) if folder.is_dir() else []
