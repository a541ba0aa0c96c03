"""Listing and sweeping labelled objects: `ps`, `gc` and `down`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import docker.errors

from perstack_sandbox import images
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
from perstack_sandbox.engine import _containers


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run's live Docker objects, as `ps` lists them."""

    run_id: str
    expert: str
    owner_pid: str
    owner_host: str
    is_owner_alive: bool
    created: str
    containers: tuple[str, ...]  # "role: status"
    owner_user: str = ""  # absent on objects made before owners were labelled with a user


def list_runs() -> list[RunInfo]:
    """Group labelled containers by run id (see `engine.list_sandboxes`).

    Raises:
        EngineError: the engine could not be reached.

    """
    with docker_errors("listing sandboxes"):
        containers = client().api.containers(all=True, filters=MANAGED_FILTER)
    runs: dict[str, RunInfo] = {}
    for container in sorted(containers, key=lambda c: c["Labels"].get(LABEL_CREATED, "")):
        labels = container["Labels"]
        run_id = labels.get(LABEL_RUN, "?")
        entry = f"{labels.get(LABEL_ROLE, '?')}: {container['State']}"
        known = runs.get(run_id)
        runs[run_id] = RunInfo(
            run_id=run_id,
            expert=labels.get(LABEL_EXPERT, ""),
            owner_pid=labels.get(LABEL_OWNER_PID, ""),
            owner_host=labels.get(LABEL_OWNER_HOST, ""),
            owner_user=labels.get(LABEL_OWNER_USER, ""),
            is_owner_alive=is_owner_alive(labels),
            created=labels.get(LABEL_CREATED, ""),
            containers=(*known.containers, entry) if known else (entry,),
        )
    return list(runs.values())


def _is_shared(labels: dict[str, str]) -> bool:
    return LABEL_RUN not in labels


def collect_garbage() -> list[str]:
    """Remove objects of dead owners, then the egress network if unused (see `engine`).

    Raises:
        EngineError: the engine refused a removal or could not be reached.

    """
    removed = _containers.remove_labelled(
        MANAGED_FILTER, keep=lambda labels: _is_shared(labels) or is_owner_alive(labels)
    )
    return removed + _remove_unused_shared()


def take_down(run_id: str) -> list[str]:
    """Remove one run's objects (see `engine.take_down`).

    Raises:
        EngineError: the engine refused a removal or could not be reached.

    """
    return _containers.remove_labelled({"label": [f"{LABEL_MANAGED}=1", f"{LABEL_RUN}={run_id}"]})


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
