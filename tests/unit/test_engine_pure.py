"""Pure parts of the engine and image builder (no Docker needed).

Recipes, tags, build-stream parsing, owner labels, the exec stream demultiplexer and the
state directory.
"""

from __future__ import annotations

import json
import os
import socket

import anyio
import docker.errors
import pytest
import requests

from perstack_sandbox import docker_edge as _docker
from perstack_sandbox import engine, images, state
from perstack_sandbox.engine._containers import is_removal_in_progress
from perstack_sandbox.engine._exec import ChunkReceiveStream, ExecProcess, StdinStream
from perstack_sandbox.errors import ImageBuildError
from perstack_sandbox.images import _build
from perstack_sandbox.plan import EgressRule, PackageSpec, SandboxPlan, SkillLaunch, SseSkill
from perstack_sandbox_proxy._policy import parse_policy

NPM = PackageSpec(manager="npm", name="@scope/srv", version_spec="^1.2", slug="srv-1")
PYPI = PackageSpec(manager="pypi", name="tool-x", version_spec="==2.0", slug="tool-2")


def plan_with(*packages: PackageSpec) -> SandboxPlan:
    """Return a plan whose skills preinstall `packages`."""
    return SandboxPlan(
        expert="e",
        config_dir="/x",
        skills=tuple(
            SkillLaunch(name=p.slug, kind="npx", argv=("a",), package=p, env_names=(), workdir="/")
            for p in packages
        ),
    )


def test_each_package_gets_its_own_install_step_with_quoted_specs():
    """Npm installs into its slug's prefix, PyPI with a PEP 440 spec; names are shell-quoted."""
    text = images.expert_dockerfile("base:1", (NPM, PYPI))
    assert text.startswith("FROM base:1\n")
    assert "npm install --prefix /opt/perstack/npm/srv-1" in text
    assert "'@scope/srv@^1.2'" in text
    assert "uv tool install" in text
    assert "tool-x==2.0" in text
    assert text.rstrip().endswith("USER 10000")


def test_a_bare_version_becomes_an_exact_pin_for_pypi():
    """A PyPI version without an operator is pinned with ==."""
    bare = PYPI.model_copy(update={"version_spec": "1.5"})
    assert "tool-x==1.5" in images.expert_dockerfile("b", (bare,))


def test_build_settings_are_args_never_env_so_skills_do_not_inherit_them():
    """The per-expert recipe sets tool settings as ARG: ENV would leak into every exec."""
    text = images.expert_dockerfile("b", (NPM,))
    assert "\nENV " not in text
    assert "ARG UV_PYTHON_DOWNLOADS=never" in text


def test_the_expert_tag_changes_with_base_specs_and_nothing_else():
    """Same plan and base give the same tag; a new base id or spec gives a new one."""
    plan = plan_with(NPM, PYPI)
    tag = images.expert_image_name(plan, "sha256:a")
    assert tag == images.expert_image_name(plan_with(NPM, PYPI), "sha256:a")
    assert tag.startswith("perstack-sandbox/expert:")
    assert images.expert_image_name(plan, "sha256:b") != tag
    bumped = NPM.model_copy(update={"version_spec": "^2"})
    assert images.expert_image_name(plan_with(bumped, PYPI), "sha256:a") != tag


def test_the_host_ca_choice_is_part_of_the_base_tag(monkeypatch):
    """Opting out of the host CA bundle names a different base image."""
    monkeypatch.setenv(images.HOST_CA_ENV, "1")
    trusted = images.base_image_name()
    monkeypatch.setenv(images.HOST_CA_ENV, "0")
    assert not images.is_host_ca_enabled()
    untrusted = images.base_image_name()
    if images.HOST_CA_BUNDLE.is_file():
        assert trusted != untrusted
    assert images.is_host_ca_enabled(host_ca=True)


