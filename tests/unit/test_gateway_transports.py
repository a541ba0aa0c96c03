"""The gateway's transports: streamable HTTP and stdio, and stopping them.

Plain JSON answers, large results, keep-alive latency, the bearer scheme, and a clean stop on
SIGINT and SIGTERM over both transports.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx2
import pytest
from gateway_support import DEADLINE_S, ERAS, connected, sdk_skill, serving_over_http, text_of

from perstack_sandbox.gateway import bind_loopback, open_gateway

pytestmark = pytest.mark.anyio
MIB = 1024 * 1024
ROOT = Path(__file__).parents[2]
NAGLE_DELAYED_ACK_MS = 40  # Linux's minimum delayed-ACK timeout: what Nagle made each call wait
CALLS = 200


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),  # `run`'s loop
    ]
)
def anyio_backend(request):
    """Run on asyncio (uvicorn needs it), with its own loop and with uvloop's, as `run` does."""
    return request.param


@pytest.mark.parametrize("mode", ERAS)
async def test_a_result_over_one_mebibyte_reaches_the_python_client(mode):
    """A 1.5 MiB result arrives whole: it is sent as one JSON body, not an SSE event (1 MiB cap).

    Seen failing in the 2025-11-25 era with the SSE-only answer ("Server-sent event exceeded the
    1048576 byte limit") before PlainJsonResponses.
    """
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")]) as gateway,
            connected(gateway, mode, http=True) as client,
        ):
            result = await client.call_tool("big", {"size": MIB + MIB // 2})
    assert len(text_of(result)) == MIB + MIB // 2


def _rpc(request_id, method, params=None, **extra):
    body = {"jsonrpc": "2.0", "id": request_id, "method": method, **extra}
    return body | ({"params": params} if params is not None else {})


async def _handshake(raw, url):
    init = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    }
    opened = await raw.post(url, json=_rpc(0, "initialize", init))
    session = {"mcp-session-id": opened.headers["mcp-session-id"]}
    headers = session | {"mcp-protocol-version": "2025-11-25"}
    await raw.post(
        url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
    )
    return headers


async def test_a_post_streams_only_when_something_precedes_its_answer():
    """A plain call is answered as application/json; one asking for progress gets an SSE stream."""
    accept = {"accept": "application/json, text/event-stream"}
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")]) as gateway,
            serving_over_http(gateway) as (url, token),
            httpx2.AsyncClient(headers={"authorization": f"Bearer {token}", **accept}) as raw,
        ):
            headers = await _handshake(raw, url)
            call = {"name": "echo", "arguments": {"text": "plain"}}
            plain = await raw.post(url, json=_rpc(1, "tools/call", call), headers=headers)
            steps = {"name": "progress", "arguments": {"steps": 2}, "_meta": {"progressToken": "p"}}
            streamed = await raw.post(url, json=_rpc(2, "tools/call", steps), headers=headers)
    assert plain.headers["content-type"] == "application/json"
    assert plain.json()["result"]["content"][0]["text"] == "plain"
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.text.count("notifications/progress") == 2


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_the_bearer_scheme_is_accepted_in_any_case(scheme):
    """Authorization schemes are case-insensitive (RFC 9110): `bearer <token>` is let in."""
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")]) as gateway,
            serving_over_http(gateway) as (url, token),
            httpx2.AsyncClient() as raw,
        ):
            init = {"protocolVersion": "2025-11-25", "capabilities": {}}
            init["clientInfo"] = {"name": "raw", "version": "0"}
            accept = {"accept": "application/json, text/event-stream"}
            let_in = await raw.post(
                url,
                json=_rpc(1, "initialize", init),
                headers={"authorization": f"{scheme} {token}", **accept},
            )
            basic = await raw.post(
                url,
                json=_rpc(1, "initialize", init),
                headers={"authorization": f"Basic {token}", **accept},
            )
    assert let_in.status_code == 200
    assert basic.status_code == 401


async def test_only_the_mcp_path_is_served():
    """With the right token, /mcp answers and any other path gets 404, as the router did.

    Seen failing ([200, 200, 200]) with the endpoint served without its one-path check.
    """
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")]) as gateway,
            serving_over_http(gateway) as (url, token),
            httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}) as raw,
        ):
            init = {"protocolVersion": "2025-11-25", "capabilities": {}}
            init["clientInfo"] = {"name": "raw", "version": "0"}
            accept = {"accept": "application/json, text/event-stream"}
            served = await raw.post(url, json=_rpc(1, "initialize", init), headers=accept)
            elsewhere = [
                await raw.post(url.removesuffix("/mcp") + path, json=_rpc(1, "initialize", init))
                for path in ("/", "/mcp/", "/other")
            ]
    assert served.status_code == 200
    assert [answer.status_code for answer in elsewhere] == [404, 404, 404]


