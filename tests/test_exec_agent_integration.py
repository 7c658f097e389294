"""The exec agent (lxfs.cli.exec_agent) on a real daemon and busybox container: ``lxfs exec`` goes
through it once it runs, falls back to attaching when it is gone, and it belongs to the
container (its namespaces and cgroups, out of reach of the container's root, ended with it)."""

from __future__ import annotations

import os
import pty
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import LxfsDaemon, lxfs_cli_command

from lxfs.cli.exec_agent import SOCKET_NAME

pytestmark = pytest.mark.integration


def agent_socket(d: LxfsDaemon, name: str) -> Path:
    return d.lxc_path / name / SOCKET_NAME


def agent_pid(d: LxfsDaemon, name: str) -> int | None:
    """The agent's host pid (its socket's peer), None when no agent answers (or only its
    starter, on the host, has listened yet)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(str(agent_socket(d, name)))
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        pid = struct.unpack("3i", creds)[0]
        if os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/self/ns/pid"):
            return None
    except OSError:
        return None
    finally:
        probe.close()
    return pid


def wait_for_agent(d: LxfsDaemon, name: str, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = agent_pid(d, name)
        if pid is not None:
            return pid
        time.sleep(0.05)
    pytest.fail(f"no exec agent for {name} after {timeout} s")


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def inner_pid(pid: int) -> int:
    """``pid`` as the container sees it (the last NSpid)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError("no NSpid")


@pytest.fixture
def c1(daemon_with_busybox: LxfsDaemon) -> Any:
    d = daemon_with_busybox
    d.cli("launch", "busybox", "c1")
    d.cli("config", "set", "c1", "environment.FOO", "from-config")
    return d


