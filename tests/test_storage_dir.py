"""The dir driver on a temporary directory: every volume operation, and crash recovery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lxfs_plugins.storage_dir import DirDriver

from lxfs.errors import AlreadyExists, NotFound
from lxfs.storage import Pool


@pytest.fixture
def driver(tmp_path: Path) -> DirDriver:
    d = DirDriver(Pool("p", "dir", {}), tmp_path)
    d.fill_defaults()
    d.create()
    return d


def fake_unpack(dest: Path) -> None:
    (dest / "rootfs" / "etc").mkdir(parents=True)
    (dest / "rootfs" / "etc" / "hostname").write_text("img\n")
    (dest / "metadata.yaml").write_text("architecture: x86_64\n")


def test_volume_lifecycle(driver: DirDriver) -> None:
    driver.create_image_volume("f" * 64, fake_unpack)
    assert driver.list_volumes("image") == ["f" * 64]
    driver.create_volume_from_image("container", "c1", "f" * 64)
    root = driver.volume_path("container", "c1") / "rootfs"
    assert (root / "etc" / "hostname").read_text() == "img\n"
    with pytest.raises(AlreadyExists):
        driver.create_volume_from_image("container", "c1", "f" * 64)
    with pytest.raises(NotFound):
        driver.create_volume_from_image("container", "c2", "0" * 64)
    driver.create_snapshot("container", "c1", "s0")
    (root / "new").write_text("x")
    assert driver.list_snapshots("container", "c1") == ["s0"]
    driver.restore_snapshot("container", "c1", "s0")
    assert not (driver.volume_path("container", "c1") / "rootfs" / "new").exists()
    driver.copy_volume("container", "c1", "c2", snapshots=True)
    assert driver.list_snapshots("container", "c2") == ["s0"]
    driver.rename_volume("container", "c2", "c3")
    assert driver.list_volumes("container") == ["c1", "c3"]
    assert driver.list_snapshots("container", "c3") == ["s0"]
    assert driver.volume_usage("container", "c1") > 0
    driver.delete_snapshot("container", "c1", "s0")
    for name in ("c1", "c3"):
        driver.delete_volume("container", name)
    assert driver.list_volumes("container") == []
    assert os.listdir(driver.root / "containers-snapshots") == []
    assert driver.usage().total_bytes > 0


def test_failed_unpack_leaves_nothing(driver: DirDriver) -> None:
    def broken(dest: Path) -> None:
        dest.mkdir()
        (dest / "partial").write_text("x")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        driver.create_image_volume("a" * 64, broken)
    assert os.listdir(driver.root / "images") == []


def test_recovery_after_crash_in_restore(driver: DirDriver) -> None:
    base = driver.root / "containers"
    (base / ".c1.old" / "rootfs").mkdir(parents=True)  # renamed away, new one not in place
    (base / ".c1.restore").mkdir()
    (base / ".c2.tmp").mkdir()
    snaps = driver.root / "containers-snapshots" / "c1"
    (snaps / ".s1.tmp").mkdir(parents=True)  # a snapshot cut short
    (driver.root / "images" / ".abc.unpack-x1y2").mkdir()  # an unpack cut short
    driver.recover()
    assert sorted(os.listdir(base)) == ["c1"]
    assert os.listdir(snaps) == [] and os.listdir(driver.root / "images") == []
    assert (base / "c1" / "rootfs").is_dir()


def test_spare_volume_is_taken_whole_and_kept_across_restarts(driver: DirDriver) -> None:
    fp = "e" * 64
    driver.create_image_volume(fp, fake_unpack)
    driver.prepare_spare(fp)
    images = driver.root / "images"
    assert sorted(os.listdir(images)) == [f".{fp}.spare", fp]
    assert driver.list_volumes("image") == [fp]  # a spare is no volume
    (images / f"..{fp}.spare.tmp").mkdir()  # a copy cut short by a crash
    driver.recover()
    assert sorted(os.listdir(images)) == [f".{fp}.spare", fp]  # the ready one is kept
    spare_inode = (images / f".{fp}.spare").stat().st_ino
    driver.create_volume_from_image("container", "c1", fp)  # takes the spare: a rename
    assert driver.volume_path("container", "c1").stat().st_ino == spare_inode
    assert (driver.volume_path("container", "c1") / "rootfs/etc/hostname").read_text() == "img\n"
    driver.create_volume_from_image("container", "c2", fp)  # none ready: a copy
    assert (driver.volume_path("container", "c2") / "rootfs/etc/hostname").read_text() == "img\n"
    driver.prepare_spare(fp)
    driver.prepare_spare(fp)  # one is ready: nothing to do
    driver.delete_volume("image", fp)  # the image's spare goes with it
    assert os.listdir(images) == []
