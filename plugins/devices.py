"""Devices for LXC containers: host directory binds (``disk``) and device nodes
(``unix-char``, ``unix-block``). The root disk (``path=/``) is the storage pool's business and
``nic`` devices the network plugin's; ``none`` masks an inherited device.

Disks are bind mounts (``lxc.mount.entry``). ``shift=true`` makes the bind an idmapped mount in
an unprivileged container, so host files owned by root appear owned by the container's root
(and files created inside get host uids). Devices take effect at the next start.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from lxfs import hookimpl
from lxfs.api import Host, cgroup_layout
from lxfs.config_schema import check_bool, check_int, is_true, parse_size
from lxfs.devices import DeviceType
from lxfs.errors import InvalidArgument, NotFound
from lxfs.model import Instance
from lxfs.storage import grant_search


def _target(path: str) -> str:
    """An LXC mount target: relative to the container's root, escaped as a field."""
    return fstab_field(os.path.normpath("/" + path).lstrip("/"))


#: what separates or ends the fields of an fstab line, as getmntent(3) decodes it
_FSTAB_ESCAPES = str.maketrans({"\\": "\\134", " ": "\\040", "\t": "\\011", "\n": "\\012"})


def fstab_field(value: str) -> str:
    """A path as one field of an ``lxc.mount.entry`` line (liblxc reads them with
    getmntent): a space, tab, newline or backslash in it is written octal-escaped, so a path
    cannot split into other fields or add mount options."""
    return value.translate(_FSTAB_ESCAPES)


def disk_lines(name: str, dev: dict[str, str], privileged: bool,
               host: Host | None = None, root_uid: int = 0) -> list[str]:
    """``lxc.mount.entry`` of a disk device; a pool's custom volume is opened to the
    container's root (``root_uid`` on the host), which LXC binds it as."""
    source, path = dev.get("source", ""), dev.get("path", "")
    if not source or not path:
        raise InvalidArgument(f"disk device {name}: needs source and path")
    src = Path(source)
    if dev.get("pool") and not source.startswith("/"):
        # a custom volume of a pool: stored unshifted like root filesystems, so idmapped
        dev_source_name = source
        backend = host.pool(dev["pool"]) if host else None
        if backend is None:
            raise NotFound(f"disk device {name}: storage pool {dev['pool']!r} not found")
        src = backend.volume_path("custom", source)
        if not src.is_dir():
            raise NotFound(f"disk device {name}: volume {source} not found in pool "
                           f"{dev['pool']}")
        dev = dict(dev, source=str(src), shift="true")
        source = str(src)
        if root_uid:
            backend.grant_traversal("custom", dev_source_name, root_uid)
    if not src.exists():
        if not is_true(dev.get("required", "true")):
            return []
        raise NotFound(f"disk device {name}: source {source} does not exist")
    options = ["bind", "create=dir" if src.is_dir() else "create=file"]
    if is_true(dev.get("recursive")):
        options[0] = "rbind"
    if is_true(dev.get("readonly")):
        options.append("ro")
    if is_true(dev.get("shift")) and not privileged:
        options.append("idmap=container")
    return [f"lxc.mount.entry = {fstab_field(source)} {_target(path)} none "
            f"{','.join(options)} 0 0"]


