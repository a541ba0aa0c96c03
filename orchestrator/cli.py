"""The `perstack-sandbox` command line (the contract in DESIGN.md).

Commands stay synchronous and call `anyio.run` once. Every error is mapped to an exit code in
`EXIT_CODES`; this module is the only place that exits the process.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from orchestrator.errors import ConfigError, InputError, RunError, SandboxError

EXIT_CODES: tuple[tuple[type[SandboxError], int], ...] = (
    (InputError, 2),
    (RunError, 1),
    (SandboxError, 1),
)

app = typer.Typer(
    name="perstack-sandbox",
    help="Run one Perstack Expert's MCP skills inside a hardened Docker sandbox.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", help="Path to perstack.toml.", show_default=True),
]
DEFAULT_CONFIG = Path("perstack.toml")


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
        code = app(standalone_mode=False)  # typer.Exit(n) comes back as the return value
    except SandboxError as exc:
        for line in error_lines(exc):
            typer.echo(line, err=True)
        sys.exit(exit_code_for(exc))
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
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
    if isinstance(code, int) and code:
        sys.exit(code)


def error_lines(error: SandboxError) -> list[str]:
    """Render an error for stderr: a config error gives one line per issue, with its path.

    Messages may quote a skill (stderr lines, JSON-RPC errors): control characters are escaped.
    """
    from orchestrator._text import printable  # noqa: PLC0415 - keeps --help fast

    if isinstance(error, ConfigError):
        return [printable(f"{'warning' if i.is_warning else 'error'}: {i}") for i in error.issues]
    return [printable(f"error: {error}")]


# --- skills and gateway: tools, call, run ----------------------------------------------------

if TYPE_CHECKING:
    from orchestrator.launch import LaunchOptions

EnvPathOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--env-path",
        help="Dotenv file with skill secrets (repeatable); replaces envPath and .env/.env.local.",
    ),
]
WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", help="Folder mounted read-write at /workspace."),
]
PrefixToolsOption = Annotated[
    bool,
    typer.Option(
        "--prefix-tools",
        help=(
            "Give each skill its own names: tools and prompts as skill__name, resource URIs as "
            "perstack-skill://skill/uri (for skills whose names collide)."
        ),
    ),
]


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
    )


@app.command()
def tools(  # noqa: PLR0913, PLR0917 - one parameter per command-line option
    expert: str,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="Print the MCP tool list.")] = False,  # noqa: FBT002 - a typer flag
    env_path: EnvPathOption = None,
    workspace: WorkspaceOption = None,
    prefix_tools: PrefixToolsOption = False,  # noqa: FBT002 - a typer flag
) -> None:
    """Start the Expert's sandbox, list every tool its skills expose, and stop."""
    from orchestrator import launch  # noqa: PLC0415 - MCP SDK only for these commands

    options = _launch_options(config, expert, env_path, workspace, prefix_tools=prefix_tools)
    typer.echo(launch.tools_report(options, as_json=as_json))


