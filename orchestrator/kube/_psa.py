"""A checker of the Pod Security Standards' `restricted` level (baseline rules included).

The backend refuses to create a pod that breaks a rule (fail closed, before the API server's
admission would), `render` output is checked by the tests, and a test breaks every rule once.
Rules follow the Kubernetes Pod Security Standards page (policy version `latest`): the
baseline controls, then the restricted ones. Each violation is one sentence naming the field.
"""

from __future__ import annotations

from typing import Any, Final

Manifest = dict[str, Any]

SAFE_SYSCTLS: Final = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
ALLOWED_VOLUMES: Final = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SELINUX_TYPES: Final = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
SECCOMP_RESTRICTED: Final = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_TYPES: Final = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION: Final = "container.apparmor.security.beta.kubernetes.io/"
CONTAINER_LISTS: Final = ("initContainers", "containers", "ephemeralContainers")


def restricted_violations(pod: Manifest) -> list[str]:
    """Return every way `pod` breaks the `restricted` Pod Security level (empty: it complies)."""
    spec: Manifest = pod.get("spec", {})
    pod_context: Manifest = spec.get("securityContext") or {}
    containers = [c for key in CONTAINER_LISTS for c in spec.get(key) or []]
    problems = [
        *_host_namespaces(spec),
        *_volumes(spec),
        *_sysctls(pod_context),
        *_apparmor_annotations(pod),
        *_context_rules("spec.securityContext", pod_context),
        *_run_as_non_root(pod_context, containers),
        *_seccomp(pod_context, containers),
    ]
    for container in containers:
        problems.extend(_container(container))
    return problems


def _host_namespaces(spec: Manifest) -> list[str]:
    return [
        f"spec.{key} must not be true"
        for key in ("hostNetwork", "hostPID", "hostIPC")
        if spec.get(key)
    ]


def _volumes(spec: Manifest) -> list[str]:
    problems = []
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        problems += [
            f"volume {volume.get('name')!r}: type {kind} is not allowed"
            for kind in sorted(kinds - ALLOWED_VOLUMES)
        ]
    return problems


def _sysctls(context: Manifest) -> list[str]:
    return [
        f"sysctl {item.get('name')!r} is not in the safe set"
        for item in context.get("sysctls") or []
        if item.get("name") not in SAFE_SYSCTLS
    ]


def _apparmor_annotations(pod: Manifest) -> list[str]:
    annotations: Manifest = pod.get("metadata", {}).get("annotations") or {}
    return [
        f"annotation {key}: AppArmor profile {value!r} is not runtime/default or localhost/*"
        for key, value in sorted(annotations.items())
        if key.startswith(APPARMOR_ANNOTATION)
        and value != "runtime/default"
        and not str(value).startswith("localhost/")
    ]


def _context_rules(where: str, context: Manifest) -> list[str]:
    """Rules that hold for the pod's and every container's securityContext alike."""
    problems = []
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        problems.append(f"{where}.windowsOptions.hostProcess must not be true")
    selinux: Manifest = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES:
        problems.append(f"{where}.seLinuxOptions.type {selinux['type']!r} is not allowed")
    problems += [
        f"{where}.seLinuxOptions.{key} must not be set"
        for key in ("user", "role")
        if selinux.get(key)
    ]
    apparmor = (context.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in APPARMOR_TYPES:
        problems.append(f"{where}.appArmorProfile.type {apparmor!r} is not allowed")
    if context.get("runAsUser") == 0:
        problems.append(f"{where}.runAsUser must not be 0")
    seccomp = (context.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp not in SECCOMP_RESTRICTED:
        problems.append(f"{where}.seccompProfile.type {seccomp!r} is not allowed")
    return problems


def _run_as_non_root(pod_context: Manifest, containers: list[Manifest]) -> list[str]:
    pod_level = pod_context.get("runAsNonRoot") is True
    problems = []
    for container in containers:
        value = (container.get("securityContext") or {}).get("runAsNonRoot")
        if value is False or (value is None and not pod_level):
            problems.append(f"container {container.get('name')!r}: runAsNonRoot must be true")
    return problems


def _seccomp(pod_context: Manifest, containers: list[Manifest]) -> list[str]:
    pod_level = (pod_context.get("seccompProfile") or {}).get("type") in SECCOMP_RESTRICTED
    return [
        f"container {container.get('name')!r}: seccompProfile must be RuntimeDefault or Localhost"
        for container in containers
        if not pod_level
        and ((container.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
        not in SECCOMP_RESTRICTED
    ]


def _container(container: Manifest) -> list[str]:
    name = container.get("name")
    context: Manifest = container.get("securityContext") or {}
    problems = _context_rules(f"container {name!r} securityContext", context)
    if context.get("privileged"):
        problems.append(f"container {name!r}: privileged must not be true")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append(f"container {name!r}: allowPrivilegeEscalation must be false")
    if context.get("procMount", "Default") != "Default":
        problems.append(f"container {name!r}: procMount must be Default")
    capabilities: Manifest = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        problems.append(f"container {name!r}: capabilities must drop ALL")
    problems += [
        f"container {name!r}: capability {cap} may not be added"
        for cap in capabilities.get("add") or []
        if cap != "NET_BIND_SERVICE"
    ]
    problems += [
        f"container {name!r}: hostPort {port['hostPort']} is not allowed"
        for port in container.get("ports") or []
        if port.get("hostPort")
    ]
    return problems
