# The egress proxy: Debian trixie, Python 3 from Debian with python3-cryptography (the sealed
# path's per-run CA: docs/architecture.md, decision 37) and python3-uvloop as its event loop
# (decision 41), the `proxy/` package, a non-root user. The build context is prepared by
# orchestrator/images/_cache.py.
FROM debian:trixie-slim

ENV LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates \
        python3 \
        python3-cryptography \
        python3-uvloop \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
    && echo "proxy:x:10000:10000:perstack proxy:/nonexistent:/usr/sbin/nologin" >>/etc/passwd \
    && echo "proxy:x:10000:" >>/etc/group

# The sealed path re-originates TLS upstream: behind a TLS-intercepting proxy on the host's path
# it must trust that proxy's bundle, as the sandbox does (images/sandbox.Dockerfile).
COPY host-ca.crt /usr/local/share/ca-certificates/perstack-host-bundle.crt
RUN if [ -s /usr/local/share/ca-certificates/perstack-host-bundle.crt ]; then \
        update-ca-certificates >/dev/null; \
    else \
        rm /usr/local/share/ca-certificates/perstack-host-bundle.crt; \
    fi

COPY proxy-entry.sh /usr/local/bin/perstack-proxy
COPY proxy/ /opt/perstack-proxy/proxy/
# The control client's documented name (`python3 -m perstack_sandbox_proxy.control`).
RUN ln -s proxy /opt/perstack-proxy/perstack_sandbox_proxy
# The root filesystem is read-only at run time: compile now so every start skips it.
RUN python3 -m compileall -q /opt/perstack-proxy

WORKDIR /opt/perstack-proxy
USER 10000
EXPOSE 3128
ENTRYPOINT ["/usr/local/bin/perstack-proxy"]
