"""The sandbox's seccomp profile: Docker's default minus what a hostile skill does not need.

Docker's default profile is written for general containers. Ours is built from it as data:
`images/seccomp-upstream.json` is Docker's profile verbatim (see `SOURCE`), and `build_profile`
applies the removals below, each with its one-line reason. `python -m
perstack_sandbox.images._seccomp` writes the result to `images/seccomp.json` (what the sandbox
gets under runc), its gVisor form to `images/seccomp-gvisor.json` (`for_gvisor`), and the
table of removals to `images/seccomp.md`; `--check` fails when a file differs from what the
rules give (a unit test runs the same comparison).

The engine takes the profile's JSON text, not a path (`security_opt seccomp=<json>`). Under
gVisor, runsc applies it (in its gVisor form, with `--oci-seccomp`) to the container's first
process only; each skill loads `seccomp.json` itself (images/seccomp-exec.py).
"""

from __future__ import annotations

import copy
import functools
import json
import sys
from pathlib import Path
from typing import Any, Final

from perstack_sandbox.errors import EngineError
from perstack_sandbox.images._cache import RECIPES, recipe

# The recipes folder (in a checkout, a link to the repository's images/): `main` writes there.
RECIPES_DIR: Final = Path(__file__).resolve().parent / RECIPES
UPSTREAM_NAME: Final = "seccomp-upstream.json"
PROFILE_NAME: Final = "seccomp.json"
GVISOR_PROFILE_NAME: Final = "seccomp-gvisor.json"
DOC_NAME: Final = "seccomp.md"
SOURCE: Final = (
    "Docker's default seccomp profile, `seccomp/default.json` of the Go module "
    "`github.com/moby/profiles/seccomp` v0.2.3 (vendored by moby/moby at commit b985e23), "
    "Apache-2.0"
)
ALLOW: Final = "SCMP_ACT_ALLOW"
ERRNO: Final = "SCMP_ACT_ERRNO"
ENOSYS: Final = 38

# System calls upstream allows that no skill needs (Node.js, Python, npm, uv and what they
# start), with the reason each one goes.
REMOVED: Final[dict[str, str]] = {
    "ptrace": "skills debug nothing; PTRACE_TRACEME was the way in of CVE-2019-13272",
    "process_vm_readv": "reads another process's memory by pid; skills debug nothing",
    "process_vm_writev": "writes another process's memory by pid; skills debug nothing",
    "personality": "execution domains exist for old binaries; UNAME26 leaked kernel stack "
    "(CVE-2012-0957)",
    "modify_ldt": "16-bit segments for DOS and Wine code; CVE-2015-3290 and CVE-2017-17053",
    "name_to_handle_at": "file handles bypass path lookup (with open_by_handle_at, the "
    "'shocker' container escape); nothing in a skill uses them",
    "msgget": "System V message queues: msg_msg is the usual heap-spray object of kernel "
    "exploits (CVE-2021-22555, CVE-2022-0185); Node.js and Python never use them",
    "msgsnd": "see msgget",
    "msgrcv": "see msgget",
    "msgctl": "see msgget",
    "socketcall": "the old socket multiplexer (a native call on s390x, the 32-bit one on "
    "x86): seccomp cannot read its pointed-to arguments, so it would open any address "
    "family past the socket rules; Node.js and Python call socket() directly",
}
# Rule-wide removals (the same reasons for many system calls at once).
CAPS_REASON: Final = (
    "rules that allow a system call only with a capability (bpf, perf_event_open, unshare, "
    "setns, clone with namespace flags, kcmp, pidfd_getfd, mbind, open_by_handle_at, mount, "
    "...) are dropped: the sandbox holds no capability, so they could only ever open a door "
    "if a capability came back"
)
SUBARCH_REASON: Final = (
    "32-bit entry points (i386 and x32 on x86_64, arm on aarch64) are dropped: skills run "
    "64-bit code, and the compat entry is a second, older system call surface "
    "(CVE-2010-3081, CVE-2014-0038)"
)
# Upstream lets `socket` reach every address family but AF_ALG and AF_VSOCK, and `socketpair`
# every family. Each family is kernel code any process can reach (TIPC, RDS, CAN, X.25, LLC,
# AppleTalk, ... each had its privilege escalation), so ours allows these only, and within IP
# only TCP and UDP (SCTP, MPTCP, UDP-Lite, L2TP and SMC are protocols of AF_INET). Anything
# else meets the default action: EPERM, where the kernel itself would answer EAFNOSUPPORT.
SocketRule = tuple[str, int, tuple[int, ...] | None, str]
SOCKET_FAMILIES: Final[tuple[SocketRule, ...]] = (
    ("AF_UNIX", 1, None, "local sockets: Node.js and Python child processes, asyncio, npm"),
    ("AF_INET", 2, (0, 6, 17), "TCP and UDP over IPv4 (0 is the type's default protocol)"),
    ("AF_INET6", 10, (0, 6, 17), "TCP and UDP over IPv6"),
    (
        "AF_NETLINK",
        16,
        (0,),
        (
            "NETLINK_ROUTE only: glibc's getaddrinfo (AI_ADDRCONFIG) and getifaddrs (Node.js's "
            "os.networkInterfaces, Python's if_nameindex); nf_tables, xfrm and generic netlink "
            "stay out of reach"
        ),
    ),
)
SOCKETPAIR_FAMILIES: Final = ("AF_UNIX",)  # the only family Linux pairs besides TIPC
SOCKET_CALLS: Final = frozenset({"socket", "socketpair"})

