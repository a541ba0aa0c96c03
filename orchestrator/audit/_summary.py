"""Reading a run's audit trail back: what the proxy decided and which tools were called.

Two JSON-lines files of a run folder (see `perstack_sandbox.state`) are read here:

- `audit.jsonl`, written by the proxy: one `decision` line per request (host, port, decision,
  reason, rule) and one `close` line per connection (bytes each way), joined by `conn`;
- `tools.jsonl`, written by `RunFiles` from the gateway's calls: time, skill, tool, argument
  SHAPE (keys and types, never values), duration and outcome; and, with a `kind`, every other
  request the gateway forwarded (a resource read by URI, a prompt get by name, a question a
  skill asked the client by the tool it belongs to...), also by shape only.

Both are appended line by line while the run is live, so a run that crashed can be read: a
truncated last line or any unparsable line is counted, never fatal, and a missing end time is
reported as such.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final

from perstack_sandbox import state
from perstack_sandbox.audit._sinks import TOOL_CALL_KIND
from perstack_sandbox.errors import UsageError
from perstack_sandbox.text import printable

if TYPE_CHECKING:
    from pathlib import Path


NO_HOST: Final = "(no host)"


@dataclass
class HostSummary:
    """Everything the proxy decided about one host."""

    host: str
    allowed: int = 0
    refused: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    skills: list[str] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    first: str = ""
    last: str = ""


@dataclass
class ToolSummary:
    """The calls of one tool of one skill."""

    skill: str
    tool: str
    calls: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    total_ms: float = 0.0
    shapes: list[object] = field(default_factory=list)


@dataclass
class RequestSummary:
    """The forwarded requests of one kind, skill and target (a URI, a prompt, a tool)."""

    kind: str
    skill: str
    target: str
    count: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


@dataclass
class RunSummary:
    """A run's (or a build's) audit: what it could reach and ran, its egress, its tool calls.

    `allowlist` maps each skill to the hosts the proxy let it reach (a build: `build` to the
    registry hosts); `packages` are the image's resolved packages (None: not recorded).
    """

    run_id: str
    kind: str
    expert: str
    status: str
    started: str
    ended: str | None
    image: str
    allowlist: dict[str, list[str]]
    packages: list[dict[str, str]] | None
    hosts: list[HostSummary]
    tools: list[ToolSummary]
    calls: list[dict[str, Any]]
    unreadable_lines: dict[str, int]
    requests: list[RequestSummary] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the summary as a JSON-ready dict (camelCase keys, stable order)."""
        raw = asdict(self)
        return {_camel(key): value for key, value in raw.items()} | {
            "hosts": [{_camel(k): v for k, v in h.items()} for h in raw["hosts"]],
            "tools": [{_camel(k): v for k, v in t.items()} for t in raw["tools"]],
            "requests": [{_camel(k): v for k, v in r.items()} for r in raw["requests"]],
        }


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Return the JSON objects of `path`, one per line, and the count of unreadable lines.

    A missing file is an empty trail; a truncated last line (a crash mid-write) is counted.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], 0
    records: list[dict[str, Any]] = []
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(value, dict):
            records.append(value)
        else:
            bad += 1
    return records, bad


def summarise_hosts(lines: list[dict[str, Any]]) -> list[HostSummary]:
    """Fold the proxy's decision and close lines into one summary per host, sorted by host."""
    hosts: dict[str, HostSummary] = {}
    by_conn: dict[object, HostSummary] = {}
    for line in lines:
        if line.get("event") == "decision":
            name = str(line.get("host") or line.get("rawHost") or NO_HOST)
            summary = hosts.setdefault(name, HostSummary(host=name))
            _count_decision(summary, line)
            by_conn[line.get("conn")] = summary
        elif line.get("event") == "close" and line.get("conn") in by_conn:
            summary = by_conn.pop(line.get("conn"))
            summary.bytes_up += _number(line.get("bytesUp"))
            summary.bytes_down += _number(line.get("bytesDown"))
    return [hosts[name] for name in sorted(hosts)]


