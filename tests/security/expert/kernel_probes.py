"""System calls that recent kernel privilege escalations went through, each with valid arguments.

Run INSIDE the sandbox (the hostile skill imports it from `/expert`) and ON THE HOST by the same
test: a probe must succeed on the host (so its arguments are valid and it can fail in the
sandbox) and be refused in the sandbox. Standard library only (ctypes); x86_64 numbers.

Each probe runs in a forked child, so a call that changes the caller (a new user namespace,
a personality, being traced) never touches the process that reports. `python3 kernel_probes.py`
prints {probe: "ok" | errno name} as one JSON document.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import platform
import select
import signal
import socket
import sys
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

CHILD_TIMEOUT_S = 10.0  # one system call in a forked child; a hang is a finding, not a wait
NR = {  # x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl)
    "msgget": 68,
    "msgctl": 71,
    "ptrace": 101,
    "personality": 135,
    "modify_ldt": 154,
    "mbind": 237,
    "get_mempolicy": 239,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "migrate_pages": 256,
    "unshare": 272,
    "move_pages": 279,
    "perf_event_open": 298,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "pidfd_open": 434,
    "pidfd_getfd": 438,
    "clone": 56,
    "clone3": 435,
}
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
KEY_SPEC_PROCESS_KEYRING = -2
O_CLOEXEC = 0o2000000
UFFD_USER_MODE_ONLY = 1
AT_FDCWD = -100
PAGE = 4096

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]


class IoVec(ctypes.Structure):
    """struct iovec."""

    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


def call(name: str, *args: object) -> int:
    """Make system call `name`; return its result or raise OSError with the errno."""
    # Every argument as a full register: a plain int is passed as a C int, and the sixth one
    # goes on the stack, where its upper half would be garbage.
    wide = [ctypes.c_long(arg) if isinstance(arg, int) else arg for arg in args]
    result = libc.syscall(ctypes.c_long(NR[name]), *wide)
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{name}: {os.strerror(number)}")
    return int(result)


def _page() -> int:
    address = libc.mmap(None, PAGE, 3, 0x22, -1, 0)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
    if address in {None, ctypes.c_void_p(-1).value}:
        raise OSError(ctypes.get_errno(), "mmap")
    ctypes.memset(address, 1, PAGE)  # fault it in: move_pages asks where it lives
    return int(address)


def io_uring_setup() -> int:
    """One-entry io_uring (struct io_uring_params: 120 zeroed bytes)."""
    return call("io_uring_setup", 1, ctypes.byref(ctypes.create_string_buffer(120)))


def userfaultfd() -> int:
    """Open a userfaultfd for user-mode faults only (no privilege needed since Linux 5.11)."""
    return call("userfaultfd", O_CLOEXEC | UFFD_USER_MODE_ONLY)


def bpf() -> int:
    """BPF_MAP_CREATE of a one-entry array map (4-byte keys and values)."""
    attr = (ctypes.c_uint32 * 32)(2, 4, 4, 1)  # map_type ARRAY, key, value, max_entries
    return call("bpf", 0, ctypes.byref(attr), ctypes.sizeof(attr))


def perf_event_open() -> int:
    """Open a disabled task-clock counter of this process, user space only."""
    attr = (ctypes.c_uint64 * 8)()
    attr[0] = 1 | (64 << 32)  # type PERF_TYPE_SOFTWARE, size 64
    attr[1] = 1  # config PERF_COUNT_SW_TASK_CLOCK
    attr[5] = 1 | 1 << 5 | 1 << 6  # disabled, exclude_kernel, exclude_hv
    return call("perf_event_open", ctypes.byref(attr), 0, -1, -1, 8)  # PERF_FLAG_FD_CLOEXEC


def keyctl() -> int:
    """KEYCTL_GET_KEYRING_ID of the process keyring, creating it."""
    return call("keyctl", 0, KEY_SPEC_PROCESS_KEYRING, 1)


def add_key() -> int:
    """Add a 'user' key to the process keyring."""
    return call("add_key", b"user", b"perstack-probe", b"x", 1, KEY_SPEC_PROCESS_KEYRING)


def request_key() -> int:
    """Find the 'user' key this process just added (no upcall)."""
    with contextlib.suppress(OSError):  # refused too: request_key's own answer still counts
        add_key()
    return call("request_key", b"user", b"perstack-probe", None, 0)


def unshare_user() -> int:
    """Enter a new user namespace (no privilege needed where user namespaces are on)."""
    return call("unshare", CLONE_NEWUSER)


def clone_user() -> int:
    """clone(CLONE_NEWUSER): a child in a new user namespace; it exits at once."""
    pid = call("clone", CLONE_NEWUSER | SIGCHLD, None, None, None, None)
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def clone3_user() -> int:
    """clone3(CLONE_NEWUSER), whose flags sit in memory where a seccomp filter cannot look."""
    args = (ctypes.c_uint64 * 8)(CLONE_NEWUSER, 0, 0, 0, SIGCHLD)  # struct clone_args, v0
    pid = call("clone3", ctypes.byref(args), ctypes.sizeof(args))
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def setns() -> int:
    """Join this process's own network namespace again (needs CAP_SYS_ADMIN)."""
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    return call("setns", fd, 0x40000000)  # CLONE_NEWNET


