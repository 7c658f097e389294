"""Copies, publishing and usage figures against real containers and the real mount."""

from __future__ import annotations

import errno
import os

import pytest

pytestmark = pytest.mark.integration


def make(d, name: str, source: str, start: bool = True) -> None:
    os.mkdir(d.path("instances", name))
    d.write("instances", name, "source", source)
    if start:
        d.write("instances", name, "state", "start")


def test_copy_instance_with_and_without_snapshots(daemon_with_busybox):
    d = daemon_with_busybox
    make(d, "a1", "busybox")
    d.write("instances", "a1", "config", "user.note", "from a1")
    os.mkdir(d.path("instances", "a1", "snapshots", "s0"))
    (d.path("instances", "a1", "rootfs", "root", "data")).write_text("a1 data\n")
    # a copy of a running instance, with its snapshots and configuration
    make(d, "a2", "instances/a1")
    assert d.read("instances", "a2", "source") == "instances/a1"
    assert d.read("instances", "a2", "config", "user.note") == "from a1"
    assert os.listdir(d.path("instances", "a2", "snapshots")) == ["s0"]
    assert d.cli("exec", "a2", "--", "cat", "/root/data").stdout == "a1 data\n"
    assert d.cli("exec", "a2", "--", "hostname").stdout.strip() == "a2"
    # --instance-only leaves the snapshots; a snapshot can be the source too
    make(d, "a3", "instances/a1 --instance-only", start=False)
    assert os.listdir(d.path("instances", "a3", "snapshots")) == []
    make(d, "a4", "instances/a1/snapshots/s0", start=False)
    assert not d.path("instances", "a4", "rootfs", "root", "data").exists()
    os.mkdir(d.path("instances", "bad"))
    with pytest.raises(OSError) as exc:
        d.write("instances", "bad", "source", "instances/nope")
    assert exc.value.errno == errno.ENOENT
    assert d.read("instances", "bad", "source") == ""


def test_publish_then_launch_shows_the_change(daemon_with_busybox):
    d = daemon_with_busybox
    make(d, "p1", "busybox")
    d.cli("exec", "p1", "--", "sh", "-c", "echo published > /root/mark")
    with pytest.raises(OSError) as exc:  # running: needs force
        d.write("instances", "p1", "publish", "alias=mine")
    assert exc.value.errno == errno.EBUSY
    d.write("instances", "p1", "state", "stop")
    d.write("instances", "p1", "publish", "alias=mine description=Mine os=custom")
    fp = d.read("instances", "p1", "publish")
    assert d.read("images", "aliases", "mine", "fingerprint") == fp
    assert d.read("images", fp, "properties", "os") == "custom"
    make(d, "p2", "mine")
    assert d.cli("exec", "p2", "--", "cat", "/root/mark").stdout == "published\n"
    assert d.cli("exec", "p2", "--", "hostname").stdout.strip() == "p2"
    # from a snapshot, with the instance running
    os.mkdir(d.path("instances", "p2", "snapshots", "s0"))
    d.write("instances", "p2", "snapshots", "s0", "publish", "alias=fromsnap compression=gzip")
    assert d.read("instances", "p2", "snapshots", "s0", "publish") == \
        d.read("images", "aliases", "fromsnap", "fingerprint")


def test_usage_and_profile_rename(daemon_with_busybox):
    d = daemon_with_busybox
    os.mkdir(d.path("profiles", "extra"))
    os.mkdir(d.path("instances", "u1"))
    d.write("instances", "u1", "profiles", "default\nextra")
    d.write("instances", "u1", "source", "busybox")
    d.write("instances", "u1", "state", "start")
    assert int(d.read("instances", "u1", "usage", "processes")) >= 1
    assert int(d.read("instances", "u1", "usage", "memory")) > 0
    assert int(d.read("instances", "u1", "usage", "cpu")) > 0
    assert int(d.read("instances", "u1", "usage", "disk")) > 100_000
    os.rename(d.path("profiles", "extra"), d.path("profiles", "renamed"))
    assert d.read("instances", "u1", "profiles").split() == ["default", "renamed"]
    assert d.read("profiles", "renamed", "used_by") == "u1"
