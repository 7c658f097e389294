"""Instance backups in LXD 5.0's format: ``lxfs export``/``lxfs import``, the mount's
``instances/NAME/backups/`` and tarballs copied into ``instances/``, REST with the real
``lxc`` client, btrfs's optimized format, LXD-made backups, and bad input."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from test_full_disk_integration import small_daemon  # noqa: F401 - a fixture
from test_recovery_integration import check
from test_rest_instances_integration import api, lxc, raw, succeeds, wait
from test_storage_integration import loop_guard, make_btrfs_pool  # noqa: F401 - a fixture
from test_storage_zfs import fake, pool  # noqa: F401 - fixtures

from lxfs.errors import InvalidArgument

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
    # a running instance is backed up as it runs (as LXD)
    d.cli("exec", "b2", "--", "sh", "-c", "echo live > /root/live")
    running = tmp_path / "b2.tar.gz"
    d.cli("export", "b2", str(running))
    d.cli("import", str(running), "b5")
    assert d.path("instances", "b5", "rootfs", "root", "live").read_text() == "live\n"
    # backups follow their instance's renames, and go with it
    os.mkdir(d.path("instances", "b5", "backups", "kept"))
    os.rename(d.path("instances", "b5"), d.path("instances", "b6"))
    assert sorted(os.listdir(d.path("instances", "b6", "backups"))) == ["create", "kept"]
    assert index_of(d.path("instances", "b6", "backups", "kept", "export"))["name"] == "b5"
    status, doc, _ = api(d, "GET", "/1.0/instances/b6?recursion=1")
    assert [b["name"] for b in doc["metadata"]["backups"]] == ["kept"]
    d.cli("delete", "b6")
    assert not (d.data_dir / "instance-data" / "b6").exists()
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


def test_mount_backups_directory_and_import_by_copy(daemon_with_busybox, tmp_path):
    d = daemon_with_busybox
    with_two_snapshots(d, "m1")
    backups = d.path("instances", "m1", "backups")
    os.mkdir(backups / "b0")  # a backup with the defaults: snapshots, gzip
    assert sorted(os.listdir(backups)) == ["b0", "create"]
    assert d.read("instances", "m1", "backups", "b0", "instance_only") == "false"
    assert d.read("instances", "m1", "backups", "b0", "compression_algorithm") == "gzip"
    d.write("instances", "m1", "backups", "create", "b1 instance_only=true "
            "compression_algorithm=zstd")
    assert d.read("instances", "m1", "backups", "b1", "instance_only") == "true"
    with pytest.raises(OSError) as exc:
        os.mkdir(backups / "b1")
    assert exc.value.errno == errno.EEXIST
    with pytest.raises(OSError) as exc:
        d.write("instances", "m1", "backups", "create", "b2 compression_algorithm=lz4")
    assert exc.value.errno == errno.EINVAL
    assert "compression" in d.read("instances", "m1", "error")
    with pytest.raises(OSError) as exc:
        d.write("instances", "m1", "backups", "b1", "expires_at", "tomorrow")
    assert exc.value.errno == errno.EINVAL
    d.write("instances", "m1", "backups", "b1", "expires_at", "2099-01-01T00:00:00Z")
    assert d.read("instances", "m1", "backups", "b1", "expires_at") == "2099-01-01T00:00:00Z"
    os.rename(backups / "b1", backups / "only")
    assert sorted(os.listdir(backups)) == ["b0", "create", "only"]
    out = tmp_path / "m1.tar.gz"
    with open(backups / "b0" / "export", "rb") as src:
        out.write_bytes(src.read())
    assert index_of(out)["snapshots"] == ["s1", "s2"]
    os.rmdir(backups / "only")
    assert sorted(os.listdir(backups)) == ["b0", "create"]
    # cp into instances/: imported under the backup's own name (m1 exists: refused)
    with pytest.raises(OSError):
        with open(d.path("instances", "m1.tar.gz"), "wb") as f:
            f.write(out.read_bytes())
    assert "already exists" in d.read("error")
    assert "m1.tar.gz" not in os.listdir(d.path("instances"))
    d.write("instances", "m1", "state", "start")
    os.rmdir(backups / "b0")
    d.cli("delete", "--force", "m1")
    with open(d.path("instances", "m1.tar.gz"), "wb") as f:
        f.write(out.read_bytes())
    assert "m1" in os.listdir(d.path("instances"))
    assert sorted(os.listdir(d.path("instances", "m1", "snapshots"))) == ["s1", "s2"]
    # into an instance made by mkdir, with its own pool and config set first
    os.mkdir(d.path("instances", "m2"))
    d.write("instances", "m2", "config", "user.own", "mine")
    with open(d.path("instances", "m2", "backup.tar.gz"), "wb") as f:
        f.write(out.read_bytes())
    assert d.read("instances", "m2", "config", "user.own") == "mine"
    assert d.read("instances", "m2", "config", "user.note") == "kept"
    d.write("instances", "m2", "state", "start")
    assert d.cli("exec", "m2", "--", "cat", "/root/data").stdout == "three\n"
    assert d.cli("exec", "m2", "--", "hostname").stdout.strip() == "m2"


def test_rest_backups_and_lxc_export_import(daemon_with_busybox, tmp_path):
    d = daemon_with_busybox
    with_two_snapshots(d, "r1")
    op = succeeds(d, "POST", "/1.0/instances/r1/backups",
                  {"name": "", "expires_at": "2099-01-01T00:00:00Z", "instance_only": False,
                   "optimized_storage": False, "compression_algorithm": "gzip"})
    assert op["resources"]["backups"] == ["/1.0/backups/backup0"]
    status, doc, _ = api(d, "GET", "/1.0/instances/r1/backups")
    assert doc["metadata"] == ["/1.0/instances/r1/backups/backup0"]
    status, doc, _ = api(d, "GET", "/1.0/instances/r1/backups/backup0")
    assert doc["metadata"]["expires_at"] == "2099-01-01T00:00:00Z"
    assert doc["metadata"]["instance_only"] is False
    succeeds(d, "POST", "/1.0/instances/r1/backups/backup0", {"name": "kept"})
    status, body, headers = raw(d, "GET", "/1.0/instances/r1/backups/kept/export")
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert body[:2] == b"\x1f\x8b"
    status, doc, _ = api(d, "GET", "/1.0/instances/r1/backups/nope")
    assert status == 404
    succeeds(d, "DELETE", "/1.0/instances/r1/backups/kept")
    assert api(d, "GET", "/1.0/instances/r1/backups")[1]["metadata"] == []
    # the real client
    out = tmp_path / "r1.tar.gz"
    lxc(d, "export", "r1", str(out))
    assert index_of(out)["snapshots"] == ["s1", "s2"]
    assert api(d, "GET", "/1.0/instances/r1/backups")[1]["metadata"] == []  # lxc deletes it
    lxc(d, "import", str(out), "r2")
    assert sorted(os.listdir(d.path("instances", "r2", "snapshots"))) == ["s1", "s2"]
    lxc(d, "start", "r2")
    assert lxc(d, "exec", "r2", "--", "cat", "/root/data").stdout == "three\n"
    only = tmp_path / "only.tar.xz"
    lxc(d, "export", "r1", str(only), "--instance-only", "--compression", "xz")
    r = lxc(d, "import", str(only), check=False)  # r1 exists
    assert r.returncode != 0 and "already exists" in r.stderr
    lxc(d, "import", str(only), "r3", "-s", "default")
    assert os.listdir(d.path("instances", "r3", "snapshots")) == []
    # a raw import with X-LXD-name, then a corrupt body: a clear error, nothing left
    status, doc, _ = api(d, "POST", "/1.0/instances", out.read_bytes(),
                         headers={"Content-Type": "application/octet-stream",
                                  "X-LXD-name": "r4"})
    assert status == 202 and wait(d, doc)["status"] == "Success"
    status, doc, _ = api(d, "POST", "/1.0/instances", out.read_bytes()[:5000],
                         headers={"Content-Type": "application/octet-stream",
                                  "X-LXD-name": "r5"})
    op = wait(d, doc)
    assert op["status"] == "Failure" and "backup" in op["err"], op
    assert "r5" not in os.listdir(d.path("instances"))
    assert os.listdir(d.data_dir / "uploads") == []


def test_btrfs_pools_plain_and_optimized(loop_guard, daemon_with_busybox, tmp_path):  # noqa: F811
    import btrfsutil

    d = daemon_with_busybox
    loop_guard.append(d.base)
    root = make_btrfs_pool(d)
    # dir -> btrfs, plain format
    with_two_snapshots(d, "t1")
    plain = tmp_path / "t1.tar.gz"
    d.cli("export", "t1", str(plain))
    d.cli("import", str(plain), "t2", "-s", "bt")
    assert d.read("instances", "t2", "pool") == "bt"
    assert btrfsutil.is_subvolume(str(root / "containers" / "t2"))
    assert btrfsutil.is_subvolume(str(root / "containers-snapshots" / "t2" / "s1"))
    assert d.path("instances", "t2", "snapshots", "s1", "rootfs", "root", "data"
                  ).read_text() == "one\n"
    # btrfs -> btrfs optimized: send streams, incremental from the snapshot before
    opt = tmp_path / "t2.tar.gz"
    d.cli("export", "t2", str(opt), "--optimized-storage")
    names = members(opt)
    assert names[:2] == ["backup/index.yaml", "backup/optimized_header.yaml"]
    assert set(names[2:]) == {"backup/snapshots/s1.bin", "backup/snapshots/s2.bin",
                              "backup/container.bin"}
    index = index_of(opt)
    assert index["backend"] == "btrfs" and index["optimized"] is True
    assert index["optimized_header"] is True and index["pool"] == "bt"
    with tarfile.open(opt) as tf:
        f = tf.extractfile("backup/optimized_header.yaml")
        assert f is not None
        header = yaml.safe_load(f.read())
    assert [v["snapshot"] for v in header["subvolumes"]] == ["s1", "s2", ""]
    d.cli("import", str(opt), "t3")
    assert d.read("instances", "t3", "pool") == "bt"
    assert not btrfsutil.get_subvolume_read_only(str(root / "containers" / "t3"))
    assert btrfsutil.get_subvolume_read_only(str(root / "containers-snapshots" / "t3" / "s2"))
    assert d.path("instances", "t3", "snapshots", "s2", "rootfs", "root", "data"
                  ).read_text() == "two\n"
    d.write("instances", "t3", "state", "start")
    assert d.cli("exec", "t3", "--", "cat", "/root/data").stdout == "three\n"
    d.write("instances", "t3", "state", "stop")
    # an optimized btrfs backup cannot go to a dir pool: refused, nothing left
    r = d.cli("import", str(opt), "t4", "-s", "default", check=False)
    assert r.returncode != 0 and "btrfs" in r.stderr
    assert "t4" not in os.listdir(d.path("instances"))
    # on a dir pool, --optimized-storage writes the plain trees (as LXD's dir driver)
    d.cli("export", "t1", str(tmp_path / "dir-opt.tar.gz"), "--optimized-storage")
    assert index_of(tmp_path / "dir-opt.tar.gz")["optimized"] is False
    for name in ("t1", "t2", "t3"):
        d.cli("delete", "--force", name)
    assert sorted(os.listdir(root / "containers")) == []


@pytest.fixture
def lxd(busybox_image):
    """Debian's LXD 5.0.2, isolated as ``bench/`` starts it, with the busybox image."""
    from conftest import REPO

    if not shutil.which("lxd"):  # bench/ would install it: a test never reaches the internet
        pytest.fail("LXD 5.0.2 is not installed (apt-get install lxd)", pytrace=False)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench.lxd import start_isolated_lxd

    with ExitStack() as stack:
        yield start_isolated_lxd(stack, {"busybox": busybox_image})