def test_execs_through_the_agent(c1: LxfsDaemon) -> None:
    d = c1
    assert agent_pid(d, "c1") is None
    attached = d.cli("exec", "c1", "--", "cat", "/proc/self/cgroup").stdout  # attaches
    pid = wait_for_agent(d, "c1")
    path = agent_socket(d, "c1")
    st = path.lstat()
    assert (oct(st.st_mode & 0o777), st.st_uid, st.st_gid) == ("0o600", 0, 0)
    # the agent sits in the container's namespaces and cgroups (those of its init)
    init = int(d.read("instances", "c1", "pid"))
    for ns in ("mnt", "pid_for_children", "user", "uts", "ipc", "net", "cgroup"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/{init}/ns/{ns}"), ns
    # the agent's commands are in the cgroups an attach gives
    assert d.cli("exec", "c1", "--", "cat", "/proc/self/cgroup").stdout == attached
    # the socket's directory is not in the container
    proc = d.cli("exec", "c1", "--", "ls", str(path), check=False)
    assert proc.returncode != 0

    # commands are the agent's children now, and the same agent serves every exec
    assert d.cli("exec", "c1", "--", "sh", "-c", "echo $PPID").stdout == f"{inner_pid(pid)}\n"
    assert d.cli("exec", "c1", "--", "sh", "-c", "exit 7", check=False).returncode == 7
    assert d.cli("exec", "c1", "--", "sh", "-c", "kill -9 $$", check=False).returncode == 137
    missing = d.cli("exec", "c1", "--", "no-such-command", check=False)
    assert missing.returncode == 127 and "not found" in missing.stderr
    assert d.cli("exec", "c1", "--", "cat", input="hi\n").stdout == "hi\n"
    big = os.urandom(3 << 20)
    counted = d.cli("exec", "c1", "--", "wc", "-c", input=big)
    assert counted.stdout.split()[0] == str(len(big)).encode()
    both = d.cli("exec", "c1", "--", "sh", "-c", "echo out; echo err >&2")
    assert (both.stdout, both.stderr) == ("out\n", "err\n")
    lines = d.cli("exec", "c1", "--env", "BAR=1", "--", "sh", "-c", "env; pwd").stdout
    lines = lines.splitlines()
    assert {"FOO=from-config", "BAR=1", "HOME=/root", "USER=root"} <= set(lines)
    assert lines[-1] == "/root"
    assert d.cli("exec", "c1", "--cwd", "/tmp", "--", "pwd").stdout == "/tmp\n"
    ids = d.cli("exec", "c1", "--user", "1000", "--group", "1000", "--", "sh", "-c",
                "id -u; id -g; pwd")
    assert ids.stdout.split() == ["1000", "1000", "/"]
    bad_cwd = d.cli("exec", "c1", "--cwd", "/nowhere", "--", "true", check=False)
    assert bad_cwd.returncode == 1 and "/nowhere" in bad_cwd.stderr
    assert agent_pid(d, "c1") == pid


def pty_session(argv: list[str], env: dict[str, str], steps: list[tuple[bytes, float]]
                ) -> tuple[bytes, int]:
    """Run ``argv`` on a new terminal: for each step, type its bytes, then collect the output
    for its seconds. Returns the output and the wait status."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - child
        os.environ.update(env)
        os.execv(argv[0], argv)
    output = b""
    for typed, seconds in steps:
        if typed:
            os.write(fd, typed)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not select.select([fd], [], [], 0.05)[0]:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                break
            output += data
    _pid, status = os.waitpid(pid, 0)
    os.close(fd)
    return output, status


def test_signals_and_pty_through_the_agent(c1: LxfsDaemon) -> None:
    d = c1
    d.cli("exec", "c1", "--", "true")
    wait_for_agent(d, "c1")
    # a signal to the client reaches the command (it is not in the client's process group)
    proc = subprocess.Popen([*lxfs_cli_command(), "exec", "c1", "--", "sleep", "30"],
                            env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 128 + signal.SIGTERM
    # a client that goes away hangs its command up
    proc = subprocess.Popen([*lxfs_cli_command(), "exec", "c1", "--", "sh", "-c",
                             "trap 'echo hup > /tmp/hup; exit 0' HUP; sleep 30 & wait"],
                            env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.0)
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 10
    while d.cli("exec", "c1", "--", "cat", "/tmp/hup", check=False).stdout != "hup\n":
        assert time.monotonic() < deadline, "the command was not hung up"
        time.sleep(0.2)

    output, status = pty_session(
        [*lxfs_cli_command(), "exec", "c1", "--", "sh"], d.env,
        [(b"", 1.0), (b"[ -t 0 ] && echo IS-A-TTY; echo PARENT-$PPID; stty size\n", 1.0),
         (b"sleep 30\n", 0.3), (b"\x03", 0.3), (b"echo still-here; exit 3\n", 2.0)])
    text = output.decode(errors="replace")
    assert "IS-A-TTY" in text and "still-here" in text, text
    assert "PARENT-0" not in text and "24 80" in text, text  # the agent forked it; a size
    assert os.waitstatus_to_exitcode(status) == 3, text
    forced = d.cli("exec", "-t", "c1", "--", "sh", "-c", "[ -t 1 ] && echo TTY; cat",
                   input="piped")
    assert "TTY" in forced.stdout and "piped" in forced.stdout


def test_the_container_root_cannot_trace_it_and_killing_it_falls_back(c1: LxfsDaemon) -> None:
    d = c1
    d.cli("exec", "c1", "--", "true")
    pid = wait_for_agent(d, "c1")
    inside = inner_pid(pid)
    # the container's root: no environ, no fds, no memory of the agent
    for what in ("environ", "mem"):
        probe = d.cli("exec", "c1", "--", "head", "-c", "1", f"/proc/{inside}/{what}",
                      check=False)
        assert probe.returncode != 0 and "denied" in probe.stderr, (what, probe)
    listed = d.cli("exec", "c1", "--", "ls", f"/proc/{inside}/fd/", check=False)
    assert listed.returncode != 0 and "denied" in listed.stderr
    # nor can a process with every capability of the container's user namespace ptrace it
    init = int(d.read("instances", "c1", "pid"))
    attempt = subprocess.run(
        ["nsenter", f"--user=/proc/{init}/ns/user", "--",
         "/usr/bin/python3", "-S", "-c",
         "import ctypes, os, sys\n"
         "libc = ctypes.CDLL(None, use_errno=True)\n"
         f"r = libc.ptrace(16, {pid}, None, None)\n"  # PTRACE_ATTACH
         "print(os.getuid(), r, ctypes.get_errno())\n"],
        capture_output=True, text=True, timeout=30)
    assert attempt.returncode == 0, attempt.stderr
    uid, result, err = attempt.stdout.split()
    assert (uid, result, int(err)) == ("0", "-1", 1)  # EPERM
    # it can kill it: the next exec attaches (and runs), and a new agent comes
    killed = d.cli("exec", "c1", "--", "kill", "-9", str(inside), check=False)
    assert (killed.returncode, killed.stderr) == (
        255, "Error: the instance's exec agent ended while the command ran\n")
    assert gone(pid)
    assert d.cli("exec", "c1", "--", "echo", "fallback").stdout == "fallback\n"
    new = wait_for_agent(d, "c1")
    assert new != pid
    assert d.cli("exec", "c1", "--", "sh", "-c", "echo $PPID").stdout == f"{inner_pid(new)}\n"


def test_the_agent_ends_when_idle_and_with_the_container(c1: LxfsDaemon) -> None:
    d = c1
    d.env["LXFS_EXEC_AGENT_IDLE"] = "1.5"
    d.cli("exec", "c1", "--", "true")
    pid = wait_for_agent(d, "c1")
    assert d.cli("exec", "c1", "--", "sleep", "2").returncode == 0  # a running command
    assert agent_pid(d, "c1") == pid  # is no idle time
    assert gone(pid, 10.0)
    assert d.cli("exec", "c1", "--", "echo", "again").stdout == "again\n"
    pid = wait_for_agent(d, "c1")
    d.cli("stop", "c1")
    assert gone(pid, 10.0)
    assert not agent_socket(d, "c1").exists()
    assert d.cli("exec", "c1", "--", "true", check=False).stderr == (
        "Error: Instance is not running\n")


def test_exec_without_the_daemon(c1: LxfsDaemon) -> None:
    d = c1
    d.cli("exec", "c1", "--", "true")
    pid = wait_for_agent(d, "c1")
    d.stop()
    try:
        proc = d.cli("exec", "c1", "--env", "X=1", "--", "sh", "-c", "echo $X; cat",
                     input="no daemon\n")
        assert proc.stdout == "1\nno daemon\n"
        assert agent_pid(d, "c1") == pid
    finally:
        d.start()
    assert agent_pid(d, "c1") == pid  # a daemon restart does not touch it
    assert d.cli("exec", "c1", "--", "sh", "-c", "echo $FOO").stdout == "from-config\n"


def test_exec_imports_stay_light() -> None:
    """The agent's client side adds no slow import to exec's fast path."""
    code = ("import sys; import lxfs.cli.exec; "
            "print(' '.join(m for m in ('argparse', 're', 'pathlib', 'typing', 'json', "
            "'enum', 'socket', 'subprocess') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
