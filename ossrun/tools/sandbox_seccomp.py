"""The system calls the python tool's code may not make: a seccomp filter, installed last.

A small classic-BPF program built here with ctypes rather than a binding such as libseccomp's:
the jail's modules use the standard library alone (they run before anything is imported from
the installation), and the rules are few and fixed. They follow Docker's default profile where
it refuses what a sandbox never needs: the keyrings, new namespaces and joining others, mounts,
bpf, perf_event_open, userfaultfd, io_uring, tracing other processes, kernel modules, kexec,
the clock, swap, quotas, handles that open files outside the view. Beyond it: inotify (it
watches the read-only binds, and through them the host's processes opening files), sockets of
families outside the network namespace (AF_VSOCK reaches the host of a virtual machine), and
clone3 (its flags sit behind a pointer a filter cannot read: ENOSYS makes the C library fall
back to clone, whose flags it checks). Where no kernel bounds the run's memory, memfd_create is
refused too; where the CPU time of the whole run is counted from the processes' own accounts,
so is ignoring SIGCHLD, which would hide the time of children reaped by the kernel.

Run by sandbox_child.py, never imported by ossrun: the standard library only.
"""

import ctypes
import errno
import os

# seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6] (little-endian: low word first)
NR, ARCH = 0, 4


def arg_low(index):
    return 16 + 8 * index


def arg_high(index):
    return 16 + 8 * index + 4


LOAD = 0x20  # BPF_LD | BPF_W | BPF_ABS
JEQ, JGE, JSET = 0x15, 0x35, 0x45  # BPF_JMP | BPF_K | (BPF_JEQ, BPF_JGE, BPF_JSET)
RETURN = 0x06  # BPF_RET | BPF_K
ALLOW = 0x7FFF0000
ERRNO = 0x00050000
X32_BIT = 0x40000000
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
NEW_NAMESPACES = 0x7E020000  # CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
SIGCHLD = 17
ALLOWED_SOCKETS = (1, 2, 10, 16)  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK: all inside the network namespace

# name -> (x86_64 number, aarch64 number); None where the call does not exist on that machine.
SYSCALLS = {
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "unshare": (272, 97),
    "setns": (308, 268),
    "clone": (56, 220),
    "clone3": (435, 435),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "open_tree_attr": (467, 467),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "kcmp": (312, 272),
    "pidfd_getfd": (438, 438),
    "process_madvise": (440, 440),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "create_module": (174, None),
    "get_kernel_syms": (177, None),
    "query_module": (178, None),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "lookup_dcookie": (212, 18),
    "nfsservctl": (180, 42),
    "uselib": (134, None),
    "_sysctl": (156, None),
    "vhangup": (153, 58),
    "syslog": (103, 116),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "iopl": (172, None),
    "ioperm": (173, None),
    "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265),
    "fanotify_init": (300, 262),
    "inotify_init": (253, None),
    "inotify_init1": (294, 26),
    "inotify_add_watch": (254, 27),
    "memfd_secret": (447, 447),
    "memfd_create": (319, 279),
    "socket": (41, 198),
    "socketpair": (53, 199),
    "rt_sigaction": (13, 134),
}
MACHINES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7), "arm64": (1, 0xC00000B7)}  # column, AUDIT_ARCH_*

REFUSED = tuple(
    name for name in SYSCALLS if name not in ("clone", "clone3", "memfd_create", "socket", "socketpair", "rt_sigaction")
)


class _Instruction(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Instruction))]


def supported():
    """Whether this machine's system call numbers are known here."""
    return os.uname().machine in MACHINES


def program(machine, *, refuse_memfd, keep_sigchld):
    """The filter for ``machine`` as (code, jt, jf, k) tuples."""
    column, arch = MACHINES[machine]
    number = {name: numbers[column] for name, numbers in SYSCALLS.items() if numbers[column] is not None}
    refuse = lambda e: (RETURN, 0, 0, ERRNO | e)  # noqa: E731
    code = [(LOAD, 0, 0, ARCH), (JEQ, 1, 0, arch), refuse(errno.ENOSYS), (LOAD, 0, 0, NR)]  # another ABI: nothing
    if machine == "x86_64":
        code += [(JGE, 0, 1, X32_BIT), refuse(errno.ENOSYS)]  # the x32 ABI's numbers
    refused = [name for name in REFUSED if name in number] + (["memfd_create"] if refuse_memfd else [])
    for name in refused:
        code += [(JEQ, 0, 1, number[name]), refuse(errno.ENOSYS if name == "memfd_create" else errno.EPERM)]
    code += [(JEQ, 0, 1, number["clone3"]), refuse(errno.ENOSYS)]
    # clone: no new namespace (the flags are its first argument on both machines).
    block = [(LOAD, 0, 0, arg_low(0)), (JSET, 0, 1, NEW_NAMESPACES), refuse(errno.EPERM), (RETURN, 0, 0, ALLOW)]
    code += [(JEQ, 0, len(block), number["clone"]), *block]
    # socket and socketpair: only the families the network namespace holds.
    for name in ("socket", "socketpair"):
        checks = [(JEQ, len(ALLOWED_SOCKETS) - i, 0, family) for i, family in enumerate(ALLOWED_SOCKETS)]
        block = [(LOAD, 0, 0, arg_low(0)), *checks, refuse(errno.EAFNOSUPPORT), (RETURN, 0, 0, ALLOW)]
        code += [(JEQ, 0, len(block), number[name]), *block]
    if keep_sigchld:
        # rt_sigaction(SIGCHLD, act, ...) with act not NULL: a handler, SIG_IGN or SA_NOCLDWAIT.
        block = [
            (LOAD, 0, 0, arg_low(0)),
            (JEQ, 0, 5, SIGCHLD),
            (LOAD, 0, 0, arg_low(1)),
            (JEQ, 0, 2, 0),
            (LOAD, 0, 0, arg_high(1)),
            (JEQ, 1, 0, 0),
            refuse(errno.EPERM),
            (RETURN, 0, 0, ALLOW),
        ]
        code += [(JEQ, 0, len(block), number["rt_sigaction"]), *block]
    return code + [(RETURN, 0, 0, ALLOW)]


def install(*, refuse_memfd=False, keep_sigchld=False):
    """Install the filter on this thread (needs no_new_privs, or CAP_SYS_ADMIN)."""
    code = program(os.uname().machine, refuse_memfd=refuse_memfd, keep_sigchld=keep_sigchld)
    instructions = (_Instruction * len(code))(*(_Instruction(*step) for step in code))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(_Program(len(code), instructions)), 0, 0) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"seccomp: {os.strerror(number)}")
