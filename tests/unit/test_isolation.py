"""Isolation: choosing runc or gVisor, refusing a missing gVisor, registering runsc (no Docker)."""

from __future__ import annotations

import dataclasses
import json
import sys

import anyio
import pytest

from perstack_sandbox import engine, launch, state
from perstack_sandbox.engine import _containers, _doctor, _gvisor, _sandbox
from perstack_sandbox.errors import EngineError, IsolationError, UsageError
from perstack_sandbox.images import _seccomp
from perstack_sandbox.isolation import DEFAULT_ISOLATION, ISOLATIONS, check_isolation
from perstack_sandbox.plan import Limits
from perstack_sandbox.run import open_run

READY = _gvisor.RunscStatus("/usr/bin/runsc", "runsc version 1", _gvisor.RUNSC_ARGS)
UNREGISTERED = _gvisor.RunscStatus("/usr/bin/runsc", "runsc version 1", None)
ABSENT = _gvisor.RunscStatus(None, "", None)
PARTIAL = _gvisor.RunscStatus(None, "", ("--network=host",))


def spec(isolation: str, containers: int = 1) -> _containers.SandboxSpec:
    """Return a sandbox spec with default limits under `isolation`."""
    return _containers.SandboxSpec(
        run_id="r",
        expert="e",
        image="i",
        limits=Limits(),
        expert_dir="/x",
        workspace=None,
        policy="{}",
        isolation=isolation,  # type: ignore[arg-type]
        containers=containers,
    )


def test_runc_is_the_default_and_the_only_other_choice_is_gvisor():
    """The choices are runc and gvisor, runc first and by default (library and CLI alike)."""
    assert (ISOLATIONS, DEFAULT_ISOLATION) == (("runc", "gvisor"), "runc")
    assert launch.LaunchOptions.__dataclass_fields__["isolation"].default == "runc"


def test_an_unknown_isolation_is_bad_input():
    """A value that is neither runc nor gvisor is a UsageError (exit 2), naming the choices."""
    with pytest.raises(UsageError, match="'kata' is not one of runc, gvisor"):
        check_isolation("kata")


def test_runc_needs_no_check_and_runs_on_runc(monkeypatch):
    """Asking for runc never looks for runsc, and names the runc runtime explicitly."""
    monkeypatch.setattr(_gvisor, "runsc_status", lambda: pytest.fail("runc looked for runsc"))
    assert _gvisor.runtime_for("runc") == "runc"


@pytest.mark.parametrize("status", [ABSENT, UNREGISTERED])
def test_a_missing_gvisor_is_refused_with_how_to_install_it(monkeypatch, status):
    """GVisor asked for and not registered: IsolationError (exit 1) that says how to install."""
    monkeypatch.setattr(_gvisor, "runsc_status", lambda: status)
    with pytest.raises(IsolationError, match="not registered") as caught:
        engine.require_isolation("gvisor")
    assert "perstack-sandbox doctor --fix" in str(caught.value)
    assert "apt-get install runsc" in str(caught.value)


def test_a_runsc_registered_without_the_needed_arguments_is_refused(monkeypatch):
    """A registration without --oci-seccomp is refused, naming what it lacks."""
    monkeypatch.setattr(_gvisor, "runsc_status", lambda: PARTIAL)
    with pytest.raises(IsolationError, match="lacks --oci-seccomp"):
        _gvisor.runtime_for("gvisor")


def test_a_registered_runsc_runs_gvisor(monkeypatch):
    """With runsc registered with both arguments, gVisor runs on the runtime `runsc`."""
    monkeypatch.setattr(_gvisor, "runsc_status", lambda: READY)
    assert engine.require_isolation("gvisor") == "gvisor"
    assert _gvisor.runtime_for("gvisor") == "runsc"


@pytest.mark.parametrize("entry", ["library", "cli"])
def test_a_missing_gvisor_is_refused_before_building_anything(tmp_path, monkeypatch, entry):
    """open_run and the CLI's launch check the isolation before any build (never a silent runc)."""
    tmp_path.chmod(0o755)  # an Expert folder the skills can read: only the isolation is wrong
    (tmp_path / "perstack.toml").write_text(
        '[experts."e"]\ninstruction = "t"\n[experts."e".skills."s"]\n'
        'type = "mcpStdioSkill"\ncommand = "python3"\n'
    )
    (tmp_path / "perstack.toml").chmod(0o644)
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "state"))
    monkeypatch.setattr(_gvisor, "runsc_status", lambda: ABSENT)
    built = lambda *_a, **_k: pytest.fail("an image was built")  # noqa: E731 - a stand-in
    monkeypatch.setattr(engine, "ensure_expert_image", built)
    config = tmp_path / "perstack.toml"
    if entry == "library":
        started = open_run(config, "e", isolation="gvisor")
    else:
        started = launch.open_expert(launch.LaunchOptions(config, "e", isolation="gvisor"))

    async def start() -> None:
        async with started:
            pytest.fail("started")

    with pytest.raises(IsolationError, match="doctor --fix"):
        anyio.run(start)
    assert not state.runs_dir().exists()


