"""`Run`: one Expert's sandbox behind its MCP gateway, its start, its files and its teardown.

Entering a run prepares it (`_prepare`), builds what is missing, starts (or claims from a warm
pool) its sandbox and starts the skills behind the gateway; leaving it stops the skills and
tears the sandbox down, shielded. What happens in the run goes to its own sinks only (its
`tools.jsonl` and `skills.log`, plus the caller's `AuditSink`). Engine calls run in worker
threads, never on the event loop.
"""

from __future__ import annotations

import contextlib
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.to_thread

from perstack_sandbox import engine, images, state
from perstack_sandbox.audit import RunFiles, TeeSink
from perstack_sandbox.errors import EngineError, RunError, SkillError, UsageError, sole_exception
from perstack_sandbox.run._options import sandbox_backend
from perstack_sandbox.run._preload import import_mcp_layer, preload_mcp_layer
from perstack_sandbox.run._prepare import prepare_for_run
from perstack_sandbox.run._sessions import build_sessions

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Mapping
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path
    from types import TracebackType

    import mcp_types as types

    from perstack_sandbox.audit import AuditSink
    from perstack_sandbox.gateway import Gateway
    from perstack_sandbox.plan import SandboxPlan, Secret
    from perstack_sandbox.pool import WarmPool
    from perstack_sandbox.run._options import ConfigSource, RunOptions
    from perstack_sandbox.run._prepare import Prepared


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
        options: RunOptions,
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
        self.is_pooled = False  # set on entering: the sandbox was claimed from the pool

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

    def _pool_for(self, prepared: Prepared) -> WarmPool | None:
        """Return the pool to claim from: none for a run that does not fit it, when allowed."""
        options, pool = self._options, self._options.pool
        if pool is None or not options.pool_fallback:
            return pool
        misfit = pool.misfit(
            prepared.plan, isolation=options.isolation, workspace=options.workspace
        )
        return None if misfit is not None else pool

    @asynccontextmanager
    async def _started(self) -> AsyncIterator[Gateway]:
        options = self._options
        prepared = self._prepared = await anyio.to_thread.run_sync(self._prepare)
        pool = self._pool_for(prepared)
        if pool is None:
            # Cancelling the run during a build (the CLI's Ctrl-C, a caller's cancel scope)
            # stops the build and takes its fence down before this returns.
            image = await engine.ensure_expert_image_async(
                prepared.plan, progress=options.on_progress
            )
            await anyio.to_thread.run_sync(self._ensure_images)
            packages = await anyio.to_thread.run_sync(images.resolved_packages, image)
            run = self._adopt(None, packages)
            # Not before the checks above: the import holds the GIL for most of half a second,
            # and they are this process's work on the way to the first engine call
            # (docs/architecture.md, decisions 49 and 65).
            preload_mcp_layer()
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
        preload_mcp_layer()  # the input is good: import the MCP side while the claim runs
        claimed = await pool.claim_for(
            prepared.plan, isolation=options.isolation, workspace=options.workspace
        )
        self.run_id, self.is_pooled = claimed.run.run_id, True
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
        return prepare_for_run(
            self._config, self.expert, self._secrets, self._options, self._chosen_backend
        )


def _news(error: BaseException, gateway: Gateway | None) -> BaseException:
    """Return what to raise for `error`: after the sandbox went, that end is the news.

    Whoever took the sandbox down (`down`) removes the same objects as the teardown: the
    teardown tripping over that removal is a consequence, not the story.
    """
    reason = gateway.stop_reason if gateway is not None else None
    if reason is not None and isinstance(error, EngineError):
        return RunError(reason)
    return error


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
