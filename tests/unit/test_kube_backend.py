"""The Kubernetes backend through the real client code path, against a fake API server.

No cluster runs here: `kube_fake_api` answers the REST and websocket calls over loopback, and
`kubernetes_asyncio` makes them exactly as it would against a cluster (its request building,
its watch, its websocket exec client). What a real API server or kubelet does beyond that
(admission, scheduling, NetworkPolicy enforcement) is not simulated.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from kube_fake_api import FakeApi, serving, serving_in_thread
from kubernetes_asyncio.client import Configuration

from perstack_sandbox import state
from perstack_sandbox.cli import main
from perstack_sandbox.config import load_config
from perstack_sandbox.errors import EngineError, UsageError
from perstack_sandbox.kube import KubernetesBackend, KubeSettings
from perstack_sandbox.kube._labels import LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_RUN
from perstack_sandbox.plan import plan

pytestmark = pytest.mark.anyio

FIXTURE = Path(__file__).parent.parent / "fixtures" / "kube_expert.toml"
SECRET = "s3cret-value-that-must-stay-out-of-objects"  # noqa: S105 - a test value
DEADLINE_S = 10
RUN_ID = "20261130-000000-aaaaaa"


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Return a run folder in a private state directory."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "state"))
    return state.create_run("kube-demo", run_id=RUN_ID)


def _plan():
    config, _ = load_config(FIXTURE)
    return plan(config, "kube-demo")


def _backend(fake: FakeApi) -> KubernetesBackend:
    return KubernetesBackend(KubeSettings(namespace="sandboxes"), Configuration(host=fake.url))


async def test_a_run_is_created_in_order_execs_a_skill_and_leaves_nothing(run):
    """Create (policies before pods, owner refs), watch ready, exec with env over stdin, delete.

    The secret reaches the skill's exec stdin and nothing else: no object body, no request.
    Seen failing with the environment's values appended to the exec command in _exec.py.
    """
    async with serving(FakeApi()) as fake:
        with anyio.fail_after(DEADLINE_S):
            async with _backend(fake).open_sandbox(_plan(), image="expert:1", run=run) as box:
                kinds = [body["kind"] for body in fake.created]
                assert kinds == [
                    "ConfigMap",
                    "Secret",
                    "NetworkPolicy",
                    "NetworkPolicy",
                    "Service",
                    "Pod",
                    "Pod",
                ]
                root_uid = "uid-0"
                for body in fake.created[1:]:
                    assert body["metadata"]["ownerReferences"][0]["uid"] == root_uid
                assert box.proxy_env("search")["HTTPS_PROXY"].endswith("@10.96.0.50:3128")
                async with box.exec_stdio(
                    ["/opt/perstack/entry/search"],
                    env={"EXA_API_KEY": SECRET},
                    user=box.skill_uid(0),
                    workdir="/workspace",
                ) as process:
                    await process.stdin.send(b'{"jsonrpc": "2.0", "id": 1}\n')
                    echoed = await process.stdout.receive()
                    said = await process.stderr.receive()
                assert echoed == b'{"jsonrpc": "2.0", "id": 1}\n'
                assert said.startswith(b"stderr:")
                assert await process.wait() == 137  # killed on exit, by its uid's kill
        session = fake.execs[0]
        assert session.container == "skill-0"
        assert session.command[:3] == ["python3", "-I", "-c"]
        assert session.command[-1] == "/opt/perstack/entry/search"
        assert session.env == {"EXA_API_KEY": SECRET, "HOME": "/home/skill10001"}
        assert SECRET not in json.dumps(fake.created) + "".join(fake.requests)
        assert fake.objects == {}
        assert sorted(kind for kind, _ in fake.deleted) == sorted(kinds)


async def test_the_proxy_log_goes_to_the_audit_and_the_proxy_log(run):
    """JSON lines of the proxy's log land in audit.jsonl, the rest in proxy.log."""
    async with serving(FakeApi()) as fake:
        with anyio.fail_after(DEADLINE_S):
            async with _backend(fake).open_sandbox(_plan(), image="expert:1", run=run) as box:
                await box.log_copied.wait()
                assert box.proxy_log_error == ""
    assert b'"skill": "search"' in run.audit_path.read_bytes()
    assert run.proxy_log_path.read_bytes() == b"proxy: listening on 0.0.0.0:3128\n"


