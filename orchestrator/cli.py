"""The `perstack-sandbox` command line: the commands that validate, plan, build and run.

Commands stay synchronous and call `anyio.run` once. Every error is mapped to an exit code in
`EXIT_CODES` (documented by `EXIT_CODE_TABLE`, which `--help` and the README show); this
module is the only place that exits the process. Help is plain text (`_cli_help`); the
engine, audit and client commands live in `_cli_ops`.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer

from orchestrator._cli_help import PlainCommand, PlainGroup
from orchestrator.errors import (
    ConfigError,
    EnvFileError,
    InputError,
    RunError,
    RunInterruptedError,
    SandboxError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from orchestrator.launch import LaunchOptions

PROGRAM: Final = "perstack-sandbox"
INTERRUPTED: Final = 130  # 128 + SIGINT, what shells report for a Ctrl-C'd program
EXIT_CODES: tuple[tuple[type[SandboxError], int], ...] = (
    (RunInterruptedError, INTERRUPTED),
    (InputError, 2),
    (RunError, 1),
    (SandboxError, 1),
)
EXIT_CODE_TABLE: Final = (
    (0, "success (a tool result with isError is still a completed call)"),
    (
        1,
        (
            "the run failed: engine, image build, skill or gateway; a run taken down by "
            "`down`; a failing `doctor` check"
        ),
    ),
    (
        2,
        (
            "bad input: command line, perstack.toml, unknown Expert, missing variable, env "
            "file; nothing was started"
        ),
    ),
    (INTERRUPTED, "interrupted by Ctrl-C (SIGINT) or SIGTERM; what was started is torn down"),
)


class _App(PlainGroup):
    exit_codes = EXIT_CODE_TABLE


app = typer.Typer(
    name=PROGRAM,
    help="Run one Perstack Expert's MCP skills inside a hardened Docker sandbox.",
    cls=_App,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def command(
    *examples: str, name: str | None = None, group: typer.Typer | None = None
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a command of `group` (default: `app`) with plain help and example lines."""
    target = app if group is None else group
    return target.command(name=name, cls=PlainCommand, epilog="\n".join(examples))


def _version(value: bool) -> None:  # noqa: FBT001 - typer's callback signature
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - rarely used

    try:
        typer.echo(f"{PROGRAM} {version(PROGRAM)}")
    except PackageNotFoundError:
        typer.echo(f"{PROGRAM} (version unknown: not installed as a package)")
    raise typer.Exit


@app.callback()
def _root(
    _version_flag: Annotated[  # noqa: FBT002 - a typer flag
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Run one Perstack Expert's MCP skills inside a hardened Docker sandbox."""


ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", metavar="PATH", help="Path to perstack.toml."),
]
DEFAULT_CONFIG = Path("perstack.toml")
ExpertArgument = Annotated[
    str,
    typer.Argument(metavar="EXPERT", help="The Expert's key in perstack.toml.", show_default=False),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


def exit_code_for(error: SandboxError) -> int:
    """Return the exit code for an error, from the one table."""
    for error_class, code in EXIT_CODES:
        if isinstance(error, error_class):
            return code
    return 1  # pragma: no cover - SandboxError is the last row


def _interrupt_on_sigterm(_signum: int, _frame: object) -> None:
    # SIGTERM takes the path of Ctrl-C: the running command is cancelled and every sandbox is
    # torn down by its context manager, instead of the process dying with containers left.
    signal.raise_signal(signal.SIGINT)


def main() -> None:
    """Console-script entry point: run the app and map errors to exit codes."""
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        code = app(standalone_mode=False, prog_name=PROGRAM)  # typer.Exit(n) is returned
    except SandboxError as exc:
        for line in error_lines(exc):
            typer.echo(line, err=True)
        sys.exit(exit_code_for(exc))
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        sys.exit(INTERRUPTED)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # a bad command line (missing argument, bad option)
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            typer.echo(f"error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except Exception as exc:  # noqa: BLE001 - the top of the CLI: never a bare traceback
        typer.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    if code == INTERRUPTED:  # typer turns a KeyboardInterrupt into this code, silently
        typer.echo("interrupted", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)


def error_lines(error: SandboxError) -> list[str]:
    """Render an error for stderr: one line per config issue or env-file line, with its place.

    Messages may quote a skill (stderr lines, JSON-RPC errors): control characters are escaped.
    """
    from orchestrator._text import printable  # noqa: PLC0415 - keeps --help fast

    if isinstance(error, ConfigError):
        return [printable(f"{'warning' if i.is_warning else 'error'}: {i}") for i in error.issues]
    if isinstance(error, EnvFileError):
        return [printable(f"error: {problem}") for problem in error.problems]
    return [printable(f"error: {error}")]


def warn(line: str) -> None:
    """Print one warning line on stderr."""
    typer.echo(f"warning: {line}", err=True)


# --- skills and gateway: tools, call, run ----------------------------------------------------

EnvPathOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--env-path",
        metavar="FILE",
        help="Dotenv file with skill secrets; replaces envPath and .env/.env.local.",
    ),
]
WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", metavar="DIR", help="Folder mounted read-write at /workspace."),
]
PrefixToolsOption = Annotated[
    bool,
    typer.Option(
        "--prefix-tools",
        help="Expose every tool as skill__tool (for skills whose tool names collide).",
    ),
]
EXAMPLE_CONFIG = "-c examples/perstack.toml"


