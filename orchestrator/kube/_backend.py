"""The Kubernetes backend: a run's pods, Service, policies and Secret, behind the engine's seam.

`KubernetesBackend.open_sandbox` checks the plan (stdio npx/uvx skills only), checks that the
namespace enforces `restricted`, refuses any pod our own checker rejects, creates the run's
objects (policies first), waits until the proxy is ready and every skill container runs, and
yields a `KubeSandbox`. One watch on the run's pods tells the gateway when egress or the
sandbox is gone; the proxy's log is copied into the run's files as it comes. On exit every
object labelled with the run goes, shielded and bounded in time.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import anyio

from perstack_sandbox import engine, images
from perstack_sandbox.errors import EngineError, UsageError
from perstack_sandbox.isolation import DEFAULT_ISOLATION
from perstack_sandbox.kube import _objects, _runs
from perstack_sandbox.kube._client import api_client, load_configuration
from perstack_sandbox.kube._exec import open_exec
from perstack_sandbox.kube._labels import (
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_START,
    LABEL_OWNER_USER,
    label_value,
    run_selector,
)
from perstack_sandbox.kube._manifests import RunObjects, container_name, run_manifests
from perstack_sandbox.kube._psa import restricted_violations
from perstack_sandbox.kube._settings import (
    GVISOR_RUNTIME_CLASS,
    PROXY_PORT,
    SKILL_UID_COUNT,
    SKILL_UID_FIRST,
    KubeSettings,
    settings_from_env,
)
from perstack_sandbox.kube._watch import copy_proxy_log, wait_ready, watch_run
from perstack_sandbox.procs import process_start_ticks
from perstack_sandbox.state import write_private

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence
    from pathlib import Path

    from kubernetes_asyncio.client import ApiClient, Configuration

    from perstack_sandbox.engine import BackendName, RunInfo, StdioProcess, TestNetwork
    from perstack_sandbox.isolation import Isolation
    from perstack_sandbox.plan import SandboxPlan, SealedSecrets
    from perstack_sandbox.state import RunState

TEARDOWN_TIMEOUT_S: Final = 30.0  # listing and deleting a handful of objects


@dataclass(eq=False)
class KubeSandbox:
    """A started sandbox pod and its proxy, as a run uses it (`engine.SandboxHandle`)."""

    run_id: str
    configuration: Configuration
    namespace: str
    pod: str
    proxy_pod: str
    # The address of the proxy and each skill's token, and the proxy variables built from them:
    # the same code as on Docker, so both backends give a skill the same environment.
    address: engine.Sandbox
    skill_count: int
    proxy_down: str | None = None
    proxy_log_error: str = ""  # why the proxy's log could not be copied (the audit is short)
    log_copied: anyio.Event = field(default_factory=anyio.Event)  # the proxy's log has ended
    sandbox_end: anyio.Event = field(default_factory=anyio.Event)
    end_reason: str = ""

    def proxy_env(self, skill: str | None = None) -> dict[str, str]:
        """Return the proxy and CA variables of `skill`'s process (its token in the URL)."""
        return self.address.proxy_env(skill)

    def skill_uid(self, index: int) -> int:
        """Return the uid of the `index`-th skill (its container's runAsUser).

        Raises:
            ValueError: there is no such skill container.

        """
        if not 0 <= index < min(self.skill_count, SKILL_UID_COUNT):
            raise ValueError(f"skill index {index} outside 0..{self.skill_count - 1}")
        return SKILL_UID_FIRST + index

    def host_proxy_url_for(self, skill: str) -> str:
        """Refuse: remote skills are not run on Kubernetes (the host cannot reach the proxy).

        Raises:
            UsageError: always.

        """
        raise UsageError(f"skill {skill!r}: remote skills are not supported on Kubernetes yet")

    @asynccontextmanager
    async def exec_stdio(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        user: int,
        workdir: str,  # noqa: ARG002 - the container's workingDir, set from the plan
    ) -> AsyncIterator[StdioProcess]:
        """Start `argv` in the container of skill uid `user`, with exactly `env` (over stdin).

        Raises:
            ValueError: `user` is not the uid of one of this sandbox's skills.
            EngineError: the cluster refused the exec or could not be reached.

        """
        index = user - SKILL_UID_FIRST
        self.skill_uid(index)  # refuses a uid that has no container
        async with open_exec(
            self.configuration,
            pod=self.pod,
            namespace=self.namespace,
            container=container_name(index),
            argv=argv,
            env={"HOME": f"/home/skill{user}", **env},
        ) as process:
            yield process

    async def wait_egress(self) -> None:
        """Return at once: the pod is handed out only once its proxy is ready."""

    async def egress_problem(self) -> str | None:
        """Return why the proxy pod is gone, or None while it runs (from the run's pod watch)."""
        if self.proxy_down is None:
            return None
        return (
            f"egress is down: the proxy of run {self.run_id} stopped ({self.proxy_down}). The "
            f"sandbox has no network access any more and tool calls are refused; stop this run "
            f"(`perstack-sandbox down {self.run_id}`) and start a new one"
        )

    async def wait_stopped(self) -> str:
        """Wait until the sandbox pod stops or disappears; return how, as a sentence."""
        await self.sandbox_end.wait()
        return f"run {self.run_id} is over: its sandbox pod {self.end_reason}; its skills are gone"


