"""The storage driver interface, in the shape of LXD's storage drivers.

A pool is a place where volumes live; a driver knows how to make pools and volumes on one kind
of backing store. Volumes have a type:

- ``image``: an image unpacked once per pool (``metadata.yaml``, ``templates/``, ``rootfs/``),
  named by fingerprint; instances are created from it.
- ``container``: an instance's volume (same layout as an image volume), named by instance name.
- ``custom``: a user volume (plain directory tree).

Every method is blocking: the core calls them from worker threads and serialises operations on
one volume. A method that fails must leave no half-made volume behind (clean up, then raise
``lxfs.errors.LxfsError`` or ``OSError``). Paths returned by ``volume_path`` and
``snapshot_path`` are valid while the pool is mounted.
"""

from __future__ import annotations

import errno
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from lxfs.model import Instance

VolumeType = Literal["image", "container", "custom"]
VOLUME_TYPES: tuple[VolumeType, ...] = ("image", "container", "custom")


@dataclass
class PoolUsage:
    used_bytes: int
    total_bytes: int
    used_inodes: int = 0
    total_inodes: int = 0


@dataclass
class Pool:
    """A pool's record: what the core hands to a driver."""

    name: str
    driver: str
    config: dict[str, str] = field(default_factory=dict)
    description: str = ""


