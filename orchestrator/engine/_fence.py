"""The fence around a per-expert image build: its own internal network and egress proxy.

```
build container (RUN steps, non-root) ── internal network (no host address, no route out)
                                              │
                          proxy container ────┴──── egress network ──► the registries only
```
The build's RUN steps run on a network of their own, made like a sandbox's: `internal` (no
route out) with `inhibit_ipv4` (the host has no address on it, so no host listener is
reachable). The only other member is a proxy container (the sandbox's proxy image, hardened
the same way) whose allowlist is the registry hosts derived for this build; RUN steps get its
URL by IP in the proxy variables. Its decisions go to `builds/<build-id>/audit.jsonl` under
the state directory. Network and proxy carry a run label `build-...` with the owner labels,
so a crashed build's objects are swept by `gc`; a normal exit removes them at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import anyio
import anyio.to_thread

from perstack_sandbox import images, lock, state
from perstack_sandbox.engine import _health
from perstack_sandbox.engine._containers import (
    PROXY_PORT,
    SandboxSpec,
    create_internal_network,
    remove_run,
)
from perstack_sandbox.engine._proxybox import proxy_addresses, start_proxy
from perstack_sandbox.engine._sweep import remove_attached
from perstack_sandbox.errors import EngineError, ImageBuildError
from perstack_sandbox.plan import Limits
from perstack_sandbox.state import (
    BUILD_PREFIX,
    RunState,
    builds_dir,
    private_folder,
    write_private,
)
from perstack_sandbox.text import printable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from pathlib import Path

    from perstack_sandbox.plan import SandboxPlan

STOP_POLL_S: Final = 0.2  # how soon a cancelled build notices
BUILD_STOP_TIMEOUT_S: Final = 30.0  # a stopped build's step fails, then its fence goes
LOG_DRAIN_TIMEOUT_S: Final = 10.0  # the proxy's last audit lines after its container is removed
NO_PROXY: Final = "localhost,127.0.0.1,::1"


@dataclass(frozen=True, slots=True)
class Fence:
    """A ready build fence: the network to build on and the proxy the RUN steps must use."""

    build_id: str
    network_id: str
    proxy_url: str
    audit_path: Path

    def proxy_args(self) -> dict[str, str]:
        """Return the proxy variables, both cases, as build arguments (never image ENV)."""
        return {
            name: NO_PROXY if name.lower() == "no_proxy" else self.proxy_url
            for name in images.PROXY_ARGS
        }


def new_build_id() -> str:
    """Return a fresh build id: sortable by start time, unique, and safe in Docker names."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{BUILD_PREFIX}{stamp}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def build_fence(
    expert: str, hosts: Sequence[str], *, progress: Callable[[str], None]
) -> Iterator[Fence]:
    """Create the build network and its proxy allowing only `hosts`; remove both on exit.

    Raises:
        EngineError: an engine call failed, or the proxy did not become ready.

    """
    build_id = new_build_id()
    record = RunState(run_id=build_id, path=private_folder(builds_dir() / build_id))
    policy = json.dumps({"allowedDomains": sorted(hosts), "sandboxId": build_id})
    write_private(record.policy_path, policy + "\n")
    started = datetime.now(UTC).isoformat(timespec="seconds")
    record.update_meta(run_id=build_id, kind="build", expert=expert, started=started)
    record.update_meta(status="running")
    spec = SandboxSpec(build_id, expert, "", Limits(), "", None, policy, run=record)
    progress(f"build fence {build_id}: registries {', '.join(sorted(hosts)) or '(none)'}")
    follower = None
    status = "failed"
    try:
        image = images.ensure_proxy_image(progress=progress)
        network = create_internal_network(spec, role="build-network")
        proxy_id = start_proxy(spec, network, image)
        proxy_ip, proxy_host_ip = proxy_addresses(proxy_id, network)
        follower = _health.follow_logs(proxy_id, record)
        _wait_ready(proxy_id, proxy_host_ip)
        yield Fence(build_id, network, f"http://{proxy_ip}:{PROXY_PORT}", record.audit_path)
        status = "finished"
    finally:
        with contextlib.suppress(EngineError):
            remove_run(build_id)
            if record.journal_path.exists():
                record.close_journal("torn down by its owner")
        if follower is not None:
            follower.join(LOG_DRAIN_TIMEOUT_S)
        record.update_meta(status=status, ended=datetime.now(UTC).isoformat(timespec="seconds"))


