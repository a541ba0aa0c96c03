"""perstack.toml validation: every rule of issue 2, each error located by its TOML path."""

from __future__ import annotations

from pathlib import Path

import pytest

from perstack_sandbox.config import (
    PROTECTED_ENV_NAMES,
    McpSseSkill,
    McpStdioSkill,
    load_config,
    parse_config,
)
from perstack_sandbox.errors import ConfigError

FIXTURES = Path(__file__).parent.parent / "fixtures"
EXPERT = '[experts."e"]\ninstruction = "Do the task."\n'


def errors_of(text: str, **options: bool) -> list[tuple[str, str]]:
    """Return (path, message) of every error `text` produces (none means it validated)."""
    try:
        parse_config(text, **options)
    except ConfigError as exc:
        return [(i.path, i.message) for i in exc.issues if not i.is_warning]
    return []


def only_error(text: str, **options: bool) -> tuple[str, str]:
    """Return the single error of `text`, failing if there is not exactly one."""
    found = errors_of(text, **options)
    assert len(found) == 1, found
    return found[0]


def skill(body: str, key: str = "s") -> str:
    """Wrap a skill table body into a one-expert document."""
    return f'{EXPERT}[experts."e".skills."{key}"]\n{body}\n'


def stdio(**fields: object) -> str:
    """Build a one-skill document with an mcpStdioSkill made of `fields` (TOML literals)."""
    lines = ['type = "mcpStdioSkill"'] + [f"{k} = {v}" for k, v in fields.items()]
    return skill("\n".join(lines))


def stdio_skill(**fields: object) -> McpStdioSkill:
    """Parse a one-skill document and return its validated mcpStdioSkill."""
    config, _ = parse_config(stdio(**fields))
    result = config.experts["e"].skills["s"]
    assert isinstance(result, McpStdioSkill)
    return result


# --- runtime settings --------------------------------------------------------------------


def test_every_runtime_setting_of_the_reference_is_accepted() -> None:
    """All top-level settings of seed 004 (and 002's temperature) validate with their types."""
    config, warnings = parse_config(
        'model = "m"\ntemperature = 0.5\nreasoningBudget = 2048\nruntime = "local"\n'
        'maxSteps = 5\nmaxRetries = 0\ntimeout = 1000\nenvPath = [".env"]\n'
        'perstackApiBaseUrl = "https://api.example.com"\n'
        'perstackBaseSkillCommand = ["npx", "@perstack/base"]\n' + EXPERT
    )
    assert warnings == []
    assert (config.reasoning_budget, config.runtime, config.max_steps) == (2048, "local", 5)
    assert config.env_path == (".env",)


@pytest.mark.parametrize(
    ("line", "path", "fragment"),
    [
        ('reasoningBudget = "huge"', "reasoningBudget", "'minimal', 'low', 'medium', 'high'"),
        ("reasoningBudget = -1", "reasoningBudget", "token count"),
        ('runtime = "podman"', "runtime", "'docker'"),
        ('maxSteps = "50"', "maxSteps", "must be an integer"),
        ("maxSteps = true", "maxSteps", "must be an integer"),
        ("maxSteps = 0", "maxSteps", "greater than or equal to 1"),
        ("maxRetries = -1", "maxRetries", "greater than or equal to 0"),
        ("timeout = 1.5", "timeout", "must be an integer"),
        ("temperature = 1.5", "temperature", "less than or equal to 1"),
        ("envPath = '.env'", "envPath", "must be an array"),
        ('perstackApiBaseUrl = "http://api.example.com"', "perstackApiBaseUrl", "https://"),
        ("model = 3", "model", "must be a string"),
    ],
)
def test_a_bad_runtime_setting_is_refused_at_its_path(line: str, path: str, fragment: str) -> None:
    """Each runtime setting is type- and range-checked, and the error names the key."""
    where, message = only_error(f"{line}\n{EXPERT}")
    assert where == path
    assert fragment in message


