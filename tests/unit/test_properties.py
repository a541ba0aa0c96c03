"""Property tests: host canonicalisation invariants, and no input crashes config or plan."""

from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from perstack_sandbox.config import parse_config
from perstack_sandbox.errors import ConfigError
from perstack_sandbox.plan import ENTRY_DIR, plan, plan_to_json
from perstack_sandbox_proxy.hosts import (
    HostRejected,
    canonicalise_host,
    canonicalise_pattern,
    match_host,
)

FIXTURES = Path(__file__).parent.parent / "fixtures"
SEEDS = [
    (FIXTURES / name).read_text(encoding="utf-8")
    for name in ("seed_002_complete.toml", "seed_004_complete.toml", "plan_rich.toml")
]

# Host-like text: labels of letters, digits, '-', '_', dots, case, odd characters mixed in.
_LABEL = st.text(alphabet="abcXYZ019-_*x", min_size=0, max_size=8) | st.sampled_from(
    ["xn--p1ai", "0x7f", "127", "ab--c", "com", "co", "uk", "localhost", "\u0430pple", "a"]
)
HOSTISH = st.one_of(
    st.text(max_size=30),
    st.lists(_LABEL, min_size=1, max_size=6).map(".".join),
    st.lists(_LABEL, min_size=1, max_size=4).map(lambda ls: "*." + ".".join(ls)),
    st.lists(_LABEL, min_size=1, max_size=4).map(lambda ls: ".".join(ls) + "."),
)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def _accepted(function: object, raw: str) -> str | None:
    assert callable(function)
    try:
        return str(function(raw))
    except HostRejected:
        return None


@given(HOSTISH)
@example("Example.COM.")
@example("*.Example.co.uk.")
def test_canonicalising_twice_gives_the_same_result(raw: str) -> None:
    """Canonicalisation is idempotent for hosts and for allowlist patterns."""
    for function in (canonicalise_host, canonicalise_pattern):
        once = _accepted(function, raw)
        if once is not None:
            assert function(once) == once


@given(HOSTISH)
@example("127.1")
@example("0x7f.1")
@example("2130706433")
@example("\u0430pple.com")
def test_nothing_accepted_is_non_ascii_punycode_or_an_ip_literal(raw: str) -> None:
    """An accepted host is lowercase LDH ASCII, has a dot, no xn-- label, and is no address."""
    host = _accepted(canonicalise_host, raw)
    if host is None:
        return
    assert host.isascii()
    assert host == host.lower()
    assert "." in host
    assert not any(label.startswith("xn--") or label[2:4] == "--" for label in host.split("."))
    assert not _is_ip_literal(host)
    assert not _is_ip_literal(host + ".")
    assert set(host) <= set("abcdefghijklmnopqrstuvwxyz0123456789.-")


@given(HOSTISH, HOSTISH)
def test_a_wildcard_never_matches_its_own_base_or_an_unrelated_suffix(base: str, sub: str) -> None:
    """`*.b` matches exactly the hosts that end in `.b`, never `b` itself."""
    pattern = _accepted(canonicalise_pattern, "*." + base)
    host = _accepted(canonicalise_host, sub)
    if pattern is None or host is None:
        return
    assert match_host(pattern[2:], [pattern]) is None
    assert (match_host(host, [pattern]) == pattern) == host.endswith(pattern[1:])


def _mutate(text: str, data: st.DataObject) -> str:
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        position = data.draw(st.integers(min_value=0, max_value=len(text)))
        action = data.draw(st.sampled_from(["delete", "insert", "duplicate", "replace"]))
        chunk = data.draw(
            st.text(min_size=1, max_size=6)
            | st.sampled_from(['"', "[", "=", "\n", "]]", "*.", "-"])
        )
        if action == "delete":
            text = text[:position] + text[position + len(chunk) :]
        elif action == "insert":
            text = text[:position] + chunk + text[position:]
        elif action == "duplicate":
            text = text[:position] + text[position : position + 40] + text[position:]
        else:
            text = text[:position] + chunk + text[position + len(chunk) :]
    return text


