"""Every bad input is refused at the door: values checked for type and range, and newline-free
where they reach config files (the reliability issue's findings, one test each, without a
daemon). The same findings through a real daemon: tests/test_validation_door_integration.py."""

from __future__ import annotations

import errno
import io
import logging
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from lxfs_plugins import storage_btrfs, storage_dir
from lxfs_plugins.network.config import NIC

from lxfs import images, names
from lxfs.cli import main
from lxfs.config_schema import Schema, parse_size
from lxfs.devices import DeviceTypes
from lxfs.errors import InvalidArgument
from lxfs.plugins import plugin_manager
from lxfs.storage import Pool


def schema() -> Schema:
    """The schema in force: the core's keys and the built-in plugins'."""
    return Schema(k for keys in plugin_manager().hook.lxfs_config_keys() for k in keys)


def device_types() -> DeviceTypes:
    return DeviceTypes(t for types in plugin_manager().hook.lxfs_device_types() for t in types)


# --- values that reach LXC's config ---------------------------------------------------------


@pytest.mark.parametrize("key,value", [
    ("environment.FOO", "x\nlxc.apparmor.profile = unconfined"),
    ("environment.FOO", "x\rlxc.cap.drop ="),
    ("image.lxfs.halt_signal", "SIGPWR\nlxc.init.cmd = /bin/sh"),
    ("limits.memory", "64MiB\n"),
])
def test_newline_in_a_single_line_key_is_refused(key: str, value: str) -> None:
    with pytest.raises(InvalidArgument, match="control character"):
        schema().validate_instance_key(key, value)


@pytest.mark.parametrize("key", ["environment.A=B", "environment.A B", "environment.A\nlxc.x",
                                 "user.a\tb"])
def test_key_names_cannot_break_a_config_line(key: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid key name"):
        schema().validate_instance_key(key, "1")


@pytest.mark.parametrize("key,value", [
    ("raw.lxc", "lxc.cgroup.pids.max = 10\nlxc.cgroup.pids.max = 11"),
    ("user.user-data", "#cloud-config\npackages: [vim]\n"),
    ("raw.idmap", "both 1000 1000\nuid 50-60 500-510"),
])
def test_multiline_keys_keep_their_lines(key: str, value: str) -> None:
    schema().validate_instance_key(key, value)


@pytest.mark.parametrize("device", [
    {"type": "disk", "source": "/srv", "path": "/mnt\nlxc.mount.entry = / x none bind 0 0"},
    {"type": "disk", "source": "/srv\n", "path": "/mnt"},
    {"type": "unix-char", "path": "/dev/x\nlxc.cap.drop ="},
    {"type": "nic", "name": "eth0\nlxc.net.1.type = phys"},
    {"type": "disk", "user.note": "a\nb"},
])
def test_device_values_are_one_line(device: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument, match="control character"):
        device_types().validate("d", device, partial=True)


# --- types and ranges -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["16EiB", "99999999999999999999", "8.1EiB",
                                   "9223372036854775808"])
def test_memory_above_int64_is_refused(value: str) -> None:
    with pytest.raises(InvalidArgument):
        schema().validate_instance_key("limits.memory", value)


def test_sizes_are_exact_and_bounded() -> None:
    assert parse_size("9007199254740993") == 9007199254740993  # no float rounding
    with pytest.raises(InvalidArgument, match="too large"):
        parse_size("8EiB")
    assert parse_size("7EiB") == 7 * 2**60


@pytest.mark.parametrize("value", ["1-0", "0-1,3-2", "0,,1", "٠"])
def test_cpu_sets_go_upwards(value: str) -> None:
    with pytest.raises(InvalidArgument):
        schema().validate_instance_key("limits.cpu", value)


@pytest.mark.parametrize("key,value", [
    ("limits.processes", "1_000"), ("limits.processes", " 10"), ("limits.processes", "٣"),
    ("limits.processes", str(2**63)), ("limits.processes", "99999999"),
    ("boot.host_shutdown_timeout", "99999999999999999999"),
    ("boot.autostart.priority", "+1"), ("limits.memory", "1_0%"), ("limits.memory", "nan%"),
    ("limits.cpu.allowance", "25ms/5000ms"), ("security.idmap.size", "65536.0"),
])
def test_integers_are_plain_decimal_within_range(key: str, value: str) -> None:
    with pytest.raises(InvalidArgument):
        schema().validate_instance_key(key, value)


