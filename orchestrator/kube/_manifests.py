"""The Kubernetes objects of one run, as plain dicts: a pure function of the plan (decision 43).

```
ConfigMap  psb-<run>            the run's root: every other object has it as owner
Secret     psb-<run>-policy     the proxy's policy (per-skill tokens); only the proxy reads it
Pod        psb-<run>-proxy      the proxy (same image, policy format and audit as on Docker)
Service    psb-<run>-proxy      ClusterIP 3128 in front of it: skills dial it by IP, no DNS
Pod        psb-<run>-sandbox    one container per stdio skill, each its own runAsUser
NetworkPolicy x2                see `_netpols.py`
```

No skill secret is in any of them: values travel over the skill's exec stdin (`_exec.py`).
Object names, labels and order are stable, so `render kubernetes` prints the same bytes for the
same plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from perstack_sandbox.kube._labels import (
    LABEL_EXPERT,
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_RUN,
    LABEL_SKILLS,
    ROLE_PROXY,
    ROLE_SANDBOX,
)
from perstack_sandbox.kube._netpols import network_policies
from perstack_sandbox.kube._settings import (
    PROXY_PORT,
    PROXY_UID,
    SANDBOX_UID,
    SKILL_UID_COUNT,
    SKILL_UID_FIRST,
    KubeSettings,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from perstack_sandbox.plan import SandboxPlan

Manifest = dict[str, Any]

POLICY_KEY: Final = "policy.json"
SCRATCH_SIZE: Final = "256Mi"  # /tmp and /home of one skill, as the Docker tmpfs
PROXY_SCRATCH_SIZE: Final = "16Mi"
PROXY_MEMORY: Final = "256Mi"
PROXY_CPU: Final = "1"
GRACE_S: Final = 5  # skills hold no state worth a long shutdown
WORKSPACE_DIR: Final = "/workspace"
SCRATCH_DIRS: Final = (("tmp", "/tmp"), ("home", "/home"))  # noqa: S108 - per-container emptyDirs


@dataclass(frozen=True, slots=True)
class RunObjects:
    """What names one run's objects: its id, images, and the labels of its owner."""

    run_id: str
    sandbox_image: str
    proxy_image: str
    # owner-pid/-host/-user/-start labels (empty when rendering: they describe a live process)
    owner_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """The name every object of the run starts with."""
        return f"psb-{self.run_id}"

    def labels(self, role: str) -> dict[str, str]:
        """Return the labels of the object of `role` (every object: managed, run, role)."""
        return {LABEL_MANAGED: "1", LABEL_RUN: self.run_id, LABEL_ROLE: role, **self.owner_labels}

    def selector(self, role: str) -> dict[str, str]:
        """Return the labels that select the pod of `role` of this run (and no other)."""
        return {LABEL_RUN: self.run_id, LABEL_ROLE: role}


def run_manifests(
    plan: SandboxPlan,
    objects: RunObjects,
    settings: KubeSettings,
    policy: Mapping[str, object],
) -> list[Manifest]:
    """Return every object of the run, root first, in creation order.

    `policy` is the proxy's policy (with each skill's token, or placeholders when rendering).
    """
    return [
        root_config_map(plan, objects, settings),
        policy_secret(objects, settings, policy),
        *network_policies(objects.run_id, objects.labels, objects.selector, settings),
        proxy_service(objects, settings),
        proxy_pod(objects, settings),
        sandbox_pod(plan, objects, settings),
    ]


def _metadata(objects: RunObjects, settings: KubeSettings, suffix: str, role: str) -> Manifest:
    name = objects.prefix + (f"-{suffix}" if suffix else "")
    return {"name": name, "namespace": settings.namespace, "labels": objects.labels(role)}


def root_config_map(plan: SandboxPlan, objects: RunObjects, settings: KubeSettings) -> Manifest:
    """Return the run's root object: `down` deletes it and the garbage collector the rest."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(objects, settings, "", "root")
        | {"annotations": {LABEL_EXPERT: plan.expert}},
        "data": {"expert": plan.expert, "run": objects.run_id},
    }


def policy_secret(
    objects: RunObjects, settings: KubeSettings, policy: Mapping[str, object]
) -> Manifest:
    """Return the Secret that holds the proxy's policy (the per-run, per-skill proxy tokens)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(objects, settings, "policy", "policy"),
        "type": "Opaque",
        "immutable": True,
        "stringData": {POLICY_KEY: json.dumps(policy, sort_keys=True)},
    }


