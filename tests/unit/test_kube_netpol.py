"""The NetworkPolicies of a run, proven over every pair of endpoints and ports (simulated).

No cluster runs here: `netpol_eval` evaluates the policies' documented semantics. The proof
enumerates (sandbox, proxy, other pods, another run's pods, cluster DNS, metadata, private and
public addresses) x (the same) x ports, and the allowed set must be exactly sandbox ->
proxy:3128, proxy -> public:443 and proxy -> DNS:53.
"""

from __future__ import annotations

import copy
import itertools

import pytest
from netpol_eval import Cluster, Endpoint, is_allowed, selects

from perstack_sandbox.kube import KubeSettings, network_policies
from perstack_sandbox.kube._labels import LABEL_ROLE, LABEL_RUN

NAMESPACE = "perstack-sandbox"
RUN = "20261130-000000-abcdef"
SETTINGS = KubeSettings(namespace=NAMESPACE)


def _pod(name: str, ip: str, namespace: str = NAMESPACE, **labels: str) -> Endpoint:
    return Endpoint(name, ip, namespace, tuple(sorted(labels.items())))


def _run_pod(name: str, ip: str, run: str, role: str) -> Endpoint:
    return Endpoint(name, ip, NAMESPACE, ((LABEL_ROLE, role), (LABEL_RUN, run)))


SANDBOX = _run_pod("sandbox", "10.244.1.10", RUN, "sandbox")
PROXY = _run_pod("proxy", "10.244.1.11", RUN, "proxy")
ENDPOINTS = (
    SANDBOX,
    PROXY,
    _run_pod("other-run-sandbox", "10.244.1.20", "20261130-000000-ffffff", "sandbox"),
    _run_pod("other-run-proxy", "10.244.1.21", "20261130-000000-ffffff", "proxy"),
    _pod("other-pod", "10.244.1.30", app="web"),
    _pod("other-namespace-pod", "10.244.2.30", "default", app="web"),
    _pod("dns", "10.244.0.2", "kube-system", **{"k8s-app": "kube-dns"}),
    Endpoint("metadata", "169.254.169.254"),
    Endpoint("private-10", "10.0.0.5"),
    Endpoint("private-192", "192.168.1.1"),
    Endpoint("cgnat", "100.64.0.1"),
    Endpoint("service-range", "10.96.0.1"),
    Endpoint("ula-v6", "fd00::1"),
    Endpoint("mapped-v6-metadata", "::ffff:169.254.169.254"),
    Endpoint("public", "93.184.216.34"),
    Endpoint("public-v6", "2606:4700:4700::1111"),
)
PORTS = (
    ("TCP", 3128),
    ("TCP", 443),
    ("TCP", 80),
    ("TCP", 53),
    ("UDP", 53),
    ("TCP", 22),
    ("UDP", 443),
    ("TCP", 8080),
    ("TCP", 10250),
)
EXPECTED = {
    ("sandbox", "proxy", "TCP", 3128),
    ("proxy", "public", "TCP", 443),
    ("proxy", "public-v6", "TCP", 443),
    ("proxy", "dns", "UDP", 53),
    ("proxy", "dns", "TCP", 53),
}


def _allowed(policies: list[dict[str, object]]) -> set[tuple[str, str, str, int]]:
    """Every allowed (source, destination, protocol, port) that involves this run's pods."""
    cluster = Cluster(policies=policies)
    ours = {SANDBOX.name, PROXY.name}
    return {
        (source.name, dest.name, proto, port)
        for source, dest in itertools.permutations(ENDPOINTS, 2)
        if source.name in ours or dest.name in ours
        for proto, port in PORTS
        if is_allowed(cluster, source, dest, port, proto)
    }


def _policies() -> list[dict[str, object]]:
    objects_labels = {LABEL_RUN: RUN}
    return network_policies(
        RUN,
        lambda role: {**objects_labels, LABEL_ROLE: role},
        lambda role: {LABEL_RUN: RUN, LABEL_ROLE: role},
        SETTINGS,
    )


