"""The sandbox lifecycle: networks, the proxy container, the sandbox container, teardown.

`open_sandbox()` is an async context manager. Blocking docker-py calls run in worker threads;
teardown (`_lifecycle.teardown`) is shielded from cancellation and bounded in time, and removes
every object labelled with the run id (not only the ones this process remembers creating), so
a cancellation at any point of the set-up leaves nothing behind. The proxy's policy is
`_policy`'s.
"""

from __future__ import annotations

import json
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import anyio
import anyio.abc

from perstack_sandbox.engine import _containers, _health, _seal, _start
from perstack_sandbox.engine._containers import SKILL_UID_COUNT, SKILL_UID_FIRST
from perstack_sandbox.engine._control import grant_when_answering
from perstack_sandbox.engine._exec import ExecProcess, start_exec
from perstack_sandbox.engine._gvisor import require_isolation
from perstack_sandbox.engine._lifecycle import teardown
from perstack_sandbox.engine._policy import TestNetwork, proxy_policy, skill_grants, userinfo_name
from perstack_sandbox.errors import EngineError, sole_exception
from perstack_sandbox.isolation import DEFAULT_ISOLATION, Isolation
from perstack_sandbox.plan import check_expert_folder
from perstack_sandbox.state import write_private

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence
    from pathlib import Path

    from perstack_sandbox.plan import SandboxPlan, SealedSecrets
    from perstack_sandbox.state import RunState


CA_BUNDLE: Final = "/etc/ssl/certs/ca-certificates.crt"
NO_PROXY: Final = "localhost,127.0.0.1,::1"
LAUNCHER: Final = "/usr/local/bin/perstack-launch"
EXEC_CLOSE_TIMEOUT_S: Final = 15.0  # killing a skill that outlived its session


