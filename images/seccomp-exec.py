"""seccomp-exec PROFILE ARGV...: load a Docker-format seccomp profile into this process, then exec.

Used by perstack-launch under gVisor. runsc applies the container's seccomp profile only to the
container's first process, and skills are started with `docker exec`; so each skill installs
the sandbox's profile on itself before it runs (gVisor's kernel then enforces it on the skill
and everything it starts). The filter is built by libseccomp (Debian's python3-seccomp), which
resolves the profile the way runc does: rules for other architectures or needing capabilities
are left out (the sandbox holds none), unknown system call names are skipped, `errnoRet` is
honoured, and only the native architecture is admitted.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import sys

import seccomp

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
OPS = {
    "SCMP_CMP_NE": seccomp.NE,
    "SCMP_CMP_LT": seccomp.LT,
    "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_EQ": seccomp.EQ,
    "SCMP_CMP_GE": seccomp.GE,
    "SCMP_CMP_GT": seccomp.GT,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}


def applies(rule: dict) -> bool:
    """Tell whether a rule applies here: this architecture, no capabilities held."""
    includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
    if includes.get("caps") or ARCH in (excludes.get("arches") or ()):
        return False
    if includes.get("minKernel"):
        wanted = tuple(int(part) for part in includes["minKernel"].split("."))
        running = tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])
        if running < wanted:
            return False
    return not includes.get("arches") or ARCH in includes["arches"]


def action_of(rule: dict, default_errno: int) -> object:
    """Return the libseccomp action of a rule."""
    if rule["action"] == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if rule["action"] == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(rule.get("errnoRet") or default_errno)
    raise ValueError(f"unsupported action {rule['action']}")


def build(profile: dict) -> seccomp.SyscallFilter:
    """Return the filter of `profile` for this process."""
    default_errno = profile.get("defaultErrnoRet") or errno.EPERM
    if profile["defaultAction"] != "SCMP_ACT_ERRNO":
        raise ValueError(f"unsupported default action {profile['defaultAction']}")
    made = seccomp.SyscallFilter(defaction=seccomp.ERRNO(default_errno))
    made.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)  # a binary tree: fewer checks per call
    for rule in profile["syscalls"]:
        if not applies(rule):
            continue
        action = action_of(rule, default_errno)
        args = [
            seccomp.Arg(arg["index"], OPS[arg["op"]], arg["value"], arg.get("valueTwo", 0))
            for arg in rule.get("args") or ()
        ]
        for name in rule["names"]:
            try:
                made.add_rule(action, name, *args)
            except (RuntimeError, ValueError):
                continue  # not a system call of this libseccomp or architecture (as runc does)
    return made


def main(argv: list[str]) -> None:
    """Load the profile at argv[0], then exec argv[1:]."""
    if len(argv) < 2:  # noqa: PLR2004 - a profile and a command
        sys.exit("usage: seccomp-exec PROFILE ARGV...")
    with open(argv[0], encoding="utf-8") as file:  # noqa: PTH123 - stdlib only
        build(json.load(file)).load()
    os.execvp(argv[1], argv[1:])  # noqa: S606 - exec the skill is the point


if __name__ == "__main__":
    main(sys.argv[1:])
