"""The commands that check, plan, build and run an Expert.

validate, plan, schema and build need no sandbox; tools, call and run start one through
`launch` (the CLI's layer over the public API). Commands stay synchronous and call
`anyio.run` once, inside `launch`.
"""

from __future__ import annotations

from pathlib import Path  # noqa: TC003 - typer resolves the annotations at run time
from typing import TYPE_CHECKING, Annotated

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
    WorkspaceOption,
    command,
    warn,
)
from perstack_sandbox.engine import DEFAULT_BACKEND
from perstack_sandbox.isolation import DEFAULT_ISOLATION

if TYPE_CHECKING:
    from perstack_sandbox.engine import BackendName
    from perstack_sandbox.isolation import Isolation
    from perstack_sandbox.launch import LaunchOptions


def _launch_options(  # noqa: PLR0913 - one parameter per command-line option
    config: Path,
    expert: str,
    env_path: list[Path] | None,
    workspace: Path | None,
    *,
    prefix_tools: bool = False,
    isolation: Isolation = DEFAULT_ISOLATION,
    interactive: bool = False,
    backend: BackendName = DEFAULT_BACKEND,
) -> LaunchOptions:
    """Build the launch options; paths the user typed are taken against the current folder."""
    from perstack_sandbox import gateway, launch  # noqa: PLC0415 - MCP SDK only for these commands
    from perstack_sandbox.errors import UsageError  # noqa: PLC0415

    if workspace is not None and not workspace.is_dir():
        raise UsageError(f"--workspace {workspace} is not a folder")
    return launch.LaunchOptions(
        config_path=config,
        expert=expert,
        env_paths=tuple(path.absolute() for path in env_path or ()),
        workspace=workspace.absolute() if workspace is not None else None,
        prefix_tools=prefix_tools,
        isolation=isolation,
        prompter=gateway.terminal_prompter() if interactive else None,
        warn=warn,
        backend=backend,
    )


@command(
    f"{PROGRAM} tools demo {EXAMPLE_CONFIG}",
    f"{PROGRAM} tools demo --json {EXAMPLE_CONFIG}",
)
def tools(  # noqa: PLR0913, PLR0917 - one parameter per command-line option
    expert: ExpertArgument,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[  # noqa: FBT002 - a typer flag
        bool, typer.Option("--json", help="Print the MCP tool list, each tool with its skill.")
    ] = False,
    env_path: EnvPathOption = None,
    workspace: WorkspaceOption = None,
    prefix_tools: PrefixToolsOption = False,  # noqa: FBT002 - a typer flag
    isolation: IsolationOption = DEFAULT_ISOLATION,
    backend: BackendOption = DEFAULT_BACKEND,
) -> None:
    """Start the Expert's sandbox, list every tool its skills expose, and stop."""
    from perstack_sandbox import launch  # noqa: PLC0415 - MCP SDK only for these commands

    options = _launch_options(
        config,
        expert,
        env_path,
        workspace,
        prefix_tools=prefix_tools,
        isolation=isolation,
        backend=backend,
    )
    typer.echo(launch.tools_report(options, as_json=as_json))


@command(
    f'{PROGRAM} call demo get_current_time --args \'{{"timezone": "UTC"}}\' {EXAMPLE_CONFIG}',
    f'{PROGRAM} call demo echo --args \'{{"message": "hi"}}\' --workspace ./out {EXAMPLE_CONFIG}',
)
def call(  # noqa: PLR0913, PLR0917 - one parameter per command-line option
    expert: ExpertArgument,
    tool: Annotated[
        str,
        typer.Argument(metavar="TOOL", help="The tool's name (see `tools`).", show_default=False),
    ],
    args: Annotated[
        str | None,
        typer.Option("--args", metavar="JSON", help="Tool arguments (a JSON object)."),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    env_path: EnvPathOption = None,
    workspace: WorkspaceOption = None,
    prefix_tools: PrefixToolsOption = False,  # noqa: FBT002 - a typer flag
    isolation: IsolationOption = DEFAULT_ISOLATION,
    backend: BackendOption = DEFAULT_BACKEND,
) -> None:
    """Start the sandbox, call one tool, print the MCP CallToolResult as JSON, and stop."""
    from perstack_sandbox import launch  # noqa: PLC0415 - MCP SDK only for these commands

    arguments = launch.parse_tool_args(args)
    options = _launch_options(
        config,
        expert,
        env_path,
        workspace,
        prefix_tools=prefix_tools,
        isolation=isolation,
        interactive=True,
        backend=backend,
    )
    typer.echo(launch.call_report(options, tool, arguments))


@command(
    f"{PROGRAM} run demo {EXAMPLE_CONFIG}",
    f"{PROGRAM} run demo --http 8765 --token-file ./token {EXAMPLE_CONFIG}",
)
def run(  # noqa: PLR0913, PLR0917 - one parameter per command-line option
    expert: ExpertArgument,
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
    config: ConfigOption = DEFAULT_CONFIG,
    env_path: EnvPathOption = None,
    workspace: WorkspaceOption = None,
    prefix_tools: PrefixToolsOption = False,  # noqa: FBT002 - a typer flag
    isolation: IsolationOption = DEFAULT_ISOLATION,
    backend: BackendOption = DEFAULT_BACKEND,
) -> None:
    """Serve the Expert's skills as one MCP server (stdio by default) until stopped."""
    from perstack_sandbox import launch  # noqa: PLC0415 - MCP SDK only for these commands

    options = _launch_options(
        config,
        expert,
        env_path,
        workspace,
        prefix_tools=prefix_tools,
        isolation=isolation,
        backend=backend,
    )
    launch.serve(options, http=http, token_file=token_file)


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
    typer.echo(plan_to_json(sandbox) if as_json else plan_to_text(sandbox), nl=False)


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