@pytest.mark.parametrize(
    ("name", "setting"),
    [
        ("anthropic", 'baseUrl = "https://a.example.com"\nheaders = { "X-A" = "1" }'),
        ("google", 'baseUrl = "https://g.example.com"'),
        ("openai", 'organization = "o"\nproject = "p"\nname = "n"'),
        ("ollama", 'baseUrl = "https://ollama.example.com"'),
        ("azure-openai", 'resourceName = "r"\napiVersion = "v"\nuseDeploymentBasedUrls = true'),
        ("amazon-bedrock", 'region = "eu-west-1"'),
        ("google-vertex", 'project = "p"\nlocation = "us-central1"'),
        ("deepseek", 'headers = { "X-D" = "1" }'),
    ],
)
def test_every_provider_accepts_its_own_settings(name: str, setting: str) -> None:
    """Each providerName validates with the settings its table documents, and no warning."""
    text = f'[provider]\nproviderName = "{name}"\n[provider.setting]\n{setting}\n{EXPERT}'
    config, warnings = parse_config(text)
    assert config.provider is not None
    assert warnings == []


def test_a_setting_of_another_provider_is_an_unknown_key() -> None:
    """amazon-bedrock has no baseUrl, so it is reported (with its path) as unknown."""
    text = '[provider]\nproviderName = "amazon-bedrock"\n[provider.setting]\nbaseUrl = "x"\n'
    _, warnings = parse_config(text + EXPERT)
    assert [w.path for w in warnings] == ["provider.setting.baseUrl"]


def test_provider_base_urls_are_https_only() -> None:
    """A provider baseUrl on plain http is refused."""
    text = '[provider]\nproviderName = "openai"\n[provider.setting]\nbaseUrl = "http://x.io"\n'
    assert only_error(text + EXPERT)[0] == "provider.setting.baseUrl"


def test_an_unknown_provider_is_refused_with_the_list() -> None:
    """The key providerName must be one of the documented providers, reported at that key.

    Issue 12: the path names the exact key (it used to stop at the `provider` table).
    """
    where, message = only_error(f'[provider]\nproviderName = "acme"\n{EXPERT}')
    assert where == "provider.providerName"
    assert "unknown provider name 'acme'" in message
    assert "'deepseek'" in message


# --- experts -------------------------------------------------------------------------------


def test_an_expert_without_version_gets_1_0_0() -> None:
    """The key version defaults to 1.0.0."""
    config, _ = parse_config(EXPERT)
    assert config.experts["e"].version == "1.0.0"


@pytest.mark.parametrize("version", ["1.0", "1", "v1.0.0", "01.0.0", "1.0.0.0", ""])
def test_a_version_that_is_not_semver_is_refused(version: str) -> None:
    """The key version must be MAJOR.MINOR.PATCH."""
    where, message = only_error(f'{EXPERT}version = "{version}"\n')
    assert where == 'experts."e".version'
    assert "semantic versioning" in message


def test_semver_with_prerelease_and_build_is_accepted() -> None:
    """Full semver, prerelease and build metadata included, is a valid version."""
    config, _ = parse_config(f'{EXPERT}version = "2.1.0-rc.1+build.5"\nminRuntimeVersion = "0.1.0"')
    assert config.experts["e"].version == "2.1.0-rc.1+build.5"


def test_min_runtime_version_is_semver() -> None:
    """The key minRuntimeVersion follows the same rule as version."""
    assert only_error(f'{EXPERT}minRuntimeVersion = "latest"\n')[0] == (
        'experts."e".minRuntimeVersion'
    )


def test_a_missing_instruction_is_refused() -> None:
    """The key instruction is required."""
    where, message = only_error('[experts."e"]\ndescription = "d"\n')
    assert where == 'experts."e".instruction'
    assert "required key 'instruction' is missing" in message


