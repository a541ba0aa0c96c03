"""The one error tree of perstack-sandbox.

```
SandboxError                     every error we raise on purpose
├── InputError                   bad input: exit code 2
│   ├── ConfigError              perstack.toml is unreadable or invalid (holds every issue)
│   ├── UnknownExpertError       the expert key is not in the config
│   ├── MissingEnvError          a skill's requiredEnv variable has no value
│   └── UsageError               a bad command-line value (JSON, address, path)
│       └── EnvFileError         an env file has malformed lines (holds every one)
│   └── LockError                perstack-sandbox.lock is unreadable, malformed or stale
└── RunError                     the run failed: exit code 1
    ├── RunInterruptedError      stopped by SIGINT or SIGTERM, torn down: exit code 130 (`run`: 0)
    ├── EngineError              the Docker engine is missing, unreachable or refused a call
    │   ├── ImageBuildError      an image build failed (holds the failing step's output)
    │   └── IsolationError       the isolation asked for (gVisor) is not available here
    ├── SkillError               a skill failed to start, died, or timed out
    │   └── ToolsChangedError    a skill's tools differ from the lock: it is refused
    └── GatewayError             the gateway could not serve (collision, bind, transport)
```

The CLI maps these classes to exit codes in one table; nothing else calls `sys.exit`.
Errors of dependencies never leak: the edges that call them re-raise as one of these `from exc`.
"""

from __future__ import annotations

from dataclasses import dataclass


class SandboxError(Exception):
    """Root of every error perstack-sandbox raises on purpose."""


class InputError(SandboxError):
    """The user's input (config, arguments, environment) is wrong; exit code 2."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in perstack.toml, located by its TOML path (e.g. `experts."a".version`)."""

    path: str
    message: str
    is_warning: bool = False

    def __str__(self) -> str:
        """Render as `path: message`, the form `validate` prints."""
        where = self.path or "<document>"
        return f"{where}: {self.message}"


class ConfigError(InputError):
    """perstack.toml is invalid; `issues` holds every problem found, not just the first."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        """Keep every issue; the message is all of them, one per line."""
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


class UnknownExpertError(InputError):
    """The requested expert key does not exist in the config."""


class MissingEnvError(InputError):
    """A variable named in a skill's requiredEnv has no value (names only, never values)."""


class UsageError(InputError):
    """A command-line value is malformed (JSON arguments, listen address, paths)."""


class EnvFileError(UsageError):
    """An env file has malformed lines; `problems` holds every one as `file:line: why`."""

    def __init__(self, problems: list[str]) -> None:
        """Keep every problem; the message is all of them, one per line."""
        self.problems = problems
        super().__init__("\n".join(problems))


class LockError(InputError):
    """perstack-sandbox.lock is unreadable, malformed, or does not cover the Expert's skills."""


class RunError(SandboxError):
    """The run itself failed; exit code 1."""


class RunInterruptedError(RunError):
    """The run was stopped by SIGINT or SIGTERM and torn down; exit code 130.

    `run` (a server, whose normal end is a signal) does not raise it and exits 0.
    """


class EngineError(RunError):
    """The Docker engine is missing, unreachable, or refused an operation."""


class ImageBuildError(EngineError):
    """An image build failed; the message carries the output of the step that failed."""


class IsolationError(EngineError):
    """The isolation asked for is not available on this engine; never replaced by a weaker one.

    The message says how to install and register it.
    """


class SkillError(RunError):
    """A skill failed to start, died, or did not answer in time."""


class GatewayError(RunError):
    """The gateway could not start or serve (tool-name collision, bind failure)."""


class ToolsChangedError(SkillError):
    """A skill listed tools that differ from its lock entry; the message holds the diff."""


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Return the one leaf of a chain of single-member groups, else the group itself."""
    current: BaseException = group
    while isinstance(current, BaseExceptionGroup) and len(current.exceptions) == 1:
        current = current.exceptions[0]
    return group if isinstance(current, BaseExceptionGroup) else current