def personality() -> int:
    """Query the execution domain (0xffffffff), the call Docker's default profile allows."""
    return call("personality", 0xFFFFFFFF)


def _own_vm(name: str) -> int:
    source = ctypes.create_string_buffer(b"probe", 8)
    target = ctypes.create_string_buffer(8)
    local = IoVec(ctypes.cast(target, ctypes.c_void_p), 8)
    remote = IoVec(ctypes.cast(source, ctypes.c_void_p), 8)
    if name == "process_vm_writev":
        local, remote = remote, local
    return call(name, os.getpid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)


def process_vm_readv() -> int:
    """Read 8 bytes of this process's own memory."""
    return _own_vm("process_vm_readv")


def process_vm_writev() -> int:
    """Write 8 bytes into this process's own memory."""
    return _own_vm("process_vm_writev")


def kcmp() -> int:
    """Compare this process's fd 0 with itself (KCMP_FILE)."""
    return call("kcmp", os.getpid(), os.getpid(), 0, 0, 0)


def _handle_of(path: bytes) -> ctypes.Array[ctypes.c_char]:
    handle = ctypes.create_string_buffer(8 + 128)  # struct file_handle, 128 bytes of handle
    ctypes.c_uint32.from_buffer(handle).value = 128  # handle_bytes
    mount_id = ctypes.c_int()
    call("name_to_handle_at", AT_FDCWD, path, handle, ctypes.byref(mount_id), 0)
    return handle


def name_to_handle_at() -> int:
    """Get a file handle for the temporary folder."""
    _handle_of(tempfile.gettempdir().encode())
    return 0


def open_by_handle_at() -> int:
    """Open the temporary folder by handle (the 'shocker' call; needs CAP_DAC_READ_SEARCH)."""
    folder = tempfile.gettempdir().encode()
    handle = ctypes.create_string_buffer(8 + 128)
    with contextlib.suppress(OSError):  # refused too: still ask, with an empty handle
        handle = _handle_of(folder)
    return call("open_by_handle_at", os.open(folder, os.O_RDONLY), handle, os.O_RDONLY)


def mbind() -> int:
    """MPOL_DEFAULT on one page of our own."""
    return call("mbind", ctypes.c_void_p(_page()), PAGE, 0, None, 0, 0)


def get_mempolicy() -> int:
    """Read the memory policy of this thread."""
    return call("get_mempolicy", None, None, 0, None, 0)


def move_pages() -> int:
    """Ask on which node one page of our own lives (nodes NULL: query only)."""
    pages = (ctypes.c_void_p * 1)(_page())
    status = (ctypes.c_int * 1)()
    return call("move_pages", 0, 1, pages, None, status, 0)


def migrate_pages() -> int:
    """Migrate our own pages from node 0 to node 0."""
    nodes = ctypes.c_ulong(1)
    return call("migrate_pages", 0, 64, ctypes.byref(nodes), ctypes.byref(nodes))


def ptrace() -> int:
    """PTRACE_TRACEME: ask to be traced by our parent (CVE-2019-13272 went through it)."""
    return call("ptrace", 0, 0, None, None)


