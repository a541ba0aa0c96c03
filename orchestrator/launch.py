"""The CLI's runs: `tools`, `call` and `run` on top of the public API (`perstack_sandbox.run`).

A command adds what a command line needs and a library must not do: secrets from env files and
the host environment, build progress and a run's warnings on stderr, and SIGINT/SIGTERM
cancelling the run (its teardown still runs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeVar

import anyio

from perstack_sandbox import engine
from perstack_sandbox.config import load_config
from perstack_sandbox.errors import RunError, UsageError
from perstack_sandbox.gateway import (
    Gateway,
    Prompter,
    new_token,
    parse_listen,
    result_payload,
    serve_http,
    serve_stdio,
    sole_exception,
    tools_payload,
)
from perstack_sandbox.images import stderr_progress
from perstack_sandbox.plan import host_secrets
from perstack_sandbox.run import Prepared, Run, open_run, prepare_run
from perstack_sandbox.text import printable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from pathlib import Path

    from perstack_sandbox.audit import ToolCall

# `run --http` uses this variable's value as the bearer token when set, else a fresh one.
TOKEN_ENV: Final = "PERSTACK_SANDBOX_TOKEN"  # noqa: S105 - the variable's NAME, not a secret

T = TypeVar("T")


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


def prepare(options: LaunchOptions) -> Prepared:
    """Load config, plan, and resolve every secret the way the CLI does; no Docker yet.

    Raises:
        ConfigError: perstack.toml is invalid.
        UnknownExpertError: no such expert.
        MissingEnvError: a requiredEnv variable has no value (all of them named).
        UsageError: an env file is missing or malformed, the workspace is refused (see
            `run.check_workspace`), or the skills could not read the Expert's folder.

    """
    config, _warnings = load_config(options.config_path)
    secrets = host_secrets(config, env_paths=options.env_paths)
    return prepare_run(
        config,
        options.expert,
        secrets=secrets,
        workspace=options.workspace,
        env_paths=options.env_paths,
    )


class _TerminalWarnings:
    """The CLI's extra sink: a run's warnings (a skill's death, for one) on stderr."""

    def tool_call(self, call: ToolCall) -> None:
        """Keep calls in the run's files only."""

    def skill_stderr(self, skill: str, line: str) -> None:
        """Keep stderr in the run's files only."""

    def warning(self, message: str) -> None:
        """Print the warning, escaped (it may quote a skill)."""
        print(printable(f"warning: {message}"), file=sys.stderr, flush=True)  # noqa: T201

    def info(self, message: str) -> None:
        """Keep diagnostics in the run's files only."""


def cli_run(options: LaunchOptions) -> Run:
    """Return the run of a CLI command: secrets from env files and the environment.

    Raises:
        InputError: the config, an env file, a secret or the workspace is bad.

    """
    config, _warnings = load_config(options.config_path)
    return open_run(
        config,
        options.expert,
        secrets=host_secrets(config, env_paths=options.env_paths),
        env_paths=options.env_paths,
        workspace=options.workspace,
        prefix_tools=options.prefix_tools,
        prompter=options.prompter,
        audit=_TerminalWarnings(),
        on_progress=options.progress,
    )


@asynccontextmanager
async def open_expert(options: LaunchOptions) -> AsyncIterator[Gateway]:
    """Yield a started gateway over the Expert's sandboxed skills; tear down on exit.

    Raises:
        SandboxError: see `open_run`.

    """
    async with cli_run(options) as run:
        yield run.gateway


async def _until_signal(options: LaunchOptions, use: Callable[[Run], Awaitable[T]]) -> T | None:
    """Open the CLI's run and hand it to `use`; SIGINT/SIGTERM cancel both, with teardown.

    Raises:
        RunError: a signal stopped a command that is not meant to be stopped by one.

    """
    run = cli_run(options)
    try:
        async with engine.cancel_on_signals(), run:
            return await use(run)
    except BaseExceptionGroup as group:  # the signal watcher's task group wraps what the run raised
        sole = sole_exception(group)
        if sole is group:
            raise
        raise sole from sole.__cause__
    if options.signal_is_error:
        raise RunError(f"interrupted by a signal; run {run.run_id} was torn down")
    return None


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

    async def report(run: Run) -> str:
        tools = await run.list_tools()
        if as_json:
            return json.dumps(tools_payload(tools), indent=2, sort_keys=True)
        rows = [
            (t.name, run.gateway.route(t.name).skill, _first_line(t.description)) for t in tools
        ]
        width = max((len(name) for name, _, _ in rows), default=0)
        text = "\n".join(f"{n:<{width}}  [{s}]  {d}".rstrip() for n, s, d in rows)
        return printable(text)  # names and descriptions come from the skills

    return anyio.run(_until_signal, options, report) or ""


def call_report(options: LaunchOptions, tool: str, arguments: dict[str, object]) -> str:
    """Start, call one tool, stop; return the CallToolResult as JSON.

    Raises:
        SandboxError: any failure (see `open_expert`); UsageError for an unknown tool.

    """

    async def report(run: Run) -> str:
        result = await run.call_tool(tool, arguments)
        return json.dumps(result_payload(result), indent=2, sort_keys=True)

    return anyio.run(_until_signal, options, report) or ""


def serve(options: LaunchOptions, *, http: str | None) -> None:
    """Serve the gateway until the client disconnects (stdio) or the process is stopped.

    Raises:
        SandboxError: any failure (see `open_expert`); UsageError for a bad `--http`.

    """
    listen = parse_listen(http) if http is not None else None
    options = dataclasses.replace(options, signal_is_error=False)

    async def main(run: Run) -> None:
        if listen is None:
            await serve_stdio(run.gateway)
            return
        given = os.environ.get(TOKEN_ENV)
        token = given or new_token()
        # A token the user chose is a secret they already hold: never echo it back.
        shown = f"the value of ${TOKEN_ENV}" if given else token

        def ready(url: str) -> None:
            print(f"gateway: {url}\nbearer token: {shown}", file=sys.stderr, flush=True)  # noqa: T201

        await serve_http(run.gateway, port=listen[1], token=token, on_ready=ready)

    anyio.run(_until_signal, options, main)


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""
