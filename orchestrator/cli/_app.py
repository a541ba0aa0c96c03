"""The application: its options, the one exit-code table, and the entry point `main`.

Every error is mapped to an exit code in `EXIT_CODES` (documented by `EXIT_CODE_TABLE`, which
`--help` and the README show); `main` is the only place that exits the process. Help is plain
text (`_help`); the commands register on `app` from `_commands` and `_ops`.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer

from perstack_sandbox.cli._help import PlainCommand, PlainGroup
from perstack_sandbox.engine import BackendName
from perstack_sandbox.errors import (
    InputError,
    RunError,
    RunInterruptedError,
    SandboxError,
)
from perstack_sandbox.isolation import Isolation

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

PROGRAM: Final = "perstack-sandbox"
INTERRUPTED: Final = 130  # 128 + SIGINT, what shells report for a Ctrl-C'd program
EXIT_CODES: tuple[tuple[type[SandboxError], int], ...] = (
    (RunInterruptedError, INTERRUPTED),
    (InputError, 2),
    (RunError, 1),
    (SandboxError, 1),
)
EXIT_CODE_TABLE: Final = (
    (
        0,
        (
            "success (a tool result with isError is still a completed call); `run` stopped "
            "by Ctrl-C (SIGINT) or SIGTERM, its normal end: torn down, recorded `stopped`"
        ),
    ),
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
    (
        INTERRUPTED,
        (
            "a one-shot command (build, tools, call, ...) interrupted by Ctrl-C (SIGINT) or "
            "SIGTERM; what was started is torn down"
        ),
    ),
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
        help=(
            "Give each skill its own names: tools and prompts as skill__name, resource URIs as "
            "perstack-skill://skill/uri (for skills whose names collide)."
        ),
    ),
]
IsolationOption = Annotated[
    Isolation,
    typer.Option(
        "--isolation",
        help="Run the skills under runc or gVisor's runsc (each skill in its own container; "
        "`doctor --fix` sets gVisor up).",
    ),
]
SealSecretsOption = Annotated[
    bool,
    typer.Option(
        "--seal-secrets",
        help="Give each skill placeholders instead of its requiredEnv values; the proxy puts "
        "the real values into that skill's HTTPS requests to its own allowed hosts.",
    ),
]
SealPassthroughOption = Annotated[
    list[str] | None,
    typer.Option(
        "--seal-passthrough",
        metavar="HOST",
        help="With --seal-secrets: keep HOST a plain tunnel (no TLS termination, no "
        "substitution), for a client that pins certificates. Repeatable.",
    ),
]
BackendOption = Annotated[
    BackendName,
    typer.Option(
        "--backend",
        help="Where the sandbox runs: this host's Docker engine, or the Kubernetes cluster of "
        "$KUBECONFIG (or the in-cluster configuration); npx/uvx skills only on Kubernetes.",
    ),
]
EXAMPLE_CONFIG = "-c examples/perstack.toml"
ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        metavar="unix:PATH|HOST:PORT",
        help="Go through a running `serve` instead of starting a sandbox here.",
    ),
]
KeepDaysOption = Annotated[
    float,
    typer.Option(
        "--keep-days", metavar="DAYS", help="Prune finished run and build trails older than this."
    ),
]
KeepRunsOption = Annotated[
    int,
    typer.Option(
        "--keep-runs", metavar="N", help="Keep at most N finished run trails, and N build trails."
    ),
]
DEFAULT_KEEP_DAYS = 7.0
DEFAULT_KEEP_RUNS = 500
SECONDS_PER_DAY = 86400


def retention_of(keep_days: float, keep_runs: int) -> object:
    """Return the retention policy of `--keep-days`/`--keep-runs` (0: no limit of that kind)."""
    from perstack_sandbox.retention import Retention  # noqa: PLC0415 - keeps --help fast

    return Retention(
        max_age_s=keep_days * SECONDS_PER_DAY if keep_days > 0 else None,
        max_count=keep_runs if keep_runs > 0 else None,
    )


def exit_code_for(error: SandboxError) -> int:
    """Return the exit code for an error, from the one table."""
    for error_class, code in EXIT_CODES:
        if isinstance(error, error_class):
            return code
    return 1  # pragma: no cover - SandboxError is the last row


def _interrupt_on_sigterm(_signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the path of Ctrl-C: the running command is cancelled and every sandbox is
    # torn down by its context manager, instead of the process dying with containers left.
    # The SIGINT handler is called, not raised: a SIGINT that is ignored must not make
    # SIGTERM a no-op.
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def _handle_signals() -> None:
    """Make SIGTERM cancel the command the way Ctrl-C does, even where SIGINT is ignored."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a shell (or a client) that ignores SIGINT: restore
        # Ctrl-C's handler, so that the event loop cancels the command on SIGTERM gracefully.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)


def main() -> None:
    """Console-script entry point: run the app and map errors to exit codes."""
    _handle_signals()
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
    The rendering lives in `text`, so that `serve` answers bad input with the same lines.
    """
    from perstack_sandbox.text import error_lines as render  # noqa: PLC0415 - keeps --help fast

    return render(error)


def warn(line: str) -> None:
    """Print one warning line on stderr."""
    typer.echo(f"warning: {line}", err=True)
