"""The CLI of issue 3 through a real daemon: profiles, ``config edit`` from stdin, copy,
publish + launch, info's usage lines, ``file push -r``. Fails (never skips) when the daemon
or the host lacks something."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration


def test_profile_create_assign_edit_rename(daemon_with_busybox) -> None:
    d = daemon_with_busybox
    out = d.cli("profile", "create", "small",
                input="config:\n  limits.memory: 64MiB\ndescription: Small\n").stdout
    assert out == "Profile small created\n"
    d.cli("create", "busybox", "c1", input="")
    assert d.cli("profile", "assign", "c1", "default,small").stdout == \
        "Profiles default,small applied to c1\n"
    assert d.read("instances", "c1", "profiles").split() == ["default", "small"]
    assert d.read("instances", "c1", "expanded", "config", "limits.memory") == "64MiB"
    assert d.read("profiles", "small", "used_by") == "c1"
    shown = yaml.safe_load(d.cli("profile", "show", "small").stdout)
    assert shown["used_by"] == ["/1.0/instances/c1"] and shown["description"] == "Small"

    # profile edit from stdin: change a key, add a device; the instance follows
    shown["config"]["limits.memory"] = "128MiB"
    shown["devices"] = {"tmpdata": {"type": "disk", "source": str(d.base), "path": "/mnt"}}
    d.cli("profile", "edit", "small", input=yaml.safe_dump(shown))
    assert d.read("instances", "c1", "expanded", "config", "limits.memory") == "128MiB"
    assert d.read("instances", "c1", "expanded", "devices", "tmpdata", "path") == "/mnt"

    # config edit from stdin: the YAML of config show, changed
    doc = yaml.safe_load(d.cli("config", "show", "c1").stdout)
    doc["config"]["user.note"] = "edited"
    doc["description"] = "edited by config edit"
    d.cli("config", "edit", "c1", input=yaml.safe_dump(doc))
    assert d.read("instances", "c1", "config", "user.note") == "edited"
    assert d.read("instances", "c1", "description") == "edited by config edit"
    # a bad value: an error, nothing half-applied
    doc["config"]["user.other"] = "x"
    doc["config"]["limits.memory"] = "lots"
    result = d.cli("config", "edit", "c1", input=yaml.safe_dump(doc), check=False)
    assert result.returncode == 1 and result.stderr.startswith("Error: ")
    assert not d.path("instances", "c1", "config", "user.other").exists()
    assert not d.path("instances", "c1", "config", "limits.memory").exists()

    # add / remove, copy, rename, delete
    assert d.cli("profile", "remove", "c1", "small").stdout == "Profile small removed from c1\n"
    assert d.cli("profile", "add", "c1", "small").stdout == "Profile small added to c1\n"
    d.cli("profile", "copy", "small", "small2")
    assert yaml.safe_load(d.cli("profile", "show", "small2").stdout)["config"] == {
        "limits.memory": "128MiB"}
    assert d.cli("profile", "rename", "small", "tiny").stdout == \
        "Profile small renamed to tiny\n"
    assert d.read("instances", "c1", "profiles").split() == ["default", "tiny"]
    busy = d.cli("profile", "delete", "tiny", check=False)
    assert busy.returncode == 1 and busy.stderr.startswith("Error: ")
    assert d.cli("profile", "delete", "small2").stdout == "Profile small2 deleted\n"
    d.cli("profile", "set", "tiny", "limits.processes", "200")
    assert d.cli("profile", "get", "tiny", "limits.processes").stdout == "200\n"
    d.cli("profile", "device", "add", "tiny", "mask", "none")
    assert d.cli("profile", "device", "list", "tiny").stdout == "mask\ntmpdata\n"


def test_copy(daemon_with_busybox) -> None:
    d = daemon_with_busybox
    d.cli("create", "busybox", "c1", "-c", "user.note=from c1")
    d.path("instances", "c1", "rootfs", "root", "data").write_text("c1 data\n")
    d.cli("snapshot", "c1", "snap0")
    d.path("instances", "c1", "rootfs", "root", "data").write_text("changed\n")

    assert d.cli("copy", "c1", "c2", "-c", "user.extra=1").stdout == ""
    assert d.read("instances", "c2", "source") == "instances/c1"
    assert d.read("instances", "c2", "config", "user.note") == "from c1"
    assert d.read("instances", "c2", "config", "user.extra") == "1"
    assert os.listdir(d.path("instances", "c2", "snapshots")) == ["snap0"]
    assert d.path("instances", "c2", "rootfs", "root", "data").read_text() == "changed\n"

    d.cli("copy", "c1", "c3", "--instance-only", "-p", "default", "-e")
    assert os.listdir(d.path("instances", "c3", "snapshots")) == []
    assert d.read("instances", "c3", "ephemeral") == "true"

    d.cli("copy", "c1/snap0", "c4")
    assert d.path("instances", "c4", "rootfs", "root", "data").read_text() == "c1 data\n"
    d.cli("start", "c4")
    assert d.cli("exec", "c4", "--", "hostname").stdout.strip() == "c4"

    failed = d.cli("copy", "nope", "c5", check=False)
    assert (failed.returncode, failed.stderr) == (1, "Error: Instance not found\n")
    failed = d.cli("copy", "c1", "c2", check=False)
    assert (failed.returncode, failed.stderr) == (1, "Error: Instance 'c2' already exists\n")


def test_publish_then_launch(daemon_with_busybox, tmp_path: Path) -> None:
    d = daemon_with_busybox
    d.cli("launch", "busybox", "p1")
    d.cli("exec", "p1", "--", "sh", "-c", "echo published > /root/mark")
    running = d.cli("publish", "p1", "--alias", "mine", check=False)
    assert running.returncode == 1 and running.stderr.startswith("Error: ")
    out = d.cli("publish", "p1", "--alias", "mine", "--force", "os=custom").stdout
    assert out.startswith("Instance published with fingerprint: ")
    fp = out.split(": ")[1].strip()
    assert d.read("images", "aliases", "mine", "fingerprint") == fp
    assert d.read("images", fp, "properties", "os") == "custom"
    d.cli("snapshot", "p1", "s0")
    out = d.cli("publish", "p1/s0", "--alias", "fromsnap", "--compression", "gzip").stdout
    assert out.strip().endswith(d.read("images", "aliases", "fromsnap", "fingerprint"))

    d.cli("launch", "mine", "p2")
    assert d.cli("exec", "p2", "--", "cat", "/root/mark").stdout == "published\n"
    info = d.cli("info", "p2").stdout
    resources = info.split("Resources:\n")[1]
    assert "  Processes: " in resources and "    Memory (current): " in resources
    assert "    root: " in resources

    # file push -r of a directory, through the real mount
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "b").write_text("B\n")
    d.cli("file", "push", "-r", tree, "p2/root/")
    assert d.cli("exec", "p2", "--", "cat", "/root/tree/sub/b").stdout == "B\n"

    # the console log is readable (its content depends on the image's init)
    assert d.cli("console", "p2", "--show-log").stdout.startswith("\nConsole log:\n\n")
