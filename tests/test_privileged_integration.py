"""security.privileged: root inside is root outside, with the capabilities LXD 5.0.2 drops and
only the usual pseudo-devices usable; an unprivileged container's root is a subordinate uid on
the host and keeps its whole bounding set (as in LXD)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

from lxfs_plugins import security

from lxfs.model import Instance

#: capability numbers (linux/capability.h), for readable failures
CAPS = ("chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap "
        "linux_immutable net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner "
        "sys_module sys_rawio sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice "
        "sys_resource sys_time sys_tty_config mknod lease audit_write audit_control setfcap "
        "mac_override mac_admin syslog wake_alarm block_suspend audit_read perfmon bpf "
        "checkpoint_restore").split()


def status_field(pid: int | str, field: str) -> str:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"^{field}:\s*(.*)$", text, re.M)
    assert m, f"no {field} in /proc/{pid}/status"
    return m.group(1).strip()


def cap_names(mask_hex: str) -> set[str]:
    mask = int(mask_hex, 16)
    return {name for bit, name in enumerate(CAPS) if mask >> bit & 1} | \
        {f"cap{bit}" for bit in range(len(CAPS), 64) if mask >> bit & 1}


def make_instance(**config: str) -> Instance:
    inst = Instance(name="c1", architecture="x86_64", created_at="", ephemeral=False,
                    description="", config=dict(config), profiles=["default"])
    inst.expanded_config, inst.expanded_devices = dict(config), {}
    return inst


# --- the lines --------------------------------------------------------------------------------


def test_dropped_caps_are_lxds() -> None:
    assert security.dropped_caps(privileged=False, stacking=False) == []
    assert security.dropped_caps(privileged=False, stacking=True) == []
    assert security.dropped_caps(privileged=True, stacking=False) == [
        "sys_time", "sys_module", "sys_rawio", "mac_admin", "mac_override"]
    assert security.dropped_caps(privileged=True, stacking=True) == [
        "sys_time", "sys_module", "sys_rawio"]


def test_config_lines() -> None:
    host = SimpleNamespace(instances=dict, data_dir=Path("/nonexistent"))
    privileged = security.lxfs_lxc_config(host=host,
                                          instance=make_instance(**{"security.privileged":
                                                                    "true"}))
    cap_lines = [line for line in privileged if line.startswith("lxc.cap.drop")]
    assert cap_lines == ["lxc.cap.drop = sys_time sys_module sys_rawio mac_admin mac_override"]
    devices = [line for line in privileged if ".devices." in line]
    assert devices[0].endswith("devices.deny = a") and len(devices) == 14
    assert not any("idmap" in line for line in privileged)
    unprivileged = security.lxfs_lxc_config(host=host, instance=make_instance())
    assert not any(line.startswith("lxc.cap.drop") or ".devices." in line
                   for line in unprivileged)
    assert "lxc.rootfs.options = idmap=container" in unprivileged
    assert security.privileged_device_lines("v2")[0] == "lxc.cgroup2.devices.deny = a"


# --- real containers ----------------------------------------------------------------------------


def launch(d, name: str, privileged: bool, shared: Path) -> int:
    """Start an instance with ``shared`` (a host directory, not shifted) at /mnt/host; return
    its init's host PID."""
    d.cli("create", "busybox", name, "-c", f"security.privileged={str(privileged).lower()}")
    d.cli("config", "device", "add", name, "shared", "disk", f"source={shared}",
          "path=/mnt/host")
    d.cli("start", name)
    return int(d.read("instances", name, "pid"))


def shared_dir(d) -> Path:
    shared = d.base / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # writable by the unprivileged container's root too
    return shared


def test_privileged_root_is_host_root(daemon_with_busybox) -> None:
    d = daemon_with_busybox
    shared = shared_dir(d)
    pid = launch(d, "priv", True, shared)
    try:
        assert d.cli("exec", "priv", "--", "cat", "/proc/self/uid_map").stdout.split() == \
            ["0", "0", "4294967295"]
        assert status_field(pid, "Uid").split() == ["0"] * 4
        # the bounding set is the daemon's, less exactly what LXD drops (no AppArmor stacking
        # here: mac_admin and mac_override go too)
        host = cap_names(status_field(d.proc.pid, "CapBnd"))
        inside = cap_names(status_field(pid, "CapBnd"))
        dropped = {"sys_time", "sys_module", "sys_rawio", "mac_admin", "mac_override"}
        assert host - inside == dropped & host and inside <= host
        assert cap_names(d.cli("exec", "priv", "--", "sh", "-c",
                               "grep CapBnd /proc/self/status").stdout.split()[1]) == inside
        # a file made inside belongs to host root
        d.cli("exec", "priv", "--", "sh", "-c", "echo x > /mnt/host/from-priv")
        st = (shared / "from-priv").stat()
        assert (st.st_uid, st.st_gid) == (0, 0)
        # devices: mknod of anything, but only the usual pseudo-devices open
        r = d.cli("exec", "priv", "--", "sh", "-c",
                  "mknod /dev/kmsg2 c 1 11 && echo made; head -c 1 /dev/kmsg2; "
                  "echo data > /dev/null && echo null-ok", check=False)
        assert "made" in r.stdout and "null-ok" in r.stdout
        assert "Operation not permitted" in r.stderr, r.stderr
    finally:
        d.cli("delete", "--force", "priv")


def test_unprivileged_root_is_a_subordinate_uid(daemon_with_busybox) -> None:
    d = daemon_with_busybox
    shared = shared_dir(d)
    pid = launch(d, "unpriv", False, shared)
    first_uid, _ = security.subid_range(Path("/etc/subuid"))
    first_gid, _ = security.subid_range(Path("/etc/subgid"))
    try:
        assert d.cli("exec", "unpriv", "--", "cat", "/proc/self/uid_map").stdout.split() == \
            ["0", str(first_uid), "65536"]
        assert status_field(pid, "Uid").split() == [str(first_uid)] * 4
        assert first_uid >= 100000
        # nothing dropped: a new user namespace starts with every capability (even one the
        # host's bounding set lacks), which reaches only what the namespace owns
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        assert int(status_field(pid, "CapBnd"), 16) == (1 << (last + 1)) - 1
        d.cli("exec", "unpriv", "--", "sh", "-c", "echo x > /mnt/host/from-unpriv")
        st = (shared / "from-unpriv").stat()
        assert (st.st_uid, st.st_gid) == (first_uid, first_gid)
        # host root's file is nobody's inside, and not writable
        (shared / "host-file").write_text("host\n")
        os.chmod(shared / "host-file", 0o644)
        r = d.cli("exec", "unpriv", "--", "sh", "-c",
                  "stat -c %u /mnt/host/host-file; echo y >> /mnt/host/host-file", check=False)
        assert r.stdout.split()[0] == "65534" and r.returncode != 0
        assert (shared / "host-file").read_text() == "host\n"
        r = d.cli("exec", "unpriv", "--", "mknod", "/dev/kmsg2", "c", "1", "11", check=False)
        assert r.returncode != 0
    finally:
        d.cli("delete", "--force", "unpriv")