class KubernetesBackend:
    """Sandboxes as pods on a cluster taken from kubeconfig or the in-cluster configuration."""

    def __init__(
        self, settings: KubeSettings | None = None, configuration: Configuration | None = None
    ) -> None:
        """Use `settings` (else `$PERSTACK_SANDBOX_K8S_*`) and `configuration` (else loaded)."""
        self.settings = settings or settings_from_env()
        self._configuration = configuration

    @property
    def name(self) -> BackendName:
        """The name `--backend` selects this backend by."""
        return "kubernetes"

    async def configuration(self) -> Configuration:
        """Return the client configuration (loaded once).

        Raises:
            EngineError: no kubeconfig and not in a pod.

        """
        if self._configuration is None:
            self._configuration = await load_configuration()
        return self._configuration

    @asynccontextmanager
    async def open_sandbox(  # noqa: PLR0913 - keyword-only settings of one sandbox
        self,
        plan: SandboxPlan,
        *,
        image: str,
        run: RunState,
        workspace: Path | None = None,
        isolation: Isolation = DEFAULT_ISOLATION,
        sealed: SealedSecrets | None = None,
        test_network: TestNetwork | None = None,
    ) -> AsyncIterator[KubeSandbox]:
        """Start `plan`'s sandbox pod and proxy from `image`; delete everything on exit.

        Raises:
            UsageError: the plan needs what this backend does not offer (a workspace, local or
                remote skills, sealed secrets, the tests' network openings).
            EngineError: the cluster refused an object, a pod failed or was not ready in time,
                or the namespace does not enforce `restricted`.

        """
        check_plan(plan, workspace)
        if sealed is not None or test_network is not None:
            raise UsageError("sealed secrets and test network openings run on Docker only, for now")
        settings = self.settings
        if isolation == "gvisor":
            settings = _with_runtime_class(settings, settings.runtime_class or GVISOR_RUNTIME_CLASS)
        credentials = {name: secrets.token_urlsafe(32) for name in engine.skill_grants(plan)}
        policy = engine.proxy_policy(plan, run.run_id, (), credentials)
        _keep_policy(run, plan, policy)
        objects = RunObjects(run.run_id, image, images.proxy_image_name(), owner_labels())
        manifests = run_manifests(plan, objects, settings, policy)
        for manifest in manifests:
            problems = restricted_violations(manifest) if manifest["kind"] == "Pod" else []
            if problems:
                raise EngineError(f"refusing a pod that breaks `restricted`: {problems}")
        configuration = await self.configuration()
        run.update_meta(image=image, status="starting", backend="kubernetes")
        status = "failed"
        async with api_client(configuration) as api:
            try:
                sandbox = await self._start(api, configuration, objects, manifests, credentials)
                run.update_meta(status="running", container=sandbox.pod)
                async with anyio.create_task_group() as group:
                    group.start_soon(watch_run, api, sandbox)
                    group.start_soon(copy_proxy_log, api, sandbox, run)
                    try:
                        yield sandbox
                    finally:
                        group.cancel_scope.cancel()
                status = "finished"
            finally:
                with anyio.CancelScope(shield=True):
                    await _teardown(api, settings.namespace, run, status)

    async def list_runs(self) -> list[RunInfo]:
        """Return every run with labelled objects in the namespace, oldest first.

        Raises:
            EngineError: the cluster could not be reached.

        """
        async with api_client(await self.configuration()) as api:
            return await _runs.list_runs(api, self.settings.namespace)

    async def take_down(self, run_id: str) -> list[str]:
        """Delete every object of `run_id`; name them.

        Raises:
            EngineError: the cluster refused a deletion or could not be reached.

        """
        async with api_client(await self.configuration()) as api:
            return await _runs.take_down(api, self.settings.namespace, run_id)

    async def collect_garbage(self) -> list[str]:
        """Delete the objects of runs whose owner died on this host; name them.

        Raises:
            EngineError: the cluster refused a deletion or could not be reached.

        """
        async with api_client(await self.configuration()) as api:
            return await _runs.collect_garbage(api, self.settings.namespace)

    async def _start(
        self,
        api: ApiClient,
        configuration: Configuration,
        objects: RunObjects,
        manifests: list[dict[str, Any]],
        credentials: dict[str, str],
    ) -> KubeSandbox:
        namespace = self.settings.namespace
        await _objects.require_restricted_namespace(api, namespace)
        created = await _objects.create_all(api, namespace, manifests)
        service = created[f"Service/{objects.prefix}-proxy"]
        skills = sum(1 for m in manifests if m["kind"] == "Pod" for _ in m["spec"]["containers"])
        sandbox = KubeSandbox(
            run_id=objects.run_id,
            configuration=configuration,
            namespace=namespace,
            pod=f"{objects.prefix}-sandbox",
            proxy_pod=f"{objects.prefix}-proxy",
            address=engine.Sandbox(
                run_id=objects.run_id,
                container_id=f"{objects.prefix}-sandbox",
                proxy_ip=service["spec"]["clusterIP"],
                proxy_port=PROXY_PORT,
                proxy_container_id=f"{objects.prefix}-proxy",
                proxy_host_ip="",
                network_id="",
                credentials=credentials,
            ),
            skill_count=skills - 1,  # minus the proxy's one container
        )
        await wait_ready(api, sandbox)
        return sandbox


