"""Every complete perstack.toml example of Perstack's own documentation validates and plans.

The fixtures are verbatim copies of the documentation's complete examples: seed 002's "File
Structure" and "Complete Example", and seed 004's "Complete Example". Users copy these.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perstack_sandbox.cli import main
from perstack_sandbox.config import load_config
from perstack_sandbox.plan import plan, plan_to_json, plan_to_text

FIXTURES = Path(__file__).parent.parent / "fixtures"
SEEDS = sorted(FIXTURES.glob("seed_*.toml"))
# The one thing the documentation's examples do that a reviewer should notice.
EXPECTED_WARNINGS = {
    "seed_004_complete.toml": ['experts."my-expert".skills."static-analyzer"'],
}


def test_the_three_complete_examples_are_all_fixtures() -> None:
    """The seed fixtures are the three complete examples (a renamed one would go untested)."""
    assert [path.name for path in SEEDS] == [
        "seed_002_complete.toml",
        "seed_002_file_structure.toml",
        "seed_004_complete.toml",
    ]


@pytest.mark.parametrize("path", SEEDS, ids=lambda path: path.name)
def test_a_complete_example_validates_and_every_expert_plans(path: Path) -> None:
    """The example validates with only its expected warnings, and each of its Experts plans."""
    config, warnings = load_config(path)
    assert [w.path for w in warnings] == EXPECTED_WARNINGS.get(path.name, [])
    assert config.experts
    for key in config.experts:
        sandbox = plan(config, key)
        assert json.loads(plan_to_json(sandbox))["expert"] == key
        assert plan_to_text(sandbox).startswith(f"expert {key}\n")


@pytest.mark.parametrize("path", SEEDS, ids=lambda path: path.name)
def test_the_cli_validates_and_plans_a_complete_example(
    path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`validate` and `plan EXPERT --json` exit 0 on the example, for every Expert in it."""
    config, _ = load_config(path)
    for args in (["validate"], *(["plan", key, "--json"] for key in config.experts)):
        monkeypatch.setattr("sys.argv", ["perstack-sandbox", *args, "-c", str(path)])
        try:
            main()
        except SystemExit as exc:
            pytest.fail(f"{args} exited {exc.code}: {capsys.readouterr().err}")
        out, err = capsys.readouterr()
        assert "error:" not in err
        assert out