def proxy_service(objects: RunObjects, settings: KubeSettings) -> Manifest:
    """Return the ClusterIP Service the skills reach the proxy through (by its IP)."""
    port = {"name": "proxy", "port": PROXY_PORT, "targetPort": PROXY_PORT, "protocol": "TCP"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(objects, settings, "proxy", ROLE_PROXY),
        "spec": {
            "type": "ClusterIP",
            "selector": objects.selector(ROLE_PROXY),
            "ports": [port],
        },
    }


def _container_security(uid: int) -> Manifest:
    return {
        "runAsUser": uid,
        "runAsGroup": uid,
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_spec(containers: list[Manifest], volumes: list[Manifest]) -> Manifest:
    """Return what both pods share: no token, no service links, restricted, never restarted."""
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": GRACE_S,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": containers,
        "volumes": volumes,
    }


def _scratch(name: str, size: str) -> Manifest:
    return {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": size}}


def proxy_pod(objects: RunObjects, settings: KubeSettings) -> Manifest:
    """Return the proxy's pod: its policy from the Secret, DNS for its own resolver only."""
    resources = {"cpu": PROXY_CPU, "memory": PROXY_MEMORY}
    policy_ref = {"name": f"{objects.prefix}-policy", "key": POLICY_KEY}
    container = {
        "name": "proxy",
        "image": objects.proxy_image,
        "imagePullPolicy": settings.image_pull_policy,
        "env": [{"name": "PERSTACK_PROXY_POLICY", "valueFrom": {"secretKeyRef": policy_ref}}],
        "ports": [{"name": "proxy", "containerPort": PROXY_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": PROXY_PORT}, "periodSeconds": 1},
        "securityContext": _container_security(PROXY_UID),
        "resources": {"limits": resources, "requests": resources},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 - its own emptyDir
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(objects, settings, "proxy", ROLE_PROXY),
        "spec": _pod_spec([container], [_scratch("tmp", PROXY_SCRATCH_SIZE)]),
    }


def sandbox_pod(plan: SandboxPlan, objects: RunObjects, settings: KubeSettings) -> Manifest:
    """Return the sandbox pod: one idle container per stdio skill, as that skill's own uid.

    Kubernetes' exec runs as the container's user, so a distinct uid per skill means a
    container per skill; each also has its own PID namespace, /tmp and /home. Limits are the
    plan's, split evenly, so the pod as a whole gets what the Docker sandbox gets. No DNS
    server is configured (the only nameserver is loopback, where nothing answers).
    """
    names = [launch.name for launch in plan.skills]
    workdirs = [launch.workdir for launch in plan.skills]
    count = max(len(names), 1)
    if len(names) > SKILL_UID_COUNT:
        raise ValueError(f"{len(names)} skills; a sandbox runs at most {SKILL_UID_COUNT}")
    memory = plan.limits.memory_bytes // count
    cpu = f"{max(int(plan.limits.cpus * 1000) // count, 1)}m"
    resources = {"cpu": cpu, "memory": str(memory)}
    uids = [SKILL_UID_FIRST + index for index in range(len(names))] or [SANDBOX_UID]
    containers, volumes = [], [{"name": "workspace", "emptyDir": {"sizeLimit": SCRATCH_SIZE}}]
    for index, uid in enumerate(uids):
        mounts = [{"name": "workspace", "mountPath": WORKSPACE_DIR}]
        for volume, path in SCRATCH_DIRS:
            volumes.append(_scratch(f"{volume}-{index}", SCRATCH_SIZE))
            mounts.append({"name": f"{volume}-{index}", "mountPath": path})
        containers.append(
            {
                "name": container_name(index),
                "image": objects.sandbox_image,
                "imagePullPolicy": settings.image_pull_policy,
                "workingDir": workdirs[index] if workdirs else WORKSPACE_DIR,
                "securityContext": _container_security(uid),
                "resources": {"limits": resources, "requests": resources},
                "volumeMounts": mounts,
            }
        )
    spec = _pod_spec(containers, volumes) | {
        "hostname": "sandbox",
        "dnsPolicy": "None",
        "dnsConfig": {"nameservers": ["127.0.0.1"]},
    }
    if settings.runtime_class:
        spec["runtimeClassName"] = settings.runtime_class
    metadata = _metadata(objects, settings, "sandbox", ROLE_SANDBOX)
    metadata["annotations"] = {LABEL_SKILLS: json.dumps(names)}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def container_name(index: int) -> str:
    """Return the name of the container of the `index`-th stdio skill."""
    return f"skill-{index}"