def test_instruction_and_description_have_size_limits() -> None:
    """The key instruction is at most 20 KiB and description at most 2048 characters."""
    long_instruction = f'[experts."e"]\ninstruction = "{"x" * (20 * 1024 + 1)}"\n'
    assert only_error(long_instruction)[0] == 'experts."e".instruction'
    long_description = f'{EXPERT}description = "{"d" * 2049}"\n'
    assert only_error(long_description)[0] == 'experts."e".description'
    at_limits = f'[experts."e"]\ninstruction = "{"x" * 20480}"\ndescription = "{"d" * 2048}"\n'
    assert errors_of(at_limits) == []


@pytest.mark.parametrize(
    "key", ["code-reviewer", "@perstack/deep-research", "data-analyzer-v2", "a_b", "0x"]
)
def test_documented_expert_names_are_accepted(key: str) -> None:
    """The seed's valid expert name examples validate."""
    assert errors_of(f'[experts."{key}"]\ninstruction = "x"\n') == []


@pytest.mark.parametrize(
    "key", ["Code-Reviewer", "my.expert", "-x", "@Org/x", "@org/", "a b", "x" * 215, "@/x"]
)
def test_an_invalid_expert_name_is_refused(key: str) -> None:
    """Expert keys follow the documented regex and are at most 214 characters."""
    where, message = only_error(f'[experts."{key}"]\ninstruction = "x"\n')
    assert where == f'experts."{key}"'
    assert "naming rule" in message


def test_delegates_and_tags_are_checked_item_by_item() -> None:
    """Each delegate is an expert name and each tag a lowercase word; errors carry the index."""
    text = f'{EXPERT}delegates = ["ok", "@org/fine", "Not Ok"]\ntags = ["good", "BAD TAG"]\n'
    assert [p for p, _ in errors_of(text)] == [
        'experts."e".delegates[2]',
        'experts."e".tags[1]',
    ]


def test_provider_tools_skills_and_options_are_modelled() -> None:
    """The less-documented providerTools, providerSkills and providerToolOptions validate."""
    text = (
        f'{EXPERT}providerTools = ["webSearch"]\n'
        'providerSkills = [{ type = "builtin", skillId = "pdf" },'
        ' { type = "custom", name = "n", definition = "d" }]\n'
        '[experts."e".providerToolOptions.webSearch]\nmaxUses = 3\n'
        'allowedDomains = ["docs.example.com"]\n'
    )
    config, warnings = parse_config(text)
    assert warnings == []
    options = config.experts["e"].provider_tool_options
    assert options is not None
    assert options.web_search is not None
    assert options.web_search.allowed_domains == ("docs.example.com",)


def test_provider_options_use_the_same_host_rules() -> None:
    """providerToolOptions.webSearch.allowedDomains refuses what skills' allowlists refuse."""
    text = f'{EXPERT}[experts."e".providerToolOptions.webSearch]\nallowedDomains = ["*.com"]\n'
    where, _ = only_error(text)
    assert where == 'experts."e".providerToolOptions.webSearch.allowedDomains[0]'


def test_a_builtin_provider_skill_needs_its_id() -> None:
    """A builtin providerSkill without skillId is refused."""
    where, _ = only_error(f'{EXPERT}providerSkills = [{{ type = "builtin" }}]\n')
    assert where == 'experts."e".providerSkills[0]'


# --- skills --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["file-system", "api.client", "web_search", "@perstack/base"])
def test_documented_skill_names_and_scoped_packages_are_accepted(key: str) -> None:
    """The documented skill name examples and a scoped package name validate."""
    text = skill('type = "mcpStdioSkill"\ncommand = "npx"\npackageName = "p"', key=key)
    assert errors_of(text) == []


