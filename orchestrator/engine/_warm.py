"""Warm sandboxes: started with no secret, handed their skills' credentials when claimed.

A warm sandbox is `start_sandbox(..., warm=True)`: network, proxy and sandbox container up, no
skill running, and a proxy that lets nothing through (its policy requires a grant and holds
none). The run that claims it calls `grant`: fresh per-skill tokens go to the proxy over its
control channel (`_control`), and only then do the skills start, each with its own token in
its exec environment (docs/architecture.md, decision 33). A run of its own sandbox grants the
same way once its proxy answers (decision 51): no token is ever in a container's config.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import TYPE_CHECKING

from perstack_sandbox.engine._control import send_grant
from perstack_sandbox.engine._policy import skill_grants

if TYPE_CHECKING:
    from perstack_sandbox.engine._exec import ExecProcess
    from perstack_sandbox.engine._sandbox import Sandbox
    from perstack_sandbox.plan import SandboxPlan


async def grant(
    sandbox: Sandbox, plan: SandboxPlan, *, control: ExecProcess | None = None
) -> Sandbox:
    """Give `sandbox`'s proxy fresh per-skill tokens for `plan`; return it with those tokens.

    The grant replaces any earlier one at once: a token handed out before stops working.
    `control` is a client started ahead by `open_control` (else one is started now).

    Raises:
        EngineError: the exec failed, or the proxy refused the grant (its reason is quoted).

    """
    credentials = {name: secrets.token_urlsafe(32) for name in skill_grants(plan)}
    await send_grant(sandbox.proxy_container_id, credentials, skill_grants(plan), control=control)
    return dataclasses.replace(sandbox, credentials=credentials)
