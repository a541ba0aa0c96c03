"""The commands that check, plan, build and run an Expert.

validate, plan, schema and build need no sandbox; tools, call and run start one through
`launch` (the CLI's layer over the public API). Commands stay synchronous and call
`anyio.run` once, inside `launch`.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path  # noqa: TC003 - typer resolves the annotations at run time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from perstack_sandbox.cli._app import (
    DEFAULT_CONFIG,
    EXAMPLE_CONFIG,
    PROGRAM,
    BackendOption,
    ConfigOption,
    EnvPathOption,
    ExpertArgument,
    IsolationOption,
    JsonFlag,
    PrefixToolsOption,
    SealPassthroughOption,
    SealSecretsOption,
    ServerOption,
    WorkspaceOption,
    command,
    warn,
)
from perstack_sandbox.engine import DEFAULT_BACKEND
from perstack_sandbox.isolation import DEFAULT_ISOLATION

if TYPE_CHECKING:
    from collections.abc import Callable

    from perstack_sandbox.engine import BackendName
    from perstack_sandbox.gateway import Prompter
    from perstack_sandbox.isolation import Isolation
    from perstack_sandbox.launch import LaunchOptions


AcceptToolChangesOption = Annotated[
    bool,
    typer.Option(
        "--accept-tool-changes",
        help="Serve skills whose tools differ from perstack-sandbox.lock, this once (the "
        "diff goes to the audit); `lock --update` records them.",
    ),
]


@dataclass(frozen=True, slots=True)
class LaunchArgs:
    """The arguments tools, call and run share, declared once (`launch_command` adds them)."""

    expert: ExpertArgument
    config: ConfigOption = DEFAULT_CONFIG
    env_path: EnvPathOption = None
    workspace: WorkspaceOption = None
    prefix_tools: PrefixToolsOption = False
    isolation: IsolationOption = DEFAULT_ISOLATION
    server: ServerOption = None
    seal_secrets: SealSecretsOption = False
    seal_passthrough: SealPassthroughOption = None
    accept_tool_changes: AcceptToolChangesOption = False
    backend: BackendOption = DEFAULT_BACKEND

    def options(self, *, interactive: bool = False) -> LaunchOptions:
        """Return the launch options (see `_launch_options`).

        Raises:
            UsageError: the workspace is not a folder, or --seal-passthrough lacks its flag.

        """
        return _launch_options(
            self.config,
            self.expert,
            self.env_path,
            self.workspace,
            prefix_tools=self.prefix_tools,
            isolation=self.isolation,
            interactive=interactive,
            seal=(self.seal_secrets, self.seal_passthrough),
            accept_tool_changes=self.accept_tool_changes,
            backend=self.backend,
        )


def launch_command(*examples: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a command that starts a sandbox, with the parameters of `LaunchArgs`.

    Its help lists `EXPERT`, then the command's own parameters, then the rest of `LaunchArgs`;
    the command receives the shared ones as its first argument, `launch`.
    """
    shared = list(inspect.signature(LaunchArgs, eval_str=True).parameters.values())

    def register(func: Callable[..., None]) -> Callable[..., None]:
        own = list(inspect.signature(func, eval_str=True).parameters.values())[1:]

        @functools.wraps(func, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
        def run_command(**values: Any) -> None:  # noqa: ANN401 - typer passes any value
            launch = LaunchArgs(**{param.name: values.pop(param.name) for param in shared})
            func(launch, **values)

        parameters = [shared[0], *own, *shared[1:]]  # the help lists them in this order
        run_command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        return command(*examples)(run_command)

    return register


def _launch_options(  # noqa: PLR0913 - one parameter per command-line option
    config: Path,
    expert: str,
    env_path: list[Path] | None,
    workspace: Path | None,
    *,
    prefix_tools: bool = False,
    isolation: Isolation = DEFAULT_ISOLATION,
    interactive: bool = False,
    seal: tuple[bool, list[str] | None] = (False, None),
    accept_tool_changes: bool = False,
    backend: BackendName = DEFAULT_BACKEND,
) -> LaunchOptions:
    """Build the launch options; paths the user typed are taken against the current folder."""
    from perstack_sandbox import launch  # noqa: PLC0415 - keeps --help fast
    from perstack_sandbox.errors import UsageError  # noqa: PLC0415

    if workspace is not None and not workspace.is_dir():
        raise UsageError(f"--workspace {workspace} is not a folder")
    seal_secrets, passthrough = seal
    if passthrough and not seal_secrets:
        raise UsageError("--seal-passthrough needs --seal-secrets")
    return launch.LaunchOptions(
        config_path=config,
        expert=expert,
        env_paths=tuple(path.absolute() for path in env_path or ()),
        workspace=workspace.absolute() if workspace is not None else None,
        prefix_tools=prefix_tools,
        isolation=isolation,
        prompter=_terminal_prompter() if interactive else None,
        warn=warn,
        seal_secrets=seal_secrets,
        seal_passthrough=tuple(passthrough or ()),
        accept_tool_changes=accept_tool_changes,
        backend=backend,
    )


def _terminal_prompter() -> Prompter | None:
    from perstack_sandbox import gateway  # noqa: PLC0415 - the MCP SDK only when it asks

    return gateway.terminal_prompter()


def via_server(server: str, options: LaunchOptions, what: str, *args: object) -> str | None:
    """Run `what` (tools, call, run) through the service at `server`; return what to print."""
    from perstack_sandbox import service  # noqa: PLC0415 - MCP SDK only for these commands

    address = service.parse_address(server, option="--server")
    if what == "tools":
        return service.tools_via(address, options, as_json=bool(args[0]))
    if what == "call":
        return service.call_via(address, options, str(args[0]), dict(args[1]))  # type: ignore[call-overload]
    service.bridge_via(address, options)
    return None


@launch_command(
    f"{PROGRAM} tools demo {EXAMPLE_CONFIG}",
    f"{PROGRAM} tools demo --json {EXAMPLE_CONFIG}",
)
def tools(
    launch: LaunchArgs,
    as_json: Annotated[  # noqa: FBT002 - a typer flag
        bool, typer.Option("--json", help="Print the MCP tool list, each tool with its skill.")
    ] = False,
) -> None:
    """Start the Expert's sandbox, list every tool its skills expose, and stop."""
    from perstack_sandbox.launch import tools_report  # noqa: PLC0415 - MCP SDK only for these

    options = launch.options()
    if launch.server is not None:
        typer.echo(via_server(launch.server, options, "tools", as_json))
        return
    typer.echo(tools_report(options, as_json=as_json))


@launch_command(
    f'{PROGRAM} call demo get_current_time --args \'{{"timezone": "UTC"}}\' {EXAMPLE_CONFIG}',
    f'{PROGRAM} call demo echo --args \'{{"message": "hi"}}\' --workspace ./out {EXAMPLE_CONFIG}',
)
def call(
    launch: LaunchArgs,
    tool: Annotated[
        str,
        typer.Argument(metavar="TOOL", help="The tool's name (see `tools`).", show_default=False),
    ],
    args: Annotated[
        str | None,
        typer.Option("--args", metavar="JSON", help="Tool arguments (a JSON object)."),
    ] = None,
) -> None:
    """Start the sandbox, call one tool, print the MCP CallToolResult as JSON, and stop."""
    from perstack_sandbox.launch import call_report, parse_tool_args  # noqa: PLC0415 - as above

    arguments = parse_tool_args(args)
    options = launch.options(interactive=launch.server is None)
    if launch.server is not None:
        typer.echo(via_server(launch.server, options, "call", tool, arguments))
        return
    typer.echo(call_report(options, tool, arguments))


@launch_command(
    f"{PROGRAM} run demo {EXAMPLE_CONFIG}",
    f"{PROGRAM} run demo --http 8765 --token-file ./token {EXAMPLE_CONFIG}",
)
def run(
    launch: LaunchArgs,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="PORT",
            help="Serve streamable HTTP on 127.0.0.1:PORT instead of stdio; the URL and the "
            "bearer token are printed on stderr once it listens.",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            metavar="FILE",
            help="With --http: write the bearer token to FILE (mode 0600) once it listens, "
            "instead of printing it.",
        ),
    ] = None,
) -> None:
    """Serve the Expert's skills as one MCP server (stdio by default) until stopped."""
    from perstack_sandbox.launch import serve  # noqa: PLC0415 - MCP SDK only for these commands

    options = launch.options()
    if launch.server is not None:
        if http is not None:
            from perstack_sandbox.errors import UsageError  # noqa: PLC0415

            raise UsageError("--server bridges stdio to the service's run; it takes no --http")
        via_server(launch.server, options, "run")
        return
    serve(options, http=http, token_file=token_file)


