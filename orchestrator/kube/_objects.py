"""Creating, watching, listing and deleting a run's objects through the API client.

Objects are created in `run_manifests` order, so the NetworkPolicies exist before any pod
runs; each one but the root names the root as its owner (the cluster's garbage collector
removes what a crashed owner left once the root goes), and teardown deletes every labelled
object explicitly too, since the collector works in its own time.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final

from kubernetes_asyncio import watch
from kubernetes_asyncio.client import CoreV1Api, NetworkingV1Api

from perstack_sandbox.errors import EngineError
from perstack_sandbox.kube._client import NOT_FOUND, is_status, kube_errors
from perstack_sandbox.kube._labels import LABEL_ROLE, ROLE_ROOT

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine

    from kubernetes_asyncio.client import ApiClient

    from perstack_sandbox.kube._manifests import Manifest

KINDS: Final = ("Pod", "Service", "NetworkPolicy", "Secret", "ConfigMap")  # deletion order
PSA_ENFORCE: Final = "pod-security.kubernetes.io/enforce"


def _calls(api: ApiClient, kind: str, verb: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    """Return the client's `verb` ("create", "list", "delete") call for `kind`."""
    snake = {
        "Pod": "pod",
        "Service": "service",
        "Secret": "secret",
        "ConfigMap": "config_map",
        "NetworkPolicy": "network_policy",
    }[kind]
    group = NetworkingV1Api(api) if kind == "NetworkPolicy" else CoreV1Api(api)
    method: Callable[..., Coroutine[Any, Any, Any]] = getattr(group, f"{verb}_namespaced_{snake}")
    return method


async def require_restricted_namespace(api: ApiClient, namespace: str) -> None:
    """Refuse a namespace that does not enforce the `restricted` Pod Security level.

    Raises:
        EngineError: it is missing, unreadable, or not labelled to enforce `restricted`.

    """
    with kube_errors(f"reading namespace {namespace}"):
        core: Any = CoreV1Api(api)  # a raw response with `_preload_content=False`
        found = await core.read_namespace(namespace, _preload_content=False)
        body = await found.json()
    labels = (body.get("metadata") or {}).get("labels") or {}
    if labels.get(PSA_ENFORCE) != "restricted":
        raise EngineError(
            f"namespace {namespace} does not enforce the restricted Pod Security level; label "
            f"it: kubectl label namespace {namespace} {PSA_ENFORCE}=restricted (or apply the "
            "Namespace that `render kubernetes` prints)"
        )


async def create_all(api: ApiClient, namespace: str, manifests: list[Manifest]) -> dict[str, Any]:
    """Create `manifests` in order; the first is the root, the owner of all others.

    Returns the created objects (as the API server returned them) by `kind/name`.

    Raises:
        EngineError: the cluster refused an object or could not be reached.

    """
    created: dict[str, Any] = {}
    owner: dict[str, Any] | None = None
    for manifest in manifests:
        body = dict(manifest)
        if owner is not None:
            body["metadata"] = {**manifest["metadata"], "ownerReferences": [owner]}
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        with kube_errors(f"creating {name}"):
            answer = await _calls(api, manifest["kind"], "create")(
                namespace, body, _preload_content=False
            )
            created[name] = await answer.json()
        if owner is None:
            meta = created[name]["metadata"]
            owner = {
                "apiVersion": manifest["apiVersion"],
                "kind": manifest["kind"],
                "name": meta["name"],
                "uid": meta["uid"],
            }
    return created


async def pod_events(
    api: ApiClient, namespace: str, selector: str, timeout_s: int | None = None
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Yield (event type, pod) for the pods matching `selector`, current ones first.

    Raises:
        EngineError: the watch failed.

    """
    stream = watch.Watch()
    kwargs: dict[str, Any] = {"label_selector": selector}
    if timeout_s is not None:
        kwargs["timeout_seconds"] = timeout_s
    try:
        with kube_errors("watching the run's pods"):
            async for event in stream.stream(
                CoreV1Api(api).list_namespaced_pod, namespace, **kwargs
            ):
                yield event["type"], event["raw_object"]
    finally:
        await stream.close()


async def list_labelled(api: ApiClient, namespace: str, selector: str) -> list[dict[str, Any]]:
    """Return every object of our kinds matching `selector`, as dicts with their `kind`.

    Raises:
        EngineError: the cluster could not be reached.

    """
    found: list[dict[str, Any]] = []
    for kind in KINDS:
        with kube_errors(f"listing {kind} objects"):
            answer = await _calls(api, kind, "list")(
                namespace, label_selector=selector, _preload_content=False
            )
            items = (await answer.json()).get("items") or []
        found += [{**item, "kind": kind} for item in items]
    return found


async def delete_labelled(api: ApiClient, namespace: str, selector: str) -> list[str]:
    """Delete every object matching `selector` (pods first, the root last); name them.

    Raises:
        EngineError: the cluster refused a deletion or could not be reached.

    """
    removed = []
    objects = await list_labelled(api, namespace, selector)
    objects.sort(key=lambda item: item["metadata"].get("labels", {}).get(LABEL_ROLE) == ROLE_ROOT)
    for item in objects:
        name = item["metadata"]["name"]
        try:
            with kube_errors(f"deleting {item['kind']}/{name}"):
                await _calls(api, item["kind"], "delete")(
                    name,
                    namespace,
                    grace_period_seconds=0,
                    propagation_policy="Background",
                    _preload_content=False,
                )
        except EngineError as exc:
            if not is_status(exc, NOT_FOUND):  # gone already: what we wanted
                raise
        removed.append(f"{item['kind'].lower()}: {name}")
    return removed


async def follow_log(api: ApiClient, namespace: str, pod: str) -> AsyncIterator[bytes]:
    """Yield the lines of `pod`'s log as they come, until the container ends.

    Raises:
        EngineError: the log cannot be read.

    """
    with kube_errors(f"following the log of {pod}"):
        core: Any = CoreV1Api(api)  # a raw response with `_preload_content=False`
        answer = await core.read_namespaced_pod_log(
            pod, namespace, follow=True, _preload_content=False
        )
        with contextlib.closing(answer):
            async for line in answer.content:
                yield line
