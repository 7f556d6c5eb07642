"""The python tool's jail: namespaces, an init that outlives nothing, and no privileges.

The processes of one run:

- the keeper (``sandbox_child.py`` as ossrun starts it) makes a user namespace and, owned by it,
  mount, IPC, PID and (unless the network is allowed) network namespaces; it waits, then ends
  the way the code ended, so ossrun reads the code's exit status or signal;
- init, PID 1 of the new PID namespace, builds the file system view (``sandbox_mounts.py``),
  starts the code and reaps orphans. It exits when the code does, and the kernel then kills
  every process left in the namespace: nothing the code starts outlives the run;
- the code, PID 2, leaves every privilege (root's code runs as nobody) and takes a user
  namespace of its own, where RLIMIT_NPROC counts its processes and threads alone.

Where user namespaces are not allowed, root makes the same namespaces without one (the code
still runs as nobody, so it cannot leave them); anyone else gets :class:`Refused`. Run by
sandbox_child.py, never imported by ossrun: the standard library only.
"""

import ctypes
import errno
import os
import signal

from sandbox_mounts import View, check, libc

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
CAPABILITY_VERSION_3 = 0x20080522
# What root's code runs as: no capabilities, files it writes are not root's, and RLIMIT_NPROC
# (which root is exempt from) applies.
NOBODY = 65534
USER_NAMESPACES = "user namespaces"
ROOT_NAMESPACES = "namespaces made by root"


class Refused(Exception):
    """This system does not allow a step of the jail; the message says which, and why."""


def enter(workdir, *, network, tmp_bytes=None):
    """Run the rest of this program jailed: return (how) in the code's process only.

    This process becomes the keeper and never returns: it exits as the code did.
    """
    view = View(workdir, tmp_bytes, network)  # the host's paths, seen from here before anything moves
    root = os.geteuid() == 0
    flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWPID | (0 if network else CLONE_NEWNET)
    try:
        unshare_user(flags)
        how = USER_NAMESPACES
    except OSError as exc:
        refusal = f"user namespaces are not allowed here ({why_refused(exc, root)})"
        if not root:
            raise Refused(refusal) from None
        try:
            unshare(flags)
        except OSError as root_exc:
            raise Refused(f"{refusal}, nor other namespaces to root ({why_refused(root_exc, root, False)})") from None
        how = ROOT_NAMESPACES
    if root and os.stat(workdir).st_uid == 0:
        os.chown(workdir, NOBODY, NOBODY)  # the code writes there as nobody
    report_r, report_w = os.pipe()
    init = os.fork()
    if init:
        os.close(report_w)
        keep(init, report_r)
    os.close(report_r)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the keeper killed, the whole namespace goes
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as PID 1, init then ignores the code's SIGINT (no KeyboardInterrupt)
    try:
        view.build()
    except OSError as exc:
        raise Refused(f"cannot build the file system view ({reason(exc)})") from None
    os.chdir(view.workdir)
    prctl(PR_SET_DUMPABLE, 0)  # the code may not ptrace init, which holds the namespaces' capabilities
    code = os.fork()
    if code:
        reap(code, report_w)
    os.close(report_w)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        drop_privileges(root, own_namespace=how == USER_NAMESPACES)
    except OSError as exc:
        raise Refused(f"cannot drop privileges ({reason(exc)})") from None
    return how


