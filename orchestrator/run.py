"""The public Python API: open one Expert's sandbox, use its skills over MCP, tear it down.

`open_run` (re-exported by the package) takes a config (a path or a parsed one), an expert key
and the secret values, and returns a `Run`: an async context manager with the run id and folder
and the MCP operations, whose teardown is shielded and always runs. The library prints nothing,
installs no signal or logging handler, and reports what happens in a run only to that run's
own sinks (its `tools.jsonl` and `skills.log`, plus the caller's `AuditSink`), so many runs can
share one process. Engine calls run in worker threads, never on the event loop.

The order is the contract: every input error (config, unknown expert, missing variable, bad
workspace, an Expert's folder the skills cannot read) is raised before any image is built or
any container exists.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import pwd
import sys
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self, TypeAlias

import anyio
import anyio.to_thread

from perstack_sandbox import engine, images, lock, state
from perstack_sandbox.audit import NULL_SINK, RunFiles, TeeSink
from perstack_sandbox.config import PerstackConfig, load_config
from perstack_sandbox.errors import (
    EngineError,
    LockError,
    RunError,
    SkillError,
    UsageError,
    sole_exception,
)
from perstack_sandbox.isolation import DEFAULT_ISOLATION, Isolation, check_isolation
from perstack_sandbox.plan import (
    Secret,
    check_expert_folder,
    resolve_secrets,
    seal_secrets,
    skill_environment,
)
from perstack_sandbox.plan import plan as make_plan
from perstack_sandbox_proxy.hosts import HostRejected, canonicalise_host

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType

    import mcp_types as types

    from perstack_sandbox.audit import AuditSink
    from perstack_sandbox.gateway import Gateway, Prompter
    from perstack_sandbox.lock import ExpertLock
    from perstack_sandbox.plan import (
        Limits,
        SandboxPlan,
        SealedSecrets,
        SkillLaunch,
        SkillSecrets,
    )
    from perstack_sandbox.pool import WarmPool
    from perstack_sandbox.skills import SkillProcess, SkillSession

    ExecContext = AbstractAsyncContextManager[SkillProcess]

ConfigSource: TypeAlias = "PerstackConfig | str | os.PathLike[str]"
"""A parsed config (`parse_config`/`load_config`), or the path of a perstack.toml."""


# What a run imports only once it starts: the gateway, the skills' sessions, the MCP SDK.
MCP_LAYER: Final = ("perstack_sandbox.gateway", "perstack_sandbox.skills")


def import_mcp_layer() -> None:
    """Import the gateway and the skills' sessions, and the MCP SDK with them.

    Raises:
        ImportError: the installation is broken.

    """
    for name in MCP_LAYER:
        importlib.import_module(name)


def preload_mcp_layer() -> None:
    """Start importing the MCP layer in a thread of its own, unless it is loaded already.

    In a new process (`perstack-sandbox run`) the import is half a second of CPU in this
    process, and the sandbox's start is engine round trips in worker threads: side by side,
    the import is off the way to the first tools/list (docs/architecture.md, decision 49).
    Whoever needs the layer calls `import_mcp_layer`, which waits for this import to finish.
    """
    if all(name in sys.modules for name in MCP_LAYER):
        return
    threading.Thread(target=_import_quietly, name="perstack-mcp-preload", daemon=True).start()


def _import_quietly() -> None:
    # A failure is raised again, where it is reported, by the `import_mcp_layer` that waits.
    with contextlib.suppress(ImportError):
        import_mcp_layer()


def _quiet(_line: str) -> None:
    """Drop build progress: the library never prints."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """Everything decided before Docker is touched."""

    plan: SandboxPlan
    secrets: dict[str, SkillSecrets]
    # With sealing: `secrets` holds the placeholders, this the real values (decision 37).
    sealed: SealedSecrets | None = None
    lock: ExpertLock | None = None  # the expert's entry of perstack-sandbox.lock, if any


def prepare_run(  # noqa: PLR0913 - the config and expert, then one keyword per input
    config: PerstackConfig,
    expert: str,
    *,
    secrets: Mapping[str, str | Secret],
    workspace: Path | None = None,
    limits: Limits | None = None,
    env_paths: Sequence[str | os.PathLike[str]] = (),
) -> Prepared:
    """Plan `expert` of `config` and pick each skill's secrets from `secrets`; no Docker yet.

    `env_paths` names the env files `secrets` was read from besides the default ones
    (`--env-path`): they are hidden under /expert too. The Expert's folder is walked here, so a
    folder the skills cannot read is refused before anything is built.

    Raises:
        UnknownExpertError: no such expert.
        MissingEnvError: a requiredEnv variable is not in `secrets` (all of them named).
        UsageError: the Expert's folder is not absolute, or the skills cannot read it (see
            `plan.check_expert_folder`); the workspace is refused (see `check_workspace`).

    """
    sandbox_plan = make_plan(config, expert, tuple(os.fspath(path) for path in env_paths))
    if len(sandbox_plan.skills) > engine.SKILL_UID_COUNT:
        raise UsageError(
            f"expert {expert!r} has {len(sandbox_plan.skills)} stdio skills; a sandbox runs at "
            f"most {engine.SKILL_UID_COUNT} (one uid each)"
        )
    if limits is not None:
        sandbox_plan = sandbox_plan.model_copy(update={"limits": limits})
    if not Path(sandbox_plan.config_dir).is_absolute():
        raise UsageError(
            f"the Expert's folder {sandbox_plan.config_dir!r} is not absolute: load the config "
            "with load_config(path), or parse_config(text, config_dir=<absolute folder>)"
        )
    check_workspace(workspace, Path(sandbox_plan.config_dir))
    values = {name: v if isinstance(v, Secret) else Secret(v) for name, v in secrets.items()}
    resolved = resolve_secrets(sandbox_plan, values, host_env={})
    check_expert_folder(sandbox_plan)  # the engine checks it again when the sandbox starts
    return Prepared(plan=sandbox_plan, secrets=resolved, lock=_current_lock(sandbox_plan))


def _current_lock(sandbox_plan: SandboxPlan) -> ExpertLock | None:
    """Return the expert's lock entry; a lock that no longer matches perstack.toml is refused.

    Raises:
        LockError: the lock is unreadable, or stale for this expert.

    """
    found = lock.read_lock(lock.lock_path(sandbox_plan.config_dir))
    entry = lock.expert_lock(found, sandbox_plan.expert)
    if entry is None:
        return None
    stale = lock.stale_reasons(found, sandbox_plan)
    if stale:
        raise LockError(
            f"{lock.LOCK_NAME} is stale for expert {sandbox_plan.expert!r}: "
            + "; ".join(stale)
            + f" (run `perstack-sandbox lock {sandbox_plan.expert} --update`)"
        )
    return entry


def check_workspace(workspace: Path | None, config_dir: Path) -> None:
    """Refuse a workspace that overlaps the Expert's folder or the state directory, or the home.

    The sandbox writes to its workspace; if that were the Expert's folder it could rewrite
    perstack.toml or plant `.env` files (or links) that the NEXT run would read on the host.
    Over the state directory it would reach every run's policy, logs and audit: the workspace
    layer acts as the owner, whom their modes do not stop (it covers a state directory inside
    the workspace too, but the trail must not be reachable by what it records). The user's
    home (or a folder above it) holds their keys, shell start-up files and the default state
    directory.

    Raises:
        UsageError: the workspace overlaps one of them, or is (or contains) the home folder.

    """
    if workspace is None:
        return
    space = workspace.resolve()
    if _overlaps(space, config_dir.resolve()):
        raise UsageError(
            f"--workspace {workspace} overlaps the Expert's folder {config_dir}: the sandbox "
            "could rewrite its own perstack.toml and env files; use a separate folder"
        )
    for home in _homes():
        if space == home or space in home.parents:
            raise UsageError(
                f"--workspace {workspace} is your home folder {home} or holds it: the sandbox "
                "could read and rewrite your keys, shell start-up files and settings; give it "
                "a folder of its own"
            )
    states = state.state_dir()
    if _overlaps(space, states.resolve()):
        raise UsageError(
            f"--workspace {workspace} overlaps the state directory {states}: the sandbox "
            "would reach the records of every run; use a separate folder (or move the state "
            f"with ${state.STATE_ENV})"
        )


def _overlaps(one: Path, other: Path) -> bool:
    return one == other or one in other.parents or other in one.parents


def _homes() -> set[Path]:
    """Return the invoking user's home, as $HOME and as the password database say."""
    homes = set()
    with contextlib.suppress(KeyError, RuntimeError):
        homes.add(Path.home().resolve())
    with contextlib.suppress(KeyError):
        homes.add(Path(pwd.getpwuid(os.getuid()).pw_dir).resolve())
    return homes


