"""Pure parts of the workspace layer: its container's configuration, host checks, frames, tag."""

from __future__ import annotations

import socket

import pytest

from perstack_sandbox import docker_edge, images
from perstack_sandbox.engine import _workspace
from perstack_sandbox.engine._workspace import Owner
from perstack_sandbox.errors import EngineError, UsageError
from perstack_sandbox.images import _cache

SKILLS = range(10001, 10033)


@pytest.fixture
def engine_options(monkeypatch):
    """Let a test say which security options the engine reports (none by default)."""
    options: list[str] = []
    monkeypatch.setattr(_workspace, "_security_options", lambda: tuple(options))
    return options


def config():
    """Return the layer's host config and command for a folder owned by 1000:1234."""
    return _workspace.container_config("/home/u/proj", "/vol/_data", Owner(1000, 1234), SKILLS)


def frame(stream: int, payload: bytes) -> bytes:
    """Encode one attach-stream frame."""
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


@pytest.mark.usefixtures("engine_options")
def test_the_layer_holds_only_what_mounting_and_dropping_to_the_owner_need():
    """All capabilities dropped but four; no-new-privileges, read-only root, no network, FUSE."""
    host, _ = config()
    assert host["cap_drop"] == ["ALL"]
    assert sorted(host["cap_add"]) == ["SETGID", "SETPCAP", "SETUID", "SYS_ADMIN"]
    assert host["security_opt"] == ["no-new-privileges:true"]
    assert host["read_only"] is True
    assert host["network_mode"] == "none"
    assert host["devices"] == ["/dev/fuse:/dev/fuse:rwm"]
    assert host["pids_limit"] > 0
    assert host["mem_limit"] == host["memswap_limit"] > 0


@pytest.mark.usefixtures("engine_options")
def test_the_folder_is_bound_privately_and_only_the_view_is_shared_with_the_host():
    """/src is the user's folder alone (no mount inside it, default propagation); /view rshared."""
    host, _ = config()
    mounts = {mount["Target"]: mount for mount in host["mounts"]}
    assert set(mounts) == {"/src", "/view"}
    assert mounts["/src"]["Source"] == "/home/u/proj"
    assert mounts["/src"]["BindOptions"] == {"NonRecursive": True}
    assert mounts["/view"]["Source"] == "/vol/_data"
    assert mounts["/view"]["BindOptions"] == {"Propagation": "rshared"}


@pytest.mark.usefixtures("engine_options")
def test_each_covered_folder_is_an_empty_read_only_tmpfs_over_the_folders_copy():
    """A cover under /src is a read-only tmpfs, mounted after /src (deeper targets go later)."""
    host, _ = _workspace.container_config(
        "/p", "/v", Owner(1000, 1234), SKILLS, ["/src/state", "/src/a/expert"]
    )
    covers = [(m["Target"], m["Type"], m["ReadOnly"]) for m in host["mounts"][2:]]
    assert covers == [("/src/state", "tmpfs", True), ("/src/a/expert", "tmpfs", True)]


def test_only_private_folders_inside_the_workspace_are_covered(tmp_path):
    """Folders inside it are covered, also named through a link; nothing else is.

    Not covered: a folder outside, the workspace itself, a missing one, or one above it
    (check_workspace refuses the overlaps).
    """
    folder = tmp_path / "work"
    (folder / "deep" / "state").mkdir(parents=True)
    (folder / "expert").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "link").symlink_to(folder)
    private = [
        tmp_path / "link" / "deep" / "state",
        folder / "expert",
        tmp_path / "outside",
        folder,
        folder / "missing",
        tmp_path,
    ]
    assert _workspace.covered(str(folder), private) == ["/src/deep/state", "/src/expert"]


@pytest.mark.usefixtures("engine_options")
def test_the_command_names_the_owner_and_the_range_of_skill_uids():
    """The entry point gets the folder's uid and gid and the first and last skill uid."""
    _, command = config()
    assert command == ["1000", "1234", "10001", "10032"]


def test_an_engine_with_apparmor_runs_the_layer_unconfined(engine_options):
    """Docker's AppArmor profile denies every mount, so the layer alone is unconfined."""
    engine_options.append("name=apparmor")
    host, _ = config()
    assert host["security_opt"] == ["no-new-privileges:true", "apparmor=unconfined"]


