"""Text that came from a sandbox, made safe for a terminal or a log file.

A skill controls its stderr, its JSON-RPC error messages and its tool names and descriptions.
Printed raw, escape sequences in them would drive the user's terminal (set its title, rewrite
lines, write the clipboard with OSC 52) and bidirectional overrides would reorder what the user
reads. Everything printed on the host passes through `printable()` first.
"""

from __future__ import annotations

import re
from typing import Final

from perstack_sandbox.errors import ConfigError, EnvFileError, SandboxError

# C0 controls except tab and newline, DEL, C1 controls, and the bidirectional formatting marks.
_UNSAFE: Final = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"  # noqa: PLR2004 - one byte


def printable(text: str) -> str:
    """Return `text` with every control and bidi-formatting character shown as an escape."""
    return _UNSAFE.sub(_escape, text)


def error_lines(error: SandboxError) -> list[str]:
    """Render an error the way the CLI prints it on stderr (and `serve` answers it).

    One line per config issue or env-file line, with its place; messages may quote a skill
    (stderr lines, JSON-RPC errors), so control characters are escaped.
    """
    if isinstance(error, ConfigError):
        return [printable(f"{'warning' if i.is_warning else 'error'}: {i}") for i in error.issues]
    if isinstance(error, EnvFileError):
        return [printable(f"error: {problem}") for problem in error.problems]
    return [printable(f"error: {error}")]
