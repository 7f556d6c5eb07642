"""The file system the python tool's code sees, built in the run's own mount namespace.

Read-only: the system's programs, libraries and configuration (``SYSTEM_PATHS``) and the Python
that runs the code (its prefixes and each entry of its ``sys.path``, wherever they are, a home
directory included). Read-write: the working directory. Fresh and empty for each run: ``/tmp``
and ``/dev/shm``; ``/dev`` holds only ``DEVICES``; ``/proc`` shows the run's own processes.
Nothing else of the machine: home directories, ``/run`` and its sockets, ``/var``, ``/sys``.

The new root is a tmpfs mounted over ``/tmp``: each path is bound into it from a descriptor
opened beforehand (so paths under the old ``/tmp`` stay reachable), then ``pivot_root`` makes
it the root and the old root is detached. Symbolic links met on the way to a path (``/lib ->
usr/lib``, a venv's ``python -> /usr/bin/python3``) are made again, so paths resolve inside as
outside. Run by sandbox_child.py, never imported by ossrun: the standard library only.
"""

import ctypes
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

libc = ctypes.CDLL(None, use_errno=True)


def python_paths():
    """Where the interpreter that runs the code lives, the modules it imports and the shared
    libraries it has loaded (libpython, libffi... wherever they are)."""
    executable_dir = os.path.dirname(os.path.realpath(sys.executable))
    with open("/proc/self/maps") as f:
        mapped = [line.split(None, 5) for line in f]
    library_dirs = sorted({os.path.dirname(fields[5].strip()) for fields in mapped
                           if len(fields) == 6 and fields[5].startswith("/") and ".so" in fields[5]})
    return (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, executable_dir, *sys.path, *library_dirs)


class View:
    """What the code will see: host paths to bind (read-only or writable) and the links leading to them."""

    def __init__(self, workdir, tmp_bytes=None, network=False):
        self.tmp_bytes = tmp_bytes
        self.binds = {}  # real path -> writable
        self.links = {}  # path of a symbolic link -> its target, as on the host
        for path in SYSTEM_PATHS + python_paths():
            self.add(path, writable=False)
        if network:  # name resolution, where /etc/resolv.conf leads elsewhere (systemd-resolved's /run/...)
            self.add("/etc/resolv.conf", writable=False)
        self.workdir = self.add(workdir, writable=True)  # its real path, the one to enter

    def add(self, path, writable):
        """Bind ``path`` (if it exists) and the links on the way to it; return its real path."""
        if not path or not os.path.exists(path):
            return None
        real = resolve(os.path.abspath(path), self.links)
        if real != "/" and real not in FRESH and not real.startswith("/proc/"):  # never the whole host, nor over what is made anew
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
        steps += [(path, "link", target) for path, target in self.links.items()
                  if _holder(path, kept) is None and path not in FRESH]  # a link /tmp gives way to a fresh /tmp
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
            fstype, flags, options = FRESH[target[len(STAGE):]]
            if options and "size=" not in options and self.tmp_bytes:
                options += f",size={self.tmp_bytes}"
            os.makedirs(target, mode=0o755, exist_ok=True)
            mount(fstype, target, fstype, flags, options)


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
