"""What the machine offers: physical CPU cores, total and available memory (no psutil needed).

Available memory counts the memory cgroup's limit when ossrun runs in a container.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

_SYS_CPU = Path("/sys/devices/system/cpu")
_PROC = Path("/proc")
# cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit number; anything from 2**60 up is none
_NO_LIMIT = 2**60


def physical_cores() -> int:
    """Physical cores this process may run on.

    llama.cpp's matrix kernels gain nothing from hyper-threads (they share a
    core's vector units and memory bandwidth), so threads default to this.
    """
    return _linux_physical_cores() or _sysctl_physical_cores() or _usable_cpus()


def _usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _linux_physical_cores() -> int | None:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    cores = set()
    for cpu in cpus:
        topology = _SYS_CPU / f"cpu{cpu}" / "topology"
        try:
            # The siblings sharing a core all list the same set: one entry per physical core.
            cores.add(
                (topology / "physical_package_id").read_text().strip()
                + "/"
                + (topology / "thread_siblings_list").read_text().strip()
            )
        except OSError:
            return None
    return len(cores) or None


def _sysctl_physical_cores() -> int | None:
    if sys.platform != "darwin":
        return None
    try:
        out = subprocess.run(["sysctl", "-n", "hw.physicalcpu"], capture_output=True, text=True, timeout=5)
        return int(out.stdout.strip()) or None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def available_memory() -> int | None:
    """Bytes of memory a new process can use without swapping, or None if unknown.

    On Linux that is MemAvailable (free memory plus reclaimable caches), or less when this
    process runs in a memory cgroup (a container) with a limit: whichever is smaller.
    Elsewhere the free physical pages.
    """
    host = _meminfo_available()
    if host is None:
        try:
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            host = None
    limit = cgroup_available()
    if limit is None:
        return host
    return limit if host is None else min(host, limit)


def _meminfo_available() -> int | None:
    try:
        for line in (_PROC / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_available() -> int | None:
    """What this process's memory cgroup (and each cgroup above it) still lets it use, or None
    where no limit is set or none can be read.

    cgroup v2: ``memory.max`` minus ``memory.current``; v1: ``memory.limit_in_bytes`` minus
    ``memory.usage_in_bytes``. Both usages count the page cache, which the kernel reclaims
    before it kills anything, so the cgroup's inactive file pages (``memory.stat``) are added
    back, as ``docker stats`` does. A file that cannot be read, or reads as something other than
    a number, is treated as no limit: never as zero.
    """
    lowest = None
    for folder, version in _memory_cgroups():
        room = _cgroup_room(folder, version)
        if room is not None:
            lowest = room if lowest is None else min(lowest, room)
    return lowest


def _memory_cgroups() -> list[tuple[Path, int]]:
    """The folders of this process's memory cgroup and of its ancestors within the mount, and the version."""
    try:
        lines = (_PROC / "self" / "cgroup").read_text().splitlines()
        mounts = (_PROC / "self" / "mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            version = 2
        elif "memory" in controllers.split(","):
            version = 1
        else:
            continue
        mount = _cgroup_mount(mounts, version)
        if mount is None:
            continue
        root, point = mount
        relative = path if root == "/" else (path[len(root) :] if path.startswith(root) else None)
        if relative is None:
            continue
        folder = point / relative.lstrip("/")
        while True:  # a limit may sit on any ancestor up to the mount's root
            found.append((folder, version))
            if folder == point or point not in folder.parents:
                break
            folder = folder.parent
    return found


def _cgroup_mount(mounts: list[str], version: int) -> tuple[str, Path] | None:
    """(root within the hierarchy, mount point) of the cgroup2 mount, or of the v1 memory controller's."""
    for line in mounts:
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 5 or len(fields) < dash + 3:
            continue
        fstype, options = fields[dash + 1], fields[dash + 3].split(",") if len(fields) > dash + 3 else []
        if (version == 2 and fstype == "cgroup2") or (version == 1 and fstype == "cgroup" and "memory" in options):
            return fields[3], Path(_unescape_mount(fields[4]))
    return None


def _unescape_mount(text: str) -> str:
    # mountinfo writes spaces, tabs, newlines and backslashes in paths as octal escapes
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _cgroup_room(folder: Path, version: int) -> int | None:
    if version == 2:
        limit_file, usage_file = "memory.max", "memory.current"
    else:
        limit_file, usage_file = "memory.limit_in_bytes", "memory.usage_in_bytes"
    limit, usage = _read_number(folder / limit_file), _read_number(folder / usage_file)
    if limit is None or usage is None or limit >= _NO_LIMIT:
        return None
    reclaimable = _stat_value(folder / "memory.stat", "inactive_file" if version == 2 else "total_inactive_file") or 0
    return max(0, limit - usage + min(reclaimable, usage))


def _read_number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return _NO_LIMIT
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 0 else None


def _stat_value(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def total_memory() -> int | None:
    """Bytes of physical memory, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
