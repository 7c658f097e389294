"""Storage pools through the daemon: the mount flow (mkdir, config, driver, rmdir), btrfs pools
on loop files with real containers (launch, snapshot, restore, quotas, delete, restart), dir
pools, and the ``lxfs storage`` commands.

Every loop device made by a daemon here is detached at the end, even when a test fails.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def write_errno(path: Path, value: str) -> int:
    """Write like ``echo value > path`` and return the errno (0 on success)."""
    try:
        with open(path, "w") as f:
            f.write(value + "\n")
    except OSError as exc:
        return exc.errno
    return 0


def mount_count(point: Path) -> int:
    target = os.path.abspath(point)
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4] == target)


def loop_backing_files() -> dict[str, str]:
    out = subprocess.run(["losetup", "--list", "--json"], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        return {}
    return {d["name"]: d.get("back-file") or "" for d in json.loads(out.stdout)["loopdevices"]}


@pytest.fixture
def loop_guard() -> Iterator[list[Path]]:
    """Request it before the daemon fixtures: after the daemons are torn down, unmount what is
    left of the pools made under the listed directories and detach their loop devices."""
    bases: list[Path] = []
    yield bases
    for base in bases:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f if line.split()[4].startswith(f"{base}/")]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        for dev, back in loop_backing_files().items():
            if back.startswith(f"{base}/"):
                subprocess.run(["losetup", "-d", dev], capture_output=True)
    left = [b for b in loop_backing_files().values() if any(b.startswith(f"{x}/") for x in bases)]
    assert not left, f"loop devices left behind: {left}"


def make_btrfs_pool(d, name: str = "bt", size: str = "1GiB") -> Path:
    """The filesystem flow: mkdir, config, driver. Returns the pool's mount point."""
    os.mkdir(d.path("storage-pools", name))
    assert d.read("storage-pools", name, "driver") == ""
    d.write("storage-pools", name, "config", "size", size)
    t = time.perf_counter()
    d.write("storage-pools", name, "driver", "btrfs")
    print(f"btrfs pool creation: {time.perf_counter() - t:.3f}s")
    return d.data_dir.resolve() / "storage-pools" / name


def test_pool_mount_flow_and_errors(loop_guard, lxfs_daemon):
    d = lxfs_daemon
    loop_guard.append(d.base)
    pools = d.path("storage-pools")
    assert "btrfs" in d.read("environment", "storage_drivers").split()
    # a pending pool: config but no driver
    os.mkdir(pools / "p1")
    assert sorted(os.listdir(pools)) == ["default", "p1"]
    assert d.read("storage-pools", "p1", "driver") == ""
    assert "resources" not in os.listdir(pools / "p1")
    assert write_errno(pools / "p1" / "config" / "bogus", "1") == errno.EINVAL
    assert "unknown storage pool key" in d.read("error")
    # unknown driver: EINVAL; LVM/Ceph: not supported here, said clearly
    assert write_errno(pools / "p1" / "driver", "nosuch") == errno.EINVAL
    assert "unknown storage driver" in d.read("error")
    for driver in ("lvm", "ceph"):
        assert write_errno(pools / "p1" / "driver", driver) == errno.EOPNOTSUPP
        assert "not supported on this host" in d.read("error")
    assert "not supported on this host" in d.log_path.read_text()
    assert d.read("storage-pools", "p1", "driver") == ""
    # a bad size fails creation and leaves the pool pending, nothing on disk
    d.write("storage-pools", "p1", "config", "size", "1MiB")
    assert write_errno(pools / "p1" / "driver", "btrfs") == errno.EINVAL
    assert "too small" in d.read("error")
    assert not (d.data_dir / "disks" / "p1.img").exists()
    for bad in ("a/b", ".x", "x" * 64):
        with pytest.raises(OSError):
            os.mkdir(pools / bad)
    with pytest.raises(OSError) as exc:
        os.mkdir(pools / "p1")
    assert exc.value.errno == errno.EEXIST
    os.rmdir(pools / "p1")
    # the default pool is used by the default profile
    with pytest.raises(OSError) as exc:
        os.rmdir(pools / "default")
    assert exc.value.errno == errno.EBUSY
    assert "profiles/default" in d.read("error")
    # pending pools persist
    os.mkdir(pools / "p2")
    d.write("storage-pools", "p2", "config", "size", "2GiB")
    d.restart()
    assert d.read("storage-pools", "p2", "config", "size") == "2GiB"
    assert d.read("storage-pools", "p2", "driver") == ""
    os.rmdir(pools / "p2")


