"""`open_run` and `build_image`: the library's two ways in, over a config and an expert."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from perstack_sandbox import engine, images
from perstack_sandbox.config import PerstackConfig, load_config
from perstack_sandbox.isolation import DEFAULT_ISOLATION, Isolation
from perstack_sandbox.plan import plan as make_plan
from perstack_sandbox.run._options import RunOptions, quiet
from perstack_sandbox.run._run import Run

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from perstack_sandbox.audit import AuditSink
    from perstack_sandbox.gateway import Prompter
    from perstack_sandbox.plan import Limits, Secret
    from perstack_sandbox.pool import WarmPool
    from perstack_sandbox.run._options import ConfigSource


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
    pool_fallback: bool = False,
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
    sandbox's on entering. A run that does not fit the pool (a workspace, other limits, env
    files or isolation) is refused, or with `pool_fallback` starts its own sandbox instead
    (`run.is_pooled` says which). An Expert's sandbox:

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
            workspace with a pool (without `pool_fallback`).
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
        options=RunOptions(
            env_paths=tuple(os.fspath(path) for path in env_paths),
            workspace=Path(workspace) if workspace is not None else None,
            limits=limits,
            isolation=isolation,
            prefix_tools=prefix_tools,
            prompter=prompter,
            audit=audit,
            on_progress=on_progress or quiet,
            seal_secrets=seal_secrets,
            seal_passthrough=tuple(seal_passthrough),
            accept_tool_changes=accept_tool_changes,
            backend=backend,
            pool=pool,
            pool_fallback=pool_fallback,
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
    progress = on_progress or quiet
    loaded = config if isinstance(config, PerstackConfig) else load_config(Path(config))[0]
    expert_plan = make_plan(loaded, expert)
    tag = await engine.ensure_expert_image_async(expert_plan, progress=progress)
    await anyio.to_thread.run_sync(functools.partial(images.ensure_proxy_image, progress=progress))
    return tag