def test_only_sandbox_to_proxy_and_proxy_to_public_https_and_dns_are_allowed():
    """Over every pair and port, the allowed set is exactly the five expected connections.

    Seen failing with the proxy's IPv4 ipBlock stripped of its `except` list in _netpols.py
    (proxy -> metadata, private and CGNAT addresses on 443 appeared).
    """
    assert _allowed(_policies()) == EXPECTED


def test_without_policies_everything_would_be_allowed():
    """The evaluator is not vacuous: with no policy every pod connection goes through."""
    allowed = _allowed([])
    assert ("sandbox", "metadata", "TCP", 80) in allowed
    assert ("other-pod", "sandbox", "TCP", 8080) in allowed


def _loosen_sandbox_dns(policies):
    policies[0]["spec"]["egress"].append({"ports": [{"protocol": "UDP", "port": 53}]})


def _drop_except(policies):
    policies[1]["spec"]["egress"][0]["to"][0]["ipBlock"].pop("except")


def _drop_ingress_type(policies):
    policies[0]["spec"]["policyTypes"] = ["Egress"]


def _open_proxy_ports(policies):
    policies[1]["spec"]["egress"][0].pop("ports")


def _proxy_ingress_from_anyone(policies):
    policies[1]["spec"]["ingress"][0].pop("from")


def _select_any_run(policies):
    policies[0]["spec"]["egress"][0]["to"][0]["podSelector"]["matchLabels"].pop(LABEL_RUN)
    policies[1]["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"].pop(LABEL_RUN)


def _dns_any_namespace(policies):
    policies[1]["spec"]["egress"][1]["to"][0].pop("namespaceSelector")
    policies[1]["spec"]["egress"][1]["to"][0]["podSelector"] = {}


@pytest.mark.parametrize(
    "loosen",
    [
        _loosen_sandbox_dns,
        _drop_except,
        _drop_ingress_type,
        _open_proxy_ports,
        _proxy_ingress_from_anyone,
        _select_any_run,
        _dns_any_namespace,
    ],
)
def test_the_proof_fails_when_a_policy_is_loosened(loosen):
    """Each loosening (sandbox DNS, no except, no ingress isolation, ...) shows up as extra pairs.

    This is the hand check of the proof above, made permanent: every loosening was seen to
    add allowed pairs (the proof's equality fails), so the proof depends on each rule.
    """
    policies = copy.deepcopy(_policies())
    loosen(policies)
    extra = _allowed(policies) - EXPECTED
    assert extra, f"{loosen.__name__} allowed nothing new"


def test_a_cluster_range_outside_the_private_ones_is_excluded_too():
    """A cluster CIDR from the settings joins the proxy's exceptions (so 443 there is denied)."""
    settings = KubeSettings(namespace=NAMESPACE, cluster_cidrs=("34.118.224.0/20",))
    policies = network_policies(
        RUN,
        lambda role: {LABEL_ROLE: role},
        lambda role: {LABEL_RUN: RUN, LABEL_ROLE: role},
        settings,
    )
    cluster = Cluster(policies=policies)
    assert not is_allowed(cluster, PROXY, Endpoint("gke-svc", "34.118.224.10"), 443, "TCP")
    assert is_allowed(cluster, PROXY, Endpoint("public", "93.184.216.34"), 443, "TCP")


def test_selector_expressions_follow_the_api_semantics():
    """MatchExpressions In/NotIn/Exists/DoesNotExist and the empty selector behave as documented."""
    labels = {"a": "1"}
    assert selects({}, labels)
    assert selects({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, labels)
    assert not selects(
        {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, labels
    )
    assert selects({"matchExpressions": [{"key": "b", "operator": "DoesNotExist"}]}, labels)
    assert not selects({"matchExpressions": [{"key": "b", "operator": "Exists"}]}, labels)
