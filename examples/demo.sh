#!/usr/bin/env bash
# `make demo`: check the example's lock, build the Expert from it (every hash verified), list
# its tools (checked against the pinned ones), call one tool of each skill, show one allowed
# and one refused egress attempt from the proxy's audit log, and tear down.
#
# The allowed host is the npm registry's, derived at run time from `npm config get registry`
# (it is reachable from this kind of machine); the refused one is simply not on the list.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cli=("$root/.venv/bin/perstack-sandbox")
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# A scratch copy of the example whose egress-probe may also reach the registry's host.
work="$(mktemp -d)"
trap 'rm -rf "$work"; "${cli[@]}" gc >/dev/null 2>&1 || true' EXIT
cp "$here/perstack.toml" "$here/perstack-sandbox.lock" "$here/egress_probe.mjs" "$work/"
chmod 755 "$work" && chmod 644 "$work"/*  # skills run as their own uids and must read /expert
allowed_host="$(npm config get registry 2>/dev/null | sed -E 's#^[a-z]+://##; s#[:/].*$##')"
[ -n "$allowed_host" ] || { echo "cannot derive the npm registry host" >&2; exit 1; }
sed -i "s/^allowedDomains = \[\"example.com\"\]$/allowedDomains = [\"example.com\", \"$allowed_host\"]/" \
    "$work/perstack.toml"
config=(-c "$work/perstack.toml")

step "lock --check (perstack-sandbox.lock still matches perstack.toml)"
"${cli[@]}" lock --check "${config[@]}"

step "build (the locked trees are installed into the per-expert image, once; hashes verified)"
"${cli[@]}" build demo "${config[@]}"

step "tools"
"${cli[@]}" tools demo "${config[@]}"

step "call everything/echo"
"${cli[@]}" call demo echo "${config[@]}" --args '{"message": "hello from the sandbox"}'

step "call time/get_current_time"
"${cli[@]}" call demo get_current_time "${config[@]}" --args '{"timezone": "UTC"}'

show_audit() {
    "$root/.venv/bin/python" - <<'PY'
import json
from perstack_sandbox.state import latest_run
run = latest_run()
for line in run.audit_path.read_text().splitlines() if run else []:
    event = json.loads(line)
    if "decision" in event:  # the proxy's verdicts; connection-close records are left out
        keep = {k: event[k] for k in ("decision", "host", "port", "reason") if k in event}
        print("  audit:", json.dumps(keep, sort_keys=True))
PY
}

step "egress: an allowlisted host (through the proxy)"
"${cli[@]}" call demo fetch_status "${config[@]}" --args "{\"url\": \"https://$allowed_host/\"}"
show_audit

step "egress: a host that is not on the allowlist"
"${cli[@]}" call demo fetch_status "${config[@]}" --args '{"url": "https://example.org/"}'
show_audit

step "teardown"
"${cli[@]}" gc
echo "nothing of the demo is left running"