# --- config and plan: validate, plan, schema, build -------------------------------------------


@command(
    f"{PROGRAM} validate -c perstack.toml",
    f"{PROGRAM} validate --strict --publish",
)
def validate(
    config: ConfigOption = DEFAULT_CONFIG,
    strict: Annotated[  # noqa: FBT002 - a typer flag
        bool,
        typer.Option(
            "--strict",
            help="Every warning is an error: unknown keys, pick with omit, wildcards over "
            "shared suffixes, no Expert.",
        ),
    ] = False,
    publish: Annotated[  # noqa: FBT002 - a typer flag
        bool, typer.Option("--publish", help="Also apply the registry's publishing rules.")
    ] = False,
) -> None:
    """Validate perstack.toml: each problem on stderr with its TOML path (exit 2 if invalid)."""
    from perstack_sandbox.config import load_config  # noqa: PLC0415 - keeps --help fast

    loaded, warnings = load_config(config, strict=strict, publish=publish)
    for warning in warnings:
        warn(str(warning))
    count = len(loaded.experts)
    typer.echo(f"{config}: valid ({count} expert{'s' * (count != 1)})")


@command(
    f"{PROGRAM} plan demo {EXAMPLE_CONFIG}",
    f"{PROGRAM} plan demo --json {EXAMPLE_CONFIG} > plan.json",
    name="plan",
)
def plan_command(
    expert: ExpertArgument,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonFlag = False,  # noqa: FBT002 - a typer flag
    env_path: EnvPathOption = None,
) -> None:
    """Print what the Expert's sandbox will run, with which env names, reaching which hosts.

    Also which env files are hidden from the sandbox (give the same --env-path as the run).
    """
    from perstack_sandbox.config import load_config  # noqa: PLC0415 - keeps --help fast
    from perstack_sandbox.plan import plan, plan_to_json, plan_to_text  # noqa: PLC0415

    loaded, warnings = load_config(config)
    for warning in warnings:
        warn(str(warning))
    sandbox = plan(loaded, expert, tuple(path.absolute() for path in env_path or ()))
    if not as_json:
        typer.echo(plan_to_text(sandbox), nl=False)
        return
    import json  # noqa: PLC0415 - keeps --help fast

    from perstack_sandbox import lock  # noqa: PLC0415

    shown = json.loads(plan_to_json(sandbox))
    held = lock.lock_path(sandbox.config_dir)
    # What a review approves: the plan, and the exact bytes the lock pins (null: unlocked).
    shown["lock"] = None
    if lock.expert_lock(lock.read_lock(held), expert) is not None:
        shown["lock"] = {"digest": lock.lock_digest(held.read_text(encoding="utf-8"))}
        shown["lock"]["stale"] = lock.stale_reasons(lock.read_lock(held), sandbox)
    typer.echo(json.dumps(shown, sort_keys=True, indent=2))


