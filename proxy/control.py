"""``python -m proxy.control [SOCKET]``: send the JSON message on stdin to a running proxy.

Prints the proxy's JSON reply; exit status 0 when it says ``{"ok": true}``, else 1.
"""

from __future__ import annotations

import sys

from ._control import main

if __name__ == "__main__":
    sys.exit(main())
