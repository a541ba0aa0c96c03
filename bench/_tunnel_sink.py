"""The upstream of bench/proxy_vs_squid.py: a threaded loopback sink that both proxies reach.

Each connection starts with a TLS ClientHello record (skipped) and one command line:
ECHO (answer PONG, then echo until EOF), UP n (swallow n bytes, answer OK), DOWN n (send n
zero bytes). Blocking sockets in threads keep the sink's own cost low and equal for both.
"""

from __future__ import annotations

import contextlib
import socketserver
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

MIB = 1024 * 1024
CHUNK = 4 * MIB
ZEROS = bytes(CHUNK)
# Every socket operation of the sink is bounded by this.
DEADLINE = 60.0


class SinkHandler(socketserver.BaseRequestHandler):
    """Skip the ClientHello record, then serve one ECHO / UP n / DOWN n command."""

    def handle(self) -> None:
        """Serve one connection."""
        sock: socket.socket = self.request
        sock.settimeout(DEADLINE)
        with contextlib.suppress(OSError):
            header = recv_exactly(sock, 5)
            recv_exactly(sock, int.from_bytes(header[3:5], "big"))
            command = _recv_line(sock).split()
            if command[0] == b"ECHO":
                sock.sendall(b"PONG\n")
                while data := sock.recv(65536):
                    sock.sendall(data)
            elif command[0] == b"UP":
                drain(sock, int(command[1]))
                sock.sendall(b"OK\n")
            elif command[0] == b"DOWN":
                send_zeros(sock, int(command[1]))


class Sink(socketserver.ThreadingTCPServer):
    """A thread per connection; a deep backlog so 200 simultaneous dials are not dropped."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes.

    Raises:
        ConnectionError: the peer closed first.

    """
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return bytes(data)


def _recv_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        line += recv_exactly(sock, 1)
    return line


def drain(sock: socket.socket, size: int) -> None:
    """Read and discard exactly ``size`` bytes.

    Raises:
        ConnectionError: the peer closed first.

    """
    buffer = bytearray(CHUNK)
    left = size
    while left:
        got = sock.recv_into(buffer, min(left, CHUNK))
        if not got:
            raise ConnectionError("closed early")
        left -= got


def send_zeros(sock: socket.socket, size: int) -> None:
    """Send ``size`` zero bytes in large slices."""
    view = memoryview(ZEROS)
    while size:
        step = min(size, CHUNK)
        sock.sendall(view[:step])
        size -= step
