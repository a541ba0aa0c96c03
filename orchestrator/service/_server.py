"""The `serve` process: listen, hold runs, prune trails, and drain on SIGTERM.

At start it removes what a crashed service (or any dead owner) left on the engine and closes
their journals (`engine.collect_garbage`, what `gc` does), then prunes run trails; it binds the
socket before anything else can fail late. SIGTERM (or SIGINT) drains: the health check says
so, new runs get 503, every run is torn down, then the process exits 0 (decision 30).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import anyio
import anyio.to_thread
import uvicorn

from perstack_sandbox import engine, retention, state
from perstack_sandbox.errors import GatewayError, UsageError
from perstack_sandbox.gateway import new_token
from perstack_sandbox.isolation import DEFAULT_ISOLATION
from perstack_sandbox.service._address import Address, check_listen
from perstack_sandbox.service._app import build_app
from perstack_sandbox.service._metrics import Metrics
from perstack_sandbox.service._pools import check_pools, open_pools
from perstack_sandbox.service._runs import Runs, RunSettings
from perstack_sandbox.skills import first_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from perstack_sandbox.isolation import Isolation
    from perstack_sandbox.service._pools import PoolSpec

TOKEN_ENV: Final = "PERSTACK_SANDBOX_TOKEN"  # noqa: S105 - the variable's NAME, not a secret
SOCKET_MODE: Final = 0o600
LISTEN_BACKLOG: Final = 128
SHUTDOWN_GRACE_S: Final = 2  # open SSE streams would otherwise hold a graceful stop forever
PLAIN_HTTP_WARNING: Final = (
    "warning: --allow-remote serves plain HTTP: the bearer tokens, every run's token and the "
    "secret values in POST /v1/runs cross the network unencrypted; put a TLS front end "
    "(a reverse proxy) before this address and let only it reach the port"
)
PRUNE_INTERVAL_S: Final = 600.0  # trails age in days: ten minutes is prompt enough


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What `serve` was asked for."""

    address: Address
    allow_remote: bool = False
    idle_timeout_s: float | None = None
    max_lifetime_s: float | None = None
    retention: retention.Retention = field(default_factory=retention.Retention)
    pools: Sequence[PoolSpec] = ()
    config_path: Path | None = None  # the perstack.toml of the pools
    isolation: Isolation = DEFAULT_ISOLATION


def serve(options: ServeOptions, *, say: Callable[[str], None]) -> None:
    """Serve until SIGTERM or SIGINT, then drain; `say` gets the address (and a fresh token).

    Raises:
        UsageError: a non-loopback address without `allow_remote`, or a socket path in use.
        InputError: the pools' config or Experts are bad (before the engine is touched).
        GatewayError: the address cannot be bound.
        EngineError: the engine could not be reached for the start-up sweep.

    """
    check_listen(options.address, allow_remote=options.allow_remote)
    # Every input is checked before the engine is touched (the sweep removes objects).
    check_pools(options.pools, config_path=options.config_path, isolation=options.isolation)
    if options.allow_remote and not options.address.is_unix:
        say(PLAIN_HTTP_WARNING)
    token = None
    if not options.address.is_unix:
        token = os.environ.get(TOKEN_ENV) or new_token()
    sock = bind(options.address)
    if not options.address.is_unix:  # port 0 picks a free port: announce the real one
        port = sock.getsockname()[1]
        options = dataclasses.replace(
            options, address=Address(host=options.address.host, port=port)
        )
    try:
        anyio.run(_serve, options, sock, token, say)
    finally:
        sock.close()
        if options.address.path is not None:
            with contextlib.suppress(OSError):
                options.address.path.unlink()


