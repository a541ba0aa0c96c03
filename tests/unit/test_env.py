"""Secret resolution: dotenv parsing, file precedence, missing variables, exact skill env."""

from __future__ import annotations

import pickle

import pytest

from perstack_sandbox.errors import EnvFileError, MissingEnvError, UsageError
from perstack_sandbox.plan import (
    MINIMAL_PATH,
    SandboxPlan,
    Secret,
    SkillLaunch,
    SkillSecrets,
    env_files,
    load_env_files,
    parse_dotenv,
    resolve_secrets,
    skill_environment,
)

CANARY = "s3cr3t-canary-value"


def _plan(**env_by_skill: tuple[str, ...]) -> SandboxPlan:
    skills = tuple(
        SkillLaunch(
            name=name,
            kind="local",
            argv=("python3", "server.py"),
            package=None,
            env_names=names,
            workdir="/expert",
        )
        for name, names in env_by_skill.items()
    )
    return SandboxPlan(expert="e", config_dir="/cfg", skills=skills)


def _reveal(values: dict[str, Secret]) -> dict[str, str]:
    return {name: value.reveal() for name, value in values.items()}


def test_secret_never_prints_its_value():
    """repr, str, f-strings and format specs all show a placeholder instead of the value."""
    secret = Secret(CANARY)
    rendered = [repr(secret), str(secret), f"{secret}", f"{secret:>40}", repr([secret])]
    assert all(CANARY not in text for text in rendered)
    assert secret.reveal() == CANARY


def test_secret_refuses_pickling():
    """A secret cannot be serialised by accident."""
    with pytest.raises(TypeError):
        pickle.dumps(Secret(CANARY))


def test_dotenv_parses_bare_quoted_and_exported_values():
    """Bare, single-quoted, double-quoted with escapes, and `export` lines all parse."""
    text = (
        "# comment\n\n"
        "A=plain value # trailing comment\n"
        "export B='single #not comment'\n"
        'C="line\\nbreak \\"q\\""  # c\n'
        "D=\n"
        "E = spaced\n"
    )
    values = _reveal(parse_dotenv(text, source="f"))
    assert values == {
        "A": "plain value",
        "B": "single #not comment",
        "C": 'line\nbreak "q"',
        "D": "",
        "E": "spaced",
    }


def test_dotenv_later_key_overrides_earlier():
    """The last assignment of a key wins."""
    assert _reveal(parse_dotenv("A=1\nA=2\n", source="f")) == {"A": "2"}


@pytest.mark.parametrize(
    "line",
    [
        "NOEQUALS",
        "1BAD=x",
        "BAD-NAME=x",
        f"A='{CANARY}",
        f'A="{CANARY}',
        f'A="{CANARY}" trailing',
        f'A="{CANARY}\\q"',
        f"A={CANARY}'",
    ],
)
def test_dotenv_rejects_malformed_lines_without_echoing_values(line):
    """A malformed line is an error naming file and line number, never the value."""
    with pytest.raises(UsageError) as caught:
        parse_dotenv(f"OK=1\n{line}\n", source="secrets.env")
    assert "secrets.env:2" in str(caught.value)
    assert CANARY not in str(caught.value)


def test_dotenv_reports_every_bad_line_at_once_with_its_number():
    """Three malformed lines give three problems, each `file:line`, in file order."""
    text = f"OK=1\nNOEQUALS\nB=2\n1BAD=x\nC='{CANARY}\n"
    with pytest.raises(EnvFileError) as caught:
        parse_dotenv(text, source="secrets.env")
    assert [p.split(": ")[0] for p in caught.value.problems] == [
        "secrets.env:2",
        "secrets.env:4",
        "secrets.env:5",
    ]
    assert CANARY not in str(caught.value)


def test_dotenv_accepts_a_utf8_byte_order_mark(tmp_path):
    """A file saved with a BOM (Windows editors do) reads like one without."""
    path = tmp_path / ".env"
    path.write_bytes(b"\xef\xbb\xbfFIRST=1\nSECOND=2\n")
    assert _reveal(load_env_files([(path, True)])) == {"FIRST": "1", "SECOND": "2"}
    assert _reveal(parse_dotenv("\ufeffA=1\n", source="f")) == {"A": "1"}


def test_dotenv_warns_about_a_key_set_twice_in_one_file_naming_both_lines():
    """A duplicate key keeps the later value and warns with both line numbers, no value."""
    warnings: list[str] = []
    values = parse_dotenv(f"A={CANARY}\nB=1\nA=2\n", source="f", warn=warnings.append)
    assert _reveal(values) == {"A": "2", "B": "1"}
    assert warnings == ["f:3: A is set again (first on line 1); the later value wins"]