def open_run(  # noqa: PLR0913 - the config and expert, then one keyword per choice
    config: ConfigSource,
    expert: str,
    *,
    secrets: Mapping[str, str | Secret] | None = None,
    env_paths: Sequence[str | os.PathLike[str]] = (),
    workspace: str | os.PathLike[str] | None = None,
    limits: Limits | None = None,
    isolation: Isolation = DEFAULT_ISOLATION,
    prefix_tools: bool = False,
    prompter: Prompter | None = None,
    audit: AuditSink | None = None,
    on_progress: Callable[[str], None] | None = None,
    seal_secrets: bool = False,
    seal_passthrough: Sequence[str] = (),
    accept_tool_changes: bool = False,
    backend: engine.BackendName | engine.SandboxBackend = engine.DEFAULT_BACKEND,
    pool: WarmPool | None = None,
) -> Run:
    """Return the run of `expert`'s sandbox; `async with` starts it and tears it down.

    `secrets` maps variable names to values (`host_secrets` and `env_file_secrets` read the
    usual sources); each skill gets exactly its requiredEnv names from it. `env_paths` names
    the env files those values came from when they are not the config's own (`envPath`,
    `.env`, `.env.local`, hidden anyway; a relative path is against the config's folder): each
    one inside the Expert's folder is covered under /expert. `workspace` is
    mounted read-write at /workspace. `limits` replaces the default memory/CPU/pids limits.
    `isolation` is "runc" or "gvisor": under gVisor the skills run on gVisor's kernel (runsc,
    set up by `perstack-sandbox doctor --fix`), each stdio skill in a container of its own;
    it is never silently replaced by runc. `audit` receives the
    run's tool calls, skill stderr and warnings besides the run folder's files. Image builds,
    when needed, report to `on_progress` (nothing is printed). With `seal_secrets`, each skill
    gets a random placeholder for every requiredEnv value and the proxy puts the real value
    into that skill's HTTPS requests to its own allowed hosts; hosts in `seal_passthrough`
    (a client that pins certificates, say) stay plain tunnels (README, "Sealed secrets").
    With a `perstack-sandbox.lock` next to the config, the image installs exactly its locked
    trees and each skill's tools must match the pinned ones: a skill that differs is refused
    with a diff, unless `accept_tool_changes` accepts it for this run (recorded in the audit).
    `backend` is "docker" (the default), "kubernetes" (pods on the cluster of kubeconfig or
    the in-cluster configuration; npx/uvx skills only, the images must be pullable by the
    cluster) or a `SandboxBackend` object. With `pool` (a `WarmPool` of the same Expert and
    plan, entered), the run claims one of its started sandboxes instead of starting one, gives
    its proxy fresh per-skill credentials, then starts the skills; its `run_id` becomes that
    sandbox's on entering. An Expert's sandbox:

    ```python
    import anyio
    import perstack_sandbox

    async def main() -> None:
        async with perstack_sandbox.open_run(
            "examples/perstack.toml", "demo", secrets={}
        ) as run:
            print(run.run_id, run.path)
            names = [tool.name for tool in await run.list_tools()]
            result = await run.call_tool("echo", {"message": "hello"})
            print(len(names), result.content[0].text)

    anyio.run(main)
    ```

    Raises:
        InputError: on entering `async with`: bad config, unknown expert, missing secret, bad
            workspace, an Expert's folder the skills cannot read, an unknown isolation (nothing
            was built or started); a `pool` made for another Expert, plan or isolation, or a
            workspace with a pool.
        IsolationError: gVisor was asked for and runsc is missing or registered without the
            arguments the sandbox needs (before any build; the message says how to set it up).
        EngineError: Docker failed; ImageBuildError: an image build failed.
        SkillError: a skill failed to start; ToolsChangedError: a skill's tools differ from
            the lock. GatewayError: a tool-name collision. LockError: the lock is stale.

    """
    return Run(
        config,
        expert,
        secrets=secrets or {},
        options=_RunOptions(
            env_paths=tuple(os.fspath(path) for path in env_paths),
            workspace=Path(workspace) if workspace is not None else None,
            limits=limits,
            isolation=isolation,
            prefix_tools=prefix_tools,
            prompter=prompter,
            audit=audit,
            on_progress=on_progress or _quiet,
            seal_secrets=seal_secrets,
            seal_passthrough=tuple(seal_passthrough),
            accept_tool_changes=accept_tool_changes,
            backend=backend,
            pool=pool,
        ),
    )


