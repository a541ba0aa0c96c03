"""The isolation the sandbox container (the skills) runs under: what users and programs choose.

`runc` (the default) shares the host kernel behind our seccomp profile; `gvisor` runs the skills
on gVisor's user-space kernel (`runsc`). A light module: the CLI imports it for `--isolation`.
"""

from __future__ import annotations

from typing import Final, Literal, cast, get_args

from perstack_sandbox.errors import UsageError

Isolation = Literal["runc", "gvisor"]
ISOLATIONS: Final[tuple[str, ...]] = get_args(Isolation)
DEFAULT_ISOLATION: Final[Isolation] = "runc"


def check_isolation(isolation: str) -> Isolation:
    """Return `isolation` as a known value.

    Raises:
        UsageError: it is neither runc nor gvisor.

    """
    if isolation not in ISOLATIONS:
        raise UsageError(f"isolation {isolation!r} is not one of {', '.join(ISOLATIONS)}")
    return cast("Isolation", isolation)
