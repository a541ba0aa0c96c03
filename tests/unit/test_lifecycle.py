"""Pure parts of the lifecycle: subnet picking, the run journal, the reaper's rules, SIGTERM.

No Docker here: the engine side is in tests/integration/test_engine_scale.py.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from clock_support import FakeClock

from perstack_sandbox import procs, state
from perstack_sandbox.cli import _app
from perstack_sandbox.engine import _egress, _gate, _patience, _reaper, _subnets
from perstack_sandbox.errors import EngineError, UsageError

# /proc/net/route of a host with a default route, a LAN, a VPN and the Docker bridge.
ROUTES = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
tun0\t0000D50A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
"""


def net(text: str) -> ipaddress.IPv4Network:
    """Shorthand for an IPv4 network."""
    return ipaddress.IPv4Network(text)


def test_the_default_range_is_a_private_slash_16_cut_into_slash_28s():
    """Without settings, sandbox networks are /28s of 10.213.0.0/16: 4096 of them."""
    pool = _subnets.configured_pool({})
    assert pool.network == net("10.213.0.0/16")
    assert pool.prefix == 28
    assert pool.size == 4096
    assert pool.subnet(1) == net("10.213.0.16/28")


def test_the_range_and_prefix_come_from_the_environment():
    """`PERSTACK_SANDBOX_SUBNET_POOL` and `_PREFIX` replace the defaults."""
    pool = _subnets.configured_pool({_subnets.POOL_ENV: "172.30.0.0/20", _subnets.PREFIX_ENV: "29"})
    assert (pool.network, pool.prefix, pool.size) == (net("172.30.0.0/20"), 29, 512)


@pytest.mark.parametrize(
    ("pool", "prefix", "says"),
    [
        ("8.8.0.0/16", "28", "not a private range"),
        ("10.0.0.0/33", "28", "not an IPv4 network"),
        ("10.213.0.1/16", "28", "not an IPv4 network"),
        ("fd00::/64", "28", "not an IPv4 network"),
        ("10.213.0.0/16", "30", "/29"),
        ("10.213.0.0/16", "12", "/16"),
        ("10.213.0.0/16", "x", "prefix"),
    ],
)
def test_a_bad_range_or_prefix_is_a_usage_error_that_names_the_variable(pool, prefix, says):
    """A public, malformed or too-small setting is refused before anything is created."""
    with pytest.raises(UsageError, match=says) as refused:
        _subnets.configured_pool({_subnets.POOL_ENV: pool, _subnets.PREFIX_ENV: prefix})
    assert "PERSTACK_SANDBOX_SUBNET" in str(refused.value)


def test_host_routes_are_read_without_the_default_route():
    """Every routed destination is taken, except 0.0.0.0/0 (which would take everything)."""
    assert _subnets.parse_routes(ROUTES) == [
        net("192.0.2.0/24"),
        net("10.213.0.0/16"),
        net("172.17.0.0/16"),
    ]


def test_a_picked_subnet_overlaps_no_route_and_no_network():
    """Routes and engine subnets inside the range are skipped, whatever the random start."""
    pool = _subnets.configured_pool({_subnets.POOL_ENV: "10.99.0.0/26"})
    taken = [net("10.99.0.0/27"), net("10.99.0.32/28"), net("192.168.0.0/16")]
    for start in range(pool.size):
        assert _subnets.pick_subnet(pool, taken, start=start) == net("10.99.0.48/28")


def test_a_full_range_gives_no_subnet():
    """When every subnet overlaps something, the picker says so instead of overlapping."""
    pool = _subnets.configured_pool({_subnets.POOL_ENV: "10.99.0.0/26"})
    assert _subnets.pick_subnet(pool, [net("10.0.0.0/8")]) is None


def test_a_range_covered_by_a_host_route_is_full():
    """A VPN route over the whole default range leaves nothing to pick: never a collision."""
    pool = _subnets.configured_pool({})
    assert _subnets.pick_subnet(pool, _subnets.parse_routes(ROUTES)) is None


def test_engine_subnets_keep_ipv4_networks_only():
    """IPv6 and malformed IPAM entries are ignored."""
    found = _subnets.parse_subnets(["172.18.0.0/16", "fd00::/64", "bogus"])
    assert found == [net("172.18.0.0/16")]


def test_a_journal_is_open_from_its_first_intent_until_it_is_closed(tmp_path):
    """Each intent is a line before the create; the closing line ends it."""
    run = state.RunState(run_id="r", path=tmp_path)
    assert not run.is_journal_open()
    run.record_intent("network", "perstack-r-net", {"perstack-sandbox.run": "r"})
    assert run.is_journal_open()
    entries = run.journal()
    assert entries[0]["kind"] == "network"
    assert entries[0]["name"] == "perstack-r-net"
    assert entries[0]["labels"] == {"perstack-sandbox.run": "r"}
    run.close_journal("torn down")
    assert not run.is_journal_open()
    assert run.journal()[-1]["how"] == "torn down"