@pytest.mark.parametrize("key", ["Web", "-x", ".x", "a b", "@scope", "@Scope/x", "a/b"])
def test_an_invalid_skill_name_is_refused(key: str) -> None:
    """Skill keys follow the documented rule (plus '@scope/name')."""
    text = skill('type = "mcpStdioSkill"\ncommand = "npx"\npackageName = "p"', key=key)
    where, message = only_error(text)
    assert where == f'experts."e".skills."{key}"'
    assert "naming rule" in message


def test_an_unknown_skill_type_is_refused_with_the_three_types() -> None:
    """The key type must be mcpStdioSkill, mcpSseSkill or interactiveSkill."""
    where, message = only_error(skill('type = "mcpHttpSkill"'))
    assert where == 'experts."e".skills."s".type'  # the exact key (issue 12), not the table
    assert message.startswith("unknown skill type 'mcpHttpSkill'")
    assert "interactiveSkill" in message


def test_a_skill_without_type_is_refused() -> None:
    """A skill table without type says which types exist."""
    assert "no skill type given" in only_error(skill('command = "npx"'))[1]


def test_pick_and_omit_together_warn_and_mean_pick_then_omit() -> None:
    """A skill with both pick and omit is a warning that says what it keeps: pick, then omit.

    Issue 2 made this an error; issue 12 reverses it because Perstack accepts it and its own
    reference example (seed 004) sets both. The meaning is defined, so it is a warning.
    """
    config, warnings = parse_config(
        stdio(command='"npx"', packageName='"p"', pick='["a", "b"]', omit='["b", "c"]')
    )
    assert config.experts["e"].skills["s"].omit == ("b", "c")
    assert [(w.path, w.is_warning) for w in warnings] == [('experts."e".skills."s"', True)]
    assert "keeps the tools pick names, then drops those omit names (here: a)" in (
        warnings[0].message
    )
    assert "omit of c changes nothing" in warnings[0].message


def test_pick_and_omit_together_are_an_error_under_strict() -> None:
    """--strict turns the pick-with-omit warning into an error at the skill's path."""
    where, message = only_error(
        stdio(command='"npx"', packageName='"p"', pick='["a"]', omit='["b"]'), strict=True
    )
    assert where == 'experts."e".skills."s"'
    assert "both pick and omit are set" in message


def test_lazy_init_defaults_to_false() -> None:
    """The key lazyInit is an optional boolean that defaults to false."""
    assert stdio_skill(command='"npx"', packageName='"p"').lazy_init is False
    assert stdio_skill(command='"npx"', packageName='"p"', lazyInit="true").lazy_init is True
    assert only_error(stdio(command='"npx"', packageName='"p"', lazyInit='"yes"'))[0].endswith(
        "lazyInit"
    )


def test_allowed_domains_are_stored_canonical() -> None:
    """Allowlist entries are canonicalised once, at validation."""
    found = stdio_skill(command='"npx"', packageName='"p"', allowedDomains='["API.Example.COM."]')
    assert found.allowed_domains == ("api.example.com",)


def test_every_refused_allowlist_spelling_of_the_acceptance_list_is_reported() -> None:
    """The ten spellings of issue 2's acceptance list are all reported, each at its index."""
    with pytest.raises(ConfigError) as caught:
        load_config(FIXTURES / "invalid" / "allowed_domains.toml")
    prefix = 'experts."web".skills."search".allowedDomains'
    reasons = {i.path: i.message.split("'")[1] for i in caught.value.issues}
    assert reasons == {
        f"{prefix}[1]": "punycode",
        f"{prefix}[2]": "public-suffix-wildcard",  # *.com and *.co.uk: ICANN suffixes
        f"{prefix}[3]": "public-suffix-wildcard",
        f"{prefix}[4]": "wildcard",
        f"{prefix}[5]": "wildcard",
        f"{prefix}[6]": "bad-character",
        f"{prefix}[7]": "ip-literal",
        f"{prefix}[8]": "port",
        f"{prefix}[9]": "scheme",
        f"{prefix}[10]": "non-ascii",
    }
    assert "homograph" in caught.value.issues[0].message


