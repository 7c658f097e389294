"""Devices for LXC containers: host directory binds (``disk``) and device nodes
(``unix-char``, ``unix-block``). The root disk (``path=/``) is the storage pool's business and
``nic`` devices the network plugin's; ``none`` masks an inherited device.

Disks are bind mounts (``lxc.mount.entry``). ``shift=true`` makes the bind an idmapped mount in
an unprivileged container, so host files owned by root appear owned by the container's root
(and files created inside get host uids). Devices take effect at the next start.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lxfs import hookimpl
from lxfs.config_schema import is_true
from lxfs.errors import InvalidArgument, NotFound
from lxfs.model import Instance
from lxfs.server import Server, cgroup_layout


def _target(path: str) -> str:
    """An LXC mount target: relative to the container's root."""
    return os.path.normpath("/" + path).lstrip("/")


def disk_lines(name: str, dev: dict[str, str], privileged: bool,
               server: Server | None = None) -> list[str]:
    source, path = dev.get("source", ""), dev.get("path", "")
    if not source or not path:
        raise InvalidArgument(f"disk device {name}: needs source and path")
    src = Path(source)
    if dev.get("pool") and not source.startswith("/"):
        # a custom volume of a pool: stored unshifted like root filesystems, so idmapped
        backend = server.pools.get(dev["pool"]) if server else None
        if backend is None:
            raise NotFound(f"disk device {name}: storage pool {dev['pool']!r} not found")
        src = backend.volume_path("custom", source)
        if not src.is_dir():
            raise NotFound(f"disk device {name}: volume {source} not found in pool "
                           f"{dev['pool']}")
        dev = dict(dev, source=str(src), shift="true")
        source = str(src)
    if not src.exists():
        if dev.get("required", "true") == "false":
            return []
        raise NotFound(f"disk device {name}: source {source} does not exist")
    options = ["bind", "create=dir" if src.is_dir() else "create=file"]
    if dev.get("recursive") == "true":
        options[0] = "rbind"
    if is_true(dev.get("readonly")):
        options.append("ro")
    if is_true(dev.get("shift")) and not privileged:
        options.append("idmap=container")
    return [f"lxc.mount.entry = {source} {_target(path)} none {','.join(options)} 0 0"]


def unix_lines(name: str, dev: dict[str, str]) -> list[str]:
    kind = "c" if dev["type"] == "unix-char" else "b"
    source = dev.get("source") or dev.get("path", "")
    path = dev.get("path") or source
    if not path:
        raise InvalidArgument(f"{dev['type']} device {name}: needs source or path")
    major, minor = dev.get("major"), dev.get("minor")
    if major is None or minor is None:
        try:
            st = os.stat(source)
        except OSError:
            if dev.get("required", "true") == "false":
                return []
            raise NotFound(f"{dev['type']} device {name}: {source} does not exist") from None
        want = stat.S_ISCHR if kind == "c" else stat.S_ISBLK
        if not want(st.st_mode):
            raise InvalidArgument(f"{dev['type']} device {name}: {source} is not a "
                                  f"{'character' if kind == 'c' else 'block'} device")
        major, minor = str(os.major(st.st_rdev)), str(os.minor(st.st_rdev))
    key = "lxc.cgroup2.devices.allow" if cgroup_layout() == "v2" else "lxc.cgroup.devices.allow"
    lines = [f"{key} = {kind} {major}:{minor} rwm"]
    if source and os.path.exists(source):
        lines.append(f"lxc.mount.entry = {source} {_target(path)} none bind,create=file 0 0")
    return lines


@hookimpl
def lxfs_lxc_config(server: Server, instance: Instance) -> list[str]:
    privileged = is_true(instance.expanded_config.get("security.privileged"))
    lines: list[str] = []
    for name, dev in sorted(instance.expanded_devices.items()):
        dtype = dev.get("type")
        if dtype == "disk" and dev.get("path") != "/":
            lines += disk_lines(name, dev, privileged, server)
        elif dtype in ("unix-char", "unix-block"):
            lines += unix_lines(name, dev)
    return lines
