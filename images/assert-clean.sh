#!/usr/bin/env bash
# Run after the whole test suite: fail if any container, volume or network carrying our labels
# remains.
# The shared egress network has no owner (every sandbox's proxy joins it); once no container
# uses it, it is removed here first, like `perstack-sandbox gc` would. Anything else left is a
# leak of the suite and fails the build, listed so it can be traced to its run id.
set -euo pipefail

stale_egress=""

label="perstack-sandbox.managed=1"

# The last run's proxy may still be leaving it (its reaper sweeps until nothing new appears), so
# try for a bounded while; a container still attached after that is listed below as a leak.
for _ in $(seq 30); do
    egress=$(docker network ls -q --filter "label=$label" --filter "label=perstack-sandbox.role=egress")
    [[ -z "$egress" ]] && break
    for net in $egress; do
        docker network rm "$net" >/dev/null 2>&1 || true
    done
    sleep 1
done

# Docker 20.10 can keep a stale endpoint on a network after a container that was being connected
# is force-removed: `network rm` then says "has active endpoints" with no container attached.
# That is the engine's record, not a sandbox of ours; say so, and judge everything else.
for net in $(docker network ls -q --filter "label=$label" --filter "label=perstack-sandbox.role=egress"); do
    attached=$(docker network inspect "$net" --format '{{len .Containers}}')
    if [[ "$attached" == "0" ]]; then
        echo "assert-clean: warning: the egress network $net has no container attached but the" \
            "engine keeps a stale endpoint on it; it is not counted as a leak" >&2
        stale_egress="$net"
    fi
done

containers=$(docker ps -aq --filter "label=$label")
volumes=$(docker volume ls -q --filter "label=$label")
networks=$(docker network ls -q --filter "label=$label" | grep -v -x -F "${stale_egress:-none}" || true)
if [[ -z "$containers" && -z "$volumes" && -z "$networks" ]]; then
    echo "assert-clean: no perstack-sandbox containers, volumes or networks left" >&2
    exit 0
fi
echo "assert-clean: the suite left objects behind:" >&2
if [[ -n "$containers" ]]; then
    docker ps -a --filter "label=$label" \
        --format '  container {{.Names}}  {{.Status}}  run={{.Label "perstack-sandbox.run"}}' >&2
fi
if [[ -n "$volumes" ]]; then
    docker volume ls --filter "label=$label" \
        --format '  volume {{.Name}}  run={{.Label "perstack-sandbox.run"}}' >&2
fi
if [[ -n "$networks" ]]; then
    docker network ls --filter "label=$label" \
        --format '  network {{.Name}}  run={{.Label "perstack-sandbox.run"}}' >&2
fi
exit 1
