"""The `restricted` Pod Security checker rejects each violation of the standard, one at a time.

Each case starts from a compliant pod, breaks one rule of the Pod Security Standards (baseline
or restricted), and expects a violation; the compliant pod itself has none.
"""

from __future__ import annotations

import copy

import pytest

from perstack_sandbox.kube import restricted_violations

COMPLIANT = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p"},
    "spec": {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "c",
                "image": "i",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "runAsUser": 10001,
                },
            }
        ],
        "volumes": [{"name": "v", "emptyDir": {}}],
    },
}


def _container(pod):
    return pod["spec"]["containers"][0]["securityContext"]


def _set(path, *, value):
    """Return a mutation that sets `path` (under spec) to `value`."""

    def mutate(pod):
        target = pod["spec"]
        for key in path[:-1]:
            target = target.setdefault(key, {}) if isinstance(key, str) else target[key]
        target[path[-1]] = value

    return mutate


CASES = {
    "hostNetwork": _set(("hostNetwork",), value=True),
    "hostPID": _set(("hostPID",), value=True),
    "hostIPC": _set(("hostIPC",), value=True),
    "privileged": lambda pod: _container(pod).update(privileged=True),
    "hostProcess": lambda pod: _container(pod).update(windowsOptions={"hostProcess": True}),
    "capability added": lambda pod: _container(pod)["capabilities"].update(add=["NET_ADMIN"]),
    "ALL not dropped": lambda pod: _container(pod)["capabilities"].update(drop=["NET_RAW"]),
    "hostPath volume": lambda pod: pod["spec"]["volumes"].append(
        {"name": "h", "hostPath": {"path": "/"}}
    ),
    "nfs volume": lambda pod: pod["spec"]["volumes"].append(
        {"name": "n", "nfs": {"server": "s", "path": "/"}}
    ),
    "hostPort": lambda pod: pod["spec"]["containers"][0].update(
        ports=[{"containerPort": 80, "hostPort": 80}]
    ),
    "AppArmor unconfined": lambda pod: pod["metadata"].update(
        annotations={"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}
    ),
    "AppArmor field unconfined": lambda pod: _container(pod).update(
        appArmorProfile={"type": "Unconfined"}
    ),
    "SELinux type": lambda pod: _container(pod).update(seLinuxOptions={"type": "spc_t"}),
    "SELinux user": lambda pod: _container(pod).update(seLinuxOptions={"user": "root"}),
    "procMount": lambda pod: _container(pod).update(procMount="Unmasked"),
    "seccomp unconfined": lambda pod: _container(pod).update(seccompProfile={"type": "Unconfined"}),
    "seccomp missing": lambda pod: pod["spec"]["securityContext"].pop("seccompProfile"),
    "unsafe sysctl": _set(
        ("securityContext", "sysctls"), value=[{"name": "kernel.msgmax", "value": "1"}]
    ),
    "privilege escalation": lambda pod: _container(pod).update(allowPrivilegeEscalation=True),
    "privilege escalation unset": lambda pod: _container(pod).pop("allowPrivilegeEscalation"),
    "runAsNonRoot missing": lambda pod: pod["spec"]["securityContext"].pop("runAsNonRoot"),
    "runAsNonRoot false": lambda pod: _container(pod).update(runAsNonRoot=False),
    "runAsUser 0": lambda pod: _container(pod).update(runAsUser=0),
    "init container": lambda pod: pod["spec"].update(
        initContainers=[{"name": "init", "image": "i"}]
    ),
}


def test_the_compliant_pod_has_no_violation():
    """The starting point of every case passes."""
    assert restricted_violations(copy.deepcopy(COMPLIANT)) == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_broken_rule_is_reported(case):
    """Breaking one rule yields at least one violation."""
    pod = copy.deepcopy(COMPLIANT)
    CASES[case](pod)
    assert restricted_violations(pod), case