def test_lxd_backups_import_into_lxfs_and_back(loop_guard, daemon_with_busybox,  # noqa: F811
                                               lxd, tmp_path):
    d = daemon_with_busybox
    loop_guard.append(d.base)
    # LXD -> lxfs: a stopped container with a file and a snapshot (dir pool)
    lxd.cli("init", "busybox", "lx1")
    note = tmp_path / "note"
    note.write_text("made by lxd\n")
    lxd.cli("file", "push", str(note), "lx1/root/note", "--uid", "1234", "--gid", "1234")
    lxd.cli("snapshot", "lx1", "snap0")
    lxd.cli("config", "set", "lx1", "user.origin", "lxd")
    lxd.cli("config", "device", "add", "lx1", "gpu0", "gpu")  # a type lxfs lacks
    made = tmp_path / "lx1.tar.gz"
    lxd.cli("export", "lx1", str(made))
    index = index_of(made)
    assert index["backend"] == "dir" and index["snapshots"] == ["snap0"]
    d.cli("import", str(made))
    assert d.read("instances", "lx1", "config", "user.origin") == "lxd"
    assert "device gpu0" in d.read("instances", "lx1", "error")  # left out, with why
    assert "gpu0" not in os.listdir(d.path("instances", "lx1", "devices"))
    assert os.listdir(d.path("instances", "lx1", "snapshots")) == ["snap0"]
    rootfs = d.data_dir / "storage-pools" / "default" / "containers" / "lx1" / "rootfs"
    st = os.stat(rootfs / "root" / "note")
    assert (st.st_uid, st.st_gid) == (1234, 1234)  # stored as the container sees them
    d.write("instances", "lx1", "state", "start")
    assert d.cli("exec", "lx1", "--", "cat", "/root/note").stdout == "made by lxd\n"
    assert d.cli("exec", "lx1", "--", "stat", "-c", "%u", "/root/note").stdout == "1234\n"
    # lxfs -> LXD: with two snapshots; LXD lists them and has the files
    with_two_snapshots(d, "fx1")
    ours = tmp_path / "fx1.tar.gz"
    d.cli("export", "fx1", str(ours))
    lxd.cli("import", str(ours))
    info = json.loads(lxd.cli("query", "/1.0/instances/fx1?recursion=1"))
    assert info["config"]["user.note"] == "kept"
    assert [s["name"] for s in info["snapshots"]] == ["s1", "s2"]
    pulled = tmp_path / "pulled"
    lxd.cli("file", "pull", "fx1/root/data", str(pulled))
    assert pulled.read_text() == "three\n"
    # LXD shifts the unshifted files for its idmap and runs the container
    lxd.cli("start", "fx1")
    assert lxd.cli("exec", "fx1", "--", "cat", "/root/data") == "three\n"
    assert lxd.cli("exec", "fx1", "--", "stat", "-c", "%u", "/root/data") == "0\n"
    # LXD's optimized btrfs backup -> an lxfs btrfs pool of the same name, and back
    make_btrfs_pool(d, "bt")
    lxd.cli("init", "busybox", "lx2", "-s", "bt")
    lxd.cli("file", "push", str(note), "lx2/root/note", "--uid", "1234", "--gid", "1234")
    lxd.cli("snapshot", "lx2", "snap0")
    made = tmp_path / "lx2.tar.gz"
    lxd.cli("export", "lx2", str(made), "--optimized-storage")
    assert index_of(made)["optimized"] is True
    d.cli("import", str(made))
    assert d.read("instances", "lx2", "pool") == "bt"
    assert os.listdir(d.path("instances", "lx2", "snapshots")) == ["snap0"]
    rootfs = d.data_dir / "storage-pools" / "bt" / "containers" / "lx2" / "rootfs"
    st = os.stat(rootfs / "root" / "note")
    assert (st.st_uid, st.st_gid) == (1234, 1234)
    d.write("instances", "lx2", "state", "start")
    assert d.cli("exec", "lx2", "--", "stat", "-c", "%u", "/root/note").stdout == "1234\n"
    d.write("instances", "lx2", "state", "stop")
    ours = tmp_path / "lx2-back.tar.gz"
    d.cli("export", "lx2", str(ours), "--optimized-storage")
    lxd.cli("delete", "--force", "lx2")
    lxd.cli("import", str(ours), "lx3")
    lxd.cli("start", "lx3")
    assert lxd.cli("exec", "lx3", "--", "cat", "/root/note") == "made by lxd\n"
    assert lxd.cli("exec", "lx3", "--", "stat", "-c", "%u", "/root/note") == "1234\n"


