"""`render kubernetes EXPERT`: the run's manifests as YAML, for review and GitOps.

The output is a pure function of the plan, the settings and the two image names: the same
input prints the same bytes. It holds no secret material: no skill reads a value from any
object (values travel over stdin, decision 43), and each skill's proxy token, which the
backend mints per run, is a placeholder. The run's objects are named after the run id
`render`; owner references need the root's uid, which only exists in a cluster, so the
backend adds them when it creates the objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import yaml

from perstack_sandbox import engine
from perstack_sandbox.kube._manifests import Manifest, RunObjects, run_manifests

if TYPE_CHECKING:
    from perstack_sandbox.kube._settings import KubeSettings
    from perstack_sandbox.plan import SandboxPlan

RENDER_RUN_ID: Final = "render"
PSA_LABELS: Final = {
    f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")
}


def token_placeholder(skill: str) -> str:
    """Return what stands for `skill`'s proxy token in rendered output."""
    return f"minted-per-run:{skill}"


def namespace_manifest(settings: KubeSettings) -> Manifest:
    """Return the namespace, labelled to enforce the `restricted` Pod Security level."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": settings.namespace, "labels": dict(PSA_LABELS)},
    }


def rendered_manifests(
    plan: SandboxPlan, settings: KubeSettings, *, sandbox_image: str, proxy_image: str
) -> list[Manifest]:
    """Return the namespace and the objects of one run of `plan`, with placeholder tokens."""
    grants = engine.skill_grants(plan)
    credentials = {name: token_placeholder(name) for name in grants}
    policy = engine.proxy_policy(plan, RENDER_RUN_ID, (), credentials)
    objects = RunObjects(RENDER_RUN_ID, sandbox_image, proxy_image)
    return [namespace_manifest(settings), *run_manifests(plan, objects, settings, policy)]


def to_yaml(manifests: list[Manifest]) -> str:
    """Return `manifests` as one YAML stream, keys sorted, one document each."""
    documents: list[Any] = list(manifests)
    return yaml.safe_dump_all(documents, sort_keys=True, default_flow_style=False)