def _launch_options(  # noqa: PLR0913 - one parameter per command-line option
    config: Path,
    expert: str,
    env_path: list[Path] | None,
    workspace: Path | None,
    *,
    prefix_tools: bool = False,
    interactive: bool = False,
) -> LaunchOptions:
    """Build the launch options; paths the user typed are taken against the current folder."""
    from orchestrator import gateway, launch  # noqa: PLC0415 - MCP SDK only for these commands
    from orchestrator.errors import UsageError  # noqa: PLC0415

    if workspace is not None and not workspace.is_dir():
        raise UsageError(f"--workspace {workspace} is not a folder")
    return launch.LaunchOptions(
        config_path=config,
        expert=expert,
        env_paths=tuple(path.absolute() for path in env_path or ()),
        workspace=workspace.absolute() if workspace is not None else None,
        prefix_tools=prefix_tools,
        prompter=gateway.terminal_prompter() if interactive else None,
        warn=warn,
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
) -> None:
    """Start the Expert's sandbox, list every tool its skills expose, and stop."""
    from orchestrator import launch  # noqa: PLC0415 - MCP SDK only for these commands

    options = _launch_options(config, expert, env_path, workspace, prefix_tools=prefix_tools)
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
) -> None:
    """Start the sandbox, call one tool, print the MCP CallToolResult as JSON, and stop."""
    from orchestrator import launch  # noqa: PLC0415 - MCP SDK only for these commands

    arguments = launch.parse_tool_args(args)
    options = _launch_options(
        config, expert, env_path, workspace, prefix_tools=prefix_tools, interactive=True
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
) -> None:
    """Serve the Expert's skills as one MCP server (stdio by default) until stopped."""
    from orchestrator._serving import serve  # noqa: PLC0415 - MCP SDK only for these commands

    options = _launch_options(config, expert, env_path, workspace, prefix_tools=prefix_tools)
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
    from orchestrator.config import load_config  # noqa: PLC0415 - keeps --help fast

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
) -> None:
    """Print what the Expert's sandbox will run, with which env names, reaching which hosts."""
    from orchestrator.config import load_config  # noqa: PLC0415 - keeps --help fast
    from orchestrator.plan import plan, plan_to_json, plan_to_text  # noqa: PLC0415

    loaded, warnings = load_config(config)
    for warning in warnings:
        warn(str(warning))
    sandbox = plan(loaded, expert)
    typer.echo(plan_to_json(sandbox) if as_json else plan_to_text(sandbox), nl=False)


@command(f"{PROGRAM} schema > perstack.schema.json")
def schema() -> None:
    """Print the JSON Schema of perstack.toml."""
    import json  # noqa: PLC0415 - keeps --help fast

    from orchestrator.config import config_schema  # noqa: PLC0415

    typer.echo(json.dumps(config_schema(), indent=2, sort_keys=True))


@command(f"{PROGRAM} build demo {EXAMPLE_CONFIG}")
def build(expert: ExpertArgument, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Build the Expert's image (or reuse it when nothing changed); progress on stderr."""
    from orchestrator import images  # noqa: PLC0415 - keeps --help fast
    from orchestrator.config import load_config  # noqa: PLC0415
    from orchestrator.plan import plan  # noqa: PLC0415

    loaded, warnings = load_config(config)
    for warning in warnings:
        warn(str(warning))
    sandbox = plan(loaded, expert)
    name = images.ensure_expert_image(sandbox)
    for package in images.resolved_packages(name):
        typer.echo(f"  {package['manager']} {package['name']} {package['version']}", err=True)
    typer.echo(name)


# Registers the engine, audit and client commands on `app` (it imports the definitions above).
from orchestrator import _cli_ops  # noqa: E402, F401
