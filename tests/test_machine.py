"""Physical cores and available memory, read without psutil."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ossrun import machine


def test_physical_cores_counts_cores_not_hyperthreads(tmp_path, monkeypatch):
    # Four logical CPUs, two per core: two physical cores.
    for cpu, siblings in {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"}.items():
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "thread_siblings_list").write_text(siblings + "\n")
    monkeypatch.setattr(machine, "_SYS_CPU", tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert machine.physical_cores() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2}, raising=False)  # pinned to one core
    assert machine.physical_cores() == 1


def test_physical_cores_on_this_machine():
    assert 1 <= machine.physical_cores() <= (os.cpu_count() or 1)


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="Linux reports MemAvailable")
def test_available_memory_is_memavailable():
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    available = machine.available_memory()
    total = int(fields["MemTotal"].split()[0]) * 1024
    assert 0 < available <= total
    assert abs(available - int(fields["MemAvailable"].split()[0]) * 1024) < 2**30  # read moments apart