async def build_image(
    config: ConfigSource, expert: str, *, on_progress: Callable[[str], None] | None = None
) -> str:
    """Build (or reuse) the images `expert` runs on, and return its per-expert image's tag.

    `open_run` builds what is missing too; this makes the build explicit (ahead of a run, in
    CI). Progress lines go to `on_progress`; nothing is printed.

    Raises:
        ConfigError: the config is invalid. UnknownExpertError: no such expert.
        ImageBuildError: a build step failed. EngineError: the engine, npm or pip failed.

    """
    progress = on_progress or _quiet
    loaded = config if isinstance(config, PerstackConfig) else load_config(Path(config))[0]
    expert_plan = make_plan(loaded, expert)
    tag = await engine.ensure_expert_image_async(expert_plan, progress=progress)
    await anyio.to_thread.run_sync(functools.partial(images.ensure_proxy_image, progress=progress))
    return tag


@dataclass(frozen=True, slots=True)
class _RunOptions:
    env_paths: tuple[str, ...]
    workspace: Path | None
    limits: Limits | None
    isolation: Isolation
    prefix_tools: bool
    prompter: Prompter | None
    audit: AuditSink | None
    on_progress: Callable[[str], None]
    seal_secrets: bool = False
    seal_passthrough: tuple[str, ...] = ()
    # Test-only openings of the proxy (the test suites set it; nothing else does).
    test_network: engine.TestNetwork | None = None
    accept_tool_changes: bool = False
    backend: engine.BackendName | engine.SandboxBackend = engine.DEFAULT_BACKEND

    pool: WarmPool | None = None