@dataclass(frozen=True, slots=True)
class Sandbox:
    """A started sandbox: its container, its proxy, and how to run processes in it."""

    run_id: str
    container_id: str
    proxy_ip: str
    proxy_port: int
    proxy_container_id: str
    proxy_host_ip: str
    network_id: str
    # Skill name -> its proxy token (a secret: only in the policy and that skill's exec env).
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)
    isolation: Isolation = DEFAULT_ISOLATION
    # Under gVisor, one container per stdio skill, in skill order (else only `container_id`).
    container_ids: tuple[str, ...] = ()
    # The bundle the skills trust: the system's, or (sealed) the system's plus the run's CA.
    ca_bundle: str = CA_BUNDLE
    # Set once the proxy answers; until then (skills started early) `proxy_host_ip` is "".
    proxy_up: anyio.Event | None = field(default=None, compare=False)

    async def wait_egress(self) -> None:
        """Wait until the proxy answers (at once unless the skills were started before it).

        A proxy that fails to start fails the sandbox's start (`open_sandbox`), not this.
        """
        if self.proxy_up is not None:
            await self.proxy_up.wait()

    def proxy_env(self, skill: str | None = None) -> dict[str, str]:
        """Return the proxy and CA variables of `skill`'s process.

        The proxy URL carries `skill`'s own credential, so the proxy holds it to its own
        allowlist; with no `skill` (or one without a credential) the URL has none.
        """
        url = f"http://{self._userinfo(skill)}{self.proxy_ip}:{self.proxy_port}"
        bundle = self.ca_bundle
        # curl reads its compiled-in bundle path, not SSL_CERT_FILE: name the sealed one too.
        extra = {"CURL_CA_BUNDLE": bundle} if bundle != CA_BUNDLE else {}
        return {
            "HTTPS_PROXY": url,
            "HTTP_PROXY": url,
            "https_proxy": url,
            "http_proxy": url,
            "NO_PROXY": NO_PROXY,
            "no_proxy": NO_PROXY,
            "NODE_USE_ENV_PROXY": "1",
            "SSL_CERT_FILE": bundle,
            "NODE_EXTRA_CA_CERTS": bundle,
            "REQUESTS_CA_BUNDLE": bundle,
            **extra,
        }

    async def egress_problem(self) -> str | None:
        """Return why the sandbox has lost its egress proxy, or None while the proxy runs.

        Without its proxy the sandbox has no way out at all (it fails closed); the gateway
        uses this to refuse further calls with a clear message instead of letting skills
        fail one by one, unaudited. The engine is asked (in a worker thread) only once the
        proxy's output has ended, so a healthy call costs no engine round trip.
        """
        if not _health.has_stopped(self.proxy_container_id):
            return None
        how = await anyio.to_thread.run_sync(_health.describe_stopped, self.proxy_container_id)
        return (
            f"egress is down: the proxy of run {self.run_id} stopped ({how}). The sandbox has "
            f"no network access any more and tool calls are refused; stop this run "
            f"(`perstack-sandbox down {self.run_id}`) and start a new one"
        )

    async def wait_stopped(self) -> str:
        """Wait until the sandbox container stops or disappears; return how, as a sentence.

        The container goes when `down` removes the run, when something kills it, or when the
        engine becomes unreachable; the skills are gone with it. Cancelling returns at once.
        """
        try:
            # A thread of its own for the run's whole life: on the shared default limiter,
            # many runs in one process would hold every worker thread the engine calls need.
            await anyio.to_thread.run_sync(
                _health.wait_stopped,
                self.container_id,
                abandon_on_cancel=True,
                limiter=anyio.CapacityLimiter(1),
            )
        except EngineError as exc:
            how = f"cannot be watched: {exc}"
        else:
            how = await anyio.to_thread.run_sync(_health.describe_end, self.container_id)
        return f"run {self.run_id} is over: its sandbox container {how}; its skills are gone"

    @property
    def host_proxy_url(self) -> str:
        """The proxy as the host reaches it, without a credential."""
        return f"http://{self.proxy_host_ip}:{self.proxy_port}"

    def host_proxy_url_for(self, skill: str) -> str:
        """Return the proxy as the host reaches it, with `skill`'s credential (remote skills)."""
        return f"http://{self._userinfo(skill)}{self.proxy_host_ip}:{self.proxy_port}"

    def _userinfo(self, skill: str | None) -> str:
        token = self.credentials.get(skill) if skill is not None else None
        if skill is None or token is None:
            return ""
        return f"{userinfo_name(skill)}:{token}@"

    def skill_uid(self, index: int) -> int:
        """Return the uid of the `index`-th skill (each skill gets its own).

        Raises:
            ValueError: there are more skills than uids baked into the image.

        """
        if not 0 <= index < SKILL_UID_COUNT:
            raise ValueError(f"skill index {index} outside 0..{SKILL_UID_COUNT - 1}")
        return SKILL_UID_FIRST + index

    def container_for(self, user: int) -> str:
        """Return the container that runs the skill with uid `user` (its own, under gVisor)."""
        index = user - SKILL_UID_FIRST
        if len(self.container_ids) > 1 and 0 <= index < len(self.container_ids):
            return self.container_ids[index]
        return self.container_id

    @asynccontextmanager
    async def exec_stdio(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        user: int,
        workdir: str,
    ) -> AsyncIterator[ExecProcess]:
        """Start `argv` as skill uid `user`, with exactly `env`, and yield its stdio streams.

        `env` is the exec's environment (never the container's, never argv). `HOME` defaults
        to `/home/skill<uid>`; the launcher creates it mode 700 and refuses one it does not own.
        Under gVisor the launcher first loads the sandbox's seccomp profile into the skill
        (runsc applies the container's profile to its first process only, not to execs).
        On exit the process is killed if it still runs.

        Raises:
            ValueError: `user` is not a skill uid.
            EngineError: the engine refused the exec or could not be reached.

        """
        if not SKILL_UID_FIRST <= user < SKILL_UID_FIRST + SKILL_UID_COUNT:
            raise ValueError(f"uid {user} is not a skill uid")
        full_env = {"HOME": f"/home/skill{user}", **env}
        process = await start_exec(
            self.container_for(user),
            [*launcher_argv(self.isolation), *argv],
            env=full_env,
            user=user,
            workdir=workdir,
        )
        async with anyio.create_task_group() as group:
            group.start_soon(process.pump)
            if self.isolation == "gvisor":  # runsc leaves the stream open if its sandbox dies
                group.start_soon(process.end_with_container)
            try:
                yield process
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(EXEC_CLOSE_TIMEOUT_S):
                    await process.close()
                group.cancel_scope.cancel()