def pidfd_getfd() -> int:
    """Take a copy of our own fd 0 through a pidfd of ourselves."""
    pidfd = -1
    with contextlib.suppress(OSError):  # refused too: still ask, with no pidfd
        pidfd = call("pidfd_open", os.getpid(), 0)
    return call("pidfd_getfd", pidfd, 0, 0)


def modify_ldt() -> int:
    """Read the local descriptor table (x86 only; CVE-2015-5157, CVE-2017-17053)."""
    buffer = ctypes.create_string_buffer(16)
    return call("modify_ldt", 0, buffer, ctypes.sizeof(buffer))


def i386_getpid() -> int:
    """Call getpid through the 32-bit entry (`int 0x80` from 64-bit code)."""
    code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])  # mov eax, 20 (getpid); int 0x80; ret
    address = libc.mmap(None, PAGE, 7, 0x22, -1, 0)  # PROT_READ|WRITE|EXEC, anonymous
    if address in {None, ctypes.c_void_p(-1).value}:
        raise OSError(ctypes.get_errno(), "mmap")
    ctypes.memmove(address, code, len(code))
    result = ctypes.CFUNCTYPE(ctypes.c_int)(address)()
    if result < 0:
        raise OSError(-result, f"int 0x80 getpid: {os.strerror(-result)}")
    if result != os.getpid():
        raise OSError(errno.EINVAL, f"int 0x80 getpid gave {result}")
    return result


def msgget() -> int:
    """Create a private System V message queue (msg_msg: a kernel heap-spray object)."""
    queue = call("msgget", 0, 0o600)  # IPC_PRIVATE
    call("msgctl", queue, 0, None)  # IPC_RMID: leave nothing on the host
    return queue


PROBES: dict[str, Callable[[], int]] = {
    "io_uring_setup": io_uring_setup,
    "userfaultfd": userfaultfd,
    "bpf": bpf,
    "perf_event_open": perf_event_open,
    "keyctl": keyctl,
    "add_key": add_key,
    "request_key": request_key,
    "unshare(CLONE_NEWUSER)": unshare_user,
    "clone(CLONE_NEWUSER)": clone_user,
    "clone3(CLONE_NEWUSER)": clone3_user,
    "setns": setns,
    "personality": personality,
    "process_vm_readv": process_vm_readv,
    "process_vm_writev": process_vm_writev,
    "kcmp": kcmp,
    "name_to_handle_at": name_to_handle_at,
    "open_by_handle_at": open_by_handle_at,
    "mbind": mbind,
    "get_mempolicy": get_mempolicy,
    "move_pages": move_pages,
    "migrate_pages": migrate_pages,
    "ptrace": ptrace,
    "pidfd_getfd": pidfd_getfd,
    "modify_ldt": modify_ldt,
    "msgget": msgget,
    "int 0x80 (i386 getpid)": i386_getpid,
}


