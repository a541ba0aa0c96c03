"""The MCP layer a run imports only once its input is good: the gateway, the skills, the SDK.

`perstack-sandbox run` spawned as a process pays for every module it imports before its first
tools/list; the MCP SDK is half a second of that, so it is imported in a thread of its own
while the sandbox starts (docs/architecture.md, decision 49).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from typing import Final

# What a run imports only once it starts: the gateway, the skills' sessions, the MCP SDK.
MCP_LAYER: Final = ("perstack_sandbox.gateway", "perstack_sandbox.skills")


def import_mcp_layer() -> None:
    """Import the gateway and the skills' sessions, and the MCP SDK with them.

    Raises:
        ImportError: the installation is broken.

    """
    for name in MCP_LAYER:
        importlib.import_module(name)


def preload_mcp_layer() -> None:
    """Start importing the MCP layer in a thread of its own, unless it is loaded already.

    In a new process (`perstack-sandbox run`) the import is half a second of CPU in this
    process, and the sandbox's start is engine round trips in worker threads: side by side,
    the import is off the way to the first tools/list (docs/architecture.md, decision 49).
    Whoever needs the layer calls `import_mcp_layer`, which waits for this import to finish.
    """
    if all(name in sys.modules for name in MCP_LAYER):
        return
    threading.Thread(target=_import_quietly, name="perstack-mcp-preload", daemon=True).start()


def _import_quietly() -> None:
    # A failure is raised again, where it is reported, by the `import_mcp_layer` that waits.
    with contextlib.suppress(ImportError):
        import_mcp_layer()
