"""The CLI's runs: `tools`, `call` and `run` on top of the public API (`perstack_sandbox.run`).

A command adds what a command line needs and a library must not do: secrets from env files and
the host environment, build progress and the config's and run's warnings on stderr, and
SIGINT/SIGTERM cancelling the run (its teardown still runs; exit 130, but 0 for `run`, a server
whose normal end is a signal: architecture decision 29). When the run's sandbox
goes while a command uses it (`down RUN`, a kill), the gateway has told its clients; the
command is cancelled and fails with that reason (exit 1).

`run --http` binds its port before anything starts (a port in use is an error at once), and
prints the URL and bearer token on stderr once it listens, or writes the token to a file that
only its owner can read.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeVar

import anyio

from perstack_sandbox import engine, state
from perstack_sandbox.config import load_config
from perstack_sandbox.engine import DEFAULT_BACKEND
from perstack_sandbox.errors import RunError, RunInterruptedError, UsageError, sole_exception
from perstack_sandbox.images import stderr_progress
from perstack_sandbox.isolation import DEFAULT_ISOLATION
from perstack_sandbox.plan import host_secrets
from perstack_sandbox.run import Prepared, Run, open_run, prepare_run
from perstack_sandbox.text import printable

if TYPE_CHECKING:
    import socket
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
    from pathlib import Path

    from perstack_sandbox.audit import Request, ToolCall
    from perstack_sandbox.config import PerstackConfig
    from perstack_sandbox.engine import BackendName
    from perstack_sandbox.gateway import Gateway, Prompter
    from perstack_sandbox.isolation import Isolation
    from perstack_sandbox.plan import Secret

# `run --http` uses this variable's value as the bearer token when set, else a fresh one.
# `run` serves on uvloop where it is installed (a dependency, but not on Windows): every call
# crosses the event loop several times, and uvloop's passes are cheaper (decision 52).
SERVER_LOOP: Final = {"use_uvloop": importlib.util.find_spec("uvloop") is not None}
TOKEN_ENV: Final = "PERSTACK_SANDBOX_TOKEN"  # noqa: S105 - the variable's NAME, not a secret
FLUSH_GRACE_S: Final = 0.2  # a queued MCP notification reaches the client's pipe or socket

T = TypeVar("T")


def _stderr_warning(line: str) -> None:
    stderr_progress(f"warning: {line}")


@dataclass(frozen=True, slots=True)
class LaunchOptions:
    """What the `tools`, `call` and `run` commands pass in."""

    config_path: Path
    expert: str
    env_paths: Sequence[Path] = ()
    workspace: Path | None = None
    prefix_tools: bool = False
    isolation: Isolation = DEFAULT_ISOLATION  # "gvisor": the skills run under runsc
    backend: BackendName = DEFAULT_BACKEND  # "kubernetes": pods on the kubeconfig's cluster
    prompter: Prompter | None = None
    progress: Callable[[str], None] = field(default=stderr_progress)
    # Told about config warnings and env-file keys set twice, one line each, before any start.
    warn: Callable[[str], None] = field(default=_stderr_warning)
    # Placeholders in the skills, real values in the proxy (docs/architecture.md, decision 37).
    seal_secrets: bool = False
    seal_passthrough: tuple[str, ...] = ()
    # Serve skills whose tools differ from perstack-sandbox.lock, once (audited).
    accept_tool_changes: bool = False


def _config_and_secrets(options: LaunchOptions) -> tuple[PerstackConfig, dict[str, Secret]]:
    """Load the config and the secrets; their warnings go to `options.warn` first."""
    config, warnings = load_config(options.config_path)
    for warning in warnings:
        options.warn(printable(str(warning)))
    return config, host_secrets(config, env_paths=options.env_paths, warn=options.warn)


def prepare(options: LaunchOptions) -> Prepared:
    """Load config, plan, and resolve every secret the way the CLI does; no Docker yet.

    Raises:
        ConfigError: perstack.toml is invalid.
        UnknownExpertError: no such expert.
        MissingEnvError: a requiredEnv variable has no value (all of them named).
        UsageError: an env file is missing or unreadable, the workspace is refused (see
            `run.check_workspace`), or the skills could not read the Expert's folder.
        EnvFileError: lines of an env file are malformed (every one of them).

    """
    config, secrets = _config_and_secrets(options)
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

    def request(self, request: Request) -> None:
        """Keep the other forwarded requests in the run's files only."""

    def skill_stderr(self, skill: str, line: str) -> None:
        """Keep stderr in the run's files only."""

    def warning(self, message: str) -> None:
        """Print the warning, escaped (it may quote a skill)."""
        print(printable(f"warning: {message}"), file=sys.stderr, flush=True)  # noqa: T201

    def info(self, message: str) -> None:
        """Keep diagnostics in the run's files only."""


