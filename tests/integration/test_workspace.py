"""A user's ordinary folder as the workspace: skills write it, the user owns what they write.

The folder belongs to a non-root host user (uid 1000, gid 1234: distinct, so each is seen to
come from the folder) with mode 0755, made here as root. Skills still run as their own uids.
"""

from __future__ import annotations

import os
import select
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
import pytest
from engine_support import objects_of_run, run_in

from perstack_sandbox import engine, state
from perstack_sandbox.engine import open_sandbox
from perstack_sandbox.plan import SandboxPlan, SkillLaunch

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.usefixtures("state_home")]

OWNER_UID, OWNER_GID = 1000, 1234
CHILD_DEADLINE_S = 120  # a child interpreter imports docker, starts a sandbox, reports
# A stand-in orchestrator with a workspace: start, report the run id, wait to be killed.
HOLDER = r"""
import sys, anyio
from pathlib import Path
from perstack_sandbox import state
from perstack_sandbox.engine import open_sandbox
from perstack_sandbox.plan import SandboxPlan

async def main():
    plan = SandboxPlan(expert="holder", config_dir=sys.argv[2], skills=())
    run = state.create_run(plan.expert)
    async with open_sandbox(plan, image=sys.argv[1], run=run, workspace=Path(sys.argv[3])):
        print(run.run_id, flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""
WRITE = (
    "import os\n"
    "open('/workspace/note.txt', 'w').write('from a skill')\n"
    "os.makedirs('/workspace/made/deeper')\n"
    "open('/workspace/made/deeper/inner.txt', 'w').write('nested')\n"
)


@pytest.fixture
def owned_folder():
    """Make a 0755 folder owned by OWNER_UID:OWNER_GID, as a user's own folder would be.

    It is made in the system's temporary folder, not pytest's (0700, root's), so that its owner
    can reach it from the host as well.
    """
    folder = Path(tempfile.mkdtemp(prefix="perstack-workspace-test-"))
    os.chown(folder, OWNER_UID, OWNER_GID)
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def volumes_of_run(api, run_id: str) -> list[str]:
    """Name every volume labelled with `run_id`."""
    found = api.volumes(filters={"label": f"perstack-sandbox.run={run_id}"}).get("Volumes")
    return [volume["Name"] for volume in found or []]


def host_mounts_naming(text: str) -> list[str]:
    """Return the host's mount table lines that mention `text`."""
    table = Path("/proc/self/mountinfo").read_text(encoding="utf-8")
    return [line for line in table.splitlines() if text in line]


async def test_what_a_skill_creates_in_a_0755_folder_belongs_to_the_folders_owner(
    plan_factory, empty_expert_image, owned_folder
):
    """A skill writes a file and makes folders; on the host each is OWNER_UID:OWNER_GID.

    Seen failing with the protection removed: binding the folder into the sandbox directly
    (no workspace layer), the skill's write fails with EACCES (exit code 1).
    """
    plan = plan_factory()
    run = state.create_run(plan.expert)
    async with open_sandbox(
        plan, image=empty_expert_image, run=run, workspace=owned_folder
    ) as sandbox:
        wrote = await run_in(sandbox, ["python3", "-c", WRITE], skill=0, workdir="/workspace")
    assert wrote.code == 0, wrote.stderr
    created = ["note.txt", "made", "made/deeper", "made/deeper/inner.txt"]
    owners = {name: (owned_folder / name).stat() for name in created}
    assert {name: (s.st_uid, s.st_gid) for name, s in owners.items()} == dict.fromkeys(
        created, (OWNER_UID, OWNER_GID)
    )
    assert (owned_folder / "note.txt").read_text() == "from a skill"
    assert stat.S_IMODE(owned_folder.stat().st_mode) == 0o755


async def test_the_owner_can_edit_and_delete_what_skills_created(
    plan_factory, empty_expert_image, owned_folder
):
    """Another skill edits the first one's file; then the owner, not root, removes it all."""
    plan = plan_factory()
    async with open_sandbox(
        plan, image=empty_expert_image, run=state.create_run(plan.expert), workspace=owned_folder
    ) as sandbox:
        assert (await run_in(sandbox, ["python3", "-c", WRITE], skill=0)).code == 0
        append = "open('/workspace/note.txt', 'a').write(', edited')"
        edited = await run_in(sandbox, ["python3", "-c", append], skill=1)
    assert edited.code == 0, edited.stderr
    assert (owned_folder / "note.txt").read_text() == "from a skill, edited"
    as_owner = ["setpriv", f"--reuid={OWNER_UID}", f"--regid={OWNER_GID}", "--clear-groups"]
    removed = await anyio.run_process(
        [*as_owner, "rm", "-r", str(owned_folder / "made"), str(owned_folder / "note.txt")],
        check=False,
    )
    assert removed.returncode == 0, removed.stderr.decode()
    assert list(owned_folder.iterdir()) == []


def two_local_skills(plan: SandboxPlan) -> SandboxPlan:
    """Return `plan` with two local stdio skills: under gVisor, two sandbox containers."""
    skills = tuple(
        SkillLaunch(
            name=name, kind="local", argv=("true",), package=None, env_names=(), workdir="/"
        )
        for name in ("first", "second")
    )
    return plan.model_copy(update={"skills": skills})


async def test_under_gvisor_skills_in_their_own_containers_share_the_workspace_as_its_owner(
    plan_factory, empty_expert_image, owned_folder, docker_api
):
    """Under gVisor each skill has a container; both bind the layer's view, files are the owner's.

    Skill 0 writes in its container, skill 1 appends from the other one; on the host the file
    holds both writes and belongs to the folder's owner. Seen failing with the protection
    removed: binding the folder directly into the gVisor containers (no layer), the first write
    failed with EACCES.
    """
    plan = two_local_skills(plan_factory())
    run = state.create_run(plan.expert)
    async with open_sandbox(
        plan, image=empty_expert_image, run=run, workspace=owned_folder, isolation="gvisor"
    ) as sandbox:
        assert len(set(sandbox.container_ids)) == 2
        wrote = await run_in(sandbox, ["python3", "-c", WRITE], skill=0)
        append = "open('/workspace/note.txt', 'a').write(', edited')"
        edited = await run_in(sandbox, ["python3", "-c", append], skill=1)
        sources = {
            mount["Source"]
            for container_id in sandbox.container_ids
            for mount in docker_api.inspect_container(container_id)["Mounts"]
            if mount["Destination"] == "/workspace"
        }
        runtimes = {
            docker_api.inspect_container(container_id)["HostConfig"]["Runtime"]
            for container_id in sandbox.container_ids
        }
    assert (wrote.code, edited.code) == (0, 0), (wrote.stderr, edited.stderr)
    assert runtimes == {"runsc"}
    assert len(sources) == 1
    assert sources != {str(owned_folder)}
    assert (owned_folder / "note.txt").read_text() == "from a skill, edited"
    made = [owned_folder / name for name in ("note.txt", "made", "made/deeper/inner.txt")]
    assert {(path.stat().st_uid, path.stat().st_gid) for path in made} == {(OWNER_UID, OWNER_GID)}


async def test_a_second_skill_still_cannot_read_the_first_skills_home(
    plan_factory, empty_expert_image, owned_folder
):
    """With a workspace, skill 1 gets EACCES on skill 0's home and on a file in it.

    Seen failing with the protection removed: running the reader as skill 0's uid (what one
    shared uid for every skill, e.g. the workspace owner's, would amount to), it reads both.
    """
    plan = plan_factory()
    async with open_sandbox(
        plan, image=empty_expert_image, run=state.create_run(plan.expert), workspace=owned_folder
    ) as sandbox:
        home = f"/home/skill{sandbox.skill_uid(0)}"
        plant = f"open('{home}/private.txt', 'w').write('first skill only')"
        assert (await run_in(sandbox, ["python3", "-c", plant], skill=0)).code == 0
        peek = (
            "import errno, os\n"
            "for attempt in (lambda: os.listdir(HOME), lambda: open(HOME + '/private.txt')):\n"
            "    try:\n"
            "        attempt(); print('read')\n"
            "    except OSError as exc:\n"
            "        print(errno.errorcode[exc.errno])\n"
        ).replace("HOME", repr(home))
        seen = await run_in(sandbox, ["python3", "-c", peek], skill=1)
    assert seen.stdout.split() == [b"EACCES", b"EACCES"], seen.stderr


async def test_a_host_mount_inside_the_workspace_is_not_served_to_skills(
    plan_factory, empty_expert_image, owned_folder, tmp_path
):
    """A folder bind-mounted into the workspace on the host shows as its empty mount point.

    Skills act there with the owner's rights, so a mount inside the folder (of the state
    directory, of the home) must not come through. Seen failing with the protection removed:
    with the layer's /src bind recursive again, the skill read the canary.
    """
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "canary.txt").write_text("not the workspace")
    inside = owned_folder / "mounted"
    inside.mkdir()
    await anyio.run_process(["mount", "--bind", str(elsewhere), str(inside)])
    plan = plan_factory()
    run = state.create_run(plan.expert)
    listing = ["python3", "-c", "import os; print(os.listdir('/workspace/mounted'))"]
    try:
        async with open_sandbox(
            plan, image=empty_expert_image, run=run, workspace=owned_folder
        ) as sandbox:
            listed = await run_in(sandbox, listing)
    finally:
        await anyio.run_process(["umount", str(inside)])
    assert listed.code == 0, listed.stderr
    assert listed.stdout == b"[]\n"


