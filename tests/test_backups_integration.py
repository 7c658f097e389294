"""Instance backups in LXD 5.0's format: ``lxfs export``/``lxfs import``, the mount's
``instances/NAME/backups/`` and tarballs copied into ``instances/``, REST with the real
``lxc`` client, btrfs's optimized format, LXD-made backups, and bad input."""

from __future__ import annotations

import errno
import os
import tarfile
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration


def make(d, name: str, source: str = "busybox", start: bool = False) -> None:
    os.mkdir(d.path("instances", name))
    d.write("instances", name, "source", source)
    if start:
        d.write("instances", name, "state", "start")


def members(path: Path) -> list[str]:
    with tarfile.open(path) as tf:
        return tf.getnames()


def index_of(path: Path) -> dict:
    with tarfile.open(path) as tf:
        f = tf.extractfile("backup/index.yaml")
        assert f is not None
        return yaml.safe_load(f.read())


def with_two_snapshots(d, name: str) -> None:
    make(d, name)
    root = d.path("instances", name, "rootfs", "root")
    (root / "data").write_text("one\n")
    os.mkdir(d.path("instances", name, "snapshots", "s1"))
    (root / "data").write_text("two\n")
    os.mkdir(d.path("instances", name, "snapshots", "s2"))
    (root / "data").write_text("three\n")
    d.write("instances", name, "config", "user.note", "kept")


def test_cli_round_trip_with_snapshots_and_instance_only(daemon_with_busybox, tmp_path):
    d = daemon_with_busybox
    with_two_snapshots(d, "b1")
    out = tmp_path / "b1.tar.gz"
    d.cli("export", "b1", str(out))
    names = members(out)
    assert names[0] == "backup/index.yaml"
    assert "backup/container/rootfs/root/data" in names
    assert "backup/container/backup.yaml" in names
    assert "backup/snapshots/s1/rootfs/root/data" in names
    index = index_of(out)
    assert index["name"] == "b1" and index["backend"] == "dir" and index["pool"] == "default"
    assert index["snapshots"] == ["s1", "s2"] and index["optimized"] is False
    assert index["config"]["container"]["config"]["user.note"] == "kept"
    assert os.listdir(d.path("instances", "b1", "backups")) == ["create"]  # removed again
    d.cli("import", str(out), "b2")
    assert d.read("instances", "b2", "config", "user.note") == "kept"
    assert sorted(os.listdir(d.path("instances", "b2", "snapshots"))) == ["s1", "s2"]
    assert d.path("instances", "b2", "snapshots", "s1", "rootfs", "root", "data"
                  ).read_text() == "one\n"
    d.write("instances", "b2", "state", "start")
    assert d.cli("exec", "b2", "--", "cat", "/root/data").stdout == "three\n"
    # --instance-only, xz
    only = tmp_path / "only.tar.xz"
    d.cli("export", "b1", str(only), "--instance-only", "--compression", "xz")
    assert not any(n.startswith("backup/snapshots") for n in members(only))
    d.cli("import", str(only), "b3")
    assert os.listdir(d.path("instances", "b3", "snapshots")) == []
    # a name that exists
    r = d.cli("import", str(only), "b3", check=False)
    assert r.returncode != 0 and "already exists" in r.stderr
    # the backup's own name, taken: refused
    r = d.cli("import", str(only), check=False)
    assert r.returncode != 0 and "already exists" in (r.stderr + d.read("error"))
