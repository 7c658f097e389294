"""Reads through the mount come from the kernel's page cache while a value is unchanged, and
the next read after any change sees the new value (docs/filesystem.md, "Caching"): written
through the mount by another process, changed by the daemon (an instance stopping by itself),
written by the ``lxfs`` command; directory entries made and removed by other processes.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SYS_CACHESTAT = 451  # Linux 6.5, the same number on every architecture
_libc = ctypes.CDLL(None, use_errno=True)


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


def cached_pages(path: Path) -> int:
    """Pages of ``path`` in the kernel's page cache (``cachestat``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        whole, stat = _CachestatRange(0, 0), _Cachestat()
        if _libc.syscall(ctypes.c_long(SYS_CACHESTAT), fd, ctypes.byref(whole),
                         ctypes.byref(stat), 0) < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
        return int(stat.nr_cache)
    finally:
        os.close(fd)


def cat(path: Path) -> str:
    """open, read to the end, close (as ``cat`` does)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


WRITER = textwrap.dedent("""
    import os, sys
    path, rounds = sys.argv[1], int(sys.argv[2])
    for i in range(rounds):
        value = "v" * (i % 7 + 1) + str(i)  # sizes change too
        with open(path, "w") as f:
            f.write(value + "\\n")
        os.write(1, f"{value}\\n".encode())  # then tell the reader
        if os.read(0, 1) != b"k":  # and wait for it
            break
""")


def tight_loop(path: Path, rounds: int) -> None:
    """Another process writes ``path`` through the mount; this one reads each value back at
    once, twice (the second read is served from the page cache)."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(rounds)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert writer.stdin is not None and writer.stdout is not None
    try:
        for _ in range(rounds):
            line = writer.stdout.readline()
            assert line, "the writer stopped"
            expected = line.decode()
            assert cat(path) == expected
            assert cat(path) == expected
            writer.stdin.write(b"k")
            writer.stdin.flush()
        assert writer.wait(timeout=30) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()


def test_values_written_by_another_process_are_read_back_at_once(lxfs_daemon):
    d = lxfs_daemon
    os.mkdir(d.path("instances", "c1"))
    description = d.path("instances", "c1", "description")
    d.write("instances", "c1", "description", "first")
    assert cat(description) == "first\n"
    assert cached_pages(description) == 1, "reads do not go through the page cache"
    tight_loop(description, 300)
    d.write("instances", "c1", "config", "user.k", "start")
    tight_loop(d.path("instances", "c1", "config", "user.k"), 300)


def test_an_emptied_and_rewritten_value_is_read_back(lxfs_daemon):
    d = lxfs_daemon
    os.mkdir(d.path("instances", "c1"))
    key = d.path("instances", "c1", "config", "user.note")
    for value in ("a", "a much longer value than before", "b", ""):
        if value:
            d.write("instances", "c1", "config", "user.note", value)
            assert cat(key) == value + "\n"
            assert cat(key) == value + "\n"
        else:
            os.unlink(key)
            with pytest.raises(FileNotFoundError):
                cat(key)


def test_state_after_an_instance_stops_by_itself(daemon_with_busybox):
    d = daemon_with_busybox
    d.cli("launch", "busybox", "b1")
    state = d.path("instances", "b1", "state")
    for _ in range(3):
        assert cat(state) == "RUNNING\n"
    assert cached_pages(state) == 1
    events = subprocess.Popen(["cat", str(d.path("events"))], stdout=subprocess.PIPE)
    stopped = threading.Event()

    def follow() -> None:
        assert events.stdout is not None
        for line in events.stdout:
            event = json.loads(line)
            if event["metadata"].get("action") == "instance-stopped":
                stopped.set()
                return

    threading.Thread(target=follow, daemon=True).start()
    try:
        time.sleep(0.2)  # the reader is subscribed
        d.cli("exec", "b1", "--", "kill", "-9", "-1", check=False)
        d.cli("exec", "b1", "--", "poweroff", "-f", check=False)
        assert stopped.wait(30), "no instance-stopped event"
        assert cat(state) == "STOPPED\n"  # the very next read
        assert cat(d.path("instances", "b1", "pid")) == "0\n"
    finally:
        events.terminate()
        events.wait(timeout=5)
    assert cat(state) == "STOPPED\n"


