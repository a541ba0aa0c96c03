"""What the gateway answers by itself: interactive tools' questions and results, as JSON."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

import mcp_types as types

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from perstack_sandbox.plan import InteractiveTool

_QUESTION_KEYS: Final = ("question", "message", "prompt", "text", "action")


def question_for(item: InteractiveTool, arguments: Mapping[str, Any]) -> str:
    """Return the text shown to the user for an interactive tool call."""
    for key in _QUESTION_KEYS:
        value = arguments.get(key)
        if isinstance(value, str) and value.strip():
            return value
    detail = json.dumps(dict(arguments), sort_keys=True) if arguments else ""
    return "\n".join(part for part in (item.description or item.name, detail) if part)


def input_needed(item: InteractiveTool, message: str) -> types.CallToolResult:
    """Return the error result for an interactive tool when nobody can be asked."""
    return text_result(
        f"Input is needed from the user for {item.skill}/{item.name}, but this client supports "
        f"neither MCP elicitation nor a terminal prompt. Question: {message}",
        error=True,
    )


def text_result(text: str, *, error: bool = False) -> types.CallToolResult:
    """Return a CallToolResult with one text block."""
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=error)


def tools_payload(tools: Sequence[types.Tool]) -> list[dict[str, Any]]:
    """Return tools as MCP JSON (camelCase keys, no nulls)."""
    return [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in tools]


def result_payload(result: types.CallToolResult) -> dict[str, Any]:
    """Return a CallToolResult as MCP JSON (camelCase keys, no nulls)."""
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)