def test_btrfs_pool_instances(loop_guard, daemon_with_busybox):
    import btrfsutil

    d = daemon_with_busybox
    loop_guard.append(d.base)
    root = make_btrfs_pool(d)
    assert d.read("storage-pools", "bt", "driver") == "btrfs"
    image = d.data_dir.resolve() / "disks" / "bt.img"
    assert d.read("storage-pools", "bt", "config", "source") == str(image)
    assert image.stat().st_size == 2**30 and mount_count(root) == 1
    total = int(d.read("storage-pools", "bt", "resources", "space_total"))
    assert 0 < int(d.read("storage-pools", "bt", "resources", "space_used")) < total <= 2**30
    assert int(d.read("storage-pools", "bt", "resources", "inodes_total")) >= 0

    t = time.perf_counter()
    d.cli("launch", "busybox", "c1", "-s", "bt")
    first = time.perf_counter() - t
    t = time.perf_counter()
    d.cli("launch", "busybox", "c2", "-s", "bt")
    second = time.perf_counter() - t
    print(f"launch on btrfs: first (unpacks the image) {first:.3f}s, next {second:.3f}s")
    assert d.read("instances", "c1", "state") == "RUNNING"
    assert d.read("instances", "c1", "devices", "root", "pool") == "bt"
    assert d.read("storage-pools", "bt", "used_by").split() == ["instances/c1", "instances/c2"]
    fp = d.read("instances", "c1", "source")
    assert os.listdir(d.path("storage-pools", "bt", "volumes", "image")) == [fp]
    assert sorted(os.listdir(d.path("storage-pools", "bt", "volumes", "container"))) == \
        ["c1", "c2"]
    vol = root / "containers" / "c1"
    assert btrfsutil.is_subvolume(str(vol))
    assert btrfsutil.subvolume_info(str(vol)).parent_uuid == \
        btrfsutil.subvolume_info(str(root / "images" / fp)).uuid
    usage = int(d.read("storage-pools", "bt", "volumes", "container", "c1", "usage"))
    print(f"qgroup exclusive usage of c1 after launch: {usage} bytes")
    assert usage < 1024 * 1024  # a snapshot of the image: nothing copied

    # snapshot of a running instance, restore, delete
    d.cli("exec", "c1", "--", "sh", "-c", "echo one > /data")
    t = time.perf_counter()
    d.cli("snapshot", "c1", "s1")
    print(f"snapshot of running c1 through the CLI: {time.perf_counter() - t:.3f}s")
    snap = root / "containers-snapshots" / "c1" / "s1"
    assert btrfsutil.get_subvolume_read_only(str(snap))
    assert d.read("instances", "c1", "snapshots", "s1", "rootfs", "data") == "one"
    assert d.read("storage-pools", "bt", "volumes", "container", "c1", "snapshots") == "s1"
    d.cli("exec", "c1", "--", "sh", "-c", "echo two > /data")
    d.cli("restore", "c1", "s1")
    assert d.read("instances", "c1", "state") == "RUNNING"
    assert d.cli("exec", "c1", "--", "cat", "/data").stdout == "one\n"
    d.cli("delete", "c1/s1")
    assert not snap.exists()

    # the pool is busy while used
    with pytest.raises(OSError) as exc:
        os.rmdir(d.path("storage-pools", "bt"))
    assert exc.value.errno == errno.EBUSY
    assert "instances/c1" in d.read("error")
    d.cli("delete", "-f", "c1", "c2")
    assert sorted(p for p, _ in btrfsutil.SubvolumeIterator(str(root))) == [f"images/{fp}"]
    os.rmdir(d.path("storage-pools", "bt"))
    assert mount_count(root) == 0 and not image.exists() and not root.exists()
    assert not [b for b in loop_backing_files().values() if b.startswith(str(image))]


