"""Skill processes: the byte-stream protocol, local subprocesses, and the stdio pumps."""

from __future__ import annotations

import contextlib
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import anyio
import anyio.abc
import mcp_types as types
from mcp.shared.message import SessionMessage

from perstack_sandbox.errors import SkillError
from perstack_sandbox.skills._lines import read_lines

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream


class SkillProcess(Protocol):
    """A running skill process: three byte streams, a wait and a kill."""

    @property
    def stdin(self) -> anyio.abc.ByteSendStream:
        """The process's standard input."""

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream:
        """The process's standard output (JSON-RPC, one message per line)."""

    @property
    def stderr(self) -> anyio.abc.ByteReceiveStream:
        """The process's standard error (free text for the log)."""

    async def wait(self) -> int | None:
        """Wait for the exit and return the code, when known."""

    async def kill(self) -> None:
        """Kill the process."""


ProcessFactory: TypeAlias = "Callable[[], AbstractAsyncContextManager[SkillProcess]]"
"""Opens one skill process; entered once per (re)start."""


class _LocalProcess:
    """`SkillProcess` over an `anyio` subprocess (tests, benchmarks)."""

    def __init__(self, process: anyio.abc.Process) -> None:
        # spawned with pipes, so all three exist
        assert process.stdin is not None  # noqa: S101
        assert process.stdout is not None  # noqa: S101
        assert process.stderr is not None  # noqa: S101
        self.stdin: anyio.abc.ByteSendStream = process.stdin
        self.stdout: anyio.abc.ByteReceiveStream = process.stdout
        self.stderr: anyio.abc.ByteReceiveStream = process.stderr
        self._process = process

    async def wait(self) -> int | None:
        return await self._process.wait()

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()


@asynccontextmanager
async def local_process(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None = None
) -> AsyncIterator[SkillProcess]:
    """Start a local subprocess as a skill process; killed and reaped on exit.

    Raises:
        SkillError: the command cannot be started.

    """
    try:
        process = await anyio.open_process(
            list(argv), env=dict(env), cwd=cwd, start_new_session=True
        )
    except OSError as exc:
        raise SkillError(f"cannot start {argv[0]!r}: {exc.strerror}") from exc
    try:
        yield _LocalProcess(process)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await process.aclose()


async def pump_stdout(
    skill: str,
    stream: anyio.abc.ByteReceiveStream,
    sink: MemoryObjectSendStream[SessionMessage | Exception],
    exited: anyio.Event,
    warn: Callable[[str], None],
) -> None:
    try:
        async with sink:
            async for line in read_lines(stream, warn=warn):
                if not line.strip():
                    continue
                try:
                    message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                except ValueError:
                    warn(f"skill {skill!r} wrote a non-JSON-RPC line to stdout; ignored")
                    continue
                await sink.send(SessionMessage(message))
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass
    finally:
        exited.set()


async def pump_stdin(
    source: MemoryObjectReceiveStream[SessionMessage], stdin: anyio.abc.ByteSendStream
) -> None:
    try:
        async with source:
            async for message in source:
                data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                await stdin.send(data.encode() + b"\n")
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        pass
    finally:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await stdin.aclose()


async def first_of(*waits: Callable[[], Any]) -> None:
    """Return as soon as the first of `waits` returns (the others are cancelled)."""
    async with anyio.create_task_group() as group:

        async def run(wait: Callable[[], Any]) -> None:
            await wait()
            group.cancel_scope.cancel()

        for wait in waits:
            group.start_soon(run, wait)


async def wait_or_kill(process: SkillProcess, grace_s: float) -> int | None:
    """Wait up to `grace_s` for the exit, then kill and wait as long again; return the code."""
    with anyio.move_on_after(grace_s):
        return await process.wait()
    await process.kill()
    with anyio.move_on_after(grace_s):
        return await process.wait()
    return None