def sandbox_backend(choice: engine.BackendName | engine.SandboxBackend) -> engine.SandboxBackend:
    """Return the backend `choice` names (or `choice` itself, when it is one).

    Raises:
        UsageError: no backend has that name.

    """
    if not isinstance(choice, str):
        return choice
    if choice == "kubernetes":
        from perstack_sandbox import kube  # noqa: PLC0415 - the Kubernetes client only when asked

        return kube.KubernetesBackend()
    if choice != "docker":
        raise UsageError(f"unknown backend {choice!r}; choose one of {list(engine.BACKEND_NAMES)}")
    return engine.DOCKER_BACKEND


class Run:
    """One Expert's sandbox: its run id and folder, the MCP operations, and teardown.

    Made by `open_run`; usable inside `async with` (entered once, by one task). If the sandbox
    container goes while the run is open (`perstack-sandbox down`, a kill, the engine), the
    gateway refuses every later call with the reason and tells its MCP clients;
    `await run.gateway.wait_stopped()` returns that reason (the caller decides what ends).
    """

    def __init__(
        self,
        config: ConfigSource,
        expert: str,
        *,
        secrets: Mapping[str, str | Secret],
        options: _RunOptions,
    ) -> None:
        """Keep the inputs; nothing is read or started before `async with`."""
        self.expert = expert
        self.run_id = state.new_run_id()
        self._config, self._secrets, self._options = config, secrets, options
        self._gateway: Gateway | None = None
        self._prepared: Prepared | None = None
        self._state: state.RunState | None = None
        self._context: AbstractAsyncContextManager[Gateway] | None = None
        self._backend: engine.SandboxBackend | None = None

    @property
    def gateway(self) -> Gateway:
        """The run's MCP gateway (serve it with `serve_stdio`/`serve_http`).

        Raises:
            RunError: the run is not started.

        """
        if self._gateway is None:
            raise RunError(f"run {self.run_id} is not started: use `async with open_run(...)`")
        return self._gateway

    @property
    def plan(self) -> SandboxPlan:
        """What the sandbox runs: skills, env names, egress allowlist, limits, mounts.

        Raises:
            RunError: the run has not started yet.

        """
        if self._prepared is None:
            raise RunError(f"run {self.run_id} has no plan yet: use `async with open_run(...)`")
        return self._prepared.plan

    @property
    def path(self) -> Path:
        """The run's folder: meta.json, policy.json, audit.jsonl, tools.jsonl, skills.log.

        Raises:
            RunError: the run has not started yet.

        """
        if self._state is None:
            raise RunError(f"run {self.run_id} has no folder yet: use `async with open_run(...)`")
        return self._state.path

    async def list_tools(self) -> list[types.Tool]:
        """Return every tool the Expert's skills expose (starts lazy skills).

        Raises:
            SkillError: a skill failed to start. GatewayError: tool names collide.
            RunError: the run is not started.

        """
        return await self.gateway.list_tools()

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any] | None = None
    ) -> types.CallToolResult:
        """Call one tool; a result with `is_error` is still a completed call.

        Raises:
            UsageError: no such tool, or the skill rejected the arguments.
            SkillError: the skill died, timed out, or answered with a JSON-RPC error.
            RunError: the run is not started.

        """
        return await self.gateway.call_tool_checked(name, dict(arguments or {}))

    async def list_prompts(self) -> list[types.Prompt]:
        """Return every prompt the skills offer (starts lazy skills; names as `list_tools`).

        Raises:
            SkillError: a skill failed to start. GatewayError: prompt names collide.
            RunError: the run is not started.

        """
        return [named.item for named in (await self.gateway.refreshed()).prompts.values()]

    async def get_prompt(
        self, name: str, arguments: Mapping[str, str] | None = None
    ) -> types.GetPromptResult:
        """Get one prompt from the skill that offers it (recorded by argument shape only).

        Raises:
            UsageError: no such prompt, or the skill rejected the arguments.
            SkillError: the skill died, timed out, or answered with a JSON-RPC error.
            RunError: the run is not started.

        """
        from perstack_sandbox.gateway import get_prompt  # noqa: PLC0415 - loaded with the run

        with _skill_refusals(f"prompts/get {name!r}"):
            return await get_prompt(self.gateway, name, dict(arguments or {}))

    async def list_resources(self) -> list[types.Resource]:
        """Return every resource the skills list (under `prefix_tools`, URIs in our scheme).

        Raises:
            SkillError: a skill failed to start. GatewayError: resource URIs collide.
            RunError: the run is not started.

        """
        return [named.item for named in (await self.gateway.refreshed()).resources.values()]

    async def list_resource_templates(self) -> list[types.ResourceTemplate]:
        """Return every resource template the skills list.

        Raises:
            SkillError: a skill failed to start. GatewayError: templates collide.
            RunError: the run is not started.

        """
        return [named.item for named in (await self.gateway.refreshed()).templates.values()]

    async def read_resource(self, uri: str) -> types.ReadResourceResult:
        """Read a resource from the skill that serves `uri` (listed, or matching a template).

        Raises:
            UsageError: no skill serves that URI, or the skill rejected it.
            SkillError: the skill died, timed out, or answered with a JSON-RPC error.
            RunError: the run is not started.

        """
        from perstack_sandbox.gateway import read_resource  # noqa: PLC0415 - loaded with the run

        with _skill_refusals(f"resources/read {uri!r}"):
            return await read_resource(self.gateway, uri)

    async def __aenter__(self) -> Self:
        """Prepare, build when needed, start the sandbox and the skills.

        Raises:
            SandboxError: see `open_run`.

        """
        if self._context is not None:
            raise RunError(f"run {self.run_id} was already entered; open a new run")
        self._context = self._started()
        self._gateway = await self._context.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the skills and remove the sandbox (shielded and bounded in time).

        Raises:
            EngineError: the teardown failed (`gc` removes what is left).
            RunError: the sandbox was taken down meanwhile, and its teardown tripped over that.

        """
        context, self._gateway = self._context, None
        if context is not None:
            await context.__aexit__(exc_type, exc, traceback)

    @asynccontextmanager
    async def _started(self) -> AsyncIterator[Gateway]:
        options = self._options
        prepared = self._prepared = await anyio.to_thread.run_sync(self._prepare)
        preload_mcp_layer()  # the input is good: import the MCP side while the sandbox starts
        if options.pool is None:
            # Cancelling the run during a build (the CLI's Ctrl-C, a caller's cancel scope)
            # stops the build and takes its fence down before this returns.
            image = await engine.ensure_expert_image_async(
                prepared.plan, progress=options.on_progress
            )
            await anyio.to_thread.run_sync(self._ensure_images)
            packages = await anyio.to_thread.run_sync(images.resolved_packages, image)
            run = self._adopt(None, packages)
            sandbox = self._chosen_backend().open_sandbox(
                prepared.plan,
                image=image,
                run=run,
                workspace=options.workspace,
                isolation=options.isolation,
                sealed=prepared.sealed,
                test_network=options.test_network,
            )
            async with self._served(prepared, sandbox) as gateway:
                yield gateway
            return
        claimed = await options.pool.claim_for(
            prepared.plan, isolation=options.isolation, workspace=options.workspace
        )
        self.run_id = claimed.run.run_id
        from perstack_sandbox.pool import GrantedSandbox  # noqa: PLC0415 - docker-py when pooled

        granted = GrantedSandbox(claimed, prepared.plan, sealed=prepared.sealed)
        try:
            self._adopt(claimed.run, claimed.packages)
            async with self._served(prepared, granted, on_started=granted.started) as gateway:
                yield gateway
        finally:
            if not granted.entered:  # failed or cancelled before its own teardown took over
                claimed.settled.set()
                with anyio.CancelScope(shield=True):
                    await engine.teardown(claimed.run, "failed")

    def _adopt(self, run: state.RunState | None, packages: list[dict[str, str]]) -> state.RunState:
        """Make (or take a claimed sandbox's) run folder the run's, and note its packages."""
        try:
            if run is None:
                run = state.create_run(self.expert, run_id=self.run_id)
            run.update_meta(packages=packages)  # what `audit` shows next to the allowlist
        except OSError as exc:
            raise RunError(f"cannot write the folder of run {self.run_id}: {exc}") from exc
        self._state = run
        return run

    @asynccontextmanager
    async def _served(
        self,
        prepared: Prepared,
        sandbox_context: AbstractAsyncContextManager[engine.SandboxHandle],
        *,
        on_started: Callable[[], None] | None = None,
    ) -> AsyncIterator[Gateway]:
        """Start the skills in the sandbox of `sandbox_context` behind the run's gateway."""
        options, run = self._options, self._state
        if run is None:
            raise RunError(f"run {self.run_id} has no folder")
        try:
            files = RunFiles(run)
        except OSError as exc:
            raise RunError(f"cannot write the folder of run {self.run_id}: {exc}") from exc
        sink = files if options.audit is None else TeeSink(files, options.audit)
        gateway: Gateway | None = None
        try:
            async with (
                # Starts queue for a slot across this user's runs, in any process (`start_slot`).
                engine.start_slot() as started,
                sandbox_context as sandbox,
                self._gateway_over(prepared, sandbox, sink) as gateway,
            ):
                started()  # the skills answered: the next sandbox may start
                if on_started is not None:
                    on_started()
                yield gateway
        except BaseExceptionGroup as group:
            sole = sole_exception(group)
            if sole is group:
                raise
            news = _news(sole, gateway)
            raise news from (sole if news is not sole else sole.__cause__)
        except EngineError as exc:
            news = _news(exc, gateway)
            if news is exc:
                raise
            raise news from exc
        finally:
            files.close()

    @asynccontextmanager
    async def _gateway_over(
        self, prepared: Prepared, sandbox: engine.SandboxHandle, sink: AuditSink
    ) -> AsyncIterator[Gateway]:
        """Start the skills in `sandbox` behind a gateway, once the MCP layer is imported."""
        # Already imported by `preload_mcp_layer`, or waits for it off the event loop.
        await anyio.to_thread.run_sync(import_mcp_layer)
        from perstack_sandbox.gateway import open_gateway  # noqa: PLC0415 - imported just above

        options = self._options
        async with open_gateway(
            build_sessions(
                prepared, sandbox, audit=sink, accept_tool_changes=options.accept_tool_changes
            ),
            prepared.plan.interactive_tools,
            prefix_tools=options.prefix_tools,
            prompter=options.prompter,
            egress_check=sandbox.egress_problem,
            audit=sink,
            ends_when=sandbox.wait_stopped,
        ) as gateway:
            # The skills may have started before the proxy (decision 50): ready means both.
            await sandbox.wait_egress()
            yield gateway

    def _chosen_backend(self) -> engine.SandboxBackend:
        if self._backend is None:
            self._backend = sandbox_backend(self._options.backend)
        return self._backend

    def _ensure_images(self) -> None:
        """Build the proxy (and workspace) images the run needs, with the caller's progress."""
        progress = self._options.on_progress
        # Built here, so the sandbox's own checks never build (and never report).
        images.ensure_proxy_image(progress=progress)
        if self._options.workspace is not None:
            images.ensure_workspace_image(progress=progress)

    def _prepare(self) -> Prepared:
        isolation = check_isolation(self._options.isolation)
        config = self._config
        if not isinstance(config, PerstackConfig):
            config, _warnings = load_config(Path(config))
        prepared = prepare_run(
            config,
            self.expert,
            secrets=self._secrets,
            workspace=self._options.workspace,
            limits=self._options.limits,
            env_paths=self._options.env_paths,
        )
        backend = self._chosen_backend()
        if backend.name == "kubernetes":
            from perstack_sandbox import kube  # noqa: PLC0415 - the Kubernetes client only when asked

            kube.check_plan(prepared.plan, self._options.workspace)
            if self._options.seal_secrets or self._options.pool is not None:
                raise UsageError("sealed secrets and warm pools run on Docker only, for now")
        else:
            # After the input checks, before any build: never a silent fallback to runc.
            engine.require_isolation(isolation)
        if self._options.seal_secrets:
            passthrough = [_passthrough_host(host) for host in self._options.seal_passthrough]
            sealed = seal_secrets(prepared.secrets, passthrough)
            return Prepared(plan=prepared.plan, secrets=dict(sealed.placeholders), sealed=sealed)
        return prepared


def _passthrough_host(text: str) -> str:
    """Return the canonical form of a `seal_passthrough` host.

    Raises:
        UsageError: not a host name.

    """
    try:
        return canonicalise_host(text)
    except HostRejected as exc:
        raise UsageError(f"seal passthrough host {text!r} is invalid: {exc}") from exc


def _news(error: BaseException, gateway: Gateway | None) -> BaseException:
    """Return what to raise for `error`: after the sandbox went, that end is the news.

    Whoever took the sandbox down (`down`) removes the same objects as the teardown: the
    teardown tripping over that removal is a consequence, not the story.
    """
    reason = gateway.stop_reason if gateway is not None else None
    if reason is not None and isinstance(error, EngineError):
        return RunError(reason)
    return error


def skill_home(uid: int) -> str:
    """Return the private HOME of the skill running as `uid` (made mode 700 by the launcher)."""
    return f"/home/skill{uid}"


@contextlib.contextmanager
def _skill_refusals(what: str) -> Iterator[None]:
    """Raise a skill's JSON-RPC error as ours: bad params as `UsageError`, else `SkillError`."""
    from mcp.shared.exceptions import MCPError  # noqa: PLC0415 - loaded with the run
    from mcp_types import INVALID_PARAMS  # noqa: PLC0415

    try:
        yield
    except MCPError as exc:
        error_class = UsageError if exc.error.code == INVALID_PARAMS else SkillError
        raise error_class(
            f"a skill refused {what}: {exc.error.message} (JSON-RPC error {exc.error.code})"
        ) from exc


def build_sessions(
    prepared: Prepared,
    sandbox: engine.SandboxHandle,
    *,
    audit: AuditSink = NULL_SINK,
    accept_tool_changes: bool = False,
) -> list[SkillSession]:
    """One session per stdio skill (an exec as its own uid) and per remote skill.

    Every session reports its stderr and death to the run's `audit` sink. With a lock, each
    stdio skill's tools are pinned to the lock's (`ToolPin`).
    """
    from perstack_sandbox.skills import (  # noqa: PLC0415 - the MCP SDK only once a run starts
        RemoteSkillSession,
        SkillSession,
        SkillSpec,
        ToolPin,
    )

    timeout_s = prepared.plan.timeout_ms / 1000
    sessions: list[SkillSession] = []
    for index, launch in enumerate(prepared.plan.skills):
        env = skill_environment(
            prepared.secrets[launch.name],
            proxy_env=sandbox.proxy_env(launch.name),
            home=skill_home(sandbox.skill_uid(index)),
        )
        spec = SkillSpec(launch.name, launch.pick, launch.omit, launch.lazy_init, timeout_s)
        locked = prepared.lock.tools(launch.name) if prepared.lock is not None else None
        pin = None
        if locked is not None:
            pin = ToolPin(locked, accept_changes=accept_tool_changes, audit=audit)
        factory = _exec_factory(sandbox, launch, index, env)
        sessions.append(SkillSession(spec, factory, audit=audit, pin=pin))
    for sse in prepared.plan.sse_skills:
        spec = SkillSpec(sse.name, sse.pick, sse.omit, lazy_init=False, timeout_s=timeout_s)
        proxy_url = sandbox.host_proxy_url_for(sse.name)
        sessions.append(RemoteSkillSession(spec, sse.endpoint, proxy_url=proxy_url, audit=audit))
    return sessions


def _exec_factory(
    sandbox: engine.SandboxHandle, launch: SkillLaunch, index: int, env: dict[str, str]
) -> Callable[[], ExecContext]:
    def factory() -> ExecContext:
        return sandbox.exec_stdio(
            launch.argv, env=env, user=sandbox.skill_uid(index), workdir=launch.workdir
        )

    return factory
