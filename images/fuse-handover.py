#!/usr/bin/python3 -I
"""`/usr/bin/fusermount` of the workspace image: hand bindfs the connection mounted for it.

libfuse 2 (bindfs's) mounts by running `fusermount -o OPTIONS -- MOUNTPOINT` with a socket in
`_FUSE_COMMFD`, and waits on that socket for the /dev/fuse descriptor of the new mount. In this
image the entry point (perstack-workspace) has mounted /view already and passed its descriptor
down in `PERSTACK_FUSE_FD`: send that one, whatever was asked. The mount options and the mount
point were fixed by the entry point, so nothing bindfs or a compromised bindfs asks can change
them. `fusermount -u` is a no-op: the entry point unmounts.
"""

import os
import socket
import sys

if "-u" in sys.argv[1:]:
    sys.exit(0)
try:
    comm = int(os.environ["_FUSE_COMMFD"])
    connection = int(os.environ["PERSTACK_FUSE_FD"])
except (KeyError, ValueError):
    sys.exit("fusermount: this image mounts only through perstack-workspace")
with socket.socket(fileno=comm) as channel:
    socket.send_fds(channel, [b"\0"], [connection])
