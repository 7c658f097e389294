"""``lxfs profile ...`` and ``config edit`` / ``profile edit`` against the fake mount of
tests/test_cli.py (a directory laid out like the mount, writes recorded)."""

from __future__ import annotations

import errno
import io
import os
import shutil
import sys
from pathlib import Path

import pytest
import test_cli as fake
import yaml

from lxfs.cli import editing, main

mnt = fake.mnt
rec = fake.rec
Recorder = fake.Recorder
make_instance = fake.make_instance
put = fake.put


@pytest.fixture(autouse=True)
def profile_mkdir(mnt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mkdir of a profile makes its ``config/`` and ``devices/``, as lxfsd shows them."""
    real_mkdir = os.mkdir

    def mkdir(path: os.PathLike[str] | str, *args: object, **kwargs: object) -> None:
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]
        if os.path.dirname(os.path.relpath(path, mnt)) == "profiles":
            for sub in ("config", "devices"):
                real_mkdir(os.path.join(path, sub))

    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.fixture
def tree_rmdir(mnt: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """rmdir of a profile or a device removes it whole, as lxfsd does; records the calls."""
    calls: list[str] = []
    real_rmdir = os.rmdir

    def rmdir(path: os.PathLike[str] | str, *args: object, **kwargs: object) -> None:
        rel = os.path.relpath(path, mnt)
        if not args and not kwargs and not rel.startswith(".."):
            calls.append(rel)
            shutil.rmtree(path)
        else:
            real_rmdir(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rmdir", rmdir)
    return calls


class FakeTTY(io.StringIO):
    """A terminal on stdin: the answers to "Press enter..." prompts."""

    def isatty(self) -> bool:
        return True


def script_editor(monkeypatch: pytest.MonkeyPatch, *edits: str) -> list[str]:
    """The editor returns ``edits`` in turn; records what it was given."""
    shown: list[str] = []
    results = list(edits)

    def run_editor(text: str) -> str:
        shown.append(text)
        return results.pop(0)

    monkeypatch.setattr(editing, "run_editor", run_editor)
    monkeypatch.setattr(sys, "stdin", FakeTTY("\n" * len(edits)))
    return shown


# -- profiles ----------------------------------------------------------------------------------
def test_profile_list_and_show(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    put(mnt / "profiles" / "default" / "used_by", "c1\nc2\n")
    put(mnt / "profiles" / "default" / "config" / "limits.memory", "1GiB\n")
    assert main(["profile", "list"]) == 0
    assert "| default | Default lxfs profile | 2       |" in capsys.readouterr().out
    assert main(["profile", "show", "default"]) == 0
    assert capsys.readouterr().out == (
        "config:\n  limits.memory: 1GiB\ndescription: Default lxfs profile\ndevices:\n"
        "  root:\n    path: /\n    pool: default\n    type: disk\nname: default\n"
        "used_by:\n- /1.0/instances/c1\n- /1.0/instances/c2\n")
    assert main(["profile", "list", "-f", "json"]) == 0
    assert '"name":"default"' in capsys.readouterr().out
    assert main(["profile", "show", "nope"]) == 1
    assert capsys.readouterr().err == "Error: Profile not found\n"


def test_profile_create_delete(mnt: Path, rec: Recorder, tree_rmdir: list[str],
                               monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", FakeTTY())
    assert main(["profile", "create", "web", "--description", "Web servers"]) == 0
    assert capsys.readouterr().out == "Profile web created\n"
    assert rec.writes == [("profiles/web/description", "Web servers")]
    assert main(["profile", "create", "web"]) == 1
    assert capsys.readouterr().err == "Error: Profile 'web' already exists\n"
    assert main(["profile", "delete", "web"]) == 0
    assert capsys.readouterr().out == "Profile web deleted\n"
    assert tree_rmdir == ["profiles/web"] and not (mnt / "profiles" / "web").exists()


def test_profile_create_from_stdin(mnt: Path, rec: Recorder, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(
        "config:\n  limits.memory: 64MiB\n  limits.processes: 100\ndescription: small\n"
        "devices:\n  data:\n    type: disk\n    source: /srv\n    path: /srv\n"))
    assert main(["profile", "create", "small"]) == 0
    assert rec.writes == [("profiles/small/description", "small"),
                          ("profiles/small/config/limits.memory", "64MiB"),
                          ("profiles/small/config/limits.processes", "100"),
                          ("profiles/small/devices/data/type", "disk"),
                          ("profiles/small/devices/data/source", "/srv"),
                          ("profiles/small/devices/data/path", "/srv")]


def test_profile_create_rolls_back(mnt: Path, rec: Recorder, tree_rmdir: list[str],
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("config:\n  bogus.key: 1\n"))
    rec.fail("profiles/p1/config/bogus.key", errno.EINVAL, "unknown configuration key "
             "'bogus.key'", mnt / "error")
    assert main(["profile", "create", "p1"]) == 1
    assert capsys.readouterr().err == "Error: unknown configuration key 'bogus.key'\n"
    assert not (mnt / "profiles" / "p1").exists()


def test_profile_delete_in_use(mnt: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    def busy(path: object) -> None:
        raise OSError(errno.EBUSY, "busy")

    monkeypatch.setattr(os, "rmdir", busy)
    assert main(["profile", "delete", "default"]) == 1
    assert capsys.readouterr().err == "Error: Profile is currently in use\n"


def test_profile_copy(mnt: Path, rec: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    put(mnt / "profiles" / "default" / "config" / "user.x", "1\n")
    assert main(["profile", "copy", "default", "other"]) == 0
    assert capsys.readouterr().out == ""
    assert sorted(rec.writes) == sorted([
        ("profiles/other/description", "Default lxfs profile"),
        ("profiles/other/config/user.x", "1"),
        ("profiles/other/devices/root/type", "disk"),
        ("profiles/other/devices/root/path", "/"),
        ("profiles/other/devices/root/pool", "default")])
    assert rec.writes[2][0] == "profiles/other/devices/root/type"  # type before the keys
    rec.writes.clear()
    assert main(["profile", "copy", "default", "other"]) == 1
    assert capsys.readouterr().err == "Error: Profile 'other' already exists\n"
    put(mnt / "profiles" / "default" / "config" / "user.x", "2\n")
    assert main(["profile", "copy", "default", "other", "--refresh"]) == 0
    assert rec.writes == [("profiles/other/config/user.x", "2")]
    assert main(["profile", "copy", "nope", "x"]) == 1
    assert capsys.readouterr().err == "Error: Profile not found\n"


def test_profile_rename(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (mnt / "profiles" / "web").mkdir()
    assert main(["profile", "rename", "web", "www"]) == 0
    assert capsys.readouterr().out == "Profile web renamed to www\n"
    assert (mnt / "profiles" / "www").is_dir() and not (mnt / "profiles" / "web").exists()
    assert main(["profile", "rename", "www", "default"]) == 1
    assert capsys.readouterr().err == "Error: Profile 'default' already exists\n"


def test_profile_set_get_unset(mnt: Path, rec: Recorder,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "set", "default", "limits.memory", "64MiB"]) == 0
    assert main(["profile", "set", "default", "user.a=1", "raw.lxc=lxc.x=y"]) == 0
    assert rec.writes == [("profiles/default/config/limits.memory", "64MiB"),
                          ("profiles/default/config/user.a", "1"),
                          ("profiles/default/config/raw.lxc", "lxc.x=y")]
    assert main(["profile", "get", "default", "limits.memory"]) == 0
    assert capsys.readouterr().out == "64MiB\n"
    assert main(["profile", "unset", "default", "limits.memory"]) == 0
    assert not (mnt / "profiles" / "default" / "config" / "limits.memory").exists()
    rec.fail("profiles/default/config/limits.memory", errno.EINVAL,
             'Invalid value for "limits.memory": "lots"', mnt / "error")
    assert main(["profile", "set", "default", "limits.memory=lots"]) == 1
    assert capsys.readouterr().err == 'Error: Invalid value for "limits.memory": "lots"\n'
    assert main(["profile", "set", "nope", "user.a=1"]) == 1
    assert capsys.readouterr().err == "Error: Profile not found\n"


def test_profile_devices(mnt: Path, rec: Recorder, tree_rmdir: list[str],
                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "device", "add", "default", "data", "disk", "source=/srv",
                 "path=/srv"]) == 0
    assert capsys.readouterr().out == "Device data added to default\n"
    assert rec.writes == [("profiles/default/devices/data/type", "disk"),
                          ("profiles/default/devices/data/source", "/srv"),
                          ("profiles/default/devices/data/path", "/srv")]
    assert main(["profile", "device", "add", "default", "data", "disk"]) == 1
    assert capsys.readouterr().err == "Error: The device already exists\n"
    assert main(["profile", "device", "list", "default"]) == 0
    assert capsys.readouterr().out == "data\nroot\n"
    assert main(["profile", "device", "show", "default"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"] == {
        "path": "/srv", "source": "/srv", "type": "disk"}
    assert main(["profile", "device", "get", "default", "root", "pool"]) == 0
    assert capsys.readouterr().out == "default\n"
    rec.writes.clear()
    assert main(["profile", "device", "set", "default", "data", "readonly", "true"]) == 0
    assert main(["profile", "device", "set", "default", "data", "path=/x", "shift=true"]) == 0
    assert rec.writes == [("profiles/default/devices/data/readonly", "true"),
                          ("profiles/default/devices/data/path", "/x"),
                          ("profiles/default/devices/data/shift", "true")]
    assert main(["profile", "device", "unset", "default", "data", "shift"]) == 0
    assert not (mnt / "profiles" / "default" / "devices" / "data" / "shift").exists()
    assert main(["profile", "device", "set", "default", "nope", "a=b"]) == 1
    assert capsys.readouterr().err == "Error: Device doesn't exist: nope\n"
    assert main(["profile", "device", "remove", "default", "data"]) == 0
    assert capsys.readouterr().out == "Device data removed from default\n"
    assert tree_rmdir == ["profiles/default/devices/data"]


def test_profile_device_add_rolls_back(mnt: Path, rec: Recorder, tree_rmdir: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    rec.fail("profiles/default/devices/d/path", errno.EINVAL, "bad path", mnt / "error")
    assert main(["profile", "device", "add", "default", "d", "disk", "path=x"]) == 1
    assert capsys.readouterr().err == "Error: bad path\n"
    assert not (mnt / "profiles" / "default" / "devices" / "d").exists()


def test_profile_assign_add_remove(mnt: Path, rec: Recorder,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c1")
    for name in ("web", "small"):
        (mnt / "profiles" / name).mkdir()
    assert main(["profile", "assign", "c1", "default,web"]) == 0
    assert capsys.readouterr().out == "Profiles default,web applied to c1\n"
    assert main(["profile", "add", "c1", "small"]) == 0
    assert capsys.readouterr().out == "Profile small added to c1\n"
    assert main(["profile", "add", "c1", "small"]) == 1
    assert capsys.readouterr().err == "Error: Profile small is already applied to c1\n"
    assert main(["profile", "remove", "c1", "web"]) == 0
    assert capsys.readouterr().out == "Profile web removed from c1\n"
    assert main(["profile", "remove", "c1", "web"]) == 1
    assert capsys.readouterr().err == "Error: Profile web isn't currently applied to c1\n"
    assert main(["profile", "assign", "c1", ""]) == 0
    assert capsys.readouterr().out == "Profiles (none) applied to c1\n"
    assert main(["profile", "assign", "c1", "default,nope"]) == 1
    assert capsys.readouterr().err == "Error: Profile not found\n"
    assert main(["profile", "add", "nope", "web"]) == 1
    assert capsys.readouterr().err == "Error: Instance not found\n"
    assert rec.writes == [("instances/c1/profiles", "default\nweb\n"),
                          ("instances/c1/profiles", "default\nweb\nsmall\n"),
                          ("instances/c1/profiles", "default\nsmall\n"),
                          ("instances/c1/profiles", "")]


# -- edit --------------------------------------------------------------------------------------
def test_config_edit_applies_difference(mnt: Path, rec: Recorder, tree_rmdir: list[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    inst = make_instance(mnt, "c1", config={"limits.memory": "1GB", "user.old": "x"})
    put(inst / "devices" / "opt" / "type", "disk\n")
    put(inst / "devices" / "opt" / "source", "/opt\n")
    put(inst / "devices" / "opt" / "path", "/opt\n")
    put(inst / "devices" / "gone" / "type", "none\n")
    (mnt / "profiles" / "web").mkdir()
    shown = script_editor(monkeypatch, (
        "architecture: x86_64\n"
        "config:\n  limits.memory: 2GB\n  limits.cpu: 2\n"
        "devices:\n  opt:\n    type: disk\n    source: /opt\n    path: /mnt\n    readonly: true\n"
        "  dev0:\n    type: unix-char\n    path: /dev/x\n    mode: 0660\n"
        "ephemeral: true\nprofiles:\n- default\n- web\nstateful: false\ndescription: hi\n"))
    assert main(["config", "edit", "c1"]) == 0
    assert shown[0].startswith("### This is a YAML representation of the instance's")
    assert "config:\n  limits.memory: 1GB\n  user.old: x\n" in shown[0]
    assert rec.writes == [
        ("instances/c1/description", "hi"),
        ("instances/c1/ephemeral", "true"),
        ("instances/c1/profiles", "default\nweb\n"),
        ("instances/c1/config/limits.memory", "2GB"),
        ("instances/c1/config/limits.cpu", "2"),
        ("instances/c1/devices/opt/path", "/mnt"),
        ("instances/c1/devices/opt/readonly", "true"),
        ("instances/c1/devices/dev0/type", "unix-char"),
        ("instances/c1/devices/dev0/path", "/dev/x"),
        ("instances/c1/devices/dev0/mode", "0660"),
    ]
    assert not (inst / "config" / "user.old").exists()
    assert tree_rmdir == ["instances/c1/devices/gone"]


def test_config_edit_unchanged_writes_nothing(mnt: Path, rec: Recorder,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c1", config={"limits.memory": "1GB", "limits.processes": "100"})
    assert main(["config", "show", "c1"]) == 0
    shown_yaml = capsys.readouterr().out
    script_editor(monkeypatch, shown_yaml)
    assert main(["config", "edit", "c1"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO(shown_yaml))
    assert main(["config", "edit", "c1"]) == 0
    assert rec.writes == []


def test_config_edit_error_reopens_editor(mnt: Path, rec: Recorder,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    inst = make_instance(mnt, "c1", config={"user.a": "1"})
    rec.fail("instances/c1/config/limits.memory", errno.EINVAL,
             'Invalid value for "limits.memory": "lots"', inst / "error")
    bad = "config:\n  user.a: 2\n  limits.memory: lots\nprofiles:\n- default\n"
    good = "config:\n  user.a: 2\nprofiles:\n- default\n"
    shown = script_editor(monkeypatch, "config: [unclosed\n", bad, good)
    assert main(["config", "edit", "c1"]) == 0
    assert len(shown) == 3
    assert shown[1].startswith("# Error: ") and shown[1].endswith("config: [unclosed\n")
    assert shown[2].startswith('# Error: Invalid value for "limits.memory": "lots"\n')
    assert shown[2].count("# Error:") == 1 and shown[2].endswith(bad)
    err = capsys.readouterr().err
    assert 'Config parsing error: Invalid value for "limits.memory": "lots"' in err
    # the half-applied attempt was put back, then the good one applied
    assert rec.writes == [("instances/c1/config/user.a", "2"),
                          ("instances/c1/config/limits.memory", "lots"),
                          ("instances/c1/config/user.a", "1"),
                          ("instances/c1/config/user.a", "2")]


def test_config_edit_abort(mnt: Path, rec: Recorder, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c1")
    script_editor(monkeypatch, "config: 3\n")
    monkeypatch.setattr(sys, "stdin", FakeTTY(""))  # EOF instead of enter: give up
    assert main(["config", "edit", "c1"]) == 1
    assert capsys.readouterr().err.endswith("Error: config: expected a mapping\n")
    assert rec.writes == []


def test_config_edit_from_stdin(mnt: Path, rec: Recorder, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c1", config={"user.a": "1"})
    monkeypatch.setattr(sys, "stdin", io.StringIO(
        "config:\n  user.a: 1\n  security.privileged: true\n  user.b: yes\n"
        "profiles:\n- default\nephemeral: False\n"))
    assert main(["config", "edit", "c1"]) == 0
    assert rec.writes == [("instances/c1/config/security.privileged", "true"),
                          ("instances/c1/config/user.b", "yes")]
    monkeypatch.setattr(sys, "stdin", io.StringIO("config:\n  a: [\n"))
    assert main(["config", "edit", "c1"]) == 1
    assert capsys.readouterr().err.startswith("Error: YAML: ")
    monkeypatch.setattr(sys, "stdin", io.StringIO("profiles: default\n"))
    assert main(["config", "edit", "c1"]) == 1
    assert capsys.readouterr().err == "Error: profiles: expected a list\n"
    assert main(["config", "edit", "nope"]) == 1


def test_profile_edit(mnt: Path, rec: Recorder, tree_rmdir: list[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    shown = script_editor(monkeypatch, (
        "config:\n  limits.memory: 64MiB\ndescription: Default lxfs profile\ndevices:\n"
        "  root:\n    path: /\n    pool: fast\n    type: disk\nname: renamed-is-ignored\n"
        "used_by: []\n"))
    assert main(["profile", "edit", "default"]) == 0
    assert shown[0].startswith("### This is a YAML representation of the profile.")
    assert "\nname: default\n" in shown[0]
    assert rec.writes == [("profiles/default/config/limits.memory", "64MiB"),
                          ("profiles/default/devices/root/pool", "fast")]
    rec.writes.clear()
    monkeypatch.setattr(sys, "stdin", io.StringIO("description: x\ndevices:\n  eth0:\n"
                                                  "    type: nic\n    nictype: bridged\n"))
    assert main(["profile", "edit", "default"]) == 0
    assert rec.writes == [("profiles/default/description", "x"),
                          ("profiles/default/devices/eth0/type", "nic"),
                          ("profiles/default/devices/eth0/nictype", "bridged")]
    assert tree_rmdir == ["profiles/default/devices/root"]
    assert not (mnt / "profiles" / "default" / "config" / "limits.memory").exists()


def test_device_type_change_recreates(mnt: Path, rec: Recorder, tree_rmdir: list[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    inst = make_instance(mnt, "c1")
    put(inst / "devices" / "x" / "type", "disk\n")
    put(inst / "devices" / "x" / "path", "/x\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(
        "devices:\n  x:\n    type: none\nprofiles:\n- default\n"))
    assert main(["config", "edit", "c1"]) == 0
    assert tree_rmdir == ["instances/c1/devices/x"]
    assert rec.writes == [("instances/c1/devices/x/type", "none")]


def test_run_editor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = tmp_path / "ed.py"
    script.write_text("import sys\np = sys.argv[-1]\nassert p.endswith('.yaml')\n"
                      "t = open(p).read()\nopen(p, 'w').write(t.replace('a', 'b'))\n")
    monkeypatch.setenv("EDITOR", f"{sys.executable} {script}")
    assert editing.run_editor("a: 1\n") == "b: 1\n"
    monkeypatch.delenv("EDITOR")
    monkeypatch.setenv("VISUAL", f"{sys.executable} -c 'import sys; sys.exit(3)'")
    with pytest.raises(editing.CLIError, match="exited with status 3"):
        editing.run_editor("a: 1\n")
    monkeypatch.setenv("VISUAL", str(tmp_path / "no-such-editor"))
    with pytest.raises(editing.CLIError, match="No text editor found"):
        editing.run_editor("a: 1\n")
    monkeypatch.delenv("VISUAL")
    assert editing.editor_command() == ["vi"]
