"""Build output is written by install scripts: it reaches progress, errors and stderr escaped."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from perstack_sandbox.engine import _fence
from perstack_sandbox.errors import ImageBuildError
from perstack_sandbox.images import _build

if TYPE_CHECKING:
    from pathlib import Path

HOSTILE = "\x1b]0;PWNED\x07\x1b[2J\u202eexe.txt\x9b31m"
SHOWN = "\\x1b]0;PWNED\\x07\\x1b[2J\\u202eexe.txt\\x9b31m"
RAW = ("\x1b", "\x07", "\u202e", "\x9b")


def has_raw_controls(text: str) -> bool:
    """Tell whether `text` still holds an escape, bell, C1 CSI or bidi override."""
    return any(char in text for char in RAW)


def test_every_progress_line_of_a_build_is_escaped() -> None:
    """A step's output with terminal escapes and a bidi override reaches progress defused."""
    seen: list[str] = []
    events = [
        {"stream": "Step 1/2 : RUN npm install x\n"},
        {"stream": f"postinstall: {HOSTILE}\n"},
        {"aux": {"ID": "sha256:ff"}},
    ]
    assert _build._follow(events, "t", seen.append) == "sha256:ff"
    assert seen == ["Step 1/2 : RUN npm install x", f"postinstall: {SHOWN}"]


def test_the_engines_colour_codes_are_dropped_and_other_escapes_kept_visible() -> None:
    """The red the engine wraps stderr in is dropped; a cursor move in the same line is shown."""
    seen: list[str] = []
    events = [{"stream": "\x1b[91mnpm error\x1b[1A\n\x1b[0m\n"}, {"aux": {"ID": "i"}}]
    _build._follow(events, "t", seen.append)
    assert seen == ["npm error\\x1b[1A"]


def test_a_failed_builds_error_holds_its_output_and_error_escaped() -> None:
    """The step output kept in the error, and the engine's error text, are both escaped."""
    events = [
        {"stream": "Step 1/1 : RUN npm install x\n"},
        {"stream": f"{HOSTILE}\n"},
        {"error": f"The command returned a non-zero code: 1 {HOSTILE}"},
    ]
    with pytest.raises(ImageBuildError) as failed:
        _build._follow(events, "t", lambda _line: None)
    message = str(failed.value)
    assert message.count(SHOWN) == 2
    assert not has_raw_controls(message)


def test_the_default_progress_sink_escapes_what_it_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """stderr_progress (used by every command) never writes a raw control character."""
    _build.stderr_progress(f"building: {HOSTILE}")
    assert capsys.readouterr().err == f"building: {SHOWN}\n"


def test_hosts_a_build_asked_for_are_named_escaped(tmp_path: Path) -> None:
    """The hosts an install script tried (its raw CONNECT target) are escaped in the report."""
    audit = tmp_path / "audit.jsonl"
    audit.write_text(json.dumps({"decision": "deny", "rawHost": f"evil{HOSTILE}"}) + "\n")
    report = _fence.describe_refusals(audit)
    assert f"evil{SHOWN}" in report
    assert not has_raw_controls(report)
