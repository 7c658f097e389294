"""``lxfs copy``, ``publish``, ``console`` and the usage lines of ``info`` against the fake
mount of tests/test_cli.py."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import test_cli as fake

from lxfs.cli import console, main

mnt = fake.mnt
rec = fake.rec
daemon_rmdir = fake.daemon_rmdir
Recorder = fake.Recorder
make_instance = fake.make_instance
put = fake.put

FP = "ab" * 32


# -- copy --------------------------------------------------------------------------------------
def test_copy_writes_source_last(mnt: Path, rec: Recorder,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c1", "STOPPED", snapshots=("snap0",))
    assert main(["copy", "c1", "c2"]) == 0
    assert capsys.readouterr().out == ""
    assert rec.writes == [("instances/c2/source", "instances/c1")]
    assert main(["copy", "c1/snap0", "c3", "-c", "limits.memory=1GiB", "-p", "default",
                 "-p", "web", "-e"]) == 0
    assert rec.writes[1:] == [
        ("instances/c3/profiles", "default\nweb\n"),
        ("instances/c3/config/limits.memory", "1GiB"),
        ("instances/c3/ephemeral", "true"),
        ("instances/c3/source", "instances/c1/snapshots/snap0"),
    ]
    rec.writes.clear()
    assert main(["copy", "local:c1", "c4", "--instance-only", "--no-profiles"]) == 0
    assert rec.writes == [("instances/c4/profiles", ""),
                          ("instances/c4/source", "instances/c1 --instance-only")]


def test_copy_keeps_requested_profiles(mnt: Path, rec: Recorder,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon copies the source's profiles over a plain ``default``: asked-for profiles
    are written again."""
    make_instance(mnt, "c1", "STOPPED")
    real = rec.__call__

    def copy_profiles(path: Path | str, value: str) -> None:
        real(path, value)
        if str(path).endswith("/source"):
            put(Path(path).parent / "profiles", "default\nfrom-source\n")

    monkeypatch.setattr(fake.cli_mount, "write_raw", copy_profiles)
    assert main(["copy", "c1", "c2", "-p", "default"]) == 0
    assert rec.writes == [("instances/c2/profiles", "default\n"),
                          ("instances/c2/source", "instances/c1"),
                          ("instances/c2/profiles", "default\n")]