async def test_teardown_removes_the_layer_its_volume_and_its_mount(
    plan_factory, empty_expert_image, owned_folder, docker_api
):
    """After the run no container, volume or host mount of its workspace layer is left."""
    plan = plan_factory()
    run = state.create_run(plan.expert)
    async with open_sandbox(plan, image=empty_expert_image, run=run, workspace=owned_folder):
        assert volumes_of_run(docker_api, run.run_id)
        assert host_mounts_naming(f"perstack-{run.run_id}-workspace")
    assert objects_of_run(docker_api, run.run_id) == []
    assert volumes_of_run(docker_api, run.run_id) == []
    assert host_mounts_naming(f"perstack-{run.run_id}-workspace") == []


async def test_a_killed_layer_fails_closed_and_its_stale_mount_is_still_cleared(
    plan_factory, empty_expert_image, owned_folder, docker_api
):
    """SIGKILLed mid-run, the layer leaves skills no workspace; teardown still clears its mount."""
    plan = plan_factory()
    run = state.create_run(plan.expert)
    label = {"label": [f"perstack-sandbox.run={run.run_id}", "perstack-sandbox.role=workspace"]}
    async with open_sandbox(
        plan, image=empty_expert_image, run=run, workspace=owned_folder
    ) as sandbox:
        (layer,) = docker_api.containers(filters=label)
        docker_api.kill(layer["Id"], signal="SIGKILL")
        with anyio.fail_after(30):
            await anyio.to_thread.run_sync(docker_api.wait, layer["Id"])
        write = "open('/workspace/after-kill.txt', 'w').write('lost')"
        refused = await run_in(sandbox, ["python3", "-c", write], skill=0)
    assert refused.code != 0
    assert not (owned_folder / "after-kill.txt").exists()
    assert objects_of_run(docker_api, run.run_id) == []
    assert volumes_of_run(docker_api, run.run_id) == []
    assert host_mounts_naming(f"perstack-{run.run_id}-workspace") == []


