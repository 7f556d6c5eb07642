"""Cgroups for the python tool's runs: where this process may make them, and one per run.

Each run's first process (the jail's keeper) is placed in a cgroup made for the run as soon as it
is started, before it reads the code (sandbox_bounds.py), so every process the code starts is
counted there: the kernel bounds their memory together (shared memory and
tmpfs pages included) and their number, and counts their CPU time. Cgroup v2 first: the
nearest cgroup, from this process's own upwards, that this user may write and whose children
get the memory controller (a delegated subtree: systemd gives each user's session one, and
``systemd-run --user -p Delegate=yes`` another); failing that, this process's own cgroup, for
the CPU time alone. Then, for what v2 did not give, cgroup v1's memory, pids and cpuacct
hierarchies under this process's own groups, where this user may write them (root). Nothing
writable: no cgroup, and the run's init measures its totals itself.
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

EMPTY_WAIT = 2.0  # seconds to wait for a run's cgroup to empty before removing it
_names = count()


@dataclass(frozen=True)
class Hierarchy:
    """Where runs' cgroups go for some controllers: a parent folder in one hierarchy."""

    version: int
    parent: str
    controllers: frozenset[str]  # of "memory", "pids", "cpu"


@dataclass(frozen=True)
class RunCgroup:
    """The cgroups of one run, and what sandbox_bounds.py reads of them."""

    folders: tuple[str, ...]
    spec: dict = field(default_factory=dict)  # cpu, oom, memory: the child's Totals config

    def place(self, pid: int) -> None:
        """Move ``pid`` (the run's first process, before it starts anything) into these cgroups.

        Moving a process costs the kernel an RCU grace period (milliseconds): done while the
        child's interpreter starts, it costs a run nothing."""
        for folder in self.folders:
            with open(os.path.join(folder, "cgroup.procs"), "w") as f:
                f.write(str(pid))


@dataclass(frozen=True)
class Cgroups:
    hierarchies: tuple[Hierarchy, ...]

    @property
    def controllers(self) -> frozenset[str]:
        return frozenset().union(*(h.controllers for h in self.hierarchies))

    def make(self, memory_bytes: int | None, processes: int | None) -> RunCgroup:
        """A cgroup in each hierarchy for one run, with its bounds; ``processes`` counts init too."""
        name = f"ossrun-{os.getpid()}-{next(_names)}"
        folders: list[str] = []
        spec: dict = {"memory": False}
        try:
            for hierarchy in self.hierarchies:
                folder = os.path.join(hierarchy.parent, name)
                os.mkdir(folder)
                folders.append(folder)
                _bound(hierarchy, folder, spec, memory_bytes, processes)
        except OSError:
            remove(RunCgroup(tuple(folders)))
            raise
        return RunCgroup(tuple(folders), spec)


def _bound(hierarchy: Hierarchy, folder: str, spec: dict, memory_bytes: int | None, processes: int | None) -> None:
    v2 = hierarchy.version == 2
    if "memory" in hierarchy.controllers and memory_bytes:
        if v2:
            _write(folder, "memory.max", memory_bytes)
            _write(folder, "memory.swap.max", 0, optional=True)
            spec["oom"] = (os.path.join(folder, "memory.events"), "oom_kill")
        else:
            _write(folder, "memory.limit_in_bytes", memory_bytes)
            _write(folder, "memory.memsw.limit_in_bytes", memory_bytes, optional=True)
            spec["oom"] = (os.path.join(folder, "memory.oom_control"), "oom_kill")
        spec["memory"] = True
    if "pids" in hierarchy.controllers and processes:
        _write(folder, "pids.max", processes)
    if "cpu" in hierarchy.controllers and "cpu" not in spec:
        spec["cpu"] = (os.path.join(folder, "cpu.stat"), "usage_usec") if v2 else (os.path.join(folder, "cpuacct.usage"), "")


def _write(folder: str, name: str, value: int, optional: bool = False) -> None:
    path = os.path.join(folder, name)
    if optional and not os.path.exists(path):
        return
    with open(path, "w") as f:
        f.write(str(value))