def _wait_ready(proxy_id: str, host: str) -> None:
    # A thread of its own runs the event loop, so that a caller inside one is no problem.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(anyio.run, _health.wait_ready, proxy_id, host, PROXY_PORT).result()


def build_fenced(  # noqa: PLR0913 - the build's inputs, each needed
    context: Path,
    *,
    tag: str,
    expert: str,
    hosts: Sequence[str],
    buildargs: Mapping[str, str] | None = None,
    progress: Callable[[str], None] = images.no_progress,
    untagged: bool = False,
    cancel: threading.Event | None = None,
) -> tuple[str, Path]:
    """Build `context`'s Dockerfile inside a fence allowing `hosts`; return its id and audit.

    With `untagged`, the image is not tagged `tag` (see `images.build_image`). Setting
    `cancel` stops the build: the containers on the fence's network (the running step's, the
    proxy) are removed, so the step fails at once and the fence comes down as after a failure.

    Every RUN step runs on the fence's network and gets the fence's proxy in the proxy build
    arguments (the recipe's build prelude declares them, and drops root).

    Raises:
        ImageBuildError: a step failed (the error holds its output).
        EngineError: the engine failed, or the fence could not be set up.

    """
    failed: ImageBuildError | None = None
    with build_fence(expert, hosts, progress=progress) as fence, _stopping(fence, cancel):
        try:
            built = images.build_image(
                context,
                dockerfile="Dockerfile",
                tag=tag,
                buildargs={**(buildargs or {}), **fence.proxy_args()},
                network_mode=fence.network_id,
                progress=progress,
                untagged=untagged,
            )
        except ImageBuildError as exc:
            failed = exc
    if failed is not None:  # the fence is down: its audit is complete
        raise ImageBuildError(f"{failed}\n{describe_refusals(fence.audit_path)}") from failed
    return built, fence.audit_path


