"""``limits.network.priority``: the net_prio controller's detection, the refusal where it is
missing, and the ``net_prio.ifpriomap`` writes where it exists (a fake controller and a fake
container: this host has no net_prio hierarchy)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from lxfs_plugins import runtime_lxc as rt

from lxfs.config_schema import Schema as FullSchema
from lxfs.errors import InvalidArgument, LxfsError, OperationFailed
from lxfs.model import Instance
from lxfs.plugins import plugin_manager

V1_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
NET_PRIO_MOUNT = ("42 31 0:39 / /sys/fs/cgroup/net_cls,net_prio rw,relatime - cgroup cgroup "
                  "rw,net_cls,net_prio\n")
KERNEL_WITH = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t4\t1\nnet_prio\t0\t4\t1\n"
KERNEL_WITHOUT = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t4\t1\n"
REFUSAL = ("limits.network.priority: this host has no net_prio cgroup controller ({}): the "
           "priority could not be enforced")


SetFacts = Callable[..., None]


@pytest.fixture
def host_cgroups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SetFacts:
    """Set the cgroup facts the plugin reads: ``host_cgroups(mountinfo, proc_cgroups,
    layout)``."""

    def set_facts(mountinfo: str, proc_cgroups: str, layout: str = "hybrid") -> None:
        (tmp_path / "mountinfo").write_text(mountinfo)
        (tmp_path / "cgroups").write_text(proc_cgroups)
        monkeypatch.setattr(rt, "MOUNTINFO", tmp_path / "mountinfo")
        monkeypatch.setattr(rt, "PROC_CGROUPS", tmp_path / "cgroups")
        monkeypatch.setattr(rt, "cgroup_layout", lambda: layout)

    return set_facts


def schema() -> FullSchema:
    return FullSchema(k for keys in plugin_manager().hook.lxfs_config_keys() for k in keys)


class FakeContainer:
    """The two cgroup calls of python-lxc's Container, on a fake ``net_prio.ifpriomap``.
    ``refuse``: interfaces the kernel refuses; ``vanish``: interfaces that disappear at the
    first write (as another container's veth does when it stops)."""

    def __init__(self, interfaces: list[str], refuse: tuple[str, ...] = (),
                 vanish: tuple[str, ...] = ()) -> None:
        self.map = dict.fromkeys(interfaces, 0)
        self.refuse, self.vanish = refuse, vanish
        self.writes: list[str] = []

    def get_cgroup_item(self, key: str) -> str:
        assert key == "net_prio.ifpriomap"
        return "".join(f"{name} {prio}\n" for name, prio in self.map.items())

    def set_cgroup_item(self, key: str, value: str) -> bool:
        assert key == "net_prio.ifpriomap"
        self.writes.append(value)
        name, prio = value.split()
        for gone in self.vanish:
            self.map.pop(gone, None)
        if name not in self.map or name in self.refuse:
            return False
        self.map[name] = int(prio)
        return True


# --- detection ------------------------------------------------------------------------------


def test_detected_where_a_v1_hierarchy_mounts_it(host_cgroups: SetFacts) -> None:
    host_cgroups(V1_MOUNTS + NET_PRIO_MOUNT, KERNEL_WITH)
    assert rt.net_prio_missing() is None


@pytest.mark.parametrize("mountinfo,kernel,layout,why", [
    (V1_MOUNTS, KERNEL_WITH, "hybrid", "in the kernel, but no cgroup v1 hierarchy mounts it"),
    (V1_MOUNTS, KERNEL_WITHOUT, "v1", "not in this kernel"),
    ("30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", KERNEL_WITH, "v2", "cgroup v2"),
], ids=["not-mounted", "not-in-kernel", "cgroup-v2"])
def test_missing_says_why(host_cgroups: SetFacts, mountinfo: str, kernel: str, layout: str,
                          why: str) -> None:
    host_cgroups(mountinfo, kernel, layout)
    assert rt.net_prio_missing() == why
    with pytest.raises(InvalidArgument) as exc:
        schema().validate_instance_key("limits.network.priority", "5")
    assert exc.value.message == REFUSAL.format(why)
    schema().validate_instance_key("limits.network.priority", "0")  # nothing to enforce


def test_range_checked_everywhere(host_cgroups: SetFacts) -> None:
    host_cgroups(V1_MOUNTS + NET_PRIO_MOUNT, KERNEL_WITH)
    schema().validate_instance_key("limits.network.priority", "10")
    for bad in ("11", "-1", "high"):
        with pytest.raises(InvalidArgument):
            schema().validate_instance_key("limits.network.priority", bad)


def test_older_record_refused_at_start(host_cgroups: SetFacts) -> None:
    host_cgroups(V1_MOUNTS, KERNEL_WITH)
    inst = Instance(name="old")
    inst.expanded_config = {"limits.network.priority": "3"}
    with pytest.raises(LxfsError) as exc:
        rt.lxfs_instance_pre_start(host=None, instance=inst)  # type: ignore[arg-type]
    assert exc.value.message == REFUSAL.format(
        "in the kernel, but no cgroup v1 hierarchy mounts it")
    inst.expanded_config = {"limits.network.priority": "0"}
    rt.lxfs_instance_pre_start(host=None, instance=inst)  # type: ignore[arg-type]
    host_cgroups(V1_MOUNTS + NET_PRIO_MOUNT, KERNEL_WITH)
    inst.expanded_config = {"limits.network.priority": "3"}
    rt.lxfs_instance_pre_start(host=None, instance=inst)  # type: ignore[arg-type]


# --- the ifpriomap writes -------------------------------------------------------------------


def test_entries_for_every_host_interface() -> None:
    current = rt.parse_ifpriomap("lo 0\neth0 0\nlxdbr0 4\nvethA1b2C3 0\n")
    assert current == {"lo": 0, "eth0": 0, "lxdbr0": 4, "vethA1b2C3": 0}
    assert rt.ifpriomap_entries(current, 4) == ["lo 4", "eth0 4", "vethA1b2C3 4"]
    assert rt.ifpriomap_entries(current, 0) == ["lxdbr0 0"]
    assert rt.ifpriomap_entries(dict.fromkeys(current, 7), 7) == []
    assert rt.network_priority({"limits.network.priority": "6"}) == 6
    assert rt.network_priority({}) == 0


def test_apply_sets_each_interface() -> None:
    c = FakeContainer(["lo", "eth0", "br0"])
    rt.apply_network_priority(c, 5)  # type: ignore[arg-type]
    assert c.writes == ["lo 5", "eth0 5", "br0 5"]
    assert set(c.map.values()) == {5}
    c.writes.clear()
    rt.apply_network_priority(c, 5)  # type: ignore[arg-type]
    assert c.writes == []  # nothing to change: nothing written
    rt.apply_network_priority(c, 0)  # type: ignore[arg-type]
    assert set(c.map.values()) == {0}


def test_apply_forgets_vanished_interfaces_and_reports_refusals() -> None:
    c = FakeContainer(["lo", "veth1", "eth0"], vanish=("veth1",))
    rt.apply_network_priority(c, 2)  # type: ignore[arg-type]
    assert c.map == {"lo": 2, "eth0": 2}
    c = FakeContainer(["lo", "eth0"], refuse=("eth0",))
    with pytest.raises(OperationFailed) as exc:
        rt.apply_network_priority(c, 2)  # type: ignore[arg-type]
    assert exc.value.message == "the kernel refused net_prio.ifpriomap entries eth0 2"
    c = FakeContainer([])  # unreadable: an error unless there is nothing to enforce
    with pytest.raises(OperationFailed):
        rt.apply_network_priority(c, 2)  # type: ignore[arg-type]
    rt.apply_network_priority(c, 0)  # type: ignore[arg-type]


def test_live_change_where_the_controller_exists(host_cgroups: SetFacts, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``apply_limits`` (a live change) writes the priority, and 0 again once unset; where
    the controller is missing it leaves net_prio alone."""

    class Limits(FakeContainer):
        def set_cgroup_item(self, key: str, value: str) -> bool:
            return key != "net_prio.ifpriomap" or super().set_cgroup_item(key, value)

    class FakeHost:
        data_dir = tmp_path

    c = Limits(["lo", "eth0"])
    runtime = rt.LxcRuntime(FakeHost())  # type: ignore[arg-type]
    monkeypatch.setattr(runtime, "_container", lambda name, reload=False: c)
    inst = Instance(name="n1")
    host_cgroups(V1_MOUNTS + NET_PRIO_MOUNT, KERNEL_WITH, "v1")
    inst.expanded_config = {"limits.network.priority": "7"}
    runtime.apply_limits(inst)
    assert c.map == {"lo": 7, "eth0": 7}
    inst.expanded_config = {}
    runtime.apply_limits(inst)
    assert c.map == {"lo": 0, "eth0": 0}
    host_cgroups(V1_MOUNTS, KERNEL_WITH, "v1")
    c.writes.clear()
    inst.expanded_config = {"limits.network.priority": "7"}
    runtime.apply_limits(inst)
    assert c.writes == []
