"""Privileges: who the skill is, what the kernel lets it do, and setuid binaries."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from support import Hostile

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

SKILL_UIDS = range(10001, 10033)
ZERO_CAPS = "0000000000000000"
STATUS_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")


async def test_each_skill_runs_as_its_own_unprivileged_uid(hostile: Hostile) -> None:
    """The hostile and decoy skills have distinct non-root uids, gids and no extra groups.

    Fails when: both skills get one uid (checked by hand: `skill_uid` returning a constant
    makes the uids equal), or skills run as root.
    """
    mine = await hostile.probe("import os\nemit([os.getuid(), os.getgid(), os.getgroups()])")
    decoy = await hostile.whoami("decoy")
    uid, gid, groups = mine
    assert uid in SKILL_UIDS
    assert gid == uid
    assert groups == [uid]
    assert decoy["uid"] in SKILL_UIDS
    assert decoy["uid"] != uid


async def test_no_capabilities_no_new_privileges_and_seccomp_filtering(hostile: Hostile) -> None:
    """Every capability set is empty, no-new-privileges is on and seccomp is in filter mode (2).

    gVisor's /proc/self/status has no CapAmb and no NoNewPrivs line; prctl answers for
    no-new-privileges in both runtimes.

    Fails when: `cap_drop=["ALL"]` or `no-new-privileges` is removed (checked by hand, runc:
    CapBnd becomes Docker's default set and NoNewPrivs 0), or seccomp is unconfined (checked
    by hand, runc: Seccomp 0; gVisor: the launcher without `--seccomp`, Seccomp 0).
    """
    code = (
        "import ctypes\nstatus = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        f"found = {{k: status[k].strip() for k in {STATUS_FIELDS!r} if k in status}}\n"
        "found['prctl'] = ctypes.CDLL(None).prctl(39, 0, 0, 0, 0)  # PR_GET_NO_NEW_PRIVS\n"
        "emit(found)"
    )
    status = await hostile.probe(code)
    caps = STATUS_FIELDS[:5] if hostile.isolation == "runc" else STATUS_FIELDS[:4]
    extra = {"NoNewPrivs": "1"} if hostile.isolation == "runc" else {}
    assert status == {**dict.fromkeys(caps, ZERO_CAPS), **extra, "Seccomp": "2", "prctl": 1}


async def test_setuid_binaries_never_raise_the_effective_uid(hostile: Hostile) -> None:
    """Every setuid/setgid binary found by a walk of / runs with the skill's own uid.

    Each one is started with stdin held open, and its credentials are read from /proc once it
    has executed. no-new-privileges makes the kernel ignore the set-id bits.

    Fails when: `no-new-privileges` is removed (checked by hand, with `cap_drop` removed too:
    a setuid-root binary then runs with euid 0).
    """
    code = r"""
import os, stat, subprocess, time
found = []
for root, dirs, files in os.walk('/'):
    if root in ('/proc', '/sys', '/dev'):
        dirs.clear(); continue
    for name in files:
        path = os.path.join(root, name)
        try: mode = os.lstat(path).st_mode
        except OSError: continue
        if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
            found.append(path)
seen = {}
for path in found:
    proc = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    creds = 'exited'
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            status = open(f'/proc/{proc.pid}/status').read()
            name = status.split('\n', 1)[0].split()[1]
        except OSError:
            break
        if name != 'python3':
            lines = dict(l.split(':', 1) for l in status.splitlines() if ':' in l)
            creds = lines['Uid'].split() + lines['Gid'].split()
            break
        time.sleep(0.001)
    proc.kill(); proc.wait()
    seen[path] = creds
emit({'uid': os.getuid(), 'gid': os.getgid(), 'seen': seen})
"""
    result = await hostile.probe(code)
    seen = result["seen"]
    assert seen, "the image has no set-id binary to try"
    observed = {path: creds for path, creds in seen.items() if creds != "exited"}
    assert observed, seen
    for path, creds in observed.items():
        assert set(creds[:4]) == {str(result["uid"])}, path
        assert set(creds[4:]) == {str(result["gid"])}, path


@pytest.mark.parametrize(
    ("attempt", "code"),
    [
        ("setuid-root", "import os\nos.setuid(0)"),
        ("user-namespace", "import os\nos.unshare(os.CLONE_NEWUSER)"),
        ("mount-namespace", "import os\nos.unshare(os.CLONE_NEWNS)"),
        ("raw-socket", "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_RAW, 1)"),
        ("packet-socket", "import socket\nsocket.socket(socket.AF_PACKET, socket.SOCK_RAW)"),
        ("chown-to-root", "import os\nopen('/tmp/mine', 'w').close()\nos.chown('/tmp/mine', 0, 0)"),
        (
            "mount",
            (
                "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                "if libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) != 0:\n"
                "    raise OSError(ctypes.get_errno(), 'mount')"
            ),
        ),
    ],
)
async def test_privileged_operations_are_refused(hostile: Hostile, attempt: str, code: str) -> None:
    """setuid(0), namespaces, raw sockets, chown and mount all fail with EPERM.

    Under gVisor raw and packet sockets are refused by our profile too (the launcher loads it
    into each skill), before gVisor's own kernel, which would answer EAFNOSUPPORT.

    Fails when (checked by hand): skills run as root (setuid and chown succeed); root without
    `cap_drop` and without no-new-privileges (raw and packet sockets open too); seccomp
    unconfined (a user namespace is created). Mount and a mount namespace stayed refused in
    every one of those (default seccomp, no CAP_SYS_ADMIN). Under gVisor, checked by hand:
    the launcher without `--seccomp` lets gVisor's kernel create both namespaces.
    """
    wrapped = (
        "from probes import *\ntry:\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
        + "    emit('done')\nexcept OSError as exc:\n    emit(outcome_of(exc))"
    )
    done = await hostile.python(wrapped)
    assert done["stdout"].strip() == '"EPERM"', (attempt, done)


async def test_the_decoy_skill_cannot_be_traced_or_signalled(hostile: Hostile) -> None:
    """runc: ptrace(ATTACH) and kill() on the other skill's process fail with EPERM.

    gVisor: each skill has its own container (its own gVisor kernel), so the hostile skill
    does not even see a process of the decoy's uid.

    Fails when: both skills run as one uid (checked by hand, runc: `skill_uid` returning a
    constant makes kill succeed; ptrace stays EPERM since our seccomp profile refuses it to
    everyone), or, under gVisor, the skills share one container (checked by hand:
    `containers=1` makes the decoy's processes visible).
    """
    decoy = await hostile.whoami("decoy")
    seen = await hostile.visible_pids_of(decoy["uid"])
    if hostile.isolation == "gvisor":
        assert seen == []
        return
    assert decoy["pid"] in seen
    pid = decoy["pid"]
    code = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        f"traced = libc.ptrace(16, {pid}, None, None)\n"
        "trace = outcome_of(OSError(ctypes.get_errno(), '')) if traced != 0 else 'attached'\n"
        f"try:\n    os.kill({pid}, 0)\n    signal = 'delivered'\n"
        "except OSError as exc:\n    signal = outcome_of(exc)\n"
        "emit([trace, signal])"
    )
    assert await hostile.probe(code) == ["EPERM", "EPERM"]
