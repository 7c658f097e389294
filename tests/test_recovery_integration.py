"""Crash recovery: the daemon is killed (SIGKILL) at every named fault point of every
multi-step operation (``lxfs.faults.POINTS``), and at random moments during the long ones; the
next start must finish or undo each interrupted operation, keep running containers attached,
and leave nothing ``lxfsd --check`` objects to."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CLIError, LxfsDaemon, lxfsd_command

from lxfs.faults import POINTS

pytestmark = pytest.mark.integration

CRASH_TIMEOUT = 60.0


def check(d: LxfsDaemon) -> None:
    """``lxfsd --check`` finds nothing."""
    result = subprocess.run([*lxfsd_command(), "--check", "--data-dir", str(d.data_dir),
                             "--mount", str(d.mount)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"lxfsd --check:\n{result.stdout}{result.stderr}"


def crash_at(d: LxfsDaemon, point: str, action: Callable[[], object]) -> None:
    """Restart the daemon set to die at ``point``, run ``action`` (which must reach it),
    then start it again and check it."""
    d.env["LXFS_FAULT"] = point
    d.restart()
    try:
        action()
    except (OSError, CLIError, subprocess.TimeoutExpired):
        pass
    assert d.proc is not None
    try:
        d.proc.wait(CRASH_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"fault point {point} was never reached", pytrace=False)
    d._expected_exit = True
    del d.env["LXFS_FAULT"]
    d.start()
    check(d)


def tiny_image(tag: str) -> bytes:
    """A small valid unified image, unique by ``tag``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name: str, data: bytes | None = None, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
        add("metadata.yaml", f"architecture: x86_64\ncreation_date: 1\nproperties:\n"
                             f"  description: {tag}\n".encode())
        add("rootfs")
        add("rootfs/etc")
        add("rootfs/etc/tag", tag.encode())
    return buf.getvalue()


@pytest.fixture
def d(daemon_with_busybox):
    d = daemon_with_busybox
    d.cli("launch", "busybox", "keep")
    d.cli("launch", "busybox", "src")
    d.cli("stop", "-f", "src")
    d.cli("storage", "create", "p2", "dir")
    return d


def keep_runs(d: LxfsDaemon, pid: str) -> None:
    assert d.read("instances", "keep", "state") == "RUNNING"
    assert d.read("instances", "keep", "pid") == pid


def points_of(*prefixes: str) -> list[str]:
    return [p for p in POINTS if p.split(".")[0] in prefixes]


def test_every_point_is_covered():
    covered = {p.split(".")[0] for p in POINTS}
    assert covered == {"image-import", "image-unpack", "image-delete", "create", "copy",
                       "snapshot", "snapshot-delete", "snapshot-rename", "restore", "publish",
                       "move", "rename", "delete", "pool-create", "pool-delete",
                       "volume-create", "volume-copy", "volume-delete"}
    assert len(POINTS) >= 40


def test_instances_at_every_point(d):
    pid = d.read("instances", "keep", "pid")
    for i, point in enumerate(points_of("create", "copy", "delete", "rename", "move")):
        name = f"i{i}"
        op = point.split(".")[0]
        if op == "create":
            crash_at(d, point, lambda n=name: d.cli("launch", "busybox", n, timeout=60))
            names = d.instance_names()
            if name in names:  # complete: it can run
                if d.read("instances", name, "state") != "RUNNING":
                    d.cli("start", name)
                d.cli("delete", "-f", name)
        elif op == "copy":
            crash_at(d, point, lambda n=name: d.cli("copy", "src", n, timeout=60))
            if name in d.instance_names():
                d.cli("start", name)
                d.cli("delete", "-f", name)
        elif op == "delete":
            d.cli("launch", "busybox", name)
            crash_at(d, point, lambda n=name: d.cli("delete", "-f", n))
            assert name not in d.instance_names() or \
                d.read("instances", name, "state") in ("RUNNING", "STOPPED")
            if name in d.instance_names():
                d.cli("delete", "-f", name)
        elif op == "rename":
            d.cli("copy", "src", name)
            crash_at(d, point, lambda n=name: d.cli("move", n, n + "r"))
            names = set(d.instance_names())
            assert len(names & {name, name + "r"}) == 1, names
            left = name if name in names else name + "r"
            d.cli("start", left)
            d.cli("delete", "-f", left)
        elif op == "move":
            d.cli("copy", "src", name)
            crash_at(d, point, lambda n=name: d.write("instances", n, "pool", "p2"))
            assert d.read("instances", name, "pool") in ("default", "p2")
            d.cli("start", name)
            d.cli("delete", "-f", name)
        keep_runs(d, pid)


def test_snapshots_and_restore_at_every_point(d):
    pid = d.read("instances", "keep", "pid")
    d.cli("launch", "busybox", "s")
    snaps = Path(d.path("instances", "s", "snapshots"))
    for i, point in enumerate(points_of("snapshot", "snapshot-delete", "snapshot-rename",
                                        "restore")):
        snap = f"s{i}"
        op = point.split(".")[0]
        if op == "snapshot":
            crash_at(d, point, lambda s=snap: d.cli("snapshot", "s", s))
        elif op == "snapshot-delete":
            d.cli("snapshot", "s", snap)
            crash_at(d, point, lambda s=snap: d.cli("delete", f"s/{s}"))
        elif op == "snapshot-rename":
            d.cli("snapshot", "s", snap)
            crash_at(d, point, lambda s=snap, at=snaps: os.rename(at / s, at / (s + "r")))
        elif op == "restore":
            d.cli("snapshot", "s", snap)
            d.cli("exec", "s", "--", "touch", "/after-snapshot")
            crash_at(d, point, lambda s=snap: d.cli("restore", "s", s))
            # a restore is finished at the next start, the instance running again
            for _ in range(100):
                if d.read("instances", "s", "state") == "RUNNING":
                    break
                time.sleep(0.05)
            assert d.read("instances", "s", "state") == "RUNNING"
            result = d.cli("exec", "s", "--", "test", "-e", "/after-snapshot", check=False)
            assert result.returncode == 1, "the restore was not finished"
        keep_runs(d, pid)
    d.cli("delete", "-f", "s")


