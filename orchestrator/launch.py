"""Start one Expert end to end: config, plan, secrets, image, sandbox, skills, gateway.

The order is the contract: every input error (config, unknown expert, missing variable, bad
env file) is raised before any image is built or any container exists. The skills' stderr and
the gateway's call log go to the run's `skills.log`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from orchestrator import engine, images, state
from orchestrator._build import stderr_progress
from orchestrator._text import printable
from orchestrator.audit import ToolCallWriter
from orchestrator.config import load_config
from orchestrator.env import env_files, load_env_files, resolve_secrets, skill_environment
from orchestrator.errors import RunError, UsageError
from orchestrator.gateway import (
    Gateway,
    Prompter,
    open_gateway,
    parse_listen,
    result_payload,
    serve_http,
    serve_stdio,
    sole_exception,
    tools_payload,
)
from orchestrator.http_guard import new_token
from orchestrator.plan import plan as make_plan
from orchestrator.skills import RemoteSkillSession, SkillSession, SkillSpec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Sequence
    from contextlib import AbstractAsyncContextManager

    from orchestrator.env import SkillSecrets
    from orchestrator.plan import SandboxPlan, SkillLaunch
    from orchestrator.skills import SkillProcess

    ExecContext = AbstractAsyncContextManager[SkillProcess]

# `run --http` uses this variable's value as the bearer token when set, else a fresh one.
TOKEN_ENV = "PERSTACK_SANDBOX_TOKEN"  # noqa: S105 - the variable's NAME, not a secret
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
RUN_LOGGERS = ("orchestrator.skills", "orchestrator.gateway")


@dataclass(frozen=True, slots=True)
class LaunchOptions:
    """What the `tools`, `call` and `run` commands pass in."""

    config_path: Path
    expert: str
    env_paths: Sequence[Path] = ()
    workspace: Path | None = None
    prefix_tools: bool = False
    prompter: Prompter | None = None
    progress: Callable[[str], None] = field(default=stderr_progress)
    signal_is_error: bool = True  # `run` is meant to be stopped by a signal: not an error


@dataclass(frozen=True, slots=True)
class Prepared:
    """Everything decided before Docker is touched."""

    plan: SandboxPlan
    secrets: dict[str, SkillSecrets]


def prepare(options: LaunchOptions) -> Prepared:
    """Load config, plan, and resolve every secret; no Docker yet.

    Raises:
        ConfigError: perstack.toml is invalid.
        UnknownExpertError: no such expert.
        MissingEnvError: a requiredEnv variable has no value (all of them named).
        UsageError: an env file is missing or malformed, or the workspace overlaps the
            Expert's folder.

    """
    config, _warnings = load_config(options.config_path)
    sandbox_plan = make_plan(config, options.expert)
    check_workspace(options.workspace, Path(sandbox_plan.config_dir))
    files = env_files(
        Path(sandbox_plan.config_dir), options.env_paths, list(config.env_path) or None
    )
    secrets = resolve_secrets(sandbox_plan, load_env_files(files))
    return Prepared(plan=sandbox_plan, secrets=secrets)


def check_workspace(workspace: Path | None, config_dir: Path) -> None:
    """Refuse a workspace that is, contains or lies inside the Expert's folder.

    The sandbox writes to its workspace; if that were the Expert's folder it could rewrite
    perstack.toml or plant `.env` files (or links) that the NEXT run would read on the host.

    Raises:
        UsageError: the two folders overlap.

    """
    if workspace is None:
        return
    space, expert = workspace.resolve(), config_dir.resolve()
    if space == expert or space in expert.parents or expert in space.parents:
        raise UsageError(
            f"--workspace {workspace} overlaps the Expert's folder {config_dir}: the sandbox "
            "could rewrite its own perstack.toml and env files; use a separate folder"
        )


@asynccontextmanager
async def open_expert(options: LaunchOptions) -> AsyncIterator[Gateway]:
    """Yield a started gateway over the Expert's sandboxed skills; tear down on exit.

    Raises:
        InputError: any bad input, before anything starts (see `prepare`).
        EngineError: Docker failed; ImageBuildError: an image build failed.
        SkillError: a skill failed to start. GatewayError: a tool-name collision.

    """
    prepared = prepare(options)
    image = await anyio.to_thread.run_sync(
        functools.partial(images.ensure_expert_image, prepared.plan, progress=options.progress)
    )
    run = state.create_run(prepared.plan.expert)
    finished = False
    try:
        with _run_log(run.skills_log_path), _tool_call_log(run.tools_path):
            async with (
                engine.cancel_on_signals(),
                engine.open_sandbox(
                    prepared.plan, image=image, run=run, workspace=options.workspace
                ) as sandbox,
                open_gateway(
                    build_sessions(prepared, sandbox),
                    prepared.plan.interactive_tools,
                    prefix_tools=options.prefix_tools,
                    prompter=options.prompter,
                    egress_check=sandbox.egress_problem,
                ) as gateway,
            ):
                yield gateway
                finished = True
    except BaseExceptionGroup as group:
        sole = sole_exception(group)
        if sole is group:
            raise
        raise sole from sole.__cause__
    if not finished and options.signal_is_error:  # the body was cancelled by SIGINT/SIGTERM
        raise RunError(f"interrupted by a signal; run {run.run_id} was torn down")
    if not finished:  # `run` stopped the way it is meant to be: not a failure
        run.update_meta(status="stopped")


def skill_home(uid: int) -> str:
    """Return the private HOME of the skill running as `uid` (made mode 700 by the launcher)."""
    return f"/home/skill{uid}"


def build_sessions(prepared: Prepared, sandbox: engine.Sandbox) -> list[SkillSession]:
    """One session per stdio skill (an exec as its own uid) and per remote skill."""
    timeout_s = prepared.plan.timeout_ms / 1000
    sessions: list[SkillSession] = []
    for index, launch in enumerate(prepared.plan.skills):
        env = skill_environment(
            prepared.secrets[launch.name],
            proxy_env=sandbox.proxy_env(launch.name),
            home=skill_home(sandbox.skill_uid(index)),
        )
        spec = SkillSpec(launch.name, launch.pick, launch.omit, launch.lazy_init, timeout_s)
        sessions.append(SkillSession(spec, _exec_factory(sandbox, launch, index, env)))
    for sse in prepared.plan.sse_skills:
        spec = SkillSpec(sse.name, sse.pick, sse.omit, lazy_init=False, timeout_s=timeout_s)
        proxy_url = sandbox.host_proxy_url_for(sse.name)
        sessions.append(RemoteSkillSession(spec, sse.endpoint, proxy_url=proxy_url))
    return sessions


def _exec_factory(
    sandbox: engine.Sandbox, launch: SkillLaunch, index: int, env: dict[str, str]
) -> Callable[[], ExecContext]:
    def factory() -> ExecContext:
        return sandbox.exec_stdio(
            launch.argv, env=env, user=sandbox.skill_uid(index), workdir=launch.workdir
        )

    return factory


@functools.cache
def _formatter() -> logging.Formatter:
    return logging.Formatter(LOG_FORMAT)


@contextlib.contextmanager
def _tool_call_log(path: Path) -> Iterator[None]:
    """Append the gateway's tool calls to the run's `tools.jsonl` (names and shapes only)."""
    writer = ToolCallWriter(path)
    gateway_logger = logging.getLogger("orchestrator.gateway")
    gateway_logger.addHandler(writer)
    try:
        yield
    finally:
        gateway_logger.removeHandler(writer)
        writer.close()


class _PrintableFormatter(logging.Formatter):
    """A formatter whose output has a skill's control characters escaped (see `_text`)."""

    def format(self, record: logging.LogRecord) -> str:
        """Format, then escape control characters."""
        return printable(super().format(record))