@pytest.mark.parametrize(
    "wildcard",
    ["*.googleapis.com", "*.githubusercontent.com", "*.cloudfront.net", "*.azurewebsites.net"],
)
def test_a_wildcard_over_a_shared_suffix_is_accepted_with_a_warning_naming_the_risk(
    wildcard: str,
) -> None:
    """Gemini, GitHub and Azure skills list these; they validate, with a warning at the entry.

    Issue 2 refused them (public suffix list, private section); issue 12 accepts them because
    Perstack does and real skills need them, but every tenant of the suffix is reachable.
    """
    config, warnings = parse_config(
        stdio(command='"npx"', packageName='"p"', allowedDomains=f'["a.example.com", "{wildcard}"]')
    )
    assert config.experts["e"].skills["s"].allowed_domains[1] == wildcard
    assert [w.path for w in warnings] == ['experts."e".skills."s".allowedDomains[1]']
    assert f"EVERY tenant's host under {wildcard[2:]} is reachable" in warnings[0].message


def test_a_wildcard_over_a_shared_suffix_is_an_error_under_strict() -> None:
    """--strict refuses the shared-suffix wildcard, at the entry's own path."""
    where, message = only_error(
        stdio(command='"npx"', packageName='"p"', allowedDomains='["*.github.io"]'), strict=True
    )
    assert where == 'experts."e".skills."s".allowedDomains[0]'
    assert "every tenant" in message.lower()


@pytest.mark.parametrize("wildcard", ["*.com", "*.co.uk", "*.net"])
def test_a_wildcard_over_an_icann_suffix_stays_an_error(wildcard: str) -> None:
    """A wildcard over a whole registry (ICANN section) is refused, strict or not."""
    where, message = only_error(
        stdio(command='"npx"', packageName='"p"', allowedDomains=f'["{wildcard}"]')
    )
    assert where == 'experts."e".skills."s".allowedDomains[0]'
    assert "public-suffix-wildcard" in message


def test_a_file_without_an_expert_warns() -> None:
    """An empty perstack.toml validates but warns that nothing can run; --strict refuses it."""
    config, warnings = parse_config("")
    assert config.experts == {}
    assert [(w.path, w.is_warning) for w in warnings] == [("experts", True)]
    assert "no Expert is defined" in warnings[0].message
    assert only_error('model = "m"\n', strict=True)[0] == "experts"


def test_a_too_long_instruction_is_measured_in_characters() -> None:
    """A 5 MB instruction is over the limit in characters (the unit the docs use), not items."""
    where, message = only_error(f'[experts."e"]\ninstruction = "{"x" * 20481}"\n')
    assert where == 'experts."e".instruction'
    assert message == "must be at most 20480 characters, not 20481"


# --- requiredEnv ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        *sorted(PROTECTED_ENV_NAMES),
        *["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LC_ALL", "http_proxy", "Https_Proxy"],
        *["NPM_CONFIG_REGISTRY", "npm_config_registry", "UV_INDEX_URL", "PIP_INDEX_URL"],
        *["PERSTACK_SANDBOX_RUN", "no_proxy", "all_proxy"],
    ],
)
def test_a_protected_variable_cannot_be_required(name: str) -> None:
    """The key requiredEnv never names a variable the sandbox controls, in any case."""
    where, message = only_error(
        stdio(command='"npx"', packageName='"p"', requiredEnv=f'["{name}"]')
    )
    assert where == 'experts."e".skills."s".requiredEnv[0]'
    assert "protected" in message


@pytest.mark.parametrize("name", ["9LIVES", "A-B", "A B", "", "A=B", "Ä"])
def test_an_invalid_variable_name_is_refused(name: str) -> None:
    """The key requiredEnv entries are valid variable names."""
    text = stdio(command='"npx"', packageName='"p"', requiredEnv=f'["{name}"]')
    assert "not a valid environment variable name" in only_error(text)[1]


