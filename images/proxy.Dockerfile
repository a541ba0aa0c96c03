# The egress proxy: Debian trixie, Python 3 from Debian, the `proxy/` package (stdlib only,
# plus Debian's uvloop as its event loop: docs/architecture.md, decision 41), a non-root user.
# The build context is prepared by orchestrator/images.py.
FROM debian:trixie-slim

ENV LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 \
        python3-uvloop \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
    && echo "proxy:x:10000:10000:perstack proxy:/nonexistent:/usr/sbin/nologin" >>/etc/passwd \
    && echo "proxy:x:10000:" >>/etc/group

COPY proxy-entry.sh /usr/local/bin/perstack-proxy
COPY proxy/ /opt/perstack-proxy/proxy/
# The root filesystem is read-only at run time: compile now so every start skips it.
RUN python3 -m compileall -q /opt/perstack-proxy

WORKDIR /opt/perstack-proxy
USER 10000
EXPOSE 3128
ENTRYPOINT ["/usr/local/bin/perstack-proxy"]
