"""The reliability issue's findings through a real daemon: every bad input is refused at the
door with its errno and a message in the scope's ``error`` file, and leaves nothing behind.
(The same rules without a daemon: tests/test_validation_door.py.)"""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def write_errno(path: Path, value: str) -> int:
    """Write like ``echo value > path`` and return the errno (0 on success)."""
    try:
        with open(path, "w") as f:
            f.write(value + "\n")
    except OSError as exc:
        return exc.errno or 0
    return 0


def tiny_image(path: Path, metadata: str, members: int = 0, member_size: int = 0) -> Path:
    """An uncompressed image tarball; ``members`` files of ``member_size`` bytes in rootfs/."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        data = metadata.encode()
        info = tarfile.TarInfo("metadata.yaml")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        for i in range(8):  # 8 headers of 512 bytes: rootfs/ ends on a page boundary
            info = tarfile.TarInfo("rootfs" if i == 0 else f"rootfs/d{i}")
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        payload = b"x" * member_size
        for i in range(members):
            info = tarfile.TarInfo(f"rootfs/f{i:05}")
            info.size = member_size
            tf.addfile(info, io.BytesIO(payload))
    return path


def launch(d: Any, name: str = "c1", start: bool = False) -> None:
    d.cli("launch" if start else "create", "busybox", name)


def test_newline_values_do_not_reach_lxc_config(daemon_with_busybox: Any) -> None:
    d = daemon_with_busybox
    launch(d, start=False)
    inst = d.path("instances", "c1")
    assert write_errno(inst / "config" / "environment.FOO",
                       "x\nlxc.apparmor.profile = unconfined") == errno.EINVAL
    assert "control character" in d.read("instances", "c1", "error")
    assert not (inst / "config" / "environment.FOO").exists()
    os.mkdir(inst / "devices" / "data")
    assert write_errno(inst / "devices" / "data" / "type", "disk") == 0
    assert write_errno(inst / "devices" / "data" / "path",
                       "/mnt\nlxc.mount.entry = / host none bind 0 0") == errno.EINVAL
    assert not (inst / "devices" / "data" / "path").exists()


def test_empty_profiles_keep_the_root_disk_and_delete_removes_the_volume(
        daemon_with_busybox: Any) -> None:
    d = daemon_with_busybox
    launch(d)
    assert write_errno(d.path("instances", "c1", "profiles"), "") == errno.EINVAL
    assert "no root disk" in d.read("instances", "c1", "error")
    assert d.read("instances", "c1", "profiles") == "default"
    os.rmdir(d.path("instances", "c1"))
    assert os.listdir(d.path("storage-pools", "default", "volumes", "container")) == []
    assert os.listdir(d.data_dir / "storage-pools" / "default" / "containers") == []


def test_huge_stop_timeout_is_refused_and_stops_nothing(daemon_with_busybox: Any) -> None:
    d = daemon_with_busybox
    launch(d, start=True)
    state = d.path("instances", "c1", "state")
    assert write_errno(state, "stop 99999999999999999999") == errno.EINVAL
    assert "timeout" in d.read("instances", "c1", "error")
    assert d.read("instances", "c1", "state") == "RUNNING"


def test_relative_pool_source_is_refused(lxfs_daemon: Any) -> None:
    d = lxfs_daemon
    os.mkdir(d.path("storage-pools", "rel"))
    assert write_errno(d.path("storage-pools", "rel", "config", "source"), "rel-data") == 0
    assert write_errno(d.path("storage-pools", "rel", "driver"), "dir") == errno.EINVAL
    assert "absolute" in d.read("error")
    assert d.read("storage-pools", "rel", "driver") == ""  # still pending
    assert not (d.base / "rel-data").exists()  # the daemon's working directory


def test_upload_cut_short_by_enospc_registers_nothing(lxfs_daemon: Any, tmp_path: Path) -> None:
    """The upload directory and the image store on a 1 MiB filesystem: the upload fills it and
    its tail gets ENOSPC. What was written is a complete tarball (every member ends on a page
    boundary), yet it must not become an image."""
    d = lxfs_daemon
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(small)],
                   check=True)
    try:
        for name in ("images", "uploads"):
            (small / name).mkdir(mode=0o700)
            os.rmdir(d.data_dir / name)  # both empty: no image yet, no upload under way
            os.symlink(small / name, d.data_dir / name)
        metadata = "architecture: x86_64\n"
        metadata += "#" * (3584 - len(metadata) - 1) + "\n"  # header + data = one page
        image = tiny_image(tmp_path / "big.tar", metadata, members=1024, member_size=3584)
        result = subprocess.run(["cp", str(image), str(d.path("images", "big.tar"))],
                                capture_output=True, text=True)
        assert result.returncode != 0
        assert "No space left on device" in result.stderr
        assert [n for n in os.listdir(d.path("images"))
                if n not in ("aliases", "pull", "pulling")] == []
        assert "nothing was imported" in d.read("error")
        assert os.listdir(small / "uploads") == [] and os.listdir(small / "images") == []
    finally:
        for name in ("images", "uploads"):
            if (d.data_dir / name).is_symlink():
                os.unlink(d.data_dir / name)
                (d.data_dir / name).mkdir(mode=0o700)
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_property_the_listing_cannot_show_is_refused(daemon_with_busybox: Any,
                                                     tmp_path: Path) -> None:
    d = daemon_with_busybox
    image = tiny_image(tmp_path / "odd.tar", "architecture: x86_64\nproperties:\n  a/b: x\n")
    result = d.cli("image", "import", image, check=False)
    assert result.returncode == 1 and "property name" in result.stderr
    listing = d.cli("image", "list", "--format", "csv")
    assert listing.stdout.count("\n") == 1  # busybox alone


def test_image_over_max_unpacked_size_is_refused(lxfs_daemon: Any,
                                                 busybox_image: Path) -> None:
    """As LXD, the import reads the metadata only; the launch unpacks, and stops once the
    files pass ``images.max_unpacked_size``: no instance, no volume, the reason told."""
    d = lxfs_daemon
    assert write_errno(d.path("config", "images.max_unpacked_size"), "1MiB") == 0
    d.cli("image", "import", busybox_image, "--alias", "busybox")
    result = d.cli("launch", "busybox", "c1", check=False, timeout=120)
    assert result.returncode == 1
    assert "images.max_unpacked_size" in result.stderr
    assert d.instance_names() == []
    pool = d.data_dir / "storage-pools" / "default"
    assert [p for p in pool.rglob("*") if p.is_file()] == []
    assert d.read("environment", "server_pid")
    os.unlink(d.path("config", "images.max_unpacked_size"))  # back to the default (2GiB)
    d.cli("create", "busybox", "c1", timeout=120)


def test_foreign_architecture_is_refused_at_launch(lxfs_daemon: Any, tmp_path: Path) -> None:
    d = lxfs_daemon
    image = tiny_image(tmp_path / "s390x.tar", "architecture: s390x\n")
    d.cli("image", "import", image, "--alias", "mainframe")  # as LXD: the import is fine
    os.mkdir(d.path("instances", "c1"))
    assert write_errno(d.path("instances", "c1", "source"), "mainframe") == errno.EINVAL
    message = d.read("instances", "c1", "error")
    assert "s390x" in message and "x86_64" in message
    assert d.read("instances", "c1", "source") == ""
    assert os.listdir(d.path("storage-pools", "default", "volumes", "container")) == []


def test_restore_error_is_one_line_in_the_log(daemon_with_busybox: Any) -> None:
    d = daemon_with_busybox
    launch(d)
    forged = "lxfs: ERROR: forged line"
    assert write_errno(d.path("instances", "c1", "restore"), f"nosuch\n{forged}") == \
        errno.ENOENT
    message = d.read("instances", "c1", "error")
    assert "\n" not in message and "nosuch\\n" in message
    log = d.log_path.read_text()
    assert not any(line.startswith(forged) for line in log.splitlines())


def test_daemon_survives_and_cli_has_no_traceback(daemon_with_busybox: Any) -> None:
    d = daemon_with_busybox
    bad = d.cli("config", "set", "limits.memory", "99999999999EiB", check=False)  # server key
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    launch(d)
    bad = d.cli("config", "set", "c1", "limits.cpu", "1-0", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("Error: ") and bad.stderr.count("\n") == 1
    assert shutil.which("lxc-ls") and d.read("environment", "server_pid")


def test_a_key_set_again_right_after_unset_or_refusal(lxfs_daemon: Any) -> None:
    """Unsetting a key (an empty write) or a refused first value drops its entry from the
    kernel asynchronously; writing the key again at once must still work (it met ENOENT
    while the kernel held the old entry)."""
    d = lxfs_daemon
    for i in range(150):
        d.write("config", "user.race", f"v{i}")
        d.write("config", "user.race", "")
    assert not d.path("config", "user.race").exists()
    for _ in range(50):
        with pytest.raises(OSError) as exc:
            d.write("config", "images.remote_cache_expiry", "soon")
        assert exc.value.errno == errno.EINVAL
        d.write("config", "images.remote_cache_expiry", "3")
        d.write("config", "images.remote_cache_expiry", "")