def test_config_written_by_the_cli_is_read_at_once(lxfs_daemon):
    d = lxfs_daemon
    os.mkdir(d.path("instances", "c1"))
    key = d.path("instances", "c1", "config", "user.color")
    d.cli("config", "set", "c1", "user.color", "blue")
    for _ in range(3):
        assert cat(key) == "blue\n"
    for value in ("green", "a much longer shade of red", "x"):
        d.cli("config", "set", "c1", "user.color", value)
        assert cat(key) == value + "\n"
        assert d.cli("config", "get", "c1", "user.color").stdout == value + "\n"


MKDIR_RMDIR = textwrap.dedent("""
    import os, sys
    base, rounds = sys.argv[1], int(sys.argv[2])
    for i in range(rounds):
        path = os.path.join(base, f"d{i}")
        os.mkdir(path)
        os.write(1, b"m")
        if os.read(0, 1) != b"k":
            break
        os.rmdir(path)
        os.write(1, b"r")
        if os.read(0, 1) != b"k":
            break
""")


def test_entries_made_and_removed_by_another_process(lxfs_daemon):
    d = lxfs_daemon
    instances = d.path("instances")
    rounds = 30
    other = subprocess.Popen([sys.executable, "-c", MKDIR_RMDIR, str(instances), str(rounds)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert other.stdin is not None and other.stdout is not None
    try:
        for i in range(rounds):
            name = f"d{i}"
            assert other.stdout.read(1) == b"m"
            assert name in os.listdir(instances)
            assert cat(instances / name / "state") == "STOPPED\n"
            other.stdin.write(b"k")
            other.stdin.flush()
            assert other.stdout.read(1) == b"r"
            assert name not in os.listdir(instances)
            with pytest.raises(FileNotFoundError):
                os.stat(instances / name / "state")
            other.stdin.write(b"k")
            other.stdin.flush()
        assert other.wait(timeout=30) == 0
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()


def test_entries_made_by_the_cli(daemon_with_busybox):
    d = daemon_with_busybox
    instances = d.path("instances")
    assert "b1" not in os.listdir(instances)
    with pytest.raises(FileNotFoundError):
        os.stat(instances / "b1")
    d.cli("create", "busybox", "b1")
    assert "b1" in os.listdir(instances)
    assert cat(instances / "b1" / "state") == "STOPPED\n"
    d.cli("rename", "b1", "b2")
    assert sorted(n for n in os.listdir(instances) if not n.startswith(".")) == ["b2"]
    with pytest.raises(FileNotFoundError):
        os.stat(instances / "b1")
    assert cat(instances / "b2" / "state") == "STOPPED\n"
    d.cli("start", "b2")
    assert cat(instances / "b2" / "state") == "RUNNING\n"
    d.cli("delete", "-f", "b2")
    assert "b2" not in os.listdir(instances)
    try:
        os.stat(instances / "b2" / "state")
    except OSError as exc:
        assert exc.errno == errno.ENOENT
    else:
        pytest.fail("instances/b2/state still found after delete")


def test_values_and_entries_changed_over_rest(lxfs_daemon):
    from test_rest_instances_integration import api, succeeds

    d = lxfs_daemon
    os.mkdir(d.path("instances", "c1"))
    key = d.path("instances", "c1", "config", "user.k")
    d.write("instances", "c1", "config", "user.k", "start")
    for i in range(50):
        value = "r" * (i % 5 + 1) + str(i)
        status, doc, _ = api(d, "PATCH", "/1.0/instances/c1", {"config": {"user.k": value}})
        assert status == 200, doc
        assert cat(key) == value + "\n"
        assert cat(key) == value + "\n"
        assert os.stat(key).st_size == len(value) + 1
    for _ in range(3):
        cat(d.path("instances", "c1", "state"))
    succeeds(d, "DELETE", "/1.0/instances/c1")
    assert "c1" not in os.listdir(d.path("instances"))
    with pytest.raises(FileNotFoundError):
        os.stat(d.path("instances", "c1", "state"))


def test_error_files_changed_without_an_event(lxfs_daemon):
    """An ``error`` file changes with no event (a refused write): each read right after a
    refusal shows that refusal's whole message, also after a stat (``read_text`` stats)."""
    d = lxfs_daemon
    os.mkdir(d.path("instances", "c1"))
    error = d.path("instances", "c1", "error")
    for i in range(40):
        key = "nokey" + "é" * (i % 9) + str(i)
        with pytest.raises(OSError) as exc:
            with open(d.path("instances", "c1", "config", key), "w") as f:
                f.write("1\n")
        assert exc.value.errno == errno.EINVAL
        message = error.read_text()  # (nothing else opens it before the next refusal)
        assert key in message, message
