"""The audit summariser on hand-written JSON lines, the tool-call writer, and `audit` on the CLI."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import anyio
import pytest

from perstack_sandbox import audit, cli, state
from perstack_sandbox.errors import UsageError
from perstack_sandbox.gateway import open_gateway
from perstack_sandbox.skills import SkillSession, SkillSpec, local_process

SKILL = Path(__file__).parents[1] / "fixtures" / "stdlib_skill.py"
SECRET_ARGUMENT = "value-that-must-never-be-logged"  # noqa: S105 - a canary, not a password


def decision(  # noqa: PLR0913 - every field of a decision line
    conn, host, decision="deny", reason="not-allowed", *, raw=None, time="T1", port=443
):
    """Return one decision line as the proxy writes it."""
    return {
        "time": time,
        "event": "decision",
        "conn": conn,
        "rawHost": raw if raw is not None else host,
        "host": host,
        "port": port,
        "decision": decision,
        "reason": reason,
    }


def close(conn, up, down):
    """Return one close line as the proxy writes it."""
    return {"time": "T9", "event": "close", "conn": conn, "bytesUp": up, "bytesDown": down}


def write_lines(path: Path, lines: list[object], tail: str = "") -> None:
    """Write JSON lines, optionally followed by a raw (e.g. truncated) tail."""
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + tail, encoding="utf-8")


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> state.RunState:
    """Create a fresh run folder in a private state directory."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "state"))
    return state.create_run("audited", run_id="20260101-000000-aaaaaa")


def test_decisions_and_closes_fold_into_per_host_counts_reasons_bytes_and_times(run):
    """Allowed and refused counts, reasons, bytes (joined by conn) and first/last times per host."""
    write_lines(
        run.audit_path,
        [
            decision(1, "api.example.com", "allow", "allowed", time="2026-01-01T00:00:01"),
            close(1, 100, 2000),
            decision(2, "api.example.com", "allow", "allowed", time="2026-01-01T00:00:05"),
            close(2, 10, 20),
            decision(3, "api.example.com", "deny", "sni-mismatch", time="2026-01-01T00:00:03"),
            close(3, 0, 0),
            decision(4, "evil.example", time="2026-01-01T00:00:02"),
            decision(
                5, "evil.example", time="2026-01-01T00:00:04", port=80, reason="port-not-allowed"
            ),
        ],
    )
    hosts = {h.host: h for h in audit.summarise_run(run).hosts}
    api, evil = hosts["api.example.com"], hosts["evil.example"]
    assert (api.allowed, api.refused, api.reasons) == (2, 1, {"sni-mismatch": 1})
    assert (api.bytes_up, api.bytes_down) == (110, 2020)
    assert (api.first, api.last) == ("2026-01-01T00:00:01", "2026-01-01T00:00:05")
    assert (evil.allowed, evil.refused) == (0, 2)
    assert evil.reasons == {"not-allowed": 1, "port-not-allowed": 1}
    assert sorted(evil.ports) == [80, 443]


def test_each_host_names_the_skills_whose_credential_asked_for_it(run):
    """Per-skill egress: a host's summary and text line name every skill that tried it."""
    write_lines(
        run.audit_path,
        [
            {**decision(1, "api.example.com", "allow", "allowed"), "skill": "hostile"},
            {**decision(2, "api.example.com"), "skill": "decoy"},
            {**decision(3, "api.example.com", "allow", "allowed"), "skill": "hostile"},
            decision(4, "other.example"),  # a trail from before per-skill credentials
        ],
    )
    summary = audit.summarise_run(run)
    hosts = {h.host: h for h in summary.hosts}
    assert sorted(hosts["api.example.com"].skills) == ["decoy", "hostile"]
    assert hosts["other.example"].skills == []
    assert "api.example.com  port 443  skills decoy,hostile  allowed 2" in audit.render_text(
        summary
    )


def test_a_refusal_without_a_canonical_host_is_listed_under_its_raw_host(run):
    """An IP literal has no canonical host: the raw (escaped) spelling names it."""
    write_lines(
        run.audit_path,
        [decision(1, None, reason="host-ip-literal", raw="169.254.169.254"), close(1, 0, 0)],
    )
    (host,) = audit.summarise_run(run).hosts
    assert host.host == "169.254.169.254"
    assert host.reasons == {"host-ip-literal": 1}