def test_copy_errors_roll_back(mnt: Path, rec: Recorder, daemon_rmdir: list[str],
                               capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c1", "STOPPED")
    assert main(["copy", "nope", "c2"]) == 1
    assert capsys.readouterr().err == "Error: Instance not found\n"
    assert main(["copy", "c1/nosnap", "c2"]) == 1
    assert capsys.readouterr().err == "Error: Snapshot not found\n"
    assert main(["copy", "c1", "2bad"]) == 1
    assert "Invalid instance name: '2bad'" in capsys.readouterr().err
    assert main(["copy", "c1", "c1"]) == 1
    assert capsys.readouterr().err == "Error: Instance 'c1' already exists\n"
    rec.fail("instances/c2/source", errno.EIO, "copying failed: disk full",
             mnt / "instances" / "c2" / "error")
    assert main(["copy", "c1", "c2"]) == 1
    assert capsys.readouterr().err == "Error: copying failed: disk full\n"
    assert daemon_rmdir == ["instances/c2"]
    assert not (mnt / "instances" / "c2").exists()


# -- publish -----------------------------------------------------------------------------------
def fake_publish(mnt: Path, rec: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    real = rec.__call__

    def publish(path: Path | str, value: str) -> None:
        real(path, value)
        if str(path).endswith("/publish"):
            put(Path(path), FP + "\n")

    monkeypatch.setattr(fake.cli_mount, "write_raw", publish)


def test_publish(mnt: Path, rec: Recorder, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "u1", "STOPPED", snapshots=("2024-01-01",))
    fake_publish(mnt, rec, monkeypatch)
    assert main(["publish", "u1/2024-01-01", "--alias", "foo-2.0", "public=true"]) == 0
    assert capsys.readouterr().out == f"Instance published with fingerprint: {FP}\n"
    assert main(["publish", "u1", "local:", "--alias", "a", "--alias", "b", "--public",
                 "--force", "--compression", "gzip", "os=busybox", "release=1"]) == 0
    assert main(["publish", "--alias", "c", "u1", "k=v", "--alias=d", "-f"]) == 0
    assert rec.writes == [
        ("instances/u1/snapshots/2024-01-01/publish", "alias=foo-2.0 public=true"),
        ("instances/u1/publish", "alias=a alias=b public=true force=true compression=gzip "
                                 "os=busybox release=1"),
        ("instances/u1/publish", "alias=c alias=d force=true k=v"),
    ]


def test_publish_errors(mnt: Path, rec: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    inst = make_instance(mnt, "u1", "RUNNING")
    rec.fail("instances/u1/publish", errno.EBUSY, "", inst / "error")
    assert main(["publish", "u1"]) == 1
    assert capsys.readouterr().err == (
        "Error: The instance is currently running, stop it first or pass --force\n")
    assert main(["publish", "u1", "description=two words"]) == 1
    assert "Values with spaces are not supported" in capsys.readouterr().err
    assert main(["publish", "u1", "images:"]) == 1
    assert "`images:` is another server" in capsys.readouterr().err
    assert main(["publish", "u1/nosnap"]) == 1
    assert capsys.readouterr().err == "Error: Snapshot not found\n"
    assert main(["publish", "nope"]) == 1
    assert capsys.readouterr().err == "Error: Instance not found\n"


# -- console -----------------------------------------------------------------------------------
def test_console_execs_lxc_console(mnt: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c1", "RUNNING")
    calls: list[list[str]] = []

    def execv(path: str, argv: list[str]) -> None:
        calls.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.setattr(console.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    assert main(["console", "c1"]) == 0
    assert capsys.readouterr().out == "To detach from the console, press: <ctrl>+a q\n"
    assert calls == [["/usr/bin/lxc-console", "-P", str(mnt.parent / "lxc"), "-n", "c1",
                      "-t", "0"]]


def test_console_errors_and_log(mnt: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    inst = make_instance(mnt, "c1", "STOPPED")
    assert main(["console", "c1"]) == 1
    assert capsys.readouterr().err == "Error: Instance is not running\n"
    put(inst / "console", "login: \n")
    assert main(["console", "c1", "--show-log"]) == 0
    assert capsys.readouterr().out == "\nConsole log:\n\nlogin: \n"
    put(inst / "state", "RUNNING\n")
    monkeypatch.setattr(console.shutil, "which", lambda tool: None)
    assert main(["console", "c1"]) == 1
    assert "lxc-console not found" in capsys.readouterr().err


# -- info --------------------------------------------------------------------------------------
def test_info_usage(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inst = make_instance(mnt, "c1", "RUNNING", pid=1234)
    for key, value in (("processes", 5), ("memory", 12 * 1024 * 1024), ("memory_peak",
                       20 * 1024 * 1024), ("cpu", 3_500_000_000), ("disk", 1290000)):
        put(inst / "usage" / key, f"{value}\n")
    assert main(["info", "c1"]) == 0
    out = capsys.readouterr().out
    assert out.split("Resources:\n")[1] == (
        "  Processes: 5\n"
        "  Disk usage:\n    root: 1.23MiB\n"
        "  CPU usage:\n    CPU usage (in seconds): 3\n"
        "  Memory usage:\n    Memory (current): 12.00MiB\n    Memory (peak): 20.00MiB\n")


def test_info_usage_stopped_and_absent(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inst = make_instance(mnt, "c1", "STOPPED")
    for key in ("processes", "memory", "memory_peak", "cpu"):
        put(inst / "usage" / key, "0\n")
    put(inst / "usage" / "disk", "4096\n")
    assert main(["info", "c1"]) == 0
    assert capsys.readouterr().out.endswith("Resources:\n  Disk usage:\n    root: 4.00KiB\n")
    make_instance(mnt, "c2", "RUNNING", pid=0)  # no usage/ at all (older daemon)
    assert main(["info", "c2"]) == 0
    assert "Resources:" not in capsys.readouterr().out
