"""The python tool's jail: namespaces, an init that outlives nothing, and no privileges.

A session (one ``PythonSandbox``) holds a user namespace and a mount namespace (:func:`hold`)
in which a tmpfs, bounded in bytes and files, is mounted over the working directory: the code's
files live there from one run to the next, never on the host's disk, and go with the session.
ossrun keeps both namespaces by descriptor; each run joins them (:func:`join`).

The processes of one run:

- the keeper (``sandbox_child.py`` as ossrun starts it) takes a new, empty session keyring,
  joins the session and makes, owned by its user namespace, mount, IPC, PID and (unless the
  network is allowed) network namespaces (ossrun has put it in the run's cgroups, where all it
  starts stays); it waits, then ends the way the code ended, so ossrun reads the code's exit status or signal, and, on the report
  descriptor, the bound that ended the run if one did;
- init, PID 1 of the new PID namespace, builds the file system view (``sandbox_mounts.py``),
  starts the code, reaps orphans and watches the run's totals (``sandbox_bounds.py``). It exits
  when the code does, or when a total passes its bound, and the kernel then kills every process
  left in the namespace: nothing the code starts outlives the run;
- the code, PID 2, leaves every privilege (root's code runs as nobody) and takes a user
  namespace of its own, where RLIMIT_NPROC counts its processes and threads alone; the seccomp
  filter (``sandbox_seccomp.py``) comes last, in sandbox_child.py.

Where user namespaces are not allowed, root makes the same namespaces without one (the code
still runs as nobody, so it cannot leave them); anyone else gets :class:`Refused`. Run by
sandbox_child.py, never imported by ossrun: the standard library only.
"""

import ctypes
import errno
import os
import select
import signal
import time

from sandbox_mounts import MS_NODEV, MS_NOSUID, MS_REC, View, check, libc, mount

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_SLAVE = 1 << 19
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
CAPABILITY_VERSION_3 = 0x20080522
KEYCTL_JOIN_SESSION_KEYRING = 1
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "arm64": 219, "riscv64": 219, "ppc64le": 130, "s390x": 280}
WAIT_ALL = 0x40000000  # __WALL: children whatever signal they end with
# What root's code runs as: no capabilities, files it writes are not root's, and RLIMIT_NPROC
# (which root is exempt from) applies.
NOBODY = 65534
USER_NAMESPACES = "user namespaces"
ROOT_NAMESPACES = "namespaces made by root"


class Refused(Exception):
    """This system does not allow a step of the jail; the message says which, and why."""


def new_session_keyring():
    """Leave the caller's session keyring for a new, empty one: no key of the user's is the code's."""
    number = SYS_KEYCTL.get(os.uname().machine)
    if number is None:
        return
    if libc.syscall(number, KEYCTL_JOIN_SESSION_KEYRING, None) < 0 and ctypes.get_errno() != errno.ENOSYS:
        raise Refused(f"cannot leave the session keyring ({os.strerror(ctypes.get_errno())})")


def hold(workdir, *, disk_bytes=None, disk_files=None):
    """Make the session's user (or, without them, root's) and mount namespaces in this process,
    with a tmpfs over ``workdir``; return how the code is isolated."""
    root = os.geteuid() == 0
    try:
        unshare_user(CLONE_NEWNS)
        how = USER_NAMESPACES
    except OSError as exc:
        refusal = f"user namespaces are not allowed here ({why_refused(exc, root)})"
        if not root:
            raise Refused(refusal) from None
        try:
            unshare(CLONE_NEWNS)
        except OSError as root_exc:
            raise Refused(f"{refusal}, nor other namespaces to root ({why_refused(root_exc, root, False)})") from None
        how = ROOT_NAMESPACES
    owner = (NOBODY, NOBODY) if root else (os.geteuid(), os.getegid())  # root's code writes there as nobody
    options = f"mode=0700,uid={owner[0]},gid={owner[1]}"
    options += (f",size={disk_bytes}" if disk_bytes else "") + (f",nr_inodes={disk_files}" if disk_files else "")
    try:
        mount(None, "/", None, MS_REC | MS_SLAVE)  # the host's later mounts show here; nothing goes back
        mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, options)
    except OSError as exc:
        raise Refused(f"cannot mount the working directory ({reason(exc)})") from None
    return how