def test_a_crashed_run_is_read_truncated_line_counted_and_no_end_time(run):
    """A half-written last line and a non-object line are skipped and counted; ended is None."""
    write_lines(
        run.audit_path,
        [decision(1, "a.example", "allow", "allowed"), [1, 2]],
        tail='{"time": "T", "event": "deci',
    )
    write_lines(run.tools_path, [], tail='{"skill": "x", "to')
    summary = audit.summarise_run(run)
    assert [h.host for h in summary.hosts] == ["a.example"]
    assert summary.unreadable_lines == {"audit.jsonl": 2, "tools.jsonl": 1}
    assert summary.ended is None
    text = audit.render_text(summary)
    assert "no end time (still running, or it crashed)" in text
    assert "audit.jsonl: 2" in text


def test_missing_files_are_an_empty_trail(tmp_path, monkeypatch):
    """A run folder without audit or tool files summarises to nothing, without error."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path))
    folder = tmp_path / "runs" / "20260101-000000-bbbbbb"
    folder.mkdir(parents=True)
    summary = audit.summarise_run(state.RunState("20260101-000000-bbbbbb", folder))
    assert (summary.hosts, summary.tools, summary.status) == ([], [], "unknown")


def test_tool_calls_fold_per_skill_and_tool_with_outcomes_durations_and_shapes(run):
    """Each (skill, tool) gets its call count, outcomes, total time and distinct shapes."""
    calls = [
        {"skill": "s", "tool": "t", "argShape": {"q": "str"}, "durationMs": 5, "outcome": "ok"},
        {"skill": "s", "tool": "t", "argShape": {"q": "str"}, "durationMs": 7.5, "outcome": "ok"},
        {"skill": "s", "tool": "t", "argShape": {}, "durationMs": 1, "outcome": "isError"},
        {"skill": "r", "tool": "u", "argShape": {}, "durationMs": 2, "outcome": "error"},
    ]
    write_lines(run.tools_path, calls)
    summary = audit.summarise_run(run)
    tools = {(t.skill, t.tool): t for t in summary.tools}
    assert tools["s", "t"].calls == 3
    assert tools["s", "t"].outcomes == {"ok": 2, "isError": 1}
    assert tools["s", "t"].total_ms == pytest.approx(13.5)
    assert tools["s", "t"].shapes == [{"q": "str"}, {}]
    assert audit.tool_counts(summary) == {"s/t": 3, "r/u": 1}
    assert summary.to_json()["tools"][0] == {
        "skill": "r",
        "tool": "u",
        "calls": 1,
        "outcomes": {"error": 1},
        "totalMs": 2.0,
        "shapes": [{}],
    }


def test_find_run_defaults_to_the_latest_and_refuses_unknown_or_odd_ids(run):
    """No id gives the latest run; an unknown id or a path-like id is a usage error."""
    later = state.create_run("audited", run_id="20260101-000001-cccccc")
    assert audit.find_run(None).run_id == later.run_id
    assert audit.find_run(run.run_id).path == run.path
    for bad in ("nope", "../runs", "..", ""):
        with pytest.raises(UsageError):
            audit.find_run(bad)


def test_find_run_without_any_run_says_where_it_looked(tmp_path, monkeypatch):
    """With no run recorded, the error names the runs folder."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path))
    with pytest.raises(UsageError, match="no runs recorded"):
        audit.find_run(None)


def test_run_files_write_calls_as_json_lines_and_everything_as_escaped_log_text(run):
    """Calls become tools.jsonl lines; stderr and warnings reach skills.log with ESC defused."""
    files = audit.RunFiles(run)
    files.tool_call(audit.ToolCall("T", "s", "t", {"a": "str"}, 1.25, "ok"))
    files.skill_stderr("s", "plain \x1b]0;title\x07 line")
    files.warning("skill 's' exited\n  | last line")
    files.close()
    files.info("after close: dropped, not an error")
    [line] = [json.loads(x) for x in run.tools_path.read_text().splitlines()]
    assert line == {
        "time": "T",
        "kind": "tools/call",
        "skill": "s",
        "tool": "t",
        "argShape": {"a": "str"},
        "durationMs": 1.2,
        "outcome": "ok",
    }
    log = run.skills_log_path.read_text()
    assert 'tools/call t (skill s) args={"a": "str"} -> ok in 1.2 ms' in log
    assert "skill INFO [s] plain \\x1b]0;title\\x07 line" in log
    assert "\x1b" not in log
    assert "run WARNING skill 's' exited\n  | last line" in log
    assert "after close" not in log


