"""`lxfs console` through a real pty: attach, detach with ctrl+a q; the console log file."""

from __future__ import annotations

import os
import pty
import select
import time

import pytest

pytestmark = pytest.mark.integration


def read_until(fd: int, needle: bytes, timeout: float = 10) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen


def test_console_attach_detach_and_log(daemon_with_busybox):
    d = daemon_with_busybox
    d.cli("launch", "busybox", "c1")
    d.cli("exec", "c1", "--", "sh", "-c", "echo hello-console > /dev/console")
    for _ in range(50):
        if "hello-console" in d.read("instances", "c1", "console"):
            break
        time.sleep(0.1)
    assert "hello-console" in d.read("instances", "c1", "console")
    assert "hello-console" in d.cli("console", "c1", "--show-log").stdout
    from conftest import lxfs_cli_command

    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on a terminal
        os.execvpe(lxfs_cli_command()[0], [*lxfs_cli_command(), "console", "c1"], d.env)
    try:
        assert b"ctrl" in read_until(fd, b"q").lower()
        time.sleep(0.5)
        os.write(fd, b"\x01q")  # ctrl+a q
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            read_until(fd, b"\0", 0.2)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("lxfs console did not detach on ctrl+a q")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
    assert d.read("instances", "c1", "state") == "RUNNING"