@pytest.mark.parametrize("mode", ERAS)
async def test_calls_on_a_reused_connection_do_not_wait_for_delayed_acks(mode):
    """200 sequential echo calls on one keep-alive connection are not held to a 40 ms floor.

    A regression test for Nagle's algorithm meeting delayed ACKs: with the listening socket
    created as protocol 0, asyncio skipped TCP_NODELAY on accepted connections and every call
    after the first took 44-48 ms. Seen failing by creating the socket without IPPROTO_TCP:
    every sample sat above 40 ms (on asyncio's loop; uvloop, `run`'s loop, sets TCP_NODELAY on
    every TCP socket, so its variant guards that loop rather than the socket). A busy machine
    (the suite shares two cores) slows calls down and spreads them out, but cannot put a floor
    under the fast ones; Nagle does.
    """
    with anyio.fail_after(DEADLINE_S * 2):
        async with (
            open_gateway([sdk_skill("n")]) as gateway,
            connected(gateway, mode, http=True) as client,
        ):
            samples = []
            for _ in range(CALLS):
                started = time.perf_counter()
                await client.call_tool("echo", {"text": "ping"})
                samples.append((time.perf_counter() - started) * 1000)
    fast = sorted(samples)[CALLS // 10]
    below = [ms for ms in samples if ms < NAGLE_DELAYED_ACK_MS]
    assert fast < NAGLE_DELAYED_ACK_MS / 2, samples
    assert len(below) >= CALLS // 2, samples


async def test_accepted_connections_have_tcp_nodelay():
    """A connection accepted on the gateway's listening socket has TCP_NODELAY set.

    Seen failing (0) with the socket created as protocol 0, which asyncio skips; uvloop sets it
    either way, so the uvloop variant guards the loop `run` serves on.
    """
    flags: list[int] = []
    made = anyio.Event()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport):
            sock = transport.get_extra_info("socket")
            flags.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            made.set()
            transport.close()

    listening = bind_loopback(0)
    server = await asyncio.get_running_loop().create_server(Probe, sock=listening)
    async with server:
        with anyio.fail_after(DEADLINE_S):
            stream = await anyio.connect_tcp("127.0.0.1", listening.getsockname()[1])
            await made.wait()
            await stream.aclose()
    assert flags == [1]


SERVE_SCRIPT = """
import functools, signal, sys, anyio
from perstack_sandbox import engine
from perstack_sandbox.gateway import open_gateway, serve_http, serve_stdio
from perstack_sandbox.skills import SkillSession, SkillSpec, local_process

skill = SkillSession(SkillSpec("n"), functools.partial(
    local_process, [sys.executable, sys.argv[1], "--name", "n"], env={"PATH": "/usr/bin"}))

async def main():
    async with engine.cancel_on_signals(), open_gateway([skill]) as gateway:
        if sys.argv[2] == "stdio":
            print("serving", file=sys.stderr, flush=True)
            await serve_stdio(gateway)
        else:
            ready = lambda url: print(url, flush=True)
            await serve_http(gateway, port=0, token="t", on_ready=ready)
    print("stopped", file=sys.stderr, flush=True)

signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))  # as cli.main does
anyio.run(main)
"""


def _serve(tmp_path, transport):
    script = tmp_path / "serve.py"
    script.write_text(SERVE_SCRIPT, encoding="utf-8")
    sdk = Path(__file__).parents[1] / "fixtures" / "sdk_skill.py"
    return subprocess.Popen(
        [sys.executable, str(script), str(sdk), transport],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_http_gateway_cleanly(signum, tmp_path):
    """SIGINT or SIGTERM ends HTTP serving with exit 0, the body finished, and no traceback.

    Seen failing before uvicorn was shielded and asked to exit: the signal cancelled it
    mid-serve and starlette's lifespan printed a CancelledError traceback.
    """
    with _serve(tmp_path, "http") as child:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        httpx2.post(url, json=_rpc(1, "ping"), headers={"authorization": "Bearer t"})
        child.send_signal(signum)
        _, err = child.communicate(timeout=DEADLINE_S)
    assert child.returncode == 0, err
    assert err.strip().endswith("stopped")
    assert "Traceback" not in err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_stdio_gateway_while_the_client_keeps_stdin_open(signum, tmp_path):
    """SIGINT or SIGTERM ends stdio serving at once, though the client never closes stdin.

    Seen failing (hanging until the deadline) while stdin was read in anyio's worker thread,
    which the cancelled server and then the interpreter's exit both waited for.
    """
    init = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    }
    with _serve(tmp_path, "stdio") as child:
        assert child.stdin is not None
        assert child.stdout is not None
        assert child.stderr is not None
        assert child.stderr.readline().strip() == "serving"
        child.stdin.write(json.dumps(_rpc(0, "initialize", init)) + "\n")
        child.stdin.flush()
        assert '"id":0' in child.stdout.readline()
        child.send_signal(signum)
        code = child.wait(timeout=DEADLINE_S)  # stdin stays open: only the signal ends it
        err = child.stderr.read()
        child.stdin.close()
    assert code == 0, err
    assert err.strip().endswith("stopped")
    assert "Traceback" not in err
