"""What the machine offers: physical CPU cores, total and available memory (no psutil needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

_SYS_CPU = Path("/sys/devices/system/cpu")


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


def _linux_physical_cores() -> Optional[int]:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    cores = set()
    for cpu in cpus:
        topology = _SYS_CPU / f"cpu{cpu}" / "topology"
        try:
            # The siblings sharing a core all list the same set: one entry per physical core.
            cores.add((topology / "physical_package_id").read_text().strip() + "/" + (topology / "thread_siblings_list").read_text().strip())
        except OSError:
            return None
    return len(cores) or None


def _sysctl_physical_cores() -> Optional[int]:
    if sys.platform != "darwin":
        return None
    try:
        out = subprocess.run(["sysctl", "-n", "hw.physicalcpu"], capture_output=True, text=True, timeout=5)
        return int(out.stdout.strip()) or None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def available_memory() -> Optional[int]:
    """Bytes of memory a new process can use without swapping, or None if unknown.

    On Linux that is MemAvailable (free memory plus reclaimable caches); elsewhere
    the free physical pages.
    """
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def total_memory() -> Optional[int]:
    """Bytes of physical memory, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
