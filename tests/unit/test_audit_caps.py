"""Run files a sandbox can make the host write stop growing at their cap, with a marker."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from perstack_sandbox import audit, state
from perstack_sandbox.engine import _health

if TYPE_CHECKING:
    from pathlib import Path

CAP = 1000


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> state.RunState:
    """Create a fresh run folder in a private state directory."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "state"))
    return state.create_run("capped", run_id="20260101-000000-bbbbbb")


def capped(path: Path, cap: int = CAP) -> audit.CappedFile:
    """Open `path` for appending, capped at `cap` bytes."""
    return audit.open_capped(path, state.private_fd(path, append=True), cap)


def test_a_capped_log_keeps_whole_lines_up_to_its_cap_then_one_marker(tmp_path):
    """Lines past the cap are dropped; the file ends with the last whole line and the marker."""
    path = tmp_path / "skills.log"
    with capped(path) as log:
        for number in range(200):
            log.write(f"line {number:04}\n".encode())
    text = path.read_text()
    kept, marker = text.splitlines()[:-1], text.splitlines()[-1]
    assert kept == [f"line {number:04}" for number in range(len(kept))]
    assert len("\n".join(kept)) < CAP
    assert marker == f"[skills.log reached its cap of {CAP} bytes; later lines are not kept]"
    assert path.stat().st_size <= CAP + len(marker) + 1


def test_a_capped_json_lines_file_ends_with_a_truncation_record(tmp_path):
    """The proxy's audit copy stays JSON lines: its marker is a record readers can skip."""
    path = tmp_path / "audit.jsonl"
    with capped(path) as copy:
        for conn in range(100):
            copy.write(json.dumps({"event": "decision", "conn": conn}).encode() + b"\n")
    records, bad = audit.read_jsonl(path)
    assert bad == 0
    assert records[-1] == {"event": "truncated", "file": "audit.jsonl", "capBytes": CAP}
    assert [record["conn"] for record in records[:-1]] == list(range(len(records) - 1))


def test_a_line_split_across_writes_is_never_left_half_written(tmp_path):
    """Frames that end mid-line: the cut falls on a line end, or the marker starts a new line."""
    path = tmp_path / "audit.jsonl"
    with capped(path, cap=30) as copy:
        copy.write(b'{"a":1}\n{"b":')
        copy.write(b"2" * 100)
    marker = b'{"event":"truncated","file":"audit.jsonl","capBytes":30}\n'
    assert path.read_bytes() == b'{"a":1}\n{"b":\n' + marker


def test_a_full_file_counts_what_it_drops_and_stays_full_when_reopened(tmp_path):
    """Once full, writes only count bytes; reopening a full file adds nothing."""
    path = tmp_path / "proxy.log"
    with capped(path, cap=10) as log:
        log.write(b"x" * 40 + b"\n")
        log.write(b"more\n")
        assert (log.is_full, log.dropped) == (True, 46)
    size = path.stat().st_size
    with capped(path, cap=10) as log:
        log.write(b"again\n")
    assert path.stat().st_size == size


def test_skills_log_stops_growing_at_its_cap_however_much_a_skill_writes(run, monkeypatch):
    """A skill writing 4 MiB of stderr through RunFiles leaves skills.log at its cap.

    Fails when (checked by hand): `RunFiles` opens skills.log without `open_capped` (the
    file grows to the full 4 MiB, escaped).
    """
    monkeypatch.setattr(audit._sinks, "SKILLS_LOG_CAP_BYTES", 64 * 1024)
    files = audit.RunFiles(run)
    for _ in range(1024):
        files.skill_stderr("hostile", "x" * 4096)
    files.close()
    size = run.skills_log_path.stat().st_size
    assert 60 * 1024 < size <= 64 * 1024 + 200
    assert run.skills_log_path.read_text().endswith("later lines are not kept]\n")


def test_the_default_caps_are_the_documented_sizes():
    """skills.log and the proxy's log stop at 16 MiB, the proxy's audit copy at 64 MiB."""
    caps = (audit.SKILLS_LOG_CAP_BYTES, audit.PROXY_LOG_CAP_BYTES, audit.PROXY_AUDIT_CAP_BYTES)
    assert caps == (16 << 20, 16 << 20, 64 << 20)


class FrameSocket:
    """A Docker attach stream: `count` stdout frames of one audit line each, then EOF."""

    def __init__(self, count: int) -> None:
        """Prepare `count` frames."""
        line = json.dumps({"event": "decision", "decision": "deny"}).encode() + b"\n"
        frame = b"\x01\0\0\0" + len(line).to_bytes(4, "big") + line
        self.data = frame * count

    def recv(self, size: int) -> bytes:
        """Return the next bytes of the stream (empty at the end)."""
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


def test_the_hosts_copy_of_the_proxy_audit_stops_at_its_cap(run, monkeypatch):
    """However many requests a skill makes, audit.jsonl on the host ends at its cap.

    Fails when (checked by hand): `_copy_frames` writes to a plain file (all 20,000 lines).
    """
    monkeypatch.setattr(_health, "AUDIT_CAP", 64 * 1024)
    _health._copy_frames(FrameSocket(20_000), run)
    records, bad = audit.read_jsonl(run.audit_path)
    assert bad == 0
    assert records[-1] == {"event": "truncated", "file": "audit.jsonl", "capBytes": 64 * 1024}
    assert run.audit_path.stat().st_size <= 64 * 1024 + 100
