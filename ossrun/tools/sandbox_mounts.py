"""The file system the python tool's code sees, built in the run's own mount namespace.

Read-only: the system's programs, libraries and configuration (``SYSTEM_PATHS``) and what the
Python that runs the code needs to start and import (:func:`python_paths`): its prefixes' ``lib``
folders and executables, the folders of ``sys.path`` that are an installation's (the standard
library, site-packages), of any other folder on ``sys.path`` (a project root an editable install
adds) only the packages, modules and distribution metadata in it, never the rest (a ``.env``, a
``.git``, a key), and the shared libraries it has loaded. Read-write: the working directory (the
session's tmpfs, see sandbox_jail.py). Fresh and empty for each run, bounded in bytes and files:
``/tmp`` and ``/dev/shm``; ``/dev`` holds only ``DEVICES``; ``/proc`` shows the run's own
processes. Nothing else of the machine: home directories, ``/run`` and its sockets, ``/var``, ``/sys``.

Every path is taken from this process, which runs in ``/`` (never in a folder the code can
write): relative entries of ``sys.path`` are dropped, and nothing that resolves into the
session's own folder is bound but the working directory itself, so no file the code made in
one run can choose what the next one binds.

The new root is a tmpfs mounted over ``/tmp``: each path is bound into it from a descriptor
opened beforehand (so paths under the old ``/tmp`` stay reachable), then ``pivot_root`` makes
it the root and the old root is detached. Symbolic links met on the way to a path (``/lib ->
usr/lib``, a venv's ``python -> /usr/bin/python3``) are made again, so paths resolve inside as
outside. Run by sandbox_child.py, never imported by ossrun: the standard library only.
"""

