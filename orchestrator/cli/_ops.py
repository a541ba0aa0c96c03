"""The commands that look after the engine, the audit trail and MCP clients.

ps, down, gc, doctor, audit, and `client setup` / `client list`. They register on the one
application (`_app.app`) when the package imports this module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from perstack_sandbox.cli import _clients
from perstack_sandbox.cli._app import (
    DEFAULT_CONFIG,
    DEFAULT_KEEP_DAYS,
    DEFAULT_KEEP_RUNS,
    PROGRAM,
    BackendOption,
    ConfigOption,
    EnvPathOption,
    ExpertArgument,
    IsolationOption,
    JsonFlag,
    KeepDaysOption,
    KeepRunsOption,
    WorkspaceOption,
    app,
    command,
    exit_code_for,
    retention_of,
)
from perstack_sandbox.cli._help import PlainGroup
from perstack_sandbox.engine import DEFAULT_BACKEND
from perstack_sandbox.errors import SandboxError, UsageError
from perstack_sandbox.isolation import DEFAULT_ISOLATION

if TYPE_CHECKING:
    from perstack_sandbox.engine import BackendName, RunInfo

RunArgument = Annotated[
    str | None,
    typer.Argument(metavar="RUN", help="A run id (see `ps`).", show_default=False),
]


def _on_cluster(method: str, *args: str) -> Any:  # noqa: ANN401 - the backend method's result
    """Call a `KubernetesBackend` method (ps, down, gc with `--backend kubernetes`)."""
    import anyio  # noqa: PLC0415 - keeps --help fast

    from perstack_sandbox import kube  # noqa: PLC0415 - the Kubernetes client only when asked

    return anyio.run(getattr(kube.KubernetesBackend(), method), *args)


@command(f"{PROGRAM} ps", f"{PROGRAM} ps --backend kubernetes")
def ps(backend: BackendOption = DEFAULT_BACKEND) -> None:
    """List the sandboxes on this engine: run id, expert, owner, containers, network, volume."""
    from perstack_sandbox import engine  # noqa: PLC0415 - keeps --help fast

    runs = engine.list_sandboxes() if backend == "docker" else _on_cluster("list_runs")
    if not runs:
        typer.echo("no sandboxes", err=True)
    for info in runs:
        typer.echo(f"{info.run_id}  {info.expert}  {_owner(info)}  {', '.join(info.objects)}")


def _owner(info: RunInfo) -> str:
    user = f"{info.owner_user} " if info.owner_user else ""
    owner = f"{user}pid {info.owner_pid}@{info.owner_host}"
    return owner + ("" if info.is_owner_alive else " (gone: `gc` removes it)")


@command(
    f"{PROGRAM} down 20250101-120000-a1b2c3",
    f"{PROGRAM} down --all --yes",
)
def down(
    run_id: RunArgument = None,
    take_all: Annotated[  # noqa: FBT002 - a typer flag
        bool, typer.Option("--all", help="Take down every run of this user (see `ps`).")
    ] = False,
    everyone: Annotated[  # noqa: FBT002 - a typer flag
        bool, typer.Option("--everyone", help="With --all: every user's runs, not only yours.")
    ] = False,
    yes: Annotated[  # noqa: FBT002 - a typer flag
        bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (--all).")
    ] = False,
    backend: BackendOption = DEFAULT_BACKEND,
) -> None:
    """Take down one run (RUN) or all of yours (--all); its owner notices and exits 1."""
    from perstack_sandbox import engine  # noqa: PLC0415 - keeps --help fast

    if (run_id is None) == (not take_all):
        raise UsageError("give a RUN or --all (not both)")
    if everyone and not take_all:
        raise UsageError("--everyone goes with --all")
    if run_id is not None:
        runs = [run_id]
    else:
        runs = _confirmed_runs(everyone=everyone, yes=yes, backend=backend)
    take_down = engine.take_down if backend == "docker" else _cluster_take_down
    removed = [line for run in runs for line in take_down(run)]
    for line in removed:
        typer.echo(f"removed {line}", err=True)
    if run_id is not None and not removed:
        raise UsageError(f"no sandbox objects for run {run_id}")


def _cluster_take_down(run_id: str) -> list[str]:
    removed: list[str] = _on_cluster("take_down", run_id)
    return removed


def _confirmed_runs(*, everyone: bool, yes: bool, backend: BackendName = "docker") -> list[str]:
    """Return the run ids `down --all` takes down, once confirmed on a terminal."""
    from perstack_sandbox import engine  # noqa: PLC0415 - keeps --help fast

    if backend == "docker":
        runs = engine.runs_to_take_down(everyone=everyone)
    else:
        from perstack_sandbox.kube import label_value  # noqa: PLC0415 - only when asked

        me = label_value(engine.owner_user())
        runs = [info for info in _on_cluster("list_runs") if everyone or info.owner_user == me]
    owner = "any user" if everyone else f"user {engine.owner_user()}"
    if not runs:
        typer.echo(f"no runs of {owner} to take down", err=True)
        return []
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("down --all asks for confirmation on a terminal; here, add --yes")
        for info in runs:
            typer.echo(f"  {info.run_id}  {info.expert}  {_owner(info)}", err=True)
        if not typer.confirm(f"Take down these {len(runs)} run(s) of {owner}?", err=True):
            typer.echo("nothing taken down", err=True)
            return []
    return [info.run_id for info in runs]


ImagesFlag = Annotated[
    bool, typer.Option("--images", help="Also remove images no current recipe uses.")
]


@command(f"{PROGRAM} gc", f"{PROGRAM} gc --keep-days 1 --keep-runs 50")
def gc(
    include_images: ImagesFlag = False,  # noqa: FBT002 - a typer flag
    keep_days: KeepDaysOption = DEFAULT_KEEP_DAYS,
    keep_runs: KeepRunsOption = DEFAULT_KEEP_RUNS,
    backend: BackendOption = DEFAULT_BACKEND,
) -> None:
    """Remove every sandbox object whose owning process is gone (on this host); prune old trails."""
    from perstack_sandbox import engine, retention  # noqa: PLC0415 - keeps --help fast

    if backend == "docker":
        removed = engine.collect_garbage(include_images=include_images)
    else:
        removed = _on_cluster("collect_garbage")
    for line in removed:
        typer.echo(f"removed {line}", err=True)
    typer.echo(f"gc: removed {len(removed)} object(s)", err=True)
    pruned = retention.prune_trails(retention_of(keep_days, keep_runs))  # type: ignore[arg-type]
    if pruned:
        typer.echo(f"gc: pruned {len(pruned)} run and build trail(s)", err=True)


FixFlag = Annotated[
    bool,
    typer.Option("--fix", help="Bootstrap and build missing images; install and register gVisor."),
]


@command(f"{PROGRAM} doctor", f"{PROGRAM} doctor --fix")
def doctor(fix: FixFlag = False) -> None:  # noqa: FBT002 - a typer flag
    """Check the engine, storage driver, cgroup version, images and gVisor; say what to do."""
    from perstack_sandbox import engine, images  # noqa: PLC0415 - keeps --help fast

    checks = engine.diagnose(fix=fix, progress=images.stderr_progress)
    for check in checks:
        mark = "ok  " if check.is_ok else "warn" if check.is_optional else "FAIL"
        advice = f"  -> {check.advice}" if not check.is_ok and check.advice else ""
        typer.echo(f"{mark} {check.name}: {check.detail}{advice}")
    if not all(check.is_ok or check.is_optional for check in checks):
        raise typer.Exit(1)


# --- audit ------------------------------------------------------------------------------------


@command(f"{PROGRAM} audit", f"{PROGRAM} audit build-20250101-120000-a1b2c3 --json")
def audit(
    run_id: Annotated[
        str | None,
        typer.Argument(
            metavar="RUN",
            help="A run id, or a build id (build-...) that `build` printed; default: the "
            "latest run.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonFlag = False,  # noqa: FBT002 - a typer flag
) -> None:
    """Summarise an audit trail: allowlist and packages, egress per host, then tool calls."""
    import json  # noqa: PLC0415 - keeps --help fast

    from perstack_sandbox.audit import render_text, summarise  # noqa: PLC0415

    if not as_json:
        typer.echo(render_text(summarise(run_id)))
        return
    try:
        summary = summarise(run_id).to_json()
    except SandboxError as exc:  # --json promises JSON: errors too, on stdout, same exit code
        typer.echo(json.dumps({"error": str(exc)}, sort_keys=True))
        raise typer.Exit(exit_code_for(exc)) from exc
    typer.echo(json.dumps(summary, indent=2, sort_keys=True))


# --- MCP clients ------------------------------------------------------------------------------

client_app = typer.Typer(
    cls=PlainGroup,
    help="Write MCP client configurations that start a sandboxed Expert.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(client_app, name="client")
ClientOption = Annotated[
    str,
    typer.Option(
        "--client",
        metavar="|".join(_clients.CLIENTS),
        help="The MCP client whose configuration to write.",
        show_default=False,
    ),
]


@command(
    f"{PROGRAM} client setup demo --client claude-desktop -c examples/perstack.toml",
    f"{PROGRAM} client setup demo --client vscode --print -c examples/perstack.toml",
    name="setup",
    group=client_app,
)
def client_setup(  # noqa: PLR0913, PLR0917 - one parameter per command-line option
    expert: ExpertArgument,
    client: ClientOption,
    print_only: Annotated[  # noqa: FBT002 - a typer flag
        bool, typer.Option("--print", help="Print the entry instead of writing the file.")
    ] = False,
    name: Annotated[
        str | None,
        typer.Option("--name", metavar="NAME", help="Server name (default: perstack-EXPERT)."),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    env_path: EnvPathOption = None,
    workspace: WorkspaceOption = None,
    isolation: IsolationOption = DEFAULT_ISOLATION,
) -> None:
    """Add EXPERT to an MCP client's configuration (merged, with a backup), or print it."""
    import json  # noqa: PLC0415 - keeps --help fast

    from perstack_sandbox.config import load_config  # noqa: PLC0415
    from perstack_sandbox.plan import plan  # noqa: PLC0415

    target = _clients.client_named(client)
    plan(load_config(config)[0], expert)  # a bad config or Expert fails here, not in the client
    if workspace is not None and not workspace.is_dir():
        raise UsageError(f"--workspace {workspace} is not a folder")
    argv = _clients.run_argv(_program(), expert, config, env_path or (), workspace, isolation)
    entry = target.entry(argv, _clients.forwarded_env())
    server = name or _clients.server_name(expert)
    path = target.config_path(platform=sys.platform, home=Path.home())
    if print_only:
        typer.echo(json.dumps({target.servers_key: {server: entry}}, indent=2))
        typer.echo(f"merge it into {path}", err=True)
        return
    document = _clients.read_config(path)
    known = server in (document.get(target.servers_key) or {})
    backup = _clients.write_config(path, _clients.merged(document, target, server, entry))
    typer.echo(f"{'updated' if known else 'added'} {server} in {path}", err=True)
    if backup is not None:
        typer.echo(f"the previous file is kept as {backup}", err=True)
    typer.echo(f"restart {client} to start it", err=True)


def _program() -> list[str]:
    """Return the absolute command that starts this CLI (clients start it from anywhere)."""
    script = Path(sys.argv[0])
    if script.name == PROGRAM and script.is_file():
        return [str(script.absolute())]
    beside = Path(sys.executable).parent / PROGRAM
    if beside.is_file():
        return [str(beside)]
    return [sys.executable, "-m", "perstack_sandbox"]


@command(f"{PROGRAM} client list", name="list", group=client_app)
def client_list() -> None:
    """Show each known client's configuration file and the sandboxed Experts it starts."""
    for target in _clients.CLIENTS.values():
        path = target.config_path(platform=sys.platform, home=Path.home())
        if not path.exists():
            status = "not configured (no file)"
        else:
            try:
                found = _clients.sandboxed_servers(_clients.read_config(path), target)
            except UsageError as exc:
                found, status = [], f"unreadable: {exc}"
            else:
                status = "not configured"
            if found:
                status = "configured: " + ", ".join(f"{n} (Expert {e})" for n, e in found)
        typer.echo(f"{target.name:<15} {status}\n{'':<15} {path}")