class StorageDriver(ABC):
    """Base class of storage drivers. Subclasses set ``name`` and implement every abstract
    method.

    A driver declares its capabilities as boolean class attributes, which the core reads
    (it never compares driver names):

    - ``copy_on_write``: snapshots and image→instance creation are clones (constant time);
      informative, nothing in the core depends on it yet.
    - ``quotas``: ``set_volume_quota`` limits a volume. The core calls it with the root
      disk's ``size`` when a root volume is made (from an image, a copy, a move from another
      pool), before every start, and when the size changes. Without it a ``size`` is kept
      but not enforced, and the user is told so.
    - ``live_resize``: the quota can change while a running instance uses the volume;
      without it a new size of a running instance applies at its next start.
    - ``optimized_transfer``: ``transfer_volume_to`` copies a volume to another pool of
      the same driver natively (LXD's optimized migration: send/receive); without it the
      core copies the files.
    - ``migration_transports``: LXD's native migration transports (``"BTRFS"``, ``"ZFS"``)
      the driver streams a volume with between hosts (``stream_send_command``,
      ``adopt_stream``...); without one, migrations copy the files (rsync).
    - ``spare_volumes``: creating a volume from an image is a copy, so the driver keeps one
      copy made ahead per image (``prepare_spare``) and ``create_volume_from_image`` takes
      it when it is ready (a rename). The core calls ``prepare_spare`` off the critical path
      after each creation from an image, in a task of its own. Without the image's volume,
      the core unpacks the image straight into a new volume (``create_volume``) and has
      ``create_image_volume`` made in that task, before the spare.
    """

    name: ClassVar[str]
    #: Config keys a pool of this driver accepts (with a short description each).
    pool_keys: ClassVar[dict[str, str]] = {"source": "where the pool's data lives"}
    #: Capabilities (see the class docstring).
    copy_on_write: ClassVar[bool] = False
    quotas: ClassVar[bool] = False
    live_resize: ClassVar[bool] = False
    optimized_transfer: ClassVar[bool] = False
    optimized_backups: ClassVar[bool] = False
    #: LXD's native migration transports the driver speaks besides rsync (``"BTRFS"``,
    #: ``"ZFS"``): the REST bridge offers the first it knows, takes an offered one the driver
    #: declares, and moves the volume as the driver's streams (``stream_send_command``...)
    #: instead of files. The protocol around the streams is the bridge's, the same for all.
    migration_transports: ClassVar[tuple[str, ...]] = ()
    optimized_backup_header: ClassVar[bool] = False
    spare_volumes: ClassVar[bool] = False
    #: Whether the driver can make the ``default`` pool of a first start on a directory of
    #: the data directory, with no configuration (the first such driver does).
    default_pool: ClassVar[bool] = False
    #: Why this driver can never run on this host (a stand-in for a driver of LXD that lxfs
    #: lacks): creating a pool with it is refused with this reason, and it is not listed.
    unavailable: ClassVar[str] = ""

    def __init__(self, pool: Pool, data_dir: Path) -> None:
        self.pool = pool
        self.data_dir = data_dir

    # --- pool ---------------------------------------------------------------------------

    @classmethod
    def check_host(cls) -> None:
        """Raise ``LxfsError`` with a clear reason if this host cannot run this driver."""

    def fill_defaults(self) -> None:
        """Complete ``self.pool.config`` with defaults (``source``...) before ``create``."""

    @abstractmethod
    def create(self) -> None:
        """Create the pool's backing store (directory, filesystem, loop file...) and mount it."""

    @abstractmethod
    def delete(self) -> None:
        """Unmount and destroy the pool. The core only calls this on an empty pool."""

    @abstractmethod
    def mount(self) -> None:
        """Make the pool usable (at daemon start). Idempotent: never mount twice."""

    @abstractmethod
    def unmount(self) -> None:
        """Release the pool (daemon stop, pool delete). Running instances keep their mounts."""

    @abstractmethod
    def usage(self) -> PoolUsage:
        """Space and inodes used and available."""

    # --- volumes ------------------------------------------------------------------------

    @abstractmethod
    def volume_path(self, vtype: VolumeType, name: str) -> Path:
        """Where a volume's files are (for image and container volumes, ``rootfs/`` is inside)."""

    @abstractmethod
    def volume_exists(self, vtype: VolumeType, name: str) -> bool:
        """Whether a volume exists."""

    @abstractmethod
    def list_volumes(self, vtype: VolumeType) -> list[str]:
        """Names of the volumes of one type."""

    @abstractmethod
    def create_image_volume(self, fingerprint: str, unpack: Callable[[Path], None]) -> None:
        """Create the image volume ``fingerprint``; ``unpack(dest)`` fills a new directory
        ``dest`` with the image's files. The result is read-only from then on."""

    @abstractmethod
    def create_volume_from_image(self, vtype: VolumeType, name: str, fingerprint: str) -> None:
        """Create a volume as a copy of an existing image volume (a clone where the backend
        can: snapshot, reflink or overlay; a full copy otherwise)."""

    def prepare_spare(self, fingerprint: str) -> None:
        """Make the next ``create_volume_from_image`` of this image fast: copy the image
        volume ahead to a hidden name, unless a copy is ready. Only with ``spare_volumes``;
        the copy runs at low priority and a failure only costs speed (the core logs it)."""
        raise NotImplementedError

    @abstractmethod
    def create_volume(self, vtype: VolumeType, name: str) -> None:
        """Create an empty volume."""

    @abstractmethod
    def copy_volume(self, vtype: VolumeType, src: str, dst: str, snapshots: bool) -> None:
        """Copy volume ``src`` to a new volume ``dst`` (with its snapshots if asked)."""

    @abstractmethod
    def delete_volume(self, vtype: VolumeType, name: str) -> None:
        """Delete a volume and all its snapshots. Missing volumes are not an error."""

    @abstractmethod
    def rename_volume(self, vtype: VolumeType, old: str, new: str) -> None:
        """Rename a volume and its snapshots."""

    @abstractmethod
    def volume_usage(self, vtype: VolumeType, name: str) -> int:
        """Bytes used by a volume (exclusive usage where the backend shares blocks)."""

    # --- snapshots ----------------------------------------------------------------------

    @abstractmethod
    def snapshot_path(self, vtype: VolumeType, name: str, snapshot: str) -> Path:
        """Where a snapshot's files are."""

    @abstractmethod
    def list_snapshots(self, vtype: VolumeType, name: str) -> list[str]:
        """Names of a volume's snapshots."""

    @abstractmethod
    def create_snapshot(self, vtype: VolumeType, name: str, snapshot: str) -> None:
        """Take a read-only snapshot of a volume (it may be in use by a running instance)."""

    @abstractmethod
    def delete_snapshot(self, vtype: VolumeType, name: str, snapshot: str) -> None:
        """Delete a snapshot."""

    @abstractmethod
    def rename_snapshot(self, vtype: VolumeType, name: str, old: str, new: str) -> None:
        """Rename a snapshot."""

    @abstractmethod
    def restore_snapshot(self, vtype: VolumeType, name: str, snapshot: str) -> None:
        """Make the volume's content that of the snapshot (the instance is stopped)."""

    def set_volume_quota(self, vtype: VolumeType, name: str, size: int | None) -> None:
        """Limit a volume to ``size`` bytes (None removes the limit). Called only when the
        driver declares ``quotas``, and on a volume a running instance uses only when it
        declares ``live_resize``. A size below what the volume holds now is refused with
        ``InvalidArgument`` (the volume would take no more writes). Every start repeats the
        call with the same size: make the repeat cheap."""
        from lxfs.errors import NotSupported

        raise NotSupported(f"the {self.name} storage driver has no quotas")

    # --- migration streams (only with ``migration_transports``) ---------------------------
    # The sender: ``stream_ids`` of each snapshot, each snapshot's stream (oldest first, each
    # incremental from the one before, the first from the snapshot before it on a refresh),
    # then ``freeze_for_send``, the volume's stream, ``thaw_after_send``. The receiver, for
    # each stream in that order: ``stream_receive_dir``, ``stream_receive_command`` fed the
    # stream, ``adopt_stream``; ``drop_stream`` of the last ``stream_receive_dir`` when
    # anything fails. The commands run as processes (a driver in Python runs
    # ``[sys.executable, "-m", MODULE, ...]``).

    def freeze_for_send(self, vtype: VolumeType, name: str) -> None:
        """Make a read-only image of the volume for ``stream_send_command(..., "")``."""
        raise NotImplementedError

    def thaw_after_send(self, vtype: VolumeType, name: str) -> None:
        """Remove what ``freeze_for_send`` made (also when nothing was made)."""
        raise NotImplementedError

    def stream_send_command(self, vtype: VolumeType, name: str, snapshot: str,
                            parent: str) -> list[str]:
        """The command writing a snapshot's stream (``""``: the frozen volume) to its
        stdout, incremental from snapshot ``parent`` (the other host has it) when given."""
        raise NotImplementedError

    def stream_ids(self, vtype: VolumeType, name: str, snapshot: str) -> tuple[str, str]:
        """A snapshot's identity for incremental refreshes: its own id and the id of what
        it was received from ("" when made here; a btrfs uuid and received uuid, a ZFS
        guid twice since send/receive keeps it)."""
        raise NotImplementedError

    def stream_receive_dir(self, vtype: VolumeType, name: str) -> Path:
        """Where the next stream of volume ``name`` is received: a hidden place of the pool
        (removed by ``recover`` after a crash), new for each stream where each stream makes
        a volume of its own (btrfs), or one for all of a volume's streams where they are
        received incrementally into one volume (ZFS: a hidden dataset, or the volume itself
        on a refresh whose first stream is incremental)."""
        raise NotImplementedError

    def stream_receive_command(self, into: Path) -> list[str]:
        """The command reading one stream on its stdin into ``into``. A stream cut midway
        makes it fail."""
        raise NotImplementedError

    def drop_stream(self, into: Path) -> None:
        """After a failure: remove a hidden ``stream_receive_dir`` with what it received
        (snapshots not yet in place too); a volume received into keeps what it had. A
        ``into`` already adopted is no error."""
        raise NotImplementedError

    def adopt_stream(self, vtype: VolumeType, name: str, snapshot: str, into: Path) -> None:
        """What one stream made in ``into`` becomes ``snapshot`` of volume ``name`` or, with
        ``""``, the volume itself (replacing it: a refresh); a hidden ``into`` is gone once
        the volume is adopted. A driver whose snapshots cannot leave their volume (ZFS)
        names the snapshot in ``into`` and moves it with the volume."""
        raise NotImplementedError

    def transfer_volume_to(self, other: StorageDriver, vtype: VolumeType, name: str,
                           new_name: str, snapshots: list[str]) -> None:
        """Copy volume ``name`` with ``snapshots`` (oldest first) to ``new_name`` in
        ``other``, a pool of the same driver, natively. Called only when the driver declares
        ``optimized_transfer``; on failure nothing is left in ``other``."""
        from lxfs.errors import NotSupported

        raise NotSupported(f"the {self.name} storage driver has no optimized transfer")

    def export_optimized_backup(self, vtype: VolumeType, name: str, snapshots: list[str],
                                dest: Path) -> tuple[dict[str, Any] | None, list[str]]:
        """Write volume ``name`` and its ``snapshots`` (oldest first) as the driver's streams
        into directory ``dest`` (a backup's ``backup/``): ``snapshots/SNAP.bin`` each, then
        ``container.bin``. Returns the optimized header (or None) and the files' paths
        relative to ``dest``, in tarball order. Only with ``optimized_backups``."""
        from lxfs.errors import NotSupported

        raise NotSupported(f"the {self.name} storage driver has no optimized backups")

    def import_optimized_backup(self, vtype: VolumeType, name: str, snapshots: list[str],
                                src: Path) -> None:
        """Make volume ``name`` with ``snapshots`` from the streams a backup holds in
        directory ``src`` (see ``export_optimized_backup``); on failure nothing is left.
        Only with ``optimized_backups``."""
        from lxfs.errors import NotSupported

        raise NotSupported(f"the {self.name} storage driver has no optimized backups")

    def update_pool_key(self, key: str, value: str) -> None:
        """Change a config key of an existing pool (``size`` of a loop file...). Default:
        every key is fixed at creation."""
        from lxfs.errors import InvalidArgument

        raise InvalidArgument(f"{key} cannot be changed on an existing {self.name} pool")

    def recover(self) -> None:
        """Repair what an interrupted operation left in the pool (half-made copies, a
        restore cut between its steps). Called at every daemon start, before the core
        compares volumes with its records. Default: nothing to repair."""

    def grant_traversal(self, vtype: VolumeType, name: str, uid: int) -> None:
        """Let host uid ``uid`` (the root of an unprivileged container a custom volume is
        bound into: LXC opens the bind's source as that uid) reach the volume's directory.
        Volumes are otherwise root's alone: what a container wrote there (setuid files,
        device nodes owned by host root, since volumes are stored unshifted) must not be
        reachable by host users. Default: an ACL entry on the directory holding the volume
        (``custom/``, mode 0700), as LXC advises."""
        grant_search(self.volume_path(vtype, name).parent, uid)

    def copy_snapshot_to_volume(
        self, vtype: VolumeType, src: str, snapshot: str, dst: str
    ) -> None:
        """Create volume ``dst`` from a snapshot of ``src``. Default: copy the tree."""
        import subprocess

        dest = self.volume_path(vtype, dst)
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["cp", "-a", "--reflink=auto", str(self.snapshot_path(vtype, src, snapshot)),
             str(dest)],
            check=True, capture_output=True,
        )