import ctypes
import importlib.machinery
import os
import re
import stat
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DEVICES = ("null", "zero", "full", "random", "urandom")
DEVICE_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}
# Made anew for each run, never bound from the host: file system, flags, options (tmpfs sizes are added).
FRESH = {
    "/dev": ("tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755,size=64k"),
    "/dev/shm": ("tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
    "/proc": ("proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
    "/tmp": ("tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
}
STAGE = "/tmp"  # where the new root is put together before it becomes /
# Files of /proc about the host rather than the run: the keys of every user (their descriptions
# readable by anyone of the same uid), timers and scheduling of every process, kernel memory.
MASKED_PROC = ("keys", "key-users", "timer_list", "sched_debug", "kcore", "latency_stats", "kallsyms")

libc = ctypes.CDLL(None, use_errno=True)


def python_paths():
    """What the interpreter that runs the code needs to start and to import what is installed."""
    prefixes = dict.fromkeys((sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix))
    paths = [os.path.join(prefix, name) for prefix in prefixes for name in ("lib", "lib64", "pyvenv.cfg")]
    paths += [os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))]
    for entry in sys.path:
        if not os.path.isabs(entry):
            continue  # resolved against the current folder: not the installation's to say
        if os.path.isfile(entry) or _installed(entry, prefixes):
            paths.append(entry)  # a zip of the standard library, site-packages
        else:
            paths += importable(entry)  # a project folder: only what import finds in it
    paths += editable_packages()
    return paths + loaded_libraries()


def _installed(folder, prefixes):
    """Whether ``folder`` is an installation's own: under a prefix's lib folder, or a site-packages."""
    libraries = [os.path.join(prefix, name) + "/" for prefix in prefixes for name in ("lib", "lib64")]
    return os.path.basename(folder.rstrip("/")) in ("site-packages", "dist-packages") or any(
        (folder.rstrip("/") + "/").startswith(lib) for lib in libraries
    )


MODULE_SUFFIXES = tuple(importlib.machinery.all_suffixes())  # .py, .pyc, extension modules


def importable(folder):
    """The parts of ``folder`` (a folder on ``sys.path``) that import can use: packages and
    namespace packages, modules, extension modules and distributions' metadata."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    found = []
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue
        if entry.is_dir():
            if name.endswith((".dist-info", ".egg-info")) or (name.isidentifier() and _holds_modules(entry.path, 2)):
                found.append(entry.path)
        elif entry.is_file() and name.endswith(MODULE_SUFFIXES) and name.split(".")[0].isidentifier():
            found.append(entry.path)
    return found


def _holds_modules(folder, depth):
    """Whether ``folder`` holds a module, or (``depth`` levels down) a package that does."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    if any(entry.name.endswith(MODULE_SUFFIXES) and entry.is_file() for entry in entries):
        return True
    return depth > 1 and any(
        entry.name.isidentifier() and entry.is_dir() and _holds_modules(entry.path, depth - 1) for entry in entries
    )


def editable_packages():
    """The folders of packages installed in development mode through a finder (setuptools' editable
    installs map each package to its own folder, not to its project's)."""
    paths = []
    for finder in sys.meta_path:
        mapping = getattr(sys.modules.get(getattr(finder, "__module__", "")), "MAPPING", None)
        if isinstance(mapping, dict):
            paths += [path for path in mapping.values() if isinstance(path, str) and os.path.isabs(path)]
    return paths


def loaded_libraries():
    """The shared libraries this interpreter has loaded (libpython, libffi... wherever they are)."""
    with open("/proc/self/maps") as f:
        mapped = [line.split(None, 5) for line in f]
    return sorted(
        {
            fields[5].strip()
            for fields in mapped
            if len(fields) == 6
            and fields[5].startswith("/")
            and ".so" in fields[5]
            and not fields[5].strip().endswith(" (deleted)")
        }
    )


class View:
    """What the code will see: host paths to bind (read-only or writable) and the links leading to them."""

    def __init__(self, workdir, *, private=None, tmp_bytes=None, tmp_files=None, network=False):
        self.tmp_options = "".join((f",size={tmp_bytes}" if tmp_bytes else "", f",nr_inodes={tmp_files}" if tmp_files else ""))
        self.private = os.path.realpath(private) if private else None  # the session's folder: the code's alone
        self.binds = {}  # real path -> writable
        self.links = {}  # path of a symbolic link -> its target, as on the host
        for path in SYSTEM_PATHS + tuple(python_paths()):
            self.add(path, writable=False)
        if network:  # name resolution, where /etc/resolv.conf leads elsewhere (systemd-resolved's /run/...)
            self.add("/etc/resolv.conf", writable=False)
        self.workdir = self.add(workdir, writable=True, private_ok=True)  # its real path, the one to enter

    def add(self, path, writable, private_ok=False):
        """Bind ``path`` (if it exists) and the links on the way to it; return its real path.

        Nothing is bound from the session's own folder (but the working directory), nor the whole
        host, nor over what is made anew."""
        if not path or not os.path.isabs(path) or not os.path.exists(path):
            return None
        links = {}
        real = resolve(os.path.abspath(path), links)
        if real == "/" or real in FRESH or real.startswith("/proc/"):
            return real
        if self.private and not private_ok and any(_within(p, self.private) for p in (real, *links)):
            return None
        self.links.update(links)
        self.binds[real] = self.binds.get(real, False) or writable
        return real

    def mounts(self):
        """(path, kind, detail) in the order to make them: a parent before what it holds."""
        kept = {}
        for path in sorted(self.binds):
            holder = _holder(path, kept)
            if holder is None or kept[holder] != self.binds[path]:  # a writable dir in a read-only one, or the reverse
                kept[path] = self.binds[path]
        steps = [(path, "bind", writable) for path, writable in kept.items()]
        steps += [(path, "fresh", None) for path in FRESH]
        steps += [(f"/dev/{name}", "device", None) for name in DEVICES if os.path.exists(f"/dev/{name}")]
        steps += [(f"/dev/{name}", "link", target) for name, target in DEVICE_LINKS.items()]
        steps += [
            (path, "link", target) for path, target in self.links.items() if _holder(path, kept) is None and path not in FRESH
        ]  # a link /tmp gives way to a fresh /tmp
        return sorted(steps, key=lambda step: step[0]), kept

    def build(self):
        """Make this view the root of the current mount namespace (from inside the run's PID namespace)."""
        steps, kept = self.mounts()
        host_mounts = _mountpoints()
        mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted from here on reaches the host
        sources = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path, kind, _ in steps if kind in ("bind", "device")}
        try:
            mount("tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
            for path, kind, detail in steps:
                self._make(STAGE + path, kind, detail, sources.get(path))
            _lock_binds(kept, host_mounts)
            mount(None, STAGE + "/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
            _mask_proc()
        finally:
            for fd in sources.values():
                os.close(fd)
        os.chdir(STAGE)
        pivot_root(".", ".")
        check(libc.umount2(b".", MNT_DETACH), "umount the old root")
        os.chdir("/")
        mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)

    def _make(self, target, kind, detail, fd):
        if kind == "link":
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            os.symlink(detail, target)
        elif kind in ("bind", "device"):
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.makedirs(target, mode=0o755, exist_ok=True)
            elif not os.path.lexists(target):
                os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
            mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        else:
            fstype, flags, options = FRESH[target[len(STAGE) :]]
            if fstype == "tmpfs" and "size=" not in options:
                options += self.tmp_options
            os.makedirs(target, mode=0o755, exist_ok=True)
            mount(fstype, target, fstype, flags, options)


def _mask_proc():
    """/dev/null over the files of /proc that show the host's, not the run's (as Docker does)."""
    for name in MASKED_PROC:
        target = f"{STAGE}/proc/{name}"
        if os.path.isfile(target):
            mount(STAGE + "/dev/null", target, None, MS_BIND)
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC)  # a device: not nodev


