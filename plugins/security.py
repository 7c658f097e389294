"""Security: user namespace idmaps, the default seccomp policy, capabilities, AppArmor.

Unprivileged containers (the default) run in a user namespace mapped onto root's range in
/etc/subuid and /etc/subgid (LXD's default 1000000:1000000000 when root has none). The root
filesystem stays unshifted on disk (owned by host uid 0 and so on) and is mounted through an
idmapped mount (``lxc.rootfs.options = idmap=container``): no chown at creation, snapshots and
images are shared as they are, and the mount's ``rootfs/`` shows the container's own uids.
``security.privileged=true`` drops the user namespace.
"""

from __future__ import annotations

import os
from pathlib import Path

from lxfs import hookimpl
from lxfs.config_schema import is_true, parse_raw_idmap
from lxfs.errors import LxfsError
from lxfs.model import Instance
from lxfs.server import Server

#: how many ids each container gets (LXD's default for non-isolated containers)
MAP_SIZE = 65536
DEFAULT_RANGE = (1000000, 1000000000)

SECCOMP_POLICY = """2
denylist
reject_force_umount  # comment this to allow umount -f;  not recommended
[all]
kexec_load errno 38
open_by_handle_at errno 38
init_module errno 38
finit_module errno 38
delete_module errno 38
"""

#: capabilities LXD drops from every container
DROPPED_CAPS = "mac_admin mac_override sys_time sys_module sys_rawio"


def subid_range(path: Path, user: str = "root") -> tuple[int, int]:
    """(start, count) of ``user``'s first range in /etc/subuid or /etc/subgid."""
    return subid_ranges(path, user)[0]


def apparmor_enabled() -> bool:
    return Path("/sys/kernel/security/apparmor").is_dir()


@hookimpl
def lxfs_lxc_config(server: Server, instance: Instance) -> list[str]:
    config = instance.expanded_config
    lines = [f"lxc.cap.drop = {DROPPED_CAPS}"]
    if not apparmor_enabled():
        lines.append("lxc.apparmor.profile = unconfined")
    else:
        lines.append("lxc.apparmor.profile = generated")
    policy = server.lxc_path / instance.name / "seccomp"
    policy.parent.mkdir(mode=0o711, exist_ok=True)
    tmp = policy.with_name(".seccomp.tmp")
    policy_text = config.get("raw.seccomp") or SECCOMP_POLICY
    tmp.write_text(policy_text.rstrip("\n") + "\n")
    os.replace(tmp, policy)
    lines.append(f"lxc.seccomp.profile = {policy}")
    if not is_true(config.get("security.privileged")):
        uid_start, uid_count = subid_range(Path("/etc/subuid"))
        gid_start, gid_count = subid_range(Path("/etc/subgid"))
        size = min(MAP_SIZE, uid_count, gid_count)
        base_u, base_g = uid_start, gid_start
        if is_true(config.get("security.idmap.isolated")):
            size = int(config.get("security.idmap.size") or MAP_SIZE)
            offset = isolated_offset(server, instance, size, min(uid_count, gid_count))
            base_u, base_g = uid_start + offset, gid_start + offset
        extra = parse_raw_idmap(config.get("raw.idmap", ""))
        check_delegated(extra)
        lines += idmap_lines("u", base_u, size, [(h, c, n) for k, h, c, n in extra if k == "u"])
        lines += idmap_lines("g", base_g, size, [(h, c, n) for k, h, c, n in extra if k == "g"])
        lines.append("lxc.rootfs.options = idmap=container")
    return lines


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


def isolated_offset(server: Server, instance: Instance, size: int, available: int) -> int:
    """The instance's own slice of root's id range (``volatile.idmap.base``, chosen once):
    past the shared first 65536 ids, overlapping no other isolated instance."""
    key = "volatile.idmap.base"
    current = instance.config.get(key)
    if current is not None and instance.config.get("volatile.idmap.size") == str(size):
        return int(current)
    taken = sorted(
        (int(i.config[key]), int(i.config.get("volatile.idmap.size", MAP_SIZE)))
        for i in server.instances.values()
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
    instance.config[key] = str(offset)
    instance.config["volatile.idmap.size"] = str(size)
    instance.expanded_config.update({key: str(offset), "volatile.idmap.size": str(size)})
    server.db.put("instances", instance.name, instance.to_record())
    return offset


@hookimpl
def lxfs_instance_pre_start(server: Server, instance: Instance) -> None:
    """``linux.kernel_modules`` must be there: built in (``/sys/module/NAME``) or loadable."""
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


@hookimpl
def lxfs_environment() -> dict[str, str]:
    return {"apparmor": "enabled" if apparmor_enabled() else "absent (not in this kernel)",
            "seccomp": "enabled"}