VOLUME_DIRS: dict[str, str] = {"image": "images", "container": "containers", "custom": "custom"}
#: every directory of a pool's layout: root's alone (0700). Unprivileged containers never
#: need to traverse to their root filesystem (the idmapped mount is made by root), only to
#: custom volumes bound into them (see ``StorageDriver.grant_traversal``).
LAYOUT_DIRS = ("images", "containers", "containers-snapshots", "custom", "custom-snapshots")


def make_layout(root: Path, subdirs: tuple[str, ...] = LAYOUT_DIRS) -> None:
    """Create (or repair the modes of) a pool's directories: the pool's root 0711, the
    directories holding volumes 0700 (their ACLs, if any, are kept)."""
    os.chmod(root, 0o711)
    for sub in subdirs:
        path = root / sub
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)


# POSIX ACLs as the kernel takes them (the ``system.posix_acl_access`` xattr)
_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20)
_ACL_NO_ID = 0xFFFFFFFF
_ACL_SEARCH = 0x1


def grant_search(directory: Path, uid: int) -> None:
    """Add ``user:UID:--x`` to a directory's access ACL (and let the mask pass it), keeping
    its other entries. Idempotent."""
    import struct

    try:
        raw = os.getxattr(directory, _ACL_XATTR)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
            raise
        raw = b""
    entries: dict[tuple[int, int], int] = {}
    if len(raw) >= 4 and struct.unpack_from("<I", raw)[0] == _ACL_VERSION:
        for offset in range(4, len(raw) - 7, 8):
            tag, perm, ident = struct.unpack_from("<HHI", raw, offset)
            entries[(tag, ident)] = perm
    else:  # no ACL yet: the mode bits are its minimal form
        mode = os.stat(directory).st_mode
        entries = {(_ACL_USER_OBJ, _ACL_NO_ID): (mode >> 6) & 7,
                   (_ACL_GROUP_OBJ, _ACL_NO_ID): (mode >> 3) & 7,
                   (_ACL_OTHER, _ACL_NO_ID): mode & 7}
    if entries.get((_ACL_USER, uid), 0) & _ACL_SEARCH and \
            entries.get((_ACL_MASK, _ACL_NO_ID), 0) & _ACL_SEARCH:
        return
    entries[(_ACL_USER, uid)] = entries.get((_ACL_USER, uid), 0) | _ACL_SEARCH
    mask = entries.get((_ACL_MASK, _ACL_NO_ID), entries[(_ACL_GROUP_OBJ, _ACL_NO_ID)])
    entries[(_ACL_MASK, _ACL_NO_ID)] = mask | _ACL_SEARCH
    data = struct.pack("<I", _ACL_VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for (tag, ident), perm in sorted(entries.items()))
    try:
        os.setxattr(directory, _ACL_XATTR, data)
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            from lxfs.errors import OperationFailed

            raise OperationFailed(
                f"the filesystem of {directory} has no POSIX ACLs: lxfs cannot open it to "
                f"containers (uid {uid}) while keeping it closed to host users") from None
        raise


