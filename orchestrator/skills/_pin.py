"""`ToolPin`: a skill's tools must be the ones its lock entry pinned (rug-pull defence).

A skill whose tool descriptions or schemas change can hand the model new instructions (MCP
tool poisoning). With a lock, every listing of a skill's tools, at start and after each of its
`tools/list_changed`, is compared with the pinned definitions (name, description, input and
output schema). A new or changed tool refuses the skill with a readable diff, unless the run
accepts changes (`--accept-tool-changes`); either way the decision goes to the run's audit. A
locked tool the skill does not list is no refusal: skills hide tools a client cannot serve
(one that needs elicitation, from a client without it), and `lock` lists with every
capability declared, so the lock holds the most any client sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perstack_sandbox.audit import NULL_SINK
from perstack_sandbox.errors import ToolsChangedError
from perstack_sandbox.lock import TOOL_FIELDS, tools_diff

if TYPE_CHECKING:
    from collections.abc import Sequence

    import mcp_types as types

    from perstack_sandbox.audit import AuditSink


def pinned_tools(tools: Sequence[types.Tool]) -> list[dict[str, Any]]:
    """Return tool definitions as the lock records them: the pinned fields, sorted by name."""
    pinned: list[dict[str, Any]] = []
    for tool in tools:
        dumped = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
        pinned.append({str(key): dumped[key] for key in TOOL_FIELDS if key in dumped})
    return sorted(pinned, key=lambda tool: str(tool["name"]))


@dataclass
class ToolPin:
    """One skill's pinned tools and what to do when its listing differs."""

    locked: list[dict[str, Any]]
    accept_changes: bool = False
    audit: AuditSink = NULL_SINK
    refusal: str | None = field(default=None, init=False)
    _matched: bool = field(default=False, init=False)  # the first match is audited, once

    def check(self, skill: str, tools: Sequence[types.Tool]) -> None:
        """Compare a listing with the pin; refuse (and keep refusing) the skill on a change.

        Raises:
            ToolsChangedError: the tools differ and changes are not accepted (the diff is in
                the message), or the skill was refused before.

        """
        if self.refusal is not None:
            raise ToolsChangedError(self.refusal)
        listed = pinned_tools(tools)
        names = {tool["name"] for tool in listed}
        # A skill may hide tools its client cannot serve (no elicitation, say): a locked tool
        # that is not listed carries no new instruction, so only new and changed tools count.
        diff = tools_diff(skill, [tool for tool in self.locked if tool["name"] in names], listed)
        if not diff:
            if not self._matched:
                self._matched = True
                self.audit.info(f"tool-pin matched: skill {skill!r} lists the locked tools")
            return
        if self.accept_changes:
            self.audit.warning(
                f"tool-pin accepted: skill {skill!r} lists tools that differ from "
                f"perstack-sandbox.lock (--accept-tool-changes):\n{diff}"
            )
            return
        self.refusal = (
            f"skill {skill!r} is refused: its tools differ from perstack-sandbox.lock "
            "(a changed description or schema can carry new instructions to the model). "
            "Review the diff; accept it once with --accept-tool-changes, or record it with "
            f"`perstack-sandbox lock --update`.\n{diff}"
        )
        self.audit.warning(f"tool-pin refused: {self.refusal}")
        raise ToolsChangedError(self.refusal)