def _count_decision(summary: HostSummary, line: dict[str, Any]) -> None:
    if line.get("decision") == "allow":
        summary.allowed += 1
    else:
        summary.refused += 1
        reason = str(line.get("reason") or "unknown")
        summary.reasons[reason] = summary.reasons.get(reason, 0) + 1
    port = line.get("port")
    if isinstance(port, int) and port not in summary.ports:
        summary.ports.append(port)
    skill = line.get("skill")  # which skill's credential asked (absent in older trails)
    if isinstance(skill, str) and skill not in summary.skills:
        summary.skills.append(skill)
    when = str(line.get("time") or "")
    if when and (not summary.first or when < summary.first):
        summary.first = when
    if when and when > summary.last:
        summary.last = when


def _number(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def summarise_tools(calls: list[dict[str, Any]]) -> list[ToolSummary]:
    """Fold tool-call lines into one summary per (skill, tool), sorted."""
    tools: dict[tuple[str, str], ToolSummary] = {}
    for call in calls:
        if call.get("kind", TOOL_CALL_KIND) != TOOL_CALL_KIND:
            continue
        key = (str(call.get("skill", "?")), str(call.get("tool", "?")))
        summary = tools.setdefault(key, ToolSummary(skill=key[0], tool=key[1]))
        summary.calls += 1
        outcome = str(call.get("outcome", "unknown"))
        summary.outcomes[outcome] = summary.outcomes.get(outcome, 0) + 1
        duration = call.get("durationMs")
        if isinstance(duration, int | float) and not isinstance(duration, bool):
            summary.total_ms += float(duration)
        shape = call.get("argShape")
        if shape not in summary.shapes:
            summary.shapes.append(shape)
    return [tools[key] for key in sorted(tools)]


def summarise_requests(lines: list[dict[str, Any]]) -> list[RequestSummary]:
    """Fold the lines of forwarded requests other than tool calls, per (kind, skill, target)."""
    found: dict[tuple[str, str, str], RequestSummary] = {}
    for line in lines:
        kind = str(line.get("kind", TOOL_CALL_KIND))
        if kind == TOOL_CALL_KIND:
            continue
        target = line.get("uri") or line.get("prompt") or line.get("tool") or line.get("task")
        key = (kind, str(line.get("skill", "?")), str(target or "-"))
        summary = found.setdefault(key, RequestSummary(*key))
        summary.count += 1
        outcome = str(line.get("outcome", "unknown"))
        summary.outcomes[outcome] = summary.outcomes.get(outcome, 0) + 1
    return [found[key] for key in sorted(found)]


def summarise(target: str | None) -> RunSummary:
    """Summarise the run or build `target` (a `build-...` id), or the latest run when None.

    Raises:
        UsageError: there is no such run or build, or no run at all.

    """
    return summarise_run(find_run(target))


def summarise_run(run: state.RunState) -> RunSummary:
    """Read a run's meta, policy, proxy audit and tool calls; tolerate a crashed run's files."""
    meta = run.read_meta()
    decisions, bad_audit = read_jsonl(run.audit_path)
    calls, bad_tools = read_jsonl(run.tools_path)
    ended = meta.get("ended")
    is_build = run.run_id.startswith(state.BUILD_PREFIX)
    packages = meta.get("packages")
    return RunSummary(
        run_id=run.run_id,
        kind="build" if is_build else "run",
        expert=str(meta.get("expert", "?")),
        status=str(meta.get("status", "unknown")),
        started=str(meta.get("started", "")),
        ended=str(ended) if ended else None,
        image=str(meta.get("image", "")),
        allowlist=read_allowlist(run.policy_path, whole="build" if is_build else "(every skill)"),
        packages=[p for p in packages if isinstance(p, dict)]
        if isinstance(packages, list)
        else None,
        hosts=summarise_hosts(decisions),
        tools=summarise_tools(calls),
        calls=calls,
        unreadable_lines={state.AUDIT_FILE: bad_audit, state.TOOLS_FILE: bad_tools},
        requests=summarise_requests(calls),
    )


def read_allowlist(policy_path: Path, *, whole: str) -> dict[str, list[str]]:
    """Return each skill's allowlist from a policy copy; a policy without skills is `whole`'s.

    A missing or unreadable policy (a run that never started its proxy) gives {}.
    """
    try:
        policy = json.loads(policy_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(policy, dict):
        return {}
    per_skill = policy.get("skillAllowedDomains")
    if isinstance(per_skill, dict):
        return {
            str(k): [str(h) for h in v] for k, v in sorted(per_skill.items()) if isinstance(v, list)
        }
    hosts = policy.get("allowedDomains")
    return {whole: [str(h) for h in hosts]} if isinstance(hosts, list) else {}


def find_run(run_id: str | None) -> state.RunState:
    """Return the run or build `run_id`, or the latest run when None.

    Raises:
        UsageError: there is no such run or build, or no run at all.

    """
    if run_id is None:
        latest = state.latest_run()
        if latest is None:
            raise UsageError(f"no runs recorded in {state.runs_dir()}")
        return latest
    if "/" in run_id or run_id in {"", ".", ".."}:
        raise UsageError(f"{run_id!r} is not a run id")
    found = state.open_run(run_id)
    if found is None:
        what, where = (
            ("build", state.builds_dir())
            if run_id.startswith(state.BUILD_PREFIX)
            else ("run", state.runs_dir())
        )
        raise UsageError(f"no {what} {run_id!r} in {where}")
    return found


def render_text(summary: RunSummary) -> str:
    """Render for a terminal: what it could reach and ran, egress per host, tool calls."""
    ended = summary.ended or "no end time (still running, or it crashed)"
    lines = [
        f"{summary.kind} {summary.run_id}  expert {summary.expert}  status {summary.status}",
        f"  started {summary.started or '?'}  ended {ended}",
    ]
    lines += [f"  image {summary.image}"] if summary.image else []
    lines += ["", "allowlist (the hosts the proxy let each skill reach):"]
    width = max(map(len, summary.allowlist), default=0)
    lines += [
        f"  {skill:<{width}}  {', '.join(hosts) or '(nothing)'}"
        for skill, hosts in summary.allowlist.items()
    ] or ["  not recorded"]
    if summary.kind == "run":
        lines += ["", "packages in the image:", *_package_lines(summary.packages)]
    lines += ["", "egress (proxy decisions per host):"]
    lines += [_host_line(host) for host in summary.hosts] or ["  none"]
    lines += ["", "tool calls:"]
    lines += [_tool_line(tool) for tool in summary.tools] or ["  none"]
    if summary.requests:
        lines += ["", "other requests (resources, prompts, questions to the client...):"]
        lines += [_request_line(request) for request in summary.requests]
    skipped = {name: n for name, n in summary.unreadable_lines.items() if n}
    if skipped:
        detail = ", ".join(f"{name}: {n}" for name, n in sorted(skipped.items()))
        lines += ["", f"unreadable lines skipped (a crash mid-write?): {detail}"]
    return printable("\n".join(lines))  # tool names come from the skills


def _package_lines(packages: list[dict[str, str]] | None) -> list[str]:
    if packages is None:
        return ["  not recorded (a run from before packages were recorded)"]
    if not packages:
        return ["  none (local skills only)"]
    return [
        f"  {p.get('manager', '?')} {p.get('name', '?')} {p.get('version', '?')}" for p in packages
    ]


def _host_line(host: HostSummary) -> str:
    reasons = ", ".join(f"{r} x{n}" for r, n in sorted(host.reasons.items()))
    refused = f"refused {host.refused}" + (f" ({reasons})" if reasons else "")
    ports = ",".join(str(p) for p in sorted(host.ports)) or "-"
    skills = f"  skills {','.join(sorted(host.skills))}" if host.skills else ""
    return (
        f"  {host.host}  port {ports}{skills}  allowed {host.allowed}  {refused}  "
        f"up {host.bytes_up} B  down {host.bytes_down} B  {host.first} .. {host.last}"
    )


def _request_line(request: RequestSummary) -> str:
    outcomes = ", ".join(f"{o} x{n}" for o, n in sorted(request.outcomes.items()))
    return f"  {request.kind} {request.target}  [{request.skill}]  {request.count} ({outcomes})"


def _tool_line(tool: ToolSummary) -> str:
    outcomes = ", ".join(f"{o} x{n}" for o, n in sorted(tool.outcomes.items()))
    shapes = "; ".join(json.dumps(s, sort_keys=True) for s in tool.shapes)
    return (
        f"  {tool.skill}/{tool.tool}  calls {tool.calls} ({outcomes})  "
        f"total {tool.total_ms:.0f} ms  args {shapes}"
    )


def tool_counts(summary: RunSummary) -> Counter[str]:
    """Count calls per `skill/tool` (a convenience for reports and tests)."""
    return Counter({f"{t.skill}/{t.tool}": t.calls for t in summary.tools})
