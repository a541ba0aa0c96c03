"""The backend seam: what a run needs from whatever starts its sandbox (decision 42).

A run asks a `SandboxBackend` to open the sandbox of its plan (an async context manager whose
exit removes everything), and the `SandboxHandle` it yields to start each skill's stdio as the
skill's own uid with exactly its environment, to say whether egress is gone and to wait until
the sandbox stops. `ps`, `down` and `gc` find a run's objects by its labels. Docker
(`DOCKER_BACKEND`, over `open_sandbox`) is one implementation; `perstack_sandbox.kube` is the
other. The gateway, the skills and the audit sit on top and never learn which one ran.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal, Protocol, get_args

import anyio
import anyio.abc

from perstack_sandbox.isolation import DEFAULT_ISOLATION

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

    from perstack_sandbox.engine._policy import TestNetwork
    from perstack_sandbox.engine._sweep import RunInfo
    from perstack_sandbox.isolation import Isolation
    from perstack_sandbox.plan import SandboxPlan, SealedSecrets
    from perstack_sandbox.state import RunState

BackendName = Literal["docker", "kubernetes"]
BACKEND_NAMES: Final = get_args(BackendName)
DEFAULT_BACKEND: Final[BackendName] = "docker"


class StdioProcess(Protocol):
    """A skill process as the backend started it: three byte streams, a wait and a kill."""

    @property
    def stdin(self) -> anyio.abc.ByteSendStream:
        """The process's standard input."""

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream:
        """The process's standard output."""

    @property
    def stderr(self) -> anyio.abc.ByteReceiveStream:
        """The process's standard error."""

    async def wait(self) -> int | None:
        """Wait for the exit and return the code, when known."""

    async def kill(self) -> None:
        """Kill the process and everything it started."""


class SandboxHandle(Protocol):
    """A started sandbox, as a run uses it."""

    @property
    def run_id(self) -> str:
        """The run this sandbox belongs to."""

    def proxy_env(self, skill: str | None = None) -> dict[str, str]:
        """Return the proxy and CA variables of `skill`'s process (its credential in the URL)."""

    def skill_uid(self, index: int) -> int:
        """Return the uid of the `index`-th stdio skill."""

    def host_proxy_url_for(self, skill: str) -> str:
        """Return the proxy as the host reaches it, with `skill`'s credential (remote skills)."""

    def exec_stdio(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        user: int,
        workdir: str,
    ) -> AbstractAsyncContextManager[StdioProcess]:
        """Start `argv` as skill uid `user` with exactly `env`; killed on exit."""

    async def egress_problem(self) -> str | None:
        """Return why the sandbox lost its egress proxy, or None while it runs."""

    async def wait_egress(self) -> None:
        """Wait until the egress proxy answers (the skills may have started before it)."""

    async def wait_stopped(self) -> str:
        """Wait until the sandbox stops or disappears; return how, as a sentence."""


class SandboxBackend(Protocol):
    """Starts, lists and removes sandboxes on one kind of engine."""

    @property
    def name(self) -> BackendName:
        """The name `--backend` selects this backend by."""

    def open_sandbox(  # noqa: PLR0913 - keyword-only settings of one sandbox
        self,
        plan: SandboxPlan,
        *,
        image: str,
        run: RunState,
        workspace: Path | None = None,
        isolation: Isolation = DEFAULT_ISOLATION,
        sealed: SealedSecrets | None = None,
        test_network: TestNetwork | None = None,
    ) -> AbstractAsyncContextManager[SandboxHandle]:
        """Start `plan`'s sandbox from `image`; everything of the run goes on exit.

        `sealed` hands the proxy the real values behind the skills' placeholders (decision 37);
        `test_network` opens the proxy to the test suites' own listeners (tests only).
        """

    async def list_runs(self) -> list[RunInfo]:
        """Return every run whose labelled objects exist, oldest first."""

    async def take_down(self, run_id: str) -> list[str]:
        """Remove every object of `run_id` (live owner or not); name them."""

    async def collect_garbage(self) -> list[str]:
        """Remove the objects of runs whose owner is gone; name them."""


class DockerBackend:
    """The Docker engine backend: `open_sandbox` and the sweep, unchanged, behind the seam."""

    @property
    def name(self) -> BackendName:
        """The name `--backend` selects this backend by."""
        return "docker"

    def open_sandbox(  # noqa: PLR0913 - keyword-only settings of one sandbox
        self,
        plan: SandboxPlan,
        *,
        image: str,
        run: RunState,
        workspace: Path | None = None,
        isolation: Isolation = DEFAULT_ISOLATION,
        sealed: SealedSecrets | None = None,
        test_network: TestNetwork | None = None,
    ) -> AbstractAsyncContextManager[SandboxHandle]:
        """Start `plan`'s sandbox on the Docker engine (see `engine.open_sandbox`).

        Raises:
            UsageError: the Expert's folder cannot be checked (on entering).
            IsolationError: gVisor was asked for and is not available (on entering).
            EngineError: the engine refused an operation (on entering or leaving).

        """
        from perstack_sandbox.engine._sandbox import open_sandbox  # noqa: PLC0415 - lazy docker

        return open_sandbox(
            plan,
            image=image,
            run=run,
            workspace=workspace,
            isolation=isolation,
            sealed=sealed,
            test_network=test_network,
            skills_first=True,  # the run awaits `wait_egress` before it is ready
        )

    async def list_runs(self) -> list[RunInfo]:
        """Return every run with labelled Docker objects, oldest first.

        Raises:
            EngineError: the engine could not be reached.

        """
        from perstack_sandbox.engine import _sweep  # noqa: PLC0415 - lazy docker

        return await anyio.to_thread.run_sync(_sweep.list_runs)

    async def take_down(self, run_id: str) -> list[str]:
        """Remove the Docker objects of `run_id`; name them.

        Raises:
            EngineError: the engine refused a removal or could not be reached.

        """
        from perstack_sandbox.engine import _sweep  # noqa: PLC0415 - lazy docker

        return await anyio.to_thread.run_sync(_sweep.take_down, run_id)

    async def collect_garbage(self) -> list[str]:
        """Remove the Docker objects of runs whose owner died on this host; name them.

        Raises:
            EngineError: the engine refused a removal or could not be reached.

        """
        from perstack_sandbox.engine import _sweep  # noqa: PLC0415 - lazy docker

        return await anyio.to_thread.run_sync(_sweep.collect_garbage)


DOCKER_BACKEND: Final = DockerBackend()