# socket(family, type, protocol) of families and protocols outside the profile's list, each
# kernel code any process could otherwise reach; x86_64 numbers (linux/socket.h, in.h).
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_SEQPACKET = 1, 2, 3, 5
REFUSED_SOCKETS: dict[str, tuple[int, int, int]] = {
    "AF_TIPC": (30, SOCK_SEQPACKET, 0),
    "AF_RDS": (21, SOCK_SEQPACKET, 0),
    "AF_CAN": (29, SOCK_RAW, 1),
    "AF_X25": (9, SOCK_SEQPACKET, 0),
    "AF_LLC": (26, SOCK_DGRAM, 0),
    "AF_APPLETALK": (5, SOCK_DGRAM, 0),
    "AF_AX25": (3, SOCK_SEQPACKET, 0),
    "AF_KEY": (15, SOCK_RAW, 2),
    "AF_PPPOX": (24, SOCK_STREAM, 0),
    "AF_RXRPC": (33, SOCK_DGRAM, 2),
    "AF_ALG": (38, SOCK_SEQPACKET, 0),
    "AF_VSOCK": (40, SOCK_STREAM, 0),
    "AF_XDP": (44, SOCK_RAW, 0),
    "AF_PACKET": (17, SOCK_RAW, 0),
    "AF_BLUETOOTH": (31, SOCK_RAW, 0),
    "AF_INET IPPROTO_SCTP": (2, SOCK_STREAM, 132),
    "AF_INET6 IPPROTO_SCTP": (10, SOCK_SEQPACKET, 132),
    "AF_INET IPPROTO_MPTCP": (2, SOCK_STREAM, 262),
    "AF_INET IPPROTO_UDPLITE": (2, SOCK_DGRAM, 136),
    "AF_INET IPPROTO_ICMP": (2, SOCK_DGRAM, 1),
    "AF_NETLINK NETLINK_NETFILTER": (16, SOCK_RAW, 12),
    "AF_NETLINK NETLINK_GENERIC": (16, SOCK_RAW, 16),
    "AF_NETLINK NETLINK_XFRM": (16, SOCK_RAW, 6),
    "AF_NETLINK NETLINK_KOBJECT_UEVENT": (16, SOCK_DGRAM, 15),
}
# What a skill needs: Node.js and Python open these (NETLINK_ROUTE: getaddrinfo, getifaddrs).
ALLOWED_SOCKETS: dict[str, tuple[int, int, int]] = {
    "AF_UNIX stream": (1, SOCK_STREAM, 0),
    "AF_UNIX datagram": (1, SOCK_DGRAM, 0),
    "AF_INET TCP": (2, SOCK_STREAM, 0),
    "AF_INET IPPROTO_TCP": (2, SOCK_STREAM, 6),
    "AF_INET UDP": (2, SOCK_DGRAM, 0),
    "AF_INET IPPROTO_UDP": (2, SOCK_DGRAM, 17),
    "AF_INET6 TCP": (10, SOCK_STREAM, 0),
    "AF_INET6 UDP": (10, SOCK_DGRAM, 17),
    "AF_NETLINK NETLINK_ROUTE": (16, SOCK_RAW, 0),
}


def open_socket(family: int, kind: int, protocol: int) -> None:
    """Open and close one socket (with the flags Node.js and Python add)."""
    socket.socket(family, kind | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK, protocol).close()


def open_pair(family: int, kind: int) -> None:
    """Open and close one socket pair."""
    for end in socket.socketpair(family, kind):
        end.close()


def _outcome(attempt: Callable[[], None]) -> str:
    try:
        attempt()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")
    return "ok"


def socket_outcomes() -> dict[str, str]:
    """Return {case: 'ok' | errno name} for every socket case and two socket pairs."""
    cases = {**REFUSED_SOCKETS, **ALLOWED_SOCKETS}
    outcomes = {name: _outcome(lambda c=case: open_socket(*c)) for name, case in cases.items()}
    outcomes["socketpair AF_UNIX"] = _outcome(lambda: open_pair(1, SOCK_STREAM))
    outcomes["socketpair AF_TIPC"] = _outcome(lambda: open_pair(30, SOCK_SEQPACKET))
    return outcomes


def in_child(probe: Callable[[], int]) -> str:
    """Run `probe` in a forked child; return 'ok', the errno name, or how the child died."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one probe, one line, then gone
        os.close(read_end)
        try:
            probe()
            outcome = "ok"
        except OSError as exc:
            outcome = errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")
        except Exception as exc:  # noqa: BLE001 - report the class instead of dying silently
            outcome = type(exc).__name__
        os.write(write_end, outcome.encode())
        os._exit(0)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], CHILD_TIMEOUT_S)
    outcome = os.read(read_end, 256).decode() if ready else "timeout"
    os.close(read_end)
    if not ready:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    if outcome:
        return outcome
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited {os.waitstatus_to_exitcode(status)} without an answer"


def run_all() -> dict[str, str]:
    """Run every probe; return {probe: outcome}."""
    if platform.machine() != "x86_64":
        return dict.fromkeys(PROBES, f"unsupported machine {platform.machine()}")
    return {name: in_child(probe) for name, probe in PROBES.items()}


if __name__ == "__main__":
    json.dump(socket_outcomes() if sys.argv[1:] == ["sockets"] else run_all(), sys.stdout)
    sys.stdout.write("\n")
