"""perstack-sandbox: run one Perstack Expert's MCP skills in a hardened Docker sandbox.

The public API, for programs (an agent runtime, a CI job, the CLI itself):

```python
import anyio
import perstack_sandbox

async def main() -> None:
    async with perstack_sandbox.open_run("perstack.toml", "my-expert", secrets={}) as run:
        tools = await run.list_tools()
        result = await run.call_tool(tools[0].name, {})

anyio.run(main)
```

`open_run` takes a config path or a parsed config (`load_config`, `parse_config`) and the
secret values as a mapping (`host_secrets` reads env files and the host environment the way the
CLI does). Every error is a `SandboxError`. Names other than the errors load on first use, so
importing the package (and `perstack-sandbox --help`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

from perstack_sandbox.errors import (
    ConfigError,
    ConfigIssue,
    EngineError,
    EnvFileError,
    GatewayError,
    ImageBuildError,
    InputError,
    IsolationError,
    LockError,
    MissingEnvError,
    RunError,
    RunInterruptedError,
    SandboxError,
    SkillError,
    ToolsChangedError,
    UnknownExpertError,
    UsageError,
)

if TYPE_CHECKING:
    from perstack_sandbox.audit import AuditSink, RunFiles, TeeSink, ToolCall
    from perstack_sandbox.config import PerstackConfig, load_config, parse_config
    from perstack_sandbox.isolation import Isolation
    from perstack_sandbox.plan import Limits, SandboxPlan, Secret, env_file_secrets, host_secrets
    from perstack_sandbox.pool import WarmPool
    from perstack_sandbox.run import ConfigSource, Run, build_image, open_run

__all__ = [
    "AuditSink",
    "ConfigError",
    "ConfigIssue",
    "ConfigSource",
    "EngineError",
    "EnvFileError",
    "GatewayError",
    "ImageBuildError",
    "InputError",
    "Isolation",
    "IsolationError",
    "Limits",
    "LockError",
    "MissingEnvError",
    "PerstackConfig",
    "Run",
    "RunError",
    "RunFiles",
    "RunInterruptedError",
    "SandboxError",
    "SandboxPlan",
    "Secret",
    "SkillError",
    "TeeSink",
    "ToolCall",
    "ToolsChangedError",
    "UnknownExpertError",
    "UsageError",
    "WarmPool",
    "build_image",
    "env_file_secrets",
    "host_secrets",
    "load_config",
    "open_run",
    "parse_config",
]

# Where each lazily loaded public name lives (the modules import the MCP SDK, docker-py, ...).
_LAZY: Final = {
    "AuditSink": "audit",
    "RunFiles": "audit",
    "TeeSink": "audit",
    "ToolCall": "audit",
    "PerstackConfig": "config",
    "load_config": "config",
    "parse_config": "config",
    "Secret": "plan",
    "env_file_secrets": "plan",
    "host_secrets": "plan",
    "Limits": "plan",
    "SandboxPlan": "plan",
    "ConfigSource": "run",
    "Isolation": "isolation",
    "Run": "run",
    "build_image": "run",
    "open_run": "run",
    "WarmPool": "pool",
}


def __getattr__(name: str) -> object:
    """Load a public name from its module on first use.

    Raises:
        AttributeError: `name` is not public.

    """
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    """List the public names."""
    return sorted(__all__)