def test_a_torn_last_line_from_a_crash_mid_write_is_skipped(tmp_path):
    """A half-written line does not hide the intents before it."""
    run = state.RunState(run_id="r", path=tmp_path)
    run.record_intent("container", "perstack-r-proxy", {})
    with run.journal_path.open("a", encoding="utf-8") as file:
        file.write('{"event": "clo')
    assert [entry["name"] for entry in run.journal()] == ["perstack-r-proxy"]
    assert run.is_journal_open()


def test_the_journal_and_the_reapers_log_are_private_files_whatever_the_umask(tmp_path):
    """Both name runs and objects: 0600 like every state file, even under umask 0."""
    run = state.RunState(run_id="r", path=tmp_path)
    log = tmp_path / _reaper.LOG_FILE
    previous = os.umask(0)
    try:
        run.record_intent("network", "perstack-r-net", {})
        _reaper._append_private(log, "a line\n")
    finally:
        os.umask(previous)
    assert {path.stat().st_mode & 0o777 for path in (run.journal_path, log)} == {0o600}


def test_open_journals_lists_runs_and_builds_but_not_closed_ones(tmp_path, monkeypatch):
    """Both state folders are searched; a closed journal and a folder without one are not."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path))
    live = state.create_run("e", run_id="a-live")
    done = state.create_run("e", run_id="b-done")
    state.create_run("e", run_id="c-none")
    build = state.RunState(run_id="build-x", path=state.builds_dir() / "build-x")
    build.path.mkdir(parents=True)
    for run in (live, done, build):
        run.record_intent("network", f"perstack-{run.run_id}-net", {})
    done.close_journal("torn down")
    assert [run.run_id for run in state.open_journals()] == ["a-live", "build-x"]


def test_a_zombie_is_dead_and_so_is_a_reused_pid():
    """An exited child not yet waited for runs no code; another start time is another process."""
    assert procs.is_process_alive(os.getpid(), procs.process_start_ticks(os.getpid()))
    assert not procs.is_process_alive(os.getpid(), "1")
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, left a zombie
        assert not procs.is_process_alive(pid)
    finally:
        os.waitpid(pid, 0)


def scripted(*passes: tuple[list[str], bool]):
    """Return a sweep that gives `passes` in order, then nothing, and the list of calls."""
    queue = list(passes)
    calls: list[int] = []

    def sweep() -> tuple[list[str], bool]:
        calls.append(1)
        return queue.pop(0) if queue else ([], False)

    return sweep, calls


def test_a_clean_exit_is_swept_once():
    """With every journal closed and nothing found, the reaper makes one pass and stops."""
    sweep, calls = scripted()
    clock = FakeClock()
    assert (
        _reaper.sweep_until_settled(sweep, must_settle=False, clock=clock, sleep=clock.sleep) == []
    )
    assert len(calls) == 1


def test_a_crash_is_swept_until_nothing_new_appears_for_the_settle_window():
    """Objects the dead owner was still creating are removed by a later pass."""
    sweep, calls = scripted((["container a"], False), ([], False), (["network n"], False))
    clock = FakeClock()
    removed = _reaper.sweep_until_settled(sweep, must_settle=True, clock=clock, sleep=clock.sleep)
    assert removed == ["container a", "network n"]
    quiet_passes = int(_reaper.SETTLE_S / _reaper.SWEEP_INTERVAL_S)
    assert len(calls) == 3 + quiet_passes


def test_a_busy_pass_is_retried():
    """A network still in use counts as unsettled: a later pass removes it."""
    sweep, _ = scripted(([], True), (["network n"], False))
    clock = FakeClock()
    removed = _reaper.sweep_until_settled(sweep, must_settle=False, clock=clock, sleep=clock.sleep)
    assert removed == ["network n"]


def test_a_sweep_that_never_settles_gives_up_at_the_ceiling():
    """An engine that stays busy does not keep the reaper forever: it stops and says so."""
    clock = FakeClock()
    with pytest.raises(EngineError, match="gc"):
        _reaper.sweep_until_settled(
            lambda: ([], True), must_settle=True, clock=clock, sleep=clock.sleep
        )
    assert _patience.PATIENCE_S <= clock.now < _patience.PATIENCE_S + _patience.BACKOFF_MAX_S


def test_the_reaper_reads_journal_paths_until_end_of_file():
    """One JSON line per journal; a malformed line is skipped."""
    lines = iter([b'{"journal": "/s/runs/a/journal.jsonl"}\n', b"garbage\n", b""])
    assert _reaper._read_journals(lambda: next(lines)) == [Path("/s/runs/a/journal.jsonl")]


def test_the_reaper_module_imports_no_third_party_package_until_its_owner_is_gone():
    """`python -m` imports the engine package first: it must load docker and the rest lazily.

    Seen failing with engine/__init__.py importing its modules eagerly (docker, anyio, ...).
    """
    third_party = {"anyio", "docker", "httpx2", "mcp", "pydantic", "requests", "typer"}
    probe = (
        "import sys, perstack_sandbox.engine._reaper\n"
        "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "perstack_sandbox" in loaded
    assert third_party.isdisjoint(loaded)


def test_the_reaper_is_started_as_a_module_of_the_package_it_was_imported_from(
    tmp_path, monkeypatch
):
    """Its command is `-m` its own module name, with that package's folder on PYTHONPATH."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path))
    started: list[tuple[list[str], dict[str, str]]] = []

    class FakeProcess:
        pid = 1

        def __init__(self, argv: list[str], **kwargs: object) -> None:
            env = kwargs["env"]
            assert isinstance(env, dict)
            started.append((argv, env))

    monkeypatch.setattr(_reaper.subprocess, "Popen", FakeProcess)
    watch = _reaper._spawn([])
    os.close(watch.write_fd)
    [(argv, env)] = started
    assert argv[:3] == [sys.executable, "-m", "perstack_sandbox.engine._reaper"]
    root = Path(env["PYTHONPATH"].split(os.pathsep)[0])
    assert (root / "perstack_sandbox" / "engine" / "_reaper.py").is_file()


