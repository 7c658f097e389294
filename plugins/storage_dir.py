"""The ``dir`` storage driver: volumes are plain directories.

Layout under the pool's ``source``::

    images/FINGERPRINT/           metadata.yaml, templates/, rootfs/ (unpacked once)
    containers/NAME/              the instance's volume (same layout)
    containers-snapshots/NAME/SNAP/
    custom/NAME/, custom-snapshots/NAME/SNAP/

Creating an instance copies the image volume with ``cp -a --reflink=auto``: a reflink clone
(constant space) on filesystems that support it (btrfs, xfs), a full copy elsewhere. That copy
is made ahead: the pool keeps one spare copy of each image it created an instance from
(``images/.FP.spare/``, made at idle priority after each creation), and a creation renames it
into place, so a launch does not wait for the copy. The first launch of an image does not
wait for the image volume either: the core unpacks the image straight into the instance's
volume (``spare_volumes``) and has the image volume made afterwards. Snapshots and restores
are copies too. Every copy goes to a hidden temporary name first and is renamed into place,
so a crash never leaves a half-copied volume under a real name.

No quotas (``quotas`` is unset): a root disk's ``size`` is kept but not enforced, and the core
tells the user so. LXD's dir driver sets project quotas where the filesystem has them enabled
(ext4, xfs mounted with prjquota) and otherwise ignores the size with a warning in its log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from lxfs import hookimpl
from lxfs.errors import AlreadyExists, InvalidArgument, NotFound, OperationFailed
from lxfs.storage import (
    VOLUME_DIRS,
    DirectoryLayout,
    StorageDriver,
    VolumeType,
    make_layout,
)

_DIRS = VOLUME_DIRS


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise OperationFailed(f"{cmd[0]} failed: {proc.stderr.strip() or proc.returncode}")


#: how a spare is copied: the lowest CPU and I/O priorities, so that it never slows the work
#: users wait for
_IDLE = ("nice", "-n", "19", "ionice", "-c", "3")


def copy_tree(src: Path, dst: Path, idle: bool = False) -> None:
    """Copy a tree preserving everything (owners, modes, links, xattrs), reflinked when the
    filesystem can (``idle``: at the lowest priorities). ``dst`` must not exist; on failure
    nothing is left at ``dst``."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    remove_tree(tmp)
    try:
        _run(*(_IDLE if idle else ()), "cp", "-a", "--reflink=auto", "--", str(src), str(tmp))
        os.replace(tmp, dst)
    except BaseException:
        remove_tree(tmp)
        raise


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        _run("rm", "-rf", "--one-file-system", "--", str(path))


