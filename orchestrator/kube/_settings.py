"""Settings of the Kubernetes backend, from the environment, and the facts it shares with Docker.

The uids are the ones baked into the sandbox image (images/sandbox.Dockerfile), the same as
the Docker backend's (a unit test holds them equal).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from perstack_sandbox.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping

PROXY_PORT: Final = 3128
SANDBOX_UID: Final = 10000  # the idle process of a sandbox without stdio skills
PROXY_UID: Final = 10000  # the proxy image's user
SKILL_UID_FIRST: Final = 10001
SKILL_UID_COUNT: Final = 32
DEFAULT_NAMESPACE: Final = "perstack-sandbox"
ENV_NAMESPACE: Final = "PERSTACK_SANDBOX_K8S_NAMESPACE"
ENV_RUNTIME_CLASS: Final = "PERSTACK_SANDBOX_K8S_RUNTIME_CLASS"
ENV_CLUSTER_CIDRS: Final = "PERSTACK_SANDBOX_K8S_CLUSTER_CIDRS"
ENV_DNS_NAMESPACE: Final = "PERSTACK_SANDBOX_K8S_DNS_NAMESPACE"
ENV_DNS_SELECTOR: Final = "PERSTACK_SANDBOX_K8S_DNS_LABELS"
GVISOR_RUNTIME_CLASS: Final = "gvisor"
DNS_LABELS: Final[tuple[tuple[str, str], ...]] = (
    ("k8s-app", "kube-dns"),
)  # CoreDNS and kube-dns both carry it


@dataclass(frozen=True, slots=True)
class KubeSettings:
    """Where and how the Kubernetes backend puts a run."""

    namespace: str = DEFAULT_NAMESPACE
    # gVisor or Kata, when the cluster has such a RuntimeClass; None: the cluster's default
    runtime_class: str | None = None
    # The cluster's own pod and service ranges, when they are not private addresses already:
    # the proxy may never dial them (the private ranges are always excluded).
    cluster_cidrs: tuple[str, ...] = ()
    # Where the proxy's resolver is: cluster DNS pods in their namespace.
    dns_namespace: str = "kube-system"
    dns_labels: tuple[tuple[str, str], ...] = DNS_LABELS
    image_pull_policy: str = "IfNotPresent"


def settings_from_env(environ: Mapping[str, str] | None = None) -> KubeSettings:
    """Return the settings from `PERSTACK_SANDBOX_K8S_*` variables (defaults otherwise).

    Raises:
        UsageError: a cluster CIDR or a DNS label is malformed.

    """
    env = os.environ if environ is None else environ
    cidrs = tuple(item.strip() for item in env.get(ENV_CLUSTER_CIDRS, "").split(",") if item)
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr)
        except ValueError as exc:
            raise UsageError(f"${ENV_CLUSTER_CIDRS}: {cidr!r} is not a CIDR") from exc
    labels = DNS_LABELS
    if env.get(ENV_DNS_SELECTOR):
        pairs = [item.partition("=") for item in env[ENV_DNS_SELECTOR].split(",")]
        if any(not key or not sep for key, sep, _ in pairs):
            raise UsageError(f"${ENV_DNS_SELECTOR}: write KEY=VALUE[,KEY=VALUE]")
        labels = tuple((key, value) for key, _, value in pairs)
    return KubeSettings(
        namespace=env.get(ENV_NAMESPACE) or DEFAULT_NAMESPACE,
        runtime_class=env.get(ENV_RUNTIME_CLASS) or None,
        cluster_cidrs=cidrs,
        dns_namespace=env.get(ENV_DNS_NAMESPACE) or "kube-system",
        dns_labels=labels,
    )
