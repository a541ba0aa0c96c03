"""Files: secrets of the image, the Docker socket, host files via symlinks, the root filesystem."""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING

import anyio
import pytest
from support import EXPERT, HIDDEN_TARGETS, quiet

from perstack_sandbox import state
from perstack_sandbox.docker_edge import LABEL_ROLE
from perstack_sandbox.launch import LaunchOptions, open_expert

if TYPE_CHECKING:
    from pathlib import Path

    from support import Hostile

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

# EROFS where only the read-only mount stops the write (/var/tmp is world-writable in the
# image); EACCES where the file's mode stops it first.
READ_ONLY_TARGETS_RUNC = {
    "/var/tmp/evil": "EROFS",  # noqa: S108 - a path inside the sandbox
    "/usr/local/bin/evil": "EROFS",
    "/etc/ld.so.preload": "EROFS",
    "/opt/perstack/evil": "EROFS",
    "/evil": "EROFS",
    "/etc/passwd": "EACCES",
    "/expert/new-file": "EROFS",
    "/expert/perstack.toml": "EACCES",
}
# gVisor checks the folder's permissions before the read-only mount: only the world-writable
# /var/tmp shows EROFS (the root's read-only mount); /expert's is in the mount table test.
READ_ONLY_TARGETS = {
    "runc": READ_ONLY_TARGETS_RUNC,
    "gvisor": {
        path: "EACCES" if path != "/var/tmp/evil" else "EROFS"  # noqa: S108 - in the sandbox
        for path in READ_ONLY_TARGETS_RUNC
    },
}
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock")
EXPECTED_BINDS = {"/expert", "/etc/resolv.conf", "/etc/hostname", "/etc/hosts"}
STATE_NAMES = ("audit.jsonl", "meta.json", "skills.log", "tools.jsonl", "policy.json", "proxy.log")
CONFIG_NAMES = (".env", ".env.local", "perstack.toml")


async def test_etc_shadow_is_unreadable(hostile: Hostile) -> None:
    """/etc/shadow exists but the skill's uid may not read it.

    Fails when: skills run as root (checked by hand: an exec as uid 0 reads it).
    """
    assert await hostile.probe("emit(open_outcome('/etc/shadow'))") == "EACCES"


@pytest.mark.parametrize("path", DOCKER_SOCKETS)
async def test_no_engine_socket_is_mounted(hostile: Hostile, path: str) -> None:
    """The Docker and containerd sockets do not exist in the sandbox.

    Fails when: the socket is bind-mounted (not checked by hand: handing the engine to a
    hostile skill on a shared machine is not an experiment worth running).
    """
    assert await hostile.probe(f"emit(open_outcome({path!r}))") == "ENOENT"


async def test_no_unix_socket_of_the_host_exists_anywhere_in_the_sandbox(hostile: Hostile) -> None:
    """A walk of the whole filesystem finds no socket file at all.

    Fails when: any host socket is mounted into the sandbox (not checked by hand).
    """
    code = (
        "import os, stat\nfound = []\n"
        "for root, dirs, files in os.walk('/'):\n"
        "    if root in ('/proc', '/sys'): dirs.clear(); continue\n"
        "    for name in files:\n"
        "        try: mode = os.lstat(os.path.join(root, name)).st_mode\n"
        "        except OSError: continue\n"
        "        if stat.S_ISSOCK(mode): found.append(os.path.join(root, name))\n"
        "emit(found)"
    )
    assert await hostile.probe(code) == []


@pytest.mark.parametrize("path", sorted(READ_ONLY_TARGETS_RUNC))
async def test_the_root_filesystem_and_the_expert_folder_are_read_only(
    hostile: Hostile, path: str
) -> None:
    """Creating or appending to files outside the scratch areas fails (EROFS, or EACCES).

    Fails when: the container is started without `read_only=True` (checked by hand, runc:
    every EROFS case then fails: /var/tmp/evil is written, the others turn EACCES), or /expert
    is mounted read-write.
    """
    expected = READ_ONLY_TARGETS[hostile.isolation][path]
    assert await hostile.probe(f"emit(open_outcome({path!r}, 'ab'))") == expected


