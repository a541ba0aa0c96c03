"""`ps`, `down` and `gc` on a cluster: a run's objects found by their labels.

A run is every object labelled with its id. Its owner is alive when its process (pid and start
time) still runs on this host; owners on other hosts are always alive to us, as on Docker, so
`gc` never removes another machine's runs.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from perstack_sandbox import engine
from perstack_sandbox.kube._labels import (
    LABEL_EXPERT,
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_START,
    LABEL_OWNER_USER,
    LABEL_RUN,
    MANAGED_SELECTOR,
    label_value,
    run_selector,
)
from perstack_sandbox.kube._objects import delete_labelled, list_labelled
from perstack_sandbox.procs import is_process_alive

if TYPE_CHECKING:
    from collections.abc import Mapping

    from kubernetes_asyncio.client import ApiClient

    from perstack_sandbox.engine import RunInfo


def is_owner_alive(labels: Mapping[str, str]) -> bool:
    """Tell whether the process that owns a run still runs (another host's: always)."""
    if labels.get(LABEL_OWNER_HOST) != label_value(socket.gethostname()):
        return True
    try:
        pid = int(labels.get(LABEL_OWNER_PID, ""))
    except ValueError:
        return False
    return is_process_alive(pid, labels.get(LABEL_OWNER_START, ""))


async def list_runs(api: ApiClient, namespace: str) -> list[RunInfo]:
    """Return every run with labelled objects in `namespace`, oldest first.

    Raises:
        EngineError: the cluster could not be reached.

    """
    by_run: dict[str, list[dict[str, Any]]] = {}
    for item in await list_labelled(api, namespace, MANAGED_SELECTOR):
        run_id = (item["metadata"].get("labels") or {}).get(LABEL_RUN, "")
        by_run.setdefault(run_id, []).append(item)
    runs = [_info(run_id, items) for run_id, items in by_run.items() if run_id]
    return sorted(runs, key=lambda run: (run.created, run.run_id))


def _info(run_id: str, items: list[dict[str, Any]]) -> RunInfo:
    labels: dict[str, str] = items[0]["metadata"].get("labels") or {}
    annotations = [item["metadata"].get("annotations") or {} for item in items]
    expert = next((a[LABEL_EXPERT] for a in annotations if LABEL_EXPERT in a), "")
    created = min(item["metadata"].get("creationTimestamp") or "" for item in items)
    objects = tuple(
        f"{item['kind'].lower()}: {item['metadata']['name']}"
        + (f" ({item['status'].get('phase')})" if item["kind"] == "Pod" else "")
        for item in items
    )
    return engine.RunInfo(
        run_id=run_id,
        expert=expert,
        owner_pid=labels.get(LABEL_OWNER_PID, ""),
        owner_host=labels.get(LABEL_OWNER_HOST, ""),
        is_owner_alive=is_owner_alive(labels),
        created=created,
        objects=objects,
        owner_user=labels.get(LABEL_OWNER_USER, ""),
    )


async def take_down(api: ApiClient, namespace: str, run_id: str) -> list[str]:
    """Delete every object of `run_id`, whether its owner lives or not; name them.

    Raises:
        EngineError: the cluster refused a deletion or could not be reached.

    """
    return await delete_labelled(api, namespace, run_selector(run_id))


async def collect_garbage(api: ApiClient, namespace: str) -> list[str]:
    """Delete the objects of every run whose owner died on this host; name them.

    Raises:
        EngineError: the cluster refused a deletion or could not be reached.

    """
    removed: list[str] = []
    for run in await list_runs(api, namespace):
        if not run.is_owner_alive:
            removed += await take_down(api, namespace, run.run_id)
    return removed