# Refused by upstream's default action already; the security suite probes them all the same.
# This engine's built-in profile (Docker 20.10) still allows io_uring.
ALREADY_REFUSED: Final[dict[str, str]] = {
    "io_uring_setup": "io_uring: CVE-2022-29582, CVE-2023-2598, CVE-2024-0582; refused "
    "upstream since Docker 25 (Docker 20.10's built-in profile allows it)",
    "userfaultfd": "stalls kernel copies at will, the race primitive of many exploits",
    "keyctl": "the kernel keyring is not namespaced",
    "add_key": "the kernel keyring is not namespaced",
    "request_key": "the kernel keyring is not namespaced",
    "move_pages": "NUMA page moves",
    "migrate_pages": "NUMA page moves",
}


# How runsc's `--oci-seccomp` differs from libseccomp, and what the gVisor form does about it.
# gVisor names system calls by its own table; where its name differs, the rule carries both.
GVISOR_ALIASES: Final[dict[str, str]] = {
    "pselect6": "pselect",  # gVisor releases before mid-2023 (Debian's runsc among them)
}
# gVisor answers EPERM for every ERRNO rule (it ignores `errnoRet`). Upstream answers clone3
# with ENOSYS so that glibc falls back to clone, whose flags a filter can inspect; EPERM would
# make every thread creation fail. Under gVisor clone3 is allowed instead: gVisor's own kernel
# answers it (ENOSYS in Debian's runsc; newer releases create any namespace inside gVisor's
# kernel, never on the host).
GVISOR_ALLOWED_INSTEAD_OF_ENOSYS: Final = frozenset({"clone3"})


def _without_removed(rule: dict[str, Any]) -> dict[str, Any] | None:
    if rule.get("action") != ALLOW:
        return rule
    names = [name for name in rule["names"] if name not in REMOVED]
    return {**rule, "names": names} if names else None


def _arg(index: int, value: int) -> dict[str, Any]:
    return {"index": index, "value": value, "op": "SCMP_CMP_EQ"}


def socket_rules() -> list[dict[str, Any]]:
    """Return the rules that allow `socket` and `socketpair` for `SOCKET_FAMILIES` only."""
    rules = []
    for name, family, protocols, _reason in SOCKET_FAMILIES:
        for protocol in protocols or (None,):
            args = [_arg(0, family)] + ([] if protocol is None else [_arg(2, protocol)])
            rules.append({"names": ["socket"], "action": ALLOW, "args": args})
        if name in SOCKETPAIR_FAMILIES:
            rules.append({"names": ["socketpair"], "action": ALLOW, "args": [_arg(0, family)]})
    return rules


