"""`run`: serve an Expert's gateway over stdio, or over streamable HTTP on 127.0.0.1:PORT.

With `--http` the port is bound before anything starts (a port in use is an error at once),
and the URL and bearer token are printed on stderr once it listens, or the token goes to a
file that only its owner can read.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Final

import anyio

from orchestrator.errors import UsageError
from orchestrator.gateway import bind_loopback, parse_listen, serve_http, serve_stdio
from orchestrator.http_guard import new_token
from orchestrator.launch import open_expert

if TYPE_CHECKING:
    import socket
    from pathlib import Path

    from orchestrator.launch import LaunchOptions

# `run --http` uses this variable's value as the bearer token when set, else a fresh one.
TOKEN_ENV: Final = "PERSTACK_SANDBOX_TOKEN"  # noqa: S105 - the variable's NAME, not a secret


def serve(options: LaunchOptions, *, http: str | None, token_file: Path | None = None) -> None:
    """Serve the gateway until the client disconnects (stdio) or the process is stopped.

    With `http` (a PORT, served on 127.0.0.1) the port is bound before anything starts, and
    once it listens stderr gets `gateway: URL` and `bearer token: TOKEN`; with `token_file` the
    token goes to that file (mode 0600) instead. A token chosen in $PERSTACK_SANDBOX_TOKEN is
    never printed.

    Raises:
        SandboxError: any failure (see `open_expert`); UsageError for a bad `--http` or
            `--token-file`; GatewayError when the port is in use.

    """
    if http is None:
        if token_file is not None:
            raise UsageError("--token-file goes with --http (stdio needs no token)")
        anyio.run(_serve_stdio, options)
        return
    port = parse_listen(http)[1]
    if token_file is not None and not token_file.absolute().parent.is_dir():
        raise UsageError(f"--token-file {token_file}: its folder does not exist")
    sock = bind_loopback(port)  # a port in use fails here, before any image or container
    try:
        anyio.run(_serve_http, options, sock, token_file)
    finally:
        sock.close()


async def _serve_stdio(options: LaunchOptions) -> None:
    async with open_expert(options) as gateway:
        await serve_stdio(gateway)


async def _serve_http(options: LaunchOptions, sock: socket.socket, token_file: Path | None) -> None:
    given = os.environ.get(TOKEN_ENV)
    token = given or new_token()

    def ready(url: str) -> None:
        if token_file is not None:
            write_private(token_file, token + "\n")
            shown = f"in {token_file} (mode 0600)"
        else:
            # A token the user chose is a secret they already hold: never echo it back.
            shown = f"the value of ${TOKEN_ENV}" if given else token
        print(f"gateway: {url}\nbearer token: {shown}", file=sys.stderr, flush=True)  # noqa: T201

    async with open_expert(options) as gateway:
        await serve_http(gateway, port=0, token=token, on_ready=ready, sock=sock)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (0600, also when it existed).

    Raises:
        UsageError: the file cannot be written.

    """
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), 0o600)  # an existing file keeps its mode otherwise
            file.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