def test_a_key_in_two_files_is_an_override_not_a_warning(tmp_path):
    """Later files override earlier ones by design (.env.local over .env): no warning."""
    (tmp_path / ".env").write_text("A=1\n")
    (tmp_path / ".env.local").write_text("A=2\n")
    warnings: list[str] = []
    values = load_env_files(env_files(tmp_path), warn=warnings.append)
    assert (_reveal(values), warnings) == ({"A": "2"}, [])


def test_env_files_prefer_cli_then_toml_then_defaults(tmp_path):
    """`--env-path` beats the TOML's envPath, which beats `.env` + `.env.local`."""
    cli = [tmp_path / "x.env"]
    assert env_files(tmp_path, cli, ["a.env"]) == [(tmp_path / "x.env", True)]
    assert env_files(tmp_path, (), ["a.env", "b/c.env"]) == [
        (tmp_path / "a.env", False),
        (tmp_path / "b" / "c.env", False),
    ]
    assert env_files(tmp_path) == [(tmp_path / ".env", False), (tmp_path / ".env.local", False)]


def test_relative_env_paths_resolve_against_the_config_folder(tmp_path):
    """A relative envPath entry is read from the config's folder, not the current one."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "k.env").write_text("K=from-config-dir\n")
    values = load_env_files(env_files(tmp_path, (), ["sub/k.env"]))
    assert _reveal(values) == {"K": "from-config-dir"}


def test_later_env_file_overrides_earlier_and_optional_missing_files_are_skipped(tmp_path):
    """`.env.local` overrides `.env`; an absent default file is not an error."""
    (tmp_path / ".env").write_text("A=1\nB=1\n")
    (tmp_path / ".env.local").write_text("B=2\n")
    assert _reveal(load_env_files(env_files(tmp_path))) == {"A": "1", "B": "2"}
    (tmp_path / ".env.local").unlink()
    assert _reveal(load_env_files(env_files(tmp_path))) == {"A": "1", "B": "1"}


def test_missing_cli_env_file_is_an_input_error(tmp_path):
    """A file named with `--env-path` must exist."""
    with pytest.raises(UsageError, match="not found"):
        load_env_files(env_files(tmp_path, [tmp_path / "nope.env"]))


def test_real_environment_wins_over_files():
    """A variable set in the host environment overrides the same name from a file."""
    plan = _plan(a=("TOKEN",))
    resolved = resolve_secrets(plan, {"TOKEN": Secret("file")}, {"TOKEN": "real"})
    assert resolved["a"].values["TOKEN"].reveal() == "real"


def test_each_skill_gets_only_its_own_required_values():
    """Skill A's resolved values hold only A's requiredEnv names."""
    plan = _plan(a=("A_KEY",), b=("B_KEY",))
    resolved = resolve_secrets(plan, {}, {"A_KEY": "1", "B_KEY": "2", "OTHER": "3"})
    assert set(resolved["a"].values) == {"A_KEY"}
    assert set(resolved["b"].values) == {"B_KEY"}


def test_missing_variables_are_all_named_with_their_skills():
    """Every missing variable is reported at once, with each skill that needs it."""
    plan = _plan(a=("X", "Y"), b=("X",), c=("Z",))
    with pytest.raises(MissingEnvError) as caught:
        resolve_secrets(plan, {}, {"Z": CANARY})
    message = str(caught.value)
    assert "X (needed by 'a', 'b')" in message
    assert "Y (needed by 'a')" in message
    assert "Z" not in message.split("variables:")[1].split(".", maxsplit=1)[0]
    assert CANARY not in message


def test_skill_environment_is_exactly_secrets_proxy_and_minimal_vars():
    """The exec environment is requiredEnv + proxy/CA + PATH, HOME, TMPDIR, LANG, nothing else."""
    proxy = {"HTTPS_PROXY": "http://10.0.0.2:3128", "SSL_CERT_FILE": "/etc/ssl/ca.pem"}
    env = skill_environment(
        SkillSecrets(skill="a", values={"API_KEY": Secret(CANARY)}),
        proxy_env=proxy,
        home="/home/skill-0",
    )
    assert env == {
        "API_KEY": CANARY,
        "HTTPS_PROXY": "http://10.0.0.2:3128",
        "SSL_CERT_FILE": "/etc/ssl/ca.pem",
        "PATH": MINIMAL_PATH,
        "HOME": "/home/skill-0",
        "TMPDIR": "/home/skill-0",
        "LANG": "C.UTF-8",
    }


def test_skill_environment_refuses_secret_names_that_shadow_sandbox_variables():
    """A requiredEnv name may not replace the proxy or PATH variables."""
    with pytest.raises(UsageError, match="HTTPS_PROXY"):
        skill_environment(
            SkillSecrets(skill="a", values={"HTTPS_PROXY": Secret(CANARY)}),
            proxy_env={"HTTPS_PROXY": "http://10.0.0.2:3128"},
            home="/h",
        )