def _without_socket_calls(rule: dict[str, Any]) -> dict[str, Any] | None:
    names = [name for name in rule["names"] if name not in SOCKET_CALLS]
    return {**rule, "names": names} if names else None


def build_profile(upstream: dict[str, Any]) -> dict[str, Any]:
    """Return our profile: `upstream` minus `REMOVED`, capability rules and 32-bit entries.

    `socket` and `socketpair` are allowed for `SOCKET_FAMILIES` only, whatever upstream says.

    Raises:
        ValueError: a removal names a system call upstream does not allow (a stale reason),
            or upstream no longer refuses one of `ALREADY_REFUSED`.

    """
    profile = copy.deepcopy(upstream)
    rules = [rule for rule in profile["syscalls"] if not rule.get("includes", {}).get("caps")]
    allowed_before = {name for rule in rules if rule["action"] == ALLOW for name in rule["names"]}
    stale = sorted(set(REMOVED) - allowed_before)
    if stale:
        raise ValueError(f"upstream does not allow {stale} (without a capability): drop them")
    kept = [made for rule in rules if (made := _without_removed(rule)) is not None]
    kept = [made for rule in kept if (made := _without_socket_calls(rule)) is not None]
    profile["syscalls"] = [*kept, *socket_rules()]
    profile["archMap"] = [{**arch, "subArchitectures": []} for arch in profile["archMap"]]
    still = sorted(set(ALREADY_REFUSED) & allowed_names(profile))
    if still:
        raise ValueError(f"{still} are allowed now: add them to REMOVED with a reason")
    return profile


def for_gvisor(profile: dict[str, Any]) -> dict[str, Any]:
    """Return `profile` in the form runsc's `--oci-seccomp` reads as libseccomp reads `profile`.

    Raises:
        ValueError: an ERRNO rule answers something else than EPERM and is not one that gVisor
            answers itself (`GVISOR_ALLOWED_INSTEAD_OF_ENOSYS`).

    """
    made = copy.deepcopy(profile)
    rules = []
    for rule in made["syscalls"]:
        if rule["action"] == ERRNO and rule.get("errnoRet", 1) != 1:
            odd = set(rule["names"]) - GVISOR_ALLOWED_INSTEAD_OF_ENOSYS
            if odd or rule["errnoRet"] != ENOSYS:
                raise ValueError(f"gVisor would answer EPERM instead of {rule['errnoRet']}: {odd}")
            rules.append({**rule, "action": ALLOW, "errnoRet": None})
            continue
        names = rule["names"]
        aliases = [GVISOR_ALIASES[name] for name in names if name in GVISOR_ALIASES]
        rules.append({**rule, "names": [*names, *aliases]})
    made["syscalls"] = [{k: v for k, v in rule.items() if v is not None} for rule in rules]
    return made


def allowed_names(profile: dict[str, Any]) -> set[str]:
    """Return every system call an ALLOW rule of `profile` names (whatever its conditions)."""
    return {
        name for rule in profile["syscalls"] if rule["action"] == ALLOW for name in rule["names"]
    }