def test_btrfs_root_disk_size_limits_writes(loop_guard, daemon_with_busybox):
    d = daemon_with_busybox
    loop_guard.append(d.base)
    make_btrfs_pool(d)
    d.cli("launch", "busybox", "q1", "-s", "bt", "-d", "root,size=24MiB")
    assert d.read("instances", "q1", "devices", "root", "size") == "24MiB"
    result = d.cli("exec", "q1", "--", "dd", "if=/dev/zero", "of=/big", "bs=1M", "count=64",
                   "conv=fsync", check=False)
    assert result.returncode != 0, result
    assert "quota" in result.stderr.lower() or "space" in result.stderr.lower(), result.stderr
    d.cli("exec", "q1", "--", "rm", "/big")
    # the size survives a restart (applied again before every start)
    d.cli("restart", "q1", "--force")
    result = d.cli("exec", "q1", "--", "dd", "if=/dev/zero", "of=/big", "bs=1M", "count=64",
                   "conv=fsync", check=False)
    assert result.returncode != 0, result


DD_40M = ("dd", "if=/dev/zero", "of=/big", "bs=1M", "count=40")


def test_live_root_quota_and_override(loop_guard, daemon_with_busybox):
    """Issue acceptance: `config device override c1 root size=...` on a running instance of
    a btrfs pool limits its writes at once, raising it lets them through, without a
    restart; a size below the volume's usage is refused; a dir pool keeps the size and says
    it does not enforce it."""
    d = daemon_with_busybox
    loop_guard.append(d.base)
    d.cli("storage", "create", "p", "btrfs", "size=1GiB")
    d.cli("profile", "create", "onp")
    d.cli("profile", "device", "add", "onp", "root", "disk", "path=/", "pool=p")
    d.cli("launch", "busybox", "c1", "-p", "onp")
    assert d.read("instances", "c1", "state") == "RUNNING"
    pid = d.read("instances", "c1", "pid")
    assert os.listdir(d.path("instances", "c1", "devices")) == []

    out = d.cli("config", "device", "override", "c1", "root", "size=20MiB")
    assert out.stdout == "Device root overridden for c1\n" and out.stderr == ""
    assert d.read("instances", "c1", "devices", "root", "size") == "20MiB"
    assert d.read("instances", "c1", "devices", "root", "pool") == "p"
    result = d.cli("exec", "c1", "--", *DD_40M, check=False)
    assert result.returncode != 0, result
    assert "quota" in result.stderr.lower() or "space" in result.stderr.lower(), result.stderr
    again = d.cli("config", "device", "override", "c1", "root", "size=30MiB", check=False)
    assert again.returncode == 1 and "The device already exists" in again.stderr

    d.cli("config", "device", "set", "c1", "root", "size=100MiB")
    d.cli("exec", "c1", "--", *DD_40M)
    assert d.read("instances", "c1", "pid") == pid  # never restarted

    # below what the volume uses: refused, and the size stays
    refused = d.cli("config", "device", "set", "c1", "root", "size=10MiB", check=False)
    assert refused.returncode == 1
    assert "root disk of c1: size 10MiB is smaller than what volume c1 already uses" in \
        refused.stderr, refused.stderr
    assert d.read("instances", "c1", "devices", "root", "size") == "100MiB"
    d.cli("exec", "c1", "--", "rm", "/big")
    # a profile's root device resizes every instance using it: refused here too
    d.cli("config", "device", "remove", "c1", "root")
    d.cli("launch", "busybox", "c2", "-p", "onp")
    d.cli("profile", "device", "set", "onp", "root", "size=30MiB")
    for name in ("c1", "c2"):
        result = d.cli("exec", name, "--", *DD_40M, check=False)
        assert result.returncode != 0, (name, result)

    # dir pool: the size is kept, not enforced, and the CLI says so
    d.cli("launch", "busybox", "d1")
    out = d.cli("config", "device", "override", "d1", "root", "size=20MiB")
    assert "kept but not enforced: storage pool default (dir) has no quotas" in out.stderr
    assert d.read("instances", "d1", "devices", "root", "size") == "20MiB"
    d.cli("exec", "d1", "--", *DD_40M)
    d.cli("delete", "-f", "c1", "c2", "d1")
    d.cli("profile", "delete", "onp")
    d.cli("storage", "delete", "p")