def tarball(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info, data in entries:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def nothing_left(d, name: str) -> None:
    assert name not in os.listdir(d.path("instances"))
    assert os.listdir(d.data_dir / "uploads") == []
    for pool_name in os.listdir(d.data_dir / "storage-pools"):
        assert name not in os.listdir(d.data_dir / "storage-pools" / pool_name / "containers")


def test_bad_tarballs_are_refused_and_leave_nothing(daemon_with_busybox, tmp_path):
    d = daemon_with_busybox
    with_two_snapshots(d, "bad")
    good = tmp_path / "bad.tar.gz"
    d.cli("export", "bad", str(good))
    d.cli("delete", "bad")
    make(d, "g1")
    data = good.read_bytes()
    index = yaml.safe_dump({"name": "bad", "backend": "dir", "pool": "default",
                            "type": "container", "optimized": False,
                            "config": {"container": {"name": "bad", "config": {}}}}).encode()
    cases = {
        "truncated": (data[:len(data) // 2], "cannot"),
        "garbage": (os.urandom(4096), "not an instance backup"),
        "gzip of garbage": (gzip.compress(os.urandom(4096)), "cannot read"),
        "no index": (tarball([(entry("backup/container/rootfs", tarfile.DIRTYPE), b"")]),
                     "index.yaml is missing"),
        "bad index": (tarball([(entry("backup/index.yaml"), b"name: [1, 2\n")]), "YAML"),
        "billion laughs": (tarball([(entry("backup/index.yaml"), b"a: &a [x,x,x,x,x,x,x,x,x]\n"
                                     + b"".join(b"%c: &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]\n"
                                                % ((98 + i,) * 2 + (97 + i,) * 8)
                                                for i in range(9)))]), "nodes"),
        "a virtual machine": (tarball([(entry("backup/index.yaml"),
                                        b"name: vm\ntype: virtual-machine\n")]),
                              "containers only"),
        "no rootfs": (tarball([(entry("backup/index.yaml"), index)]), "rootfs"),
        "through a symlink": (tarball([
            (entry("backup/index.yaml"), index),
            (entry("backup/container/rootfs", tarfile.DIRTYPE), b""),
            (entry("backup/container/rootfs/etc", tarfile.SYMTYPE, "/etc"), b""),
            (entry("backup/container/rootfs/etc/evil"), b"x")]), "symlink"),
        "dot-dot": (tarball([(entry("backup/index.yaml"), index),
                             (entry("backup/container/rootfs/../../../../evil"), b"x")]),
                    ".."),
        "missing snapshot": (tarball([
            (entry("backup/index.yaml"), index.replace(b"type:", b"snapshots: [s9]\ntype:")),
            (entry("backup/container/rootfs", tarfile.DIRTYPE), b"")]), "s9"),
    }
    for what, (body, reason) in cases.items():
        bad = tmp_path / "bad.tar.gz"
        bad.write_bytes(body)
        r = d.cli("import", str(bad), "bad", check=False)  # through mkdir + copy
        assert r.returncode != 0 and reason in r.stderr, (what, r.stderr)
        nothing_left(d, "bad")
        with pytest.raises(OSError):  # straight into instances/
            with open(d.path("instances", "bad.tar.gz"), "wb") as f:
                f.write(body)
        assert reason in d.read("error"), what
        nothing_left(d, "bad")
        status, doc, _ = api(d, "POST", "/1.0/instances", body,
                             headers={"Content-Type": "application/octet-stream"})
        op = wait(d, doc)
        assert op["status"] == "Failure" and reason in op["err"], (what, op)
        nothing_left(d, "bad")
    assert not os.path.exists("/etc/evil")
    assert d.read("instances", "g1", "state") == "STOPPED"  # the daemon lives on
    # a name that exists (REST: at once)
    status, doc, _ = api(d, "POST", "/1.0/instances", data,
                         headers={"Content-Type": "application/octet-stream",
                                  "X-LXD-name": "g1"})
    assert status == 409, doc
    status, doc, _ = api(d, "POST", "/1.0/instances", data,
                         headers={"Content-Type": "application/octet-stream",
                                  "X-LXD-pool": "nope"})
    assert status == 404, doc


def test_kill9_mid_import_and_mid_export_leaves_nothing(daemon_with_busybox, tmp_path):
    d = daemon_with_busybox
    with_two_snapshots(d, "k1")
    out = tmp_path / "k1.tar.gz"
    d.cli("export", "k1", str(out))
    for point in ("import.after-unpack", "import.after-intent", "import.after-volume",
                  "import.after-ready", "backup.before-tar"):
        d.env["LXFS_FAULT"] = point
        d.restart()
        if point.startswith("backup"):
            r = d.cli("export", "k1", str(tmp_path / "cut.tar.gz"), check=False)
        else:
            r = d.cli("import", str(out), "k2", check=False)
        assert d.proc is not None
        d.proc.wait(60)
        d._expected_exit = True
        del d.env["LXFS_FAULT"]
        d.start()
        check(d)
        if point == "import.after-ready":  # registered before the crash: it stays whole
            assert r.returncode != 0
            assert sorted(os.listdir(d.path("instances", "k2", "snapshots"))) == ["s1", "s2"]
            d.cli("delete", "k2")
        nothing_left(d, "k2")
        assert sorted(os.listdir(d.path("instances", "k1", "backups"))) == ["create"]
        assert os.listdir(d.data_dir / "instance-data" / "k1" / "backups") == []
    d.cli("import", str(out), "k2")
    d.write("instances", "k2", "state", "start")
    assert d.cli("exec", "k2", "--", "cat", "/root/data").stdout == "three\n"


def test_full_disk_import_is_refused_and_leaves_nothing(small_daemon,  # noqa: F811
                                                         daemon_with_busybox, busybox_image,
                                                         tmp_path):
    src = daemon_with_busybox
    make(src, "big")
    big = src.path("instances", "big", "rootfs", "root", "big")
    subprocess.run(["dd", "if=/dev/urandom", f"of={big}", "bs=1M", "count=56"], check=True,
                   capture_output=True)
    out = tmp_path / "big.tar"
    src.cli("export", "big", str(out), "--compression", "none")
    d = small_daemon
    d.start()
    d.cli("image", "import", busybox_image, "--alias", "busybox")
    r = d.cli("import", str(out), check=False)
    assert r.returncode != 0 and "space" in r.stderr.lower(), r.stderr
    nothing_left(d, "big")
    # the space is back: a small backup imports
    make(src, "small")
    small = tmp_path / "small.tar.gz"
    src.cli("export", "small", str(small))
    d.cli("import", str(small))
    d.write("instances", "small", "state", "start")
    assert d.read("instances", "small", "state") == "RUNNING"


def test_zfs_optimized_streams_on_the_fake(fake, pool, tmp_path):  # noqa: F811
    """ZFS (absent from this kernel) against the fake of libzfs_core: LXD's zfs format,
    ``snapshots/SNAP.bin`` incremental from the snapshot before, then ``container.bin``."""
    streams: dict[str, tuple[str, str | None]] = {}

    def lzc_send(snap: bytes, parent: bytes | None, fd: int) -> None:
        fake.calls.append(f"send {snap.decode()} from {parent and parent.decode()}")
        assert snap.decode() in fake.snaps and (parent is None or parent.decode() in fake.snaps)
        os.write(fd, json.dumps([snap.decode(), parent and parent.decode()]).encode())

    def lzc_receive(snap: bytes, fd: int, force: bool = False, raw: bool = False,
                    origin: bytes | None = None, props: dict | None = None) -> None:
        sent, parent = json.loads(os.read(fd, 4096))
        dataset = snap.decode().split("@")[0]
        fake.calls.append(f"receive {snap.decode()} of {sent}")
        if parent is None:  # a full stream makes the dataset
            fake.lzc_create(dataset.encode(), "zfs", props)
        elif dataset not in fake.datasets:
            raise fake.exc.DatasetNotFound(snap)
        fake.lzc_snapshot([snap])
        streams[snap.decode()] = (sent, parent)

    lib = sys.modules["libzfs_core"]
    lib.lzc_send, lib.lzc_receive = lzc_send, lzc_receive
    pool.create_volume("container", "c1")
    (pool.volume_path("container", "c1") / "rootfs").mkdir()
    pool.create_snapshot("container", "c1", "s1")
    pool.create_snapshot("container", "c1", "s2")
    out = tmp_path / "backup"
    out.mkdir()
    header, files = pool.export_optimized_backup("container", "c1", ["s1", "s2"], out)
    assert header is None  # LXD 5.0's zfs writes no optimized_header.yaml
    assert files == ["snapshots/s1.bin", "snapshots/s2.bin", "container.bin"]
    sends = [c for c in fake.calls if c.startswith("send")]
    assert sends[0] == "send tank/lxfs/containers/c1@snapshot-s1 from None"
    assert sends[1] == ("send tank/lxfs/containers/c1@snapshot-s2 from "
                        "tank/lxfs/containers/c1@snapshot-s1")
    assert sends[2].endswith("from tank/lxfs/containers/c1@snapshot-s2")
    assert not [s for s in fake.snaps if "@backup-" in s]  # the temporary snapshot is gone
    pool.import_optimized_backup("container", "c2", ["s1", "s2"], out)
    assert fake.datasets["tank/lxfs/containers/c2"]["props"]["mountpoint"] == b"legacy"
    assert pool.list_snapshots("container", "c2") == ["s1", "s2"]
    assert not [s for s in fake.snaps if s.startswith("tank/lxfs/containers/c2@backup")]
    assert pool.volume_path("container", "c2") in fake.mounted
    # a stream missing: refused before anything is made
    (out / "snapshots" / "s2.bin").unlink()
    with pytest.raises(InvalidArgument):
        pool.import_optimized_backup("container", "c3", ["s1", "s2"], out)
    assert "tank/lxfs/containers/c3" not in fake.datasets