_SCALAR = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    HOSTISH,
)
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_SKILL = st.fixed_dictionaries(
    {"type": st.sampled_from(["mcpStdioSkill", "mcpSseSkill", "interactiveSkill", "x"])},
    optional={
        "command": st.sampled_from(["npx", "uvx", "python", "a b", "-x"]) | st.text(max_size=6),
        "packageName": HOSTISH | st.sampled_from(["p@1", "@s/p@^1", "t==1", "-y"]),
        "args": st.lists(HOSTISH | st.sampled_from(["-y", "--yes", "-p", "--from"]), max_size=4),
        "allowedDomains": st.lists(HOSTISH, max_size=4),
        "requiredEnv": st.lists(
            st.sampled_from(["A", "PATH", "ld_preload", "9"]) | st.text(max_size=5), max_size=3
        ),
        "pick": st.lists(st.text(max_size=5), max_size=2),
        "omit": st.lists(st.text(max_size=5), max_size=2),
        "endpoint": st.sampled_from(["https://a.example.com/s", "http://x", "https://10.0.0.1"])
        | st.text(max_size=10),
        "tools": st.dictionaries(
            st.text(max_size=5),
            st.fixed_dictionaries(
                {"inputJsonSchema": st.sampled_from(['{"type": "object"}', "[]", "{"])}
            ),
            max_size=2,
        ),
        "lazyInit": _SCALAR,
        "extra": _VALUE,
    },
)
_EXPERT = st.fixed_dictionaries(
    {},
    optional={
        "instruction": st.text(max_size=10) | _SCALAR,
        "version": st.sampled_from(["1.0.0", "1.0", "x"]) | _SCALAR,
        "skills": st.dictionaries(
            st.sampled_from(["s", "@p/b", "Bad", "a.b"]) | st.text(max_size=5), _SKILL, max_size=3
        ),
        "delegates": st.lists(st.text(max_size=6), max_size=2),
        "providerSkills": _VALUE,
        "providerToolOptions": _VALUE,
    },
)
DOCUMENT = st.fixed_dictionaries(
    {},
    optional={
        "experts": st.dictionaries(
            st.sampled_from(["e", "@o/e", "E"]) | st.text(max_size=6), _EXPERT | _VALUE, max_size=3
        ),
        "provider": st.fixed_dictionaries(
            {"providerName": st.sampled_from(["openai", "x"])}, optional={"setting": _VALUE}
        ),
        "maxSteps": _SCALAR,
        "reasoningBudget": _SCALAR,
        "runtime": _SCALAR,
        "envPath": _VALUE,
        "junk": _VALUE,
    },
)


def _to_toml(document: dict[str, object]) -> str:
    """Write a document as TOML `"key" = value` lines with inline tables and arrays."""

    def value(item: object) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | float):
            return repr(item)
        if isinstance(item, str):
            return json.dumps(item)
        if isinstance(item, list):
            return "[" + ", ".join(value(i) for i in item) + "]"
        assert isinstance(item, dict)
        return "{" + ", ".join(f"{json.dumps(k)} = {value(v)}" for k, v in item.items()) + "}"

    return "".join(f"{json.dumps(k)} = {value(v)}\n" for k, v in document.items())


def _validate_and_plan(text: str) -> None:
    """Parse `text`; a valid config must plan every expert without error."""
    try:
        config, _ = parse_config(text, strict=False)
    except ConfigError as exc:
        issues = exc.issues
    else:
        issues = []
        for key in config.experts:
            plan_to_json(plan(config, key))
    assert all(isinstance(issue.path, str) and issue.message for issue in issues)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_seed_documents_raise_only_config_errors(seed: str, data: st.DataObject) -> None:
    """Random edits of the seed files either validate (and plan) or raise ConfigError."""
    _validate_and_plan(_mutate(seed, data))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(DOCUMENT)
def test_random_documents_raise_only_config_errors(document: dict[str, object]) -> None:
    """Random structures shaped like perstack.toml either validate (and plan) or ConfigError."""
    _validate_and_plan(_to_toml(document))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_raises_only_config_errors(text: str) -> None:
    """Arbitrary text is never anything worse than a ConfigError."""
    _validate_and_plan(text)


_VALID_SKILL = st.fixed_dictionaries(
    {"type": st.just("mcpStdioSkill"), "command": st.sampled_from(["npx", "uvx", "python3"])},
    optional={
        "packageName": st.sampled_from(["pkg", "pkg@1.2.3", "@scope/pkg@^1", "tool==1.0"]),
        "args": st.lists(
            st.sampled_from(["-y", "--yes", "pkg", "tool>=1", "--v", "x=1"]), max_size=4
        ),
        "allowedDomains": st.lists(
            st.sampled_from(["A.example.com.", "*.example.com", "b.example.org"]), max_size=3
        ),
        "requiredEnv": st.lists(st.sampled_from(["A_KEY", "B_TOKEN"]), max_size=2),
    },
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b.c", "@s/d"]), _VALID_SKILL, min_size=1, max_size=3))
def test_a_valid_skill_plans_to_an_offline_launch_without_launcher_flags(
    skills: dict[str, object],
) -> None:
    """Whatever valid pieces a skill is built from, it runs its own entry link, flag-free."""
    text = _to_toml({"experts": {"e": {"instruction": "x", "skills": skills}}})
    try:
        config, _ = parse_config(text)
    except ConfigError:
        return
    sandbox = plan(config, "e")
    for launch in sandbox.skills:
        if launch.kind == "local":
            assert launch.package is None
            continue
        assert launch.package is not None
        assert launch.argv[0] == f"{ENTRY_DIR}/{launch.package.slug}"
        assert "-y" not in launch.argv
        assert "--yes" not in launch.argv
    assert all(rule.pattern == canonicalise_pattern(rule.pattern) for rule in sandbox.egress)