def test_btrfs_pool_survives_restarts(loop_guard, daemon_with_busybox):
    d = daemon_with_busybox
    loop_guard.append(d.base)
    root = make_btrfs_pool(d)
    d.cli("launch", "busybox", "r1", "-s", "bt")
    d.cli("launch", "busybox", "r2", "-s", "bt")
    d.cli("stop", "-f", "r2")
    # SIGTERM and kill -9: the running container keeps the pool mounted; never mounted twice
    d.restart()
    assert mount_count(root) == 1
    d.kill9()
    d.restart()
    assert mount_count(root) == 1
    assert d.read("instances", "r1", "state") == "RUNNING"
    d.cli("start", "r2")
    # after a "reboot": containers stopped, pool unmounted; the daemon mounts it again
    d.cli("stop", "-f", "r1", "r2")
    d.stop()
    subprocess.run(["umount", str(root)], check=True)
    assert mount_count(root) == 0
    assert not [b for b in loop_backing_files().values() if b.startswith(str(d.data_dir))]
    d.start()
    assert mount_count(root) == 1
    d.cli("start", "r1", "r2")
    assert d.read("instances", "r2", "state") == "RUNNING"
    assert d.read("storage-pools", "bt", "driver") == "btrfs"


def test_dir_pool_and_storage_cli(loop_guard, daemon_with_busybox):
    d = daemon_with_busybox
    loop_guard.append(d.base)
    d.cli("storage", "create", "d2", "dir", "--description", "second")
    assert d.read("storage-pools", "d2", "config", "source") == \
        str(d.data_dir.resolve() / "storage-pools" / "d2")
    d.cli("storage", "create", "bt", "btrfs", "size=1GiB")
    out = d.cli("storage", "list", "-f", "csv").stdout
    assert "d2,dir," in out and "bt,btrfs," in out and "default,dir," in out
    shown = d.cli("storage", "show", "bt").stdout
    assert "driver: btrfs" in shown and "size: 1GiB" in shown
    assert d.cli("storage", "get", "bt", "size").stdout == "1GiB\n"
    result = d.cli("storage", "set", "bt", "source", "/elsewhere", check=False)
    assert result.returncode == 1 and "cannot be changed" in result.stderr
    d.cli("storage", "set", "bt", "size", "2GiB")  # a loop pool grows
    assert d.read("storage-pools", "bt", "config", "size") == "2GiB"
    assert int(d.read("storage-pools", "bt", "resources", "space_total")) > 2**30
    result = d.cli("storage", "create", "z", "lvm", check=False)
    assert result.returncode == 1 and "not supported on this host" in result.stderr
    assert "z" not in os.listdir(d.path("storage-pools"))
    result = d.cli("storage", "create", "z", "zfs", check=False)  # no /dev/zfs here
    assert result.returncode == 1 and "zfs is not supported on this host" in result.stderr
    result = d.cli("storage", "create", "z", "nosuch", check=False)
    assert result.returncode == 1 and "unknown storage driver" in result.stderr

    d.cli("launch", "busybox", "c1", "-s", "d2")
    vol = d.data_dir / "storage-pools" / "d2" / "containers" / "c1"
    assert (vol / "rootfs").is_dir()
    d.cli("snapshot", "c1", "s1")
    d.cli("exec", "c1", "--", "touch", "/later")
    d.cli("restore", "c1", "s1")
    assert d.cli("exec", "c1", "--", "ls", "/later", check=False).returncode != 0
    info = d.cli("storage", "info", "d2").stdout
    assert "driver: dir" in info and "c1" in info
    assert d.cli("storage", "delete", "d2", check=False).returncode == 1
    d.cli("delete", "-f", "c1")
    assert not vol.exists()
    d.cli("storage", "delete", "d2")
    d.cli("storage", "delete", "bt")
    assert sorted(os.listdir(d.path("storage-pools"))) == ["default"]


def test_dir_launch_takes_a_spare_made_ahead(daemon_with_busybox):
    """A dir pool copies an image ahead (``images/.FP.spare``): the next launch renames it
    into place; the spare survives a restart and goes with its image."""
    d = daemon_with_busybox
    images = d.data_dir / "storage-pools" / "default" / "images"
    d.cli("launch", "busybox", "c1")
    fp = d.read("instances", "c1", "source")
    spare = images / f".{fp}.spare"
    deadline = time.monotonic() + 120
    while not spare.is_dir() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert spare.is_dir(), sorted(os.listdir(images))
    d.restart()
    assert spare.is_dir()
    inode = spare.stat().st_ino
    d.cli("launch", "busybox", "c2")
    volume = d.data_dir / "storage-pools" / "default" / "containers" / "c2"
    assert volume.stat().st_ino == inode
    assert d.read("instances", "c2", "state") == "RUNNING"
    assert d.cli("exec", "c2", "--", "cat", "/etc/hostname").stdout == "c2\n"  # templates ran
    d.cli("delete", "-f", "c1", "c2")
    deadline = time.monotonic() + 120
    while not spare.is_dir() and time.monotonic() < deadline:
        time.sleep(0.1)
    d.cli("image", "delete", "busybox")
    assert os.listdir(images) == []


