"""A small evaluator of Kubernetes NetworkPolicy semantics, for the policy proofs.

It follows the networking.k8s.io/v1 API's documented semantics: a pod selected by a policy
whose policyTypes list a direction is isolated in that direction, and then only what some
rule of such a policy allows gets through; a connection needs the source's egress and the
destination's ingress both to allow it. A rule's peers: podSelector (in the policy's
namespace), namespaceSelector (all pods of matching namespaces), both (matching pods in
matching namespaces), ipBlock (an address in `cidr` and in no `except`). Empty `to`/`from` or
`ports` lists mean everything; a port's protocol defaults to TCP; `endPort` makes a range; a
named port matches the destination pod's container port of that name. policyTypes, when
omitted, is Ingress plus Egress when the policy has egress rules. Selectors support
matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist); `{}` selects all.

The connection is modelled after Service address translation (sandbox -> proxy pod).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """A pod (with namespace and labels) or an address outside the cluster's pods."""

    name: str
    ip: str
    namespace: str | None = None  # None: not a pod
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[str, int, str], ...] = ()  # named container ports: (name, port, protocol)

    @property
    def is_pod(self) -> bool:
        """Whether this endpoint is a pod (policies can select it)."""
        return self.namespace is not None


@dataclass
class Cluster:
    """Namespaces (with labels) and the policies in force."""

    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    policies: list[Manifest] = field(default_factory=list)

    def labels_of_namespace(self, name: str) -> dict[str, str]:
        """Return a namespace's labels, with the automatic kubernetes.io/metadata.name."""
        return {**self.namespace_labels.get(name, {}), "kubernetes.io/metadata.name": name}


def selects(selector: Manifest | None, labels: dict[str, str]) -> bool:
    """Return whether a label selector matches `labels` (`{}` matches everything)."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        matched = {
            "In": lambda k=key, v=values: k in labels and labels[k] in v,
            "NotIn": lambda k=key, v=values: k not in labels or labels[k] not in v,
            "Exists": lambda k=key: k in labels,
            "DoesNotExist": lambda k=key: k not in labels,
        }[operator]()
        if not matched:
            return False
    return True


def _policy_types(policy: Manifest) -> set[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return set(spec["policyTypes"])
    return {"Ingress"} | ({"Egress"} if spec.get("egress") else set())


def _peer_matches(peer: Manifest, policy_namespace: str, other: Endpoint, cluster: Cluster) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        inside = ipaddress.ip_network(block["cidr"])
        if address.version != inside.version or address not in inside:
            return False
        return not any(
            address in ipaddress.ip_network(cidr)
            for cidr in block.get("except") or []
            if ipaddress.ip_network(cidr).version == address.version
        )
    if not other.is_pod:
        return False
    assert other.namespace is not None
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], cluster.labels_of_namespace(other.namespace)):
            return False
    elif other.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), dict(other.labels))


def _port_matches(
    rule_ports: list[Manifest] | None, target: Endpoint, port: int, proto: str
) -> bool:
    if not rule_ports:
        return True
    for item in rule_ports:
        if item.get("protocol", "TCP") != proto:
            continue
        wanted = item.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            if any(n == wanted and p == port and pr == proto for n, p, pr in target.ports):
                return True
            continue
        if wanted <= port <= item.get("endPort", wanted):
            return True
    return False


def _direction_allows(  # noqa: PLR0913, PLR0917 - the connection and its direction
    cluster: Cluster, pod: Endpoint, other: Endpoint, port: int, proto: str, direction: str
) -> bool:
    """Return whether `pod`'s policies of `direction` let it talk with `other` on the port."""
    if not pod.is_pod:
        return True
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    # For egress the port is the destination's (`other`); for ingress it is `pod`'s own.
    target = other if direction == "Egress" else pod
    governing = [
        policy
        for policy in cluster.policies
        if policy["metadata"].get("namespace") == pod.namespace
        and direction in _policy_types(policy)
        and selects(policy["spec"].get("podSelector"), dict(pod.labels))
    ]
    if not governing:
        return True  # not isolated in this direction
    for policy in governing:
        namespace = policy["metadata"]["namespace"]
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(_peer_matches(p, namespace, other, cluster) for p in peers)
            if peer_ok and _port_matches(rule.get("ports"), target, port, proto):
                return True
    return False


def is_allowed(cluster: Cluster, source: Endpoint, dest: Endpoint, port: int, proto: str) -> bool:
    """Return whether a connection from `source` to `dest` on `port`/`proto` gets through."""
    return _direction_allows(cluster, source, dest, port, proto, "Egress") and _direction_allows(
        cluster, dest, source, port, proto, "Ingress"
    )
