"""Where the service listens, and where a client finds it: `unix:PATH` or `HOST:PORT`."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from perstack_sandbox import state
from perstack_sandbox.errors import UsageError

MAX_PORT: Final = 65535
SOCKET_NAME: Final = "serve.sock"
LOOPBACK_NAMES: Final = frozenset({"localhost"})


@dataclass(frozen=True, slots=True)
class Address:
    """A Unix socket (`path`) or a TCP `host` and `port`."""

    path: Path | None = None
    host: str = ""
    port: int = 0

    @property
    def is_unix(self) -> bool:
        """Tell whether this is a Unix socket."""
        return self.path is not None

    @property
    def is_loopback(self) -> bool:
        """Tell whether only this machine can reach it (a Unix socket, or a loopback host)."""
        if self.is_unix or self.host in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        """Render it the way `--listen` and `--server` take it."""
        return f"unix:{self.path}" if self.path is not None else f"{self.host}:{self.port}"


def default_address() -> Address:
    """Return the default socket: `serve.sock` in the state directory (private, 0700)."""
    return Address(path=state.state_dir() / SOCKET_NAME)


def parse_address(text: str, *, option: str = "--listen") -> Address:
    """Parse `unix:PATH` or `HOST:PORT` (an IPv6 host in brackets).

    Raises:
        UsageError: malformed, or a port out of range.

    """
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not path:
            raise UsageError(f"{option} unix:PATH needs a path, got {text!r}")
        return Address(path=Path(os.path.expanduser(path)).absolute())  # noqa: PTH111
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > MAX_PORT:
        raise UsageError(f"{option} wants unix:PATH or HOST:PORT, got {text!r}")
    return Address(host=host, port=int(port_text))


def check_listen(address: Address, *, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless `allow_remote` says the user meant it.

    Raises:
        UsageError: the address reaches beyond this machine and `allow_remote` is unset.

    """
    if not address.is_loopback and not allow_remote:
        raise UsageError(
            f"--listen {address} is reachable from other machines: every run's tools would be "
            "one bearer token away from the network; use 127.0.0.1:PORT or unix:PATH, or pass "
            "--allow-remote if that is what you want"
        )
