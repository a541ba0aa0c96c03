"""A minimal keep-alive HTTP/1.1 JSON-RPC client for MCP's streamable HTTP (bench only).

One blocking socket with TCP_NODELAY, one request at a time, no event loop, no MCP SDK: it
writes the POST by hand and reads back the JSON answer (or the answer at the end of an SSE
stream). It stands for the cheapest client a host could be, so that `bench/gateway.py` can
show the gateway's HTTP path without a heavy client's own cost on top. It is not an MCP
client: it validates nothing, and it speaks only what `tools/call` needs in either era.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Final
from urllib.parse import urlsplit

MODERN: Final = "2026-07-28"
LEGACY: Final = "2025-11-25"
_CLIENT_INFO: Final = {"name": "raw-bench-client", "version": "0"}
_READ_BYTES: Final = 1 << 16


class RawClient:
    """`tools/call` over one keep-alive connection, in one protocol era."""

    def __init__(self, url: str, era: str, token: str | None = None) -> None:
        """Connect to `url` (http://127.0.0.1:PORT/PATH); nothing is sent yet."""
        parts = urlsplit(url)
        self._host = f"{parts.hostname}:{parts.port}"
        self._path = parts.path or "/"
        self._era = era
        self._session: str | None = None
        self._next_id = 0
        self._auth = f"authorization: Bearer {token}\r\n" if token else ""
        self._address = (str(parts.hostname), int(parts.port or 80))
        self._sock = self._connect()
        self._buffer = b""

    def open(self) -> None:
        """Run the 2025-11-25 handshake (initialize, initialized); nothing for 2026-07-28."""
        if self._era == MODERN:
            return
        params = {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": _CLIENT_INFO}
        self._exchange("initialize", params)
        self._post({"jsonrpc": "2.0", "method": "notifications/initialized"}, {})

    def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Call a tool and return the JSON-RPC answer's `result`."""
        return self._exchange("tools/call", {"name": name, "arguments": arguments}, name)

    def close(self) -> None:
        """Close the connection (a 2025-11-25 session is left to the server's clean-up)."""
        self._sock.close()

    def _exchange(self, method: str, params: dict[str, Any], name: str = "") -> dict[str, Any]:
        self._next_id += 1
        headers = {"mcp-protocol-version": self._era}
        if self._era == MODERN:
            params = params | {"_meta": _modern_meta()}
            headers |= {"mcp-method": method} | ({"mcp-name": name} if name else {})
        message = {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params}
        answer = self._post(message, headers)
        if "result" not in answer:
            raise RuntimeError(f"{method} failed: {answer}")
        return dict(answer["result"])

    def _post(self, message: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        body = json.dumps(message).encode()
        if self._session is not None:
            headers = headers | {"mcp-session-id": self._session}
        lines = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
        head = (
            f"POST {self._path} HTTP/1.1\r\nhost: {self._host}\r\n{self._auth}{lines}"
            "accept: application/json, text/event-stream\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        try:
            self._sock.sendall(head.encode() + body)
            status, fields, payload = self._read_response()
        except ConnectionError:  # an idle connection the server closed: reconnect, as httpx does
            self._sock.close()
            self._sock, self._buffer = self._connect(), b""
            self._sock.sendall(head.encode() + body)
            status, fields, payload = self._read_response()
        self._session = fields.get("mcp-session-id", self._session)
        if status == 202 or not payload:  # 202 Accepted: a notification
            return {}
        if fields.get("content-type", "").startswith("text/event-stream"):
            payload = _last_event_data(payload)
        return dict(json.loads(payload))

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self._address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _read_response(self) -> tuple[int, dict[str, str], bytes]:
        head = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        fields = {k.lower(): v for k, _, v in (line.partition(": ") for line in head[1:])}
        if fields.get("transfer-encoding", "").lower() == "chunked":
            return status, fields, self._read_chunked()
        return status, fields, self._read_exactly(int(fields.get("content-length", "0")))

    def _read_chunked(self) -> bytes:
        body = b""
        while size := int(self._read_until(b"\r\n").split(b";")[0], 16):
            body += self._read_exactly(size)
            self._read_until(b"\r\n")
        self._read_until(b"\r\n")  # the empty trailer section
        return body

    def _read_until(self, marker: bytes) -> bytes:
        while (end := self._buffer.find(marker)) < 0:
            self._fill()
        line, self._buffer = self._buffer[:end], self._buffer[end + len(marker) :]
        return line

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _fill(self) -> None:
        chunk = self._sock.recv(_READ_BYTES)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self._buffer += chunk


def _modern_meta() -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": _CLIENT_INFO,
        "io.modelcontextprotocol/clientCapabilities": {},
    }


def _last_event_data(stream: bytes) -> bytes:
    """Return the data of the stream's last event with data (the answer comes last)."""
    events = [event for event in stream.replace(b"\r\n", b"\n").split(b"\n\n") if b"data:" in event]
    lines = [line for line in events[-1].split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(line[5:].removeprefix(b" ") for line in lines)
