"""Listing and removing labelled objects: `ps`, `gc`, `down`, a run's teardown and the reaper."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import docker.errors

from perstack_sandbox import images, state
from perstack_sandbox.docker_edge import (
    LABEL_CREATED,
    LABEL_EXPERT,
    LABEL_MANAGED,
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_USER,
    LABEL_ROLE,
    LABEL_RUN,
    MANAGED_FILTER,
    client,
    docker_errors,
    is_owner_alive,
)
from perstack_sandbox.engine import _workspace
from perstack_sandbox.engine._egress import LOCK_ROLE

if TYPE_CHECKING:
    from collections.abc import Callable

    from perstack_sandbox.state import RunState


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run's Docker objects, as `ps` lists them: its containers and its network."""

    run_id: str
    expert: str
    owner_pid: str
    owner_host: str
    is_owner_alive: bool
    created: str
    objects: tuple[str, ...]  # "role: status" of a container; "network: name", "volume: name"
    owner_user: str = ""  # absent on objects made before owners were labelled with a user


def list_runs() -> list[RunInfo]:
    """Group labelled containers, networks and volumes by run id (see `engine.list_sandboxes`).

    A run killed between creating its network and its containers has only a network: it is
    listed all the same.

    Raises:
        EngineError: the engine could not be reached.

    """
    api = client().api
    with docker_errors("listing sandboxes"):
        containers = api.containers(all=True, filters=MANAGED_FILTER)
        networks = api.networks(filters=MANAGED_FILTER)
        volumes = api.volumes(filters=MANAGED_FILTER).get("Volumes") or []
    objects = [
        (c["Labels"], f"{c['Labels'].get(LABEL_ROLE, '?')}: {c['State']}") for c in containers
    ]
    objects += [(n.get("Labels") or {}, f"network: {n['Name']}") for n in networks]
    objects += [(v.get("Labels") or {}, f"volume: {v['Name']}") for v in volumes]
    runs: dict[str, RunInfo] = {}
    for labels, entry in sorted(objects, key=lambda item: item[0].get(LABEL_CREATED, "")):
        if _is_shared(labels) or labels.get(LABEL_ROLE) == LOCK_ROLE:
            continue
        run_id = labels.get(LABEL_RUN, "?")
        known = runs.get(run_id)
        runs[run_id] = RunInfo(
            run_id=run_id,
            expert=labels.get(LABEL_EXPERT, ""),
            owner_pid=labels.get(LABEL_OWNER_PID, ""),
            owner_host=labels.get(LABEL_OWNER_HOST, ""),
            owner_user=labels.get(LABEL_OWNER_USER, ""),
            is_owner_alive=is_owner_alive(labels),
            created=labels.get(LABEL_CREATED, ""),
            objects=(*known.objects, entry) if known else (entry,),
        )
    return list(runs.values())


def _is_shared(labels: dict[str, str]) -> bool:
    """Shared objects (the egress network) belong to no run and no owner."""
    return LABEL_RUN not in labels and labels.get(LABEL_ROLE) != LOCK_ROLE


def crashed_runs() -> list[RunState]:
    """Return local runs and builds whose journal is open while their owner is gone.

    Those ended without their teardown (SIGKILL, a crash, a power cut): `gc` closes them.
    """
    crashed = []
    for run in state.open_journals():
        creates = [e for e in run.journal() if e.get("event") == "create"]
        labels = creates[0].get("labels") if creates else None
        if isinstance(labels, dict) and not is_owner_alive(labels):
            crashed.append(run)
    return crashed


def collect_garbage() -> list[str]:
    """Remove objects of dead owners, then the egress network if unused (see `engine`).

    The journals of runs whose owner died without its teardown are closed, and any journalled
    object that is still there without our labels is named (not removed: it may not be ours).
    The build contexts of dead processes (builds killed mid-way) are removed too.

    Raises:
        EngineError: the engine refused a removal or could not be reached.

    """
    contexts = state.remove_dead_contexts()  # first: they need no engine
    removed = remove_labelled(
        MANAGED_FILTER, keep=lambda labels: _is_shared(labels) or is_owner_alive(labels)
    )
    notes = []
    for run in crashed_runs():
        notes += [
            f"unlabelled {name} (journalled by run {run.run_id}: not removed)"
            for name in _still_there(run)
        ]
        how = "owner died before its teardown finished; `gc` removed what was left"
        run.close_journal(how)
        if run.read_meta().get("status") in {"starting", "running"}:
            run.update_meta(status=f"ended: {how}")
    return contexts + removed + _remove_unused_shared() + notes


