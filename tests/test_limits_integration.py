"""Limits and profiles against real containers: applied at start and live, through profiles."""

from __future__ import annotations

import errno
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


def test_cpu_allowance_and_swap(daemon_with_busybox):
    d = daemon_with_busybox
    d.cli("launch", "busybox", "a1", "-c", "limits.cpu.allowance=25ms/100ms",
          "-c", "limits.memory=64MiB", "-c", "limits.memory.swap=false")
    assert inside(d, "a1", "cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us") == "25000"
    assert inside(d, "a1", "cat", "/sys/fs/cgroup/cpu/cpu.cfs_period_us") == "100000"
    assert int(inside(d, "a1", "cat", "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")) \
        == 64 * 2**20
    d.write("instances", "a1", "config", "limits.cpu.allowance", "50%")
    assert inside(d, "a1", "cat", "/sys/fs/cgroup/cpu/cpu.shares") == "512"
    assert inside(d, "a1", "cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us") == "-1"
    # growing the memory limit live moves memory+swap along
    d.write("instances", "a1", "config", "limits.memory", "128MiB")
    assert int(inside(d, "a1", "cat", "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")) \
        == 128 * 2**20


def uid_map(d, name: str) -> list[list[str]]:
    return [line.split() for line in inside(d, name, "cat", "/proc/self/uid_map").splitlines()]


def test_isolated_idmaps_and_raw_idmap(daemon_with_busybox):
    d = daemon_with_busybox
    d.cli("launch", "busybox", "shared")
    d.cli("launch", "busybox", "iso1", "-c", "security.idmap.isolated=true")
    d.cli("launch", "busybox", "iso2", "-c", "security.idmap.isolated=true")
    bases = {n: int(uid_map(d, n)[0][1]) for n in ("shared", "iso1", "iso2")}
    assert len(set(bases.values())) == 3
    assert abs(bases["iso1"] - bases["iso2"]) >= 65536
    assert d.read("instances", "iso1", "config", "volatile.idmap.base")
    # the allocation is kept across restarts
    d.cli("restart", "iso1")
    assert int(uid_map(d, "iso1")[0][1]) == bases["iso1"]
    # a host id delegated to root (inside root's range, past the shared 65536), mapped as is
    host = int(uid_map(d, "shared")[0][1]) + 5_000_000
    d.cli("launch", "busybox", "raw1", "-c", f"raw.idmap=both {host} 1000")
    assert ["1000", str(host), "1"] in uid_map(d, "raw1")
    assert sum(int(r[2]) for r in uid_map(d, "raw1")) == 65536
    # a host id root may not map: a clear error naming /etc/subuid
    r = d.cli("launch", "busybox", "raw2", "-c", "raw.idmap=uid 4242 1000", check=False)
    assert r.returncode != 0
    assert "not delegated to root in /etc/subuid" in d.read("instances", "raw2", "error")


def test_raw_seccomp_and_kernel_modules(daemon_with_busybox):
    d = daemon_with_busybox
    policy = "2\ndenylist\n[all]\nmkdir errno 1\nmkdirat errno 1\n"
    d.cli("launch", "busybox", "s1", "-c", f"raw.seccomp={policy}")
    r = d.cli("exec", "s1", "--", "mkdir", "/tmp/x", check=False)
    assert r.returncode != 0
    os.mkdir(d.path("instances", "k1"))
    d.write("instances", "k1", "config", "linux.kernel_modules", "no_such_module_xyz")
    d.write("instances", "k1", "source", "busybox")
    with pytest.raises(OSError):
        d.write("instances", "k1", "state", "start")
    assert "no_such_module_xyz" in d.read("instances", "k1", "error")
    with pytest.raises(OSError):
        d.write("instances", "k1", "config", "limits.cpu.allowance", "lots")
    with pytest.raises(OSError):
        d.write("instances", "k1", "config", "raw.idmap", "both 1 2-3")


NO_NET_PRIO = ("limits.network.priority: this host has no net_prio cgroup controller (in the "
               "kernel, but no cgroup v1 hierarchy mounts it): the priority could not be enforced")


def test_network_priority_refused_without_net_prio(daemon_with_busybox):
    """This host has net_prio in the kernel but mounted on no v1 hierarchy: a non-zero
    priority is refused when set, and an older record holding one is refused at start (the
    daemon still loads it)."""
    from lxfs.db import Database

    lines = open("/proc/self/mountinfo").read().splitlines()
    assert not any("net_prio" in line.partition(" - ")[2] for line in lines), \
        "this test expects a host without a net_prio hierarchy (like lxfs's development host)"
    d = daemon_with_busybox
    r = d.cli("launch", "busybox", "np1", "-c", "limits.network.priority=5", check=False)
    assert r.returncode != 0 and not os.path.exists(d.path("instances", "np1"))
    d.cli("launch", "busybox", "np1", "-c", "limits.network.priority=0")
    with pytest.raises(OSError) as exc:
        d.write("instances", "np1", "config", "limits.network.priority", "5")
    assert exc.value.errno == errno.EINVAL
    assert d.read("instances", "np1", "error") == NO_NET_PRIO
    r = d.cli("config", "set", "np1", "limits.network.priority", "5", check=False)
    assert r.returncode == 1 and r.stderr == f"Error: {NO_NET_PRIO}\n"
    os.mkdir(d.path("profiles", "prio"))
    with pytest.raises(OSError):
        d.write("profiles", "prio", "config", "limits.network.priority", "3")

    # an older record that holds the key: loaded, listed, refused at start with the reason
    d.cli("stop", "np1", "--force")
    d.stop()
    db = Database(d.data_dir / "lxfs.db")
    record = db.load("instances")["np1"]
    record["config"]["limits.network.priority"] = "5"
    db.put("instances", "np1", record)
    db.close()
    d.restart()
    assert d.read("instances", "np1", "config", "limits.network.priority") == "5"
    r = d.cli("start", "np1", check=False)
    assert r.returncode == 1
    assert r.stderr.startswith(f"Error: {NO_NET_PRIO}\n")
    assert d.read("instances", "np1", "state") == "STOPPED"
    os.unlink(d.path("instances", "np1", "config", "limits.network.priority"))
    d.cli("start", "np1")
    assert d.read("instances", "np1", "state") == "RUNNING"
