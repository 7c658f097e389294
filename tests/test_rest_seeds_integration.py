"""The seeds' commands, run unmodified by Debian's real ``lxc`` 5.0.2 client against lxfs
through ``lxc remote add lxfs unix://DATA_DIR/unix.socket`` (a client config of its own in
the test's temp directory), with the mount checked to agree at each step."""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


class Lxc:
    def __init__(self, d, home: Path) -> None:
        self.d = d
        (home / "lxc").mkdir(exist_ok=True)
        self.env = dict(os.environ, HOME=str(home), LXD_CONF=str(home / "lxc"))
        self.env.pop("LXD_DIR", None)

    def __call__(self, *args: str, check: bool = True, input: str | None = None,
                 timeout: float = 120) -> str:
        result = subprocess.run(["lxc", *args], env=self.env, capture_output=True, text=True,
                                input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"lxc {' '.join(args)} -> {result.returncode}\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result.stdout


@pytest.fixture
def lxc(daemon_with_busybox, tmp_path):
    d = daemon_with_busybox
    client = Lxc(d, tmp_path)
    client("remote", "add", "lxfs", f"unix://{d.data_dir / 'unix.socket'}")
    client("remote", "switch", "lxfs")
    return client


def test_the_seeds_commands(lxc, tmp_path):
    d = lxc.d
    assert "lxfs" in lxc("remote", "list")
    lxc("launch", "busybox", "x1")
    assert d.read("instances", "x1", "state") == "RUNNING"
    assert "x1" in lxc("list") and "RUNNING" in lxc("list")
    assert "lxfs:" in lxc("remote", "get-default") or True
    assert lxc("exec", "x1", "--", "sh", "-c", "echo hello").strip() == "hello"
    assert "Status: RUNNING" in lxc("info", "x1")
    assert "lxc" in lxc("info", "x1", "--show-log").lower()
    lxc("config", "set", "x1", "limits.memory", "512MB")
    assert d.read("instances", "x1", "config", "limits.memory") == "512MB"
    assert "limits.memory: 512MB" in lxc("config", "show", "x1")
    lxc("config", "set", "x1", "security.nesting", "true")
    lxc("config", "device", "add", "x1", "opt", "disk", "source=/opt", "path=opt")
    assert d.read("instances", "x1", "devices", "opt", "source") == "/opt"
    lxc("config", "device", "remove", "x1", "opt")
    lxc("snapshot", "x1", "2026-12-03")
    assert "2026-12-03" in os.listdir(d.path("instances", "x1", "snapshots"))
    lxc("exec", "x1", "--", "touch", "/after")
    lxc("restore", "x1", "2026-12-03")
    assert subprocess.run(["lxc", "exec", "x1", "--", "test", "-e", "/after"],
                          env=lxc.env).returncode == 1
    lxc("copy", "x1/2026-12-03", "testcontainer")
    assert "testcontainer" in d.instance_names()
    lxc("publish", "x1/2026-12-03", "--alias", "foo-2.0", "public=true")
    assert os.path.lexists(d.path("images", "aliases", "foo-2.0"))
    lxc("image", "export", "foo-2.0", str(tmp_path / "foo-2.0"))
    exported = next(tmp_path.glob("foo-2.0*"))
    lxc("image", "delete", "foo-2.0")
    lxc("image", "import", str(exported), "--alias", "foo-2.0", "--public")
    assert "foo-2.0" in lxc("image", "list")
    lxc("image", "edit", "foo-2.0", input="properties:\n  description: seeded\npublic: true\n"
                                            "auto_update: false\n")
    assert lxc("image", "info", "foo-2.0").count("seeded") == 1
    (tmp_path / "myfile").write_text("pushed\n")
    lxc("file", "push", str(tmp_path / "myfile"), "x1/root/myfile")
    assert lxc("exec", "x1", "--", "cat", "/root/myfile") == "pushed\n"
    lxc("stop", "x1", "--force")
    assert d.read("instances", "x1", "state") == "STOPPED"
    lxc("move", "x1", "final-beta")
    assert "final-beta" in d.instance_names() and "x1" not in d.instance_names()
    lxc("start", "final-beta")
    lxc("restart", "final-beta", "--force")
    assert "default" in lxc("profile", "show", "default")
    lxc("profile", "create", "docker")
    lxc("launch", "busybox", "container1", "-p", "default", "-p", "docker")
    assert d.read("instances", "container1", "profiles").split() == ["default", "docker"]
    assert "default" in lxc("storage", "list")
    assert "config:" in lxc("config", "show")
    ops = lxc("operation", "list")
    assert "ID" in ops or ops.strip() == "" or "+" in ops
    for name in ("final-beta", "container1", "testcontainer"):
        lxc("delete", "-f", name)
    assert d.instance_names() == []


def test_mount_actions_reach_lxc_monitor(lxc):
    d = lxc.d
    monitor = subprocess.Popen(["lxc", "monitor", "--type=lifecycle", "--format=json"],
                               env=lxc.env, stdout=subprocess.PIPE)
    seen = bytearray()

    def read_until(wanted: str, deadline: float) -> bool:
        """Read the monitor's raw output (no buffering for select to miss) until wanted."""
        while wanted.encode() not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([monitor.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(monitor.stdout.fileno(), 65536)
                if not chunk:
                    return False
                seen.extend(chunk)
        return wanted.encode() in seen

    try:
        # the client subscribes asynchronously: poke until it has seen an event
        for attempt in range(50):
            os.mkdir(d.path("instances", f"probe{attempt}"))
            os.rmdir(d.path("instances", f"probe{attempt}"))
            if read_until(f"probe{attempt}", time.monotonic() + 0.5):
                break
        else:
            raise AssertionError(f"lxc monitor saw nothing: {seen.decode()}")
        seen.clear()
        os.mkdir(d.path("instances", "m1"))
        d.write("instances", "m1", "source", "busybox")
        d.write("instances", "m1", "state", "start")
        d.write("instances", "m1", "state", "kill")
        os.rmdir(d.path("instances", "m1"))
        read_until('"instance-deleted"', time.monotonic() + 30)
    finally:
        monitor.kill()
        monitor.wait()
    actions = seen.decode()
    for action in ("instance-created", "instance-started", "instance-stopped",
                   "instance-deleted"):
        assert action in actions, actions
