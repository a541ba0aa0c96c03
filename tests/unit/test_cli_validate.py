"""The validate, plan and schema commands: output format and exit codes, through main()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perstack_sandbox.cli import main

FIXTURES = Path(__file__).parent.parent / "fixtures"
INVALID = FIXTURES / "invalid"


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """Run the console script with `args`; return (exit code, stdout, stderr)."""
    monkeypatch.setattr("sys.argv", ["perstack-sandbox", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_validate_accepts_seed_002(monkeypatch, capsys) -> None:
    """A valid file exits 0 and says so on stdout."""
    code, out, err = run_cli(
        monkeypatch, capsys, "validate", "-c", str(FIXTURES / "seed_002_complete.toml")
    )
    assert (code, err) == (0, "")
    assert "valid (3 experts)" in out


def test_validate_prints_every_allowlist_error_on_its_own_line(monkeypatch, capsys) -> None:
    """Each refused allowedDomains entry is one stderr line with its TOML path; exit 2."""
    code, out, err = run_cli(
        monkeypatch, capsys, "validate", "-c", str(INVALID / "allowed_domains.toml")
    )
    lines = err.splitlines()
    assert (code, out, len(lines)) == (2, "", 10)
    for index, line in enumerate(lines, start=1):
        assert line.startswith(f'error: experts."web".skills."search".allowedDomains[{index}]: ')
    assert "punycode" in lines[0]
    assert "homograph" in lines[-1]


@pytest.mark.parametrize(
    ("fixture", "rule"),
    [
        ("expert_name.toml", "naming rule"),
        ("missing_instruction.toml", "required key 'instruction'"),
        ("version.toml", "semantic versioning"),
        ("skill_type.toml", "unknown skill type"),
        ("sse_http.toml", "must be an https:// URL"),
        ("sse_private.toml", "IP address literal"),
        ("syntax.toml", "(at line 4, column"),
        ("many_errors.toml", "protected variable"),
    ],
)
def test_validate_refuses_with_exit_2_naming_the_rule(
    monkeypatch, capsys, fixture: str, rule: str
) -> None:
    """Every invalid fixture exits 2 with an error line that names the rule."""
    code, _, err = run_cli(monkeypatch, capsys, "validate", "-c", str(INVALID / fixture))
    assert code == 2
    assert rule in err
    assert all(line.startswith("error: ") for line in err.splitlines())


def test_unknown_keys_warn_and_exit_0_unless_strict(monkeypatch, capsys, tmp_path: Path) -> None:
    """An unknown key is a warning (exit 0); under --strict an error with a suggestion (exit 2)."""
    path = tmp_path / "perstack.toml"
    path.write_text('maxStep = 3\n[experts."e"]\ninstruction = "x"\n', encoding="utf-8")
    code, _, err = run_cli(monkeypatch, capsys, "validate", "-c", str(path))
    assert (code, err) == (
        0,
        "warning: maxStep: unknown key 'maxStep' (did you mean 'maxSteps'?)\n",
    )
    code, _, err = run_cli(monkeypatch, capsys, "validate", "--strict", "-c", str(path))
    assert (code, err) == (2, "error: maxStep: unknown key 'maxStep' (did you mean 'maxSteps'?)\n")


def test_publish_refuses_local_commands(monkeypatch, capsys) -> None:
    """--publish applies the registry rules: seed 002's local python skill is refused."""
    code, _, err = run_cli(
        monkeypatch, capsys, "validate", "--publish", "-c", str(FIXTURES / "seed_002_complete.toml")
    )
    assert code == 2
    assert "publish rule: only npx and uvx" in err


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe\x00garbage", b"[[[", b"experts = 3", b'[experts."e"]\nskills = "x"\n', b""],
)
def test_malformed_files_never_print_a_traceback(
    monkeypatch, capsys, tmp_path: Path, content: bytes
) -> None:
    """Binary junk, broken TOML and wrong shapes are input errors (exit 2 or a valid empty file)."""
    path = tmp_path / "perstack.toml"
    path.write_bytes(content)
    code, _, err = run_cli(monkeypatch, capsys, "validate", "-c", str(path))
    assert code == (0 if content == b"" else 2)
    assert "internal error" not in err


def test_validate_of_a_missing_file_is_exit_2(monkeypatch, capsys, tmp_path: Path) -> None:
    """A missing perstack.toml is bad input, reported in one line."""
    code, _, err = run_cli(monkeypatch, capsys, "validate", "-c", str(tmp_path / "none.toml"))
    assert code == 2
    assert "cannot read" in err


def test_plan_prints_text_and_json(monkeypatch, capsys) -> None:
    """Plan prints the readable form by default and sorted JSON under --json."""
    rich = str(FIXTURES / "plan_rich.toml")
    code, out, _ = run_cli(monkeypatch, capsys, "plan", "reviewer", "-c", rich)
    assert code == 0
    assert out.startswith("expert reviewer\n")
    code, out, _ = run_cli(monkeypatch, capsys, "plan", "reviewer", "--json", "-c", rich)
    assert code == 0
    assert json.loads(out)["expert"] == "reviewer"


def test_plan_of_an_unknown_expert_or_without_one_is_exit_2(monkeypatch, capsys) -> None:
    """Asking for an expert that does not exist, or for none, is a usage error, not a crash."""
    seed = str(FIXTURES / "seed_002_complete.toml")
    code, _, err = run_cli(monkeypatch, capsys, "plan", "nope", "-c", seed)
    assert code == 2
    assert "no expert 'nope'" in err
    code, _, err = run_cli(monkeypatch, capsys, "plan", "-c", seed)
    assert code == 2
    assert "Missing argument" in err


def test_plan_of_an_invalid_file_lists_its_errors(monkeypatch, capsys) -> None:
    """Plan validates first and reports every issue the same way validate does."""
    code, _, err = run_cli(
        monkeypatch, capsys, "plan", "web", "-c", str(INVALID / "allowed_domains.toml")
    )
    assert code == 2
    assert len(err.splitlines()) == 10


def test_schema_prints_the_json_schema_of_perstack_toml(monkeypatch, capsys) -> None:
    """The schema command prints a JSON Schema that knows the camelCase keys and skill types."""
    code, out, _ = run_cli(monkeypatch, capsys, "schema")
    schema = json.loads(out)
    assert code == 0
    assert schema["title"] == "perstack.toml"
    assert {"experts", "maxSteps", "provider", "reasoningBudget"} <= set(schema["properties"])
    assert "allowedDomains" in schema["$defs"]["McpStdioSkill"]["properties"]
    assert "lazyInit" in schema["$defs"]["McpStdioSkill"]["properties"]