def test_under_gvisor_the_launcher_loads_seccomp_and_under_runc_it_does_not():
    """Skills under gVisor load the profile themselves; under runc the container's applies."""
    assert _sandbox.launcher_argv("runc") == [_sandbox.LAUNCHER]
    assert _sandbox.launcher_argv("gvisor") == [_sandbox.LAUNCHER, "--seccomp"]


def test_each_skill_execs_in_its_own_container_under_gvisor_and_in_the_one_under_runc():
    """container_for maps a skill uid to its container; with one container, always that one."""
    shared = engine.Sandbox("r", "c0", "10.0.0.2", 3128, "p", "1.2.3.4", "n")
    own = engine.Sandbox(
        "r", "c0", "10.0.0.2", 3128, "p", "1.2.3.4", "n", container_ids=("c0", "c1", "c2")
    )
    first = engine.SKILL_UID_FIRST
    assert [shared.container_for(first + i) for i in range(3)] == ["c0", "c0", "c0"]
    assert [own.container_for(first + i) for i in range(3)] == ["c0", "c1", "c2"]


def test_under_gvisor_the_pids_limit_is_rlimit_nproc_with_a_host_backstop():
    """runc: the container's pids limit; gVisor: NPROC = the limit, host limit far above it."""
    pids = Limits().pids
    assert _containers._pids_limits(spec("runc")) == {"pids_limit": pids}
    limits = _containers._pids_limits(spec("gvisor"))
    (nproc,) = limits["ulimits"]
    assert (nproc["Name"], nproc["Soft"], nproc["Hard"]) == ("nproc", pids, pids)
    assert limits["pids_limit"] == _gvisor.host_pids_limit(pids) > 7 * pids


def test_each_skill_of_a_sandbox_weighs_one_container_in_the_cpu_scheduler():
    """Three skills in one container: three times the default weight; one skill: no setting."""
    assert _containers.sandbox_cpu_weight(spec("runc")) == {}
    three = dataclasses.replace(spec("runc"), skills=3)
    assert _containers.sandbox_cpu_weight(three) == {"cpu_shares": 3 * 1024}
    assert _containers.sandbox_cpu_weight(dataclasses.replace(three, skills=0)) == {}


def test_the_sandbox_gets_the_profile_form_its_runtime_reads():
    """Runc gets seccomp.json; gVisor its runsc form (pselect alias, clone3 left to gVisor)."""
    runc = json.loads(_containers.sandbox_security_opt("runc")[1].removeprefix("seccomp="))
    gvisor = json.loads(_containers.sandbox_security_opt("gvisor")[1].removeprefix("seccomp="))
    assert runc == json.loads(_seccomp.recipe(_seccomp.PROFILE_NAME))
    assert gvisor == _seccomp.for_gvisor(runc)
    assert "pselect" in _seccomp.allowed_names(gvisor) - _seccomp.allowed_names(runc)
    assert _seccomp.allowed_names(gvisor) - _seccomp.allowed_names(runc) == {"pselect", "clone3"}


def test_the_gvisor_form_refuses_an_errno_rule_it_cannot_express():
    """An ERRNO rule answering something other than EPERM or clone3's ENOSYS stops the build."""
    profile = {"syscalls": [{"names": ["open"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
    with pytest.raises(ValueError, match="EPERM instead of 13"):
        _seccomp.for_gvisor(profile)


def test_registering_runsc_keeps_every_other_key_of_daemon_json(tmp_path):
    """merge_runtime sets runtimes.runsc and leaves the rest (and the file's mode) alone."""
    config = tmp_path / "daemon.json"
    config.write_text(json.dumps({"log-level": "warn", "runtimes": {"kata": {"path": "/k"}}}))
    config.chmod(0o600)
    _gvisor.merge_runtime(config, {"path": "/usr/bin/runsc", "runtimeArgs": ["--oci-seccomp"]})
    assert json.loads(config.read_text()) == {
        "log-level": "warn",
        "runtimes": {
            "kata": {"path": "/k"},
            "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--oci-seccomp"]},
        },
    }
    assert config.stat().st_mode & 0o777 == 0o600
    assert [path.name for path in tmp_path.iterdir()] == ["daemon.json"]


def test_registering_runsc_creates_a_missing_daemon_json(tmp_path):
    """With no daemon.json yet, one holding only the runtime is written."""
    config = tmp_path / "docker" / "daemon.json"
    _gvisor.merge_runtime(config, {"path": "/r"})
    assert json.loads(config.read_text()) == {"runtimes": {"runsc": {"path": "/r"}}}


def test_a_daemon_json_that_is_not_json_is_left_untouched(tmp_path):
    """An unreadable daemon.json is an EngineError, and the file is not rewritten."""
    config = tmp_path / "daemon.json"
    config.write_text("{ not json")
    with pytest.raises(EngineError, match="not readable JSON"):
        _gvisor.merge_runtime(config, {"path": "/r"})
    assert config.read_text() == "{ not json"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["dockerd", "--config-file=/a.json"], "/a.json"),
        (["dockerd", "--config-file", "/b.json"], "/b.json"),
        (["dockerd", "-H", "unix:///x.sock"], "/etc/docker/daemon.json"),
    ],
)
def test_the_daemon_json_dockerd_reads_comes_from_its_command_line(argv, expected):
    """--config-file (either spelling) wins over /etc/docker/daemon.json."""
    assert str(_gvisor.config_file_of(argv)) == expected


