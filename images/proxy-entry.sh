#!/bin/sh
# Entry point of the proxy container. The policy arrives in PERSTACK_PROXY_POLICY (it holds no
# secret value: domains, the sandbox id and per-run proxy tokens), is written to the
# container's private tmpfs, and the proxy reads it from there. An environment variable
# instead of a bind mount works with remote engines and leaves the host filesystem out of the
# container entirely. Secret values never come this way: the orchestrator sends them over the
# control socket (docs/architecture.md, decision 37).
set -eu
umask 077
printf '%s' "${PERSTACK_PROXY_POLICY:?perstack-proxy: PERSTACK_PROXY_POLICY is not set}" >/tmp/policy.json
unset PERSTACK_PROXY_POLICY
# Control messages (a warm sandbox's grant) arrive on a socket in the same private tmpfs.
exec python3 -m proxy --policy /tmp/policy.json --listen "${PERSTACK_PROXY_LISTEN:-0.0.0.0:3128}" \
    --control /tmp/perstack-control.sock