@pytest.mark.parametrize("after_s", [0.2, 0.6, 1.0])
async def test_cancellation_during_the_layers_start_leaves_nothing(
    plan_factory, empty_expert_image, owned_folder, docker_api, after_s
):
    """Cancelled while the volume, the layer or the sandbox is being made: nothing remains."""
    run = state.create_run("cancel")
    with anyio.move_on_after(after_s):
        async with open_sandbox(
            plan_factory(), image=empty_expert_image, run=run, workspace=owned_folder
        ):
            await anyio.sleep_forever()
    assert objects_of_run(docker_api, run.run_id) == []
    assert volumes_of_run(docker_api, run.run_id) == []
    assert host_mounts_naming(f"perstack-{run.run_id}-workspace") == []


def test_gc_after_a_sigkilled_owner_removes_the_layer_its_volume_and_its_mount(
    empty_expert_image, owned_folder, docker_api, tmp_path
):
    """An orchestrator killed with a workspace open leaves a working layer; gc removes it all."""
    expert_dir = tmp_path / "expert"
    expert_dir.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, empty_expert_image, str(expert_dir), str(owned_folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], CHILD_DEADLINE_S)
    run_id = child.stdout.readline().strip() if ready else ""
    child.kill()
    child.wait(timeout=CHILD_DEADLINE_S)
    assert run_id, child.stderr.read() if child.stderr else ""
    assert volumes_of_run(docker_api, run_id)
    assert host_mounts_naming(f"perstack-{run_id}-workspace")
    removed = engine.collect_garbage()
    assert f"volume perstack-{run_id}-workspace" in removed
    assert objects_of_run(docker_api, run_id) == []
    assert volumes_of_run(docker_api, run_id) == []
    assert host_mounts_naming(f"perstack-{run_id}-workspace") == []
