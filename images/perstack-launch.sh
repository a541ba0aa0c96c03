#!/bin/sh
# perstack-launch [--seccomp] ARGV...: start one skill process inside the sandbox.
#
# Every skill runs as its own uid with HOME=/home/<something> on a tmpfs with mode 1777 (sticky),
# and all capabilities are dropped, so nobody can chown. The home is created here with mode 700.
# If it already exists it must be a real directory owned by this uid (a restart of the same
# skill); anything else (a symlink, another skill's directory planted in advance) is refused.
set -eu
: "${HOME:?perstack-launch: HOME must be set}"
case "$HOME" in
    /home/?*) ;;
    *) echo "perstack-launch: HOME must be under /home" >&2; exit 126 ;;
esac
if ! mkdir -m 700 "$HOME" 2>/dev/null; then
    if [ -L "$HOME" ] || [ ! -d "$HOME" ] || [ "$(stat -c %u "$HOME")" != "$(id -u)" ]; then
        echo "perstack-launch: $HOME exists and is not this skill's own directory" >&2
        exit 126
    fi
    chmod 700 "$HOME"
fi
# Docker adds HOSTNAME to every exec and sh exports PWD: a skill gets only what was passed.
unset HOSTNAME PWD OLDPWD
# --seccomp (under gVisor): runsc applies the container's seccomp profile only to the
# container's first process, not to `docker exec` ones; the skill loads it itself. -I: the
# skill's own PYTHON* variables must not steer the loader.
if [ "${1:-}" = "--seccomp" ]; then
    shift
    exec python3 -I /usr/local/lib/perstack/seccomp-exec.py /etc/perstack/seccomp.json "$@"
fi
exec "$@"