@command(f"{PROGRAM} schema > perstack.schema.json")
def schema() -> None:
    """Print the JSON Schema of perstack.toml."""
    import json  # noqa: PLC0415 - keeps --help fast

    from perstack_sandbox.config import config_schema  # noqa: PLC0415

    typer.echo(json.dumps(config_schema(), indent=2, sort_keys=True))


@command(f"{PROGRAM} build demo {EXAMPLE_CONFIG}")
def build(expert: ExpertArgument, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Build the Expert's image (or reuse it when nothing changed); progress on stderr."""
    from perstack_sandbox import engine, images  # noqa: PLC0415 - keeps --help fast
    from perstack_sandbox.config import load_config  # noqa: PLC0415
    from perstack_sandbox.plan import plan  # noqa: PLC0415

    loaded, warnings = load_config(config)
    for warning in warnings:
        warn(str(warning))
    sandbox = plan(loaded, expert)
    name = engine.ensure_expert_image(sandbox, progress=images.stderr_progress)
    for package in images.resolved_packages(name):
        typer.echo(f"  {package['manager']} {package['name']} {package['version']}", err=True)
    typer.echo(name)


@command(
    f"{PROGRAM} lock demo {EXAMPLE_CONFIG}",
    f"{PROGRAM} lock --check --outdated {EXAMPLE_CONFIG}",
    name="lock",
)
def lock_command(  # noqa: PLR0913, PLR0917 - one parameter per command-line option
    expert: Annotated[
        str | None,
        typer.Argument(
            metavar="EXPERT", help="Lock one Expert (default: every one).", show_default=False
        ),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    update: Annotated[  # noqa: FBT002 - a typer flag
        bool,
        typer.Option(
            "--update", help="Re-resolve locked Experts too: newer versions, changed tools."
        ),
    ] = False,
    check: Annotated[  # noqa: FBT002 - a typer flag
        bool,
        typer.Option("--check", help="Build nothing: exit 1 when the lock is stale (for CI)."),
    ] = False,
    outdated: Annotated[  # noqa: FBT002 - a typer flag
        bool,
        typer.Option("--outdated", help="With --check: also exit 1 when a newer version exists."),
    ] = False,
    env_path: EnvPathOption = None,
) -> None:
    """Write perstack-sandbox.lock: exact packages, hashed trees, pinned tool definitions.

    Packages resolve inside the build fence, the image is built from the lock, and the
    skills are started in a sandbox to list their tools. Nothing resolves on the host.
    """
    from perstack_sandbox import locking  # noqa: PLC0415 - engine and MCP only for this command
    from perstack_sandbox.errors import UsageError  # noqa: PLC0415

    if outdated and not check:
        raise UsageError("--outdated goes with --check")
    if check:
        problems = locking.check_lock(config, expert, outdated=outdated)
        for problem in problems:
            typer.echo(problem)
        if problems:
            raise typer.Exit(1)
        typer.echo(f"{config}: the lock is current")
        return
    options = _launch_options(config, expert or "", env_path, None)
    for line in locking.lock_experts(options, expert, update=update):
        typer.echo(line)