def remove(group: RunCgroup) -> None:
    """Remove a run's cgroups once its processes are gone: they die with init, soon after it;
    any still there after a moment are killed (nothing else is ever in a run's cgroup)."""
    deadline = time.monotonic() + EMPTY_WAIT
    for folder in reversed(group.folders):
        while True:
            try:
                os.rmdir(folder)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    break  # left behind; removed by the next ossrun that finds it (sweep)
                if time.monotonic() > deadline - EMPTY_WAIT / 2:
                    _kill_all(folder)
                time.sleep(0.01)


def _kill_all(folder: str) -> None:
    for pid in _read(os.path.join(folder, "cgroup.procs")).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


def sweep(cgroups: Cgroups) -> None:
    """Remove the empty cgroups of runs whose ossrun is gone (killed before it could)."""
    for hierarchy in cgroups.hierarchies:
        try:
            names = os.listdir(hierarchy.parent)
        except OSError:
            continue
        for name in names:
            match = re.fullmatch(r"ossrun-(\d+)-\d+", name)
            if match and not _alive(int(match.group(1))):
                try:
                    os.rmdir(os.path.join(hierarchy.parent, name))
                except OSError:
                    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find() -> Cgroups | None:
    """Where this process may make its runs' cgroups, or None."""
    mounts = _cgroup_mounts()
    memberships = _memberships()
    hierarchies: list[Hierarchy] = []
    v2 = _v2_place(mounts, memberships)
    if v2 is not None:
        hierarchies.append(v2)
    covered = v2.controllers if v2 else frozenset()
    for controller, names in (("memory", ("memory",)), ("pids", ("pids",)), ("cpu", ("cpuacct",))):
        if controller in covered:
            continue
        place = _v1_place(mounts, memberships, names[0])
        if place is not None:
            hierarchies.append(Hierarchy(1, place, frozenset({controller})))
    if not hierarchies:
        return None
    found = Cgroups(tuple(_merge(hierarchies)))
    sweep(found)
    return found


def _merge(hierarchies: list[Hierarchy]) -> list[Hierarchy]:
    """One cgroup per folder: v1 hierarchies mounted together (cpu,cpuacct) share theirs."""
    merged: dict[str, Hierarchy] = {}
    for h in hierarchies:
        if h.parent in merged:
            h = Hierarchy(h.version, h.parent, merged[h.parent].controllers | h.controllers)
        merged[h.parent] = h
    return list(merged.values())


def _cgroup_mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, root inside the hierarchy, file system type, options) of each cgroup mount."""
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        unescape = lambda text: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)  # noqa: E731
        found.append((unescape(fields[4]), unescape(fields[3]), tail[0], set(tail[2].split(","))))
    return found


def _memberships() -> dict[str, str]:
    """This process's cgroup in each hierarchy: "" for v2, else the controllers' names."""
    found = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            found[parts[1]] = parts[2]
    return found


def _folder(mount: tuple[str, str, str, set[str]], path: str) -> str | None:
    point, root, _, _ = mount
    if not (path == root or path.startswith(root.rstrip("/") + "/")):
        return None  # this process's cgroup is outside what the mount shows
    return os.path.normpath(os.path.join(point, os.path.relpath(path, root)))


def _writable(folder: str) -> bool:
    return os.access(folder, os.W_OK) and os.access(os.path.join(folder, "cgroup.procs"), os.W_OK)


def _v2_place(mounts: list, memberships: dict[str, str]) -> Hierarchy | None:
    mount = next((m for m in mounts if m[2] == "cgroup2"), None)
    if mount is None or "" not in memberships:
        return None
    own = _folder(mount, memberships[""])
    if own is None or not os.path.isdir(own):
        return None
    folder = own
    while _writable(folder):  # up to where this user's part of the tree ends
        enabled = set(_read(os.path.join(folder, "cgroup.subtree_control")).split())
        if "memory" in enabled:
            return Hierarchy(2, folder, frozenset({"memory", "cpu"} | ({"pids"} & enabled)))
        if folder == mount[0]:
            break
        folder = os.path.dirname(folder)
    return Hierarchy(2, own, frozenset({"cpu"})) if _writable(own) else None


def _v1_place(mounts: list, memberships: dict[str, str], controller: str) -> str | None:
    for mount in mounts:
        if mount[2] != "cgroup" or controller not in mount[3]:
            continue
        path = next((p for names, p in memberships.items() if controller in names.split(",")), None)
        own = _folder(mount, path) if path is not None else None
        return own if own and _writable(own) else None
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
