"""Text from a sandbox is made safe before it reaches a terminal."""

from __future__ import annotations

import pytest

from perstack_sandbox import audit
from perstack_sandbox.cli import error_lines
from perstack_sandbox.errors import SkillError
from perstack_sandbox.text import printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),  # OSC: set the window title
        ("\x1b[2J", "\\x1b[2J"),  # CSI: clear the screen
        ("\x9b31m", "\\x9b31m"),  # C1 CSI
        ("\x1b]52;c;cGF5bG9hZA==\x07", "\\x1b]52;c;cGF5bG9hZA==\\x07"),  # OSC 52: clipboard
        ("a\rb\x00c\x7f", "a\\x0db\\x00c\\x7f"),
        ("safe\u202eexe.txt", "safe\\u202eexe.txt"),  # bidi override (Trojan Source)
    ],
)
def test_control_and_bidi_characters_are_shown_as_escapes(raw: str, shown: str) -> None:
    """Every control character and bidi override becomes a visible escape."""
    assert printable(raw) == shown


def test_newlines_tabs_and_ordinary_unicode_are_kept() -> None:
    """Line structure and non-ASCII letters survive unchanged."""
    text = "line one\n\tline two: caf\u00e9 \u65e5\u672c"
    assert printable(text) == text


def test_cli_error_lines_escape_what_a_skill_wrote() -> None:
    """An error quoting a skill's stderr is printed with its escape sequences defused."""
    lines = error_lines(SkillError("skill 'x' exited; last stderr lines:\n  | \x1b]0;pwned\x07"))
    assert lines == ["error: skill 'x' exited; last stderr lines:\n  | \\x1b]0;pwned\\x07"]


def test_audit_text_escapes_tool_names() -> None:
    """A tool name with an escape sequence is shown escaped in `audit` output."""
    tool = audit.ToolSummary(skill="s", tool="evil\x1b[2J", calls=1, outcomes={"ok": 1})
    summary = audit.RunSummary(
        run_id="r",
        kind="run",
        expert="e",
        status="finished",
        started="",
        ended="",
        image="",
        allowlist={},
        packages=[],
        hosts=[],
        tools=[tool],
        calls=[],
        unreadable_lines={},
    )
    assert "evil\\x1b[2J" in audit.render_text(summary)
    assert "\x1b" not in audit.render_text(summary)
