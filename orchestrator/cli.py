"""The `perstack-sandbox` command line (the contract in DESIGN.md).

Commands stay synchronous and call `anyio.run` once. Every error is mapped to an exit code in
`EXIT_CODES`; this module is the only place that exits the process.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.errors import InputError, RunError, SandboxError

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


def main() -> None:
    """Console-script entry point: run the app and map errors to exit codes."""
    try:
        app(standalone_mode=False)
    except SandboxError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exit_code_for(exc))
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the top of the CLI: never a bare traceback
        typer.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
