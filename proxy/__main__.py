"""``python -m proxy --policy FILE --listen HOST:PORT [--listen HOST:PORT ...] [--control PATH]``.

With ``--control``, the proxy also takes control messages on that Unix socket (``_control``).

Audit lines go to stdout, diagnostics to stderr. Exit status: 0 after SIGTERM/SIGINT, 2 for a
bad command line or policy, 1 when a listening address cannot be bound.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ._audit import AuditLog
from ._control import start_control
from ._policy import PolicyError, load_policy
from ._resolver import Resolver, SystemResolver
from ._server import ProxyServer

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def parse_listen(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``[V6]:PORT``.

    Raises:
        argparse.ArgumentTypeError: not a host and a port in 0-65535.

    """
    host, colon, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or int(port) > 65535:  # noqa: PLR2004
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m proxy", description=__doc__)
    parser.add_argument("--policy", required=True, type=Path, help="policy JSON file")
    parser.add_argument(
        "--listen",
        required=True,
        action="append",
        type=parse_listen,
        help="HOST:PORT to listen on; repeat for several addresses",
    )
    parser.add_argument("--control", type=Path, help="Unix socket for control messages (mode 0600)")
    return parser.parse_args(argv)


async def serve(
    server: ProxyServer,
    listen: list[tuple[str, int]],
    stop: asyncio.Event | None = None,
    control: Path | None = None,
) -> None:
    """Listen on ``listen`` (and ``control``) until SIGTERM/SIGINT (or until ``stop`` is set).

    Raises:
        OSError: a listening address or the control socket cannot be bound.

    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The control socket first: once the proxy answers its health check, a grant can arrive.
    controller = await start_control(server, control) if control is not None else None
    bound = await server.start(listen)
    addresses = ", ".join(f"{host}:{port}" for host, port in bound)
    patterns = len(server.policy.allowed_domains)
    sys.stderr.write(f"proxy: listening on {addresses}; {patterns} allowed domain patterns\n")
    try:
        await stop.wait()
    finally:
        if controller is not None:
            controller.close()
        await server.close()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return uvloop's loop factory when uvloop is installed, else None (asyncio's own loop).

    The image installs Debian's python3-uvloop: it cuts the proxy's CPU per tunnel
    (docs/architecture.md, decision 41). Everything the proxy asks of the loop (readers,
    writers, timers, tasks) behaves the same on both.
    """
    try:
        import uvloop  # noqa: PLC0415 - optional: the proxy runs without it
    except ImportError:
        return None
    return uvloop.new_event_loop


class _TestHosts:
    """The policy's ``testHosts`` answered first, every other name by ``fallback``."""

    def __init__(self, table: dict[str, str], fallback: Resolver) -> None:
        self._table, self._fallback = table, fallback

    async def resolve(self, host: str) -> list[str]:
        """Answer from the table, else ask the fallback (which may raise ResolveError)."""
        if host in self._table:
            return [self._table[host]]
        return await self._fallback.resolve(host)

    def answer_now(self, host: str) -> list[str] | None:
        """Answer from the table at once; None sends the name to the fallback (DNS)."""
        address = self._table.get(host)
        return None if address is None else [address]


def main(argv: Sequence[str] | None = None, resolver: Resolver | None = None) -> int:
    """Run the proxy; ``resolver`` replaces the system resolver (benchmarks, tests).

    Returns:
        The process exit status.

    """
    args = _arguments(argv)
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        sys.stderr.write(f"proxy: invalid policy: {exc}\n")
        return EXIT_BAD_INPUT
    if resolver is None:
        resolver = SystemResolver()
        if policy.test_hosts:  # the test suites' names; every other name goes to DNS
            resolver = _TestHosts(policy.test_hosts, resolver)
    server = ProxyServer(policy, resolver, AuditLog(policy.sandbox_id))
    gc.freeze()
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(server, args.listen, control=args.control))
    except OSError as exc:
        sys.stderr.write(f"proxy: cannot listen: {exc}\n")
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