async def test_a_program_written_to_scratch_space_cannot_be_executed(hostile: Hostile) -> None:
    """Scratch space (/tmp, the skill's home) is mounted noexec: a dropped binary does not run.

    Fails when: the tmpfs mounts are made `exec` (checked by hand: both copies run; note that
    Docker's tmpfs default is already noexec, so dropping the word alone changes nothing).
    """
    code = (
        "import os, shutil, subprocess\nresults = []\n"
        "for folder in ('/tmp', os.environ['HOME']):\n"
        "    target = os.path.join(folder, 'dropped')\n"
        "    shutil.copy('/bin/true', target); os.chmod(target, 0o755)\n"
        "    try: subprocess.run([target], check=False); results.append('ran')\n"
        "    except OSError as exc: results.append(outcome_of(exc))\n"
        "emit(results)"
    )
    assert await hostile.probe(code) == ["EACCES", "EACCES"]


async def test_only_the_expert_folder_and_the_workspace_come_from_the_host(
    hostile: Hostile,
) -> None:
    """Only /expert (read-only), its env-file covers, the workspace and Docker's /etc files.

    /workspace is the workspace layer's FUSE view, never the folder itself, and there is no
    other host path. runc: a bind mount's root is a folder of its source filesystem, and the
    view shows as FUSE (nosuid, nodev). gVisor serves every host path (the image's root
    included) through its file proxy, as 9p mounts: the view is one of them (its FUSE nature
    is the host's), so the engine is asked where each sandbox container's /workspace comes from.

    Fails when: any other host path is mounted into the sandbox (checked by hand, runc: one
    extra read-only bind mount), or the workspace folder is bound directly (checked by hand).
    """
    is_bind = (
        "f[3] != '/' and not f[4].startswith(('/proc', '/sys', '/dev'))"
        if hostile.isolation == "runc"
        else "kind == '9p' and f[4] != '/'"
    )
    code = (
        "binds, fuse = {}, {}\n"
        "for line in open('/proc/self/mountinfo'):\n"
        "    f = line.split()\n"
        "    kind = f[f.index('-') + 1]\n"
        "    if kind.startswith('fuse'):\n"
        "        fuse[f[4]] = [kind, *sorted(set(f[5].split(',')) & {'nosuid', 'nodev'})]\n"
        f"    elif {is_bind}:\n"
        "        binds[f[4]] = f[5].split(',')[0]\n"
        "emit([binds, fuse])"
    )
    binds, fuse = await hostile.probe(code)
    if hostile.isolation == "runc":
        assert set(binds) == EXPECTED_BINDS | HIDDEN_TARGETS
        assert fuse == {"/workspace": ["fuse.bindfs", "nodev", "nosuid"]}
    else:
        assert set(binds) == EXPECTED_BINDS | HIDDEN_TARGETS | {"/workspace"}
        assert fuse == {}
    assert {binds[target] for target in (*HIDDEN_TARGETS, "/expert")} == {"ro"}
    sandboxes = [c for c in hostile.containers() if c.labels.get(LABEL_ROLE) == "sandbox"]
    sources = {
        mount["Source"]
        for container in sandboxes
        for mount in container.attrs["Mounts"]
        if mount["Destination"] == "/workspace"
    }
    assert len(sources) == 1
    assert sources != {str(hostile.workspace)}


async def test_a_setuid_or_setgid_mode_never_reaches_the_host_through_the_workspace(
    hostile: Hostile,
) -> None:
    """A skill's chmod u+s in /workspace fails (EPERM), and no host file gets an s bit.

    The kernel already drops g+s from a skill (never in the files' group); the workspace
    layer's seccomp filter refuses u+s, which an owner may otherwise set.

    Fails when: the layer's filter lets the mode through (checked by hand: without the chmod
    rules in images/perstack-workspace.py, the host file was setuid and the chmod succeeded).
    """
    code = (
        "import os\n"
        "open('/workspace/suid-probe', 'w').close()\n"
        "os.mkdir('/workspace/sgid-probe')\n"
        "tried = []\n"
        "for path, mode in (('suid-probe', 0o4755), ('suid-probe', 0o6755),\n"
        "                   ('suid-probe', 0o2755), ('sgid-probe', 0o2775)):\n"
        "    try:\n"
        "        os.chmod('/workspace/' + path, mode)\n"
        "        tried.append('ok')\n"
        "    except OSError as exc:\n"
        "        tried.append(outcome_of(exc))\n"
        "emit(tried)"
    )
    try:
        tried = await hostile.probe(code)
        modes = [(hostile.workspace / name).stat().st_mode for name in ("suid-probe", "sgid-probe")]
    finally:
        (hostile.workspace / "suid-probe").unlink(missing_ok=True)
        if (hostile.workspace / "sgid-probe").exists():
            (hostile.workspace / "sgid-probe").rmdir()
    assert tried[:2] == ["EPERM", "EPERM"]
    assert [mode & (stat.S_ISUID | stat.S_ISGID) for mode in modes] == [0, 0]


