"""A run's pods over its life: ready before use, and the ends the gateway must hear of.

`wait_ready` waits until the proxy is ready and every skill container runs; `watch_run` keeps
one watch on the run's pods and notes when the proxy or the sandbox ends; `copy_proxy_log`
copies the proxy's log into the run's files as it comes (its audit records to audit.jsonl).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

from perstack_sandbox import state
from perstack_sandbox.audit import PROXY_AUDIT_CAP_BYTES as AUDIT_CAP
from perstack_sandbox.audit import PROXY_LOG_CAP_BYTES as LOG_CAP
from perstack_sandbox.audit import open_capped
from perstack_sandbox.errors import EngineError
from perstack_sandbox.kube import _objects
from perstack_sandbox.kube._labels import LABEL_ROLE, ROLE_PROXY, ROLE_SANDBOX, run_selector

if TYPE_CHECKING:
    from collections.abc import Mapping

    from kubernetes_asyncio.client import ApiClient

    from perstack_sandbox.kube._backend import KubeSandbox
    from perstack_sandbox.state import RunState

READY_TIMEOUT_S: Final = 180  # an image pull on a fresh node; the watch ends there


def _is_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _ended(kind: str, pod: Mapping[str, Any]) -> str | None:
    """Return how a pod ended ('deleted', 'failed: ...'), or None while it can still run."""
    if kind == "DELETED":
        return "was deleted"
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase not in {"Failed", "Succeeded"}:
        return None
    reasons = [
        f"{c.get('name')}: {((c.get('state') or {}).get('terminated') or {}).get('reason')}"
        for c in status.get("containerStatuses") or []
    ]
    return f"ended ({phase}; {', '.join(reasons) or 'no container status'})"


async def wait_ready(api: ApiClient, sandbox: KubeSandbox) -> None:
    """Wait until the proxy is ready and every skill container runs.

    Raises:
        EngineError: a pod ended, or the pods were not ready within `READY_TIMEOUT_S`.

    """
    ready: dict[str, bool] = {}
    selector = run_selector(sandbox.run_id)
    async for kind, pod in _objects.pod_events(
        api, sandbox.namespace, selector, timeout_s=READY_TIMEOUT_S
    ):
        name = (pod.get("metadata") or {}).get("name", "")
        ended = _ended(kind, pod)
        if ended is not None:
            raise EngineError(f"pod {name} of run {sandbox.run_id} {ended} before it was ready")
        ready[name] = _is_ready(pod)
        if ready.get(sandbox.pod) and ready.get(sandbox.proxy_pod):
            return
    raise EngineError(
        f"the pods of run {sandbox.run_id} were not ready within {READY_TIMEOUT_S} s "
        f"(`kubectl -n {sandbox.namespace} describe pod -l {selector}` says why)"
    )


async def copy_proxy_log(api: ApiClient, sandbox: KubeSandbox, run: RunState) -> None:
    """Copy the proxy's log as it comes: audit records to audit.jsonl, the rest to proxy.log.

    The pod log merges the proxy's stdout (JSON audit lines) and stderr (diagnostics), so a
    line that is a JSON object is an audit record and any other line is a diagnostic.
    """
    audit_path, log_path = run.audit_path, run.proxy_log_path
    try:
        with (  # capped: a skill decides how many audit lines there are (decision 76)
            open_capped(audit_path, state.private_fd(audit_path, append=True), AUDIT_CAP) as audit,
            open_capped(log_path, state.private_fd(log_path, append=True), LOG_CAP) as log,
        ):
            async for line in _objects.follow_log(api, sandbox.namespace, sandbox.proxy_pod):
                (audit if _is_record(line) else log).write(line)
    except (EngineError, OSError) as exc:
        sandbox.proxy_log_error = str(exc)
    finally:
        sandbox.log_copied.set()


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


async def watch_run(api: ApiClient, sandbox: KubeSandbox) -> None:
    """Watch the run's pods for its whole life: note the proxy's end and the sandbox's."""
    try:
        async for kind, pod in _objects.pod_events(
            api, sandbox.namespace, run_selector(sandbox.run_id)
        ):
            ended = _ended(kind, pod)
            role = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_ROLE)
            if ended is not None and role == ROLE_PROXY:
                sandbox.proxy_down = ended
            if ended is not None and role == ROLE_SANDBOX:
                sandbox.end_reason = ended
                sandbox.sandbox_end.set()
                return
    except EngineError as exc:
        sandbox.end_reason = f"cannot be watched: {exc}"
        sandbox.sandbox_end.set()
