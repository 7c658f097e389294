"""``lxfs exec`` for real: a throwaway busybox LXC container under a temporary lxcpath.

The mount is faked (a directory with ``environment/lxc_path`` and the instance's ``state``);
exec talks to LXC directly. Fails (never skips) when LXC, busybox or root are missing.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BUSYBOX_APPLETS = ("sh", "cat", "echo", "env", "id", "pwd", "sleep", "wc", "head", "kill",
                   "test", "[", "stty", "true", "ls")


def _cleanup_cgroups(name: str, timeout: float = 5.0) -> None:
    """Remove the empty cgroups LXC leaves behind for this container (v1 and v2); the
    monitor's cgroup empties only once the monitor process has exited."""
    base = Path("/sys/fs/cgroup")
    deadline = time.monotonic() + timeout
    while True:
        candidates = []
        for pattern in (f"lxc.monitor.{name}", f"lxc.payload.{name}"):
            candidates += list(base.glob(pattern)) + list(base.glob(f"*/{pattern}"))
        for path in candidates:
            for sub in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if sub.is_dir():
                    try:
                        sub.rmdir()
                    except OSError:
                        pass
            try:
                path.rmdir()
            except OSError:
                pass
        if not any(p.exists() for p in candidates) or time.monotonic() > deadline:
            return
        time.sleep(0.1)


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    try:
        import lxc
    except ImportError:
        pytest.fail("python-lxc is not installed (the `lxc` module)")
    if os.geteuid() != 0:
        pytest.fail("the exec integration test needs root")
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is missing (install busybox-static)")
    if b"ld-linux" in Path(busybox).read_bytes()[:4096]:
        pytest.fail(f"{busybox} is dynamically linked (install busybox-static)")

    base = tmp_path_factory.mktemp("lxfs-cli-exec")
    name = f"lxfs-cli-exec-{os.getpid()}"
    lxc_path = base / "lxc"
    rootfs = lxc_path / name / "rootfs"
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/bob"):
        (rootfs / d).mkdir(parents=True)
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        os.symlink("busybox", rootfs / "bin" / applet)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                           "bob:x:1000:1000:bob:/home/bob:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\nbob:x:1000:\n")
    (lxc_path / name / "config").write_text(
        f"lxc.uts.name = {name}\n"
        f"lxc.rootfs.path = dir:{rootfs}\n"
        "lxc.init.cmd = /bin/busybox sleep 100000\n"
        "lxc.net.0.type = empty\n"
        "lxc.autodev = 1\n"
        "lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed:force\n"
        "lxc.apparmor.profile = unconfined\n"
        f"lxc.log.file = {lxc_path / name / 'lxc.log'}\n")
    # started by lxc-start, not from this process: a python-lxc monitor is a fork of pytest
    # that lingers (with its cgroup) until pytest exits
    lxc_start = shutil.which("lxc-start")
    if lxc_start is None:
        pytest.fail("lxc-start is missing (install the lxc package)")
    proc = subprocess.run([lxc_start, "-P", str(lxc_path), "-n", name], capture_output=True,
                          text=True, timeout=60)
    c = lxc.Container(name, str(lxc_path))
    if proc.returncode != 0 or not c.wait("RUNNING", 10):
        log = (lxc_path / name / "lxc.log").read_text(errors="replace")
        pytest.fail(f"cannot start the test container: {proc.stderr}\n{log}")

    mnt = base / "mnt"
    (mnt / "environment").mkdir(parents=True)
    (mnt / "environment" / "server_pid").write_text(f"{os.getpid()}\n")
    (mnt / "environment" / "lxc_path").write_text(f"{lxc_path}\n")
    inst = mnt / "instances" / name
    (inst / "expanded" / "config").mkdir(parents=True)
    (inst / "state").write_text("RUNNING\n")
    (inst / "expanded" / "config" / "environment.FOO").write_text("from-config\n")
    try:
        yield name, mnt
    finally:
        subprocess.run(["lxc-stop", "-P", str(lxc_path), "-n", name, "-k"],
                       capture_output=True, timeout=60)
        c.wait("STOPPED", 10)
        _cleanup_cgroups(name)
        shutil.rmtree(base, ignore_errors=True)