async def _teardown(api: ApiClient, namespace: str, run: RunState, status: str) -> None:
    """Delete every object of the run, bounded in time; say in its meta how it ended.

    Raises:
        EngineError: a deletion failed or timed out (`gc` or `down` removes what is left).

    """
    try:
        with anyio.fail_after(TEARDOWN_TIMEOUT_S):
            await _objects.delete_labelled(api, namespace, run_selector(run.run_id))
    except (EngineError, TimeoutError) as exc:
        run.update_meta(status=f"{status}; teardown failed: {exc}")
        raise EngineError(
            f"tearing down run {run.run_id} failed ({exc}); `perstack-sandbox down "
            f"{run.run_id} --backend kubernetes` removes what is left"
        ) from exc
    run.update_meta(status=status, ended=datetime.now(UTC).isoformat(timespec="seconds"))


def check_plan(plan: SandboxPlan, workspace: Path | None) -> None:
    """Refuse what the Kubernetes backend does not run yet, before any object exists.

    Raises:
        UsageError: a workspace, a local skill (the Expert's folder is on this host) or a
            remote skill (the host cannot reach the in-cluster proxy) was asked for.

    """
    if workspace is not None:
        raise UsageError("--workspace is not supported with --backend kubernetes yet")
    local = [launch.name for launch in plan.skills if launch.kind == "local"]
    if local:
        raise UsageError(
            f"local skills {local} need the Expert's folder, which is on this host; "
            "--backend kubernetes runs npx and uvx skills only"
        )
    if plan.sse_skills:
        names = [sse.name for sse in plan.sse_skills]
        raise UsageError(f"remote skills {names} are not supported with --backend kubernetes yet")


def owner_labels() -> dict[str, str]:
    """Return the labels that name this process as the owner of a run's objects."""
    pid = os.getpid()
    return {
        LABEL_OWNER_PID: str(pid),
        LABEL_OWNER_START: label_value(process_start_ticks(pid)),
        LABEL_OWNER_HOST: label_value(socket.gethostname()),
        LABEL_OWNER_USER: label_value(engine.owner_user()),
    }


def _with_runtime_class(settings: KubeSettings, runtime_class: str) -> KubeSettings:
    return KubeSettings(
        namespace=settings.namespace,
        runtime_class=runtime_class,
        cluster_cidrs=settings.cluster_cidrs,
        dns_namespace=settings.dns_namespace,
        dns_labels=settings.dns_labels,
        image_pull_policy=settings.image_pull_policy,
    )


def _keep_policy(run: RunState, plan: SandboxPlan, policy: Mapping[str, object]) -> None:
    """Write the run's copy of the policy: each skill's list, no token (as on Docker)."""
    kept = {key: value for key, value in policy.items() if key != "skills"}
    kept["skillAllowedDomains"] = engine.skill_grants(plan)
    write_private(run.policy_path, json.dumps(kept, indent=2) + "\n")