@pytest.mark.parametrize(
    ("status", "problem", "mark", "detail"),
    [
        (READY, "", "ok", "registered (--network=host --oci-seccomp)"),
        (ABSENT, "", "warn", "runsc not installed"),
        (UNREGISTERED, "", "warn", "installed, not registered with the engine"),
        (PARTIAL, "", "warn", "registered without --oci-seccomp"),
        (ABSENT, "cannot install gVisor (this is not root)", "FAIL", "runsc not installed"),
    ],
)
def test_doctor_says_whether_gvisor_is_installed_and_registered(
    monkeypatch, status, problem, mark, detail
):
    """The gvisor line: ok when ready, a warning when missing, a failure when --fix failed."""
    monkeypatch.setattr(_gvisor, "runsc_status", lambda: status)
    check = _doctor.gvisor_check(problem)
    shown = "ok" if check.is_ok else "warn" if check.is_optional else "FAIL"
    assert (shown, check.name) == (mark, "gvisor")
    assert detail in check.detail
    assert (problem or "doctor --fix") in check.advice


def test_fix_installs_nothing_when_runsc_is_ready(monkeypatch):
    """Doctor --fix leaves a ready runsc alone: no apt-get, no daemon.json, no SIGHUP."""
    monkeypatch.setattr(_gvisor, "runsc_status", lambda: READY)
    monkeypatch.setattr(_gvisor, "_apt_install", lambda _p: pytest.fail("installed"))
    monkeypatch.setattr(_gvisor, "_register", lambda *_a: pytest.fail("registered"))
    _gvisor.install_and_register(lambda _line: None)


def test_fix_refuses_to_install_without_root(monkeypatch):
    """Not root: installing is refused with the install hint (doctor shows it as a failure)."""
    monkeypatch.setattr(_gvisor, "runsc_status", lambda: ABSENT)
    monkeypatch.setattr(_gvisor.os, "geteuid", lambda: 1000)
    with pytest.raises(EngineError, match="this is not root"):
        _gvisor.install_and_register(lambda _line: None)


def test_registering_a_remote_engine_is_refused(monkeypatch):
    """An engine on another host cannot be registered from here: say so, touch nothing."""
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.9:2376")
    with pytest.raises(EngineError, match="not on this host"):
        _gvisor._local_dockerd()


def test_the_cli_refuses_an_unknown_isolation_with_exit_2(monkeypatch, capsys):
    """`tools --isolation kata` is a bad command line: exit 2, the choices named."""
    from perstack_sandbox import cli  # noqa: PLC0415

    monkeypatch.setattr(sys, "argv", ["perstack-sandbox", "tools", "e", "--isolation", "kata"])
    with pytest.raises(SystemExit) as caught:
        cli.main()
    assert caught.value.code == 2
    assert "'kata' is not one of 'runc', 'gvisor'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["tools", "e"], ["call", "e", "echo"], ["run", "e"]])
def test_isolation_reaches_the_launch_of_tools_call_and_run(tmp_path, monkeypatch, command):
    """tools, call and run pass --isolation gvisor on to the launch options."""
    from perstack_sandbox import cli  # noqa: PLC0415

    seen: list[launch.LaunchOptions] = []
    for report in ("tools_report", "call_report", "serve"):
        monkeypatch.setattr(launch, report, lambda options, *_a, **_k: seen.append(options) or "")
    argv = ["perstack-sandbox", *command, "--isolation", "gvisor", "-c", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    cli.main()
    assert [options.isolation for options in seen] == ["gvisor"]
