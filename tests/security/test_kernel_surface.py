"""Kernel attack surface: system calls that recent privilege escalations went through.

Each probe (`expert/kernel_probes.py`) makes one such call with valid arguments. The same probes
run on the host first, as the test's own user (root under `make test`: bpf, setns and
open_by_handle_at need privileges), and must all succeed there: a probe that cannot succeed
proves nothing when it fails in the sandbox. In the sandbox every one is refused by the
sandbox's seccomp profile (`images/seccomp.json`): under runc through the container's profile,
under gVisor loaded by the launcher into each skill and enforced by gVisor's kernel.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from support import HERE

if TYPE_CHECKING:
    from support import Hostile

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

sys.path.insert(0, str(HERE / "expert"))
from kernel_probes import (  # noqa: E402 - the same module runs in the sandbox
    ALLOWED_SOCKETS,
    PROBES,
    REFUSED_SOCKETS,
)

PROBE_SCRIPT = HERE / "expert" / "kernel_probes.py"
HOST_DEADLINE_S = 120
I386 = "int 0x80 (i386 getpid)"
CLONE3 = "clone3(CLONE_NEWUSER)"
REFUSED = {
    # clone3 is answered ENOSYS (by the profile, as upstream) so that glibc falls back to clone,
    # whose flags the filter checks. The 32-bit entry is not in the profile's architectures at
    # all: the kernel kills the caller.
    "runc": {**dict.fromkeys(PROBES, "EPERM"), CLONE3: "ENOSYS", I386: "killed by SIGSYS"},
    # The gVisor profile lets clone3 through to gVisor's kernel, which has no clone3 (ENOSYS).
    # gVisor has no 32-bit entry at all: it reads eax as its own 64-bit call number (20 is
    # writev, which fails on the stray descriptor); the host's compat entry is never reached.
    "gvisor": {**dict.fromkeys(PROBES, "EPERM"), CLONE3: "ENOSYS", I386: "EBADF"},
}


def probe_on_host(*args: str) -> dict[str, str]:
    """Run the probe script on the host (as this test's user) with `args`; return the outcomes."""
    done = subprocess.run(
        [sys.executable, str(PROBE_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=HOST_DEADLINE_S,
        check=True,
    )
    outcomes: dict[str, str] = json.loads(done.stdout)
    return outcomes


async def probe_in_sandbox(hostile: Hostile, function: str) -> dict[str, str]:
    """Call `kernel_probes.<function>()` in the sandbox as the hostile skill; return outcomes."""
    done = await hostile.python(
        f"import json, kernel_probes\nprint(json.dumps(kernel_probes.{function}()))"
    )
    assert done["exit"] == 0, done
    outcomes: dict[str, str] = json.loads(done["stdout"])
    return outcomes


@pytest.fixture(scope="module")
def on_host() -> dict[str, str]:
    """Run every probe on the host (as this test's user); return the outcomes."""
    return probe_on_host()


@pytest.fixture(scope="module")
async def in_sandbox(hostile: Hostile) -> dict[str, str]:
    """Run every probe in the sandbox as the hostile skill; return the outcomes."""
    return await probe_in_sandbox(hostile, "run_all")


@pytest.mark.parametrize("probe", list(PROBES))
async def test_each_escalation_system_call_works_on_the_host_and_is_refused_in_the_sandbox(
    probe: str, on_host: dict[str, str], in_sandbox: dict[str, str], hostile: Hostile
) -> None:
    """The call succeeds on the host and is refused in the sandbox (EPERM, or as `REFUSED` says).

    Fails when (checked by hand, runc): the sandbox gets the engine's default profile instead
    of ours (`sandbox_security_opt` without the seccomp entry): io_uring_setup, personality,
    ptrace, modify_ldt, msgget and the 32-bit getpid succeed. With `seccomp=unconfined` every
    probe succeeds except bpf, setns and open_by_handle_at, which the missing capabilities (and
    `unprivileged_bpf_disabled`) still refuse. Under gVisor (checked by hand): without the
    launcher's `--seccomp` (`engine.launcher_argv`) 19 probes fail, gVisor's own kernel
    answering them (io_uring_setup, unshare, clone, ptrace, msgget... succeed there).
    """
    assert on_host[probe] == "ok", f"the probe's arguments are not valid on this host: {on_host}"
    assert in_sandbox[probe] == REFUSED[hostile.isolation][probe], in_sandbox


@pytest.fixture(scope="module")
def sockets_on_host() -> dict[str, str]:
    """Open every socket case on the host (as this test's user); return the outcomes."""
    return probe_on_host("sockets")


@pytest.fixture(scope="module")
async def sockets_in_sandbox(hostile: Hostile) -> dict[str, str]:
    """Open every socket case in the sandbox as the hostile skill; return the outcomes."""
    return await probe_in_sandbox(hostile, "socket_outcomes")


@pytest.mark.parametrize("case", [*REFUSED_SOCKETS, "socketpair AF_TIPC"])
async def test_each_uncommon_socket_family_or_protocol_is_refused_by_the_profile(
    case: str, sockets_on_host: dict[str, str], sockets_in_sandbox: dict[str, str]
) -> None:
    """socket() of a family or protocol outside the profile's list fails with EPERM.

    The host's kernel never answers EPERM for these (it has no TIPC, RDS, CAN, ...:
    EAFNOSUPPORT; VSOCK, MPTCP, UDP-Lite and netlink's netfilter open), so EPERM in the
    sandbox is the profile's answer. Fails when (checked by hand): the profile keeps
    upstream's socket rules (`build_profile` without `socket_rules`, regenerated): under
    runc 21 of the 25 cases reach the kernel (EAFNOSUPPORT, ESOCKTNOSUPPORT, or they open:
    MPTCP, UDP-Lite, ICMP, four netlink protocols); AF_ALG and AF_VSOCK (upstream refuses
    them) and AF_PACKET and AF_XDP (no CAP_NET_RAW) still give EPERM. Under gVisor 23 fail
    (its own kernel answers AF_PACKET and AF_XDP).
    """
    assert sockets_on_host[case] != "EPERM", sockets_on_host
    assert sockets_in_sandbox[case] == "EPERM", sockets_in_sandbox


@pytest.mark.parametrize("case", [*ALLOWED_SOCKETS, "socketpair AF_UNIX"])
async def test_the_sockets_node_and_python_need_still_open(
    case: str, sockets_in_sandbox: dict[str, str]
) -> None:
    """Unix, TCP and UDP over IPv4 and IPv6, and NETLINK_ROUTE sockets open in the sandbox."""
    assert sockets_in_sandbox[case] == "ok", sockets_in_sandbox
