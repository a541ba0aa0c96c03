#!/usr/bin/python3 -I
"""perstack-workspace UID GID FIRST LAST: serve /src at /view through bindfs, as UID:GID.

The entry point of the workspace container (see orchestrator/engine/_workspace.py for why). It
runs as root with CAP_SYS_ADMIN, CAP_SETUID, CAP_SETGID and CAP_SETPCAP only, and:

1. mounts a FUSE file system at /view itself (nosuid, nodev, allow_other, default_permissions:
   the kernel checks every access against the attributes bindfs reports);
2. starts bindfs as UID:GID (the workspace folder's owner) with no capability, no_new_privs, an
   empty bounding set, and a seccomp filter that refuses setuid/setgid modes and every mount or
   namespace call Docker grants this container only for step 1. bindfs receives the mounted
   connection through /usr/bin/fusermount (fuse-handover.py). Every file operation of every skill
   is then done by that owner's uid: new files are the owner's, and a skill can do in the folder
   exactly what its owner could. Skill uids FIRST..LAST see themselves as the owner (--mirror),
   so tools that check ownership (git, ssh) are content. Any other uid sees o+rwX: under gVisor
   the skills reach the mount through gVisor's gofer (root, not mirrored) and gVisor checks
   their access itself against those bits. Either way the disk decides, as the owner;
3. prints `ready` once /view answers, and on SIGTERM (or when bindfs ends) unmounts /view. The
   mount is shared with the host's copy, so the unmount reaches the host and the sandbox.

bindfs is told an empty placeholder directory as its mount point: its start-up looks at its
mount point, which would wait for the mount to answer, which waits for bindfs (a deadlock).
"""

import ctypes
import errno
import os
import signal
import stat
import subprocess
import sys

import seccomp

SOURCE = "/src"
VIEW = b"/view"
PLACEHOLDER = "/mnt"
MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2
NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)
# What Docker's default seccomp profile allows only because this container holds CAP_SYS_ADMIN.
REFUSED = (
    "bpf", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "lookup_dcookie",
    "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open", "pivot_root",
    "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount2",
    "unshare",
)
CHMODS = (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2))

libc = ctypes.CDLL(None, use_errno=True)


def fail(what):
    sys.exit(f"perstack-workspace: {what}: {os.strerror(ctypes.get_errno())}")


def add_rule(rules, action, name, *args):
    try:
        rules.add_rule(action, name, *args)
    except (RuntimeError, ValueError):
        pass  # a call this kernel or libseccomp does not know: nothing to refuse


def confine():
    """Load bindfs's seccomp filter (stacked on Docker's, inherited by everything it runs)."""
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in REFUSED:
        add_rule(rules, seccomp.ERRNO(errno.EPERM), name)
    for flag in NAMESPACE_FLAGS:
        add_rule(rules, seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    add_rule(rules, seccomp.ERRNO(errno.ENOSYS), "clone3")  # its flags are out of reach: use clone
    for name, mode_arg in CHMODS:
        for bit in (stat.S_ISUID, stat.S_ISGID):
            condition = seccomp.Arg(mode_arg, seccomp.MASKED_EQ, bit, bit)
            add_rule(rules, seccomp.ERRNO(errno.EPERM), name, condition)
    rules.load()


def main():
    uid, gid, first, last = (int(arg) for arg in sys.argv[1:5])
    connection = os.open("/dev/fuse", os.O_RDWR)
    options = f"fd={connection},rootmode=40000,user_id={uid},group_id={gid},allow_other,default_permissions"
    if libc.mount(b"perstack-workspace", VIEW, b"fuse.bindfs", MS_NOSUID | MS_NODEV, options.encode()):
        fail("mounting /view")
    mirror = ":".join(str(skill) for skill in range(first, last + 1))
    bindfs = subprocess.Popen(
        [
            "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs",
            "--inh-caps=-all", "--bounding-set=-all", "--",
            "bindfs", "-f", f"--mirror={mirror}", "--perms=o+rwX", "--create-as-mounter",
            "--chown-ignore", "--chgrp-ignore", "--xattr-ro",
            "-o", "auto_unmount,big_writes,auto_cache", SOURCE, PLACEHOLDER,
        ],
        pass_fds=(connection,),
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PERSTACK_FUSE_FD": str(connection)},
        stdin=subprocess.DEVNULL,
        preexec_fn=confine,
    )
    os.close(connection)  # bindfs holds the only server end: its death ends every request

    def stop(*_):
        libc.umount2(VIEW, MNT_DETACH)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        os.stat(VIEW)  # answers once bindfs serves
    except OSError as exc:
        sys.exit(f"perstack-workspace: bindfs did not start ({exc.strerror})")
    print("ready", flush=True)
    code = bindfs.wait()
    libc.umount2(VIEW, MNT_DETACH)
    sys.exit(f"perstack-workspace: bindfs ended with code {code}")


if __name__ == "__main__":
    main()