def test_dir_first_launch_unpacks_into_the_instance(daemon_with_busybox):
    """A dir pool without the image's volume unpacks the image straight into the first
    instance's volume (one unpack on the launch's path, as LXD's dir driver); the image
    volume and a spare are made afterwards in the background, and go with the image."""
    d = daemon_with_busybox
    images = d.data_dir / "storage-pools" / "default" / "images"
    d.cli("launch", "busybox", "c1")
    fp = d.read("instances", "c1", "source")
    assert f"unpacking image {fp[:12]} into the volume of c1 (pool default)" in (
        d.log_path.read_text())
    assert d.cli("exec", "c1", "--", "cat", "/etc/hostname").stdout == "c1\n"
    spare = images / f".{fp}.spare"
    deadline = time.monotonic() + 120
    while not spare.is_dir() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(os.listdir(images)) == [f".{fp}.spare", fp]
    assert (images / fp / "rootfs" / "bin" / "busybox").is_file()
    assert (images / fp).stat().st_mode & 0o777 == 0o711
    d.cli("launch", "busybox", "c2")  # the image volume is there: its spare is taken
    assert d.cli("exec", "c2", "--", "cat", "/etc/hostname").stdout == "c2\n"
    assert "into the volume of c2" not in d.log_path.read_text()
    d.cli("delete", "-f", "c1", "c2")
    d.cli("image", "delete", "busybox")
    assert os.listdir(images) == []


def test_move_between_dir_and_btrfs_pools(loop_guard, daemon_with_busybox):
    """`lxfs move c1 c1 -s POOL` moves the root volume and its snapshots across drivers."""
    d = daemon_with_busybox
    loop_guard.append(d.base)
    make_btrfs_pool(d, "bmove")
    try:
        d.cli("launch", "busybox", "m1")
        d.cli("exec", "m1", "--", "sh", "-c", "echo before > /root/f")
        d.cli("snapshot", "m1", "s0")
        d.cli("exec", "m1", "--", "sh", "-c", "echo after > /root/f")
        with pytest.raises(OSError):  # running
            d.write("instances", "m1", "pool", "bmove")
        d.cli("stop", "--force", "m1")
        d.cli("move", "m1", "m1", "-s", "bmove")
        assert d.read("instances", "m1", "pool") == "bmove"
        assert d.read("instances", "m1", "devices", "root", "pool") == "bmove"
        dir_pool = d.data_dir / "storage-pools" / "default"
        assert os.listdir(dir_pool / "containers") == []
        d.cli("start", "m1")
        assert d.cli("exec", "m1", "--", "cat", "/root/f").stdout == "after\n"
        d.cli("restore", "m1", "s0")
        assert d.cli("exec", "m1", "--", "cat", "/root/f").stdout == "before\n"
        # and back to dir
        d.cli("stop", "--force", "m1")
        d.cli("move", "m1", "m1", "-s", "default")
        d.cli("start", "m1")
        assert d.cli("exec", "m1", "--", "cat", "/root/f").stdout == "before\n"
        assert os.listdir(dir_pool / "containers") == ["m1"]
    finally:
        for name in d.instance_names():
            with contextlib.suppress(OSError):
                d.write("instances", name, "state", "kill")
            with contextlib.suppress(OSError):
                os.rmdir(d.path("instances", name))
        with contextlib.suppress(OSError):
            os.rmdir(d.path("storage-pools", "bmove"))


