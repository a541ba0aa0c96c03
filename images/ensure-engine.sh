#!/usr/bin/env bash
# Make sure a Docker engine answers. On a fresh Debian host none runs: install docker.io and
# start dockerd in the background, then wait (bounded) until `docker info` succeeds.
set -euo pipefail

if docker info >/dev/null 2>&1; then
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
    echo "ensure-engine: installing docker.io (no engine found)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
fi

log="${TMPDIR:-/tmp}/perstack-sandbox-dockerd.log"
echo "ensure-engine: starting dockerd (log: $log)" >&2
nohup dockerd >"$log" 2>&1 &

for _ in $(seq 60); do
    if docker info >/dev/null 2>&1; then
        echo "ensure-engine: engine ready" >&2
        exit 0
    fi
    sleep 1
done
echo "ensure-engine: dockerd did not answer within 60 s; last log lines:" >&2
tail -n 20 "$log" >&2
exit 1
