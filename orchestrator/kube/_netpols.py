"""The NetworkPolicies of one run: the Docker networks' fence, in Kubernetes terms (decision 44).

```
sandbox pod ──TCP 3128──► proxy pod ──TCP 443──► public addresses only
   (no DNS, nothing in)        └──UDP/TCP 53──► cluster DNS (the proxy's own resolver)
```

Both pods are selected by a policy with both policy types, so everything not allowed here is
denied (a selected pod is default-deny for each listed type). The proxy's 443 rule excludes
every non-public range the proxy itself refuses (decision 3) plus the cluster's own ranges; the
proxy still checks each resolved address, so the policy is the second wall, not the only one.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Final

from perstack_sandbox.kube._labels import ROLE_PROXY, ROLE_SANDBOX
from perstack_sandbox.kube._settings import PROXY_PORT, KubeSettings
from perstack_sandbox_proxy import NON_PUBLIC_NETWORKS

if TYPE_CHECKING:
    from collections.abc import Callable

Manifest = dict[str, Any]

HTTPS_PORT: Final = 443
DNS_PORT: Final = 53
# IPv4 carried inside IPv6 (mapped, translated, compatible): the proxy refuses these forms too.
EMBEDDED_IPV4: Final = ("::ffff:0:0/96", "::ffff:0:0:0/96", "::/96")


def excluded_cidrs(settings: KubeSettings) -> tuple[list[str], list[str]]:
    """Return the IPv4 and IPv6 ranges the proxy may never reach, each sorted and unique."""
    networks = {*NON_PUBLIC_NETWORKS, *map(ipaddress.ip_network, EMBEDDED_IPV4)}
    networks |= {ipaddress.ip_network(cidr, strict=False) for cidr in settings.cluster_cidrs}
    v4 = sorted(str(net) for net in networks if net.version == 4)  # noqa: PLR2004
    v6 = sorted(str(net) for net in networks if net.version == 6)  # noqa: PLR2004
    return v4, v6


def network_policies(
    run_id: str,
    labels: Callable[[str], dict[str, str]],
    selector: Callable[[str], dict[str, str]],
    settings: KubeSettings,
) -> list[Manifest]:
    """Return the sandbox's and the proxy's NetworkPolicy."""
    proxy_port = [{"protocol": "TCP", "port": PROXY_PORT}]
    sandbox = {
        "podSelector": {"matchLabels": selector(ROLE_SANDBOX)},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [],  # nothing may reach the sandbox
        "egress": [
            {"to": [{"podSelector": {"matchLabels": selector(ROLE_PROXY)}}], "ports": proxy_port}
        ],
    }
    v4, v6 = excluded_cidrs(settings)
    dns_peer = {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": settings.dns_namespace}
        },
        "podSelector": {"matchLabels": dict(settings.dns_labels)},
    }
    proxy = {
        "podSelector": {"matchLabels": selector(ROLE_PROXY)},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": selector(ROLE_SANDBOX)}}],
                "ports": proxy_port,
            }
        ],
        "egress": [
            {
                "to": [
                    {"ipBlock": {"cidr": "0.0.0.0/0", "except": v4}},
                    {"ipBlock": {"cidr": "::/0", "except": v6}},
                ],
                "ports": [{"protocol": "TCP", "port": HTTPS_PORT}],
            },
            {
                "to": [dns_peer],
                "ports": [
                    {"protocol": "UDP", "port": DNS_PORT},
                    {"protocol": "TCP", "port": DNS_PORT},
                ],
            },
        ],
    }
    return [
        _policy(f"psb-{run_id}-sandbox", settings, labels("netpol-sandbox"), sandbox),
        _policy(f"psb-{run_id}-proxy", settings, labels("netpol-proxy"), proxy),
    ]


def _policy(name: str, settings: KubeSettings, labels: dict[str, str], spec: Manifest) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": spec,
    }
