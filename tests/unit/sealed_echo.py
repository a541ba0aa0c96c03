"""An HTTPS echo server for the sealed path's tests (stdlib only: it also runs in the proxy image).

Each request is answered with JSON naming its method, target, headers and body, and the SHA-256
of the target and of each header value (the sealed path masks a real value in the body, so a
test proves what arrived by its digest). Extras:
``X-Echo-Back: V`` puts ``X-Echoed: V`` in the response head and V in the body; ``/chunked``
answers with a chunked body in 7-byte chunks; ``/ws`` answers 101 and then echoes raw bytes.
As a program it reads {"cert", "key", "host", "port"} as JSON on stdin, listens with TLS, and
prints "ready" once it does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import sys
import tempfile
from pathlib import Path


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    return await reader.readexactly(int(headers.get("content-length", "0")))


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer requests on one connection until the client closes it."""
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            lines = head.decode("latin-1").split("\r\n")[:-2]
            method, target, _ = lines[0].split(" ", 2)
            pairs = [line.split(":", 1) for line in lines[1:]]
            headers = {name.strip().lower(): value.strip() for name, value in pairs}
            body = await _body(reader, headers)
            if target == "/ws":
                writer.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n\r\n"
                )
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
                return
            echoed = headers.get("x-echo-back", "")
            document = {
                "method": method,
                "target": target,
                "headers": [[name.strip(), value.strip()] for name, value in pairs],
                "body": body.decode("latin-1"),
                "echoed": echoed,
                "targetSha256": _digest(target),
                "sha256": {name.strip().lower(): _digest(value.strip()) for name, value in pairs},
            }
            payload = json.dumps(document).encode()
            extra = f"X-Echoed: {echoed}\r\n".encode() if echoed else b""
            if target == "/chunked":
                chunks = b"".join(
                    b"%x\r\n%s\r\n" % (len(payload[i : i + 7]), payload[i : i + 7])
                    for i in range(0, len(payload), 7)
                )
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                    + extra
                    + b"\r\n"
                    + chunks
                    + b"0\r\n\r\n"
                )
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + extra
                    + b"Content-Length: %d\r\n\r\n" % len(payload)
                    + payload
                )
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError, ValueError):
        return
    finally:
        writer.close()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("latin-1")).hexdigest()


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """Return a TLS server context for the PEM ``cert`` chain and ``key``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:
        cert_path, key_path = Path(folder) / "c.pem", Path(folder) / "k.pem"
        cert_path.write_text(cert, encoding="ascii")
        key_path.write_text(key, encoding="ascii")
        context.load_cert_chain(cert_path, key_path)
    return context


async def _main() -> None:
    settings = json.loads(sys.stdin.readline())
    context = server_context(settings["cert"], settings["key"])
    server = await asyncio.start_server(handle, settings["host"], settings["port"], ssl=context)
    print("ready", flush=True)  # noqa: T201 - the test waits for this line
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main())