class DirDriver(DirectoryLayout):
    name = "dir"
    copy_on_write = False
    default_pool = True
    spare_volumes = True

    @property
    def root(self) -> Path:
        return Path(self.pool.config["source"])

    def fill_defaults(self) -> None:
        source = self.pool.config.get("source", "")
        if source and not os.path.isabs(source):  # never the daemon's working directory
            raise InvalidArgument(f"source {source!r} must be an absolute path")
        self.pool.config.setdefault(
            "source", str(self.data_dir / "storage-pools" / self.pool.name))

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if any(p for p in self.root.iterdir() if p.name not in _DIRS.values()
               and not p.name.endswith("-snapshots")):
            raise AlreadyExists(f"storage pool source {self.root} is not empty")
        self.mount()

    def delete(self) -> None:
        for sub in list(_DIRS.values()) + ["containers-snapshots", "custom-snapshots"]:
            remove_tree(self.root / sub)
        if self.root.is_relative_to(self.data_dir):
            shutil.rmtree(self.root, ignore_errors=True)

    def mount(self) -> None:
        if not self.root.is_dir():
            raise NotFound(f"storage pool {self.pool.name}: source {self.root} is missing")
        make_layout(self.root)

    def unmount(self) -> None:
        pass

    def keeps_hidden(self, path: Path) -> bool:
        """Ready spares survive a restart (a spare is renamed into place complete; its copy
        is made under ``.FP.spare.tmp``, which ``recover`` removes)."""
        return path.parent.name == _DIRS["image"] and path.name.endswith(".spare")

    # --- volumes ------------------------------------------------------------------------

    def create_image_volume(self, fingerprint: str, unpack: Callable[[Path], None]) -> None:
        dest = self.volume_path("image", fingerprint)
        tmp = dest.with_name(f".{fingerprint}.tmp")
        remove_tree(tmp)
        try:
            unpack(tmp)
            os.chmod(tmp, 0o711)
            os.replace(tmp, dest)
        except BaseException:
            remove_tree(tmp)
            raise

    def create_volume_from_image(self, vtype: VolumeType, name: str, fingerprint: str) -> None:
        src = self.volume_path("image", fingerprint)
        if not src.is_dir():
            raise NotFound(f"image volume {fingerprint[:12]} is not in pool {self.pool.name}")
        dst = self.volume_path(vtype, name)
        if dst.exists():
            raise AlreadyExists(f"volume {name} already exists in pool {self.pool.name}")
        if vtype == "container":
            try:
                os.rename(self._spare_path(fingerprint), dst)  # atomic: taken whole or not
                return
            except FileNotFoundError:
                pass  # none ready (the first creation, or one right after another)
        copy_tree(src, dst)

    def _spare_path(self, fingerprint: str) -> Path:
        return self.volume_path("image", fingerprint).with_name(f".{fingerprint}.spare")

    def prepare_spare(self, fingerprint: str) -> None:
        spare = self._spare_path(fingerprint)
        src = self.volume_path("image", fingerprint)
        if spare.exists() or not src.is_dir():
            return
        copy_tree(src, spare, idle=True)

    def create_volume(self, vtype: VolumeType, name: str) -> None:
        path = self.volume_path(vtype, name)
        if path.exists():
            raise AlreadyExists(f"volume {name} already exists in pool {self.pool.name}")
        path.mkdir(mode=0o711)

    def copy_volume(self, vtype: VolumeType, src: str, dst: str, snapshots: bool) -> None:
        copy_tree(self.volume_path(vtype, src), self.volume_path(vtype, dst))
        if snapshots:
            try:
                for snap in self.list_snapshots(vtype, src):
                    target = self._snapshots_dir(vtype, dst) / snap
                    target.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
                    copy_tree(self.snapshot_path(vtype, src, snap), target)
            except BaseException:
                self.delete_volume(vtype, dst)
                raise

    def delete_volume(self, vtype: VolumeType, name: str) -> None:
        if vtype == "image":
            remove_tree(self._spare_path(name))
        remove_tree(self._snapshots_dir(vtype, name))
        remove_tree(self.volume_path(vtype, name))

    def rename_volume(self, vtype: VolumeType, old: str, new: str) -> None:
        if self.volume_path(vtype, new).exists():
            raise AlreadyExists(f"volume {new} already exists in pool {self.pool.name}")
        os.rename(self.volume_path(vtype, old), self.volume_path(vtype, new))
        if self._snapshots_dir(vtype, old).exists():
            os.rename(self._snapshots_dir(vtype, old), self._snapshots_dir(vtype, new))

    def volume_usage(self, vtype: VolumeType, name: str) -> int:
        out = subprocess.run(["du", "-sb", "--", str(self.volume_path(vtype, name))],
                             capture_output=True, text=True)
        return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else 0

    # --- snapshots ----------------------------------------------------------------------

    def create_snapshot(self, vtype: VolumeType, name: str, snapshot: str) -> None:
        target = self.snapshot_path(vtype, name, snapshot)
        if target.exists():
            raise AlreadyExists(f"snapshot {name}/{snapshot} already exists")
        target.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        copy_tree(self.volume_path(vtype, name), target)

    def delete_snapshot(self, vtype: VolumeType, name: str, snapshot: str) -> None:
        remove_tree(self.snapshot_path(vtype, name, snapshot))

    def rename_snapshot(self, vtype: VolumeType, name: str, old: str, new: str) -> None:
        os.rename(self.snapshot_path(vtype, name, old), self.snapshot_path(vtype, name, new))

    def restore_snapshot(self, vtype: VolumeType, name: str, snapshot: str) -> None:
        src = self.snapshot_path(vtype, name, snapshot)
        if not src.is_dir():
            raise NotFound(f"snapshot {name}/{snapshot} not found in pool {self.pool.name}")
        current = self.volume_path(vtype, name)
        fresh = current.with_name(f".{name}.restore")
        old = current.with_name(f".{name}.old")
        remove_tree(fresh)
        copy_tree(src, fresh)
        remove_tree(old)
        os.rename(current, old)
        os.rename(fresh, current)
        remove_tree(old)


@hookimpl
def lxfs_storage_drivers() -> list[type[StorageDriver]]:
    return [DirDriver]
