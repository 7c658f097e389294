"""The ``zfs`` storage driver, through libzfs_core (PyPI ``pyzfs``, module ``libzfs_core``).

The same model as btrfs, with datasets: an image is unpacked once into a dataset and frozen
by a snapshot ``@readonly``; an instance is a clone of that snapshot (constant time);
instance snapshots are ZFS snapshots ``@snapshot-NAME``; the root disk's ``size`` becomes the
clone's ``refquota`` (live: ``live_resize``). Datasets (``mountpoint=legacy``) are mounted under
``DATA_DIR/storage-pools/NAME/{images,containers,custom}/X``; a snapshot's files are read
through ``X/.zfs/snapshot/snapshot-NAME``.

A pool uses an existing dataset (``source=tank/lxfs``) or a loop file the driver turns into a
new zpool (``zpool create``; libzfs_core cannot create pools). ZFS restores roll back to the
latest snapshot only (as LXD without ``zfs.remove_snapshots``). An image still cloned by
instances is renamed under ``deleted/`` instead of destroyed. Migrations between two zfs
pools use LXD's ZFS transport: ``lzc_send``/``lzc_receive`` streams, each in a process of its
own (``lxfs_plugins.storage_zfs_stream``), as the REST bridge relays a command's stdio.

libzfs_core is imported lazily; calls the C library lacks (the "uncommitted" ones:
``lzc_set_props``, ``lzc_get_props``) fall back to the ``zfs`` command. On a host without
/dev/zfs, ``check_host`` fails at pool creation with a clear message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from lxfs import hookimpl
from lxfs.config_schema import parse_size
from lxfs.errors import (
    AlreadyExists,
    Busy,
    InvalidArgument,
    NotFound,
    NotSupported,
    OperationFailed,
)
from lxfs.storage import (
    PoolUsage,
    StorageDriver,
    VolumeType,
    check_quota_above_usage,
    make_layout,
)

_DIRS: dict[str, str] = {"image": "images", "container": "containers", "custom": "custom"}
_SNAP_PREFIX = "snapshot-"
#: the temporary snapshot a volume is sent from, as LXD's (``@migration-UUID``)
_SEND_SNAP = "migration-send"
#: the temporary name of a received snapshot, and the suffix of a hidden receive dataset
_RECEIVE_SNAP = "migration-receive"
_RECEIVE_SUFFIX = ".migration-receive"
#: the migration streams' process (``lzc_send``/``lzc_receive`` to/from its stdio)
_STREAM_COMMAND = (sys.executable, "-m", "lxfs_plugins.storage_zfs_stream")


def lzc() -> ModuleType:
    """The libzfs_core module, imported on first use."""
    try:
        import libzfs_core as mod
    except ImportError as exc:
        raise NotSupported(f"the zfs driver needs pyzfs (module libzfs_core): {exc}") from None
    return mod


def _b(name: str) -> bytes:
    return name.encode()


def _run(*cmd: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise NotSupported(f"{cmd[0]} not found (install the ZFS utilities)") from None
    if proc.returncode != 0:
        raise OperationFailed(f"{' '.join(cmd[:2])} failed: {proc.stderr.strip()}")
    return proc.stdout


class ZfsDriver(StorageDriver):
    name = "zfs"
    copy_on_write = True
    quotas = True
    live_resize = True
    optimized_backups = True
    migration_transports = ("ZFS",)
    pool_keys = {
        "source": "an existing dataset (tank/lxfs), or the loop file of a new zpool "
                  "(default DATA_DIR/disks/NAME.img)",
        "size": "size of the loop file (default 10GiB, sparse)",
        "zfs.pool_name": "name of the zpool to create on the loop file (default: the pool's)",
    }

    # --- pool ---------------------------------------------------------------------------

    @classmethod
    def check_host(cls) -> None:
        if not os.path.exists("/dev/zfs"):
            raise NotSupported("zfs is not supported on this host: the kernel has no ZFS "
                               "(/dev/zfs is missing)")
        lzc()

    @property
    def loop(self) -> bool:
        return self.pool.config["source"].startswith("/")

    @property
    def dataset(self) -> str:
        """The dataset holding the pool's volumes."""
        if self.loop:
            return self.pool.config.get("zfs.pool_name") or self.pool.name
        return self.pool.config["source"]

    @property
    def root(self) -> Path:
        return self.data_dir / "storage-pools" / self.pool.name

    def fill_defaults(self) -> None:
        config = self.pool.config
        if not config.get("source"):
            config["source"] = str(self.data_dir / "disks" / f"{self.pool.name}.img")
        if self.loop:
            config.setdefault("size", "10GiB")
            config.setdefault("zfs.pool_name", self.pool.name)
            parse_size(config["size"])
        elif "size" in config:
            raise InvalidArgument("size only applies to loop-file pools")

    def _ds(self, vtype: VolumeType, name: str = "") -> str:
        return f"{self.dataset}/{_DIRS[vtype]}" + (f"/{name}" if name else "")

    def create(self) -> None:
        z = lzc()
        created_zpool = False
        if self.loop:
            image = Path(self.pool.config["source"])
            image.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if image.exists():
                raise AlreadyExists(f"loop file {image} already exists")
            with open(os.open(image, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                f.truncate(parse_size(self.pool.config["size"]))
            try:
                _run("zpool", "create", "-m", "none", "-O", "compression=on", self.dataset,
                     str(image))
            except BaseException:
                image.unlink(missing_ok=True)
                raise
            created_zpool = True
        elif not z.lzc_exists(_b(self.dataset)):
            raise NotFound(f"dataset {self.dataset} does not exist")
        try:
            for sub in ("images", "containers", "custom", "deleted"):
                name = _b(f"{self.dataset}/{sub}")
                if not z.lzc_exists(name):
                    z.lzc_create(name, "zfs", {b"mountpoint": b"none"})
            self.mount()
        except BaseException:
            if created_zpool:
                self.delete()
            raise

    def delete(self) -> None:
        self.unmount()
        if self.loop:
            subprocess.run(["zpool", "destroy", "-f", self.dataset], capture_output=True)
            Path(self.pool.config["source"]).unlink(missing_ok=True)
        else:
            z = lzc()
            for sub in ("images", "containers", "custom", "deleted"):
                name = f"{self.dataset}/{sub}"
                if z.lzc_exists(_b(name)):
                    _run("zfs", "destroy", "-r", name)
        shutil.rmtree(self.root, ignore_errors=True)

    def mount(self) -> None:
        if self.loop and not self._zpool_imported():
            _run("zpool", "import", "-d", str(Path(self.pool.config["source"]).parent),
                 self.dataset)
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)
        make_layout(self.root, tuple(_DIRS.values()))
        for sub in _DIRS.values():
            for name in self._children(sub):
                self._mount(f"{self.dataset}/{sub}/{name}", self.root / sub / name)

    def _zpool_imported(self) -> bool:
        return subprocess.run(["zpool", "list", "-H", self.dataset],
                              capture_output=True).returncode == 0

    def _children(self, sub: str) -> list[str]:
        parent = f"{self.dataset}/{sub}"
        try:
            names = [n.decode() for n in lzc().lzc_list_children(_b(parent))]
        except NotImplementedError:
            names = _run("zfs", "list", "-H", "-o", "name", "-d", "1", "-t", "filesystem",
                         parent).split()
        prefix = f"{parent}/"
        return sorted(n[len(prefix):] for n in names if n.startswith(prefix))

    def unmount(self) -> None:
        for sub in _DIRS.values():
            base = self.root / sub
            if base.is_dir():
                for entry in base.iterdir():
                    self._umount(entry)
        if self.loop and self._zpool_imported():
            _run("zpool", "export", self.dataset)

    def _mount(self, dataset: str, path: Path) -> None:
        """Mount a dataset on ``path`` unless something is mounted there already."""
        path.mkdir(mode=0o711, exist_ok=True)
        if not os.path.ismount(path):
            _run("mount", "-t", "zfs", dataset, str(path))

    def _umount(self, path: Path) -> None:
        if os.path.ismount(path):
            _run("umount", str(path))
        if path.is_dir():
            path.rmdir()

    def usage(self) -> PoolUsage:
        used, avail = (int(v) for v in _run("zfs", "get", "-Hp", "-o", "value",
                                            "used,available", self.dataset).split())
        return PoolUsage(used_bytes=used, total_bytes=used + avail)

    # --- volumes ------------------------------------------------------------------------

    def volume_path(self, vtype: VolumeType, name: str) -> Path:
        return self.root / _DIRS[vtype] / name

    def volume_exists(self, vtype: VolumeType, name: str) -> bool:
        return bool(lzc().lzc_exists(_b(self._ds(vtype, name))))

    def list_volumes(self, vtype: VolumeType) -> list[str]:
        return [n for n in self._children(_DIRS[vtype]) if not n.startswith(".")]

    def create_image_volume(self, fingerprint: str, unpack: Callable[[Path], None]) -> None:
        z = lzc()
        tmp_name = f".{fingerprint}.tmp"
        tmp_ds, path = self._ds("image", tmp_name), self.volume_path("image", tmp_name)
        self._destroy(tmp_ds, path)
        try:
            z.lzc_create(_b(tmp_ds), "zfs", {b"mountpoint": b"legacy"})
            self._mount(tmp_ds, path)
            os.chmod(path, 0o711)
            unpack(path)
            self._umount(path)
            final = self._ds("image", fingerprint)
            z.lzc_rename(_b(tmp_ds), _b(final))
            z.lzc_snapshot([_b(f"{final}@readonly")])
            self._mount(final, self.volume_path("image", fingerprint))
        except BaseException:
            self._destroy(tmp_ds, path)
            raise

    def create_volume_from_image(self, vtype: VolumeType, name: str, fingerprint: str) -> None:
        z = lzc()
        origin = f"{self._ds('image', fingerprint)}@readonly"
        if not z.lzc_exists(_b(origin)):
            raise NotFound(f"image volume {fingerprint[:12]} is not in pool {self.pool.name}")
        self._clone(origin, vtype, name)

    def _clone(self, origin: str, vtype: VolumeType, name: str,
               props: dict[bytes, Any] | None = None) -> None:
        z = lzc()
        dataset = self._ds(vtype, name)
        if z.lzc_exists(_b(dataset)):
            raise AlreadyExists(f"volume {name} already exists in pool {self.pool.name}")
        z.lzc_clone(_b(dataset), _b(origin), {b"mountpoint": b"legacy", **(props or {})})
        try:
            self._mount(dataset, self.volume_path(vtype, name))
        except BaseException:
            self._destroy(dataset, self.volume_path(vtype, name))
            raise

    def create_volume(self, vtype: VolumeType, name: str) -> None:
        z = lzc()
        dataset = self._ds(vtype, name)
        if z.lzc_exists(_b(dataset)):
            raise AlreadyExists(f"volume {name} already exists in pool {self.pool.name}")
        z.lzc_create(_b(dataset), "zfs", {b"mountpoint": b"legacy"})
        self._mount(dataset, self.volume_path(vtype, name))
        os.chmod(self.volume_path(vtype, name), 0o711)

    def copy_volume(self, vtype: VolumeType, src: str, dst: str, snapshots: bool) -> None:
        """A clone of a fresh snapshot of ``src`` (snapshots are not carried over: a clone
        cannot own its origin's snapshots without ``zfs send``)."""
        z = lzc()
        snap = f"{self._ds(vtype, src)}@copy-{dst}"
        z.lzc_snapshot([_b(snap)])
        quota = self._get_prop(self._ds(vtype, src), "refquota")
        props = {b"refquota": quota} if quota else {}
        self._clone(snap, vtype, dst, props)

    def _destroy(self, dataset: str, path: Path | None) -> None:
        """Destroy a dataset and its snapshots (unmounted first). Missing: no error."""
        z = lzc()
        if path is not None:
            self._umount(path)
        if not z.lzc_exists(_b(dataset)):
            return
        snaps = [_b(f"{dataset}@{s}") for s in self._snapshots_of(dataset)]
        if snaps:
            z.lzc_destroy_snaps(snaps, defer=True)
        z.lzc_destroy(_b(dataset))

    def _snapshots_of(self, dataset: str) -> list[str]:
        try:
            names = [n.decode() for n in lzc().lzc_list_snaps(_b(dataset))]
        except NotImplementedError:
            names = _run("zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-d", "1",
                         dataset).split()
        return [n.split("@", 1)[1] for n in names if "@" in n]

    def delete_volume(self, vtype: VolumeType, name: str) -> None:
        z = lzc()
        dataset, path = self._ds(vtype, name), self.volume_path(vtype, name)
        try:
            self._destroy(dataset, path)
        except z.exceptions.ZFSError:
            if not z.lzc_exists(_b(dataset)):
                raise
            # still cloned (an image used by instances): park it until its clones are gone
            z.lzc_rename(_b(dataset), _b(f"{self.dataset}/deleted/{_DIRS[vtype]}-{name}"))

    def rename_volume(self, vtype: VolumeType, old: str, new: str) -> None:
        z = lzc()
        if z.lzc_exists(_b(self._ds(vtype, new))):
            raise AlreadyExists(f"volume {new} already exists in pool {self.pool.name}")
        self._umount(self.volume_path(vtype, old))
        z.lzc_rename(_b(self._ds(vtype, old)), _b(self._ds(vtype, new)))
        self._mount(self._ds(vtype, new), self.volume_path(vtype, new))

    def volume_usage(self, vtype: VolumeType, name: str) -> int:
        return int(self._get_prop(self._ds(vtype, name), "usedbydataset") or 0)

    # --- properties and quotas ----------------------------------------------------------

    def _get_prop(self, dataset: str, prop: str) -> Any:
        z = lzc()
        try:
            props = z.lzc_get_props(_b(dataset))
        except NotImplementedError:
            value = _run("zfs", "get", "-Hp", "-o", "value", prop, dataset).strip()
            return None if value in ("-", "none", "0") else int(value)
        value = props.get(_b(prop))
        return value or None

    def _set_prop(self, dataset: str, prop: str, value: Any) -> None:
        z = lzc()
        try:
            z.lzc_set_props(_b(dataset), _b(prop), value)
        except NotImplementedError:
            _run("zfs", "set", f"{prop}={value if value else 'none'}", dataset)

    def set_volume_quota(self, vtype: VolumeType, name: str, size: int | None) -> None:
        """The dataset's ``refquota`` (its referenced bytes), at once (running or not)."""
        dataset = self._ds(vtype, name)
        if size:
            check_quota_above_usage(size, int(self._get_prop(dataset, "referenced") or 0), name)
        self._set_prop(dataset, "refquota", size or 0)

    # --- snapshots ----------------------------------------------------------------------

    def snapshot_path(self, vtype: VolumeType, name: str, snapshot: str) -> Path:
        return self.volume_path(vtype, name) / ".zfs" / "snapshot" / f"{_SNAP_PREFIX}{snapshot}"

    def list_snapshots(self, vtype: VolumeType, name: str) -> list[str]:
        dataset = self._ds(vtype, name)
        if not lzc().lzc_exists(_b(dataset)):
            return []
        return sorted(s[len(_SNAP_PREFIX):] for s in self._snapshots_of(dataset)
                      if s.startswith(_SNAP_PREFIX))

    def _snap(self, vtype: VolumeType, name: str, snapshot: str) -> str:
        return f"{self._ds(vtype, name)}@{_SNAP_PREFIX}{snapshot}"

    def create_snapshot(self, vtype: VolumeType, name: str, snapshot: str) -> None:
        z = lzc()
        if z.lzc_exists(_b(self._snap(vtype, name, snapshot))):
            raise AlreadyExists(f"snapshot {name}/{snapshot} already exists")
        z.lzc_snapshot([_b(self._snap(vtype, name, snapshot))])

    def delete_snapshot(self, vtype: VolumeType, name: str, snapshot: str) -> None:
        lzc().lzc_destroy_snaps([_b(self._snap(vtype, name, snapshot))], defer=True)

    def rename_snapshot(self, vtype: VolumeType, name: str, old: str, new: str) -> None:
        z = lzc()
        if z.lzc_exists(_b(self._snap(vtype, name, new))):
            raise AlreadyExists(f"snapshot {name}/{new} already exists")
        z.lzc_rename(_b(self._snap(vtype, name, old)), _b(self._snap(vtype, name, new)))

    def restore_snapshot(self, vtype: VolumeType, name: str, snapshot: str) -> None:
        z = lzc()
        snap = self._snap(vtype, name, snapshot)
        if not z.lzc_exists(_b(snap)):
            raise NotFound(f"snapshot {name}/{snapshot} not found in pool {self.pool.name}")
        try:
            z.lzc_rollback_to(_b(self._ds(vtype, name)), _b(snap))
        except z.exceptions.SnapshotNotLatest:
            raise Busy(f"zfs can only restore the latest snapshot of {name}: delete the "
                       f"snapshots taken after {snapshot} first") from None

    def copy_snapshot_to_volume(
        self, vtype: VolumeType, src: str, snapshot: str, dst: str
    ) -> None:
        self._clone(self._snap(vtype, src, snapshot), vtype, dst)

    # --- migration streams (LXD's ZFS transport) ----------------------------------------

    def _frozen(self, vtype: VolumeType, name: str) -> str:
        return f"{self._ds(vtype, name)}@{_SEND_SNAP}"

    def freeze_for_send(self, vtype: VolumeType, name: str) -> None:
        """A temporary snapshot of the volume (LXD's ``@migration-...``)."""
        z = lzc()
        z.lzc_destroy_snaps([_b(self._frozen(vtype, name))], defer=True)
        z.lzc_snapshot([_b(self._frozen(vtype, name))])

    def thaw_after_send(self, vtype: VolumeType, name: str) -> None:
        lzc().lzc_destroy_snaps([_b(self._frozen(vtype, name))], defer=True)

    def stream_send_command(self, vtype: VolumeType, name: str, snapshot: str,
                            parent: str) -> list[str]:
        """``lzc_send`` in a process of its own (``storage_zfs_stream``) writing to its
        stdout."""
        snap = self._snap(vtype, name, snapshot) if snapshot else self._frozen(vtype, name)
        base = [self._snap(vtype, name, parent)] if parent else []
        return [*_STREAM_COMMAND, "send", snap, *base]

    def stream_ids(self, vtype: VolumeType, name: str, snapshot: str) -> tuple[str, str]:
        """The snapshot's guid, twice: ZFS keeps it through send and receive."""
        guid = str(self._get_prop(self._snap(vtype, name, snapshot), "guid") or "")
        return guid, guid

    def _receiving(self, vtype: VolumeType, name: str) -> str:
        return self._ds(vtype, f".{name}{_RECEIVE_SUFFIX}")

    def _dataset_at(self, path: Path) -> str:
        """The dataset of a volume path (mounted or not)."""
        return f"{self.dataset}/{path.relative_to(self.root).as_posix()}"

    def stream_receive_dir(self, vtype: VolumeType, name: str) -> Path:
        """Where the next stream goes: ZFS receives a volume's snapshots into one dataset,
        each incremental from the one before. A refresh of a volume that has snapshots
        (its latest the parent of the first stream) receives into the volume; otherwise a
        hidden dataset (``.NAME.migration-receive``, made by the first, full stream)
        gathers the streams until ``adopt_stream`` of the volume renames it into place."""
        z = lzc()
        receiving = self._receiving(vtype, name)
        if not z.lzc_exists(_b(receiving)) and self.list_snapshots(vtype, name):
            return self.volume_path(vtype, name)
        return self.volume_path(vtype, f".{name}{_RECEIVE_SUFFIX}")

    def stream_receive_command(self, into: Path) -> list[str]:
        """``lzc_receive`` in a process of its own, from its stdin, as the temporary
        snapshot ``@migration-receive`` of ``into``'s dataset (named by ``adopt_stream``)."""
        return [*_STREAM_COMMAND, "receive", f"{self._dataset_at(into)}@{_RECEIVE_SNAP}"]

    def drop_stream(self, into: Path) -> None:
        """A receive dataset goes whole with what it gathered; a volume received into (a
        refresh) keeps what it had (a cut ZFS receive leaves nothing)."""
        dataset = self._dataset_at(into)
        if into.name.endswith(_RECEIVE_SUFFIX):
            self._destroy(dataset, into)
        else:
            lzc().lzc_destroy_snaps([_b(f"{dataset}@{_RECEIVE_SNAP}")], defer=True)

    def adopt_stream(self, vtype: VolumeType, name: str, snapshot: str, into: Path) -> None:
        """The received snapshot becomes ``@snapshot-NAME`` of ``into``'s dataset; for the
        volume it is destroyed (the dataset keeps its content) and a receive dataset
        replaces the volume (the old one destroyed, or put back on failure)."""
        z = lzc()
        dataset = self._dataset_at(into)
        received = f"{dataset}@{_RECEIVE_SNAP}"
        if not z.lzc_exists(_b(received)):
            raise InvalidArgument(f"the stream made no snapshot in {dataset}")
        if snapshot:
            target = f"{dataset}@{_SNAP_PREFIX}{snapshot}"
            if z.lzc_exists(_b(target)):
                raise AlreadyExists(f"snapshot {name}/{snapshot} already exists")
            z.lzc_rename(_b(received), _b(target))
            return
        z.lzc_destroy_snaps([_b(received)], defer=False)
        volume, path = self._ds(vtype, name), self.volume_path(vtype, name)
        if dataset == volume:
            return
        old = self._ds(vtype, f".{name}.old")
        self._destroy(old, None)
        replacing = z.lzc_exists(_b(volume))
        if replacing:
            self._umount(path)
            z.lzc_rename(_b(volume), _b(old))
        try:
            z.lzc_rename(_b(dataset), _b(volume))
            self._mount(volume, path)
            os.chmod(path, 0o711)
        except BaseException:
            if replacing and not z.lzc_exists(_b(volume)):
                z.lzc_rename(_b(old), _b(volume))
                self._mount(volume, path)
            raise
        if replacing:
            self._destroy(old, None)

    def recover(self) -> None:
        """What a cut migration left: hidden container datasets (``.NAME.old`` of a
        replaced volume goes back when ``NAME`` is gone), and temporary snapshots."""
        z = lzc()
        try:
            self._recover(z)
        except z.exceptions.ZFSError as exc:
            raise OperationFailed(f"zfs pool {self.pool.name}: cannot remove what a cut "
                                  f"migration left: {exc!r}") from None

    def _recover(self, z: ModuleType) -> None:
        for child in self._children(_DIRS["container"]):
            dataset = self._ds("container", child)
            if not child.startswith("."):
                leftovers = [s for s in self._snapshots_of(dataset)
                             if s in (_SEND_SNAP, _RECEIVE_SNAP)]
                if leftovers:
                    z.lzc_destroy_snaps([_b(f"{dataset}@{s}") for s in leftovers], defer=True)
                continue
            self._umount(self.volume_path("container", child))  # ``mount`` mounts them all
            real = child[1:-len(".old")] if child.endswith(".old") else ""
            if real and not z.lzc_exists(_b(self._ds("container", real))):
                z.lzc_rename(_b(dataset), _b(self._ds("container", real)))
                self._mount(self._ds("container", real), self.volume_path("container", real))
            else:
                self._destroy(dataset, None)

    # --- optimized backups (LXD's zfs format: no header) ------------------------------

    def export_optimized_backup(self, vtype: VolumeType, name: str, snapshots: list[str],
                                dest: Path) -> tuple[dict[str, Any] | None, list[str]]:
        """``zfs send`` of each snapshot (incremental from the one before), then of a
        temporary snapshot of the volume (from the last snapshot), as LXD writes them."""
        import secrets

        z = lzc()
        temp = f"{self._ds(vtype, name)}@backup-{secrets.token_hex(8)}"
        z.lzc_snapshot([_b(temp)])
        try:
            files: list[str] = []
            parent = ""
            (dest / "snapshots").mkdir(exist_ok=True)
            for snap in snapshots:
                full = self._snap(vtype, name, snap)
                files.append(f"snapshots/{snap}.bin")
                self._send(full, parent, dest / files[-1])
                parent = full
            files.append("container.bin")
            self._send(temp, parent, dest / "container.bin")
        finally:
            z.lzc_destroy_snaps([_b(temp)], defer=True)
        return None, files

    @staticmethod
    def _send(snap: str, parent: str, out: Path) -> None:
        with open(out, "wb") as f:
            lzc().lzc_send(_b(snap), _b(parent) if parent else None, f.fileno())

    def import_optimized_backup(self, vtype: VolumeType, name: str, snapshots: list[str],
                                src: Path) -> None:
        """``zfs receive`` of each stream into the new dataset (the snapshots under their
        ``snapshot-NAME``), the last one's temporary snapshot destroyed; then mounted."""
        z = lzc()
        dataset = self._ds(vtype, name)
        if z.lzc_exists(_b(dataset)):
            raise AlreadyExists(f"volume {name} already exists in pool {self.pool.name}")
        streams = [(self._snap(vtype, name, s), src / "snapshots" / f"{s}.bin")
                   for s in snapshots]
        temp = f"{dataset}@backup-import"
        streams.append((temp, src / "container.bin"))
        for _snap, stream in streams:
            if not stream.is_file():
                raise InvalidArgument(f"the backup has no {stream.relative_to(src)}")
        try:
            for i, (snap, stream) in enumerate(streams):
                with open(stream, "rb") as f:
                    try:
                        z.lzc_receive(_b(snap), f.fileno(),
                                      props={b"mountpoint": b"legacy"} if i == 0 else None)
                    except z.exceptions.ZFSError as exc:
                        raise InvalidArgument(f"cannot receive {stream.name}: {exc!r}") from None
            z.lzc_destroy_snaps([_b(temp)], defer=False)
            self._mount(dataset, self.volume_path(vtype, name))
            os.chmod(self.volume_path(vtype, name), 0o711)
        except BaseException:
            self._destroy(dataset, self.volume_path(vtype, name))
            raise


@hookimpl
def lxfs_storage_drivers() -> list[type[StorageDriver]]:
    return [ZfsDriver]