def test_images_at_every_point(d, tmp_path):
    pid = d.read("instances", "keep", "pid")
    for i, point in enumerate(points_of("image-import", "image-delete", "image-unpack",
                                        "publish")):
        op = point.split(".")[0]
        if op == "image-import":
            image = tmp_path / f"img{i}.tar.gz"
            image.write_bytes(tiny_image(f"import{i}"))
            crash_at(d, point, lambda p=image: d.cli("image", "import", p, timeout=60))
        elif op == "image-delete":
            image = tmp_path / f"img{i}.tar.gz"
            image.write_bytes(tiny_image(f"delete{i}"))
            fp = d.cli("image", "import", image).stdout.split()[-1]
            crash_at(d, point, lambda f=fp: d.cli("image", "delete", f))
        elif op == "image-unpack":
            pool = f"u{i}"
            d.cli("storage", "create", pool, "dir")
            crash_at(d, point, lambda p=pool: d.cli("launch", "busybox", f"c{p}", "-s", p))
            if f"c{pool}" in d.instance_names():
                d.cli("delete", "-f", f"c{pool}")
        elif op == "publish":
            crash_at(d, point, lambda a=f"pub{i}": d.cli("publish", "src", "--alias", a,
                                                         timeout=120))
        keep_runs(d, pid)


def test_pools_and_volumes_at_every_point(d):
    pid = d.read("instances", "keep", "pid")
    for i, point in enumerate(points_of("pool-create", "pool-delete", "volume-create",
                                        "volume-copy", "volume-delete")):
        op = point.split(".")[0]
        if op == "pool-create":
            crash_at(d, point, lambda n=f"pc{i}": d.cli("storage", "create", n, "dir"))
        elif op == "pool-delete":
            d.cli("storage", "create", f"pd{i}", "dir")
            crash_at(d, point, lambda n=f"pd{i}": d.cli("storage", "delete", n))
        elif op == "volume-create":
            crash_at(d, point, lambda n=f"v{i}": d.cli("storage", "volume", "create", "p2",
                                                       n))
        elif op == "volume-copy":
            d.cli("storage", "volume", "create", "p2", f"vs{i}")
            crash_at(d, point, lambda n=f"vs{i}": d.cli("storage", "volume", "copy",
                                                        f"p2/{n}", f"p2/{n}c"))
        elif op == "volume-delete":
            d.cli("storage", "volume", "create", "p2", f"vd{i}")
            crash_at(d, point, lambda n=f"vd{i}": d.cli("storage", "volume", "delete", "p2",
                                                        n))
        keep_runs(d, pid)


def test_kill9_at_random_moments(d):
    """External SIGKILLs at random delays into the long operations."""
    rng = random.Random(20261203)
    pid = d.read("instances", "keep", "pid")
    d.cli("exec", "src", "--", "true", check=False)
    operations: list[tuple[str, list[str]]] = [
        ("launch", ["launch", "busybox", "{n}"]),
        ("copy", ["copy", "src", "{n}"]),
        ("publish", ["publish", "src", "--alias", "{n}"]),
        ("snapshot", ["snapshot", "src", "{n}"]),
    ]
    for round_ in range(3):
        for op, args in operations:
            name = f"k{op[:2]}{round_}"
            argv = [a.format(n=name) for a in args]
            proc = subprocess.Popen([*_cli(), *argv], env=d.env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.0, 0.4))
            d.kill9()
            proc.wait(60)
            d.start()
            check(d)
            keep_runs(d, pid)
            if name in d.instance_names():
                d.cli("delete", "-f", name)
    assert json.loads(json.dumps(d.instance_names()))  # the daemon still lists


def _cli() -> list[str]:
    from conftest import lxfs_cli_command

    return lxfs_cli_command()


def test_helpers_do_not_outlive_the_daemon(d):
    """A SIGKILL while `cp` copies a large instance: the next start ends that `cp` before it
    repairs (it used to race it), and nothing is left."""
    d.cli("copy", "src", "big")
    big = d.data_dir / "storage-pools" / "default" / "containers" / "big" / "rootfs" / "big"
    subprocess.run(["dd", "if=/dev/zero", f"of={big}", "bs=4M", "count=750"], check=True,
                   capture_output=True)  # 3 GB: the copy takes seconds
    proc = subprocess.Popen([*_cli(), "copy", "big", "big2"], env=d.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        helpers = _helpers_of(d)
        if helpers:
            break
        time.sleep(0.02)
    assert helpers, "the copy never started a helper"
    d.kill9()
    assert _helpers_of(d), "the helper ended with the daemon: nothing to show"
    proc.wait(60)
    d.start()
    assert not _helpers_of(d), "a helper of the killed daemon is still running"
    check(d)
    assert "big2" not in d.instance_names()


def _helpers_of(d: LxfsDaemon) -> list[int]:
    """`cp` processes working on this daemon's data directory."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"cp") and \
                any(str(d.data_dir).encode() in part for part in cmdline):
            found.append(int(pid))
    return found
