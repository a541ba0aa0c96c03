"""The Kubernetes backend: the same plan and guarantees as on Docker, as pods (decisions 42-45).

```
           namespace (Pod Security `restricted` enforced)
  ┌──────────────────────────────────────────────────────────────┐
  │ sandbox pod ──TCP 3128 (Service IP)──► proxy pod ──TCP 443──►│ public addresses
  │ one container per skill, own uid        └─ DNS (cluster DNS) │
  │ no DNS, no token, nothing may reach it                      │
  └──────────────────────────────────────────────────────────────┘
```

Skills' stdio goes through the exec API; their secrets travel over that stdin, never into
an object. Only this package imports the Kubernetes client (an import-linter contract).

```
_backend.py    KubernetesBackend (the engine's SandboxBackend) and KubeSandbox
_manifests.py  the run's objects, pure: root ConfigMap, policy Secret, pods, Service
_netpols.py    the two NetworkPolicies, pure
_psa.py        a checker of the `restricted` Pod Security level, pure
_render.py     `render kubernetes`: namespace and objects as deterministic YAML
_objects.py    create (owner references), watch, list, delete by labels, follow logs
_watch.py      the run's pods: ready, their ends, the proxy's log into the run's files
_exec.py       a skill's stdio over the exec websocket; its environment over stdin
_runs.py       ps, down and gc by labels
_client.py     the client from kubeconfig or in-cluster config; errors as EngineError
_labels.py     label keys and label-safe values
_settings.py   KubeSettings from $PERSTACK_SANDBOX_K8S_*; the uids shared with Docker
```
"""

from __future__ import annotations

from perstack_sandbox.kube._backend import KubernetesBackend, KubeSandbox, check_plan
from perstack_sandbox.kube._labels import label_value
from perstack_sandbox.kube._manifests import RunObjects, run_manifests
from perstack_sandbox.kube._netpols import network_policies
from perstack_sandbox.kube._psa import restricted_violations
from perstack_sandbox.kube._render import rendered_manifests, to_yaml
from perstack_sandbox.kube._settings import KubeSettings, settings_from_env

__all__ = [
    "KubeSandbox",
    "KubeSettings",
    "KubernetesBackend",
    "RunObjects",
    "check_plan",
    "label_value",
    "network_policies",
    "rendered_manifests",
    "restricted_violations",
    "run_manifests",
    "settings_from_env",
    "to_yaml",
]
