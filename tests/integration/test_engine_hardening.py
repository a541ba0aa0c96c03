"""Hardening inside a started sandbox: users, capabilities, seccomp, filesystem, limits, mounts."""

from __future__ import annotations

import json

import pytest
from engine_support import run_in

from perstack_sandbox import state
from perstack_sandbox.engine import open_sandbox
from perstack_sandbox.images import recipe
from perstack_sandbox.plan import DEFAULT_CPUS, DEFAULT_MEMORY_BYTES, DEFAULT_PIDS, Limits

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.usefixtures("state_home")]

# Reads what the kernel says about the probe itself and its sandbox, as JSON.
PROBE = r"""
import errno, json, os
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines())
init = dict(line.split(":\t", 1) for line in open("/proc/1/status").read().splitlines())
def first(*paths):
    for path in paths:
        if os.path.exists(path):
            return open(path).read().strip()
    return None
def write_error(path):
    try:
        with open(path, "w"):
            return None
    except OSError as exc:
        return errno.errorcode[exc.errno]
mounts = [line.split() for line in open("/proc/self/mountinfo")]
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "init_uid": int(init["Uid"].split()[0]),
    "cap_eff": status["CapEff"].strip(), "cap_prm": status["CapPrm"].strip(),
    "cap_bnd": status["CapBnd"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
    "seccomp": status["Seccomp"].strip(),
    "root_write": write_error("/etc/probe"), "usr_write": write_error("/usr/bin/probe"),
    "tmp_write": write_error("/tmp/probe"),
    "pids_max": first("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"),
    "memory_max": first(
        "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"
    ),
    "docker_sockets": [
        p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)
    ],
    "mounts": [[m[4], m[m.index("-") + 1], m[m.index("-") + 2], m[5]] for m in mounts],
}))
"""
# Filesystem types the kernel and Docker provide (not host folders).
VIRTUAL_FS = {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "overlay"}
# Files Docker itself writes per container and bind-mounts (generated, not host folders).
DOCKER_FILES = {"/etc/resolv.conf", "/etc/hostname", "/etc/hosts"}


async def probe(plan, image, **kwargs):
    """Start a sandbox for `plan`, run the probe as the first skill, return its report."""
    async with open_sandbox(plan, image=image, run=state.create_run(plan.expert), **kwargs) as sb:
        result = await run_in(sb, ["python3", "-c", PROBE])
        assert result.code == 0, result.stderr
        return result.json(), sb


async def test_skills_run_unprivileged_with_no_capabilities_and_seccomp(
    plan_factory, empty_expert_image
):
    """A skill has a non-root uid, no capabilities at all, no_new_privs set, seccomp filtering."""
    report, sandbox = await probe(plan_factory(), empty_expert_image)
    assert report["uid"] == report["gid"] == sandbox.skill_uid(0)
    assert report["groups"] == [sandbox.skill_uid(0)]
    assert report["init_uid"] == 10000
    assert int(report["cap_eff"], 16) == 0
    assert int(report["cap_prm"], 16) == 0
    assert int(report["cap_bnd"], 16) == 0
    assert report["no_new_privs"] == "1"
    assert report["seccomp"] == "2"


async def test_the_root_filesystem_is_read_only_and_tmp_is_writable(
    plan_factory, empty_expert_image
):
    """Writes to the image's files fail with EROFS (or EACCES); the tmpfs scratch works."""
    report, _ = await probe(plan_factory(), empty_expert_image)
    assert report["root_write"] in {"EROFS", "EACCES"}
    assert report["usr_write"] in {"EROFS", "EACCES"}
    assert report["tmp_write"] is None
    root = next(m for m in report["mounts"] if m[0] == "/")
    assert "ro" in root[3].split(",")


async def test_limits_of_the_plan_are_enforced_by_the_kernel(plan_factory, empty_expert_image):
    """Pids and memory limits from the plan show in the sandbox's own cgroup."""
    limits = Limits(memory_bytes=384 * 1024**2, cpus=1.0, pids=64)
    report, _ = await probe(plan_factory(limits=limits), empty_expert_image)
    assert report["pids_max"] == "64"
    assert int(report["memory_max"]) == 384 * 1024**2