@pytest.mark.parametrize("key,value", [
    ("readonly", "maybe"), ("shift", "2"), ("required", "yes please"), ("recursive", ""),
    ("propagation", "sideways"), ("limits.read", "fast"),
])
def test_disk_keys_have_types(key: str, value: str) -> None:
    with pytest.raises(InvalidArgument):
        device_types().validate("d", {"type": "disk", key: value}, partial=True)


@pytest.mark.parametrize("key,value", [
    ("major", "x"), ("minor", str(2**20)), ("uid", "-1"), ("mode", "0999"), ("mode", "rw"),
])
def test_unix_device_numbers_are_numbers(key: str, value: str) -> None:
    with pytest.raises(InvalidArgument):
        device_types().validate("d", {"type": "unix-char", key: value}, partial=True)


@pytest.mark.parametrize("key,value", [
    ("hwaddr", "00:16:3e:00:00:01\n"), ("mtu", "12"), ("ipv4.address", "10.0.0.300"),
    ("name", "a/b"), ("nictype", "phys"), ("network", "br0\n"),
])
def test_nic_values_are_checked_as_written(key: str, value: str) -> None:
    with pytest.raises(InvalidArgument):
        NIC.validate("eth0", {"type": "nic", key: value}, True)


def test_good_device_values_pass() -> None:
    types = device_types()
    types.validate("d", {"type": "disk", "source": "/srv", "path": "/mnt", "readonly": "yes",
                         "propagation": "rslave", "limits.read": "20iops"}, partial=False)
    types.validate("d", {"type": "unix-char", "major": "1", "minor": "3", "mode": "0666",
                         "uid": "1000"}, partial=True)


@pytest.mark.parametrize("value,ok", [
    ("[::]:8443", True), ("0.0.0.0:8443", True), (":8443", True), ("10.0.0.1", True),
    ("::", True), ("lxfs.example.org:8443", True), ("[fd42::1]", True),
    ("anything at all", False), ("10.0.0.1:99999", False), ("host:", False), ("[::1", False),
    ("a..b", False), ("", False), ("-bad-:1", False), ("10.0.0.1:0", False),
])
def test_https_address_is_an_address(value: str, ok: bool) -> None:
    if ok:
        schema().validate_server_key("core.https_address", value)
    else:
        with pytest.raises(InvalidArgument):
            schema().validate_server_key("core.https_address", value)


# --- storage pools --------------------------------------------------------------------------