def test_a_failed_step_raises_with_that_steps_output_only():
    """The error names the failing step and holds its output, not earlier steps' output."""
    events = [
        {"stream": "Step 1/2 : FROM b\n"},
        {"stream": " ---> abc\nearlier noise\n"},
        {"stream": "Step 2/2 : RUN npm install x\n"},
        {"stream": "npm error 404 Not Found - x\n"},
        {"error": "The command returned a non-zero code: 1"},
    ]
    with pytest.raises(ImageBuildError) as failed:
        _build._follow(events, "t:1", lambda _line: None)
    message = str(failed.value)
    assert "Step 2/2 : RUN npm install x" in message
    assert "404 Not Found" in message
    assert "earlier noise" not in message


def test_a_successful_stream_returns_the_image_id_and_reports_progress():
    """Progress sees each non-empty line; the id comes from the aux record."""
    seen: list[str] = []
    events = [{"stream": "Step 1/1 : FROM b\n\n"}, {"aux": {"ID": "sha256:ff"}}]
    assert _build._follow(events, "t", seen.append) == "sha256:ff"
    assert seen == ["Step 1/1 : FROM b"]


def test_the_last_marker_line_wins():
    """Resolved versions are read from the last marker line of the build output."""
    lines = ["PERSTACK_PACKAGES=[1]", "x", "PERSTACK_PACKAGES=[2]"]
    assert _build.last_marker(lines, "PERSTACK_PACKAGES=") == "[2]"
    assert _build.last_marker(["x"], "PERSTACK_PACKAGES=") is None


def test_this_process_is_alive_and_a_reaped_child_is_not():
    """Owner labels of this process read as alive; those of a finished child do not."""
    labels = _docker.owner_labels()
    assert _docker.is_owner_alive(labels)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    dead = {**labels, _docker.LABEL_OWNER_PID: str(pid)}
    assert not _docker.is_owner_alive(dead)


def test_a_reused_pid_does_not_keep_a_dead_owner_alive():
    """A live pid with another start time is a different process: the owner is gone."""
    labels = {**_docker.owner_labels(), _docker.LABEL_OWNER_START: "1"}
    assert not _docker.is_owner_alive(labels)


def test_owners_on_other_hosts_are_always_treated_as_alive():
    """Gc never removes what a process on another host owns."""
    labels = {**_docker.owner_labels(), _docker.LABEL_OWNER_HOST: "elsewhere.invalid"}
    labels[_docker.LABEL_OWNER_PID] = "999999999"
    assert _docker.is_owner_alive(labels)