def test_ordinary_secret_names_are_accepted() -> None:
    """API keys and tokens with ordinary names are fine."""
    found = stdio_skill(command='"npx"', packageName='"p"', requiredEnv='["EXA_API_KEY", "_T1"]')
    assert found.required_env == ("EXA_API_KEY", "_T1")


# --- packageName and args ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "spec"),
    [
        ("npx", "-y"),
        ("npx", "--registry=http://evil"),
        ("npx", "evil;rm"),
        ("npx", "Upper"),
        ("npx", "git+https://example.com/x.git"),
        ("npx", "./local"),
        ("npx", "file:../x"),
        ("npx", "pkg@npm:other"),
        ("npx", "pkg@"),
        ("npx", "pkg@1.0.0 || evil"),
        ("uvx", "-p"),
        ("uvx", "name==1.0;evil"),
        ("uvx", "https://example.com/x.whl"),
        ("uvx", "name[extra]"),
        ("uvx", "name=1.0"),
    ],
)
def test_a_package_name_cannot_smuggle_a_flag_or_another_source(command: str, spec: str) -> None:
    """The key packageName is a registry package spec, never a flag, path, URL or shell syntax."""
    where, _ = only_error(stdio(command=f'"{command}"', packageName=f'"{spec}"'))
    assert where == 'experts."e".skills."s".packageName'


@pytest.mark.parametrize(
    "flag",
    [
        *["--package=evil", "-p", "--call", "-c", "--prefix", "--registry", "--node-options=x"],
        *["--from", "--with", "--index", "--index-url=x", "--python", "-f", "--offline", "-w"],
    ],
)
def test_launcher_flags_are_refused_in_npx_and_uvx_args(flag: str) -> None:
    """Arguments that would change what npx/uvx executes, or from where, are refused."""
    for command in ("npx", "uvx"):
        text = stdio(command=f'"{command}"', packageName='"p"', args=f'["ok", "{flag}"]')
        assert only_error(text)[0] == 'experts."e".skills."s".args[1]'


@pytest.mark.parametrize("arg", ["a;b", "$(id)", "`id`", "a|b", "a&&b", "x>y", "a\\nb", "'q'"])
def test_shell_syntax_is_refused_in_args(arg: str) -> None:
    """No argument of any skill carries shell syntax or a line break."""
    text = stdio(command='"python3"', args=f'["-m", "{arg}"]')
    assert only_error(text)[0] == 'experts."e".skills."s".args[1]'


def test_local_commands_keep_their_own_flags() -> None:
    """Flags such as -m or -c belong to a local program and are allowed there."""
    found = stdio_skill(command='"python3"', args='["-m", "server", "-c", "conf.toml"]')
    assert found.args == ("-m", "server", "-c", "conf.toml")


@pytest.mark.parametrize("command", ["rm -rf /", "-x", "a;b", "$(x)", "py thon", ""])
def test_a_command_is_a_plain_program_name(command: str) -> None:
    """The key command holds no spaces, shell syntax or leading '-'."""
    assert only_error(stdio(command=f'"{command}"'))[0] == 'experts."e".skills."s".command'


def test_package_name_is_only_for_npx_and_uvx() -> None:
    """A local command with packageName is refused."""
    assert "npx and uvx skills only" in only_error(stdio(command='"python3"', packageName='"p"'))[1]


def test_npx_without_any_package_is_refused() -> None:
    """An npx skill must name its package, in packageName or as its first argument."""
    assert "names no package" in only_error(stdio(command='"npx"', args='["-y"]'))[1]
    assert "names no package" in only_error(stdio(command='"npx"', args='["--verbose", "p"]'))[1]


