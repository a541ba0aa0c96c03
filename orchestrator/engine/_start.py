"""The start of one sandbox's objects: the fewest engine calls, in parallel where they can be.

Internal network (its subnet fixes the proxy's address), then {proxy: create, connect egress,
start, one inspect, a healthz poll from the host; the grant's control client beside that
poll} || {[workspace layer: volume, container, wait until it answers (see `_workspace`)],
sandboxes: create, start}. With an early start the skills need not wait for the proxy's
branch (docs/architecture.md, decision 50).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from perstack_sandbox.engine import _health, _workspace
from perstack_sandbox.engine._containers import (
    PROXY_PORT,
    SandboxSpec,
    Started,
    internal_network,
    start_sandbox_container,
    start_workspace_layer,
)
from perstack_sandbox.engine._proxybox import (
    create_proxy,
    proxy_address,
    proxy_addresses,
    run_proxy,
)
from perstack_sandbox.errors import EngineError
from perstack_sandbox.images import ensure_proxy_image

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from perstack_sandbox.state import RunState


async def start(
    spec: SandboxSpec,
    run: RunState,
    *,
    early: anyio.abc.TaskGroup | None = None,
    on_proxy: Callable[[str, anyio.Event], Coroutine[Any, Any, None]] | None = None,
) -> Started:
    """Create and start the network, proxy and sandboxes of `spec`; wait for the proxy.

    Objects are labelled with the run id as they are made; the caller's teardown removes them
    by that label whatever point this reached. With `early` (a task group that outlives the
    returned sandbox), this returns once the sandbox containers run and the proxy exists: the
    rest of the proxy's start runs in `early`, which fails with it, and `Started.proxy_up`
    is set once the proxy answers (decision 50). `on_proxy(proxy_id, answers)` runs from the
    moment the proxy container runs, beside the wait for its answer (`answers` is set then),
    and `proxy_up` waits for it too: the grant of the skills' tokens (decision 51).

    Raises:
        EngineError: an engine call failed, or the proxy did not become ready.

    """
    if spec.workspace:
        await anyio.to_thread.run_sync(_workspace.check_host)
    proxy_image = await anyio.to_thread.run_sync(ensure_proxy_image)
    network, subnet = await anyio.to_thread.run_sync(internal_network, spec)
    proxy_ip = proxy_address(subnet)
    proxy: list[str] = []
    host_ip: list[str] = []
    created, up = anyio.Event(), anyio.Event()
    sandboxes: dict[int, str] = {}

    async def make_proxy() -> None:
        proxy.append(
            await anyio.to_thread.run_sync(create_proxy, spec, network, proxy_image, proxy_ip)
        )
        created.set()
        await anyio.to_thread.run_sync(run_proxy, spec, proxy[0], proxy_image)
        answers = anyio.Event()
        async with anyio.create_task_group() as group:
            if on_proxy is not None:
                group.start_soon(on_proxy, proxy[0], answers)
            host_ip.append(await _proxy_answers(proxy[0], network, proxy_ip, run))
            answers.set()
        up.set()

    async def make_sandbox(index: int, view: str | None) -> None:
        sandboxes[index] = await anyio.to_thread.run_sync(
            start_sandbox_container, spec, network, view, index
        )

    async def make_sandboxes() -> None:
        # The layer first: every sandbox binds a mount that already answers (any runtime).
        view = await anyio.to_thread.run_sync(start_workspace_layer, spec)
        async with anyio.create_task_group() as group:
            for index in range(max(1, spec.containers)):
                group.start_soon(make_sandbox, index, view)

    if early is None:
        async with anyio.create_task_group() as group:
            group.start_soon(make_proxy)
            group.start_soon(make_sandboxes)
    else:
        early.start_soon(make_proxy)  # its failure cancels the caller's body
        await make_sandboxes()
        await created.wait()
    containers = tuple(sandboxes[index] for index in sorted(sandboxes))
    return Started(containers, proxy[0], proxy_ip, host_ip[0] if host_ip else "", network, up)


async def _proxy_answers(proxy_id: str, network: str, address: str, run: RunState) -> str:
    """Copy the started proxy's output, wait until it answers; return its egress address."""
    internal, egress = await anyio.to_thread.run_sync(proxy_addresses, proxy_id, network)
    if internal != address:  # the engine gave it another: the skills' proxy URL would be wrong
        raise EngineError(f"the proxy {proxy_id[:12]} is at {internal}, not at {address}")
    await anyio.to_thread.run_sync(_health.follow_logs, proxy_id, run)
    await _health.wait_ready(proxy_id, egress, PROXY_PORT)
    return egress