@pytest.mark.parametrize("option", ["name=userns", "name=rootless"])
def test_an_engine_that_remaps_uids_is_refused_before_anything_starts(engine_options, option):
    """Rootless or userns-remap engines cannot create files as the owner: refused, with advice."""
    engine_options.append(option)
    with pytest.raises(EngineError, match=r"does not remap uids.*run without --workspace"):
        _workspace.check_host()


def test_a_host_without_fuse_is_refused_with_what_to_do(engine_options, monkeypatch, tmp_path):
    """A local engine whose host lacks /dev/fuse is refused, naming `modprobe fuse`."""
    del engine_options
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(_workspace, "FUSE_DEVICE", str(tmp_path / "no-fuse"))
    with pytest.raises(EngineError, match="modprobe fuse"):
        _workspace.check_host()


def test_a_remote_engine_is_not_judged_by_this_hosts_devices(engine_options, monkeypatch, tmp_path):
    """With DOCKER_HOST on TCP, this host's /dev says nothing about the engine's host."""
    del engine_options
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.5:2376")
    monkeypatch.setattr(_workspace, "FUSE_DEVICE", str(tmp_path / "no-fuse"))
    _workspace.check_host()


def test_engine_errors_get_advice_naming_the_cause():
    """A missing /dev/fuse and a data root that is not shared each get their own advice."""
    assert "modprobe fuse" in _workspace._advice('error gathering "/dev/fuse": no such file')
    assert "restart the engine" in _workspace._advice(
        "/x is mounted on / but is not a shared mount"
    )
    assert "doctor" in _workspace._advice("anything else")


def test_the_owner_is_read_from_the_folder_and_a_missing_folder_is_bad_input(tmp_path):
    """owner_of gives the folder's uid and gid; a missing folder is a UsageError (exit 2)."""
    found = tmp_path.stat()
    assert _workspace.owner_of(str(tmp_path)) == Owner(found.st_uid, found.st_gid)
    with pytest.raises(UsageError, match="cannot be read"):
        _workspace.owner_of(str(tmp_path / "missing"))


def test_frames_are_split_by_stream_and_a_partial_frame_is_kept():
    """Whole stdout and stderr frames come out in order; a cut frame stays for the next read."""
    data = frame(2, b"warning\n") + frame(1, b"ready\n") + frame(1, b"later")[:10]
    frames, rest = docker_edge.split_frames(data)
    assert frames == [(2, b"warning\n"), (1, b"ready\n")]
    assert rest == frame(1, b"later")[:10]


@pytest.mark.parametrize("changed", _cache.WORKSPACE_FILES)
def test_the_layers_image_tag_follows_its_recipe_files(monkeypatch, changed):
    """Changing any file of the recipe gives a new tag, so a changed layer is rebuilt."""
    before = images.workspace_image_name()
    assert before.startswith(f"{images.WORKSPACE_REPO}:")
    shipped = _cache.recipe

    def edited(name: str) -> bytes:
        return shipped(name) + (b"\n# changed\n" if name == changed else b"")

    monkeypatch.setattr(_cache, "recipe", edited)
    assert images.workspace_image_name() != before


def test_the_layer_is_ready_once_its_stdout_says_so_even_split_across_reads():
    """`ready` on stdout ends the wait; stderr before it does not, nor a frame cut in two."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        data = frame(2, b"bindfs: note\n") + frame(1, b"ready\n")
        theirs.sendall(data[:11])
        theirs.sendall(data[11:])
        _workspace._wait_ready(ours)


def test_a_layer_that_stops_before_ready_is_reported_with_its_escaped_stderr():
    """The layer's own words (control characters escaped) are the error's message."""
    ours, theirs = socket.socketpair()
    with ours:
        theirs.sendall(frame(2, b"perstack-workspace: mounting /view: Permission denied\x1b]0\n"))
        theirs.close()
        with pytest.raises(EngineError, match=r"stopped: .*mounting /view: Permission denied\\x1b"):
            _workspace._wait_ready(ours)