@pytest.mark.parametrize("driver", [storage_dir.DirDriver, storage_btrfs.BtrfsDriver])
def test_relative_pool_source_is_refused(driver: type, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()  # a relative source that exists in the working directory
    backend = driver(Pool("p", driver.name, {"source": "here"}), tmp_path / "data")
    with pytest.raises(InvalidArgument, match="absolute"):
        backend.fill_defaults()


# --- images ---------------------------------------------------------------------------------


def _image(tmp_path: Path, metadata: str, files: dict[str, bytes] | None = None,
           compress: str = "gz") -> Path:
    out = tmp_path / f"image.tar.{compress}"
    with tarfile.open(out, f"w:{compress}") as tf:
        for name, data in {"metadata.yaml": metadata.encode(), **(files or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("rootfs")
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
    return out


def test_image_bomb_refused_at_unpack_without_writing_it_all(tmp_path: Path) -> None:
    """As LXD, the import reads the metadata only; the unpack counts the files' sizes as it
    goes and stops once they pass ``images.max_unpacked_size``, leaving nothing."""
    bomb = _image(tmp_path, "architecture: x86_64\n",
                  {f"rootfs/zero{i}": b"\0" * (8 << 20) for i in range(8)})
    assert bomb.stat().st_size < 1 << 20  # 64 MiB of zeros compress to almost nothing
    assert images.classify_upload(bomb) == "unified"
    assert images.inspect_image(bomb).architecture == "x86_64"
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    with pytest.raises(images.ImageTooLarge, match="images.max_unpacked_size"):
        images.unpack_image(bomb, None, volumes / "vol", max_unpacked=32 << 20)
    xz = _image(tmp_path, "architecture: x86_64\n", {"rootfs/zero": b"\0" * (40 << 20)}, "xz")
    with pytest.raises(images.ImageTooLarge):
        images.unpack_image(xz, None, volumes / "vol", max_unpacked=32 << 20)
    assert list(volumes.iterdir()) == []
    images.unpack_image(bomb, None, volumes / "vol", max_unpacked=65 << 20)
    assert (volumes / "vol/rootfs/zero7").stat().st_size == 8 << 20


def test_split_squashfs_rootfs_counts_too(tmp_path: Path) -> None:
    meta = tmp_path / "meta.tar"
    with tarfile.open(meta, "w") as tf:
        data = b"architecture: x86_64\n"
        info = tarfile.TarInfo("metadata.yaml")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(b"\0" * (4 << 20))
    rootfs = tmp_path / "rootfs.squashfs"
    subprocess.run(["mksquashfs", str(tree), str(rootfs), "-quiet", "-noappend"], check=True,
                   stdout=subprocess.DEVNULL)
    assert images.inspect_image(meta, rootfs).split
    with pytest.raises(images.ImageTooLarge):
        images.unpack_image(meta, rootfs, tmp_path / "vol", max_unpacked=(4 << 20) + 20)
    assert not (tmp_path / "vol").exists()
    images.unpack_image(meta, rootfs, tmp_path / "vol", max_unpacked=(4 << 20) + len(data))


@pytest.mark.parametrize("properties", [
    "  a/b: slash", "  '': empty", "  '..': dots", "  \"x\\ny\": newline",
    f"  {'k' * 256}: long", "  description: \"two\\nlines\"",
    "  description: \"\\e[2Jcleared\"",
])
def test_image_properties_the_listing_cannot_show_are_refused(tmp_path: Path,
                                                              properties: str) -> None:
    image = _image(tmp_path, f"architecture: x86_64\nproperties:\n{properties}\n")
    with pytest.raises(images.ImageError, match="property"):
        images.inspect_image(image)


def test_host_architectures_as_lxd() -> None:
    assert images.host_architectures("x86_64") == ["x86_64", "i686"]
    assert images.host_architectures("amd64") == ["x86_64", "i686"]
    assert images.host_architectures("s390x") == ["s390x"]


# --- messages: one line in error files and the log ------------------------------------------


def test_error_messages_are_escaped() -> None:
    assert names.escape_controls("snapshot 'a\nb' of c1 not found") == \
        "snapshot 'a\\nb' of c1 not found"
    assert names.escape_controls("ok: é ü") == "ok: é ü"
    assert "\x1b" not in names.escape_controls("\x1b[31mred")


# --- the CLI --------------------------------------------------------------------------------


@pytest.fixture
def mnt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "lxfs"
    (root / "environment").mkdir(parents=True)
    (root / "environment" / "server_pid").write_text("1\n")
    (root / "images" / "aliases").mkdir(parents=True)
    (root / "instances").mkdir()
    monkeypatch.setenv("LXFS_MOUNT", str(root))
    monkeypatch.delenv("LXFS_DEBUG", raising=False)
    return root


@pytest.mark.parametrize("args", [["image", "list"], ["list"], ["config", "show"]])
def test_cli_daemon_dying_mid_command_is_one_line(mnt: Path, args: list[str],
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    real_scandir = os.scandir

    def dead(path: object) -> object:  # the daemon died after the mount check
        raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN), str(path))

    monkeypatch.setattr(os, "scandir", dead)
    monkeypatch.setattr(os, "listdir", dead)
    real_open = open

    def dead_open(path: object, *a: object, **kw: object) -> object:
        if str(path).startswith(str(mnt)) and "server_pid" not in str(path):
            dead(path)
        return real_open(path, *a, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", dead_open)
    try:
        code = main(args)
    finally:
        monkeypatch.setattr(os, "scandir", real_scandir)
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "stopped answering" in err


def test_cli_unexpected_error_is_one_line(mnt: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from lxfs.cli import images as cli_images

    def broken(_args: object) -> int:
        raise ValueError("bad\nvalue")

    monkeypatch.setattr(cli_images, "cmd_list", broken)
    code = main(["image", "list"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("Error: internal error: ValueError")
    assert "Traceback" not in err


def test_log_line_of_an_error_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    from lxfs.server import Server

    fake = Server.__new__(Server)
    fake.errors = {}
    with caplog.at_level(logging.ERROR, logger="lxfs"):
        Server.set_error(fake, "c1", "snapshot c1/a\nlxfs: forged line not found")
    assert "\n" not in caplog.records[-1].getMessage()
    assert "\n" not in fake.errors["c1"]