@app.command()
def call(  # noqa: PLR0913, PLR0917 - one parameter per command-line option
    expert: str,
    tool: str,
    args: Annotated[
        str | None, typer.Option("--args", help="Tool arguments (JSON object).")
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


@app.command()
def run(  # noqa: PLR0913, PLR0917 - one parameter per command-line option
    expert: str,
    http: Annotated[
        str | None, typer.Option("--http", help="Serve streamable HTTP on 127.0.0.1:PORT.")
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    env_path: EnvPathOption = None,
    workspace: WorkspaceOption = None,
    prefix_tools: PrefixToolsOption = False,  # noqa: FBT002 - a typer flag
) -> None:
    """Serve the Expert's skills as one MCP server (stdio by default) until stopped."""
    from orchestrator import launch  # noqa: PLC0415 - MCP SDK only for these commands

    options = _launch_options(config, expert, env_path, workspace, prefix_tools=prefix_tools)
    launch.serve(options, http=http)


# --- config and plan: validate, plan, schema --------------------------------------------------


@app.command()
def validate(
    config: ConfigOption = DEFAULT_CONFIG,
    strict: Annotated[  # noqa: FBT002 - a typer flag
        bool, typer.Option("--strict", help="Unknown keys are errors (with a suggestion).")
    ] = False,
    publish: Annotated[  # noqa: FBT002 - a typer flag
        bool, typer.Option("--publish", help="Also apply the registry's publishing rules.")
    ] = False,
) -> None:
    """Validate perstack.toml: every problem on its own line with its TOML path; exit 2."""
    from orchestrator.config import load_config  # noqa: PLC0415 - keeps --help fast

    loaded, warnings = load_config(config, strict=strict, publish=publish)
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    count = len(loaded.experts)
    typer.echo(f"{config}: valid ({count} expert{'s' * (count != 1)})")


@app.command(name="plan")
def plan_command(
    expert: str,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="Print stable JSON.")] = False,  # noqa: FBT002 - a typer flag
) -> None:
    """Print what the Expert's sandbox will run, with which env names, reaching which hosts."""
    from orchestrator.config import load_config  # noqa: PLC0415 - keeps --help fast
    from orchestrator.plan import plan, plan_to_json, plan_to_text  # noqa: PLC0415

    loaded, warnings = load_config(config)
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    sandbox = plan(loaded, expert)
    typer.echo(plan_to_json(sandbox) if as_json else plan_to_text(sandbox), nl=False)


@app.command()
def schema() -> None:
    """Print the JSON Schema of perstack.toml."""
    import json  # noqa: PLC0415 - keeps --help fast

    from orchestrator.config import config_schema  # noqa: PLC0415

    typer.echo(json.dumps(config_schema(), indent=2, sort_keys=True))


# --- engine and images: build, ps, down, gc, doctor ------------------------------------------


@app.command()
def build(expert: str, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Build the Expert's image (or reuse it when nothing changed); progress on stderr."""
    from orchestrator import images  # noqa: PLC0415 - keeps --help fast
    from orchestrator.config import load_config  # noqa: PLC0415
    from orchestrator.plan import plan  # noqa: PLC0415

    loaded, warnings = load_config(config)
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    sandbox = plan(loaded, expert)
    name = images.ensure_expert_image(sandbox)
    for package in images.resolved_packages(name):
        typer.echo(f"  {package['manager']} {package['name']} {package['version']}", err=True)
    typer.echo(name)


@app.command()
def ps() -> None:
    """List the sandboxes on this engine: run id, expert, owner and containers."""
    from orchestrator import engine  # noqa: PLC0415 - keeps --help fast

    runs = engine.list_sandboxes()
    if not runs:
        typer.echo("no sandboxes", err=True)
    for info in runs:
        owner = f"pid {info.owner_pid}@{info.owner_host}"
        owner += "" if info.is_owner_alive else " (gone: `gc` removes it)"
        typer.echo(f"{info.run_id}  {info.expert}  {owner}  {', '.join(info.containers)}")


@app.command()
def down(
    run_id: Annotated[str | None, typer.Argument(help="The run to remove (see `ps`).")] = None,
    remove_all: Annotated[bool, typer.Option("--all", help="Remove every sandbox.")] = False,  # noqa: FBT002 - a typer flag
) -> None:
    """Remove one sandbox (RUN_ID) or every sandbox (--all), even if its owner still runs."""
    from orchestrator import engine  # noqa: PLC0415 - keeps --help fast
    from orchestrator.errors import UsageError  # noqa: PLC0415

    if (run_id is None) == (not remove_all):
        raise UsageError("give a run id or --all (not both)")
    removed = engine.take_down(None if remove_all else run_id)
    for line in removed:
        typer.echo(f"removed {line}", err=True)
    if run_id is not None and not removed:
        raise UsageError(f"no sandbox objects for run {run_id}")


ImagesFlag = Annotated[
    bool, typer.Option("--images", help="Also remove images no current recipe uses.")
]


@app.command()
def gc(include_images: ImagesFlag = False) -> None:  # noqa: FBT002 - a typer flag
    """Remove every sandbox object whose owning process is gone (on this host)."""
    from orchestrator import engine  # noqa: PLC0415 - keeps --help fast

    removed = engine.collect_garbage(include_images=include_images)
    for line in removed:
        typer.echo(f"removed {line}", err=True)
    typer.echo(f"gc: removed {len(removed)} object(s)", err=True)


@app.command()
def doctor(
    fix: Annotated[bool, typer.Option("--fix", help="Bootstrap and build missing images.")] = False,  # noqa: FBT002 - a typer flag
) -> None:
    """Check the engine, storage driver, cgroup version and images; say what to do about each."""
    from orchestrator import engine  # noqa: PLC0415 - keeps --help fast

    checks = engine.diagnose(fix=fix)
    for check in checks:
        mark = "ok  " if check.is_ok else "FAIL"
        advice = f"  -> {check.advice}" if not check.is_ok and check.advice else ""
        typer.echo(f"{mark} {check.name}: {check.detail}{advice}")
    if not all(check.is_ok for check in checks):
        raise typer.Exit(1)


# --- audit ------------------------------------------------------------------------------------


@app.command()
def audit(
    run_id: Annotated[
        str | None, typer.Argument(metavar="RUN", help="The run to summarise (default: latest).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,  # noqa: FBT002 - a typer flag
) -> None:
    """Summarise a run's audit trail: egress per host (allowed, refused, bytes), then tool calls."""
    import json  # noqa: PLC0415 - keeps --help fast

    from orchestrator.audit import find_run, render_text, summarise_run  # noqa: PLC0415

    summary = summarise_run(find_run(run_id))
    if as_json:
        typer.echo(json.dumps(summary.to_json(), indent=2, sort_keys=True))
    else:
        typer.echo(render_text(summary))
