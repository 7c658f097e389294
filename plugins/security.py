"""Security: user namespace idmaps, capabilities, kernel modules.

Unprivileged containers (the default) run in a user namespace mapped onto root's range in
/etc/subuid and /etc/subgid (LXD's default 1000000:1000000000 when root has none). The root
filesystem stays unshifted on disk (owned by host uid 0 and so on) and is mounted through an
idmapped mount (``lxc.rootfs.options = idmap=container``): no chown at creation, snapshots and
images are shared as they are, and the mount's ``rootfs/`` shows the container's own uids.
``security.privileged=true`` drops the user namespace: root inside is root outside. As LXD 5.0.2
does, such a container then loses the capabilities that would reach the host's clock, kernel
modules and raw I/O (and its MAC policy unless AppArmor gives it a namespace of its own), and
the devices cgroup lets it use only the usual pseudo-devices (it may still mknod anything, not
open it). An unprivileged container keeps its full bounding set: in its user namespace those
capabilities only reach what it owns, and LXD drops none there either.
"""

from __future__ import annotations

from pathlib import Path

from lxfs_plugins.apparmor import stacking_available

from lxfs import hookimpl
from lxfs.api import Host, cgroup_layout
from lxfs.config_schema import (
    KeySpec,
    check_bool,
    check_modules,
    check_range,
    check_raw_idmap,
    is_true,
    parse_raw_idmap,
)
from lxfs.errors import LxfsError
from lxfs.model import Instance

#: how many ids each container gets (LXD's default for non-isolated containers)
MAP_SIZE = 65536
DEFAULT_RANGE = (1000000, 1000000000)

#: capabilities LXD drops from privileged containers (unprivileged ones keep all of theirs)
PRIVILEGED_DROPPED_CAPS = ("sys_time", "sys_module", "sys_rawio")
#: dropped too unless AppArmor stacking gives the container a policy namespace of its own
MAC_CAPS = ("mac_admin", "mac_override")
#: what a privileged container may use through the devices cgroup (LXD's list): mknod of
#: anything, but only the pseudo-devices LXC puts in /dev, ptys, fuse and tun are usable
PRIVILEGED_DEVICES = (
    "b *:* m", "c *:* m",  # mknod (a node cannot be opened unless listed below)
    "c 136:* rwm",  # /dev/pts/*
    "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm",  # null zero full
    "c 1:8 rwm", "c 1:9 rwm",  # random urandom
    "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm",  # tty console ptmx
    "c 10:229 rwm", "c 10:200 rwm",  # fuse, net/tun
)


def dropped_caps(privileged: bool, stacking: bool) -> list[str]:
    """The capabilities LXD 5.0.2 drops from a container."""
    if not privileged:
        return []
    return list(PRIVILEGED_DROPPED_CAPS) + ([] if stacking else list(MAC_CAPS))


def privileged_device_lines(layout: str) -> list[str]:
    """Deny every device, then allow LXD's list (first: the devices plugin's own
    ``devices.allow`` lines for unix-char/unix-block devices must come after the deny)."""
    key = "lxc.cgroup2.devices" if layout == "v2" else "lxc.cgroup.devices"
    return [f"{key}.deny = a"] + [f"{key}.allow = {rule}" for rule in PRIVILEGED_DEVICES]


def subid_range(path: Path, user: str = "root") -> tuple[int, int]:
    """(start, count) of ``user``'s first range in /etc/subuid or /etc/subgid."""
    return subid_ranges(path, user)[0]


#: the keys this plugin owns
KEYS: list[KeySpec] = [
    KeySpec("security.privileged", check_bool, "false", "start",
            description="run without a user namespace (root inside is root outside)"),
    KeySpec("security.nesting", check_bool, "false", "start",
            description="allow containers inside (writable proc/sys, cgroup namespace)"),
    KeySpec("security.idmap.isolated", check_bool, "false", "start",
            description="a uid/gid range of its own, not shared with other instances"),
    KeySpec("security.idmap.size", check_range(65536, 2**31), "65536", "start",
            description="size of the instance's uid/gid range", lowlevel=True),
    KeySpec("raw.idmap", check_raw_idmap, "", "start",
            description="host ids mapped as they are ('both 1000 1000', 'uid 50-60 500-510')",
            lowlevel=True, multiline=True),
    KeySpec("linux.kernel_modules", check_modules, "", "start",
            description="kernel modules that must be available before start", lowlevel=True),
]


@hookimpl
def lxfs_config_keys() -> list[KeySpec]:
    return KEYS


@hookimpl(tryfirst=True)  # the devices deny must precede the devices plugin's allows
def lxfs_lxc_config(host: Host, instance: Instance) -> list[str]:
    config = instance.expanded_config
    lines: list[str] = []
    if is_true(config.get("security.privileged")):
        lines.append(f"lxc.cap.drop = {' '.join(dropped_caps(True, stacking_available()))}")
        lines += privileged_device_lines(cgroup_layout())
    else:
        base_u, base_g, size = id_ranges(host, instance)
        extra = parse_raw_idmap(config.get("raw.idmap", ""))
        check_delegated(extra)
        lines += idmap_lines("u", base_u, size, [(h, c, n) for k, h, c, n in extra if k == "u"])
        lines += idmap_lines("g", base_g, size, [(h, c, n) for k, h, c, n in extra if k == "g"])
        lines.append("lxc.rootfs.options = idmap=container")
    return lines