def lxfs(mnt: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "lxfs.cli", *args], input=stdin,
                          capture_output=True, cwd=REPO, timeout=60,
                          env=dict(os.environ, LXFS_MOUNT=str(mnt)))


def test_exit_status(container: tuple[str, Path]) -> None:
    name, mnt = container
    proc = lxfs(mnt, "exec", name, "--", "sh", "-c", "exit 7")
    assert proc.returncode == 7, proc.stderr
    assert lxfs(mnt, "exec", name, "--", "sh", "-c", "exit 255").returncode == 255
    assert lxfs(mnt, "exec", name, "--", "sh", "-c", "kill -9 $$").returncode == 137
    proc = lxfs(mnt, "exec", name, "--", "no-such-command")
    assert proc.returncode == 127
    assert b"not found" in proc.stderr


def test_stdin_stdout_stream(container: tuple[str, Path]) -> None:
    name, mnt = container
    proc = lxfs(mnt, "exec", name, "--", "cat", stdin=b"hi\n")
    assert (proc.returncode, proc.stdout) == (0, b"hi\n")
    big = os.urandom(3 << 20)
    proc = lxfs(mnt, "exec", name, "--", "wc", "-c", stdin=big)
    assert proc.stdout.split()[0] == str(len(big)).encode()
    proc = lxfs(mnt, "exec", name, "--", "sh", "-c", "echo out; echo err >&2")
    assert (proc.stdout, proc.stderr) == (b"out\n", b"err\n")


def test_environment_and_cwd(container: tuple[str, Path]) -> None:
    name, mnt = container
    proc = lxfs(mnt, "exec", name, "--env", "BAR=1", "--", "sh", "-c", "env; pwd")
    lines = proc.stdout.decode().splitlines()
    assert "FOO=from-config" in lines and "BAR=1" in lines
    assert "HOME=/root" in lines and "USER=root" in lines and "LANG=C.UTF-8" in lines
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in lines
    assert lines[-1] == "/root"
    proc = lxfs(mnt, "exec", name, "--cwd", "/tmp", "--", "pwd")
    assert proc.stdout == b"/tmp\n"
    proc = lxfs(mnt, "exec", name, "--user", "1000", "--group", "1000", "--", "sh", "-c",
                "id -u; id -g; echo $HOME; pwd")
    assert proc.stdout.decode().split() == ["1000", "1000", "/home/bob", "/home/bob"]
    proc = lxfs(mnt, "exec", name, "bash-less-form", "x")
    assert proc.returncode == 127


def test_not_running(container: tuple[str, Path], tmp_path: Path) -> None:
    """liblxc says whether the instance runs (a frozen one does not: attaching would hang)."""
    name, mnt = container
    lxc_path = (mnt / "environment" / "lxc_path").read_text().strip()
    subprocess.run(["lxc-freeze", "-P", lxc_path, "-n", name], check=True, timeout=30)
    try:
        proc = lxfs(mnt, "exec", name, "--", "true")
    finally:
        subprocess.run(["lxc-unfreeze", "-P", lxc_path, "-n", name], check=True, timeout=30)
    assert (proc.returncode, proc.stderr) == (1, b"Error: Instance is not running\n")
    assert lxfs(mnt, "exec", "nope", "--", "true").stderr == b"Error: Instance not found\n"