def unix_lines(name: str, dev: dict[str, str], staging: Path, privileged: bool,
               root_uid: int = 0) -> list[str]:
    """A device node made for the instance (``major``/``minor`` from the keys or from the
    host's ``source``; ``uid``/``gid``/``mode`` as the container sees them, 0/0/0660 by
    default) and bound into its ``/dev`` through an idmapped mount. The node waits in
    ``staging`` (mode 0700, opened to the container's root, ``root_uid`` on the host, by an
    ACL): its owner is the container's view unshifted, so host users must not reach it."""
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
            if not is_true(dev.get("required", "true")):
                return []
            raise NotFound(f"{dev['type']} device {name}: {source} does not exist") from None
        want = stat.S_ISCHR if kind == "c" else stat.S_ISBLK
        if not want(st.st_mode):
            raise InvalidArgument(f"{dev['type']} device {name}: {source} is not a "
                                  f"{'character' if kind == 'c' else 'block'} device")
        major = major or str(os.major(st.st_rdev))
        minor = minor or str(os.minor(st.st_rdev))
    try:
        mode = int(dev.get("mode", "0660"), 8)
        uid, gid = int(dev.get("uid", "0")), int(dev.get("gid", "0"))
        rdev = os.makedev(int(major), int(minor))
    except ValueError:
        raise InvalidArgument(f"{dev['type']} device {name}: major, minor, uid, gid must be "
                              "numbers and mode octal (0660)") from None
    staging.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(staging, 0o700)
    if root_uid:
        grant_search(staging, root_uid)
    node = staging / name
    node.unlink(missing_ok=True)
    os.mknod(node, mode | (stat.S_IFCHR if kind == "c" else stat.S_IFBLK), rdev)
    os.chmod(node, mode)
    os.chown(node, uid, gid)
    options = "bind,create=file" + ("" if privileged else ",idmap=container")
    key = "lxc.cgroup2.devices.allow" if cgroup_layout() == "v2" else "lxc.cgroup.devices.allow"
    return [f"{key} = {kind} {major}:{minor} rwm",
            f"lxc.mount.entry = {fstab_field(str(node))} {_target(path)} none {options} 0 0"]


#: keys holding booleans (true/false, 1/0, yes/no, on/off)
DISK_BOOL_KEYS = ("readonly", "shift", "required", "recursive")
UNIX_BOOL_KEYS = ("required",)
#: mount propagation modes (LXD's)
PROPAGATIONS = ("private", "shared", "slave", "unbindable",
                "rprivate", "rshared", "rslave", "runbindable")
#: the largest device numbers the kernel has (12-bit majors, 20-bit minors) and id
MAX_MAJOR, MAX_MINOR, MAX_ID = (1 << 12) - 1, (1 << 20) - 1, (1 << 32) - 2


def _checked(name: str, key: str, check: Callable[[str], None], value: str) -> None:
    try:
        check(value)
    except InvalidArgument as exc:
        raise InvalidArgument(f"device {name}: {key}: {exc.message}") from None


def check_io_limit(value: str) -> None:
    """``limits.read``, ``.write``, ``.max``: bytes per second (``10MB``) or ``20iops``."""
    if value.endswith("iops"):
        check_int(1)(value[:-len("iops")])
    else:
        parse_size(value)


def validate_disk(name: str, device: dict[str, str], partial: bool) -> None:
    if device.get("path") == "/" and not partial and "pool" not in device:
        raise InvalidArgument(f"device {name}: a root disk needs a pool")
    if device.get("size", "").strip():
        _checked(name, "size", parse_size, device["size"].strip())
    for key in DISK_BOOL_KEYS:
        if key in device:
            _checked(name, key, check_bool, device[key])
    if "propagation" in device and device["propagation"] not in PROPAGATIONS:
        raise InvalidArgument(f"device {name}: propagation must be one of "
                              f"{', '.join(PROPAGATIONS)}")
    for key in ("limits.read", "limits.write", "limits.max"):
        if key in device:
            _checked(name, key, check_io_limit, device[key])


def validate_unix(name: str, device: dict[str, str], partial: bool) -> None:
    """Device numbers, ids and mode as numbers the kernel takes (``mode`` in octal)."""
    for key, check in (("major", check_int(0, MAX_MAJOR)), ("minor", check_int(0, MAX_MINOR)),
                       ("uid", check_int(0, MAX_ID)), ("gid", check_int(0, MAX_ID))):
        if key in device:
            _checked(name, key, check, device[key])
    if "mode" in device and not re.fullmatch(r"[0-7]{1,4}", device["mode"]):
        raise InvalidArgument(f"device {name}: mode {device['mode']!r} is not an octal mode "
                              "(0660)")
    for key in UNIX_BOOL_KEYS:
        if key in device:
            _checked(name, key, check_bool, device[key])