def test_a_tee_hands_every_report_to_each_sink_in_order():
    """TeeSink forwards calls, stderr lines, warnings and diagnostics to all its sinks."""
    seen: list[tuple[str, str, object]] = []

    class Sink:
        def __init__(self, name):
            self.name = name

        def tool_call(self, call):
            seen.append((self.name, "call", call.tool))

        def skill_stderr(self, skill, line):
            seen.append((self.name, "stderr", f"{skill}:{line}"))

        def warning(self, message):
            seen.append((self.name, "warning", message))

        def info(self, message):
            seen.append((self.name, "info", message))

    tee = audit.TeeSink(Sink("a"), Sink("b"))
    tee.tool_call(audit.ToolCall("T", "s", "t", {}, 0.0, "ok"))
    tee.skill_stderr("s", "x")
    tee.warning("w")
    tee.info("i")
    assert seen == [
        ("a", "call", "t"),
        ("b", "call", "t"),
        ("a", "stderr", "s:x"),
        ("b", "stderr", "s:x"),
        ("a", "warning", "w"),
        ("b", "warning", "w"),
        ("a", "info", "i"),
        ("b", "info", "i"),
    ]


def test_the_cli_prints_text_and_json_and_an_unknown_run_exits_2(run, monkeypatch, capsys):
    """`audit RUN --json` prints the summary as JSON; `audit nope` is a usage error (exit 2)."""
    write_lines(run.audit_path, [decision(1, "a.example", "allow", "allowed"), close(1, 3, 4)])
    monkeypatch.setattr(sys, "argv", ["perstack-sandbox", "audit", run.run_id, "--json"])
    cli.main()
    payload = json.loads(capsys.readouterr().out)
    assert payload["hosts"][0]["host"] == "a.example"
    assert (payload["hosts"][0]["bytesUp"], payload["hosts"][0]["bytesDown"]) == (3, 4)
    monkeypatch.setattr(sys, "argv", ["perstack-sandbox", "audit"])
    cli.main()
    assert "a.example  port 443  allowed 1  refused 0" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["perstack-sandbox", "audit", "nope"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_gateway_logs_shapes_and_refuses_calls_once_egress_is_down(run):
    """Gateway calls reach tools.jsonl by shape only; after egress loss they are refused."""
    factory = functools.partial(
        local_process, [sys.executable, str(SKILL)], env={"PATH": "/usr/bin:/bin"}
    )
    problem: list[str] = []

    async def egress_check():
        return problem[0] if problem else None

    files = audit.RunFiles(run)
    try:
        with anyio.fail_after(30):
            async with open_gateway(
                [SkillSession(SkillSpec("local"), factory, audit=files)],
                egress_check=egress_check,
                audit=files,
            ) as gateway:
                ok = await gateway.call_tool("echo", {"text": SECRET_ARGUMENT})
                problem.append("egress is down: the proxy stopped")
                refused = await gateway.call_tool("echo", {"text": SECRET_ARGUMENT})
    finally:
        files.close()
    assert not ok.is_error
    assert refused.is_error
    assert "egress is down" in refused.content[0].text
    text = run.tools_path.read_text()
    assert SECRET_ARGUMENT not in text
    assert SECRET_ARGUMENT not in run.skills_log_path.read_text()
    assert "WARNING egress is down: the proxy stopped" in run.skills_log_path.read_text()
    lines = [json.loads(x) for x in text.splitlines()]
    assert [(x["tool"], x["argShape"], x["outcome"]) for x in lines] == [
        ("echo", {"text": "str"}, "ok"),
        ("echo", {"text": "str"}, "refused-egress-down"),
    ]
    assert all(x["skill"] == "local" and x["durationMs"] >= 0 and x["time"] for x in lines)


def test_forwarded_requests_other_than_tool_calls_are_summarised_apart(run):
    """Resource reads, prompt gets and questions are counted per kind and target, not as tools."""
    write_lines(
        run.tools_path,
        [
            {"kind": "tools/call", "skill": "s", "tool": "t", "argShape": {}, "outcome": "ok"},
            {"kind": "resources/read", "skill": "s", "uri": "demo://a", "outcome": "ok"},
            {"kind": "resources/read", "skill": "s", "uri": "demo://a", "outcome": "error"},
            {"kind": "elicitation/create", "skill": "s", "tool": "t", "outcome": "accept"},
        ],
    )
    summary = audit.summarise_run(run)
    assert audit.tool_counts(summary) == {"s/t": 1}
    assert [(r.kind, r.target, r.count, r.outcomes) for r in summary.requests] == [
        ("elicitation/create", "t", 1, {"accept": 1}),
        ("resources/read", "demo://a", 2, {"error": 1, "ok": 1}),
    ]
    assert "resources/read demo://a  [s]  2 (error x1, ok x1)" in audit.render_text(summary)
    assert summary.to_json()["requests"][0]["kind"] == "elicitation/create"


def test_the_summary_starts_with_each_skills_allowlist_and_the_image_packages(run):
    """The text opens with the allowlist per skill and the image's package versions."""
    policy = {"allowedDomains": ["a.example"], "skillAllowedDomains": {"web": ["a.example"]}}
    policy["skillAllowedDomains"]["calc"] = []
    run.policy_path.write_text(json.dumps(policy), encoding="utf-8")
    packages = [{"manager": "npm", "name": "exa-mcp-server", "version": "1.2.3"}]
    run.update_meta(image="perstack-sandbox/expert:abc", packages=packages)
    summary = audit.summarise(run.run_id)
    assert summary.allowlist == {"calc": [], "web": ["a.example"]}
    text = audit.render_text(summary)
    head = text.split("egress (proxy decisions per host):")[0]
    assert "  image perstack-sandbox/expert:abc" in head
    assert "allowlist (the hosts the proxy let each skill reach):\n  calc  (nothing)\n" in head
    assert "  web   a.example\n" in head
    assert "packages in the image:\n  npm exa-mcp-server 1.2.3\n" in head
    assert summary.to_json()["packages"] == packages


def test_a_run_from_before_packages_were_recorded_says_so(run):
    """A run whose meta has no package list says 'not recorded' rather than 'none'."""
    assert audit.summarise_run(run).packages is None
    assert "not recorded" in audit.render_text(audit.summarise_run(run))


@pytest.mark.usefixtures("run")
def test_a_build_audit_is_read_by_its_id(monkeypatch, capsys):
    """`audit build-...` reads the fenced build's folder: its registries and its decisions."""
    build_id = "build-20260101-000000-dddddd"
    build = state.RunState(build_id, state.builds_dir() / build_id)
    build.path.mkdir(parents=True)
    build.update_meta(kind="build", expert="e", status="finished", started="T0", ended="T9")
    build.policy_path.write_text(json.dumps({"allowedDomains": ["registry.example"]}))
    write_lines(build.audit_path, [decision(1, "evil.example", reason="not-allowed")])
    monkeypatch.setattr(sys, "argv", ["perstack-sandbox", "audit", build.run_id])
    cli.main()
    out = capsys.readouterr().out
    assert out.startswith(f"build {build.run_id}  expert e  status finished")
    assert "  build  registry.example" in out
    assert "evil.example  port 443  allowed 0  refused 1 (not-allowed x1)" in out
    assert "packages in the image" not in out  # a build has no run image


@pytest.mark.usefixtures("run")
@pytest.mark.parametrize("target", ["nope", "build-nope", "../x"])
def test_audit_json_errors_are_json_with_exit_2(monkeypatch, capsys, target):
    """With --json, an unknown run or build is a JSON error object on stdout, exit 2."""
    monkeypatch.setattr(sys, "argv", ["perstack-sandbox", "audit", target, "--json"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert set(json.loads(out)) == {"error"}
    assert err == ""


def test_run_files_keep_other_forwarded_requests_in_tools_jsonl_with_their_kind(run):
    """A resource read reaches tools.jsonl with its kind, skill and URI, and `audit` counts it."""
    files = audit.RunFiles(run)
    files.request(audit.Request("T", "resources/read", "s", {"uri": "demo://a"}, 2.0, "ok"))
    files.close()
    [line] = [json.loads(x) for x in run.tools_path.read_text().splitlines()]
    assert line == {
        "time": "T",
        "kind": "resources/read",
        "skill": "s",
        "uri": "demo://a",
        "durationMs": 2.0,
        "outcome": "ok",
    }
    summary = audit.summarise_run(run)
    assert [(r.kind, r.target, r.count) for r in summary.requests] == [
        ("resources/read", "demo://a", 1)
    ]
    assert "resources/read demo://a (skill s) -> ok" in run.skills_log_path.read_text()
