"""The Kubernetes manifests: strict OpenAPI validation on three minors, `restricted`, render.

No cluster runs here. `kubernetes-validate` checks each object against the published OpenAPI
schemas of Kubernetes 1.35, 1.36 and 1.37 in strict mode (unknown fields are errors), and
`restricted_violations` checks every pod against the Pod Security Standards' restricted level.
"""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from perstack_sandbox import engine
from perstack_sandbox.cli import main
from perstack_sandbox.config import load_config
from perstack_sandbox.kube import (
    KubeSettings,
    RunObjects,
    _settings,
    rendered_manifests,
    restricted_violations,
    run_manifests,
    to_yaml,
)
from perstack_sandbox.plan import plan

FIXTURE = Path(__file__).parent.parent / "fixtures" / "kube_expert.toml"
VERSIONS = ("1.35.0", "1.36.0", "1.37.0")


def _plan():
    config, _ = load_config(FIXTURE)
    return plan(config, "kube-demo")


def _rendered(settings: KubeSettings | None = None):
    return rendered_manifests(
        _plan(), settings or KubeSettings(), sandbox_image="expert:1", proxy_image="proxy:1"
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_object_validates_strictly_against_the_openapi_schema(version):
    """Each object passes strict validation for this minor (not a fallback to another one)."""
    settings = KubeSettings(runtime_class="gvisor", cluster_cidrs=("34.118.224.0/20",))
    for manifest in _rendered(settings):
        validated = kubernetes_validate.validate(manifest, version, strict=True)
        assert validated == version.rsplit(".", 1)[0]


def test_strict_validation_rejects_an_unknown_field():
    """The validator is strict: a misspelt field in the pod spec is an error."""
    pod = next(m for m in _rendered() if m["kind"] == "Pod")
    pod["spec"]["automountServiceAcountToken"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, VERSIONS[0], strict=True)


def test_every_pod_meets_the_restricted_pod_security_level():
    """The proxy and the sandbox pod break no restricted (or baseline) rule.

    Seen failing with allowPrivilegeEscalation set to True in _manifests.py.
    """
    pods = [m for m in _rendered() if m["kind"] == "Pod"]
    assert len(pods) == 2
    for pod in pods:
        assert restricted_violations(pod) == []


def test_the_namespace_enforces_restricted():
    """The rendered namespace is labelled to enforce, audit and warn at the restricted level."""
    namespace = _rendered()[0]
    assert namespace["kind"] == "Namespace"
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_each_skill_has_its_own_container_uid_and_scratch():
    """Two skills: two containers, distinct non-root uids, own /tmp and /home volumes."""
    sandbox = next(
        m for m in _rendered() if m["metadata"]["name"].endswith("-sandbox") and m["kind"] == "Pod"
    )
    containers = sandbox["spec"]["containers"]
    uids = [c["securityContext"]["runAsUser"] for c in containers]
    assert uids == [engine.SKILL_UID_FIRST, engine.SKILL_UID_FIRST + 1]
    volumes = [{m["name"] for m in c["volumeMounts"]} for c in containers]
    assert volumes[0] & volumes[1] == {"workspace"}
    assert json.loads(sandbox["metadata"]["annotations"]["perstack-sandbox/skills"]) == [
        launch.name for launch in _plan().skills
    ]


def test_the_sandbox_pod_has_no_token_no_dns_and_hardened_containers():
    """No service-account token, loopback-only DNS, and every container locked down."""
    sandbox = next(
        m for m in _rendered() if m["kind"] == "Pod" and "sandbox" in m["metadata"]["name"]
    )
    spec = sandbox["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["dnsPolicy"] == "None"
    assert spec["dnsConfig"] == {"nameservers": ["127.0.0.1"]}
    assert spec["enableServiceLinks"] is False
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["limits"]["memory"]


def test_the_runtime_class_is_set_only_when_asked():
    """RuntimeClassName appears with a runtime class in the settings, and not without."""

    def sandbox(settings):
        return next(
            m
            for m in _rendered(settings)
            if m["metadata"]["name"] == "psb-render-sandbox" and m["kind"] == "Pod"
        )

    assert "runtimeClassName" not in sandbox(KubeSettings())["spec"]
    assert sandbox(KubeSettings(runtime_class="kata"))["spec"]["runtimeClassName"] == "kata"


def test_no_secret_value_reaches_any_object():
    """A run's manifests hold the proxy tokens only in the Secret, and no skill secret at all.

    The skill secrets never enter `run_manifests` (they travel over stdin), so the check is on
    the tokens: only the policy Secret may carry them.
    """
    tokens = {"search": "TOKEN-search-0123456789", "fetch": "TOKEN-fetch-0123456789"}
    policy = engine.proxy_policy(_plan(), "run1", (), tokens)
    objects = RunObjects("run1", "expert:1", "proxy:1")
    for manifest in run_manifests(_plan(), objects, KubeSettings(), policy):
        text = json.dumps(manifest)
        holds = any(token in text for token in tokens.values())
        assert holds == (manifest["kind"] == "Secret"), manifest["kind"]


def _cli(monkeypatch, capsys, *args):
    """Run the console script with `args`; return (exit code, stdout, stderr)."""
    monkeypatch.setattr("sys.argv", ["perstack-sandbox", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_render_prints_the_same_yaml_twice_and_no_token(monkeypatch, capsys):
    """`render kubernetes` exits 0, prints identical bytes twice, with placeholder tokens."""
    args = [
        "render",
        "kubernetes",
        "kube-demo",
        "-c",
        str(FIXTURE),
        "--image",
        "e:1",
        "--proxy-image",
        "p:1",
    ]
    code, first, err = _cli(monkeypatch, capsys, *args)
    assert (code, err) == (0, "")
    assert _cli(monkeypatch, capsys, *args)[1] == first
    documents = list(yaml.safe_load_all(first))
    assert [d["kind"] for d in documents] == [
        "Namespace",
        "ConfigMap",
        "Secret",
        "NetworkPolicy",
        "NetworkPolicy",
        "Service",
        "Pod",
        "Pod",
    ]
    assert "minted-per-run:search" in first
    assert to_yaml(documents) == first


def test_render_refuses_an_expert_with_a_local_skill(monkeypatch, capsys):
    """A local skill needs this host's folder: render exits 2 and says so."""
    examples = Path(__file__).parent.parent.parent / "examples" / "perstack.toml"
    code, _out, err = _cli(monkeypatch, capsys, "render", "kubernetes", "demo", "-c", str(examples))
    assert code == 2
    assert "local skills" in err


def test_the_uids_match_the_docker_backend():
    """The Kubernetes backend's skill uids are the ones the image and Docker backend use."""
    assert _settings.SKILL_UID_FIRST == engine.SKILL_UID_FIRST
    assert _settings.SKILL_UID_COUNT == engine.SKILL_UID_COUNT