async def test_default_limits_are_two_gib_two_cpus_and_256_pids(
    plan_factory, empty_expert_image, docker_api
):
    """Without limits in the config the container gets 2 GiB, 2 CPUs and 256 pids, no swap."""
    plan = plan_factory()
    async with open_sandbox(plan, image=empty_expert_image, run=state.create_run("x")) as sb:
        host = docker_api.inspect_container(sb.container_id)["HostConfig"]
    assert host["Memory"] == DEFAULT_MEMORY_BYTES == 2 * 1024**3
    assert host["MemorySwap"] == host["Memory"]
    assert host["NanoCpus"] == int(DEFAULT_CPUS * 1e9) == 2_000_000_000
    assert host["PidsLimit"] == DEFAULT_PIDS == 256


async def test_no_docker_socket_and_no_host_folder_beyond_expert_and_workspace(
    plan_factory, empty_expert_image, tmp_path
):
    """Only /expert (read-only) and /workspace (read-write) come from the host; no socket."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    report, _ = await probe(plan_factory(), empty_expert_image, workspace=workspace)
    assert report["docker_sockets"] == []
    host_mounts = {
        m[0]: m[3] for m in report["mounts"] if m[1] not in VIRTUAL_FS and m[0] not in DOCKER_FILES
    }
    assert set(host_mounts) == {"/expert", "/workspace"}
    assert "ro" in host_mounts["/expert"].split(",")
    assert "rw" in host_mounts["/workspace"].split(",")
    assert not any("docker.sock" in m[0] for m in report["mounts"])


async def test_the_container_config_carries_every_hardening_flag(
    plan_factory, empty_expert_image, docker_api
):
    """The engine holds cap_drop ALL, no-new-privileges, read-only root, non-root user, labels."""
    plan = plan_factory()
    run = state.create_run(plan.expert)
    async with open_sandbox(plan, image=empty_expert_image, run=run) as sb:
        sandbox = docker_api.inspect_container(sb.container_id)
        proxy = docker_api.inspect_container(sb.proxy_container_id)
    for container in (sandbox, proxy):
        host = container["HostConfig"]
        assert host["CapDrop"] == ["ALL"]
        assert not host["CapAdd"]
        assert not host["Privileged"]
        assert host["ReadonlyRootfs"]
        assert any(opt.startswith("no-new-privileges") for opt in host["SecurityOpt"])
        assert not any("seccomp=unconfined" in opt for opt in host["SecurityOpt"])
        assert container["Config"]["User"] == "10000:10000"
        assert container["Config"]["Labels"]["perstack-sandbox.run"] == run.run_id
        assert container["Config"]["Labels"]["perstack-sandbox.owner-pid"].isdigit()
    assert all(m["Type"] == "bind" for m in sandbox["Mounts"])
    assert proxy["Mounts"] == []


async def test_the_sandbox_runs_on_runc_under_our_seccomp_profile_and_the_proxy_under_the_default(
    plan_factory, empty_expert_image, docker_api
):
    """The sandbox carries images/seccomp.json (the text, on runc); the proxy, Docker's own."""
    plan = plan_factory()
    run = state.create_run(plan.expert)
    async with open_sandbox(plan, image=empty_expert_image, run=run) as sb:
        sandbox = docker_api.inspect_container(sb.container_id)["HostConfig"]
        proxy = docker_api.inspect_container(sb.proxy_container_id)["HostConfig"]
    profiles = [o.removeprefix("seccomp=") for o in sandbox["SecurityOpt"] if "seccomp=" in o]
    assert [json.loads(text) for text in profiles] == [json.loads(recipe("seccomp.json"))]
    assert sandbox["Runtime"] == proxy["Runtime"] == "runc"
    assert not any(option.startswith("seccomp=") for option in proxy["SecurityOpt"])


async def test_the_engines_log_of_the_proxy_is_capped(plan_factory, empty_expert_image, docker_api):
    """The engine's copy of the proxy's output rotates at 16 MiB, two files (decision 76).

    Fails when (checked by hand): the proxy is created without `log_config` (the engine's
    default json-file log has no size limit: `Config` is empty).
    """
    plan = plan_factory()
    run = state.create_run(plan.expert)
    async with open_sandbox(plan, image=empty_expert_image, run=run) as sb:
        proxy = docker_api.inspect_container(sb.proxy_container_id)["HostConfig"]
    assert proxy["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "16m", "max-file": "2"},
    }