def test_pty(container: tuple[str, Path]) -> None:
    """Under a terminal the command gets its own pty; ^C reaches it, not the client."""
    name, mnt = container
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - child
        os.chdir(REPO)
        os.environ["LXFS_MOUNT"] = str(mnt)
        os.execv(sys.executable, [sys.executable, "-m", "lxfs.cli", "exec", name, "--", "sh"])
    output = b""

    def read_for(seconds: float) -> None:
        nonlocal output
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    return
                if not data:
                    return
                output += data

    read_for(1.0)
    os.write(fd, b"[ -t 0 ] && echo IS-A-TTY; stty size\n")
    read_for(1.0)
    os.write(fd, b"sleep 30\n")
    read_for(0.3)
    os.write(fd, b"\x03")
    read_for(0.3)
    os.write(fd, b"echo still-here; exit 3\n")
    read_for(2.0)
    _pid, status = os.waitpid(pid, 0)
    os.close(fd)
    text = output.decode(errors="replace")
    assert "IS-A-TTY" in text
    assert "still-here" in text
    assert os.waitstatus_to_exitcode(status) == 3, text


def test_forced_pty_with_pipe(container: tuple[str, Path]) -> None:
    name, mnt = container
    proc = lxfs(mnt, "exec", "-t", name, "--", "sh", "-c", "[ -t 1 ] && echo TTY; cat",
                stdin=b"piped")
    assert proc.returncode == 0
    assert b"TTY" in proc.stdout and b"piped" in proc.stdout


def test_cli_end_to_end(daemon_with_busybox: Any) -> None:
    """The CLI against a real lxfsd: launch, list, exec, config, files, snapshot, delete."""
    d = daemon_with_busybox
    assert d.cli("launch", "busybox", "e2e1").stdout == "Creating e2e1\nStarting e2e1\n"
    listed = d.cli("list", "--format", "csv").stdout
    assert listed.startswith("e2e1,RUNNING,"), listed
    data = json.loads(d.cli("list", "--format", "json").stdout)
    assert [(i["name"], i["status"], i["status_code"]) for i in data] == [
        ("e2e1", "Running", 103)]

    assert d.cli("exec", "e2e1", "--", "sh", "-c", "exit 7", check=False).returncode == 7
    assert d.cli("exec", "e2e1", "--", "cat", input="hi\n").stdout == "hi\n"
    d.cli("config", "set", "e2e1", "environment.FOO", "bar")
    assert d.cli("config", "get", "e2e1", "environment.FOO").stdout == "bar\n"
    assert d.cli("exec", "e2e1", "--", "sh", "-c", "echo $FOO").stdout == "bar\n"
    bad = d.cli("config", "set", "e2e1", "limits.memory", "lots", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("Error: "), bad.stderr
    assert len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.stderr

    src = d.base / "pushed.txt"
    src.write_text("payload\n")
    d.cli("file", "push", src, "e2e1/root/pushed.txt")
    assert d.cli("exec", "e2e1", "--", "cat", "/root/pushed.txt").stdout == "payload\n"
    assert d.cli("file", "pull", "e2e1/root/pushed.txt", "-").stdout == "payload\n"

    d.cli("snapshot", "e2e1")
    assert "snap0" in d.cli("info", "e2e1").stdout

    refused = d.cli("delete", "e2e1", check=False)
    assert (refused.returncode, refused.stderr) == (
        1, "Error: The instance is currently running, stop it first or pass --force\n")
    d.cli("stop", "e2e1")
    assert d.cli("list", "-f", "csv", "-c", "ns").stdout == "e2e1,STOPPED\n"
    not_running = d.cli("exec", "e2e1", "--", "true", check=False)
    assert (not_running.returncode, not_running.stderr) == (1, "Error: Instance is not running\n")
    d.cli("delete", "e2e1")
    assert d.cli("list", "-f", "csv").stdout == ""

    failed = d.cli("launch", "no-such-image", "e2e2", check=False)
    assert failed.returncode == 1 and failed.stderr.startswith("Error: "), failed.stderr
    assert d.cli("list", "-f", "csv").stdout == ""  # rolled back

    built = d.cli("image", "build", "busybox", timeout=600)
    fingerprint = built.stdout.strip().splitlines()[-1].rsplit(" ", 1)[-1]
    assert d.read("images", "aliases", "busybox", "fingerprint") == fingerprint
    images = d.cli("image", "list", "-f", "csv").stdout
    assert f"busybox,{fingerprint[:12]},no," in images
