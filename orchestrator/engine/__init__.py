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
_sandbox.py     Sandbox, open_sandbox, the proxy policy, teardown, ps/gc/down/doctor entry points
_containers.py  the Docker objects of one sandbox: networks, proxy and sandbox containers
_workspace.py   the workspace layer: a FUSE container that writes the folder as its owner
_gvisor.py      isolation: runc or gVisor's runsc (one container per stdio skill), its set-up
_exec.py        a `docker exec` as three byte streams (the frames of the attach socket)
_health.py      the proxy's readiness and its output copied into the run's files
_fence.py       the fence around a per-expert build: its own network and registry-only proxy
_sweep.py       listing and removing labelled objects
_doctor.py      what `doctor` checks and fixes
```
"""

from __future__ import annotations

from perstack_sandbox.docker_edge import owner_user
from perstack_sandbox.engine._containers import SKILL_UID_COUNT, SKILL_UID_FIRST
from perstack_sandbox.engine._exec import ExecProcess
from perstack_sandbox.engine._fence import build_expert, ensure_expert_image
from perstack_sandbox.engine._gvisor import require_isolation
from perstack_sandbox.engine._sandbox import (
    Sandbox,
    cancel_on_signals,
    collect_garbage,
    diagnose,
    list_sandboxes,
    open_sandbox,
    proxy_policy,
    runs_to_take_down,
    skill_grants,
    take_down,
)
from perstack_sandbox.engine._sweep import RunInfo

__all__ = [
    "SKILL_UID_COUNT",
    "SKILL_UID_FIRST",
    "ExecProcess",
    "RunInfo",
    "Sandbox",
    "build_expert",
    "cancel_on_signals",
    "collect_garbage",
    "diagnose",
    "ensure_expert_image",
    "list_sandboxes",
    "open_sandbox",
    "owner_user",
    "proxy_policy",
    "require_isolation",
    "runs_to_take_down",
    "skill_grants",
    "take_down",
]