def launcher_argv(isolation: Isolation) -> list[str]:
    """Return the launcher command a skill's argv follows (under gVisor it loads seccomp)."""
    return [LAUNCHER, "--seccomp"] if isolation == "gvisor" else [LAUNCHER]


@asynccontextmanager
async def open_sandbox(  # noqa: PLR0913 - keyword-only settings of one sandbox
    plan: SandboxPlan,
    *,
    image: str,
    run: RunState,
    workspace: Path | None = None,
    test_allow_cidrs: tuple[str, ...] = (),
    isolation: Isolation = DEFAULT_ISOLATION,
    sealed: SealedSecrets | None = None,
    test_network: TestNetwork | None = None,
    skills_first: bool = False,
) -> AsyncIterator[Sandbox]:
    """Start the sandbox of `plan` from `image` and tear everything down on exit.

    The sandbox container runs under `isolation`'s runtime (runc, or gVisor's runsc), which
    must be available: it is never replaced by a weaker one. Under gVisor each stdio skill gets
    its own sandbox container (its own gVisor kernel): in Debian's runsc any process reads any
    other's /proc/<pid>/environ, which would hand one skill another's secrets.

    The proxy holds each skill to its own allowedDomains, told apart by a random per-run
    credential in that skill's proxy URL (`Sandbox.proxy_env(skill)`); the tokens are in the
    proxy's policy only, never in the run's copy of it. `test_allow_cidrs` lets tests reach
    their own listeners and is empty (off) everywhere else. Teardown runs on normal exit, on an
    exception and on cancellation (SIGINT/SIGTERM via `cancel_on_signals`).

    With `sealed`, the real values go to the proxy over its control channel and the run's CA
    is installed in every sandbox container before this yields; skills then trust
    `Sandbox.ca_bundle` (docs/architecture.md, decisions 37 and 38). `test_network` opens the
    proxy further for the test suites only.

    The Expert's folder is mounted only when a skill works in /expert; then every env file in
    it is covered by an empty read-only file, and every `.git` covered empty (see
    `plan.check_expert_folder`).

    With `skills_first`, a sandbox without sealing or remote skills is yielded once its
    containers run, while its proxy still starts (at an address chosen ahead): the caller
    starts the skills meanwhile and awaits `Sandbox.wait_egress` before it calls the run
    ready; a proxy that fails to start cancels the body (decision 50).

    Raises:
        UsageError: the Expert's folder cannot be checked, or skills could not read it.
        IsolationError: gVisor was asked for and is not installed or registered.
        EngineError: the engine refused an operation, or the proxy never became ready.

    """
    status = "failed"
    early = skills_first and sealed is None and not plan.sse_skills
    try:
        async with _proxy_tasks(early=early) as group:
            sandbox = await start_sandbox(
                plan,
                image=image,
                run=run,
                workspace=workspace,
                test_allow_cidrs=test_allow_cidrs,
                isolation=isolation,
                sealed=sealed,
                test_network=test_network,
                early=group,
            )
            yield sandbox
        status = "finished"
    finally:
        with anyio.CancelScope(shield=True):
            await teardown(run, status)


@asynccontextmanager
async def _proxy_tasks(*, early: bool) -> AsyncIterator[anyio.abc.TaskGroup | None]:
    """Yield a task group for the rest of the proxy's start (None unless `early`).

    What the body raises comes out alone, as it does without the group.
    """
    if not early:
        yield None
        return
    try:
        async with anyio.create_task_group() as group:
            yield group
            group.cancel_scope.cancel()  # a run that ends before its proxy answered
    except BaseExceptionGroup as errors:
        sole = sole_exception(errors)
        if sole is errors:
            raise
        raise sole from sole.__cause__


