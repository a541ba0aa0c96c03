"""Label and annotation keys of the Kubernetes backend, and label-safe values.

Every object of a run carries `managed`, `run` and `role`; live runs also carry their owner
(pid, its start time, host and user), so `gc` can tell a crashed run from a running one, as on
Docker (decision 8).
"""

from __future__ import annotations

import re
from typing import Final

PREFIX: Final = "perstack-sandbox"
LABEL_MANAGED: Final = f"{PREFIX}/managed"
LABEL_RUN: Final = f"{PREFIX}/run"
LABEL_ROLE: Final = f"{PREFIX}/role"
LABEL_OWNER_PID: Final = f"{PREFIX}/owner-pid"
LABEL_OWNER_START: Final = f"{PREFIX}/owner-start"
LABEL_OWNER_HOST: Final = f"{PREFIX}/owner-host"
LABEL_OWNER_USER: Final = f"{PREFIX}/owner-user"
LABEL_EXPERT: Final = f"{PREFIX}/expert"  # an annotation: expert keys are not label values
LABEL_SKILLS: Final = f"{PREFIX}/skills"  # an annotation: the skill of each container, in order
ROLE_PROXY: Final = "proxy"
ROLE_SANDBOX: Final = "sandbox"
ROLE_ROOT: Final = "root"
MANAGED_SELECTOR: Final = f"{LABEL_MANAGED}=1"
LABEL_VALUE_MAX: Final = 63


def run_selector(run_id: str) -> str:
    """Return the label selector of every object of `run_id`."""
    return f"{MANAGED_SELECTOR},{LABEL_RUN}={label_value(run_id)}"


def label_value(text: str) -> str:
    """Return `text` as a valid label value: [A-Za-z0-9._-], at most 63, alphanumeric ends."""
    value = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:LABEL_VALUE_MAX]
    return value.strip("._-")
