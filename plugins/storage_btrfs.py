"""The ``btrfs`` storage driver: volumes are subvolumes, copies are snapshots.

A pool lives either on an existing btrfs mount (``source=/path``, a directory on btrfs) or on
a loop file the driver creates (``source`` = the file, ``DATA_DIR/disks/NAME.img`` by default,
``size`` 10GiB sparse), formatted with mkfs.btrfs and mounted on ``DATA_DIR/storage-pools/NAME``.
The loop device is set to auto-clear, so unmounting releases it. At daemon start the pool is
mounted only if /proc/self/mountinfo does not show it mounted already (containers keep running
across daemon restarts, so the mount usually survives).

Layout under the pool's root::

    images/FINGERPRINT/              read-only subvolume, unpacked once
    containers/NAME/                 writable snapshot of the image subvolume
    containers-snapshots/NAME/SNAP/  read-only snapshots
    custom/NAME/, custom-snapshots/NAME/SNAP/

Creating an instance, a snapshot, a copy or a restore is one subvolume snapshot: constant time
and no data copied. Quotas use btrfs quota groups: the root disk's ``size`` limits the
*referenced* bytes of the instance's subvolume (what the instance sees, shared image blocks
included, as LXD does), set at once on a running instance too (``live_resize``); a size below
the referenced bytes is refused, since the qgroup would then take no write at all.
``volume_usage`` reports the qgroup's *exclusive* bytes (what the volume costs beyond what it
shares). Snapshots are not recursive into nested subvolumes an instance made itself (they show
up as empty directories in the snapshot); delete removes nested subvolumes too.

btrfsutil (``btrfsutil==6.10`` against Debian's libbtrfsutil 6.2) is imported lazily, so the
daemon starts without it; the ``btrfs`` command is used for what btrfsutil lacks (quota groups).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from lxfs import hookimpl
from lxfs.config_schema import parse_size
from lxfs.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    NotSupported,
    OperationFailed,
)
from lxfs.storage import (
    LAYOUT_DIRS,
    VOLUME_DIRS,
    DirectoryLayout,
    Pool,
    StorageDriver,
    VolumeType,
    check_quota_above_usage,
    make_layout,
)

log = logging.getLogger("lxfs.btrfs")

_DIRS = VOLUME_DIRS
_ALL_DIRS = LAYOUT_DIRS
BTRFS_SUPER_MAGIC = 0x9123683E
DEFAULT_SIZE = "10GiB"
MIN_SIZE = 128 * 2**20  # mkfs.btrfs refuses much smaller devices


def btrfsutil() -> ModuleType:
    """The btrfsutil module, imported on first use."""
    try:
        import btrfsutil as mod
    except ImportError as exc:
        raise OperationFailed(
            f"the btrfs driver needs the btrfsutil Python module (pip install "
            f"btrfsutil==6.10): {exc}") from None
    return mod


def _run(*cmd: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise OperationFailed(f"{cmd[0]} not found (install btrfs-progs)") from None
    if proc.returncode != 0:
        raise OperationFailed(
            f"{' '.join(cmd[:3])} failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space...)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_at(path: Path) -> list[tuple[str, str]]:
    """``(fstype, source)`` of every mount on ``path``, from /proc/self/mountinfo."""
    target = os.path.abspath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if len(fields) >= 5 and len(rest) >= 2 and _unescape(fields[4]) == target:
                found.append((rest[0], _unescape(rest[1])))
    return found


def is_btrfs(path: Path) -> bool:
    """Whether ``path`` is on a btrfs filesystem (asks the kernel through statfs)."""
    try:
        btrfsutil().subvolume_id(str(path))
    except Exception:  # noqa: BLE001 - btrfsutil.BtrfsUtilError, OSError
        return False
    return True


def _loop_device_of(image: Path) -> str:
    """The loop device already attached to ``image``, or ""."""
    out = _run("losetup", "--noheadings", "--output", "NAME", "-j", str(image))
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[0] if lines else ""


class BtrfsDriver(DirectoryLayout):
    name = "btrfs"
    copy_on_write = True
    quotas = True
    live_resize = True
    optimized_backups = True
    migration_transports = ("BTRFS",)
    optimized_backup_header = True
    pool_keys = {
        "source": "an existing directory on btrfs, or the loop file to create "
                  "(default DATA_DIR/disks/NAME.img)",
        "size": "size of the loop file (default 10GiB, sparse)",
    }

    def __init__(self, pool: Pool, data_dir: Path) -> None:
        super().__init__(pool, data_dir)
        #: the limit last set per subvolume (path, id), so that a repeat costs nothing
        self._limits_set: dict[tuple[str, int], int | None] = {}

    # --- pool ---------------------------------------------------------------------------

    @classmethod
    def check_host(cls) -> None:
        try:
            with open("/proc/filesystems") as f:
                known = f.read().split()
        except OSError:
            known = []
        if "btrfs" not in known:
            raise NotSupported("btrfs is not supported on this host: the kernel has no btrfs "
                               "(not in /proc/filesystems)")
        for tool in ("btrfs", "mkfs.btrfs", "losetup", "mount", "umount"):
            if shutil.which(tool) is None:
                raise NotSupported(f"btrfs pools need the {tool} command (install "
                                   "btrfs-progs and util-linux)")
        try:
            btrfsutil()
        except OperationFailed as exc:
            raise NotSupported(exc.message) from None

    @property
    def loop(self) -> bool:
        """Whether the pool is a loop file (else a directory on an existing btrfs)."""
        return not Path(self.pool.config["source"]).is_dir()

    @property
    def root(self) -> Path:
        if self.loop:
            return self.data_dir / "storage-pools" / self.pool.name
        return Path(self.pool.config["source"])

    def fill_defaults(self) -> None:
        config = self.pool.config
        source = config.get("source", "").strip()
        if source and not os.path.isabs(source):  # never the daemon's working directory
            raise InvalidArgument(f"source {source!r} must be an absolute path")
        if source and Path(source).is_dir():
            if "size" in config:
                raise InvalidArgument("size only applies to loop-file pools (no source, or "
                                      "source = a file to create)")
            return
        config.setdefault("source", str(self.data_dir / "disks" / f"{self.pool.name}.img"))
        if not config["source"]:
            config["source"] = str(self.data_dir / "disks" / f"{self.pool.name}.img")
        config.setdefault("size", DEFAULT_SIZE)
        if parse_size(config["size"]) < MIN_SIZE:
            raise InvalidArgument(f"size {config['size']} is too small for btrfs "
                                  "(at least 128MiB)")

    def create(self) -> None:
        if not self.loop:
            root = self.root
            if not is_btrfs(root):
                raise InvalidArgument(f"source {root} is not on a btrfs filesystem")
            if any(p for p in root.iterdir() if p.name not in _ALL_DIRS):
                raise AlreadyExists(f"storage pool source {root} is not empty")
            self.mount()
            return
        image = Path(self.pool.config["source"])
        image.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise AlreadyExists(f"loop file {image} already exists") from None
        try:
            try:
                os.ftruncate(fd, parse_size(self.pool.config["size"]))
            finally:
                os.close(fd)
            _run("mkfs.btrfs", "-q", "-L", f"lxfs-{self.pool.name}"[:255], str(image))
            self.mount()
            _run("btrfs", "quota", "enable", str(self.root))
        except BaseException:
            self.unmount()
            image.unlink(missing_ok=True)
            raise

    def delete(self) -> None:
        for sub in _ALL_DIRS:
            base = self.root / sub
            if base.is_dir() and not base.is_symlink():
                for entry in base.iterdir():
                    if sub.endswith("-snapshots"):
                        for snap in entry.iterdir():
                            self._delete_path(snap)
                    self._delete_path(entry)
        if self.loop:
            self.unmount()
            Path(self.pool.config["source"]).unlink(missing_ok=True)
            try:
                self.root.rmdir()
            except FileNotFoundError:
                pass
        else:
            for sub in _ALL_DIRS:
                shutil.rmtree(self.root / sub, ignore_errors=True)

    def mount(self) -> None:
        root = self.root
        if self.loop:
            mounted = mounts_at(root)
            if mounted:
                if mounted[-1][0] != "btrfs":
                    raise OperationFailed(f"{root} is mounted, but not as btrfs")
            else:
                self._mount_loop()
        if not root.is_dir():
            raise NotFound(f"storage pool {self.pool.name}: source {root} is missing")
        if not is_btrfs(root):
            raise OperationFailed(f"storage pool {self.pool.name}: {root} is not on btrfs")
        make_layout(root, _ALL_DIRS)

    def _mount_loop(self) -> None:
        image = Path(self.pool.config["source"])
        if not image.is_file():
            raise NotFound(f"storage pool {self.pool.name}: source {image} is missing (neither "
                           "a btrfs directory nor a loop file)")
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)
        device = _loop_device_of(image)
        if not device:
            device = _run("losetup", "--find", "--show", str(image)).strip()
        try:
            _run("mount", "-t", "btrfs", "-o", "user_subvol_rm_allowed", device, str(self.root))
        finally:
            # Detaching a loop device in use sets auto-clear: it goes away at the unmount
            # (or now, if the mount failed).
            subprocess.run(["losetup", "-d", device], capture_output=True)
        log.info("pool %s: mounted %s (%s) on %s", self.pool.name, image, device, self.root)

    def unmount(self) -> None:
        if not self.loop:
            return
        for _ in mounts_at(self.root):
            _run("umount", str(self.root))

    def update_pool_key(self, key: str, value: str) -> None:
        """``size`` of a loop pool can grow (file, loop device and filesystem)."""
        if key != "size" or not self.loop:
            super().update_pool_key(key, value)
        new = parse_size(value)
        image = Path(self.pool.config["source"])
        if new < image.stat().st_size:
            raise InvalidArgument("a btrfs loop pool can only grow")
        os.truncate(image, new)
        device = _loop_device_of(image)
        if device:
            _run("losetup", "-c", device)
        _run("btrfs", "filesystem", "resize", "max", str(self.root))
        self.pool.config["size"] = value

    # --- volumes ------------------------------------------------------------------------

    def remove_path(self, path: Path) -> None:
        self._delete_path(path)

    def _delete_path(self, path: Path) -> None:
        """Delete a subvolume with the subvolumes nested in it (or a plain tree)."""
        bu = btrfsutil()
        if not os.path.lexists(path):
            return
        if path.is_dir() and not path.is_symlink() and bu.is_subvolume(str(path)):
            if bu.get_subvolume_read_only(str(path)):
                bu.set_subvolume_read_only(str(path), False)
            for child, _info in list(bu.SubvolumeIterator(str(path), post_order=True)):
                child_path = path / child
                if bu.get_subvolume_read_only(str(child_path)):
                    bu.set_subvolume_read_only(str(child_path), False)
            bu.delete_subvolume(str(path), recursive=True)
        elif path.is_dir() and not path.is_symlink():
            subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=True)
        else:
            path.unlink()

    def _snapshot(self, src: Path, dst: Path, read_only: bool) -> None:
        """Snapshot ``src`` to ``dst`` through a hidden name (never half-made under ``dst``)."""
        if os.path.lexists(dst):
            raise AlreadyExists(f"{dst.name} already exists in pool {self.pool.name}")
        tmp = dst.with_name(f".{dst.name}.tmp")
        self._delete_path(tmp)
        dst.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        try:
            btrfsutil().create_snapshot(str(src), str(tmp), read_only=read_only)
            os.rename(tmp, dst)
        except BaseException:
            self._delete_path(tmp)
            raise

    def create_image_volume(self, fingerprint: str, unpack: Callable[[Path], None]) -> None:
        dest = self.volume_path("image", fingerprint)
        if dest.exists():
            raise AlreadyExists(f"image volume {fingerprint[:12]} already exists")
        tmp = dest.with_name(f".{fingerprint}.tmp")
        self._delete_path(tmp)
        bu = btrfsutil()
        try:
            bu.create_subvolume(str(tmp))
            os.chmod(tmp, 0o711)
            unpack(tmp)
            bu.set_subvolume_read_only(str(tmp), True)
            os.rename(tmp, dest)
        except BaseException:
            self._delete_path(tmp)
            raise

    def create_volume_from_image(self, vtype: VolumeType, name: str, fingerprint: str) -> None:
        src = self.volume_path("image", fingerprint)
        if not src.is_dir():
            raise NotFound(f"image volume {fingerprint[:12]} is not in pool {self.pool.name}")
        self._snapshot(src, self.volume_path(vtype, name), read_only=False)

    def create_volume(self, vtype: VolumeType, name: str) -> None:
        path = self.volume_path(vtype, name)
        if os.path.lexists(path):
            raise AlreadyExists(f"volume {name} already exists in pool {self.pool.name}")
        btrfsutil().create_subvolume(str(path))
        os.chmod(path, 0o711)

    def copy_volume(self, vtype: VolumeType, src: str, dst: str, snapshots: bool) -> None:
        limit = self._limit(self.volume_path(vtype, src))
        self._snapshot(self.volume_path(vtype, src), self.volume_path(vtype, dst), False)
        try:
            if snapshots:
                for snap in self.list_snapshots(vtype, src):
                    self._snapshot(self.snapshot_path(vtype, src, snap),
                                   self.snapshot_path(vtype, dst, snap), read_only=True)
            if limit:
                self._set_limit(self.volume_path(vtype, dst), limit)
        except BaseException:
            self.delete_volume(vtype, dst)
            raise

    def delete_volume(self, vtype: VolumeType, name: str) -> None:
        snaps = self._snapshots_dir(vtype, name)
        if snaps.is_dir():
            for snap in snaps.iterdir():
                self._delete_path(snap)
            snaps.rmdir()
        self._delete_path(self.volume_path(vtype, name))

    def rename_volume(self, vtype: VolumeType, old: str, new: str) -> None:
        if os.path.lexists(self.volume_path(vtype, new)):
            raise AlreadyExists(f"volume {new} already exists in pool {self.pool.name}")
        os.rename(self.volume_path(vtype, old), self.volume_path(vtype, new))
        if self._snapshots_dir(vtype, old).exists():
            os.rename(self._snapshots_dir(vtype, old), self._snapshots_dir(vtype, new))

    def volume_usage(self, vtype: VolumeType, name: str) -> int:
        path = self.volume_path(vtype, name)
        qgroup = self._qgroup(path)
        if qgroup is not None:
            return qgroup["excl"]
        out = subprocess.run(["du", "-sb", "--", str(path)], capture_output=True, text=True)
        return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else 0

    # --- quotas -------------------------------------------------------------------------

    def _qgroup(self, path: Path) -> dict[str, int] | None:
        """The level-0 qgroup of the subvolume at ``path``: ``rfer``, ``excl``, ``max_rfer``
        (0 = no limit); None when quotas are off. Syncs first so the numbers are current."""
        bu = btrfsutil()
        subvol = bu.subvolume_id(str(path))
        bu.sync(str(path))
        proc = subprocess.run(["btrfs", "qgroup", "show", "--raw", "-r", "-f", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return None
        for line in proc.stdout.splitlines():
            fields = line.split()
            if fields and fields[0] == f"0/{subvol}":
                limit = fields[3]
                return {"rfer": int(fields[1]), "excl": int(fields[2]),
                        "max_rfer": 0 if limit == "none" else int(limit)}
        return None

    def _limit(self, path: Path) -> int:
        if not path.is_dir():
            return 0
        qgroup = self._qgroup(path)
        return qgroup["max_rfer"] if qgroup else 0

    def _set_limit(self, path: Path, size: int | None) -> None:
        """Limit the subvolume's qgroup, named by id through the pool's root: through the
        subvolume itself the command's transaction is charged to that qgroup, and fails
        (EDQUOT) when the volume is full, just when it needs more room."""
        qgroup = f"0/{btrfsutil().subvolume_id(str(path))}"
        _run("btrfs", "qgroup", "limit", str(size) if size else "none", qgroup, str(self.root))

    def set_volume_quota(self, vtype: VolumeType, name: str, size: int | None) -> None:
        """A qgroup limit on the subvolume's referenced bytes, at once (running or not).
        The limit last set on each subvolume is remembered: a start's repeat runs nothing."""
        size = size or None
        path = self.volume_path(vtype, name)
        applied = (str(path), btrfsutil().subvolume_id(str(path)))  # ids are never reused
        if applied in self._limits_set and self._limits_set[applied] == size:
            return
        if size:
            _run("btrfs", "quota", "enable", str(self.root))  # no-op when already on
            qgroup = self._qgroup(path)
            check_quota_above_usage(size, qgroup["rfer"] if qgroup else 0, name)
        elif self._qgroup(path) is None:
            self._limits_set[applied] = None
            return  # quotas off: nothing to remove
        self._set_limit(path, size)
        self._limits_set[applied] = size

    # --- snapshots ----------------------------------------------------------------------

    def create_snapshot(self, vtype: VolumeType, name: str, snapshot: str) -> None:
        src = self.volume_path(vtype, name)
        if not src.is_dir():
            raise NotFound(f"volume {name} not found in pool {self.pool.name}")
        self._snapshot(src, self.snapshot_path(vtype, name, snapshot), read_only=True)

    def delete_snapshot(self, vtype: VolumeType, name: str, snapshot: str) -> None:
        self._delete_path(self.snapshot_path(vtype, name, snapshot))

    def rename_snapshot(self, vtype: VolumeType, name: str, old: str, new: str) -> None:
        if os.path.lexists(self.snapshot_path(vtype, name, new)):
            raise AlreadyExists(f"snapshot {name}/{new} already exists")
        os.rename(self.snapshot_path(vtype, name, old), self.snapshot_path(vtype, name, new))

    def restore_snapshot(self, vtype: VolumeType, name: str, snapshot: str) -> None:
        src = self.snapshot_path(vtype, name, snapshot)
        if not src.is_dir():
            raise NotFound(f"snapshot {name}/{snapshot} not found in pool {self.pool.name}")
        current = self.volume_path(vtype, name)
        limit = self._limit(current)
        fresh = current.with_name(f".{name}.restore")
        old = current.with_name(f".{name}.old")
        self._delete_path(fresh)
        self._snapshot(src, fresh, read_only=False)
        try:
            if limit:
                self._set_limit(fresh, limit)
        except BaseException:
            self._delete_path(fresh)
            raise
        self._delete_path(old)
        os.rename(current, old)
        os.rename(fresh, current)
        self._delete_path(old)

    def copy_snapshot_to_volume(
        self, vtype: VolumeType, src: str, snapshot: str, dst: str
    ) -> None:
        self._snapshot(self.snapshot_path(vtype, src, snapshot), self.volume_path(vtype, dst),
                       read_only=False)

    # --- migration streams (LXD's BTRFS transport) --------------------------------------

    def _frozen(self, vtype: VolumeType, name: str) -> Path:
        return self.volume_path(vtype, name).with_name(f".{name}.migration-send")

    def freeze_for_send(self, vtype: VolumeType, name: str) -> None:
        self._delete_path(self._frozen(vtype, name))
        self._snapshot(self.volume_path(vtype, name), self._frozen(vtype, name),
                       read_only=True)

    def thaw_after_send(self, vtype: VolumeType, name: str) -> None:
        self._delete_path(self._frozen(vtype, name))

    def stream_send_command(self, vtype: VolumeType, name: str, snapshot: str,
                            parent: str) -> list[str]:
        path = self.snapshot_path(vtype, name, snapshot) if snapshot else \
            self._frozen(vtype, name)
        base = ["-p", str(self.snapshot_path(vtype, name, parent))] if parent else []
        return ["btrfs", "send", "-q", *base, str(path)]

    def stream_ids(self, vtype: VolumeType, name: str, snapshot: str) -> tuple[str, str]:
        import uuid

        info = btrfsutil().subvolume_info(str(self.snapshot_path(vtype, name, snapshot)))
        received = bytes(info.received_uuid)
        return (str(uuid.UUID(bytes=bytes(info.uuid))),
                str(uuid.UUID(bytes=received)) if any(received) else "")

    def stream_receive_dir(self, vtype: VolumeType, name: str) -> Path:
        into = self.volume_path(vtype, name).with_name(f".{name}.migration-receive")
        self._delete_path(into)
        into.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # a subvolume: removed whole with what a cut receive left in it (``recover``)
        btrfsutil().create_subvolume(str(into))
        os.chmod(into, 0o700)
        return into

    def stream_receive_command(self, into: Path) -> list[str]:
        return ["btrfs", "receive", "-q", str(into)]

    def drop_stream(self, into: Path) -> None:
        self._delete_path(into)  # a subvolume: what was received in it goes with it

    def adopt_stream(self, vtype: VolumeType, name: str, snapshot: str, into: Path) -> None:
        try:
            entries = list(into.iterdir())
            if len(entries) != 1:
                raise InvalidArgument(f"the stream made {len(entries)} subvolumes, not one")
            if snapshot:
                dst = self.snapshot_path(vtype, name, snapshot)
                if os.path.lexists(dst):
                    raise AlreadyExists(f"snapshot {name}/{snapshot} already exists")
                dst.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
                # a read-only subvolume cannot change directories: writable for the
                # rename (the ioctl keeps the received id, unlike `btrfs property set`)
                bu = btrfsutil()
                bu.set_subvolume_read_only(str(entries[0]), False)
                os.rename(entries[0], dst)
                bu.set_subvolume_read_only(str(dst), True)
                return
            volume = self.volume_path(vtype, name)
            old = volume.with_name(f".{name}.old")
            self._delete_path(old)
            if os.path.lexists(volume):
                os.rename(volume, old)
            try:
                self._snapshot(entries[0], volume, read_only=False)
                os.chmod(volume, 0o711)
            except BaseException:
                if os.path.lexists(old):
                    os.rename(old, volume)
                raise
            self._delete_path(old)
        finally:
            if into.is_dir():
                for entry in list(into.iterdir()):  # a subvolume: not removed with `into`
                    self._delete_path(entry)
            self._delete_path(into)

    # --- optimized backups (LXD's btrfs format) ----------------------------------------

    def _uuid(self, path: Path) -> str:
        import uuid

        return str(uuid.UUID(bytes=bytes(btrfsutil().subvolume_info(str(path)).uuid)))

    def export_optimized_backup(self, vtype: VolumeType, name: str, snapshots: list[str],
                                dest: Path) -> tuple[dict[str, Any] | None, list[str]]:
        """``btrfs send`` of each snapshot (incremental from the one before), then of a
        read-only snapshot of the volume (from the last snapshot), as LXD writes them."""
        current = self.volume_path(vtype, name)
        frozen = current.with_name(f".{name}.backup")
        self._delete_path(frozen)
        self._snapshot(current, frozen, read_only=True)
        try:
            header: list[dict[str, Any]] = []
            files: list[str] = []
            parent = ""
            (dest / "snapshots").mkdir(exist_ok=True)
            for snap in snapshots:
                path = self.snapshot_path(vtype, name, snap)
                header.append({"path": "/", "snapshot": snap, "readonly": True,
                               "uuid": self._uuid(path)})
                files.append(f"snapshots/{snap}.bin")
                self._send(path, parent, dest / files[-1])
                parent = str(path)
            header.append({"path": "/", "snapshot": "", "readonly": False,
                           "uuid": self._uuid(frozen)})
            files.append("container.bin")
            self._send(frozen, parent, dest / "container.bin")
        finally:
            self._delete_path(frozen)
        return {"subvolumes": header}, files

    @staticmethod
    def _send(path: Path, parent: str, out: Path) -> None:
        _run("btrfs", "send", "-q", *(["-p", parent] if parent else []), "-f", str(out),
             str(path))

    def import_optimized_backup(self, vtype: VolumeType, name: str, snapshots: list[str],
                                src: Path) -> None:
        """``btrfs receive`` of each stream into the volume's snapshots directory (a
        received subvolume is read-only: it can be renamed there, never moved elsewhere);
        the volume itself is a writable snapshot of what ``container.bin`` gives."""
        target = self.volume_path(vtype, name)
        snapdir = self._snapshots_dir(vtype, name)
        if os.path.lexists(target) or os.path.lexists(snapdir):
            raise AlreadyExists(f"volume {name} already exists in pool {self.pool.name}")
        snapdir.mkdir(mode=0o711, parents=True)
        got: Path | None = None
        try:
            for snap in snapshots:
                got = self._receive(src / "snapshots" / f"{snap}.bin", snapdir)
                if got.name != snap:
                    os.rename(got, snapdir / snap)
                got = None
            got = self._receive(src / "container.bin", snapdir)
            self._snapshot(got, target, read_only=False)
            os.chmod(target, 0o711)
        except BaseException:
            self.delete_volume(vtype, name)
            raise
        finally:
            if got is not None:
                self._delete_path(got)

    def _receive(self, stream: Path, into: Path) -> Path:
        """Receive one stream into directory ``into``: the new subvolume."""
        if not stream.is_file():
            raise InvalidArgument(f"the backup has no {stream.name}")
        before = set(os.listdir(into))
        try:
            _run("btrfs", "receive", "-q", "-f", str(stream), str(into))
        except OperationFailed as exc:
            raise InvalidArgument(f"cannot receive {stream.name}: {exc}") from None
        new = set(os.listdir(into)) - before
        if len(new) != 1:
            raise InvalidArgument(f"{stream.name} holds {len(new)} subvolumes, not one")
        return into / new.pop()


@hookimpl
def lxfs_storage_drivers() -> list[type[StorageDriver]]:
    return [BtrfsDriver]