class DirectoryLayout(StorageDriver):
    """The on-disk layout shared by drivers whose volumes are directories under ``root``::

        images/FP/  containers/NAME/  custom/NAME/  containers-snapshots/NAME/SNAP/ ...

    Names starting with a dot are temporary and never listed."""

    @property
    @abstractmethod
    def root(self) -> Path:
        """Where the pool's volumes live while it is mounted."""

    def volume_path(self, vtype: VolumeType, name: str) -> Path:
        return self.root / VOLUME_DIRS[vtype] / name

    def remove_path(self, path: Path) -> None:
        """Remove a volume's tree or a leftover under a hidden name (drivers whose volumes
        are subvolumes or datasets override it)."""
        import subprocess

        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=True,
                           capture_output=True)

    def recover(self) -> None:
        """No user name starts with a dot, so every hidden entry of the layout is an
        operation's leftover: ``.NAME.old`` whose ``NAME`` is gone (a restore cut between its
        two renames) is put back, everything else (``.NAME.tmp``, ``.NAME.restore``,
        ``.FP.unpack-*``...) is removed, except what ``keeps_hidden`` keeps."""
        for sub in LAYOUT_DIRS:
            base = self.root / sub
            if not base.is_dir():
                continue
            places = [base]
            if sub.endswith("-snapshots"):
                places += [d for d in base.iterdir() if d.is_dir() and not d.name[0] == "."]
            for place in places:
                for leftover in sorted(place.glob(".*")):
                    if self.keeps_hidden(leftover):
                        continue
                    name = leftover.name
                    real = place / name[1:-len(".old")] if name.endswith(".old") else None
                    if real is not None and not os.path.lexists(real):
                        os.rename(leftover, real)
                    else:
                        self.remove_path(leftover)

    def keeps_hidden(self, path: Path) -> bool:
        """Whether ``recover`` keeps a hidden entry (a driver's own, not a leftover)."""
        return False

    def usage(self) -> PoolUsage:
        """The filesystem under ``root`` (a btrfs pool's own, the host's for a dir pool)."""
        st = os.statvfs(self.root)
        return PoolUsage(
            used_bytes=(st.f_blocks - st.f_bfree) * st.f_frsize,
            total_bytes=st.f_blocks * st.f_frsize,
            used_inodes=st.f_files - st.f_ffree,
            total_inodes=st.f_files,
        )

    def _snapshots_dir(self, vtype: VolumeType, name: str) -> Path:
        return self.root / f"{VOLUME_DIRS[vtype]}-snapshots" / name

    def volume_exists(self, vtype: VolumeType, name: str) -> bool:
        return self.volume_path(vtype, name).is_dir()

    def list_volumes(self, vtype: VolumeType) -> list[str]:
        return _visible(self.root / VOLUME_DIRS[vtype])

    def snapshot_path(self, vtype: VolumeType, name: str, snapshot: str) -> Path:
        return self._snapshots_dir(vtype, name) / snapshot

    def list_snapshots(self, vtype: VolumeType, name: str) -> list[str]:
        return _visible(self._snapshots_dir(vtype, name))