async def start_sandbox(  # noqa: PLR0913 - keyword-only settings of one sandbox
    plan: SandboxPlan,
    *,
    image: str,
    run: RunState,
    workspace: Path | None = None,
    test_allow_cidrs: tuple[str, ...] = (),
    isolation: Isolation = DEFAULT_ISOLATION,
    sealed: SealedSecrets | None = None,
    test_network: TestNetwork | None = None,
    warm: bool = False,
    early: anyio.abc.TaskGroup | None = None,
) -> Sandbox:
    """Start the sandbox of `plan` as `open_sandbox` does, without tearing it down.

    The caller owns its teardown: `await teardown(run, status)` (shielded) whatever happens,
    also when this raises. `warm`: its proxy starts with no credential at all and lets no one
    through until a grant arrives over its control channel (`_warm.grant`); the skills'
    credentials of the returned sandbox are empty. Otherwise its proxy starts the same way
    and is granted the skills' fresh tokens once it answers, before the sandbox counts as up:
    no token is in a container's config (decision 51). `early`: see `_start.start`.

    Raises:
        UsageError: the Expert's folder cannot be checked, or skills could not read it.
        IsolationError: gVisor was asked for and is not installed or registered.
        EngineError: the engine refused an operation, or the proxy never became ready.

    """
    await anyio.to_thread.run_sync(require_isolation, isolation)
    # Checked again now (not only at `prepare`): the folder may have changed since.
    folder = await anyio.to_thread.run_sync(check_expert_folder, plan)
    credentials = {} if warm else {name: secrets.token_urlsafe(32) for name in skill_grants(plan)}
    test_network = test_network or TestNetwork(allow_cidrs=test_allow_cidrs)
    # The tokens go over the control channel: the engine keeps a container's environment.
    policy = proxy_policy(plan, run.run_id, test_network.allow_cidrs, {})
    policy |= test_network.policy_keys()
    if warm or credentials:
        policy["requireGrant"] = True
    # The run's copy names each skill's list but holds no token.
    kept = {key: value for key, value in policy.items() if key != "skills"}
    kept["skillAllowedDomains"] = skill_grants(plan)
    write_private(run.policy_path, json.dumps(kept, indent=2) + "\n")
    run.update_meta(
        image=image,
        status="warming" if warm else "starting",
        workspace=str(workspace or ""),
        hidden=(*folder.masks, *folder.folder_masks),
    )
    spec = _containers.SandboxSpec(
        run_id=run.run_id,
        expert=plan.expert,
        image=image,
        limits=plan.limits,
        expert_dir=plan.config_dir,
        workspace=str(workspace) if workspace else None,
        policy=json.dumps(policy),
        masks=folder.masks,
        cover=str(run.write_cover()) if folder.masks else "",
        expert_mounted=plan.expert_mount is not None,
        folder_masks=folder.folder_masks,
        isolation=isolation,
        containers=len(plan.skills) if isolation == "gvisor" else 1,
        skills=1 if isolation == "gvisor" else len(plan.skills),
        run=run,
    )

    async def hand_over(proxy_id: str, answers: anyio.Event) -> None:
        if credentials:
            await grant_when_answering(proxy_id, answers, credentials, skill_grants(plan))

    started = await _start.start(spec, run, early=early, on_proxy=hand_over)
    bundle = CA_BUNDLE
    if sealed is not None:
        bundle = await _seal.seal_sandbox(started.proxy_id, started.container_ids, sealed)
    run.update_meta(status="warm" if warm else "running", container=started.container_id)
    return Sandbox(
        run_id=run.run_id,
        container_id=started.container_id,
        proxy_ip=started.proxy_ip,
        proxy_port=_containers.PROXY_PORT,
        proxy_container_id=started.proxy_id,
        proxy_host_ip=started.proxy_host_ip,
        network_id=started.network_id,
        credentials=credentials,
        isolation=isolation,
        container_ids=started.container_ids,
        ca_bundle=bundle,
        proxy_up=started.proxy_up,
    )
