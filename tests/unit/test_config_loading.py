"""Loading perstack.toml: the seed fixtures, syntax errors, unknown keys, publish rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from perstack_sandbox.config import McpStdioSkill, load_config, parse_config
from perstack_sandbox.config._report import toml_path
from perstack_sandbox.errors import ConfigError

FIXTURES = Path(__file__).parent.parent / "fixtures"
EXPERT = '[experts."e"]\ninstruction = "Do the task."\n'


def issues_of(path: Path, **options: bool) -> list[str]:
    """Return every issue of a fixture rendered as `path: message`."""
    with pytest.raises(ConfigError) as caught:
        load_config(path, **options)
    return [str(issue) for issue in caught.value.issues]


def test_seed_002_complete_example_validates() -> None:
    """Seed 002's complete example validates, including two things its own text questions.

    It sets `temperature`, which seed 004's reference no longer lists: 002 documents it
    (0.0-1.0), so it is modelled and not reported. Its `browse` skill passes `-y` to uvx, which
    has no such flag (it is npx's); we consume it like npx's `-y`, because the preinstalled,
    offline launch is non-interactive anyway.
    """
    config, warnings = load_config(FIXTURES / "seed_002_complete.toml")
    assert warnings == []
    assert set(config.experts) == {"@my-org/research-coordinator", "web-researcher", "data-analyst"}
    assert config.temperature == 0.3
    browse = config.experts["web-researcher"].skills["browse"]
    assert isinstance(browse, McpStdioSkill)
    assert browse.package_spec() == ("mcp-server-fetch", "", ())


def test_seed_002_breaks_the_publish_rules_with_a_local_python_skill() -> None:
    """Seed 002's data-analyst runs `python`, a local command, so --publish refuses it."""
    assert issues_of(FIXTURES / "seed_002_complete.toml", publish=True) == [
        (
            'experts."data-analyst".skills."python".command: publish rule: only npx and uvx '
            "skills can be published; the local command 'python' runs files that are not in "
            "the registry"
        )
    ]


def test_seed_004_complete_example_validates_with_one_pick_and_omit_warning() -> None:
    """Seed 004's example validates; its `static-analyzer` sets pick AND omit, which warns.

    Issue 2 made pick with omit an error, so this example exited 2; issue 12 reverses that
    (Perstack accepts it, and users copy this example): the skill keeps the tools pick names,
    then drops those omit names. The example also uses a scoped skill key (`@perstack/base`)
    that the documented skill rule does not allow but the registry's own base skill needs.
    """
    _config, warnings = load_config(FIXTURES / "seed_004_complete.toml")
    assert [str(w) for w in warnings] == [
        (
            'experts."my-expert".skills."static-analyzer": both pick and omit are set: the '
            "skill keeps the tools pick names, then drops those omit names (here: "
            "analyze_typescript); omit of analyze_python changes nothing, pick does not keep them"
        )
    ]


def test_seed_004_validates_once_omit_is_dropped() -> None:
    """Without the conflicting omit, seed 004's example validates with no warning."""
    text = (FIXTURES / "seed_004_complete.toml").read_text(encoding="utf-8")
    fixed = text.replace('omit = ["analyze_python"]\n', "")
    assert fixed != text
    config, warnings = parse_config(fixed)
    assert warnings == []
    expert = config.experts["my-expert"]
    assert set(expert.skills) == {
        "@perstack/base",
        "web-search",
        "static-analyzer",
        "user-interaction",
    }
    assert config.runtime == "docker"
    assert config.reasoning_budget == "medium"


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("expert_name.toml", "experts.\"Code-Reviewer\": expert name 'Code-Reviewer' breaks"),
        ("missing_instruction.toml", 'experts."code-reviewer".instruction: required key'),
        ("version.toml", "experts.\"code-reviewer\".version: version '1.0' is not semantic"),
        ("skill_type.toml", "skills.\"lint\".type: unknown skill type 'mcpHttpSkill'"),
        ("sse_http.toml", "skills.\"remote\".endpoint: 'http://api.example.com/mcp/sse' must be"),
        ("sse_private.toml", 'skills."remote".endpoint: SSE endpoint host is not a public'),
    ],
)
def test_each_acceptance_fixture_is_refused_naming_its_rule(fixture: str, expected: str) -> None:
    """Every invalid fixture of issue 2's acceptance list gives exactly its one error."""
    found = issues_of(FIXTURES / "invalid" / fixture)
    assert len(found) == 1, found
    assert expected in found[0]


def test_every_error_is_reported_at_once() -> None:
    """Five independent errors in one file are all reported, not just the first."""
    assert [
        issue.split(":")[0] for issue in issues_of(FIXTURES / "invalid" / "many_errors.toml")
    ] == [
        "maxSteps",
        'experts."Bad"',
        'experts."ok".version',
        'experts."ok".skills."s".packageName',
        'experts."ok".skills."s".requiredEnv[0]',
    ]