def _visible(base: Path) -> list[str]:
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if not p.name.startswith("."))


def root_disk_size(instance: Instance) -> int | None:
    """The ``size`` of an instance's root disk device in bytes (None when unset)."""
    from lxfs.config_schema import parse_size

    for dev in instance.expanded_devices.values():
        if dev.get("type") == "disk" and dev.get("path") == "/":
            value = dev.get("size", "").strip()
            return parse_size(value) if value else None
    return None


def human_size(size: int) -> str:
    """Bytes as people read them: ``20MiB``, ``1.5GiB``, ``512B``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f}".removesuffix(".0") + unit
        value /= 1024
    raise AssertionError("unreachable")


def check_quota_above_usage(size: int | None, used: int, name: str) -> None:
    """Refuse a quota below what a volume holds already (it would take no more writes)."""
    from lxfs.errors import InvalidArgument

    if size is not None and size < used:
        raise InvalidArgument(
            f"size {human_size(size)} is smaller than what volume {name} already uses "
            f"({human_size(used)}): choose a larger size, or free space first")


def transfer_volume(src: StorageDriver, src_name: str, dst: StorageDriver, dst_name: str,
                    snapshots: list[str]) -> None:
    """Copy a container volume to another pool (any drivers): each snapshot in turn becomes
    the new volume's content and is snapshotted there, then the volume itself is copied. On
    failure the new volume is removed. Between two pools of one driver that declares
    ``optimized_transfer``, the driver's own ``transfer_volume_to`` does it."""
    import subprocess

    if type(src) is type(dst) and src.optimized_transfer:
        src.transfer_volume_to(dst, "container", src_name, dst_name, snapshots)
        return

    def fill(from_path: Path) -> None:
        target = dst.volume_path("container", dst_name)
        for entry in list(target.iterdir()):
            subprocess.run(["rm", "-rf", "--one-file-system", "--", str(entry)], check=True)
        subprocess.run(["cp", "-a", "--reflink=auto", "--", f"{from_path}/.", str(target)],
                       check=True, capture_output=True)

    dst.create_volume("container", dst_name)
    try:
        for snap in snapshots:
            fill(src.snapshot_path("container", src_name, snap))
            dst.create_snapshot("container", dst_name, snap)
        fill(src.volume_path("container", src_name))
    except BaseException:
        dst.delete_volume("container", dst_name)
        raise
