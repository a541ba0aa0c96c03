"""``python -m perstack_sandbox_proxy.control [--socket PATH]``: one control request.

Reads ONE JSON document on stdin, sends it to the proxy's control socket, prints the JSON
reply on stdout; exit status 0 when the reply is ``{"ok": true, ...}``, else 1 (2 when the
socket cannot be reached). Secrets pass through stdin, never through argv or the environment.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence

# Kept equal to proxy/_control.py's DEFAULT_SOCKET (this module imports nothing: it runs alone).
DEFAULT_SOCKET: Final = "/tmp/perstack-proxy-control.sock"  # noqa: S108 - the proxy's tmpfs
TIMEOUT: Final = 30.0
EXIT_UNREACHABLE: Final = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Send stdin's document and print the reply.

    Returns:
        The exit status.

    """
    parser = argparse.ArgumentParser(prog="python -m perstack_sandbox_proxy.control")
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help="the control socket's path")
    args = parser.parse_args(argv)
    request = sys.stdin.buffer.read()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(args.socket)
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
    except OSError as exc:
        sys.stderr.write(f"control: cannot reach {args.socket}: {exc}\n")
        return EXIT_UNREACHABLE
    sys.stdout.write(reply.decode("utf-8", "replace"))
    sys.stdout.flush()
    try:
        ok = json.loads(reply).get("ok") is True
    except (ValueError, AttributeError):
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