DISK = DeviceType("disk", frozenset({
    "path", "source", "pool", "readonly", "size", "shift", "required", "propagation",
    "recursive", "limits.read", "limits.write", "limits.max"}), validate_disk,
    "a host directory or file, a pool's custom volume, or (path=/) the root disk")
UNIX_KEYS = frozenset({"source", "path", "major", "minor", "uid", "gid", "mode", "required"})
UNIX_CHAR = DeviceType("unix-char", UNIX_KEYS, validate_unix, "a character device node")
UNIX_BLOCK = DeviceType("unix-block", UNIX_KEYS, validate_unix, "a block device node")


@hookimpl
def lxfs_device_types() -> list[DeviceType]:
    return [DISK, UNIX_CHAR, UNIX_BLOCK]


@hookimpl
def lxfs_lxc_config(host: Host, instance: Instance) -> list[str]:
    privileged = is_true(instance.expanded_config.get("security.privileged"))
    lines: list[str] = []
    root_uid = -1
    for name, dev in sorted(instance.expanded_devices.items()):
        dtype = dev.get("type")
        if dtype not in ("disk", "unix-char", "unix-block") or dev.get("path") == "/":
            continue
        if root_uid < 0:
            ids = host.hook.lxfs_instance_root_ids(host=host, instance=instance)
            root_uid = ids[0] if ids else 0
        if dtype == "disk":
            lines += disk_lines(name, dev, privileged, host, root_uid)
        else:
            lines += unix_lines(name, dev, host.instance_dir(instance, "devices"),
                                privileged, root_uid)
    return lines


def _bind_source(host: Host, dev: dict[str, str]) -> tuple[str, bool] | None:
    """(host path, needs idmap) of a complete disk bind, None while incomplete/optional."""
    source, path = dev.get("source", ""), dev.get("path", "")
    if dev.get("type") != "disk" or not source or not path or path == "/":
        return None
    if dev.get("pool") and not source.startswith("/"):
        backend = host.pool(dev["pool"])
        if backend is None:
            raise NotFound(f"storage pool {dev['pool']!r} not found")
        return str(backend.volume_path("custom", source)), True
    if not os.path.exists(source):
        if not is_true(dev.get("required", "true")):
            return None
        raise NotFound(f"source {source} does not exist")
    return source, is_true(dev.get("shift"))


@hookimpl
def lxfs_device_hotplug(host: Host, instance: Instance, name: str, old: dict[str, str],
                        new: dict[str, str]) -> bool | None:
    """Disk binds are plugged into (and out of) running containers live."""
    import subprocess
    import sys

    for dev in (old, new):
        if dev and (dev.get("type") not in ("disk", None) or dev.get("path") == "/"):
            return None
    pid = host.instance_pid(instance)
    if pid <= 0:
        return None
    privileged = is_true(instance.expanded_config.get("security.privileged"))

    def run(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "lxfs_plugins.hotplug", *args],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise OSError(proc.stderr.strip() or f"hotplug exited with {proc.returncode}")

    if _bind_source(host, old) is not None:
        run("detach", str(pid), "/" + _target(old["path"]))
    bind = _bind_source(host, new)
    if bind is not None:
        source, idmap = bind
        # the mount point is made on the host side, in the root filesystem as stored: through
        # the container's idmapped view host root could not create it
        point = host.rootfs(instance) / _target(new["path"])
        if not os.path.lexists(point):
            if os.path.isdir(source):
                point.mkdir(parents=True, exist_ok=True)
            else:
                point.parent.mkdir(parents=True, exist_ok=True)
                point.touch()
        flags = (["ro"] if is_true(new.get("readonly")) else []) + \
            (["idmap"] if idmap and not privileged else [])
        run("attach", str(pid), source, "/" + _target(new["path"]), *flags)
    return True
