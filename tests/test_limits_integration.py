"""Limits and profiles against real containers: applied at start and live, through profiles."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.integration

MEM = "/sys/fs/cgroup/memory/memory.limit_in_bytes"


def inside(d, name: str, *cmd: str) -> str:
    return d.cli("exec", name, "--", *cmd).stdout.strip()


def test_profile_limit_applies_to_every_instance_live(daemon_with_busybox):
    d = daemon_with_busybox
    os.mkdir(d.path("profiles", "small"))
    d.write("profiles", "small", "config", "limits.memory", "64MiB")
    for name in ("p1", "p2"):
        os.mkdir(d.path("instances", name))
        d.write("instances", name, "profiles", "default\nsmall")
        d.write("instances", name, "source", "busybox")
        d.write("instances", name, "state", "start")
        assert int(inside(d, name, "cat", MEM)) == 64 * 2**20
    assert d.read("profiles", "small", "used_by").split() == ["p1", "p2"]
    d.write("profiles", "small", "config", "limits.memory", "128MiB")
    for name in ("p1", "p2"):
        assert int(inside(d, name, "cat", MEM)) == 128 * 2**20
        assert d.read("instances", name, "expanded", "config", "limits.memory") == "128MiB"
    # the instance's own key wins over the profile's, live too
    d.write("instances", "p1", "config", "limits.memory", "96MiB")
    assert int(inside(d, "p1", "cat", MEM)) == 96 * 2**20
    os.unlink(d.path("instances", "p1", "config", "limits.memory"))
    assert int(inside(d, "p1", "cat", MEM)) == 128 * 2**20
    # a profile in use cannot go
    with pytest.raises(OSError):
        os.rmdir(d.path("profiles", "small"))


def test_memory_limit_oom_kills_inside_only(daemon_with_busybox):
    d = daemon_with_busybox
    d.cli("launch", "busybox", "m1", "-c", "limits.memory=32MiB")
    # allocate ~100 MiB in a shell variable: the kernel kills that process, not the container
    r = d.cli("exec", "m1", "--", "sh", "-c",
              "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived", check=False)
    assert r.returncode != 0 and "survived" not in r.stdout
    assert d.read("instances", "m1", "state") == "RUNNING"
    assert inside(d, "m1", "echo", "alive") == "alive"


def test_process_limit_stops_fork_bombs(daemon_with_busybox):
    d = daemon_with_busybox
    d.cli("launch", "busybox", "f1", "-c", "limits.processes=20")
    r = d.cli("exec", "f1", "--", "sh", "-c",
              "for i in $(seq 40); do sleep 5 & done 2>/dev/null; wait; echo done",
              check=False, timeout=60)
    assert inside(d, "f1", "cat", "/sys/fs/cgroup/pids/pids.max") == "20"
    assert "fork" in (r.stderr + r.stdout).lower() or r.returncode != 0 or \
        int(inside(d, "f1", "cat", "/sys/fs/cgroup/pids/pids.events").split()[-1]) > 0
    assert d.read("instances", "f1", "state") == "RUNNING"


def test_cpu_pinning(daemon_with_busybox):
    d = daemon_with_busybox
    d.cli("launch", "busybox", "c1", "-c", "limits.cpu=1")
    assert inside(d, "c1", "cat", "/sys/fs/cgroup/cpuset/cpuset.cpus") == "0"
    d.write("instances", "c1", "config", "limits.cpu", "0-1" if (os.cpu_count() or 1) > 1
            else "0")
    expected = "0-1" if (os.cpu_count() or 1) > 1 else "0"
    assert inside(d, "c1", "cat", "/sys/fs/cgroup/cpuset/cpuset.cpus") == expected