def test_a_toml_syntax_error_shows_line_and_column() -> None:
    """A syntax error is one issue with the line and column of the problem."""
    [issue] = issues_of(FIXTURES / "invalid" / "syntax.toml")
    assert issue.startswith("<document>: TOML syntax error")
    assert "line 4" in issue
    assert "column" in issue


@pytest.mark.parametrize(
    "text",
    ["[a]\n[a]\n", "x = 1\nx = 2\n", "x = [1, 2\n", 'x = "\\q"\n', "\x00", "= 1", "a.b = 1\na = 2"],
)
def test_malformed_toml_is_one_config_error(text: str) -> None:
    """Duplicate tables, duplicate keys, bad escapes and stray bytes are syntax errors."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.issues[0].message.startswith("TOML syntax error")


def test_deep_nesting_is_a_config_error_not_a_crash() -> None:
    """An absurdly nested array is reported, never a RecursionError traceback."""
    with pytest.raises(ConfigError):
        parse_config("x = " + "[" * 5000 + "]" * 5000)


def test_unknown_keys_are_warnings_with_a_suggestion() -> None:
    """Unknown keys at every level warn, with did-you-mean, and the config still loads."""
    text = (
        "maxStep = 3\n" + EXPERT + "instructions = 'x'\n"
        '[experts."e".skills."s"]\ntype = "mcpStdioSkill"\ncommand = "npx"\n'
        'packageName = "p"\nallowed_domains = ["a.example.com"]\nzzz = 1\n'
    )
    config, warnings = parse_config(text)
    assert config.max_steps is None
    assert [str(w) for w in warnings] == [
        "maxStep: unknown key 'maxStep' (did you mean 'maxSteps'?)",
        "experts.\"e\".instructions: unknown key 'instructions' (did you mean 'instruction'?)",
        (
            'experts."e".skills."s".allowed_domains: unknown key \'allowed_domains\' '
            "(did you mean 'allowedDomains'?)"
        ),
        'experts."e".skills."s".zzz: unknown key \'zzz\'',
    ]
    assert all(w.is_warning for w in warnings)


def test_a_snake_case_key_is_not_silently_used() -> None:
    """`allowed_domains` is an unknown key, never an alias that quietly widens egress."""
    text = EXPERT + '[experts."e".skills."s"]\ntype = "mcpStdioSkill"\ncommand = "npx"\n'
    config, _ = parse_config(text + 'packageName = "p"\nallowed_domains = ["a.example.com"]\n')
    found = config.experts["e"].skills["s"]
    assert isinstance(found, McpStdioSkill)
    assert found.allowed_domains == ()


def test_strict_makes_unknown_keys_errors() -> None:
    """Under --strict an unknown key is an error with its suggestion."""
    with pytest.raises(ConfigError) as caught:
        parse_config("maxStep = 3\n" + EXPERT, strict=True)
    [issue] = caught.value.issues
    assert not issue.is_warning
    assert "did you mean 'maxSteps'" in issue.message


def test_warnings_follow_errors_in_a_config_error() -> None:
    """When a file also has errors, its warnings ride along after them, marked as warnings."""
    with pytest.raises(ConfigError) as caught:
        parse_config('maxStep = 3\nmodel = 1\n[experts."e"]\n')
    assert [i.is_warning for i in caught.value.issues] == [False, False, True]


def test_publish_requires_an_explicit_version() -> None:
    """Registry experts state their semver version; the 1.0.0 default is not enough."""
    with pytest.raises(ConfigError) as caught:
        parse_config(EXPERT, publish=True)
    assert str(caught.value.issues[0]).startswith('experts."e": publish rule')
    assert parse_config(EXPERT + 'version = "1.2.3"\n', publish=True)[0].experts


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing file, a folder or non-UTF-8 bytes give one readable issue each."""
    (tmp_path / "latin1.toml").write_bytes(b'model = "caf\xe9"\n')
    for path in (tmp_path / "missing.toml", tmp_path, tmp_path / "latin1.toml"):
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert str(path) in str(caught.value)


def test_load_config_records_the_folder_of_the_file() -> None:
    """The config remembers its folder, which the plan mounts at /expert."""
    config, _ = load_config(FIXTURES / "seed_002_complete.toml")
    assert config.config_dir == str(FIXTURES.resolve())


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        (
            ("experts", "web", "skills", "s", "mcpStdioSkill", "allowedDomains", 1),
            'experts."web".skills."s".allowedDomains[1]',
        ),
        (("experts", "Bad", "[key]"), 'experts."Bad"'),
        (("provider", "openai", "setting", "baseUrl"), "provider.setting.baseUrl"),
        (("experts", "web", "instruction"), 'experts."web".instruction'),
    ],
)
def test_pydantic_locations_render_as_toml_paths(loc: tuple[str | int, ...], expected: str) -> None:
    """Union tags and key markers are dropped; map keys are quoted; indices are bracketed."""
    document = {
        "experts": {"web": {"skills": {"s": {"allowedDomains": ["a", "b"]}}}, "Bad": {}},
        "provider": {"setting": {"baseUrl": "x"}},
    }
    assert toml_path(loc, document, is_missing=loc[-1] == "instruction") == expected
