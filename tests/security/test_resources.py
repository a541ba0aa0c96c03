"""Resources: a fork bomb and a memory hog hit the sandbox's limits; the rest stays healthy.

They run in a second sandbox of the same Expert (started for this module), so the session's
sandbox is the "other sandbox" that must keep answering, and the host must keep forking.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anyio
import docker
import pytest
from support import EXPERT, Hostile, quiet

from perstack_sandbox import state
from perstack_sandbox.errors import SkillError
from perstack_sandbox.launch import LaunchOptions, open_expert
from perstack_sandbox.plan import DEFAULT_MEMORY_BYTES, DEFAULT_PIDS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

HOLD_DEADLINE_S = 60  # the bomb holds its processes until the test has checked the others
MIB = 1024**2
# The attacks stop themselves past the limit, so that removing the limit by hand (to see the
# test fail) cannot hurt this machine.
FORK_CAP = DEFAULT_PIDS * 8
HOG_CAP_MIB = DEFAULT_MEMORY_BYTES // MIB + 512

# Light on purpose (no imports beyond these): under gVisor each process costs more memory, and
# this test is about the pids limit (the memory limit has its own test).
FORK_BOMB = f"""
import errno, json, os, time
r, w = os.pipe()
children, error = 0, None
while children < {FORK_CAP}:
    try:
        pid = os.fork()
    except OSError as exc:
        error = errno.errorcode.get(exc.errno, str(exc.errno))
        break
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    children += 1
with open('/workspace/full', 'w') as f:
    json.dump({{'children': children, 'error': error}}, f)
deadline = time.monotonic() + {HOLD_DEADLINE_S}
while not os.path.exists('/workspace/release') and time.monotonic() < deadline:
    time.sleep(0.05)
os.close(w)
for _ in range(children):
    os.wait()
print(json.dumps({{'children': children, 'error': error}}))
"""
MEMORY_HOG = f"""
import json
chunks = []
try:
    while len(chunks) < {HOG_CAP_MIB}:
        chunks.append(b'x' * {MIB})
    print(json.dumps({{'allocated_mib': len(chunks)}}))
except MemoryError:
    print(json.dumps({{'memory_error_at_mib': len(chunks)}}))
"""


@pytest.fixture(scope="module")
async def second(
    hostile: Hostile, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Hostile]:
    """Start a second sandbox of the hostile Expert, with its own workspace."""
    workspace = tmp_path_factory.mktemp("resources-workspace")
    workspace.chmod(0o777)
    options = LaunchOptions(
        config_path=hostile.run_config,
        expert=EXPERT,
        workspace=workspace,
        prefix_tools=True,
        progress=quiet,
        isolation=hostile.isolation,
    )
    async with open_expert(options) as gateway:
        run = state.latest_run()
        assert run is not None
        assert run.run_id != hostile.run.run_id
        yield Hostile(
            gateway,
            run,
            hostile.secrets,
            hostile.canaries,
            workspace,
            hostile.run_config,
            hostile.isolation,
        )


async def wait_for_file(path: anyio.Path) -> str:
    """Wait (bounded) until `path` exists with content, and return it."""
    with anyio.fail_after(HOLD_DEADLINE_S):
        while not (await path.exists() and await path.read_text()):  # noqa: ASYNC110 - a file the sandbox writes
            await anyio.sleep(0.05)
    return await path.read_text()


async def test_a_fork_bomb_hits_the_pids_limit_while_the_host_and_others_stay_healthy(
    hostile: Hostile, second: Hostile
) -> None:
    """Forking stops with EAGAIN below the pids limit, and everything else keeps working.

    While the bomb holds its processes, the host forks and the session's sandbox answers;
    afterwards the bombed sandbox answers again.

    Under gVisor the limit is RLIMIT_NPROC, enforced by gVisor's kernel with the same EAGAIN.

    Fails when: the sandbox has no pids limit (checked by hand, runc: `pids_limit=None` lets
    the bomb reach its own cap of FORK_CAP children with no error); under gVisor, without
    RLIMIT_NPROC (checked by hand: the bomb exhausts the host backstop and its own sandbox
    dies, no EAGAIN).
    """
    full = anyio.Path(second.workspace / "full")
    outcome: dict[str, object] = {}

    async def bomb() -> None:
        outcome.update(await second.python(FORK_BOMB))

    async with anyio.create_task_group() as group:
        group.start_soon(bomb)
        held = json.loads(await wait_for_file(full))
        try:
            assert await hostile.probe("emit('alive')") == "alive"
            assert (await anyio.run_process(["true"], check=False)).returncode == 0
            assert docker.from_env().ping()
        finally:
            await anyio.Path(second.workspace / "release").touch()
    assert held["error"] == "EAGAIN"
    assert 0 < held["children"] < DEFAULT_PIDS
    assert outcome["exit"] == 0, outcome
    assert (await second.whoami("hostile"))["uid"] > 0


async def test_a_memory_hog_is_stopped_at_the_memory_limit(
    hostile: Hostile, second: Hostile
) -> None:
    """runc: allocating past the limit gets the hog killed (SIGKILL); the others stay healthy.

    gVisor sees the limit as its total memory, but has no OOM killer of its own: the host's
    kills the hog's whole container (its gVisor kernel), which is the hog skill's alone. The
    call fails at once (SIGKILL, 137), the decoy of the same run (its own container) and the
    session's sandbox still answer.

    Fails when: the sandbox has no memory limit (checked by hand, runc: `mem_limit=None` lets
    the hog allocate its whole cap of HOG_CAP_MIB and exit normally); under gVisor, when the
    engine does not end a skill's exec once its container dies (checked by hand:
    `end_with_container` as a no-op leaves the call hanging until the deadline).
    """
    if hostile.isolation == "runc":
        code = "emit(int(open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read()))"
        assert await second.probe(code) == DEFAULT_MEMORY_BYTES
        done = await second.python(MEMORY_HOG)
        assert done["exit"] == -9, done
        assert done["stdout"] == ""
        assert (await second.whoami("hostile"))["uid"] > 0
    else:
        code = "emit([l.split()[1] for l in open('/proc/meminfo') if l.startswith('MemTotal')])"
        assert await second.probe(code) == [str(DEFAULT_MEMORY_BYTES // 1024)]
        with anyio.fail_after(HOLD_DEADLINE_S), pytest.raises(SkillError, match="code 137"):
            await second.python(MEMORY_HOG)
        assert (await second.whoami("decoy"))["uid"] > 0
    assert await hostile.probe("emit('alive')") == "alive"
