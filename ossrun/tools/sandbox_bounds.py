"""The totals of one python-tool run: the memory and the CPU time of all its processes together.

Where ossrun could make a cgroup for the run (ossrun/tools/cgroups.py), it places the keeper in
it before the keeper reads the code, so every process of the run is counted there: the kernel
bounds their memory together (shared memory, memfds and tmpfs pages included) and counts their
CPU time, dead processes' too. init reads that count and the cgroup's OOM kills every
interval and ends the run at a bound.

Where there is none, init, which sees every process of its PID namespace, adds up what they use
every interval (``sample_seconds``, 0.05 s) and ends the run when a total passes its bound, two samples in a row (a child
reaped between two reads can be counted twice once):

- memory: each process's resident anonymous and shared memory, the run's tmpfs (``/tmp``,
  ``/dev/shm``, what the working directory grew by) and SysV shared memory (the run's own IPC
  namespace); memfds, which nothing here could see, are refused by the seccomp filter;
- CPU time: each process's own and that of the children it reaped (init's own work aside). A
  child the kernel reaps by itself, because its parent ignores SIGCHLD, would take its time
  along: the seccomp filter refuses to change SIGCHLD's action.

Between two samples a run can pass a bound by what it can take in one interval; each process
alone stays within the kernel's limits (RLIMIT_AS, RLIMIT_CPU). Run by sandbox_child.py, never
imported by ossrun: the standard library only.
"""

import os

DEFAULT_INTERVAL = 0.05  # seconds between two looks at the totals, unless ossrun says otherwise
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FRESH_TMPFS = ("/tmp", "/dev/shm")


class Totals:
    """One run's bounds; made by the keeper, read by init."""

    def __init__(self, config):
        cgroup = config.get("cgroup") or {}
        self.interval = config.get("sample_seconds") or DEFAULT_INTERVAL
        self.memory_bytes = config.get("memory_bytes")
        self.cpu_seconds = config.get("cpu_seconds")
        self.memory_enforced = bool(cgroup.get("memory"))  # by the kernel, over the whole run
        self.cpu_counted = bool(cgroup.get("cpu"))  # by a cgroup (else from the processes' own accounts)
        flags = os.O_RDONLY | os.O_CLOEXEC
        self.cpu = (os.open(cgroup["cpu"][0], flags), cgroup["cpu"][1]) if cgroup.get("cpu") else None
        self.oom = (os.open(cgroup["oom"][0], flags), cgroup["oom"][1]) if cgroup.get("oom") else None
        self.start_cpu = self.start_oom = self.start_workdir = 0
        self.over = {}  # bound -> samples in a row past it

    def start(self, workdir):
        """In init, once its /proc is the namespace's: what the run starts from."""
        self.start_cpu = self.cpu_used()
        self.start_oom = self.oom_kills()
        self.start_workdir = _tmpfs_used(workdir)
        self.workdir = workdir

    def close(self):
        """In the code's process: none of this is the code's."""
        for fd in [pair[0] for pair in (self.cpu, self.oom) if pair]:
            os.close(fd)
        self.cpu, self.oom = None, None

    def exceeded(self):
        """The bound the run has passed, as "memory BYTES" or "cpu SECONDS", or None."""
        if self.oom is not None and self.oom_kills() > self.start_oom:
            return f"memory {self.memory_bytes}"
        if self.cpu_seconds is not None:
            used = self.cpu_used() - self.start_cpu
            if self._past("cpu", used > self.cpu_seconds):
                return f"cpu {used:.2f}"
        if self.memory_bytes is not None and not self.memory_enforced:
            used = self.memory_used()
            if self._past("memory", used > self.memory_bytes):
                return f"memory {used}"
        return None

    def _past(self, bound, over):
        """Whether ``bound`` is past now and was at the last sample too (a cgroup's count: now)."""
        self.over[bound] = self.over.get(bound, 0) + 1 if over else 0
        return self.over[bound] >= (1 if bound == "cpu" and self.cpu_counted else 2)

    # -- the counts ---------------------------------------------------------

    def cpu_used(self):
        """Seconds of CPU time the run's processes have used, the dead ones' included."""
        if self.cpu is not None:
            fd, field = self.cpu
            text = _pread(fd)
            if not field:
                return int(text) / 1e9  # cgroup v1's cpuacct.usage, in nanoseconds
            return int(_field(text, field)) / 1e6  # cgroup v2's cpu.stat usage_usec
        ticks = 0
        for pid in _pids():
            times = _stat_times(pid)
            if times:
                own, children = times
                ticks += children + (own if pid != 1 else 0)  # init's own work is not the code's
        return ticks / CLOCK_TICKS

    def oom_kills(self):
        if self.oom is None:
            return 0
        fd, field = self.oom
        return int(_field(_pread(fd), field) or 0)

    def memory_used(self):
        """Bytes held by the run: its processes' resident memory, its tmpfs and shared memory."""
        used = 0
        for pid in _pids():
            if pid != 1:
                used += _resident(pid)
        used += sum(_tmpfs_used(path) for path in FRESH_TMPFS)
        used += max(0, _tmpfs_used(self.workdir) - self.start_workdir)
        return used + _sysv_shared_memory()


def _pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("ascii", "replace")
    except OSError:
        return ""  # gone meanwhile


def _pread(fd):
    return os.pread(fd, 4096, 0).decode("ascii", "replace")


def _field(text, name):
    """The value of ``name`` in a "name value" per line file."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return value.strip()
    return None


def _stat_times(pid):
    """(own, reaped children's) CPU time of ``pid`` in clock ticks, or None if it is gone."""
    text = _read(f"/proc/{pid}/stat")
    fields = text[text.rfind(")") + 2 :].split()  # after the command's name, which may hold anything
    if len(fields) < 15:
        return None
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return utime + stime, cutime + cstime


def _resident(pid):
    """Resident anonymous and shared memory of ``pid``, in bytes."""
    used = 0
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith(("RssAnon:", "RssShmem:")):
            used += int(line.split()[1]) * 1024
    return used


def _tmpfs_used(path):
    try:
        stat = os.statvfs(path)
    except OSError:
        return 0
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def _sysv_shared_memory():
    """Resident bytes of the SysV shared memory segments of this IPC namespace."""
    lines = _read("/proc/sysvipc/shm").splitlines()
    if not lines:
        return 0
    columns = lines[0].split()
    if "rss" not in columns:
        return 0
    index = columns.index("rss")
    return sum(int(line.split()[index]) for line in lines[1:] if len(line.split()) > index)