def _still_there(run: RunState) -> list[str]:
    """Name the journalled objects of `run` that still exist (after the label sweep)."""
    api = client().api
    found = []
    for entry in run.journal():
        kind, name = entry.get("kind"), str(entry.get("name", ""))
        with docker_errors(f"looking up {kind} {name}"):
            if kind in {"container", "volume"}:
                inspect = api.inspect_container if kind == "container" else api.inspect_volume
                with contextlib.suppress(docker.errors.NotFound):
                    inspect(name)
                    found.append(f"{kind} {name}")
            elif kind == "network" and any(n["Name"] == name for n in api.networks(names=[name])):
                found.append(f"network {name}")
    return found


def take_down(run_id: str) -> list[str]:
    """Remove one run's objects (see `engine.take_down`).

    Raises:
        EngineError: the engine refused a removal or could not be reached.

    """
    return remove_labelled({"label": [f"{LABEL_MANAGED}=1", f"{LABEL_RUN}={run_id}"]})


def remove_labelled(
    filters: dict[str, Any], *, keep: Callable[[dict[str, str]], bool] | None = None
) -> list[str]:
    """Remove containers, volumes, networks matching `filters` (unless `keep(labels)`); name them.

    Containers go in parallel (each removal waits for its filesystem to be unmounted); a
    workspace layer is stopped first, so that it unmounts. Volumes and networks go after them,
    since neither can be removed while in use.

    Raises:
        EngineError: the engine refused a removal or could not be reached.

    """
    api = client().api

    def is_kept(item: dict[str, Any]) -> bool:
        return keep is not None and keep(item.get("Labels") or {})

    def remove_container(container: dict[str, Any]) -> None:
        if (container.get("Labels") or {}).get(LABEL_ROLE) == _workspace.ROLE:
            _workspace.stop(container["Id"])
        with (
            docker_errors("removing a sandbox container"),
            contextlib.suppress(docker.errors.NotFound),
        ):
            try:
                api.remove_container(container["Id"], force=True, v=True)
            except docker.errors.APIError as exc:
                # Another teardown, `down`, `gc` or a reaper is removing it: it goes either way.
                if not is_removal_in_progress(exc):
                    raise

    with docker_errors("listing sandbox objects"):
        containers = [c for c in api.containers(all=True, filters=filters) if not is_kept(c)]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(containers)))) as pool:
        list(pool.map(remove_container, containers))
    removed = [f"container {c['Names'][0].lstrip('/')}" for c in containers]
    removed += _workspace.remove_volumes(filters, keep=keep)
    with docker_errors("removing sandbox networks"):
        for network in api.networks(filters=filters):
            if is_kept(network):
                continue
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_network(network["Id"])
            removed.append(f"network {network['Name']}")
    return removed


def remove_attached(network_id: str) -> list[str]:
    """Force-remove every container on `network_id`, labelled or not (a build step's); name them.

    Raises:
        EngineError: the engine refused a removal or could not be reached.

    """
    api = client().api
    with docker_errors("removing the containers of a build fence"):
        attached = api.containers(all=True, filters={"network": [network_id]})
        for container in attached:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(container["Id"], force=True, v=True)
    return [f"container {c['Names'][0].lstrip('/')}" for c in attached]


def is_removal_in_progress(exc: docker.errors.APIError) -> bool:
    """Return whether the engine refused a removal because one is already under way."""
    return exc.status_code == 409 and "already in progress" in str(exc.explanation or "")  # noqa: PLR2004 - HTTP conflict


def _remove_unused_shared() -> list[str]:
    api = client().api
    removed = []
    with docker_errors("removing the egress network"):
        if api.containers(all=True, filters=MANAGED_FILTER):
            # Some sandbox (maybe still being created, not yet attached) may need it.
            return []
        for network in api.networks(filters=MANAGED_FILTER):
            if not _is_shared(network.get("Labels") or {}):
                continue
            if api.inspect_network(network["Id"]).get("Containers"):
                continue
            # In use again (a proxy connected since the inspect) or already gone: keep going.
            with contextlib.suppress(docker.errors.APIError):
                api.remove_network(network["Id"])
                removed.append(f"network {network['Name']}")
    return removed


def remove_superseded_images() -> list[str]:
    """Remove images no current recipe uses; images a container still uses are kept.

    Raises:
        EngineError: the engine could not be reached.

    """
    api = client().api
    removed = []
    for tag in images.superseded_images():
        with docker_errors(f"removing image {tag}"), contextlib.suppress(docker.errors.APIError):
            api.remove_image(tag)
            removed.append(f"image {tag}")
    return removed