async def test_a_symlink_to_a_host_path_resolves_inside_the_sandbox_only(
    hostile: Hostile, tmp_path: Path
) -> None:
    """A link planted in the workspace to a host file points at nothing the sandbox can see.

    Fails when: the host path is mounted into the sandbox (the link then reads it; not
    checked by hand).
    """
    secret = tmp_path / "host-only-secret.txt"
    secret.write_text("host secret\n", encoding="utf-8")
    secret.chmod(0o644)
    code = (
        f"import os\nos.symlink({str(secret)!r}, '/workspace/escape')\n"
        "emit([open_outcome('/workspace/escape'), open_outcome('/proc/1/root/etc/hostname')])"
    )
    try:
        assert await hostile.probe(code) == ["ENOENT", "EACCES"]
    finally:
        (hostile.workspace / "escape").unlink(missing_ok=True)


async def test_the_orchestrator_follows_no_symlink_the_sandbox_wrote(
    hostile: Hostile, tmp_path: Path
) -> None:
    """Links planted in the workspace under the names of run files lead nowhere after a run.

    A fresh run gets a workspace; the sandbox plants links named like the state files and the
    config files, pointing at host files; after teardown those files are unchanged and the
    run's own files are regular files.

    Fails when: the orchestrator writes into the workspace (or reads config from it); not
    checked by hand: the orchestrator has no code path that touches the workspace to remove.
    """
    targets = {name: tmp_path / f"target-{name}" for name in (*STATE_NAMES, *CONFIG_NAMES)}
    for target in targets.values():
        target.write_text("untouched\n", encoding="utf-8")
    before = {name: target.stat().st_mtime_ns for name, target in targets.items()}
    workspace = tmp_path / "workspace"
    workspace.mkdir(mode=0o777)
    workspace.chmod(0o777)
    links = {name: str(target) for name, target in targets.items()}
    options = LaunchOptions(
        config_path=hostile.run_config,
        expert=EXPERT,
        workspace=workspace,
        prefix_tools=True,
        progress=quiet,
        isolation=hostile.isolation,
    )
    with anyio.fail_after(120):
        async with open_expert(options) as gateway:
            code = f"import os\nfor n, t in {links!r}.items(): os.symlink(t, '/workspace/' + n)"
            result = await gateway.call_tool("hostile__run_python", {"code": code})
            assert not result.is_error
            run = state.latest_run()
            assert run is not None
    for name, target in targets.items():
        assert target.read_text(encoding="utf-8") == "untouched\n", name
        assert target.stat().st_mtime_ns == before[name], name
        assert (workspace / name).is_symlink()
    for path in run.path.iterdir():
        assert path.is_file(), path
        assert not path.is_symlink(), path
    assert run.read_meta()["status"] == "finished"


async def test_a_workspace_that_overlaps_the_expert_folder_is_refused(
    hostile: Hostile,
) -> None:
    """The sandbox must not write the next run's perstack.toml or .env: no overlapping workspace.

    Fails when: `launch.prepare` accepts a workspace that is, contains or lies inside the
    Expert's folder (checked by hand: `check_workspace` as a no-op). The sandbox could then add
    allowedDomains and skills to its own perstack.toml, or plant `.env` links, for the next run.
    """
    from perstack_sandbox.errors import UsageError  # noqa: PLC0415
    from perstack_sandbox.launch import prepare  # noqa: PLC0415

    folder = hostile.run_config.parent
    for workspace in (folder, folder.parent, folder / "sub"):
        options = LaunchOptions(config_path=hostile.run_config, expert=EXPERT, workspace=workspace)
        with pytest.raises(UsageError, match="workspace"):
            prepare(options)