async def _serve(
    options: ServeOptions, sock: socket.socket, token: str | None, say: Callable[[str], None]
) -> None:
    for line in await anyio.to_thread.run_sync(engine.collect_garbage):
        say(f"removed {line} (left by a process that is gone)")
    await anyio.to_thread.run_sync(retention.prune_trails, options.retention)
    metrics = Metrics()
    settings = _run_settings(options)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with (
            open_pools(
                options.pools,
                config_path=options.config_path,
                isolation=options.isolation,
                metrics=metrics,
            ) as pools,
            anyio.create_task_group() as group,
        ):
            runs = Runs(group, settings=settings, metrics=metrics, pools=pools)
            app = build_app(runs, metrics, mcp_url=_url_maker(options.address), token=token)
            server = _SignalFreeServer(_config(app))
            served = anyio.Event()

            async def run_server() -> None:
                with anyio.CancelScope(shield=True):  # stopped by should_exit, never cancelled
                    try:
                        await server.serve(sockets=[sock])
                    finally:
                        served.set()

            async def signalled() -> None:
                async for _signum in signals:
                    return

            group.start_soon(run_server)
            group.start_soon(_prune_periodically, options.retention)
            _announce(options.address, token, say)
            await first_of(signalled, served.wait)
            await runs.drain()  # 503 for new runs meanwhile; the health check says draining
            server.should_exit = True
            with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_GRACE_S * 2):
                await served.wait()
            group.cancel_scope.cancel()


def _run_settings(options: ServeOptions) -> RunSettings:
    address = options.address
    if address.is_unix or (options.allow_remote and not address.is_loopback):
        return RunSettings(options.idle_timeout_s, options.max_lifetime_s)
    hosts = (f"{address.host}:{address.port}", f"localhost:{address.port}")
    origins = tuple(f"http://{host}" for host in hosts)
    return RunSettings(options.idle_timeout_s, options.max_lifetime_s, hosts, origins)


def _url_maker(address: Address) -> Callable[[str], str]:
    base = "http://localhost" if address.is_unix else f"http://{address.host}:{address.port}"
    return lambda run_id: f"{base}/v1/runs/{run_id}/mcp"


def _announce(address: Address, token: str | None, say: Callable[[str], None]) -> None:
    say(f"listening on {address}")
    if token is not None:
        shown = f"the value of ${TOKEN_ENV}" if os.environ.get(TOKEN_ENV) else token
        say(f"bearer token: {shown}")


async def _prune_periodically(policy: retention.Retention) -> None:
    while True:
        await anyio.sleep(PRUNE_INTERVAL_S)
        await anyio.to_thread.run_sync(retention.prune_trails, policy)


def _config(app: object) -> uvicorn.Config:
    # log_config=None: uvicorn's default dictConfig would close every run's log handlers.
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_config=None,
        log_level="warning",
        access_log=False,  # an access log would be a second, unreviewed audit trail
        lifespan="off",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )


class _SignalFreeServer(uvicorn.Server):
    """A uvicorn server that leaves SIGTERM and SIGINT to the service (which drains first)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Capture nothing."""
        yield


def bind(address: Address) -> socket.socket:
    """Bind and listen on `address`; a Unix socket is made 0600 (its mode is the gate).

    Raises:
        UsageError: a live service already listens on that socket path, or it is not a socket.
        GatewayError: the address cannot be bound.

    """
    if address.path is None:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        target: object = (address.host, address.port)
    else:
        _clear_stale(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = str(address.path)
    try:
        with _umask(0o177):  # created 0600: never a moment when others could connect
            sock.bind(target)  # type: ignore[arg-type]
        if address.path is not None:
            address.path.chmod(SOCKET_MODE)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise GatewayError(f"cannot listen on {address}: {exc.strerror}") from exc
    return sock


def _clear_stale(path: Path) -> None:
    """Remove a socket file left by a service that died; refuse one a service still answers on."""
    if path == state.state_dir() / path.name:
        state.ensure_state_dir()
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise UsageError(f"--listen unix:{path}: that path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody answers: a crashed service's socket
        return
    finally:
        probe.close()
    raise UsageError(f"--listen unix:{path}: another service is listening there")


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def stderr_line(line: str) -> None:
    """Print one line on stderr (the service's only output)."""
    print(line, file=sys.stderr, flush=True)  # noqa: T201