@contextlib.contextmanager
def _stopping(fence: Fence, cancel: threading.Event | None) -> Iterator[None]:
    """While the body runs, a watcher removes the fence's containers once `cancel` is set."""
    if cancel is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not cancel.wait(STOP_POLL_S):
            if done.is_set():
                return
        while True:  # until the build gives up: each later step starts a container of its own
            with contextlib.suppress(EngineError):
                remove_attached(fence.network_id)
            if done.wait(STOP_POLL_S):
                return

    watcher = threading.Thread(target=watch, name=f"stop {fence.build_id}", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def describe_refusals(audit_path: Path) -> str:
    """Say which hosts the build's proxy refused (a package fetching from elsewhere, say)."""
    refused: set[str] = set()
    with contextlib.suppress(OSError):
        for line in audit_path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                decision = json.loads(line)
                if isinstance(decision, dict) and decision.get("decision") == "deny":
                    refused.add(str(decision.get("host") or decision.get("rawHost")))
    # The hosts are what an install script asked for: escape them like its output.
    listed = printable(", ".join(sorted(refused))) if refused else "nothing"
    return f"the build's proxy refused {listed} (its decisions: {audit_path})"


def build_expert(
    context: Path,
    name: str,
    plan: SandboxPlan,
    progress: Callable[[str], None],
    *,
    cancel: threading.Event | None = None,
) -> str:
    """Build the per-expert context, untagged: fenced when a package is installed, else offline.

    The caller tags it `name` with its labels (`images.ensure_expert_image`).

    Raises:
        ImageBuildError: a step failed.
        EngineError: the engine, the fence or the registry look-ups failed.
        UsageError: the host's index or registry URL holds credentials: refused before any
            build, since build arguments stay in the image's history (decision 72).

    """
    if not plan.packages:  # only our own steps run: no network at all
        return images.build_image(
            context,
            dockerfile="Dockerfile",
            tag=name,
            network_mode="none",
            progress=progress,
            untagged=True,
        )
    has = {p.manager for p in plan.packages}
    built, audit = build_fenced(
        context,
        tag=name,
        expert=plan.expert,
        hosts=images.build_hosts(plan.packages),
        buildargs={
            "NPM_REGISTRY": images.npm_registry() if "npm" in has else "",
            "UV_INDEX_URL": images.python_index() if "pypi" in has else "",
        },
        progress=progress,
        untagged=True,
        cancel=cancel,
    )
    progress(f"the build's proxy decisions: {audit}")
    return built


def ensure_expert_image(
    plan: SandboxPlan,
    *,
    host_ca: bool | None = None,
    progress: Callable[[str], None] = images.no_progress,
    cancel: threading.Event | None = None,
) -> str:
    """Return the per-expert image's tag, building it in a fence when missing.

    With a `perstack-sandbox.lock` next to the plan's perstack.toml, the build installs
    exactly the locked trees, verifying every hash; a lock that does not cover the plan is
    refused. Setting `cancel` stops a fenced build at once (see `build_fenced`); the image is
    tagged only together with its labels, so a stopped build leaves no tag behind.

    Raises:
        LockError: the lock is unreadable or does not lock the plan's packages as configured.
        ImageBuildError: a build step failed (the error holds its output), or a package of
            the lock has no hash.
        EngineError: the engine, the fence, npm or pip failed.

    """
    build = functools.partial(build_expert, cancel=cancel)
    held = lock.expert_lock(lock.read_lock(lock.lock_path(plan.config_dir)), plan.expert)
    return images.ensure_expert_image(
        plan, build=build, host_ca=host_ca, progress=progress, lock=held
    )


def resolve_lock(
    plan: SandboxPlan, *, progress: Callable[[str], None] = images.no_progress
) -> lock.JsonObject:
    """Resolve the plan's packages inside a build fence: its lock entry, tools not yet in.

    Raises:
        ImageBuildError: a resolution failed. EngineError: the engine or the fence failed.

    """
    base = images.ensure_base_image(progress=progress)
    skills: dict[str, lock.JsonObject] = {s.name: {"package": None} for s in plan.skills}
    if plan.packages:  # local skills only: nothing to resolve, no build
        progress(f"resolving {len(plan.packages)} packages of expert {plan.expert} in a fence")

        def fenced(context: Path, collect: Callable[[str], None]) -> str:
            def both(line: str) -> None:
                collect(line)
                progress(line)

            return build_expert(context, f"{images.EXPERT_REPO}-resolve:{plan.expert}", plan, both)

        with state.build_context("resolve") as context:
            resolved = images.resolve_packages(plan, base, fenced, context)
        for name, package in resolved.items():
            skills[name]["package"] = package
    base_id = images.image_id(base) or ""
    return {"baseImage": base_id, "skills": skills, "source": lock.plan_source(plan)}


async def ensure_expert_image_async(
    plan: SandboxPlan, *, progress: Callable[[str], None] = images.no_progress
) -> str:
    """`ensure_expert_image` off the event loop; cancelling it stops the build and cleans up.

    On cancellation (the CLI's Ctrl-C or SIGTERM, a caller's cancel scope) the build is told
    to stop, and its fence (network and proxy) is removed before this returns, within
    `BUILD_STOP_TIMEOUT_S`; past that, the owner's reaper removes what is left once the
    process is gone.

    Raises:
        ImageBuildError: a build step failed.
        EngineError: the engine, npm or pip failed.

    """
    cancel, finished = threading.Event(), threading.Event()

    def build() -> str:
        try:
            return ensure_expert_image(plan, progress=progress, cancel=cancel)
        finally:
            finished.set()

    try:
        return await anyio.to_thread.run_sync(build, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        cancel.set()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(finished.wait, BUILD_STOP_TIMEOUT_S)
        raise