def join(user_fd, mount_fd):
    """Enter the session's namespaces, held by these descriptors (no user namespace: root's)."""
    try:
        if user_fd is not None:
            check(libc.setns(user_fd, CLONE_NEWUSER), "setns (user)")
        check(libc.setns(mount_fd, CLONE_NEWNS), "setns (mount)")
    except OSError as exc:
        raise Refused(f"cannot join the session's namespaces ({reason(exc)})") from None
    finally:
        for fd in (user_fd, mount_fd):
            if fd is not None:
                os.close(fd)


def enter(workdir, totals, *, network, how, report_fd=None, tmp_bytes=None, tmp_files=None):
    """From within the session, run the rest of this program jailed: return (how) in the code's
    process only. This process becomes the keeper and never returns: it exits as the code did."""
    view = View(
        workdir, private=os.path.dirname(workdir), tmp_bytes=tmp_bytes, tmp_files=tmp_files, network=network
    )  # the host's paths, seen from here before anything moves
    root = os.geteuid() == 0
    flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWPID | (0 if network else CLONE_NEWNET)
    try:
        unshare(flags)
    except OSError as exc:
        raise Refused(f"cannot make the run's namespaces ({why_refused(exc, root, False)})") from None
    report_r, report_w = os.pipe()
    init = os.fork()
    if init:
        os.close(report_w)
        keep(init, report_r, report_fd)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the keeper killed, the whole namespace goes (ossrun kills both at once)
    os.close(report_r)
    if report_fd is not None:
        os.close(report_fd)  # the keeper's alone: the code cannot write ossrun a report
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as PID 1, init then ignores the code's SIGINT (no KeyboardInterrupt)
    try:
        view.build()
    except OSError as exc:
        raise Refused(f"cannot build the file system view ({reason(exc)})") from None
    os.chdir(view.workdir)
    totals.start(view.workdir)
    prctl(PR_SET_DUMPABLE, 0)  # the code may not ptrace init, which holds the namespaces' capabilities
    code = os.fork()
    if code:
        supervise(code, report_w, totals)
    os.close(report_w)
    totals.close()
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


def keep(init, report_r, report_fd):
    """The keeper: wait for init, then end as the code ended (init reports how), or, when a
    bound ended the run, tell ossrun which and die of SIGKILL as the run did."""
    _, status = os.waitpid(init, 0)
    report = os.read(report_r, 64).decode().split()
    if report and report[0] == "bound":
        if report_fd is not None:
            os.write(report_fd, f"{report[1]} {report[2]}\n".encode())
        exit_as(signal.SIGKILL)  # a wait status of "killed by SIGKILL"
    exit_as(int(report[1]) if report else status)


def supervise(code, report_w, totals):
    """init: reap every child; when the code ends, or a total passes its bound, report it and
    exit (the kernel kills the rest)."""
    try:
        pidfd = os.pidfd_open(code)
    except (AttributeError, OSError):
        pidfd = None  # before Linux 5.3: look every interval
    while True:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | WAIT_ALL)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
            if pid == code:
                over = totals.exceeded()  # an OOM kill may be what ended it
                os.write(report_w, (f"bound {over}" if over else f"exit {status}").encode())
                os._exit(0)
        over = totals.exceeded()
        if over:
            os.write(report_w, f"bound {over}".encode())
            os._exit(0)
        if pidfd is not None:
            select.select([pidfd], [], [], totals.interval)
        else:
            time.sleep(totals.interval)


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
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")  # out of memory, the kernel kills the code's processes first, never init or ossrun
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
    (
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        "1",
        "AppArmor restricts them: the sysctl kernel.apparmor_restrict_unprivileged_userns is 1",
    ),
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