def test_the_egress_network_name_can_be_changed_for_tests(monkeypatch):
    """Tests make their own egress network instead of touching the shared one."""
    monkeypatch.delenv(_egress.EGRESS_NETWORK_ENV, raising=False)
    assert _egress.egress_network_name() == "perstack-sandbox-egress"
    monkeypatch.setenv(_egress.EGRESS_NETWORK_ENV, "itest-egress-1")
    assert _egress.egress_network_name() == "itest-egress-1"


def test_sigterm_interrupts_even_when_sigint_is_ignored():
    """A background job ignores SIGINT; SIGTERM must still interrupt the command."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt):
            _app._interrupt_on_sigterm(signal.SIGTERM, sys._getframe())
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_calls_the_current_sigint_handler():
    """The event loop's Ctrl-C handler (which cancels the command) is what SIGTERM runs."""
    calls: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: calls.append(signum))
    try:
        _app._interrupt_on_sigterm(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert calls == [signal.SIGINT]


def test_start_slots_are_counted_per_state_dir_and_freed_on_release(tmp_path):
    """With 2 slots, a third start waits; releasing one lets it through."""
    first = _gate._try_take(tmp_path, 2)
    second = _gate._try_take(tmp_path, 2)
    assert first is not None
    assert second is not None
    assert _gate._try_take(tmp_path, 2) is None
    os.close(first)
    third = _gate._try_take(tmp_path, 2)
    assert third is not None
    for fd in (second, third):
        os.close(fd)


def test_a_dead_process_holds_no_start_slot(tmp_path):
    """The kernel drops a process's locks when it dies: a crashed start blocks nobody."""
    pid = os.fork()
    if pid == 0:
        os._exit(0 if _gate._try_take(tmp_path, 1) is not None else 1)
    assert os.waitpid(pid, 0)[1] == 0
    taken = _gate._try_take(tmp_path, 1)
    assert taken is not None
    os.close(taken)


@pytest.mark.anyio
async def test_a_start_slot_is_given_back_early_and_once(tmp_path, monkeypatch):
    """`started()` frees the slot for the next start; leaving the block does not free twice."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path))
    monkeypatch.setenv(_gate.SLOTS_ENV, "1")
    async with _gate.start_slot() as started:
        assert _gate._try_take(tmp_path / _gate.SLOTS_DIR, 1) is None
        started()
        again = _gate._try_take(tmp_path / _gate.SLOTS_DIR, 1)
        assert again is not None
    os.close(again)  # still open: the block's exit closed nothing of anyone else's


@pytest.mark.parametrize(
    ("value", "expected"), [("", 2 * (os.cpu_count() or 1)), ("0", 0), ("7", 7)]
)
def test_the_number_of_start_slots_comes_from_the_environment(value, expected, monkeypatch):
    """Unset: twice the CPUs; 0 turns the limit off."""
    monkeypatch.setenv(_gate.SLOTS_ENV, value)
    assert _gate.slot_count() == expected


def test_a_malformed_number_of_start_slots_is_a_usage_error(monkeypatch):
    """A typo in the setting is bad input, not a crash."""
    monkeypatch.setenv(_gate.SLOTS_ENV, "four")
    with pytest.raises(UsageError, match=_gate.SLOTS_ENV):
        _gate.slot_count()
