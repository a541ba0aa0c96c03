"""The lock: exact packages, hashed trees and pinned tool definitions, per expert.

`perstack-sandbox lock` resolves every npx/uvx package inside the fenced build, records the
installed tree's hashes (npm's package-lock, uv's hashed requirement set) and the tools each
skill lists when started in a sandbox. Builds then install exactly that tree, verifying every
hash, and runs refuse a skill whose tools differ (see docs/architecture.md, decisions 35-36).

```
_format.py     the file: path, deterministic rendering, digest, per-expert entries, staleness
_integrity.py  every package of a locked tree must carry a hash (checked before a build)
_diff.py       a readable diff of pinned and listed tool definitions
```
"""

from __future__ import annotations

from perstack_sandbox.lock._diff import tools_diff
from perstack_sandbox.lock._format import (
    LOCK_NAME,
    LOCK_VERSION,
    RELIST_KEY,
    TOOL_FIELDS,
    ExpertLock,
    JsonObject,
    empty_lock,
    expert_lock,
    lock_digest,
    lock_path,
    plan_source,
    read_lock,
    render_lock,
    stale_reasons,
    write_lock,
)
from perstack_sandbox.lock._integrity import (
    check_npm_tree,
    check_requirements,
    requirement_entries,
)

__all__ = [
    "LOCK_NAME",
    "LOCK_VERSION",
    "RELIST_KEY",
    "TOOL_FIELDS",
    "ExpertLock",
    "JsonObject",
    "check_npm_tree",
    "check_requirements",
    "empty_lock",
    "expert_lock",
    "lock_digest",
    "lock_path",
    "plan_source",
    "read_lock",
    "render_lock",
    "requirement_entries",
    "stale_reasons",
    "tools_diff",
    "write_lock",
]