def frame(kind: int, payload: bytes) -> bytes:
    """Return one multiplexed frame as the engine writes it."""
    return bytes([kind, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


@pytest.fixture
def anyio_backend():
    """Run async tests on asyncio."""
    return "asyncio"


@pytest.mark.anyio
async def test_frames_split_across_reads_are_demultiplexed_in_order():
    """Stdout and stderr frames, cut at arbitrary byte boundaries, arrive intact and apart."""
    ours, engine = socket.socketpair()
    sock = await anyio.abc.SocketStream.from_socket(ours)
    out_send, out_receive = anyio.create_memory_object_stream[bytes](10)
    err_send, err_receive = anyio.create_memory_object_stream[bytes](10)
    process = ExecProcess(
        exec_id="e",
        container_id="c",
        user=10001,
        stdin=StdinStream(sock),
        stdout=ChunkReceiveStream(out_receive),
        stderr=ChunkReceiveStream(err_receive),
        _sock=sock,
        _out=out_send,
        _err=err_send,
    )
    wire = frame(1, b"hello ") + frame(2, b"oops\n") + frame(1, b"world\n")
    async with anyio.create_task_group() as group:
        group.start_soon(process.pump)
        for start in range(0, len(wire), 5):
            await anyio.to_thread.run_sync(engine.sendall, wire[start : start + 5])
        await process.stdin.send(b"in")
        assert await anyio.to_thread.run_sync(engine.recv, 2) == b"in"
        await process.stdin.aclose()
        assert await anyio.to_thread.run_sync(engine.recv, 1) == b""  # EOF reached the engine
        engine.close()
    out = b"".join([chunk async for chunk in _chunks(process.stdout)])
    err = b"".join([chunk async for chunk in _chunks(process.stderr)])
    assert out == b"hello world\n"
    assert err == b"oops\n"
    await sock.aclose()


async def _chunks(stream):
    try:
        while True:
            yield await stream.receive(3)
    except anyio.EndOfStream:
        return


def test_a_run_folder_holds_meta_and_empty_logs(tmp_path, monkeypatch):
    """create_run makes runs/<id>/ with meta.json and the log files; list and open find it."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path))
    run = state.create_run("expert-a")
    assert run.path.parent == tmp_path / "runs"
    assert run.audit_path.read_bytes() == b""
    assert run.skills_log_path.exists()
    meta = json.loads(run.meta_path.read_text())
    assert (meta["expert"], meta["pid"], meta["status"]) == ("expert-a", os.getpid(), "starting")
    run.update_meta(status="finished")
    assert state.open_run(run.run_id).read_meta()["status"] == "finished"
    assert state.latest_run() == run
    assert state.open_run("nope") is None


def test_run_ids_sort_by_time_and_are_safe_in_docker_names():
    """Run ids start with a UTC timestamp and use only [0-9a-f-]."""
    first, second = state.new_run_id(), state.new_run_id()
    assert first != second
    assert set(first) <= set("0123456789abcdef-")
    assert first[:8].isdigit()


def sandbox_with(credentials):
    """Return a Sandbox value (nothing started) holding `credentials`."""
    return engine.Sandbox("run", "c", "10.0.0.2", 3128, "p", "10.0.0.3", "n", credentials)


def test_each_skills_proxy_url_carries_its_own_credential():
    """A skill's proxy variables name its slug and token; without a skill there is none."""
    sandbox = sandbox_with({"@scope/search": "tok-1", "mail": "tok-2"})
    env = sandbox.proxy_env("@scope/search")
    assert {env[k] for k in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")} == {
        "http://-scope-search:tok-1@10.0.0.2:3128"
    }
    assert sandbox.proxy_env("mail")["HTTPS_PROXY"] == "http://mail:tok-2@10.0.0.2:3128"
    assert sandbox.proxy_env()["HTTPS_PROXY"] == "http://10.0.0.2:3128"
    assert sandbox.host_proxy_url_for("mail") == "http://mail:tok-2@10.0.0.3:3128"
    assert "tok-1" not in repr(sandbox)


def test_proxy_policy_gives_each_skill_its_own_list_under_its_token():
    """Stdio skills keep their own allowedDomains, a remote skill gets its endpoint's host."""
    plan = SandboxPlan(
        expert="e",
        config_dir="/x",
        skills=(
            SkillLaunch(
                name="search",
                kind="local",
                argv=("a",),
                package=None,
                env_names=(),
                workdir="/",
                allowed_domains=("api.example.com",),
            ),
            SkillLaunch(
                name="decoy", kind="local", argv=("a",), package=None, env_names=(), workdir="/"
            ),
        ),
        sse_skills=(
            SseSkill(name="remote", endpoint="https://mcp.example.net/sse", host="mcp.example.net"),
        ),
        egress=(
            EgressRule(pattern="api.example.com", sources=("search",)),
            EgressRule(pattern="mcp.example.net", sources=("remote",)),
        ),
    )
    tokens = {"search": "t1", "decoy": "t2", "remote": "t3"}
    policy = engine.proxy_policy(plan, "run-1", (), tokens)
    assert policy["allowedDomains"] == ["api.example.com", "mcp.example.net"]
    assert policy["skills"] == {
        "t1": {"skill": "search", "allowedDomains": ["api.example.com"]},
        "t2": {"skill": "decoy", "allowedDomains": []},
        "t3": {"skill": "remote", "allowedDomains": ["mcp.example.net"]},
    }
    assert parse_policy(policy).grant_for(b"t2").allowed_domains == ()


def test_a_removal_already_in_progress_is_recognised_and_other_conflicts_are_not():
    """A concurrent removal (409 "already in progress") is tolerated; other 409s are errors."""

    def conflict(text):
        response = requests.Response()
        response.status_code = 409
        return docker.errors.APIError("409", response=response, explanation=text)

    assert is_removal_in_progress(conflict("removal of container abc is already in progress"))
    assert not is_removal_in_progress(conflict("container abc is paused"))
