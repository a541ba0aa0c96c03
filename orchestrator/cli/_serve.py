"""The `serve` command: runs for agent runtimes over a JSON API (see `service`)."""

from __future__ import annotations

from pathlib import Path  # noqa: TC003 - typer resolves the annotations at run time
from typing import Annotated

import typer

from perstack_sandbox.cli._app import (
    DEFAULT_KEEP_DAYS,
    DEFAULT_KEEP_RUNS,
    PROGRAM,
    IsolationOption,
    KeepDaysOption,
    KeepRunsOption,
    command,
    retention_of,
)
from perstack_sandbox.isolation import DEFAULT_ISOLATION


@command(
    f"{PROGRAM} serve --idle-timeout 600 --max-lifetime 3600",
    f"{PROGRAM} serve --listen 127.0.0.1:8787 --pool demo=2 -c examples/perstack.toml",
)
def serve(  # noqa: PLR0913, PLR0917 - one parameter per command-line option
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            metavar="unix:PATH|HOST:PORT",
            help="Where to listen (default: unix:serve.sock in the state directory, mode "
            "0600). On TCP every request needs the bearer token ($PERSTACK_SANDBOX_TOKEN, or a "
            "fresh one printed on stderr).",
        ),
    ] = None,
    allow_remote: Annotated[  # noqa: FBT002 - a typer flag
        bool,
        typer.Option("--allow-remote", help="Allow a --listen address other machines reach."),
    ] = False,
    idle_timeout: Annotated[
        float,
        typer.Option(
            "--idle-timeout",
            metavar="SECONDS",
            help="Tear a run down after this long without an MCP request (0: never).",
        ),
    ] = 0,
    max_lifetime: Annotated[
        float,
        typer.Option(
            "--max-lifetime",
            metavar="SECONDS",
            help="Tear a run down this long after it started (0: never).",
        ),
    ] = 0,
    keep_days: KeepDaysOption = DEFAULT_KEEP_DAYS,
    keep_runs: KeepRunsOption = DEFAULT_KEEP_RUNS,
    pool: Annotated[
        list[str] | None,
        typer.Option(
            "--pool", metavar="EXPERT=N", help="Keep N warm sandboxes of EXPERT (needs -c)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", metavar="PATH", help="The perstack.toml of --pool."),
    ] = None,
    isolation: IsolationOption = DEFAULT_ISOLATION,
) -> None:
    """Serve runs to agent runtimes over a JSON API, each with its own MCP endpoint."""
    from perstack_sandbox import service  # noqa: PLC0415 - keeps --help fast

    address = service.parse_address(listen) if listen else service.default_address()
    options = service.ServeOptions(
        address=address,
        allow_remote=allow_remote,
        idle_timeout_s=idle_timeout or None,
        max_lifetime_s=max_lifetime or None,
        retention=retention_of(keep_days, keep_runs),  # type: ignore[arg-type]
        pools=tuple(service.parse_pool(spec) for spec in pool or ()),
        config_path=config.absolute() if config is not None else None,
        isolation=isolation,
    )
    service.serve(options, say=service.stderr_line)