def test_debian_on_btrfs_copies_no_data(loop_guard, lxfs_daemon, debian_image):
    """Issue 5's acceptance on the ~200 MB Debian image: an instance is a snapshot of the
    image's subvolume, so its exclusive usage starts near zero; snapshot, copy, restore and
    delete are subvolume operations and leave nothing behind."""
    d = lxfs_daemon
    loop_guard.append(d.base)
    root = make_btrfs_pool(d, "deb", "4GiB")
    d.cli("image", "import", debian_image, "--alias", "debian", timeout=300)
    d.cli("launch", "debian", "d1", "-s", "deb", timeout=300)
    assert d.cli("exec", "d1", "--", "cat", "/etc/debian_version").stdout.strip()
    image_bytes = int(subprocess.run(["du", "-sb", str(root / "images")], capture_output=True,
                                     text=True).stdout.split()[0])
    assert image_bytes > 100_000_000
    exclusive = int(d.read("instances", "d1", "usage", "disk"))
    assert exclusive < 10_000_000, f"{exclusive} bytes exclusive: file data was copied"
    d.cli("snapshot", "d1", "s0")
    d.cli("exec", "d1", "--", "sh", "-c", "echo changed > /etc/motd")
    d.cli("copy", "d1", "d2")
    assert int(d.read("instances", "d2", "usage", "disk")) < 10_000_000
    d.cli("restore", "d1", "s0")
    assert "changed" not in d.cli("exec", "d1", "--", "cat", "/etc/motd").stdout
    for name in ("d1", "d2"):
        d.cli("delete", "--force", name)
    leftovers = subprocess.run(["btrfs", "subvolume", "list", "-o", str(root)],
                               capture_output=True, text=True).stdout
    assert "containers" not in leftovers, leftovers


def test_custom_volumes(daemon_with_busybox):
    """A custom volume: created, attached to two instances, written from one and read from
    the other, snapshotted and restored, refused deletion while attached."""
    d = daemon_with_busybox
    d.cli("storage", "volume", "create", "default", "shared")
    assert "shared" in os.listdir(d.path("storage-pools", "default", "volumes", "custom"))
    d.cli("launch", "busybox", "v1")
    d.cli("launch", "busybox", "v2")
    d.cli("storage", "volume", "attach", "default", "shared", "v1", "/srv")
    d.cli("storage", "volume", "attach", "default", "shared", "v2", "data", "/data")
    d.cli("restart", "v1")
    d.cli("restart", "v2")
    d.cli("exec", "v1", "--", "sh", "-c", "echo one > /srv/f; chown 1000 /srv/f")
    assert d.cli("exec", "v2", "--", "cat", "/data/f").stdout == "one\n"
    # stored unshifted, like root filesystems: the container's uid on disk and on the mount
    data = d.path("storage-pools", "default", "volumes", "custom", "shared", "data")
    assert (data / "f").stat().st_uid == 1000
    assert sorted(d.read("storage-pools", "default", "volumes", "custom", "shared",
                         "used_by").split()) == ["instances/v1", "instances/v2"]
    d.cli("storage", "volume", "snapshot", "default", "shared", "s0")
    d.cli("exec", "v1", "--", "sh", "-c", "echo two > /srv/f")
    r = d.cli("storage", "volume", "delete", "default", "shared", check=False)
    assert r.returncode != 0 and "used by instances/v1" in r.stderr
    d.cli("stop", "--force", "v1", "v2")
    d.cli("storage", "volume", "restore", "default", "shared", "s0")
    assert (data / "f").read_text() == "one\n"
    d.cli("storage", "volume", "copy", "default/shared", "default/shared2")
    assert (d.path("storage-pools", "default", "volumes", "custom", "shared2", "data", "f")
            .read_text()) == "one\n"
    d.cli("storage", "volume", "detach", "default", "shared", "v1")
    d.cli("storage", "volume", "detach", "default", "shared", "v2")
    d.cli("storage", "volume", "delete", "default", "shared")
    d.cli("storage", "volume", "delete", "default", "shared2")
    assert os.listdir(d.path("storage-pools", "default", "volumes", "custom")) == []


def test_storage_and_network_edit_from_stdin(daemon_with_busybox):
    """`storage edit` / `network edit` take the YAML of `show` on stdin (the editor otherwise)."""
    d = daemon_with_busybox
    shown = d.cli("storage", "show", "default").stdout
    edited = shown.replace("description: Default storage pool", "description: edited")
    d.cli("storage", "edit", "default", input=edited)
    assert d.read("storage-pools", "default", "description") == "edited"
    bad = edited.replace("config:", "config: [not, a, mapping]\nx:")
    assert d.cli("storage", "edit", "default", input=bad, check=False).returncode != 0
