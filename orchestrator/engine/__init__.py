"""The fourth stage: sandboxes on a Docker engine, and the fence around image builds.

```
                   shared egress bridge (inter-container traffic off) ──► the world
                                  │
   sandbox ──internal network──► proxy (the only member of both networks)
  (skills)   no route out, no DNS
```

`open_sandbox()` starts one sandbox and tears it down on exit, whatever happened; `exec_stdio`
runs a skill in it as its own uid. The same network-and-proxy fence holds a per-expert image
build (`build_expert`, handed to `images.ensure_expert_image`). Blocking docker-py calls run in
worker threads; every object carries our labels, so `ps`, `gc` and `down` find what a run left.

```
_backend.py     the backend seam (SandboxBackend, SandboxHandle) and DOCKER_BACKEND
_sandbox.py     Sandbox, open_sandbox, start_sandbox: one sandbox's start and its processes
_policy.py      the proxy's policy: the Expert's list, each skill's own, the test openings
_lifecycle.py   a run's teardown, cancelling on signals; the ps/gc/down/doctor entry points
_containers.py  the Docker objects of one sandbox: networks, proxy and sandbox containers
_start.py       their start, in parallel; the skills may start before the proxy answers
_workspace.py   the workspace layer: a FUSE container that writes the folder as its owner
_gvisor.py      isolation: runc or gVisor's runsc (one container per stdio skill), its set-up
_exec.py        a `docker exec` as three byte streams (the frames of the attach socket)
_control.py     the proxy's control channel: one message per control client (grants, seals)
_seal.py        sealing a started sandbox: values to the proxy, the run's CA into the sandbox
_health.py      the proxy's readiness and its output copied into the run's files
_fence.py       the fence around a per-expert build: its own network and registry-only proxy
_sweep.py       listing and removing labelled objects; closing crashed runs' journals
_doctor.py      what `doctor` checks and fixes
_reaper.py      the per-owner process that removes what its owner leaves when it dies
_patience.py    how long and how often removal retries an engine that does not answer
_egress.py      the shared egress network, made once per engine under an engine-wide lock
_subnets.py     small subnets for internal networks, from one configurable private range
_gate.py        start slots: how many sandboxes start at the same time
_warm.py        warm sandboxes: fresh credentials granted to a claimed sandbox's proxy
```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from perstack_sandbox.docker_edge import owner_user
    from perstack_sandbox.engine._backend import (
        BACKEND_NAMES,
        DEFAULT_BACKEND,
        DOCKER_BACKEND,
        BackendName,
        SandboxBackend,
        SandboxHandle,
        StdioProcess,
    )
    from perstack_sandbox.engine._containers import SKILL_UID_COUNT, SKILL_UID_FIRST
    from perstack_sandbox.engine._control import open_control, send_control, send_grant
    from perstack_sandbox.engine._exec import ExecProcess
    from perstack_sandbox.engine._fence import (
        build_expert,
        ensure_expert_image,
        ensure_expert_image_async,
        resolve_lock,
    )
    from perstack_sandbox.engine._gate import start_slot
    from perstack_sandbox.engine._gvisor import require_isolation
    from perstack_sandbox.engine._lifecycle import (
        cancel_on_signals,
        collect_garbage,
        diagnose,
        list_sandboxes,
        runs_to_take_down,
        take_down,
        teardown,
    )
    from perstack_sandbox.engine._policy import TestNetwork, proxy_policy, skill_grants
    from perstack_sandbox.engine._sandbox import Sandbox, open_sandbox, start_sandbox
    from perstack_sandbox.engine._seal import seal_sandbox
    from perstack_sandbox.engine._sweep import RunInfo
    from perstack_sandbox.engine._warm import grant

__all__ = [
    "BACKEND_NAMES",
    "DEFAULT_BACKEND",
    "DOCKER_BACKEND",
    "SKILL_UID_COUNT",
    "SKILL_UID_FIRST",
    "BackendName",
    "ExecProcess",
    "RunInfo",
    "Sandbox",
    "SandboxBackend",
    "SandboxHandle",
    "StdioProcess",
    "TestNetwork",
    "build_expert",
    "cancel_on_signals",
    "collect_garbage",
    "diagnose",
    "ensure_expert_image",
    "ensure_expert_image_async",
    "grant",
    "list_sandboxes",
    "open_control",
    "open_sandbox",
    "owner_user",
    "proxy_policy",
    "require_isolation",
    "resolve_lock",
    "runs_to_take_down",
    "seal_sandbox",
    "send_control",
    "send_grant",
    "skill_grants",
    "start_sandbox",
    "start_slot",
    "take_down",
    "teardown",
]

# Where each public name lives. They load on first use: the reaper runs as a module of this
# package (`python -m perstack_sandbox.engine._reaper`), and while it waits for its owner it
# must not import docker-py and everything the engine uses (decision 26).
_LAZY: Final = {
    "owner_user": "..docker_edge",
    **dict.fromkeys(
        (
            "BACKEND_NAMES",
            "DEFAULT_BACKEND",
            "DOCKER_BACKEND",
            "BackendName",
            "SandboxBackend",
            "SandboxHandle",
            "StdioProcess",
        ),
        "._backend",
    ),
    "ExecProcess": "._exec",
    "build_expert": "._fence",
    "ensure_expert_image": "._fence",
    "ensure_expert_image_async": "._fence",
    "resolve_lock": "._fence",
    "start_slot": "._gate",
    "require_isolation": "._gvisor",
    "RunInfo": "._sweep",
    "SKILL_UID_COUNT": "._containers",
    **dict.fromkeys(("open_control", "send_control", "send_grant"), "._control"),
    "grant": "._warm",
    "SKILL_UID_FIRST": "._containers",
    **dict.fromkeys(("Sandbox", "open_sandbox", "start_sandbox"), "._sandbox"),
    **dict.fromkeys(("TestNetwork", "proxy_policy", "skill_grants"), "._policy"),
    "seal_sandbox": "._seal",
    **dict.fromkeys(
        (
            "cancel_on_signals",
            "collect_garbage",
            "diagnose",
            "list_sandboxes",
            "runs_to_take_down",
            "take_down",
            "teardown",
        ),
        "._lifecycle",
    ),
}


def __getattr__(name: str) -> object:
    """Load a public name from its module on first use (then it is a plain attribute).

    Raises:
        AttributeError: `name` is not public.

    """
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the public names."""
    return sorted(__all__)
