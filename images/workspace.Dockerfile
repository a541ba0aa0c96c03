# The workspace layer (orchestrator/engine/_workspace.py): bindfs, which presents the user's
# folder to the sandbox so that every skill uid can write it and whatever they create belongs to
# the folder's owner; Python 3 with libseccomp's binding for the entry point that mounts it.
#
# bindfs in Debian is built on libfuse 2, which mounts through `/usr/bin/fusermount`. Here the
# entry point has mounted already, so that path is our hand-over (fuse-handover.py): bindfs gets
# the mounted connection and never needs a privilege of its own.
FROM debian:trixie-slim

ENV LANG=C.UTF-8

RUN export DEBIAN_FRONTEND=noninteractive \
    && apt-get update \
    && apt-get install -y --no-install-recommends bindfs python3 python3-seccomp \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
    && dpkg-divert --quiet --local --rename --add /usr/bin/fusermount \
    # No setuid or setgid program at all (fusermount3 included): nothing here needs one, and
    # the container runs with no-new-privileges anyway.
    && find / -xdev -type f -perm /6000 -exec chmod ug-s {} +

COPY fuse-handover.py /usr/bin/fusermount
COPY perstack-workspace.py /usr/local/bin/perstack-workspace
RUN chmod 755 /usr/bin/fusermount /usr/local/bin/perstack-workspace

ENTRYPOINT ["/usr/local/bin/perstack-workspace"]