def cli_run(options: LaunchOptions) -> Run:
    """Return the run of a CLI command: secrets from env files and the environment.

    The config's warnings and an env file's keys set twice go to `options.warn` first.

    Raises:
        InputError: the config, an env file, a secret or the workspace is bad.

    """
    config, secrets = _config_and_secrets(options)
    return open_run(
        config,
        options.expert,
        secrets=secrets,
        env_paths=options.env_paths,
        workspace=options.workspace,
        isolation=options.isolation,
        prefix_tools=options.prefix_tools,
        prompter=options.prompter,
        audit=_TerminalWarnings(),
        on_progress=options.progress,
        seal_secrets=options.seal_secrets,
        seal_passthrough=options.seal_passthrough,
        accept_tool_changes=options.accept_tool_changes,
        backend=options.backend,
    )


@asynccontextmanager
async def open_expert(options: LaunchOptions) -> AsyncIterator[Gateway]:
    """Yield a started gateway over the Expert's sandboxed skills; tear down on exit.

    SIGINT/SIGTERM cancel the body. If the sandbox container goes while the body runs
    (`down RUN`, a kill, the engine), the gateway tells its clients and the body is cancelled.

    Raises:
        InputError: any bad input, before anything starts.
        IsolationError: gVisor was asked for and is missing, before any image is built.
        EngineError: Docker failed; ImageBuildError: an image build failed.
        SkillError: a skill failed to start. GatewayError: a tool-name collision.
        RunError: the sandbox went away while the body ran.
        RunInterruptedError: SIGINT or SIGTERM cancelled the body.

    """
    run = cli_run(options)
    gone: list[str] = []
    finished = False
    try:
        async with engine.cancel_on_signals() as scope, run, _ends_with_the_run(run, scope, gone):
            yield run.gateway
            finished = True
    except BaseExceptionGroup as group:  # the watchers' task groups wrap what the run raised
        sole = sole_exception(group)
        if sole is group:
            raise
        raise sole from sole.__cause__
    if gone:
        raise RunError(gone[0])
    if not finished:  # the body was cancelled by SIGINT/SIGTERM: stopped, not failed
        _record_stopped(run.run_id)
        raise RunInterruptedError(f"interrupted by a signal; run {run.run_id} was torn down")


def _record_stopped(run_id: str) -> None:
    """Record a run that a signal ended as `stopped`: it was asked to end, it did not fail."""
    record = state.open_run(run_id)
    if record is not None:
        with contextlib.suppress(OSError):  # the exit code says it already; keep no traceback
            record.update_meta(status="stopped")


@asynccontextmanager
async def _ends_with_the_run(
    run: Run, scope: anyio.CancelScope, gone: list[str]
) -> AsyncIterator[None]:
    """Cancel `scope` once the run's gateway shut down (its sandbox went) and told its clients."""

    async def watch() -> None:
        gone.append(await run.gateway.wait_stopped())
        # Let the transport's writer deliver the notification before the server is cancelled.
        await anyio.sleep(FLUSH_GRACE_S)
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            yield
        finally:
            group.cancel_scope.cancel()


async def _with_expert(options: LaunchOptions, use: Callable[[Gateway], Awaitable[T]]) -> T:
    async with open_expert(options) as gateway:
        return await use(gateway)


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

    async def report(gateway: Gateway) -> str:
        from perstack_sandbox.gateway import tools_payload  # noqa: PLC0415 - loaded with the run

        tools = await gateway.list_tools()
        if as_json:  # each MCP tool object also names the skill it comes from
            payload = [
                {**item, "skill": gateway.route(tool.name).skill}
                for item, tool in zip(tools_payload(tools), tools, strict=True)
            ]
            return json.dumps(payload, indent=2, sort_keys=True)
        rows = [(t.name, gateway.route(t.name).skill, _first_line(t.description)) for t in tools]
        width = max((len(name) for name, _, _ in rows), default=0)
        text = "\n".join(f"{n:<{width}}  [{s}]  {d}".rstrip() for n, s, d in rows)
        return printable(text)  # names and descriptions come from the skills

    return anyio.run(_with_expert, options, report)


