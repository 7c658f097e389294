"""The lxfs CLI against a fake mount: a plain directory laid out like docs/filesystem.md."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from lxfs.cli import exec as cli_exec
from lxfs.cli import fast as cli_fast
from lxfs.cli import images as cli_images
from lxfs.cli import main
from lxfs.cli import mount as cli_mount
from lxfs.cli.names import random_name, valid_instance_name
from lxfs.cli.output import render_table, size_iec

REPO = Path(__file__).resolve().parents[1]


def put(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value)


@pytest.fixture(params=["fast-path", "argparse"])
def mnt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    """A fake mount; each test runs twice: with the common commands' fast path
    (lxfs/cli/fast.py) and with argparse and the full commands only."""
    root = tmp_path / "lxfs"
    env = {"server_version": "0.1.0", "server_pid": "4242", "data_dir": "/var/lib/lxfs",
           "lxc_path": str(tmp_path / "lxc"), "kernel_version": "6.1.0",
           "architecture": "x86_64", "cgroup_layout": "legacy", "storage_drivers": "dir"}
    for key, value in env.items():
        put(root / "environment" / key, value + "\n")
    (root / "instances").mkdir()
    (root / "images" / "aliases").mkdir(parents=True)
    (root / "config").mkdir()
    (root / "storage-pools").mkdir()
    put(root / "error", "")
    put(root / "profiles" / "default" / "description", "Default lxfs profile\n")
    put(root / "profiles" / "default" / "devices" / "root" / "type", "disk\n")
    put(root / "profiles" / "default" / "devices" / "root" / "path", "/\n")
    put(root / "profiles" / "default" / "devices" / "root" / "pool", "default\n")
    put(root / "profiles" / "default" / "used_by", "")
    (root / "profiles" / "default" / "config").mkdir()
    monkeypatch.setenv("LXFS_MOUNT", str(root))
    if request.param == "argparse":
        monkeypatch.setenv("LXFS_NO_FAST_PATH", "1")
    # the fast path writes through whatever write_raw a test puts into lxfs.cli.mount
    monkeypatch.setattr(cli_fast, "write_raw", lambda path, value: cli_mount.write_raw(path, value))
    return root


def make_instance(root: Path, name: str, state: str = "RUNNING", ipv4: str = "",
                  ipv6: str = "", ephemeral: bool = False, snapshots: tuple[str, ...] = (),
                  config: dict[str, str] | None = None, pid: int = 0) -> Path:
    d = root / "instances" / name
    put(d / "state", state + "\n")
    put(d / "ipv4", ipv4)
    put(d / "ipv6", ipv6)
    put(d / "ephemeral", ("true" if ephemeral else "false") + "\n")
    put(d / "architecture", "x86_64\n")
    put(d / "type", "container\n")
    put(d / "created_at", "2026-11-23T10:49:46Z\n")
    put(d / "last_used_at", "2026-11-23T10:50:00Z\n")
    put(d / "description", "\n")
    put(d / "profiles", "default\n")
    put(d / "pid", f"{pid}\n")
    put(d / "error", "")
    put(d / "log", "lxc c1 20261123 INFO start - started\n")
    put(d / "source", "")
    (d / "config").mkdir(exist_ok=True)
    (d / "devices").mkdir(exist_ok=True)
    (d / "expanded" / "config").mkdir(parents=True, exist_ok=True)
    for dev, value in (("type", "disk"), ("path", "/"), ("pool", "default")):
        put(d / "expanded" / "devices" / "root" / dev, value + "\n")
    for key, value in (config or {}).items():
        put(d / "config" / key, value + "\n")
        put(d / "expanded" / "config" / key, value + "\n")
    for snap in snapshots:
        put(d / "snapshots" / snap / "created_at", "2026-11-23T11:00:00Z\n")
    (d / "snapshots").mkdir(exist_ok=True)
    (d / "rootfs").mkdir(exist_ok=True)
    return d


class Recorder:
    """Replaces mount.write_raw: records every write; can fail some with an errno and an
    error-file message, like the daemon would."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.writes: list[tuple[str, str]] = []
        self.failures: dict[str, tuple[int, str, Path]] = {}

    def fail(self, rel: str, err: int, message: str, error_file: Path) -> None:
        self.failures[rel] = (err, message, error_file)

    def __call__(self, path: Path | str, value: str) -> None:
        rel = os.path.relpath(path, self.root)
        self.writes.append((rel, value))
        if rel in self.failures:
            err, message, error_file = self.failures[rel]
            error_file.write_text(message + "\n")
            raise OSError(err, os.strerror(err))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(value)


