#!/usr/bin/env bash
# Make sure a Docker engine answers. On a fresh Debian host none runs: install docker.io and
# start dockerd (through systemd when it is the init system, else in the background), then wait
# (bounded) until `docker info` succeeds. A dockerd that is already starting is waited for,
# never started twice.
set -euo pipefail

wait_seconds="${PERSTACK_SANDBOX_ENGINE_WAIT:-60}"

answers() { docker info >/dev/null 2>&1; }

wait_for_engine() {
    for _ in $(seq "$wait_seconds"); do
        if answers; then
            echo "ensure-engine: engine ready ($(docker version --format '{{.Server.Version}}'))" >&2
            return 0
        fi
        sleep 1
    done
    return 1
}

if command -v docker >/dev/null 2>&1 && answers; then
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "ensure-engine: no Docker engine and no apt-get: install Docker, or set DOCKER_HOST" >&2
        exit 1
    fi
    echo "ensure-engine: installing docker.io (no engine found)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
fi

log="${TMPDIR:-/tmp}/perstack-sandbox-dockerd.log"
if pgrep -x dockerd >/dev/null 2>&1; then
    echo "ensure-engine: dockerd is running but not answering yet; waiting" >&2
elif [[ "$(cat /proc/1/comm 2>/dev/null)" == "systemd" ]] && command -v systemctl >/dev/null; then
    echo "ensure-engine: starting docker.service" >&2
    systemctl start docker
else
    echo "ensure-engine: starting dockerd (log: $log)" >&2
    nohup dockerd >"$log" 2>&1 &
fi

if wait_for_engine; then
    exit 0
fi
echo "ensure-engine: dockerd did not answer within ${wait_seconds} s; last log lines:" >&2
tail -n 20 "$log" >&2 2>/dev/null || journalctl -u docker -n 20 --no-pager >&2 || true
exit 1
