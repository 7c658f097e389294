"""The btrfs driver against the real kernel: a loop-file pool made in a temporary directory,
every volume operation, quotas, and the constant time of snapshots.

Needs root, btrfs in the kernel, btrfs-progs and btrfsutil: these tests fail (never skip) when
one is missing. Every loop device, mount and subvolume made here is removed, even on failure.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxfs_plugins.storage_btrfs import BtrfsDriver, btrfsutil, mounts_at

from lxfs.errors import AlreadyExists, InvalidArgument, LxfsError
from lxfs.storage import Pool

pytestmark = pytest.mark.integration

FP = "a" * 64


def loop_devices(image: Path) -> list[str]:
    out = subprocess.run(["losetup", "--noheadings", "--output", "NAME", "-j", str(image)],
                         capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def cleanup(base: Path) -> None:
    """Unmount everything below ``base`` (auto-clear frees the loop devices), detach any loop
    device left on a file below it, remove the tree."""
    for _ in range(5):
        points = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4]
                if point.startswith(str(base) + "/"):
                    points.append(point)
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", point], capture_output=True)
        if not points:
            break
    for image in base.rglob("*.img"):
        for dev in loop_devices(image):
            subprocess.run(["losetup", "-d", dev], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def base() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("btrfs driver tests need root", pytrace=False)
    try:
        BtrfsDriver.check_host()
    except LxfsError as exc:
        pytest.fail(f"btrfs driver tests cannot run here: {exc}", pytrace=False)
    path = Path(tempfile.mkdtemp(prefix="lxfs-btrfs-", dir="/var/tmp")).resolve()
    try:
        yield path
    finally:
        cleanup(path)


@pytest.fixture
def pool(base: Path) -> Iterator[BtrfsDriver]:
    driver = BtrfsDriver(Pool("bt", "btrfs", {"size": "1GiB"}), base / "data")
    driver.fill_defaults()
    driver.create()
    try:
        yield driver
    finally:
        driver.unmount()


def fake_unpack(files: int = 3, size: int = 100) -> object:
    def unpack(dest: Path) -> None:
        (dest / "metadata.yaml").write_text("architecture: x86_64\n")
        (dest / "templates").mkdir()
        rootfs = dest / "rootfs"
        (rootfs / "etc").mkdir(parents=True)
        for i in range(files):
            (rootfs / "etc" / f"f{i}").write_bytes(b"x" * size)
    return unpack


def subvolumes(driver: BtrfsDriver) -> list[str]:
    bu = btrfsutil()
    return sorted(p for p, _id in bu.SubvolumeIterator(str(driver.root)))


def test_loop_pool_create_mount_once_and_delete(base: Path) -> None:
    driver = BtrfsDriver(Pool("bt", "btrfs", {}), base / "data")
    driver.fill_defaults()
    assert driver.pool.config == {"source": str(base / "data/disks/bt.img"), "size": "10GiB"}
    driver.create()
    image = Path(driver.pool.config["source"])
    try:
        assert image.stat().st_size == 10 * 2**30
        assert image.stat().st_blocks * 512 < 200 * 2**20  # sparse
        assert [t for t, _ in mounts_at(driver.root)] == ["btrfs"]
        driver.mount()  # idempotent: never twice
        assert len(mounts_at(driver.root)) == 1
        assert sorted(os.listdir(driver.root)) == sorted(
            ["images", "containers", "containers-snapshots", "custom", "custom-snapshots"])
        # a daemon restart after a reboot: unmounted, then mounted again from the file
        driver.unmount()
        assert mounts_at(driver.root) == [] and loop_devices(image) == []
        driver.mount()
        assert len(mounts_at(driver.root)) == 1 and len(loop_devices(image)) == 1
        usage = driver.usage()
        assert 0 < usage.used_bytes < usage.total_bytes <= 10 * 2**30
        with pytest.raises(AlreadyExists):
            BtrfsDriver(Pool("bt", "btrfs", dict(driver.pool.config)), base / "data").create()
    finally:
        driver.delete()
    assert not image.exists() and not driver.root.exists()
    assert loop_devices(image) == []


def test_pool_on_existing_btrfs_directory(pool: BtrfsDriver, base: Path) -> None:
    source = pool.root / "custom" / "elsewhere"
    source.mkdir()
    other = BtrfsDriver(Pool("on-dir", "btrfs", {"source": str(source)}), base / "data")
    other.fill_defaults()
    assert not other.loop and other.root == source
    other.create()
    other.create_image_volume(FP, fake_unpack())
    other.create_volume_from_image("container", "c1", FP)
    assert (other.volume_path("container", "c1") / "rootfs/etc/f0").read_bytes() == b"x" * 100
    other.delete()
    assert os.listdir(source) == []
    plain = base / "plain"
    plain.mkdir()
    with pytest.raises(InvalidArgument):
        bad = BtrfsDriver(Pool("x", "btrfs", {"source": str(plain), "size": "1GiB"}), base)
        bad.fill_defaults()
    bad = BtrfsDriver(Pool("x", "btrfs", {"source": str(plain)}), base)
    bad.fill_defaults()
    with pytest.raises(InvalidArgument, match="not on a btrfs"):
        bad.create()


def test_volumes_are_subvolumes_and_snapshots(pool: BtrfsDriver) -> None:
    bu = btrfsutil()
    pool.create_image_volume(FP, fake_unpack())
    image = pool.volume_path("image", FP)
    assert bu.is_subvolume(str(image)) and bu.get_subvolume_read_only(str(image))
    assert pool.list_volumes("image") == [FP]
    pool.create_volume_from_image("container", "c1", FP)
    vol = pool.volume_path("container", "c1")
    assert bu.is_subvolume(str(vol)) and not bu.get_subvolume_read_only(str(vol))
    assert bu.subvolume_info(str(vol)).parent_uuid == bu.subvolume_info(str(image)).uuid
    assert pool.volume_usage("container", "c1") < 64 * 1024  # shares everything
    (vol / "rootfs/etc/f0").write_text("changed\n")

    pool.create_snapshot("container", "c1", "s1")
    snap = pool.snapshot_path("container", "c1", "s1")
    assert bu.get_subvolume_read_only(str(snap))
    assert (snap / "rootfs/etc/f0").read_text() == "changed\n"
    with pytest.raises(OSError) as exc:
        (snap / "rootfs/etc/new").write_text("x")
    assert exc.value.errno == errno.EROFS
    with pytest.raises(AlreadyExists):
        pool.create_snapshot("container", "c1", "s1")
    pool.rename_snapshot("container", "c1", "s1", "s2")
    assert pool.list_snapshots("container", "c1") == ["s2"]

    (vol / "rootfs/etc/f0").write_text("later\n")
    (vol / "rootfs/etc/f1").unlink()
    pool.restore_snapshot("container", "c1", "s2")
    assert (vol / "rootfs/etc/f0").read_text() == "changed\n"
    assert (vol / "rootfs/etc/f1").exists()
    assert bu.is_subvolume(str(vol)) and not bu.get_subvolume_read_only(str(vol))

    pool.copy_volume("container", "c1", "c2", snapshots=True)
    assert pool.list_snapshots("container", "c2") == ["s2"]
    assert (pool.volume_path("container", "c2") / "rootfs/etc/f0").read_text() == "changed\n"
    pool.copy_snapshot_to_volume("container", "c1", "s2", "c3")
    assert bu.is_subvolume(str(pool.volume_path("container", "c3")))
    pool.rename_volume("container", "c3", "c4")
    assert pool.list_volumes("container") == ["c1", "c2", "c4"]

    # nested subvolumes (made inside an instance) go with their volume
    bu.create_subvolume(str(vol / "rootfs/nested"))
    bu.create_subvolume(str(vol / "rootfs/nested/deeper"))
    pool.delete_snapshot("container", "c1", "s2")
    assert pool.list_snapshots("container", "c1") == []
    for name in ("c1", "c2", "c4"):
        pool.delete_volume("container", name)
    pool.delete_volume("container", "missing")  # not an error
    pool.create_volume("custom", "data")
    pool.delete_volume("custom", "data")
    pool.delete_volume("image", FP)
    assert subvolumes(pool) == []
    assert not any(p.name.startswith(".") for d in pool.root.iterdir() for p in d.iterdir())


def test_failed_unpack_leaves_nothing(pool: BtrfsDriver) -> None:
    def boom(dest: Path) -> None:
        (dest / "partial").write_text("x")
        raise RuntimeError("bad image")

    with pytest.raises(RuntimeError):
        pool.create_image_volume(FP, boom)
    assert subvolumes(pool) == [] and os.listdir(pool.root / "images") == []


def test_snapshot_is_constant_time(pool: BtrfsDriver) -> None:
    small, big = "b" * 64, "c" * 64
    pool.create_image_volume(small, fake_unpack(files=10))
    pool.create_image_volume(big, fake_unpack(files=5000, size=4096))
    timings = {}
    for fp in (small, big):
        pool.create_volume_from_image("container", f"v{fp[0]}", fp)
        t = time.perf_counter()
        pool.create_snapshot("container", f"v{fp[0]}", "snap")
        timings[fp[0]] = time.perf_counter() - t
        t = time.perf_counter()
        pool.copy_volume("container", f"v{fp[0]}", f"copy{fp[0]}", snapshots=False)
        timings[f"copy-{fp[0]}"] = time.perf_counter() - t
    print(f"snapshot/copy timings (s): {timings}")
    # 5000 files (20 MB) snapshot as fast as 10: no copy (cp -a takes 0.3 s and more here)
    assert timings["c"] < 0.25 and timings["copy-c"] < 0.25, timings
    assert pool.volume_usage("container", "copyc") < 256 * 1024


def test_quota_limits_writes(pool: BtrfsDriver) -> None:
    assert BtrfsDriver.quotas and BtrfsDriver.live_resize
    pool.create_image_volume(FP, fake_unpack())
    pool.create_volume_from_image("container", "q1", FP)
    pool.set_volume_quota("container", "q1", 32 * 2**20)
    vol = pool.volume_path("container", "q1")
    assert pool._limit(vol) == 32 * 2**20
    with pytest.raises(OSError) as exc:
        with open(vol / "rootfs/big", "wb") as f:
            for _ in range(64):
                f.write(b"\0" * 2**20)
                f.flush()
                os.fsync(f.fileno())
    assert exc.value.errno in (errno.EDQUOT, errno.ENOSPC)
    (vol / "rootfs/big").unlink()
    pool.create_snapshot("container", "q1", "s")
    pool.restore_snapshot("container", "q1", "s")  # a new subvolume keeps the limit
    assert pool._limit(vol) == 32 * 2**20
    pool.set_volume_quota("container", "q1", None)
    assert pool._limit(vol) == 0
    with open(vol / "rootfs/big", "wb") as f:
        f.write(b"\1" * 40 * 2**20)
    assert pool.volume_usage("container", "q1") >= 40 * 2**20
    # a limit below what the subvolume references would block every write: refused
    with pytest.raises(InvalidArgument, match=r"smaller than what volume q1 already uses"):
        pool.set_volume_quota("container", "q1", 16 * 2**20)
    assert pool._limit(vol) == 0
    # the limit last set is remembered: a repeat (every start) runs no command
    pool.set_volume_quota("container", "q1", 64 * 2**20)
    assert pool._limit(vol) == 64 * 2**20
    subprocess.run(["btrfs", "qgroup", "limit", "none", str(vol)], check=True)
    pool.set_volume_quota("container", "q1", 64 * 2**20)
    assert pool._limit(vol) == 0
    # a new subvolume under the same name is no repeat
    pool.delete_volume("container", "q1")
    pool.create_volume_from_image("container", "q1", FP)
    pool.set_volume_quota("container", "q1", 64 * 2**20)
    assert pool._limit(vol) == 64 * 2**20