@pytest.fixture
def rec(mnt: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder(mnt)
    monkeypatch.setattr(cli_mount, "write_raw", recorder)
    return recorder


@pytest.fixture
def daemon_rmdir(mnt: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """rmdir of an instance or snapshot removes it whole, as lxfsd does; records the calls."""
    calls: list[str] = []
    real_rmdir = os.rmdir

    def rmdir(path: os.PathLike[str] | str, *args: object, **kwargs: object) -> None:
        if args or kwargs:
            real_rmdir(path, *args, **kwargs)  # type: ignore[arg-type]
            return
        rel = os.path.relpath(path, mnt)
        if rel.startswith("instances/"):
            calls.append(rel)
            shutil.rmtree(path)
        else:
            real_rmdir(path)

    monkeypatch.setattr(os, "rmdir", rmdir)
    return calls


# -- basics ------------------------------------------------------------------------------------
def test_no_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LXFS_MOUNT", str(tmp_path / "nothing"))
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err == (f"lxfs: no lxfs daemon mounted at {tmp_path / 'nothing'} "
                   "(start lxfsd, or set LXFS_MOUNT)\n")


def test_default_mount(monkeypatch: pytest.MonkeyPatch) -> None:
    from lxfs.cli.mount import mount_root

    monkeypatch.delenv("LXFS_MOUNT", raising=False)
    assert mount_root() == Path("/lxfs")
    monkeypatch.setenv("LXFS_MOUNT", "/elsewhere")
    assert mount_root() == Path("/elsewhere")


def test_init_needs_a_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LXFS_MOUNT", str(tmp_path / "nothing"))
    assert main(["init", "--auto"]) == 1
    assert "no lxfs daemon mounted" in capsys.readouterr().err


def test_version(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out == "Client version: 0.1.0\nServer version: 0.1.0\n"
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "0.1.0"


def test_usage_error_is_one_error_line(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--format", "xml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: argument -f/--format: invalid choice")
    assert err.endswith("(see `lxfs list --help`)\n") and err.count("\n") == 1
    assert "Traceback" not in err


def test_unknown_instance(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["start", "nope"]) == 1
    assert capsys.readouterr().err == "Error: Instance not found\n"


def test_console_script_subprocess(mnt: Path) -> None:
    make_instance(mnt, "c1", "STOPPED")
    proc = subprocess.run([sys.executable, "-m", "lxfs.cli", "list", "-f", "csv"],
                          capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, LXFS_MOUNT=str(mnt)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "c1,STOPPED,,,CONTAINER,0\n"
    proc = subprocess.run([sys.executable, "-m", "lxfs.cli", "start", "nope"],
                          capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, LXFS_MOUNT=str(mnt)))
    assert (proc.returncode, proc.stderr) == (1, "Error: Instance not found\n")



def test_lazy_command_table_matches_the_full_parser() -> None:
    """Every top-level command (and alias) maps to the module that registers it."""
    import argparse
    import importlib

    from lxfs.cli import COMMAND_MODULES, MODULE_ORDER
    from lxfs.cli import build_parser as build

    for module in MODULE_ORDER:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"lxfs.cli.{module}").register(sub)
        for word in sub.choices:
            assert COMMAND_MODULES.get(word) == module, word
    full = build()
    actions = [a for a in full._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(actions[0].choices) == {*COMMAND_MODULES, "version"}


def test_only_the_named_command_is_built(capsys: pytest.CaptureFixture[str]) -> None:
    """``lxfs start ...`` builds the ``start`` parser only; aliases find their command."""
    import argparse

    from lxfs.cli import build_parser as build

    for argv, expected in ((["start", "c1"], {"start", "version"}),
                           (["rm", "c1"], {"delete", "rm", "version"}),
                           (["image", "ls"], {"image", "version"})):
        parser = build(argv)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        assert set(sub.choices) == expected, argv
    assert main(["stop", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: lxfs stop [-h] [-f]")


def test_cli_start_up_imports_only_the_command() -> None:
    """``lxfs exec``/``list`` never import yaml, hashlib, subprocess or pluggy (tens of ms)."""
    code = ("import sys; from lxfs.cli import build_parser; build_parser(sys.argv[1:]);"
            "print(' '.join(sorted(m for m in ('yaml', 'hashlib', 'subprocess', 'pluggy',"
            "'lxfs.cli.images', 'lxfs.cli.config') if m in sys.modules)))")
    for argv in (["exec", "c1", "--", "true"], ["list"], ["start", "c1"]):
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                              text=True, cwd=REPO, check=True)
        assert proc.stdout.strip() == "", (argv, proc.stdout)

# -- output helpers ----------------------------------------------------------------------------
def test_table_like_lxc() -> None:
    text = render_table(
        ["NAME", "STATE", "IPV4", "IPV6", "TYPE", "SNAPSHOTS"],
        [["lxd-ct", "STOPPED", "", "", "PERSISTENT", "0"]])
    assert text == (
        "+--------+---------+------+------+------------+-----------+\n"
        "|  NAME  |  STATE  | IPV4 | IPV6 |    TYPE    | SNAPSHOTS |\n"
        "+--------+---------+------+------+------------+-----------+\n"
        "| lxd-ct | STOPPED |      |      | PERSISTENT | 0         |\n"
        "+--------+---------+------+------+------------+-----------+\n")
    # odd gaps put the extra space on the right, like lxc's table writer
    assert render_table(["ALIAS"], [["f/ppc64el (2 more)"]]).splitlines()[1] == (
        "|       ALIAS        |")


def test_size_iec() -> None:
    assert size_iec(512) == "512B"
    assert size_iec(1038126) == "1013.79KiB"
    assert size_iec(1290000) == "1.23MiB"
    assert size_iec(3 * 1024**3) == "3.00GiB"


def test_random_names_valid() -> None:
    rng = random.Random(7)
    names = {random_name(rng=rng) for _ in range(500)}
    assert len(names) > 400
    for name in names:
        assert valid_instance_name(name), name
        adjective, noun = name.split("-")
        assert adjective.isalpha() and noun.isalpha() and name.islower()
    taken = {"a"}
    assert random_name(lambda n: n in taken or len(taken) < 0) not in taken


def test_valid_instance_name_rules() -> None:
    assert valid_instance_name("c1")
    assert not valid_instance_name("1c")
    assert not valid_instance_name("-c")
    assert not valid_instance_name("c-")
    assert not valid_instance_name("c_1")
    assert not valid_instance_name("a" * 64)


# -- list --------------------------------------------------------------------------------------
def test_list_table_exact(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c10", "STOPPED", ephemeral=True, snapshots=("snap0", "snap1"))
    make_instance(mnt, "c2", "RUNNING", ipv4="10.0.3.5 (eth0)\n",
                  ipv6="fd42::5 (eth0)\nfd42::6 (eth1)\n")
    assert main(["list"]) == 0
    sep = ("+------+---------+-----------------+----------------+-----------------------"
           "+-----------+")
    assert capsys.readouterr().out.splitlines() == [
        sep,
        "| NAME |  STATE  |      IPV4       |      IPV6      |         TYPE          | SNAPSHOTS |",
        sep,
        "| c2   | RUNNING | 10.0.3.5 (eth0) | fd42::5 (eth0) | CONTAINER             | 0         |",
        "|      |         |                 | fd42::6 (eth1) |                       |           |",
        sep,
        "| c10  | STOPPED |                 |                | CONTAINER (EPHEMERAL) | 2         |",
        sep,
    ]


def test_list_reads_the_list_file(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With ``instances/.list``, the default columns come from that one file (the per-
    instance files are then not read: here they disagree on purpose)."""
    make_instance(mnt, "c2", "STOPPED")
    make_instance(mnt, "c10", "STOPPED")
    put(mnt / "instances" / ".list",
        "NAME\tSTATE\tPID\tTYPE\tEPHEMERAL\tSNAPSHOTS\tIPV4\tIPV6\n"
        "c10\tRUNNING\t77\tcontainer\ttrue\t3\t10.0.3.5 (eth0), 10.0.4.5 (eth1)\t\n"
        "c2\tFROZEN\t78\tcontainer\tfalse\t0\t\tfd42::6 (eth0)\n")
    assert main(["list", "-f", "csv", "-c", "ns46tSp"]) == 0
    assert capsys.readouterr().out == (
        'c2,FROZEN,,fd42::6 (eth0),CONTAINER,0,78\n'
        'c10,RUNNING,"10.0.3.5 (eth0)\n10.0.4.5 (eth1)",,CONTAINER (EPHEMERAL),3,77\n')
    # other columns still come from the instance's files
    assert main(["list", "c2", "-f", "csv", "-c", "nl"]) == 0
    assert capsys.readouterr().out.startswith("c2,2026/11/23")


def test_list_empty(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    assert capsys.readouterr().out == (
        "+------+-------+------+------+------+-----------+\n"
        "| NAME | STATE | IPV4 | IPV6 | TYPE | SNAPSHOTS |\n"
        "+------+-------+------+------+------+-----------+\n")


def test_list_missing_ip_files(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_instance(mnt, "c1", "STOPPED")
    (d / "ipv4").unlink()
    (d / "ipv6").unlink()
    assert main(["list", "--format", "csv"]) == 0
    assert capsys.readouterr().out == "c1,STOPPED,,,CONTAINER,0\n"


def test_list_csv_and_columns(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "web1", "RUNNING", ipv4="10.0.3.5 (eth0)\n10.0.4.5 (eth1)\n",
                  config={"image.os": "busybox"}, pid=77)
    make_instance(mnt, "db1", "FROZEN", snapshots=("snap0",))
    assert main(["list", "--format", "csv"]) == 0
    assert capsys.readouterr().out == (
        "db1,FROZEN,,,CONTAINER,1\n"
        'web1,RUNNING,"10.0.3.5 (eth0)\n10.0.4.5 (eth1)",,CONTAINER,0\n')
    assert main(["list", "-f", "csv", "-c", "nsap,image.os"]) == 0
    assert capsys.readouterr().out == ("db1,FROZEN,x86_64,,\n"
                                       "web1,RUNNING,x86_64,77,busybox\n")


def test_list_filters(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "web1", "RUNNING", config={"user.role": "front"})
    make_instance(mnt, "web2", "STOPPED")
    make_instance(mnt, "db1", "RUNNING")
    for flt, expected in ((["web"], "web1\nweb2\n"), (["status=running"], "db1\nweb1\n"),
                          (["web", "state=STOPPED"], "web2\n"), ([".*1"], "db1\nweb1\n"),
                          (["role=front"], "web1\n"), (["user.role=front"], "web1\n")):
        assert main(["list", "-f", "csv", "-c", "n", *flt]) == 0
        assert capsys.readouterr().out == expected, flt


def test_list_json_and_yaml(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c1", "RUNNING", config={"limits.memory": "512MiB"})
    make_instance(mnt, "c2", "STOPPED", ephemeral=True)
    make_instance(mnt, "c3", "FROZEN")
    assert main(["list", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in data] == ["c1", "c2", "c3"]
    assert [(d["status"], d["status_code"]) for d in data] == [
        ("Running", 103), ("Stopped", 102), ("Frozen", 110)]
    c1 = data[0]
    assert list(c1) == ["architecture", "config", "devices", "ephemeral", "profiles", "stateful",
                        "description", "created_at", "expanded_config", "expanded_devices",
                        "name", "status", "status_code", "last_used_at", "location", "type",
                        "project"]
    assert c1["config"] == {"limits.memory": "512MiB"}
    assert c1["expanded_devices"] == {"root": {"path": "/", "pool": "default", "type": "disk"}}
    assert c1["profiles"] == ["default"]
    assert (c1["type"], c1["location"], c1["project"], c1["stateful"]) == (
        "container", "none", "default", False)
    assert data[1]["ephemeral"] is True
    assert main(["list", "--format", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == data


def test_list_many_instances_fast(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(1000):
        make_instance(mnt, f"c{i}", "RUNNING" if i % 2 else "STOPPED")
    start = time.monotonic()
    assert main(["list"]) == 0
    elapsed = time.monotonic() - start
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 + 2 * 1000
    assert lines[3].startswith("| c0 ") and lines[5].startswith("| c1 ")
    assert lines[7].startswith("| c2 ")  # natural order
    assert elapsed < 3, elapsed


# -- launch / create ---------------------------------------------------------------------------
def test_launch_writes_in_order(mnt: Path, rec: Recorder,
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["launch", "local:busybox", "c1", "-c", "limits.memory=256MiB",
                 "-c", "environment.FOO=a=b", "-p", "default", "-p", "web", "-e"]) == 0
    assert capsys.readouterr().out == "Creating c1\nStarting c1\n"
    assert (mnt / "instances" / "c1").is_dir()
    assert rec.writes == [
        ("instances/c1/profiles", "default\nweb\n"),
        ("instances/c1/config/limits.memory", "256MiB"),
        ("instances/c1/config/environment.FOO", "a=b"),
        ("instances/c1/ephemeral", "true"),
        ("instances/c1/source", "busybox"),
        ("instances/c1/state", "start"),
    ]


def test_create_does_not_start(mnt: Path, rec: Recorder,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["create", "busybox", "c1"]) == 0
    assert capsys.readouterr().out == "Creating c1\n"
    assert rec.writes == [("instances/c1/source", "busybox")]


def test_launch_generates_name(mnt: Path, rec: Recorder,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["launch", "busybox"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Creating the instance"
    name = lines[1].removeprefix("Instance name is: ")
    assert valid_instance_name(name) and "-" in name
    assert lines[2] == f"Starting {name}"
    assert (mnt / "instances" / name).is_dir()


def test_launch_remote_image_is_pulled_by_the_daemon(
        mnt: Path, rec: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``lxfs launch ubuntu:22.04 c1``: the instance's source is a remote reference (the
    daemon pulls); ``lxfs publish c1 images:`` is refused (publishing elsewhere is not
    supported)."""
    monkeypatch.setenv("LXFS_CONF", str(tmp_path / "conf"))
    assert main(["launch", "ubuntu:22.04", "c1"]) == 0
    sources = [value for rel, value in rec.writes if rel == "instances/c1/source"]
    assert sources == ["simplestreams https://cloud-images.ubuntu.com/releases 22.04"]


def test_launch_rolls_back_on_failure(mnt: Path, rec: Recorder, daemon_rmdir: list[str],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    inst = mnt / "instances" / "c1"
    rec.fail("instances/c1/source", errno.ENOENT, "Image not found: nope", inst / "error")
    assert main(["launch", "nope", "c1"]) == 1
    out = capsys.readouterr()
    assert out.err == "Error: Image not found: nope\n"
    assert out.out == "Creating c1\n"
    assert not inst.exists()
    assert daemon_rmdir == ["instances/c1"]


def test_launch_bad_config_uses_strerror_fallback(mnt: Path, rec: Recorder,
                                                  daemon_rmdir: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rec.fail("instances/c1/config/bogus.key", errno.EINVAL, "", mnt / "instances" / "c1" / "x")
    assert main(["create", "busybox", "c1", "-c", "bogus.key=1"]) == 1
    assert capsys.readouterr().err == (
        "Error: Invalid value for config key 'bogus.key'\n")
    assert not (mnt / "instances" / "c1").exists()


def test_launch_start_failure_keeps_instance(mnt: Path, rec: Recorder,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    inst = mnt / "instances" / "c1"
    rec.fail("instances/c1/state", errno.EIO, "Failed to start: lxc-start exited 1",
             inst / "error")
    assert main(["launch", "busybox", "c1"]) == 1
    assert capsys.readouterr().err == (
        "Error: Failed to start: lxc-start exited 1\n"
        "Try `lxfs info --show-log c1` for more info\n")
    assert inst.is_dir()


def test_launch_existing_name(mnt: Path, rec: Recorder,
                              capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c1")
    assert main(["launch", "busybox", "c1"]) == 1
    assert capsys.readouterr().err == "Error: Instance 'c1' already exists\n"
    assert main(["launch", "busybox", "9bad"]) == 1
    assert capsys.readouterr().err.startswith("Error: Invalid instance name: '9bad'")


# -- state -------------------------------------------------------------------------------------
def test_state_actions(mnt: Path, rec: Recorder) -> None:
    for name in ("c1", "c2"):
        make_instance(mnt, name)
    assert main(["start", "c1", "c2"]) == 0
    assert main(["stop", "c1"]) == 0
    assert main(["stop", "--force", "c2"]) == 0
    assert main(["restart", "c1"]) == 0
    assert main(["freeze", "c1"]) == 0
    assert main(["pause", "c2"]) == 0
    assert main(["unfreeze", "c1"]) == 0
    assert [v for _p, v in rec.writes] == ["start", "start", "stop", "kill", "restart", "freeze",
                                           "freeze", "unfreeze"]
    assert rec.writes[3][0] == "instances/c2/state"


def test_state_error_from_error_file(mnt: Path, rec: Recorder,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    inst = make_instance(mnt, "c1", "STOPPED")
    rec.fail("instances/c1/state", errno.EBUSY, "The instance is already stopped",
             inst / "error")
    assert main(["stop", "c1"]) == 1
    assert capsys.readouterr().err == "Error: The instance is already stopped\n"


def test_state_error_fallback(mnt: Path, rec: Recorder,
                              capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c1")
    rec.fail("instances/c1/state", errno.EBUSY, "", mnt / "instances" / "c1" / "error")
    assert main(["start", "c1"]) == 1
    assert capsys.readouterr().err == "Error: The instance is already running\n"


def test_stop_timeout_is_the_daemons(mnt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_instance(mnt, "c1")
    writes: list[str] = []
    monkeypatch.setattr(cli_mount, "write_raw", lambda path, value: writes.append(value))
    assert main(["stop", "c1", "--timeout", "1"]) == 0
    assert writes == ["stop 1"]


class FakeStateDaemon:
    """Replaces mount.write_raw for ``state`` writes as lxfsd answers them: the write returns
    once the transition is done (after ``delay`` seconds), then the state file says so.
    Records when each write began and ended; ``barriers`` make named writes wait for each
    other (a test fails unless they run at the same time); ``fail`` maps names to an errno and
    an error-file message."""

    STATES = {"start": "RUNNING", "stop": "STOPPED", "kill": "STOPPED", "restart": "RUNNING",
              "freeze": "FROZEN", "unfreeze": "RUNNING"}

    def __init__(self, root: Path, delay: float = 0.02) -> None:
        self.root = root
        self.delay = delay
        self.log: list[tuple[str, str, str]] = []  # (begin|end, name, value)
        self.barriers: dict[str, threading.Barrier] = {}
        self.fail: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()

    def __call__(self, path: Path | str, value: str) -> None:
        rel = Path(os.path.relpath(path, self.root)).parts
        assert rel[0] == "instances" and rel[2] == "state", rel
        name = rel[1]
        with self._lock:
            self.log.append(("begin", name, value))
        if name in self.barriers:
            self.barriers[name].wait()
        time.sleep(self.delay)
        if name in self.fail:
            err, message = self.fail[name]
            (self.root / "instances" / name / "error").write_text(message + "\n")
            raise OSError(err, os.strerror(err))
        Path(path).write_text(self.STATES[value.split()[0]] + "\n")
        with self._lock:
            self.log.append(("end", name, value))

    def order(self, what: str) -> list[str]:
        return [name for event, name, _v in self.log if event == what]

    def values(self) -> dict[str, str]:
        return {name: value for event, name, value in self.log if event == "begin"}


@pytest.fixture
def fake_daemon(mnt: Path, monkeypatch: pytest.MonkeyPatch) -> FakeStateDaemon:
    daemon = FakeStateDaemon(mnt)
    monkeypatch.setattr(cli_mount, "write_raw", daemon)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    return daemon


def test_stop_all_by_stop_priority(mnt: Path, fake_daemon: FakeStateDaemon) -> None:
    """Highest ``boot.stop.priority`` first; equal priorities at the same time (the barrier
    holds each of b1/b2 until the other has begun); a group starts once the one before it
    has stopped; stopped instances are left alone."""
    for name, priority in (("a1", "1"), ("b1", "10"), ("b2", "10"), ("c1", ""), ("c2", "0")):
        make_instance(mnt, name, config={"boot.stop.priority": priority} if priority else {})
    make_instance(mnt, "f1", "FROZEN", config={"boot.stop.priority": "5"})
    make_instance(mnt, "s1", "STOPPED", config={"boot.stop.priority": "99"})
    barrier = threading.Barrier(2, timeout=5)
    fake_daemon.barriers = {"b1": barrier, "b2": barrier, "c1": threading.Barrier(2, timeout=5)}
    fake_daemon.barriers["c2"] = fake_daemon.barriers["c1"]
    assert main(["stop", "--all"]) == 0
    log = [(event, name) for event, name, _v in fake_daemon.log]
    groups = [{"b1", "b2"}, {"f1"}, {"a1"}, {"c1", "c2"}]
    position = 0
    for group in groups:  # each group: all begin, then all end, before the next begins
        assert {n for _e, n in log[position:position + len(group)]} == group
        assert all(e == "begin" for e, _n in log[position:position + len(group)])
        position += len(group)
        assert {n for _e, n in log[position:position + len(group)]} == group
        assert all(e == "end" for e, _n in log[position:position + len(group)])
        position += len(group)
    assert position == len(log)
    assert set(fake_daemon.values().values()) == {"stop"}
    assert all((mnt / "instances" / n / "state").read_text() == "STOPPED\n"
               for n in ("a1", "b1", "b2", "c1", "c2", "f1", "s1"))


def test_stop_all_force_and_timeout(mnt: Path, fake_daemon: FakeStateDaemon) -> None:
    make_instance(mnt, "low", config={"boot.stop.priority": "1"})
    make_instance(mnt, "high", config={"boot.stop.priority": "2"})
    assert main(["stop", "--all", "--force"]) == 0
    assert fake_daemon.order("begin") == ["high", "low"]
    assert set(fake_daemon.values().values()) == {"kill"}
    fake_daemon.log.clear()
    for name in ("low", "high"):
        put(mnt / "instances" / name / "state", "RUNNING\n")
    assert main(["stop", "--all", "--timeout", "7"]) == 0
    assert fake_daemon.order("begin") == ["high", "low"]
    assert set(fake_daemon.values().values()) == {"stop 7"}


def test_stop_all_goes_on_after_a_failure(mnt: Path, fake_daemon: FakeStateDaemon,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A failed stop is reported; the lower priorities are stopped all the same. An instance
    that stopped by itself meanwhile (EBUSY, now STOPPED) is no failure."""
    make_instance(mnt, "first", config={"boot.stop.priority": "3"})
    make_instance(mnt, "gone", config={"boot.stop.priority": "2"})
    make_instance(mnt, "last", config={"boot.stop.priority": "1"})
    fake_daemon.fail["first"] = (errno.EIO, "failed to stop first")

    def stopped_by_itself(path: Path | str, value: str) -> None:
        if "/gone/" in str(path):
            put(mnt / "instances" / "gone" / "state", "STOPPED\n")
            (mnt / "instances" / "gone" / "error").write_text("instance gone is already "
                                                              "stopped\n")
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        fake_daemon(path, value)

    monkeypatch.setattr(cli_mount, "write_raw", stopped_by_itself)
    assert main(["stop", "--all"]) == 1
    assert capsys.readouterr().err == "Error: first: failed to stop first\n"
    assert fake_daemon.order("begin") == ["first", "last"]
    assert (mnt / "instances" / "last" / "state").read_text() == "STOPPED\n"


def test_other_commands_all(mnt: Path, fake_daemon: FakeStateDaemon) -> None:
    """``start``/``restart``/``freeze``/``unfreeze --all``: the instances in the state each
    applies to, all at once (LXD's bulk state change has no order)."""
    make_instance(mnt, "r1", config={"boot.stop.priority": "1", "boot.autostart.priority": "9"})
    make_instance(mnt, "s1", "STOPPED", config={"boot.autostart.priority": "1"})
    make_instance(mnt, "s2", "STOPPED", config={"boot.autostart.priority": "5"})
    make_instance(mnt, "z1", "FROZEN")
    barrier = threading.Barrier(2, timeout=5)
    fake_daemon.barriers = {"s1": barrier, "s2": barrier}
    assert main(["start", "--all"]) == 0
    assert fake_daemon.values() == {"s1": "start", "s2": "start"}
    fake_daemon.barriers.clear()
    everyone = {"r1", "s1", "s2", "z1"}
    for command, expected in (("freeze", everyone - {"z1"}), ("unfreeze", everyone),
                              ("restart", everyone)):
        fake_daemon.log.clear()
        assert main([command, "--all"]) == 0
        assert set(fake_daemon.values()) == expected, command
        assert set(fake_daemon.values().values()) == {command}
    fake_daemon.log.clear()
    assert main(["pause", "--all"]) == 0
    assert set(fake_daemon.values().values()) == {"freeze"}


def test_all_uses_the_list_file(mnt: Path, fake_daemon: FakeStateDaemon) -> None:
    """The states come from ``instances/.list`` (one read) where the daemon has it."""
    make_instance(mnt, "c1", "STOPPED")
    make_instance(mnt, "c2", "STOPPED")
    put(mnt / "instances" / ".list", "NAME\tSTATE\tPID\tTYPE\tEPHEMERAL\tSNAPSHOTS\tIPV4\tIPV6\n"
        "c1\tRUNNING\t77\tcontainer\tfalse\t0\t\t\nc2\tSTOPPED\t0\tcontainer\tfalse\t0\t\t\n")
    assert main(["stop", "--all"]) == 0
    assert fake_daemon.values() == {"c1": "stop"}


def test_all_and_names(mnt: Path, fake_daemon: FakeStateDaemon,
                       capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c1")
    assert main(["stop", "--all", "c1"]) == 1
    assert capsys.readouterr().err == "Error: Both --all and instance name given\n"
    assert main(["stop"]) == 1
    assert capsys.readouterr().err == "Error: Give the instances to stop, or --all\n"
    assert main(["start", "--all"]) == 0  # nothing to do
    assert fake_daemon.log == []


def test_priority_groups() -> None:
    from lxfs.cli.instances import priority_groups

    assert priority_groups({"c10": 0, "c2": 0, "x": 7, "a": -1, "y": 7}) == [
        ["x", "y"], ["c2", "c10"], ["a"]]
    assert priority_groups({}) == []


# -- delete / rename / snapshots ---------------------------------------------------------------
def test_delete_running_needs_force(mnt: Path, rec: Recorder, daemon_rmdir: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c1", "RUNNING")
    assert main(["delete", "c1"]) == 1
    assert capsys.readouterr().err == (
        "Error: The instance is currently running, stop it first or pass --force\n")
    assert (mnt / "instances" / "c1").is_dir()
    assert rec.writes == [] and daemon_rmdir == []
    assert main(["delete", "-f", "c1"]) == 0
    assert rec.writes == [("instances/c1/state", "kill")]
    assert daemon_rmdir == ["instances/c1"]


def test_delete_stopped_and_snapshot(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inst = make_instance(mnt, "c1", "STOPPED", snapshots=("snap0",))
    (inst / "snapshots" / "snap0" / "created_at").unlink()
    assert main(["delete", "c1/snap0"]) == 0
    assert not (inst / "snapshots" / "snap0").exists()
    assert main(["delete", "c1/snap9"]) == 1
    assert capsys.readouterr().err == "Error: Snapshot not found\n"
    d = mnt / "instances" / "c2"
    d.mkdir()
    put(d / "state", "STOPPED\n")
    (d / "state").unlink()
    assert main(["delete", "c2"]) == 0
    assert not d.exists()


def test_rename(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c1", "STOPPED")
    make_instance(mnt, "c2", "STOPPED")
    assert main(["move", "c1", "final-beta"]) == 0
    assert (mnt / "instances" / "final-beta").is_dir()
    assert not (mnt / "instances" / "c1").exists()
    assert main(["rename", "c2", "final-beta"]) == 1
    assert capsys.readouterr().err == "Error: Instance 'final-beta' already exists\n"


def test_snapshot_names(mnt: Path) -> None:
    inst = make_instance(mnt, "c1", snapshots=("snap0", "snap2"))
    assert main(["snapshot", "c1"]) == 0
    assert (inst / "snapshots" / "snap1").is_dir()
    assert main(["snapshot", "c1"]) == 0
    assert (inst / "snapshots" / "snap3").is_dir()
    assert main(["snapshot", "c1", "2026-11-23"]) == 0
    assert (inst / "snapshots" / "2026-11-23").is_dir()


def test_restore(mnt: Path, rec: Recorder) -> None:
    make_instance(mnt, "c1", snapshots=("snap0",))
    assert main(["restore", "c1", "snap0"]) == 0
    assert rec.writes == [("instances/c1/restore", "snap0")]


# -- info --------------------------------------------------------------------------------------
def test_info(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inst = make_instance(mnt, "c1", "RUNNING", ephemeral=True, snapshots=("snap0",),
                         pid=os.getpid())
    assert main(["info", "c1", "--show-log"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Name: c1\nStatus: RUNNING\nType: container (ephemeral)\n"
                           "Architecture: x86_64\n")
    assert f"PID: {os.getpid()}\n" in text
    assert "Created: 2026/11/23 10:49 UTC\nLast Used: 2026/11/23 10:50 UTC\n" in text
    assert "Snapshots:\n" in text and "| snap0 | 2026/11/23 11:00 UTC |" in text
    assert text.endswith("Log:\n\nlxc c1 20261123 INFO start - started\n")
    put(inst / "ephemeral", "false\n")
    assert main(["info", "c1"]) == 0
    text = capsys.readouterr().out
    assert "Type: container\n" in text and "Log:" not in text


def test_server_info(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    put(mnt / "config" / "core.https_address", "[::]:8443\n")
    assert main(["info"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["config"] == {"core.https_address": "[::]:8443"}
    assert data["environment"]["server_pid"] == 4242
    assert data["environment"]["server_version"] == "0.1.0"
    assert data["environment"]["architectures"] == ["x86_64"]


# -- config ------------------------------------------------------------------------------------
def test_config_set_get_instance(mnt: Path, rec: Recorder,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    inst = make_instance(mnt, "c1")
    assert main(["config", "set", "c1", "limits.memory", "512MB"]) == 0
    assert (inst / "config" / "limits.memory").read_text() == "512MB"
    assert main(["config", "set", "c1", "security.privileged=true", "user.a=b=c"]) == 0
    assert (inst / "config" / "user.a").read_text() == "b=c"
    assert main(["config", "get", "c1", "limits.memory"]) == 0
    assert capsys.readouterr().out == "512MB\n"
    assert main(["config", "get", "c1", "user.unset"]) == 0
    assert capsys.readouterr().out == "\n"
    assert main(["config", "unset", "c1", "limits.memory"]) == 0
    assert not (inst / "config" / "limits.memory").exists()
    assert main(["config", "set", "c1", "user.a", ""]) == 0
    assert not (inst / "config" / "user.a").exists()


def test_config_set_server(mnt: Path, rec: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c1")
    assert main(["config", "set", "core.https_address", "[::]:8443"]) == 0
    assert (mnt / "config" / "core.https_address").read_text() == "[::]:8443"
    assert main(["config", "set", "core.trust_password=SECRET"]) == 0
    assert (mnt / "config" / "core.trust_password").read_text() == "SECRET"
    assert main(["config", "set", "core.trust_password", "a=b"]) == 0
    assert (mnt / "config" / "core.trust_password").read_text() == "a=b"
    assert main(["config", "get", "core.https_address"]) == 0
    assert capsys.readouterr().out == "[::]:8443\n"
    assert main(["config", "unset", "core.trust_password"]) == 0
    assert not (mnt / "config" / "core.trust_password").exists()
    assert main(["config", "show"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {
        "config": {"core.https_address": "[::]:8443"}}


def test_config_set_error(mnt: Path, rec: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    inst = make_instance(mnt, "c1")
    rec.fail("instances/c1/config/limits.memory", errno.EINVAL,
             'Invalid value for "limits.memory": "lots"', inst / "error")
    assert main(["config", "set", "c1", "limits.memory", "lots"]) == 1
    assert capsys.readouterr().err == 'Error: Invalid value for "limits.memory": "lots"\n'
    rec.fail("config/core.bogus", errno.EINVAL, "Unknown key: core.bogus", mnt / "error")
    assert main(["config", "set", "core.bogus", "1"]) == 1
    assert capsys.readouterr().err == "Error: Unknown key: core.bogus\n"


def test_config_show(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inst = make_instance(mnt, "c1", config={"limits.memory": "1GB"})
    put(inst / "expanded" / "config" / "environment.X", "1\n")
    assert main(["config", "show", "c1"]) == 0
    text = capsys.readouterr().out
    assert text == ("architecture: x86_64\nconfig:\n  limits.memory: 1GB\ndevices: {}\n"
                    "ephemeral: false\nprofiles:\n- default\nstateful: false\n"
                    "description: ''\n")
    assert main(["config", "show", "c1", "--expanded"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["config"] == {"environment.X": "1", "limits.memory": "1GB"}
    assert data["devices"] == {"root": {"path": "/", "pool": "default", "type": "disk"}}


def test_config_device(mnt: Path, rec: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    inst = make_instance(mnt, "c1")
    assert main(["config", "device", "add", "c1", "opt", "disk", "source=/opt",
                 "path=opt"]) == 0
    assert capsys.readouterr().out == "Device opt added to c1\n"
    assert rec.writes == [("instances/c1/devices/opt/type", "disk"),
                          ("instances/c1/devices/opt/source", "/opt"),
                          ("instances/c1/devices/opt/path", "opt")]
    assert main(["config", "device", "list", "c1"]) == 0
    assert capsys.readouterr().out == "opt\n"
    assert main(["config", "device", "show", "c1"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {
        "opt": {"path": "opt", "source": "/opt", "type": "disk"}}
    assert main(["config", "device", "get", "c1", "opt", "source"]) == 0
    assert capsys.readouterr().out == "/opt\n"
    (inst / "devices" / "opt" / "type").unlink()
    (inst / "devices" / "opt" / "source").unlink()
    (inst / "devices" / "opt" / "path").unlink()
    assert main(["config", "device", "remove", "c1", "opt"]) == 0
    assert capsys.readouterr().out == "Device opt removed from c1\n"
    assert not (inst / "devices" / "opt").exists()
    assert main(["config", "device", "remove", "c1", "root"]) == 1
    assert "cannot be removed from individual instance" in capsys.readouterr().err


def test_config_device_add_rolls_back(mnt: Path, rec: Recorder,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    inst = make_instance(mnt, "c1")
    rec.fail("instances/c1/devices/eth1/type", errno.EINVAL, "Unknown device type: bogus",
             inst / "error")
    assert main(["config", "device", "add", "c1", "eth1", "bogus"]) == 1
    assert capsys.readouterr().err == "Error: Unknown device type: bogus\n"
    assert not (inst / "devices" / "eth1").exists()


def test_profiles(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    put(mnt / "profiles" / "default" / "used_by", "c1\nc2\n")
    assert main(["profile", "list"]) == 0
    assert "| default | Default lxfs profile | 2       |" in capsys.readouterr().out
    assert main(["profile", "show", "default"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["devices"]["root"] == {"path": "/", "pool": "default", "type": "disk"}
    assert data["used_by"] == ["/1.0/instances/c1", "/1.0/instances/c2"]
    assert main(["profile", "show", "nope"]) == 1
    assert capsys.readouterr().err == "Error: Profile not found\n"


# -- images ------------------------------------------------------------------------------------
def make_tarball(path: Path, payload: bytes = b"hello") -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("metadata.yaml", b"architecture: x86_64\n"),
                           ("rootfs/hello", payload)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    return path


def fake_daemon_import(monkeypatch: pytest.MonkeyPatch, mnt: Path) -> list[str]:
    """After the real upload (the file copied into images/), do what lxfsd would do (an
    image already there: the upload is dropped)."""
    uploads: list[str] = []
    real_upload = cli_fast.upload
    pending: list[str] = []

    def upload(images: str, src: str, digest: hashlib._Hash) -> str:
        dest = real_upload(images, src, digest)
        uploads.append(os.path.basename(dest))
        pending.append(dest)
        data = b"".join(Path(p).read_bytes() for p in pending)
        fp = hashlib.sha256(data).hexdigest()
        return_dir = mnt / "images" / fp
        if src.endswith((".squashfs", ".tar.gz")) and (len(pending) == 2 or
                                                       src.endswith(".tar.gz")):
            if return_dir.is_dir():
                for path in pending:
                    os.unlink(path)
            else:
                return_dir.mkdir()
                put(return_dir / "fingerprint", fp + "\n")
                shutil.move(pending[0], return_dir / "export")
                if len(pending) == 2:
                    shutil.move(pending[1], return_dir / "export.rootfs")
            pending.clear()
        return dest

    monkeypatch.setattr(cli_fast, "upload", upload)
    return uploads


def test_image_import(mnt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    uploads = fake_daemon_import(monkeypatch, mnt)
    tarball = make_tarball(tmp_path / "busybox.tar.gz", os.urandom(3 << 20))
    fp = hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert main(["image", "import", str(tarball), "--alias", "busybox", "--alias", "bb"]) == 0
    assert capsys.readouterr().out == f"Image imported with fingerprint: {fp}\n"
    assert uploads == ["busybox.tar.gz"]
    assert (mnt / "images" / fp / "export").read_bytes() == tarball.read_bytes()
    assert os.readlink(mnt / "images" / "aliases" / "busybox") == fp
    assert os.readlink(mnt / "images" / "aliases" / "bb") == fp
    # again: uploaded and dropped by the daemon (as LXD's client, which always uploads: the
    # fingerprint is hashed during the copy), aliases ensured
    (mnt / "images" / "aliases" / "bb").unlink()
    assert main(["image", "import", str(tarball), "--alias", "bb", "--public"]) == 0
    assert capsys.readouterr().out == f"Image already imported with fingerprint: {fp}\n"
    assert uploads == ["busybox.tar.gz", "busybox.tar.gz"]
    assert [p for p in os.listdir(mnt / "images") if p != "aliases"] == [fp]
    assert os.readlink(mnt / "images" / "aliases" / "bb") == fp
    assert (mnt / "images" / fp / "public").read_text() == "true"


def test_image_import_split(mnt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    uploads = fake_daemon_import(monkeypatch, mnt)
    meta = tmp_path / "meta.tar.xz"
    meta.write_bytes(b"metadata" * 1000)
    rootfs = tmp_path / "rootfs.squashfs"
    rootfs.write_bytes(b"hsqs" + b"x" * 5000)
    fp = hashlib.sha256(meta.read_bytes() + rootfs.read_bytes()).hexdigest()
    assert main(["image", "import", str(meta), str(rootfs), "--alias", "split"]) == 0
    assert capsys.readouterr().out == f"Image imported with fingerprint: {fp}\n"
    assert uploads == ["meta.tar.xz", "rootfs.squashfs"]
    assert os.readlink(mnt / "images" / "aliases" / "split") == fp


def test_image_import_close_error(mnt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    tarball = make_tarball(tmp_path / "bad.tar.gz")
    real_close = os.close
    images_dir = str(mnt / "images")

    def close(fd: int) -> None:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        real_close(fd)
        if target.startswith(images_dir + "/"):
            (mnt / "error").write_text("Invalid image: metadata.yaml is missing\n")
            raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "close", close)
    assert main(["image", "import", str(tarball)]) == 1
    assert capsys.readouterr().err == "Error: Invalid image: metadata.yaml is missing\n"


def test_image_import_alias_conflict(mnt: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    fake_daemon_import(monkeypatch, mnt)
    other = "b" * 64
    (mnt / "images" / other).mkdir()
    os.symlink(other, mnt / "images" / "aliases" / "busybox")
    tarball = make_tarball(tmp_path / "busybox.tar.gz")
    assert main(["image", "import", str(tarball), "--alias", "busybox"]) == 1
    assert capsys.readouterr().err == "Error: Alias already exists: busybox\n"
    assert main(["image", "import", str(tarball), "--alias", "busybox", "--reuse"]) == 0
    fp = hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert os.readlink(mnt / "images" / "aliases" / "busybox") == fp


def make_image(mnt: Path, fp: str, aliases: tuple[str, ...] = (), size: int = 1290000,
               description: str = "BusyBox 1.35.0") -> Path:
    d = mnt / "images" / fp
    for key, value in (("fingerprint", fp), ("filename", "busybox.tar.gz"), ("size", str(size)),
                       ("architecture", "x86_64"), ("type", "container"),
                       ("created_at", "2026-11-23T10:49:34Z"),
                       ("uploaded_at", "2026-11-23T10:49:42.752514138Z"), ("public", "false"),
                       ("auto_update", "false"), ("aliases", "".join(a + "\n" for a in aliases)),
                       ("properties/description", description), ("properties/os", "busybox")):
        put(d / key, value + ("\n" if key != "aliases" else ""))
    put(d / "export", "\x1f\x8bfake")
    for alias in aliases:
        os.symlink(f"../{fp}", mnt / "images" / "aliases" / alias)
    return d


def test_image_list(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fp1 = "a2c62e52d34d" + "1" * 52
    fp2 = "ffee00112233" + "2" * 52
    make_image(mnt, fp1, ("busybox", "bb"))
    make_image(mnt, fp2, (), size=2048, description="")
    put(mnt / "images" / "pending.tar.gz", "partial upload")
    assert main(["image", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == ("|    ALIAS    | FINGERPRINT  | PUBLIC |  DESCRIPTION   | ARCHITECTURE "
                        "|   TYPE    |  SIZE   |          UPLOAD DATE          |")
    assert lines[3] == ("|             | ffee00112233 | no     |                | x86_64       "
                        "| CONTAINER | 2.00KiB | Nov 23, 2026 at 10:49am (UTC) |")
    assert lines[5] == ("| bb (1 more) | a2c62e52d34d | no     | BusyBox 1.35.0 | x86_64       "
                        "| CONTAINER | 1.23MiB | Nov 23, 2026 at 10:49am (UTC) |")
    assert len(lines) == 7
    assert main(["image", "list", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {d["fingerprint"] for d in data} == {fp1, fp2}
    entry = next(d for d in data if d["fingerprint"] == fp1)
    assert entry["aliases"] == [{"name": "busybox", "description": ""},
                                {"name": "bb", "description": ""}]
    assert entry["size"] == 1290000 and entry["properties"]["os"] == "busybox"


def test_image_resolve_info_delete_alias(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fp = "a2c62e52d34d" + "1" * 52
    make_image(mnt, fp, ("busybox",))
    make_image(mnt, "a2c6ffffffff" + "0" * 52)
    assert main(["image", "info", "busybox"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"Fingerprint: {fp}\nSize: 1.23MiB\nArchitecture: x86_64\n")
    assert "    description: BusyBox 1.35.0\n" in text and "Aliases:\n    - busybox\n" in text
    assert main(["image", "info", "a2c62e"]) == 0
    assert capsys.readouterr().out.startswith(f"Fingerprint: {fp}\n")
    assert main(["image", "info", "a2c6"]) == 1
    assert "matches several images" in capsys.readouterr().err
    assert main(["image", "info", "nope"]) == 1
    assert capsys.readouterr().err == "Error: Image not found\n"
    assert main(["image", "alias", "create", "bb", "a2c62e"]) == 0
    assert os.readlink(mnt / "images" / "aliases" / "bb") == fp
    assert main(["image", "alias", "create", "bb", "busybox"]) == 1
    assert capsys.readouterr().err == "Error: Alias already exists: bb\n"
    assert main(["image", "alias", "list", "--format", "csv"]) == 0
    assert capsys.readouterr().out == (f"bb,{fp[:12]},CONTAINER,\n"
                                       f"busybox,{fp[:12]},CONTAINER,\n")
    assert main(["image", "alias", "delete", "bb"]) == 0
    assert not os.path.lexists(mnt / "images" / "aliases" / "bb")
    assert main(["image", "alias", "delete", "bb"]) == 1
    assert capsys.readouterr().err == "Error: Image alias not found\n"
    (mnt / "images" / "aliases" / "busybox").unlink()
    for name in os.listdir(mnt / "images" / fp):
        p = mnt / "images" / fp / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert main(["image", "delete", fp[:12]]) == 0
    assert not (mnt / "images" / fp).exists()


def test_image_export(mnt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    fp = "c" * 64
    d = make_image(mnt, fp, ("busybox",))
    put(d / "export", "tarball-bytes")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.chdir(out_dir)
    assert main(["image", "export", "busybox"]) == 0
    assert capsys.readouterr().out == "Image exported successfully!\n"
    assert (out_dir / f"{fp}.tar.gz").read_text() == "tarball-bytes"
    put(d / "export.rootfs", "squash")
    assert main(["image", "export", "busybox", str(tmp_path / "x.tar.xz")]) == 0
    assert (tmp_path / "x.tar.xz").read_text() == "tarball-bytes"
    assert (tmp_path / "x.tar.xz.root").read_text() == "squash"


def test_image_build(mnt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     capfd: pytest.CaptureFixture[str]) -> None:
    fake_daemon_import(monkeypatch, mnt)
    contrib = tmp_path / "contrib"
    contrib.mkdir()
    source = make_tarball(tmp_path / "src.tar.gz")
    script = contrib / "busybox.sh"
    script.write_text(f"#!/bin/sh\nset -e\necho building into $1 >&2\necho some progress\n"
                      f"cp {source} \"$1/busybox.tar.gz\"\necho \"$1/busybox.tar.gz\"\n")
    monkeypatch.setenv("LXFS_CONTRIB_DIR", str(contrib))
    fp = hashlib.sha256(source.read_bytes()).hexdigest()
    assert main(["image", "build", "busybox"]) == 0
    out = capfd.readouterr()
    assert out.out == f"Building image busybox\nImage imported with fingerprint: {fp}\n"
    assert "building into" in out.err and "some progress" in out.err
    outdir = out.err.split("building into ", 1)[1].split()[0]
    assert outdir.startswith(tempfile_dir()) and not os.path.exists(outdir)
    assert os.readlink(mnt / "images" / "aliases" / "busybox") == fp
    # a rebuild with the same result re-points the alias and succeeds
    (mnt / "images" / "aliases" / "busybox").unlink()
    os.symlink("d" * 64, mnt / "images" / "aliases" / "busybox")
    assert main(["image", "build", "busybox"]) == 0
    assert capfd.readouterr().out.endswith(f"Image already imported with fingerprint: {fp}\n")
    assert os.readlink(mnt / "images" / "aliases" / "busybox") == fp


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


def test_image_build_errors(mnt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LXFS_CONTRIB_DIR", str(tmp_path / "missing"))
    assert main(["image", "build", "debian"]) == 1
    assert capfd.readouterr().err.startswith(
        f"Error: image recipe not found: {tmp_path / 'missing' / 'debian.sh'}")
    contrib = tmp_path / "contrib"
    contrib.mkdir()
    (contrib / "debian.sh").write_text("#!/bin/sh\necho \"suite=$2\" >&2\nexit 3\n")
    monkeypatch.setenv("LXFS_CONTRIB_DIR", str(contrib))
    assert main(["image", "build", "debian", "--suite", "trixie"]) == 1
    err = capfd.readouterr().err
    assert "suite=trixie" in err
    assert err.endswith("Error: image recipe debian.sh failed (exit status 3)\n")


def test_default_contrib_dir() -> None:
    assert cli_images.contrib_dir() == REPO / "contrib" / "images"


# -- files -------------------------------------------------------------------------------------
def test_file_push_pull(mnt: Path, tmp_path: Path) -> None:
    inst = make_instance(mnt, "c1")
    rootfs = inst / "rootfs"
    (rootfs / "root").mkdir()
    src = tmp_path / "myfile"
    data = os.urandom((2 << 20) + 17)
    src.write_bytes(data)
    assert main(["file", "push", str(src), "c1/root/", "--mode", "0600", "--uid", "1000",
                 "--gid", "1000"]) == 0
    pushed = rootfs / "root" / "myfile"
    assert pushed.read_bytes() == data
    st = pushed.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == (1000, 1000)
    assert main(["file", "push", str(src), "c1/etc/deep/renamed", "-p"]) == 0
    assert (rootfs / "etc" / "deep" / "renamed").read_bytes() == data
    assert main(["file", "push", str(src), "c1/nowhere/x"]) == 1
    dest = tmp_path / "pulled"
    assert main(["file", "pull", "c1/root/myfile", str(dest)]) == 0
    assert dest.read_bytes() == data
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert main(["file", "delete", "c1/root/myfile"]) == 0
    assert not pushed.exists()


def test_file_recursive(mnt: Path, tmp_path: Path) -> None:
    inst = make_instance(mnt, "c1")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a").write_text("A")
    (tree / "sub" / "b").write_text("B")
    os.symlink("a", tree / "link")
    assert main(["file", "push", "-r", str(tree), "c1/opt"]) == 1  # no /opt yet
    assert main(["file", "push", "-r", "-p", str(tree), "c1/opt"]) == 0
    assert (inst / "rootfs" / "opt" / "tree" / "sub" / "b").read_text() == "B"
    assert os.readlink(inst / "rootfs" / "opt" / "tree" / "link") == "a"
    back = tmp_path / "back"
    back.mkdir()
    assert main(["file", "pull", "-r", "c1/opt/tree", str(back)]) == 0
    assert (back / "tree" / "a").read_text() == "A"
    assert os.readlink(back / "tree" / "link") == "a"


def test_file_symlinks_stay_in_rootfs(mnt: Path, tmp_path: Path) -> None:
    inst = make_instance(mnt, "c1")
    host_secret = tmp_path / "host-secret"
    host_secret.write_text("host")
    (inst / "rootfs" / "etc").mkdir()
    os.symlink(str(host_secret), inst / "rootfs" / "etc" / "evil")
    os.symlink("../../..", inst / "rootfs" / "etc" / "up")
    src = tmp_path / "payload"
    src.write_text("container")
    assert main(["file", "push", str(src), "c1/etc/evil", "-p"]) == 0
    assert host_secret.read_text() == "host"
    inside = inst / "rootfs" / str(host_secret).lstrip("/")
    assert inside.read_text() == "container"
    assert main(["file", "push", str(src), "c1/etc/up/escaped"]) == 0
    assert (inst / "rootfs" / "escaped").read_text() == "container"


def test_file_pull_stdout(mnt: Path, capfd: pytest.CaptureFixture[str]) -> None:
    inst = make_instance(mnt, "c1")
    put(inst / "rootfs" / "etc" / "hostname", "c1\n")
    assert main(["file", "pull", "c1/etc/hostname", "-"]) == 0
    assert capfd.readouterr().out == "c1\n"


# -- exec helpers (no LXC needed) --------------------------------------------------------------
def test_exec_environment(mnt: Path) -> None:
    inst = make_instance(mnt, "c1")
    put(inst / "expanded" / "config" / "environment.FOO", "bar\n")
    put(inst / "expanded" / "config" / "environment.PATH", "/opt/bin:/bin\n")
    put(inst / "expanded" / "config" / "limits.memory", "1GB\n")
    env = cli_exec.build_env(str(inst), 0, False, ["FOO=override", "X=1=2"])
    assert env["FOO"] == "override" and env["X"] == "1=2"
    assert env["PATH"] == "/opt/bin:/bin"
    assert (env["HOME"], env["USER"], env["LANG"]) == ("/root", "root", "C.UTF-8")
    assert "limits.memory" not in env
    env = cli_exec.build_env(str(inst), 1000, False, [])
    assert "HOME" not in env and "USER" not in env


def test_exec_path_imports_no_argparse_re_or_pathlib() -> None:
    """What ``lxfs exec`` imports before attaching (run with -S: site's own imports aside)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import lxfs.cli;"
            "from lxfs.cli import exec as e; assert e.parse_fast(['c1', '--', 'true']);"
            "print(' '.join(m for m in ('argparse', 're', 'pathlib', 'typing', 'yaml', 'enum')"
            " if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(REPO)], capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == ""


def test_exec_fast_parse_agrees_with_argparse() -> None:
    """``lxfs exec`` parses without argparse when it can, to the same result; anything else
    (help, abbreviations, bad values) goes to argparse."""
    from lxfs.cli import build_parser

    cases = [
        ["c1", "--", "true"],
        ["c1", "ls", "-la"],
        ["c1", "--env", "A=1", "--env=B=2", "-t", "--", "sh", "-c", "echo $A"],
        ["--user", "1000", "c1", "--group=100", "--cwd", "/tmp", "id"],
        ["-T", "c1", "--force-interactive", "--", "--env"],
        ["c1"],
    ]
    fields = ("name", "env", "cwd", "user", "group", "force_interactive",
              "force_noninteractive", "command")
    for argv in cases:
        fast = cli_exec.parse_fast(argv)
        assert fast is not None, argv
        slow = build_parser(["exec", *argv]).parse_args(["exec", *argv])
        opts, command = cli_exec.split_options(list(slow.command))
        if opts:
            import argparse

            parser = argparse.ArgumentParser(add_help=False)
            cli_exec.add_options(parser)
            parser.parse_args(opts, namespace=slow)
        slow.command = command
        assert [getattr(fast, f) for f in fields] == [getattr(slow, f) for f in fields], argv
    for argv in (["-h"], ["c1", "--us", "1000", "id"], ["c1", "--user", "root", "id"],
                 ["--env"], []):
        assert cli_exec.parse_fast(argv) is None, argv


def test_exec_option_split() -> None:
    assert cli_exec.split_options(["--", "sh", "-c", "exit 7"]) == ([], ["sh", "-c", "exit 7"])
    assert cli_exec.split_options(["--env", "A=1", "-t", "--", "sh"]) == (
        ["--env", "A=1", "-t"], ["sh"])
    assert cli_exec.split_options(["bash"]) == ([], ["bash"])
    assert cli_exec.split_options(["ls", "-la"]) == ([], ["ls", "-la"])
    assert cli_exec.split_options(["--", "--env"]) == ([], ["--env"])


def test_exec_exit_code() -> None:
    assert cli_exec.exit_code(7 << 8) == 7
    assert cli_exec.exit_code(255 << 8) == 255
    assert cli_exec.exit_code(9) == 137


def test_exec_not_running(mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_instance(mnt, "c1", "STOPPED")
    assert main(["exec", "c1", "--", "true"]) == 1
    assert capsys.readouterr().err == "Error: Instance is not running\n"


def test_attach_errors_quote_what_liblxc_logged(tmp_path):
    log = tmp_path / "lxc.log"
    log.write_text("lxc m1 20261203 ERROR    old - attach.c:f:1 - before this exec\n")
    start = log.stat().st_size
    with log.open("a") as f:
        f.write("lxc m1 20261203 ERROR    commands - commands.c:lxc_cmd:1 - Failed to add "
                "seccomp listener\nlxc m1 20261203 INFO     x - y.c:z:2 - chatter\n"
                "lxc m1 20261203 ERROR    attach - attach.c:lxc_attach:3 - Failed to attach\n")
    assert cli_exec.attach_errors(str(log), start) == \
        "Failed to add seccomp listener; Failed to attach"
    assert cli_exec.attach_errors(str(tmp_path / "missing"), 0) == ""


def test_attached_orphan_is_the_one_child_left():
    code = (
        "import subprocess, sys\n"
        "from lxfs.cli.exec import attached_orphan\n"
        "assert attached_orphan() is None\n"
        "p = subprocess.Popen(['sleep', '5'])\n"
        "assert attached_orphan() == p.pid, attached_orphan()\n"
        "p.kill(); p.wait()\n"
        "assert attached_orphan() is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