def resolve(path, links, depth=0):
    """The real path of the absolute ``path``, adding to ``links`` each symbolic link met on the way."""
    if depth > 40:
        raise OSError(40, f"too many levels of symbolic links: {path}")
    real = "/"
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            real = os.path.dirname(real)
            continue
        candidate = os.path.join(real, part)
        if os.path.islink(candidate):
            target = os.readlink(candidate)
            links[candidate] = target
            real = resolve(os.path.join(real, target), links, depth + 1)
        else:
            real = candidate
    return real


def _within(path, folder):
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _holder(path, paths):
    """The nearest of ``paths`` that is ``path`` or holds it, if any."""
    holders = [p for p in paths if path == p or path.startswith(p + "/")]
    return max(holders, key=len) if holders else None


def _lock_binds(kept, host_mounts):
    """Remount each bound path, and each host mount under it, read-only unless it is the working
    directory, without set-user-ID programs or devices, keeping the flags a user namespace may not drop."""
    paths = set(kept) | {m for m in host_mounts if _holder(m, kept) is not None}
    for path in sorted(paths):
        target = STAGE + path
        try:
            flags = os.statvfs(target).f_flag
        except FileNotFoundError:
            continue  # a host mount hidden under another one
        readonly = not kept[_holder(path, kept)] or flags & os.ST_RDONLY
        extra = (MS_RDONLY if readonly else 0) | (MS_NOEXEC if flags & os.ST_NOEXEC else 0)
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | extra)


def _mountpoints():
    with open("/proc/self/mountinfo") as f:
        fields = [line.split(" ", 5) for line in f]
    unescape = lambda text: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)  # noqa: E731
    return [unescape(parts[4]) for parts in fields]


def mount(source, target, fstype, flags, data=None):
    encode = lambda text: None if text is None else os.fsencode(text)  # noqa: E731
    check(libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)), f"mount {target}")


def pivot_root(new_root, put_old):
    machine = os.uname().machine
    if machine not in SYS_PIVOT_ROOT:
        raise OSError(38, f"pivot_root: no system call number known for {machine}")
    number = SYS_PIVOT_ROOT[machine]
    check(libc.syscall(number, os.fsencode(new_root), os.fsencode(put_old)), "pivot_root")


def check(result, what):
    """Raise the C call's errno as an OSError naming ``what`` failed."""
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")
