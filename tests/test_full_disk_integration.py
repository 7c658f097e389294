"""A data directory full or read-only: the daemon still starts and serves reads, refuses
writes clearly (ENOSPC, EROFS, with the reason in the error file), and recovers when space
returns."""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest
from conftest import LxfsDaemon, integration_problems, make_base_dir

pytestmark = pytest.mark.integration


@pytest.fixture
def small_daemon():
    problems = integration_problems()
    if problems:
        pytest.fail("cannot start lxfsd here: " + "; ".join(problems), pytrace=False)
    d = LxfsDaemon(make_base_dir())
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m,mode=0711", "lxfs-test-small",
                    str(d.data_dir)], check=True)
    try:
        yield d
    finally:
        problems = d.teardown()  # unmounts what is under its base directory, tmpfs included
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


def write_errno(path, value: str) -> int:
    try:
        with open(path, "w") as f:
            f.write(value + "\n")
    except OSError as exc:
        return exc.errno or 0
    return 0


def fill(path) -> None:
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M"], capture_output=True)


def test_full_then_read_only_data_directory(small_daemon, busybox_image):
    d = small_daemon
    d.start()
    d.cli("image", "import", busybox_image, "--alias", "busybox")
    d.cli("launch", "busybox", "c1")
    pid = d.read("instances", "c1", "pid")
    # the dir pool's image volume and spare follow the first launch off its path: let them
    # finish first (a process writing under the data directory would keep it from going ro)
    fp = d.read("instances", "c1", "source")
    spare = d.data_dir / "storage-pools" / "default" / "images" / f".{fp}.spare"
    deadline = time.monotonic() + 120
    while not spare.is_dir() and time.monotonic() < deadline:
        time.sleep(0.1)
    filler = d.data_dir / "filler"
    fill(filler)
    # writes are refused with the reason; nothing changes; reads go on
    assert write_errno(d.path("instances", "c1", "config", "user.x"), "1") == errno.ENOSPC
    assert "full" in d.read("instances", "c1", "error")
    assert "user.x" not in os.listdir(d.path("instances", "c1", "config"))
    assert d.read("instances", "c1", "state") == "RUNNING"
    # a restart on a full disk: it starts, reattaches and serves
    d.restart()
    assert d.read("instances", "c1", "state") == "RUNNING"
    assert d.read("instances", "c1", "pid") == pid
    assert write_errno(d.path("instances", "c1", "config", "user.x"), "1") == errno.ENOSPC
    # space returns: writes work again, without a restart
    filler.unlink()
    assert write_errno(d.path("instances", "c1", "config", "user.x"), "1") == 0
    assert d.read("instances", "c1", "config", "user.x") == "1"
    # read-only (a running container's monitor keeps its log open for writing: stop it)
    d.cli("stop", "-f", "c1")
    d.stop()
    subprocess.run(["mount", "-o", "remount,ro", str(d.data_dir)], check=True)
    try:
        d.start()
        assert d.read("instances", "c1", "state") == "STOPPED"
        assert d.read("instances", "c1", "config", "user.x") == "1"
        assert write_errno(d.path("instances", "c1", "config", "user.y"), "1") == errno.EROFS
        assert "read-only" in d.read("instances", "c1", "error")
    finally:
        d.stop()
        subprocess.run(["mount", "-o", "remount,rw", str(d.data_dir)], check=True)
    d.start()
    assert write_errno(d.path("instances", "c1", "config", "user.y"), "1") == 0
    d.cli("delete", "-f", "c1")
