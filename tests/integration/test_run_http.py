"""`run EXPERT --http PORT --token-file FILE`: the announced URL, the private token file."""

from __future__ import annotations

import os
import stat
import sys
from typing import TYPE_CHECKING

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from skills_support import (
    DEADLINE_S,
    ROOT,
    ensure_image,
    expert_toml,
    require_engine,
    stdlib_skill,
    text_of,
    unique,
    write_expert,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.docker, pytest.mark.anyio, pytest.mark.usefixtures("state_home")]


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio."""
    return "asyncio"


async def announced(process: anyio.abc.Process) -> tuple[str, str]:
    """Read stderr until the gateway announces itself; return its URL and the token line."""
    assert process.stderr is not None
    seen = ""
    async for chunk in process.stderr:
        seen += chunk.decode()
        lines = seen.splitlines()
        urls = [line.removeprefix("gateway: ") for line in lines if line.startswith("gateway: ")]
        tokens = [line for line in lines if line.startswith("bearer token: ")]
        if urls and tokens:
            return urls[0].strip(), tokens[0]
    pytest.fail(f"the gateway never announced itself; stderr:\n{seen}")


async def test_the_token_file_is_written_0600_and_the_token_is_not_printed(
    tmp_path: Path,
) -> None:
    """`--http 0 --token-file F`: F appears 0600 once it listens, stderr names F, not the token."""
    require_engine()
    expert = unique("http")
    config = write_expert(tmp_path / "expert", expert_toml(expert, stdlib_skill("calc")))
    ensure_image(config, expert)
    token_file = tmp_path / "token"
    command = [sys.executable, "-m", "perstack_sandbox", "run", expert, "-c", str(config)]
    command += ["--http", "0", "--token-file", str(token_file)]
    env = {key: value for key, value in os.environ.items() if key != "PERSTACK_SANDBOX_TOKEN"}
    with anyio.fail_after(DEADLINE_S):
        async with await anyio.open_process(command, env=env, cwd=ROOT) as process:
            try:
                url, token_line = await announced(process)
                token = token_file.read_text().strip()
                mode = stat.S_IMODE(token_file.stat().st_mode)
                headers = {"Authorization": f"Bearer {token}"}
                async with (
                    httpx2.AsyncClient(headers=headers) as http,
                    Client(streamable_http_client(url, http_client=http)) as client,
                ):
                    echoed = await client.call_tool("echo", {"text": "over http"})
            finally:
                process.terminate()
                with anyio.move_on_after(30):
                    await process.wait()
    assert url.startswith("http://127.0.0.1:")
    assert url.endswith("/mcp")
    assert mode == 0o600
    assert token_line == f"bearer token: in {token_file} (mode 0600)"
    assert token not in token_line
    assert text_of(echoed) == "over http"