def unshare_user(flags):
    """unshare(CLONE_NEWUSER | flags), the ids mapped by a child left outside: it may map two
    (root maps nobody too, for the code), where this process could only map itself."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        maps = (("uid_map", f"0 0 1\n{NOBODY} {NOBODY} 1"), ("gid_map", f"0 0 1\n{NOBODY} {NOBODY} 1"))
    else:
        maps = (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1"))
    go_r, go_w = os.pipe()
    writer = os.fork()
    if writer == 0:
        os.close(go_w)
        status = 0
        try:
            if os.read(go_r, 1) == b"1":
                write_maps(os.getppid(), maps)
        except OSError as exc:
            status = exc.errno or 1
        os._exit(status)
    os.close(go_r)
    try:
        unshare(CLONE_NEWUSER | flags)
    except OSError:
        os.close(go_w)
        os.waitpid(writer, 0)
        raise
    os.write(go_w, b"1")
    os.close(go_w)
    _, status = os.waitpid(writer, 0)
    if status:
        number = os.waitstatus_to_exitcode(status)
        raise Refused(f"cannot map ids in the user namespace ({os.strerror(number)})")


def write_maps(pid, maps):
    for name, text in maps:
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(text)


def keep(init, report_r):
    """The keeper: wait for init, then end as the code ended (init reports how)."""
    _, status = os.waitpid(init, 0)
    report = os.read(report_r, 32)
    exit_as(int(report) if report else status)


def reap(code, report_w):
    """init: reap every child until the code ends, report its wait status, exit (killing the rest)."""
    while True:
        pid, status = os.wait()
        if pid == code:
            os.write(report_w, str(status).encode())
            os._exit(0)


def exit_as(status):
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        prctl(PR_SET_DUMPABLE, 0)  # dying of the code's SIGXCPU or SIGSEGV dumps no core of this process
        if number not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        os._exit(128 + number)
    os._exit(os.waitstatus_to_exitcode(status))


def drop_privileges(root, own_namespace):
    """Leave root (for nobody), every capability and the means to regain one, in the code's process."""
    if root:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    prctl(PR_SET_DUMPABLE, 1)  # init's setting (and a change of user) would leave /proc/self to root
    if own_namespace:
        # RLIMIT_NPROC counts the processes of one user in one user namespace: in a namespace of
        # its own the code is alone, and the keeper and init do not count against its limit.
        uid, gid = os.geteuid(), os.getegid()
        unshare(CLONE_NEWUSER)
        write_maps("self", (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")))
    clear_capabilities()
    prctl(PR_SET_NO_NEW_PRIVS, 1)  # no set-user-ID program or file capability gives any back


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def clear_capabilities():
    check(libc.capset(ctypes.byref(_CapHeader(CAPABILITY_VERSION_3, 0)), (_CapData * 2)()), "capset")


def unshare(flags):
    check(libc.unshare(flags), "unshare")


def prctl(option, value):
    check(libc.prctl(option, value, 0, 0, 0), "prctl")


# Settings that refuse namespaces, as they read where they do: (file, value, what it means).
REFUSING_SETTINGS = (
    ("/proc/sys/user/max_user_namespaces", "0", "the sysctl user.max_user_namespaces is 0"),
    ("/proc/sys/kernel/unprivileged_userns_clone", "0", "the sysctl kernel.unprivileged_userns_clone is 0"),
    ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
     "AppArmor restricts them: the sysctl kernel.apparmor_restrict_unprivileged_userns is 1"),
)
CAP_SYS_ADMIN = 21


def why_refused(exc, root, user_namespace=True):
    """Why unshare failed, in the system's own terms where they are known."""
    if user_namespace:
        for path, refusing, meaning in REFUSING_SETTINGS:  # only the first binds root
            if (not root or path == REFUSING_SETTINGS[0][0]) and _read(path).strip() == refusing:
                return meaning
    status = dict(line.split(":\t", 1) for line in _read("/proc/self/status").splitlines() if ":\t" in line)
    if exc.errno == errno.EPERM and status.get("Seccomp", "0").strip() == "2":
        return "a seccomp filter refuses them, as a container's default profile does"
    if not user_namespace and not int(status.get("CapEff", "0"), 16) & (1 << CAP_SYS_ADMIN):
        return "no CAP_SYS_ADMIN, as in a container"
    return reason(exc)


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def reason(exc):
    """An OSError in a few words: what failed, and the path it failed on."""
    return f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc.strerror or exc)