def render_doc(upstream: dict[str, Any]) -> str:
    """Return the Markdown page that lists every removal and its reason."""
    rows = "\n".join(f"| `{name}` | {reason} |" for name, reason in REMOVED.items())
    refused = "\n".join(f"| `{name}` | {reason} |" for name, reason in ALREADY_REFUSED.items())
    families = "\n".join(
        f"| `{name}` | {'any' if protocols is None else ', '.join(map(str, protocols))} | "
        f"{'yes' if name in SOCKETPAIR_FAMILIES else 'no'} | {reason} |"
        for name, _family, protocols, reason in SOCKET_FAMILIES
    )
    gated = sorted(
        {
            name
            for rule in upstream["syscalls"]
            if rule.get("includes", {}).get("caps")
            for name in rule["names"]
        }
    )
    return f"""\
# The sandbox's seccomp profile

Generated by `python -m perstack_sandbox.images._seccomp` from `seccomp-upstream.json`: {SOURCE}.
Do not edit `seccomp.json`, `seccomp-gvisor.json` or this page by hand; change the rules in
`orchestrator/images/_seccomp.py`.

`seccomp.json` is Docker's default profile with these changes, and applies to the sandbox
container (the skills) only; the proxy runs our own code under the engine's default profile.

Under gVisor, runsc applies a container's profile only to the container's first process, and
skills are started with `docker exec`: so the launcher loads `seccomp.json` into each skill
itself (`seccomp-exec.py`, with libseccomp), and gVisor's kernel enforces it. The container's
first process gets `seccomp-gvisor.json` through runsc's `--oci-seccomp` (as `doctor --fix`
registers it). That is the same profile in the form runsc reads: system calls gVisor names
differently carry both names ({", ".join(f"`{a}` for `{b}`" for b, a in GVISOR_ALIASES.items())}),
and, as runsc answers EPERM for every refusal (it ignores `errnoRet`), the rule that answers
{", ".join(f"`{n}`" for n in sorted(GVISOR_ALLOWED_INSTEAD_OF_ENOSYS))} with `ENOSYS` (so that
glibc falls back to `clone`, whose flags the filter checks) becomes an allow: gVisor's own
kernel answers it (`ENOSYS` in Debian's runsc).

## Removed system calls

| system call | why it goes |
|---|---|
{rows}

## Removed rules

- Capability rules: {CAPS_REASON}. They named: {", ".join(f"`{n}`" for n in gated)}
  (`clone` stays allowed without namespace flags, and `clone3` answers `ENOSYS`, as upstream).
- 32-bit entries: {SUBARCH_REASON}.

## Socket address families

Upstream allows `socket` for every address family but `AF_ALG` and `AF_VSOCK`, and
`socketpair` for every family. Each family is kernel code that any process reaches (TIPC, RDS,
CAN, X.25, LLC, AppleTalk, ... each had its privilege escalation), so this profile allows only
these, and within IP only TCP and UDP (SCTP, MPTCP, UDP-Lite and L2TP are protocols of
`AF_INET`). Every other family or protocol gets `EPERM` (where the kernel would answer
`EAFNOSUPPORT`).

| family | protocols (third argument) | `socketpair` | why it stays |
|---|---|---|---|
{families}

## Refused already (upstream's default action), probed by the security suite all the same

| system call | why it is refused |
|---|---|
{refused}
"""


def _upstream() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(recipe(UPSTREAM_NAME))
    return loaded


def profile_text(profile: dict[str, Any]) -> str:
    """Return `profile` as the text of `images/seccomp.json` (stable, reviewable)."""
    return json.dumps(profile, indent=1) + "\n"


@functools.cache
def sandbox_profile(*, gvisor: bool = False) -> str:
    """Return the sandbox's profile as compact JSON text, for `security_opt seccomp=<json>`.

    With `gvisor`, the form runsc reads (see `for_gvisor`).

    Raises:
        EngineError: the profile shipped in images/ is missing or not JSON (a broken
            installation).

    """
    name = GVISOR_PROFILE_NAME if gvisor else PROFILE_NAME
    try:
        loaded = json.loads(recipe(name))
    except (OSError, ValueError) as exc:
        raise EngineError(f"the seccomp profile {name} is unusable: {exc}") from exc
    return json.dumps(loaded, separators=(",", ":"))


def main(argv: list[str]) -> int:
    """Write (or with `--check`, compare) both profiles and their page in images/."""
    upstream = _upstream()
    profile = build_profile(upstream)
    wanted = {
        RECIPES_DIR / PROFILE_NAME: profile_text(profile),
        RECIPES_DIR / GVISOR_PROFILE_NAME: profile_text(for_gvisor(profile)),
        RECIPES_DIR / DOC_NAME: render_doc(upstream),
    }
    if "--check" in argv:
        stale = [path.name for path, text in wanted.items() if path.read_text("utf-8") != text]
        for name in stale:
            message = f"{name} is out of date: run python -m {__spec__.name}"
            print(message, file=sys.stderr)  # noqa: T201
        return 1 if stale else 0
    for path, text in wanted.items():
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
