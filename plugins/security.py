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
from lxfs.config_schema import is_true
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
    try:
        for line in path.read_text().splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[0] in (user, "0"):
                return int(parts[1]), int(parts[2])
    except (FileNotFoundError, ValueError):
        pass
    return DEFAULT_RANGE


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
    tmp.write_text(SECCOMP_POLICY)
    os.replace(tmp, policy)
    lines.append(f"lxc.seccomp.profile = {policy}")
    if not is_true(config.get("security.privileged")):
        uid_start, uid_count = subid_range(Path("/etc/subuid"))
        gid_start, gid_count = subid_range(Path("/etc/subgid"))
        size = min(MAP_SIZE, uid_count, gid_count)
        lines += [
            f"lxc.idmap = u 0 {uid_start} {size}",
            f"lxc.idmap = g 0 {gid_start} {size}",
            "lxc.rootfs.options = idmap=container",
        ]
    return lines


@hookimpl
def lxfs_environment() -> dict[str, str]:
    return {"apparmor": "enabled" if apparmor_enabled() else "absent (not in this kernel)",
            "seccomp": "enabled"}
