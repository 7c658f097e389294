"""A slow disk under ``instances/NAME/rootfs/`` holds up nobody else on the mount.

The instance's pool is a btrfs loop file, and lxfsd is moved into a blkio cgroup that throttles
reads from that loop device (cgroup v1 ``blkio.throttle.read_bps_device``, or ``io.max`` on a
unified host): the throttle applies to the process doing the I/O, the daemon. The big file's
pages are dropped from the page cache (``POSIX_FADV_DONTNEED`` on that file only), then while
one reader reads it through the mount (seconds), other readers ``cat instances/*/state`` again
and again. Those reads must all finish while the big read is still under way, each of them
quickly: with reads of host files on the event loop, every state read waits behind preads that
wait for the throttled device.

The cgroup, the pool's mount and its loop device are removed at the end, even on failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import mmap
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BIG_MIB = 12  # size of the slowly read file
READ_BPS = 2 << 20  # the throttle: the big file takes about 6 s
STATE_ROUNDS = 20  # `cat instances/*/state` rounds that must finish during the big read
STATE_READ_BOUND = 2.0  # seconds: generous, an unblocked round takes milliseconds
CGROUP_V1 = Path("/sys/fs/cgroup/blkio")
CGROUP_V2 = Path("/sys/fs/cgroup")


def loop_devices() -> dict[str, str]:
    """Attached loop devices and their backing files."""
    out = subprocess.run(["losetup", "--list", "--json"], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        return {}
    return {d["name"]: d.get("back-file") or "" for d in json.loads(out.stdout)["loopdevices"]}


@pytest.fixture
def pool_guard() -> Iterator[list[Path]]:
    """Request it before the daemon: after the daemons are gone, unmount what is left under the
    listed directories and detach the loop devices of files there."""
    bases: list[Path] = []
    yield bases
    for base in bases:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f if line.split()[4].startswith(f"{base}/")]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        for device, backing in loop_devices().items():
            if backing.startswith(f"{base}/"):
                subprocess.run(["losetup", "-d", device], capture_output=True)
    left = [b for b in loop_devices().values() if any(b.startswith(f"{x}/") for x in bases)]
    assert not left, f"loop devices left behind: {left}"


@contextlib.contextmanager
def read_throttle(device: str, bps: int, pid: int) -> Iterator[None]:
    """Meanwhile, process ``pid`` (all its threads) reads at most ``bps`` bytes a second from
    ``device``: it is moved into a cgroup of its own with that limit (cgroup v1 blkio, or io on
    a unified host, where the io controller is enabled below the root and left so), and back
    where it was at the end."""
    rdev = os.stat(device).st_rdev
    dev = f"{os.major(rdev)}:{os.minor(rdev)}"
    if (CGROUP_V1 / "blkio.throttle.read_bps_device").exists():
        root, controller = CGROUP_V1, "blkio"
        limit_file, limit = "blkio.throttle.read_bps_device", f"{dev} {bps}"
    elif "io" in (CGROUP_V2 / "cgroup.controllers").read_text().split():
        root, controller = CGROUP_V2, ""
        limit_file, limit = "io.max", f"{dev} rbps={bps}"
        (CGROUP_V2 / "cgroup.subtree_control").write_text("+io\n")
    else:
        pytest.fail("no blkio (cgroup v1) or io (cgroup v2) controller to throttle reads with",
                    pytrace=False)
    home = root
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers.split(",") == [controller] or (not controller and not controllers):
                home = root / path.lstrip("/")
    group = root / f"lxfs-test-slowio-{os.getpid()}"
    group.mkdir()
    try:
        (group / limit_file).write_text(f"{limit}\n")
        (group / "cgroup.procs").write_text(f"{pid}\n")
        yield
    finally:
        try:
            (home / "cgroup.procs").write_text(f"{pid}\n")
        except ProcessLookupError:
            pass  # gone
        for _ in range(50):  # an exiting process can stay listed a moment
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        else:
            group.rmdir()


def cached_pages(path: Path) -> int:
    """How many pages of the file are in the page cache (mincore: touches none of them)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
        start = ctypes.c_char.from_buffer(m)  # a private mapping: no page is read
        try:
            if libc.mincore(ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(size),
                            vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            del start  # the mapping cannot close while exported
    return sum(v & 1 for v in vec)


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class BigRead(threading.Thread):
    """Reads a file to its end like ``cat``, keeping count of its progress."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="big read", daemon=True)
        self.path = path
        self.done = 0
        self.digest = hashlib.sha256()
        self.started_at = 0.0
        self.finished_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                while chunk := os.read(fd, 128 << 10):
                    self.digest.update(chunk)
                    self.done += len(chunk)
            finally:
                os.close(fd)
        except BaseException as exc:  # reported by the test
            self.error = exc
        self.finished_at = time.monotonic()


def test_slow_rootfs_read_does_not_hold_up_state_reads(pool_guard, daemon_with_busybox):
    d = daemon_with_busybox
    pool_guard.append(d.base)
    os.mkdir(d.path("storage-pools", "slow"))
    d.write("storage-pools", "slow", "config", "size", "1GiB")
    d.write("storage-pools", "slow", "driver", "btrfs")
    image = d.read("storage-pools", "slow", "config", "source")
    devices = [dev for dev, backing in loop_devices().items() if backing == image]
    assert len(devices) == 1, f"loop device of {image}: {devices}"
    d.cli("create", "busybox", "c1", "-s", "slow")
    d.cli("create", "busybox", "c2")

    data = os.urandom(BIG_MIB << 20)
    big = d.path("instances", "c1", "rootfs", "big")
    big.write_bytes(data)
    on_disk = d.data_dir.resolve() / "storage-pools" / "slow" / "containers" / "c1" / "rootfs"
    assert (on_disk / "big").stat().st_size == len(data)
    for path in (on_disk / "big", big):  # the pool's pages, and the mount's
        drop_from_page_cache(path)
    assert cached_pages(on_disk / "big") == 0, "the big file is still in the page cache"

    with read_throttle(devices[0], READ_BPS, d.proc.pid):
        reader = BigRead(big)
        reader.start()
        deadline = time.monotonic() + 30
        while not reader.done and reader.finished_at is None:
            assert time.monotonic() < deadline, "the big read did not start"
            time.sleep(0.01)

        rounds: list[tuple[float, int]] = []  # (seconds, bytes of the big read done by then)
        while reader.finished_at is None and len(rounds) < STATE_ROUNDS:
            start = time.monotonic()
            out = subprocess.run(["sh", "-c", f"cat {d.mount}/instances/*/state"],
                                 capture_output=True, text=True, timeout=60)
            took = time.monotonic() - start
            assert out.returncode == 0, out.stderr
            assert out.stdout.split() == ["STOPPED", "STOPPED"]
            rounds.append((took, reader.done))
        progress_at_last_round = reader.done
        reader.join(120)
        assert not reader.is_alive(), "the big read did not finish within 120 s"

    assert reader.error is None, reader.error
    assert reader.digest.digest() == hashlib.sha256(data).digest()
    big_read = reader.finished_at - reader.started_at
    slowest = max((t for t, _ in rounds), default=0.0)
    print(f"{len(rounds)} state rounds, slowest {slowest:.3f}s; the big read was at "
          f"{progress_at_last_round >> 10} of {len(data) >> 10} KiB after the last, and took "
          f"{big_read:.1f}s")
    assert len(rounds) == STATE_ROUNDS, (
        f"only {len(rounds)} of {STATE_ROUNDS} `cat instances/*/state` rounds finished before "
        f"the slow read of {len(data) >> 20} MiB did: {rounds}")
    assert progress_at_last_round < len(data)
    slow = [t for t, _ in rounds if t > STATE_READ_BOUND]
    assert not slow, f"state rounds slower than {STATE_READ_BOUND}s: {slow}"
