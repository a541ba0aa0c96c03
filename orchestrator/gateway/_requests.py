"""Forwarding everything but tool calls: resources, prompts, completion, logging, tasks.

Each function routes by name, URI or task id (see `_catalog`), forwards to the one skill that
serves it, audits it by shape, and turns the skill's URIs into the host client's form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import mcp_types as types

from perstack_sandbox.errors import UsageError
from perstack_sandbox.gateway._audit import argument_shape, audited

if TYPE_CHECKING:
    from perstack_sandbox.gateway._catalog import Catalog
    from perstack_sandbox.gateway._core import Gateway
    from perstack_sandbox.gateway._hosts import Responder

TASK_METHODS: Final = ("tasks/get", "tasks/result", "tasks/cancel")


async def read_resource(
    gateway: Gateway, uri: str, responder: Responder | None = None
) -> types.ReadResourceResult:
    """Read a resource from the skill that serves its URI.

    Raises:
        UsageError: no skill serves that URI (or pick/omit hides it).
        SkillError: the skill died, timed out or cannot start.
        MCPError: the skill refused the read.

    """
    skill, original = (await _catalog(gateway, uri)).resource(uri)
    request = types.ReadResourceRequest(params=types.ReadResourceRequestParams(uri=original))
    with audited(gateway.audit, "resources/read", skill, uri=uri) as entry:
        result: types.ReadResourceResult = await gateway.forward(
            skill, responder, lambda session: session.send(request, types.ReadResourceResult)
        )
        entry.outcome = "ok"
    return gateway.catalog.expose_results(skill, result)


async def _catalog(gateway: Gateway, uri: str) -> Catalog:
    catalog = gateway.catalog
    if uri in catalog.resources or catalog.template_for(uri) is not None:
        return catalog
    return await gateway.refreshed()  # a skill that starts lazily, or a list that changed


async def get_prompt(
    gateway: Gateway,
    name: str,
    arguments: dict[str, str] | None,
    responder: Responder | None = None,
) -> types.GetPromptResult:
    """Get a prompt from its skill (arguments audited by shape only).

    Raises:
        UsageError: no skill offers that prompt.
        SkillError: the skill died, timed out or cannot start.
        MCPError: the skill refused.

    """
    catalog = gateway.catalog if name in gateway.catalog.prompts else await gateway.refreshed()
    named = catalog.prompt(name)
    params = types.GetPromptRequestParams(name=named.original, arguments=arguments)
    shape = argument_shape(arguments or {})
    with audited(gateway.audit, "prompts/get", named.skill, prompt=name, argShape=shape) as entry:
        result: types.GetPromptResult = await gateway.forward(
            named.skill,
            responder,
            lambda session: session.send(
                types.GetPromptRequest(params=params), types.GetPromptResult
            ),
        )
        entry.outcome = "ok"
    return catalog.expose_results(named.skill, result)


async def complete(gateway: Gateway, params: types.CompleteRequestParams) -> types.CompleteResult:
    """Complete a prompt or resource-template argument, asking the skill that owns it.

    Raises:
        UsageError: no skill offers that prompt or template.
        SkillError: the skill died, timed out or cannot start.
        MCPError: the skill refused.

    """
    catalog = await gateway.refreshed()
    ref = params.ref
    forwarded: types.PromptReference | types.ResourceTemplateReference
    if isinstance(ref, types.PromptReference):
        named = catalog.prompt(ref.name)
        skill, forwarded = named.skill, ref.model_copy(update={"name": named.original})
        target = {"prompt": ref.name}
    else:
        template = catalog.templates.get(ref.uri)
        if template is None:
            raise UsageError(f"no resource template {ref.uri!r}")
        skill, forwarded = template.skill, ref.model_copy(update={"uri": template.original})
        target = {"uri": ref.uri}
    # `_meta` stays behind: a 2026-07-28 envelope would be refused by a handshake-era skill.
    request = types.CompleteRequest(
        params=params.model_copy(update={"ref": forwarded, "meta": None})
    )
    with audited(
        gateway.audit, "completion/complete", skill, argument=params.argument.name, **target
    ) as entry:
        result = await gateway.skills[skill].send(request, types.CompleteResult)
        entry.outcome = "ok"
    return result


async def set_level(gateway: Gateway, level: types.LoggingLevel) -> None:
    """Forward `logging/setLevel` to every running skill that declared logging.

    Raises:
        SkillError: a skill died or timed out.
        MCPError: a skill refused.

    """
    gateway.log_level = level
    for skill in gateway.skills.values():
        capabilities = skill.capabilities
        if capabilities is None or capabilities.logging is None:
            continue
        request = types.SetLevelRequest(params=types.SetLevelRequestParams(level=level))
        with audited(gateway.audit, "logging/setLevel", skill.name, level=level) as entry:
            await skill.send(request, types.EmptyResult)
            entry.outcome = "ok"


async def subscribe(gateway: Gateway, uri: str, *, on: bool) -> None:
    """Subscribe the owning skill to a resource (or unsubscribe), counting host subscribers.

    Raises:
        UsageError: no skill serves that URI.
        SkillError: the skill died, timed out or cannot start.
        MCPError: the skill refused.

    """
    skill, original = (await _catalog(gateway, uri)).resource(uri)
    key = (skill, original)
    count = gateway.subscriptions.get(key, 0)
    gateway.subscriptions[key] = max(count + (1 if on else -1), 0)
    if (on and count) or (not on and count != 1):
        return  # the skill already is (or still must stay) subscribed
    capabilities = gateway.skills[skill].capabilities
    if capabilities is None or not (capabilities.resources and capabilities.resources.subscribe):
        return  # a skill that cannot notify: the host simply never hears of a change
    method = "resources/subscribe" if on else "resources/unsubscribe"
    request: types.ClientRequest = (
        types.SubscribeRequest(params=types.SubscribeRequestParams(uri=original))
        if on
        else types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=original))
    )
    with audited(gateway.audit, method, skill, uri=uri) as entry:
        await gateway.skills[skill].send(request, types.EmptyResult)
        entry.outcome = "ok"


async def call_tool_as_task(
    gateway: Gateway, params: dict[str, Any], responder: Responder | None
) -> dict[str, Any]:
    """Start a task-augmented tool call on its skill; the answer is the skill's CreateTaskResult.

    Raises:
        UsageError: no skill offers that tool.
        SkillError: the skill died, timed out or cannot start.
        MCPError: the skill refused.

    """
    name = str(params.get("name"))
    if name not in gateway.catalog.tools:
        await gateway.refreshed()
    route = gateway.route(name)
    forwarded = {**params, "name": route.original}
    shape = argument_shape(params.get("arguments") or {})
    with audited(
        gateway.audit, "tools/call", route.skill, tool=name, argShape=shape, task=True
    ) as entry:
        created: dict[str, Any] = await gateway.forward(
            route.skill, responder, lambda session: session.send_raw("tools/call", forwarded)
        )
        task_id = (created.get("task") or {}).get("taskId")
        if isinstance(task_id, str):
            gateway.tasks[task_id] = route.skill
        entry.outcome = "task-created"
    return created


async def task_request(
    gateway: Gateway, method: str, params: dict[str, Any], responder: Responder | None
) -> dict[str, Any]:
    """Forward `tasks/get`, `tasks/result` or `tasks/cancel` to the skill that owns the task.

    Raises:
        UsageError: no skill owns that task.
        SkillError: the skill died, timed out or cannot start.
        MCPError: the skill refused.

    """
    task_id = params.get("taskId")
    skill = gateway.tasks.get(task_id) if isinstance(task_id, str) else None
    if skill is None:
        raise UsageError(f"no task {task_id!r} was started through this gateway")
    with audited(gateway.audit, method, skill, task=task_id) as entry:
        answer: dict[str, Any] = await gateway.forward(
            skill, responder, lambda session: session.send_raw(method, params)
        )
        entry.outcome = "ok"
    if method == "tasks/result" and gateway.prefix_tools:
        result = types.CallToolResult.model_validate(answer, by_name=False)
        exposed = gateway.catalog.expose_results(skill, result)
        answer = {**answer, **exposed.model_dump(mode="json", by_alias=True, exclude_none=True)}
    return answer


async def list_tasks(gateway: Gateway) -> dict[str, Any]:
    """List the tasks of every skill that supports `tasks/list` (all pages, no cursor).

    Raises:
        SkillError: a skill died or timed out.
        MCPError: a skill refused.

    """
    tasks: list[Any] = []
    for skill in gateway.skills.values():
        capabilities = skill.capabilities
        if capabilities is None or capabilities.tasks is None or capabilities.tasks.list is None:
            continue
        cursor: str | None = None
        while True:
            page = await skill.send_raw("tasks/list", {"cursor": cursor} if cursor else None)
            for task in page.get("tasks") or []:
                if isinstance(task, dict) and isinstance(task.get("taskId"), str):
                    gateway.tasks.setdefault(task["taskId"], skill.name)
                    tasks.append(task)
            cursor = page.get("nextCursor")
            if not cursor:
                break
    return {"tasks": tasks}
