"""Load: hundreds of concurrent tunnels through one proxy deliver their bytes intact."""

from __future__ import annotations

import asyncio
import os
import resource
from typing import TYPE_CHECKING

from proxy_helpers import IO_TIMEOUT, client_hello, connect_request, running_proxy

if TYPE_CHECKING:
    from proxy_helpers import ProxyHarness

TUNNELS = 500
PAYLOAD_BYTES = 16 * 1024


def _raise_open_file_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (each tunnel costs four sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


async def _one_tunnel(address: tuple[str, int], index: int, opened: asyncio.Barrier) -> bool:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(connect_request("api.example.com:443"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        await opened.wait()  # every tunnel is open at the same time before any data moves
        hello = client_hello("api.example.com")
        payload = os.urandom(PAYLOAD_BYTES) + index.to_bytes(4, "big")
        writer.write(hello + payload)
        await writer.drain()
        echoed = await reader.readexactly(len(hello) + len(payload))
        return echoed == hello + payload
    finally:
        writer.close()


async def _all_tunnels(harness: ProxyHarness) -> list[bool]:
    opened = asyncio.Barrier(TUNNELS)
    async with asyncio.timeout(IO_TIMEOUT * 6):
        return await asyncio.gather(
            *(_one_tunnel(harness.address, index, opened) for index in range(TUNNELS))
        )


def test_five_hundred_concurrent_tunnels_deliver_their_bytes_intact() -> None:
    """500 tunnels open at once, each echoing 16 KiB of random bytes back unchanged."""
    _raise_open_file_limit(TUNNELS * 4 + 256)
    with running_proxy() as harness:
        results = asyncio.run(_all_tunnels(harness))
        assert results == [True] * TUNNELS
        harness.wait_for(lambda: len(harness.audit()) == 2 * TUNNELS, "every close line")
        assert sum(1 for d in harness.decisions() if d["decision"] == "allow") == TUNNELS
        assert harness.server.active == 0