class _run_log:  # noqa: N801 - used like a function: `with _run_log(path):`
    """Send the skills' stderr and the call log to the run's log; warnings also to stderr."""

    def __init__(self, path: Path) -> None:
        self._file = logging.FileHandler(path, encoding="utf-8")
        self._file.setFormatter(_formatter())
        self._terminal = logging.StreamHandler(sys.stderr)  # a skill's death, for one
        self._terminal.setLevel(logging.WARNING)
        self._terminal.setFormatter(_PrintableFormatter("warning: %(message)s"))

    def __enter__(self) -> None:
        for name in RUN_LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self._file)
            logger.addHandler(self._terminal)
            logger.setLevel(logging.INFO)
            logger.propagate = False  # INFO lines go to the file only

    def __exit__(self, *_exc: object) -> None:
        for name in RUN_LOGGERS:
            logging.getLogger(name).removeHandler(self._file)
            logging.getLogger(name).removeHandler(self._terminal)
        self._file.close()


def parse_tool_args(text: str | None) -> dict[str, object]:
    """Parse `--args JSON`; it must be a JSON object.

    Raises:
        UsageError: not JSON, or not an object.

    """
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--args is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise UsageError('--args must be a JSON object, e.g. \'{"name": "value"}\'')
    return value


def tools_report(options: LaunchOptions, *, as_json: bool) -> str:
    """Start, list every exposed tool, stop; return the text to print.

    Raises:
        SandboxError: any failure (see `open_expert`).

    """

    async def main() -> str:
        async with open_expert(options) as gateway:
            tools = await gateway.list_tools()
            if as_json:
                return json.dumps(tools_payload(tools), indent=2, sort_keys=True)
            rows = [
                (t.name, gateway.route(t.name).skill, _first_line(t.description)) for t in tools
            ]
            width = max((len(name) for name, _, _ in rows), default=0)
            text = "\n".join(f"{n:<{width}}  [{s}]  {d}".rstrip() for n, s, d in rows)
            return printable(text)  # names and descriptions come from the skills

    return anyio.run(main)


def call_report(options: LaunchOptions, tool: str, arguments: dict[str, object]) -> str:
    """Start, call one tool, stop; return the CallToolResult as JSON.

    Raises:
        SandboxError: any failure (see `open_expert`); UsageError for an unknown tool.

    """

    async def main() -> str:
        async with open_expert(options) as gateway:
            result = await gateway.call_tool_checked(tool, dict(arguments))
            return json.dumps(result_payload(result), indent=2, sort_keys=True)

    return anyio.run(main)


def serve(options: LaunchOptions, *, http: str | None) -> None:
    """Serve the gateway until the client disconnects (stdio) or the process is stopped.

    Raises:
        SandboxError: any failure (see `open_expert`); UsageError for a bad `--http`.

    """
    listen = parse_listen(http) if http is not None else None
    options = dataclasses.replace(options, signal_is_error=False)

    async def main() -> None:
        async with open_expert(options) as gateway:
            if listen is None:
                await serve_stdio(gateway)
                return
            given = os.environ.get(TOKEN_ENV)
            token = given or new_token()
            # A token the user chose is a secret they already hold: never echo it back.
            shown = f"the value of ${TOKEN_ENV}" if given else token

            def ready(url: str) -> None:
                print(f"gateway: {url}\nbearer token: {shown}", file=sys.stderr, flush=True)  # noqa: T201

            await serve_http(gateway, port=listen[1], token=token, on_ready=ready)

    anyio.run(main)


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""