@pytest.mark.parametrize(
    ("command", "fields", "expected"),
    [
        ("npx", {"packageName": '"exa-mcp-server"'}, ("exa-mcp-server", "", ())),
        ("npx", {"args": '["-y", "@scope/pkg@^1.2", "--v"]'}, ("@scope/pkg", "^1.2", ("--v",))),
        ("npx", {"packageName": '"p@latest"', "args": '["--yes", "a"]'}, ("p", "latest", ("a",))),
        ("uvx", {"args": '["mcp-server-fetch"]'}, ("mcp-server-fetch", "", ())),
        ("uvx", {"packageName": '"tool==1.2"'}, ("tool", "==1.2", ())),
        ("uvx", {"packageName": '"tool>=1,<2"'}, ("tool", ">=1,<2", ())),
        ("uvx", {"packageName": '"tool@1.2"'}, ("tool", "==1.2", ())),
        ("uvx", {"args": '["-y", "mcp-server-fetch"]'}, ("mcp-server-fetch", "", ())),
    ],
)
def test_the_package_spec_is_parsed_from_package_name_or_args(
    command: str, fields: dict[str, str], expected: tuple[str, str, tuple[str, ...]]
) -> None:
    """The spec comes from packageName, else the first non-flag argument; -y/--yes is consumed."""
    assert stdio_skill(command=f'"{command}"', **fields).package_spec() == expected


# --- mcpSseSkill and interactiveSkill ------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "fragment"),
    [
        ("http://api.example.com/sse", "https://"),
        ("https://10.0.0.5/sse", "IP address literal"),
        ("https://192.168.1.1:443/sse", "IP address literal"),
        ("https://169.254.169.254/latest", "IP address literal"),
        ("https://[fd00::1]/sse", "IPv6"),
        ("https://localhost/sse", "single-label"),
        ("https://metadata/sse", "single-label"),
        ("https://user@api.example.com/sse", "user information"),
        ("https://api.example.com:8443/sse", "port 443"),
        ("https://xn--80ak6aa92e.com/sse", "homograph"),
        ("https://2130706433/sse", "IP address literal"),
        ("ftp://api.example.com/sse", "https://"),
        ("api.example.com/sse", "https://"),
    ],
)
def test_an_sse_endpoint_must_be_a_public_https_url(endpoint: str, fragment: str) -> None:
    """The endpoint is https, on 443, and its host passes the host rules (no DNS needed)."""
    where, message = only_error(skill(f'type = "mcpSseSkill"\nendpoint = "{endpoint}"'))
    assert where == 'experts."e".skills."s".endpoint'
    assert fragment in message


def test_an_sse_skill_exposes_its_canonical_host() -> None:
    """The endpoint's host, canonicalised, is what the plan allowlists."""
    config, _ = parse_config(
        skill('type = "mcpSseSkill"\nendpoint = "https://MCP.Example.com:443/sse"')
    )
    found = config.experts["e"].skills["s"]
    assert isinstance(found, McpSseSkill)
    assert found.host == "mcp.example.com"


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ("{", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"type": "string"}', '"type": "object"'),
        ('{"properties": {}}', '"type": "object"'),
        ('{"type": "object", "properties": []}', "properties"),
        ('{"type": "object", "properties": {"a": 1}}', "properties"),
        ('{"type": "object", "required": "a"}', "required"),
        ('{"type": "object", "required": [1]}', "required"),
    ],
)
def test_an_interactive_tool_schema_must_be_an_object_schema(schema: str, fragment: str) -> None:
    """The key inputJsonSchema parses as JSON and describes an object, as MCP tool inputs must."""
    text = skill(
        'type = "interactiveSkill"\n[experts."e".skills."s".tools."askUser"]\n'
        f"inputJsonSchema = '{schema}'"
    )
    where, message = only_error(text)
    assert where == 'experts."e".skills."s".tools."askUser".inputJsonSchema'
    assert fragment in message


def test_an_interactive_skill_needs_tools() -> None:
    """An interactiveSkill without tools is refused."""
    assert only_error(skill('type = "interactiveSkill"'))[0] == 'experts."e".skills."s".tools'
