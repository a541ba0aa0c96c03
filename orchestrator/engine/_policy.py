"""The proxy's policy of one sandbox: the Expert's list, each skill's own, the test openings.

Pure: `start_sandbox` writes it into the proxy's configuration (without tokens) and the run's
copy, and grants each skill's token and list over the control channel (decision 51); a warm
sandbox's grant (`_warm.grant`) uses the same per-skill lists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from perstack_sandbox.plan import SandboxPlan


@dataclass(frozen=True, slots=True)
class TestNetwork:
    """Test-only openings of the proxy's policy; only the test suites ever set them.

    `allow_cidrs` lets the proxy dial those non-public ranges, `hosts` answers those names
    before DNS, `upstream_ca` (PEM) is trusted upstream on the sealed path.
    """

    __test__ = False  # not a pytest class, whatever its name

    allow_cidrs: tuple[str, ...] = ()
    hosts: Mapping[str, str] = field(default_factory=dict)
    upstream_ca: str = ""

    def policy_keys(self) -> dict[str, object]:
        """Return the policy keys beyond `testAllowCidrs` (none when unused)."""
        keys: dict[str, object] = {}
        if self.hosts:
            keys["testHosts"] = dict(self.hosts)
        if self.upstream_ca:
            keys["testUpstreamCa"] = self.upstream_ca
        return keys


def proxy_policy(
    plan: SandboxPlan,
    run_id: str,
    test_allow_cidrs: Sequence[str],
    credentials: Mapping[str, str],
) -> dict[str, object]:
    """Return the proxy's policy: the Expert's list, and each skill's token and own list.

    `credentials` maps every skill of `skill_grants(plan)` to its token (a warm sandbox's
    proxy gets none: its tokens come later, in a grant).
    """
    return {
        "allowedDomains": list(plan.allowed_domains),
        "sandboxId": run_id,
        "testAllowCidrs": list(test_allow_cidrs),
        "skills": {
            credentials[name]: {"skill": name, "allowedDomains": domains}
            for name, domains in skill_grants(plan).items()
            if name in credentials
        },
    }


def skill_grants(plan: SandboxPlan) -> dict[str, list[str]]:
    """Return each skill's own allowlist: a stdio skill's list, a remote skill's endpoint host.

    The host connects to a remote skill's endpoint and nowhere else on its behalf.
    """
    grants = {launch.name: list(launch.allowed_domains) for launch in plan.skills}
    grants |= {sse.name: [sse.host] for sse in plan.sse_skills}
    return grants


def userinfo_name(name: str) -> str:
    """Return `name` as a URL userinfo user name (informative only: the token decides)."""
    return re.sub(r"[^A-Za-z0-9._~-]", "-", name) or "skill"