async def test_down_by_labels_ends_the_run_and_the_gateway_hears_why(run):
    """`take_down` from another client deletes the pods; the run's watch reports both ends."""
    async with serving(FakeApi()) as fake:
        with anyio.fail_after(DEADLINE_S):
            async with _backend(fake).open_sandbox(_plan(), image="expert:1", run=run) as box:
                assert await box.egress_problem() is None
                removed = await _backend(fake).take_down(RUN_ID)
                assert "pod: psb-20261130-000000-aaaaaa-sandbox" in removed
                reason = await box.wait_stopped()
                assert "was deleted" in reason
                assert "egress is down" in (await box.egress_problem() or "")


async def test_a_namespace_without_restricted_is_refused_before_any_object(run):
    """No `enforce: restricted` label on the namespace: EngineError, and nothing is created."""
    fake = FakeApi(namespace_labels={})
    async with serving(fake):
        with anyio.fail_after(DEADLINE_S), pytest.raises(EngineError, match="restricted"):
            async with _backend(fake).open_sandbox(_plan(), image="expert:1", run=run):
                pass
    assert fake.created == []


async def test_ps_lists_runs_and_gc_removes_only_dead_owners(run):
    """A run whose owner pid is dead on this host is collected; a live owner's run stays."""
    async with serving(FakeApi()) as fake:
        with anyio.fail_after(DEADLINE_S):
            async with _backend(fake).open_sandbox(_plan(), image="expert:1", run=run):
                runs = await _backend(fake).list_runs()
                assert [info.run_id for info in runs] == [RUN_ID]
                assert runs[0].is_owner_alive
                assert runs[0].expert == "kube-demo"
                assert await _backend(fake).collect_garbage() == []
                host = runs[0].owner_host
            dead = {
                LABEL_RUN: "dead-run",
                "perstack-sandbox/managed": "1",
                LABEL_OWNER_HOST: host,
                LABEL_OWNER_PID: "999999999",
            }
            fake.objects["ConfigMap", "psb-dead-run"] = {
                "metadata": {"name": "psb-dead-run", "labels": dead}
            }
            assert await _backend(fake).collect_garbage() == ["configmap: psb-dead-run"]


async def test_a_plan_with_a_local_skill_is_refused_before_the_cluster_is_asked(run):
    """The example's local skill needs this host's folder: UsageError, no request made."""
    examples = Path(__file__).parent.parent.parent / "examples" / "perstack.toml"
    config, _ = load_config(examples)
    async with serving(FakeApi()) as fake:
        with pytest.raises(UsageError, match="local skills"):
            async with _backend(fake).open_sandbox(plan(config, "demo"), image="e", run=run):
                pass
    assert fake.requests == []


async def test_an_unreachable_cluster_is_an_engine_error(run):
    """Nothing listens at the configured host: EngineError naming what was being done."""
    backend = KubernetesBackend(KubeSettings(), Configuration(host="http://127.0.0.1:9"))
    with anyio.fail_after(DEADLINE_S), pytest.raises(EngineError, match="cannot be reached"):
        async with backend.open_sandbox(_plan(), image="expert:1", run=run):
            pass


def _kubeconfig(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "me", "user": {"token": "t"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}],
                "current-context": "fake",
            }
        )
    )
    return path


def _cli(monkeypatch, capsys, *args):
    monkeypatch.setattr("sys.argv", ["perstack-sandbox", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_ps_down_and_gc_reach_the_cluster_of_the_kubeconfig(tmp_path, monkeypatch, capsys):
    """With --backend kubernetes, ps lists a run from $KUBECONFIG's cluster, down removes it."""
    fake = FakeApi()
    labels = {
        LABEL_RUN: RUN_ID,
        "perstack-sandbox/managed": "1",
        LABEL_OWNER_HOST: "elsewhere",
        LABEL_OWNER_PID: "1",
    }
    fake.objects["ConfigMap", "psb-run"] = {"metadata": {"name": "psb-run", "labels": labels}}
    with serving_in_thread(fake):
        monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path, fake.url)))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        code, out, _ = _cli(monkeypatch, capsys, "ps", "--backend", "kubernetes")
        assert code == 0
        assert out.startswith(RUN_ID)
        code, _, err = _cli(monkeypatch, capsys, "gc", "--backend", "kubernetes")
        assert (code, fake.deleted) == (0, [])  # another host's run: never collected
        code, _, err = _cli(monkeypatch, capsys, "down", RUN_ID, "--backend", "kubernetes")
        assert code == 0
        assert "removed configmap: psb-run" in err
    assert fake.objects == {}
    assert any(
        request.startswith("GET /api/v1/namespaces/perstack-sandbox/configmaps")
        for request in fake.requests
    )
