"""``lxfs config device override`` and ``set`` on an inherited device, against the fake mount
of tests/test_cli.py: one write of ``instances/NAME/override`` (the daemon does it in one
step), LXD's messages, and the daemon's notices shown after a success."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import test_cli as fake

from lxfs.cli import main

mnt = fake.mnt
rec = fake.rec
Recorder = fake.Recorder
make_instance = fake.make_instance


def test_override_is_one_write(mnt: Path, rec: Recorder,
                               capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c1")
    assert main(["config", "device", "override", "c1", "root", "size=20GiB",
                 "user.note=two words"]) == 0
    assert rec.writes == [("instances/c1/override", "root size=20GiB 'user.note=two words'")]
    captured = capsys.readouterr()
    assert captured.out == "Device root overridden for c1\n" and captured.err == ""


def test_override_refusals(mnt: Path, rec: Recorder,
                           capsys: pytest.CaptureFixture[str]) -> None:
    inst = make_instance(mnt, "c1")
    assert main(["config", "device", "override", "c1", "eth0", "mtu=1400"]) == 1
    assert capsys.readouterr().err == "Error: The profile device doesn't exist\n"
    # the daemon's reason for a refused size; nothing is left behind
    rec.fail("instances/c1/override", errno.EINVAL, "root disk of c1: size 1MiB is smaller "
             "than what volume c1 already uses (2MiB)", inst / "error")
    assert main(["config", "device", "override", "c1", "root", "size=1MiB"]) == 1
    assert capsys.readouterr().err == ("Error: root disk of c1: size 1MiB is smaller than "
                                       "what volume c1 already uses (2MiB)\n")
    assert not (inst / "devices" / "root").exists()
    (inst / "devices" / "root").mkdir()
    assert main(["config", "device", "override", "c1", "root", "size=1GiB"]) == 1
    assert capsys.readouterr().err == "Error: The device already exists\n"
    assert main(["config", "device", "override", "c1", "root", "size"]) == 1
    assert "Bad key=value pair: size" in capsys.readouterr().err
    assert [w for w, _ in rec.writes] == ["instances/c1/override"]


def test_set_on_an_inherited_device_overrides_it(mnt: Path, rec: Recorder,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The daemon's notice (here: a driver without quotas) is shown on stderr."""
    inst = make_instance(mnt, "c1")
    notice = "the root disk size 50MiB of c1 is kept but not enforced: storage pool " \
             "default (dir) has no quotas"

    def write(path: Path | str, value: str) -> None:
        rec(path, value)
        (inst / "error").write_text(notice + "\n")

    monkeypatch.setattr(fake.cli_mount, "write_raw", write)
    assert main(["config", "device", "set", "c1", "root", "size=50MiB"]) == 0
    assert rec.writes == [("instances/c1/override", "root size=50MiB")]
    assert capsys.readouterr().err == notice + "\n"
    assert main(["config", "device", "set", "c1", "nope", "size=1"]) == 1
    assert capsys.readouterr().err == "Error: Device doesn't exist: nope\n"


def test_profiles_have_no_override(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "device", "override", "default", "root", "size=1GiB"]) != 0
    assert "invalid choice: 'override'" in capsys.readouterr().err
    assert main(["config", "device", "--help"]) == 0
    assert "Copy a device inherited from a profile" in capsys.readouterr().out