def call_report(options: LaunchOptions, tool: str, arguments: dict[str, object]) -> str:
    """Start, call one tool, stop; return the CallToolResult as JSON.

    Raises:
        SandboxError: any failure (see `open_expert`); UsageError for an unknown tool.

    """

    async def report(gateway: Gateway) -> str:
        from perstack_sandbox.gateway import result_payload  # noqa: PLC0415 - loaded with the run

        result = await gateway.call_tool_checked(tool, dict(arguments))
        return json.dumps(result_payload(result), indent=2, sort_keys=True)

    return anyio.run(_with_expert, options, report)


def serve(options: LaunchOptions, *, http: str | None, token_file: Path | None = None) -> None:
    """Serve the gateway until the client disconnects (stdio) or the process is stopped.

    SIGINT or SIGTERM is a clean stop: the run is torn down and recorded `stopped`, and this
    returns normally (exit 0) instead of raising RunInterruptedError.

    With `http` (a PORT, served on 127.0.0.1) the port is bound before anything starts, and
    once it listens stderr gets `gateway: URL` and `bearer token: TOKEN`; with `token_file` the
    token goes to that file (mode 0600) instead. A token chosen in $PERSTACK_SANDBOX_TOKEN is
    never printed.

    Raises:
        SandboxError: any failure (see `open_expert`); UsageError for a bad `--http` or
            `--token-file`; GatewayError when the port is in use.

    """
    if http is None:
        if token_file is not None:
            raise UsageError("--token-file goes with --http (stdio needs no token)")
        with _signal_is_a_clean_stop():
            anyio.run(_with_expert, options, _serve_stdio, backend_options=SERVER_LOOP)
        return
    # The HTTP transport binds before anything starts, so it needs the gateway (and the MCP
    # SDK) first; stdio imports them while the sandbox starts (`run.preload_mcp_layer`).
    from perstack_sandbox.gateway import bind_loopback, parse_listen  # noqa: PLC0415

    port = parse_listen(http)[1]
    if token_file is not None and not token_file.absolute().parent.is_dir():
        raise UsageError(f"--token-file {token_file}: its folder does not exist")
    sock = bind_loopback(port)  # a port in use fails here, before any image or container
    try:
        with _signal_is_a_clean_stop():
            anyio.run(_serve_http, options, sock, token_file, backend_options=SERVER_LOOP)
    finally:
        sock.close()


@contextlib.contextmanager
def _signal_is_a_clean_stop() -> Iterator[None]:
    """End `run` normally (exit 0) when SIGINT/SIGTERM stopped it (decision 29).

    A server runs until it is told to stop, so a signal is its normal end: the run is torn
    down and recorded `stopped` by `open_expert`, and one line on stderr says so. One-shot
    commands keep exit 130, as their job was cut short.
    """
    try:
        yield
    except RunInterruptedError as exc:
        print(f"stopped: {exc}", file=sys.stderr, flush=True)  # noqa: T201
    except KeyboardInterrupt:  # a signal before the run's own handling was in place
        print("stopped by a signal", file=sys.stderr, flush=True)  # noqa: T201


async def _serve_stdio(gateway: Gateway) -> None:
    from perstack_sandbox.gateway import serve_stdio  # noqa: PLC0415 - loaded with the run

    await serve_stdio(gateway)


async def _serve_http(options: LaunchOptions, sock: socket.socket, token_file: Path | None) -> None:
    from perstack_sandbox.gateway import new_token, serve_http  # noqa: PLC0415 - imported by serve

    given = os.environ.get(TOKEN_ENV)
    token = given or new_token()

    def ready(url: str) -> None:
        if token_file is not None:
            write_private(token_file, token + "\n")
            shown = f"in {token_file} (mode 0600)"
        else:
            # A token the user chose is a secret they already hold: never echo it back.
            shown = f"the value of ${TOKEN_ENV}" if given else token
        print(f"gateway: {url}\nbearer token: {shown}", file=sys.stderr, flush=True)  # noqa: T201

    async with open_expert(options) as gateway:
        await serve_http(gateway, port=0, token=token, on_ready=ready, sock=sock)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (0600, also when it existed).

    Raises:
        UsageError: the file cannot be written.

    """
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), 0o600)  # an existing file keeps its mode otherwise
            file.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""