def id_ranges(host: Host, instance: Instance) -> tuple[int, int, int]:
    """(first host uid, first host gid, count) of an unprivileged instance's id range:
    root's first subordinate range, or the instance's own slice of it when isolated."""
    config = instance.expanded_config
    uid_start, uid_count = subid_range(Path("/etc/subuid"))
    gid_start, gid_count = subid_range(Path("/etc/subgid"))
    size = min(MAP_SIZE, uid_count, gid_count)
    if is_true(config.get("security.idmap.isolated")):
        size = int(config.get("security.idmap.size") or MAP_SIZE)
        offset = isolated_offset(host, instance, size, min(uid_count, gid_count))
        uid_start, gid_start = uid_start + offset, gid_start + offset
    return uid_start, gid_start, size


@hookimpl
def lxfs_instance_root_ids(host: Host, instance: Instance) -> tuple[int, int]:
    config = instance.expanded_config
    if is_true(config.get("security.privileged")):
        return 0, 0
    uid, gid, _size = id_ranges(host, instance)
    for kind, host, inside, _count in parse_raw_idmap(config.get("raw.idmap", "")):
        if inside == 0:  # raw.idmap maps the container's root to a host id of its own
            uid, gid = (host, gid) if kind == "u" else (uid, host)
    return uid, gid


def check_delegated(entries: list[tuple[str, int, int, int]]) -> None:
    """Host ids that ``raw.idmap`` maps must be delegated to root (newuidmap checks it)."""
    for kind, host, _inside, count in entries:
        path = Path("/etc/subuid" if kind == "u" else "/etc/subgid")
        ranges = subid_ranges(path)
        if not any(start <= host and host + count <= start + n for start, n in ranges):
            raise LxfsError(
                f"raw.idmap: host {'uid' if kind == 'u' else 'gid'} {host}"
                f"{'-' + str(host + count - 1) if count > 1 else ''} is not delegated to root "
                f"in {path} (add a line root:{host}:{count})")


def subid_ranges(path: Path, user: str = "root") -> list[tuple[int, int]]:
    """Every (start, count) of ``user`` in /etc/subuid or /etc/subgid."""
    ranges = []
    try:
        for line in path.read_text().splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[0] in (user, "0"):
                ranges.append((int(parts[1]), int(parts[2])))
    except (FileNotFoundError, ValueError):
        pass
    return ranges or [DEFAULT_RANGE]


def idmap_lines(kind: str, base: int, size: int,
                holes: list[tuple[int, int, int]]) -> list[str]:
    """``lxc.idmap`` lines mapping container ids 0..size-1 onto base.., except the ranges
    ``raw.idmap`` maps straight to given host ids (host, container, count)."""
    lines: list[str] = []
    cursor = 0
    for host, inside, count in sorted(holes, key=lambda h: h[1]):
        if inside > cursor:
            lines.append(f"lxc.idmap = {kind} {cursor} {base + cursor} {inside - cursor}")
        lines.append(f"lxc.idmap = {kind} {inside} {host} {count}")
        cursor = max(cursor, inside + count)
    if cursor < size:
        lines.append(f"lxc.idmap = {kind} {cursor} {base + cursor} {size - cursor}")
    return lines


def isolated_offset(host: Host, instance: Instance, size: int, available: int) -> int:
    """The instance's own slice of root's id range (``volatile.idmap.base``), chosen once
    at its first start: past the shared first 65536 ids, overlapping no other isolated
    instance. Allocated by ``pre_start`` (an acting hook); queries only read it."""
    key = "volatile.idmap.base"
    current = instance.config.get(key)
    if current is not None and instance.config.get("volatile.idmap.size") == str(size):
        return int(current)
    taken = sorted(
        (int(i.config[key]), int(i.config.get("volatile.idmap.size", MAP_SIZE)))
        for i in host.instances().values()
        if i is not instance and key in i.config
    )
    offset = MAP_SIZE
    for start, length in taken:
        if offset + size <= start:
            break
        offset = max(offset, start + length)
    if offset + size > available:
        raise LxfsError(f"no free id range of {size} left for {instance.name} in root's "
                        f"subordinate ids ({available}): raise them in /etc/subuid")
    return offset


def allocate_ids(host: Host, instance: Instance) -> None:
    """Give an isolated instance its id range (``volatile.idmap.*``) if it has none yet."""
    config = instance.expanded_config
    if is_true(config.get("security.privileged")) or \
            not is_true(config.get("security.idmap.isolated")):
        return
    size = int(config.get("security.idmap.size") or MAP_SIZE)
    available = min(subid_range(Path("/etc/subuid"))[1], subid_range(Path("/etc/subgid"))[1])
    offset = isolated_offset(host, instance, size, available)
    if instance.config.get("volatile.idmap.base") != str(offset) or \
            instance.config.get("volatile.idmap.size") != str(size):
        host.set_volatile(instance, "volatile.idmap.size", str(size))
        host.set_volatile(instance, "volatile.idmap.base", str(offset))


@hookimpl
def lxfs_instance_pre_start(host: Host, instance: Instance) -> None:
    """Allocate an isolated instance's ids; ``linux.kernel_modules`` must be there: built
    in (``/sys/module/NAME``) or loadable."""
    allocate_ids(host, instance)
    wanted = [m.strip() for m in instance.expanded_config.get("linux.kernel_modules",
                                                              "").split(",") if m.strip()]
    missing = [m for m in wanted if not Path("/sys/module", m.replace("-", "_")).exists()
               and not _load_module(m)]
    if missing:
        raise LxfsError(f"kernel module(s) {', '.join(missing)} not available on this host "
                        "(not built in, and modprobe failed)")


def _load_module(name: str) -> bool:
    import subprocess

    try:
        return subprocess.run(["modprobe", name], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False
