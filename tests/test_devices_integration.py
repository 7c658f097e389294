"""Devices against real containers: host directory binds (read-only, shifted), device nodes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def add_device(d, owner: tuple[str, ...], name: str, **keys: str) -> None:
    base = d.path(*owner, "devices", name)
    os.mkdir(base)
    d.write(*owner, "devices", name, "type", keys.pop("type"))
    for key, value in keys.items():
        d.write(*owner, "devices", name, key, value)


@pytest.fixture
def host_dir():
    path = Path(f"/var/tmp/lxfs-share-{os.getpid()}")
    path.mkdir()
    (path / "hello").write_text("from the host\n")
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_readonly_bind(daemon_with_busybox, host_dir):
    d = daemon_with_busybox
    os.mkdir(d.path("instances", "c1"))
    add_device(d, ("instances", "c1"), "share", type="disk", source=str(host_dir),
               path="/mnt/share", readonly="true")
    d.write("instances", "c1", "source", "busybox")
    d.write("instances", "c1", "state", "start")
    assert d.cli("exec", "c1", "--", "cat", "/mnt/share/hello").stdout == "from the host\n"
    r = d.cli("exec", "c1", "--", "touch", "/mnt/share/new", check=False)
    assert r.returncode != 0
    assert not (host_dir / "new").exists()
    assert d.read("instances", "c1", "expanded", "devices", "share", "readonly") == "true"


def test_shifted_bind_maps_host_uids(daemon_with_busybox, host_dir):
    d = daemon_with_busybox
    os.mkdir(d.path("instances", "c1"))
    add_device(d, ("instances", "c1"), "share", type="disk", source=str(host_dir),
               path="/mnt/share", shift="true")
    d.write("instances", "c1", "source", "busybox")
    d.write("instances", "c1", "state", "start")
    # host root's file is the container root's file
    assert d.cli("exec", "c1", "--", "stat", "-c", "%u", "/mnt/share/hello").stdout.strip() \
        == "0"
    d.cli("exec", "c1", "--", "sh", "-c", "echo in > /mnt/share/made; "
          "chown 1000:1000 /mnt/share/made")
    st = (host_dir / "made").stat()
    assert (st.st_uid, st.st_gid) == (1000, 1000)


def test_unshifted_bind_shows_nobody(daemon_with_busybox, host_dir):
    d = daemon_with_busybox
    os.mkdir(d.path("instances", "c1"))
    add_device(d, ("instances", "c1"), "share", type="disk", source=str(host_dir),
               path="/mnt/share")
    d.write("instances", "c1", "source", "busybox")
    d.write("instances", "c1", "state", "start")
    assert d.cli("exec", "c1", "--", "stat", "-c", "%u", "/mnt/share/hello").stdout.strip() \
        == "65534"


def test_unix_char_device_and_none_mask(daemon_with_busybox):
    d = daemon_with_busybox
    os.mkdir(d.path("profiles", "withnull"))
    add_device(d, ("profiles", "withnull"), "mynull", type="unix-char", source="/dev/null",
               path="/dev/mynull")
    d.cli("launch", "busybox", "c1", "-p", "default", "-p", "withnull")
    assert d.cli("exec", "c1", "--", "sh", "-c", "echo x > /dev/mynull && echo ok").stdout \
        == "ok\n"
    d.cli("stop", "--force", "c1")
    # a `none` device of the same name masks the profile's device
    add_device(d, ("instances", "c1"), "mynull", type="none")
    assert "mynull" not in os.listdir(d.path("instances", "c1", "expanded", "devices"))
    d.cli("start", "c1")
    assert d.cli("exec", "c1", "--", "test", "-e", "/dev/mynull", check=False).returncode != 0


def test_missing_source_is_a_clear_start_error(daemon_with_busybox):
    d = daemon_with_busybox
    os.mkdir(d.path("instances", "c1"))
    add_device(d, ("instances", "c1"), "gone", type="disk", source="/nonexistent/dir",
               path="/mnt")
    d.write("instances", "c1", "source", "busybox")
    with pytest.raises(OSError):
        d.write("instances", "c1", "state", "start")
    assert "/nonexistent/dir does not exist" in d.read("instances", "c1", "error")


def test_disk_hotplug_and_next_start_notice(daemon_with_busybox, host_dir):
    """Disk binds are plugged into a running container (and out of it); a device node change
    waits for the next start and says so."""
    d = daemon_with_busybox
    d.cli("launch", "busybox", "c1")
    add_device(d, ("instances", "c1"), "share", type="disk", source=str(host_dir),
               path="/mnt/share", readonly="true")
    assert d.read("instances", "c1", "error") == ""
    assert d.cli("exec", "c1", "--", "cat", "/mnt/share/hello").stdout == "from the host\n"
    assert d.cli("exec", "c1", "--", "touch", "/mnt/share/x", check=False).returncode != 0
    # re-plugged writable and shifted when its keys change
    d.write("instances", "c1", "devices", "share", "readonly", "false")
    d.write("instances", "c1", "devices", "share", "shift", "true")
    d.cli("exec", "c1", "--", "touch", "/mnt/share/made")
    assert (host_dir / "made").stat().st_uid == 0
    os.rmdir(d.path("instances", "c1", "devices", "share"))
    assert d.cli("exec", "c1", "--", "test", "-e", "/mnt/share/hello",
                 check=False).returncode != 0
    add_device(d, ("instances", "c1"), "n", type="unix-char", path="/dev/mynull",
               major="1", minor="3")
    assert "apply at the next start" in d.read("instances", "c1", "error")
    d.cli("restart", "c1")
    assert d.cli("exec", "c1", "--", "test", "-c", "/dev/mynull").returncode == 0


def test_paths_with_spaces_stay_one_field(daemon_with_busybox):
    """A space in a disk's source or path is escaped in the LXC mount entry (getmntent's
    \\040): the bind lands where asked, and a path cannot add fields or mount options."""
    d = daemon_with_busybox
    host = Path(f"/var/tmp/lxfs share {os.getpid()}")
    host.mkdir()
    try:
        (host / "hello").write_text("spaced\n")
        os.mkdir(d.path("instances", "c1"))
        add_device(d, ("instances", "c1"), "share", type="disk", source=str(host),
                   path="/mnt/my share none bind,rw 0 0", readonly="true")
        d.write("instances", "c1", "source", "busybox")
        d.write("instances", "c1", "state", "start")
        where = "/mnt/my share none bind,rw 0 0/hello"
        assert d.cli("exec", "c1", "--", "cat", where).stdout == "spaced\n"
        r = d.cli("exec", "c1", "--", "touch", "/mnt/my share none bind,rw 0 0/new",
                  check=False)
        assert r.returncode != 0 and not (host / "new").exists()  # still read-only
    finally:
        d.write("instances", "c1", "state", "kill")
        shutil.rmtree(host)
