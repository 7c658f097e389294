"""Exec and console over the REST bridge, driven by the real ``lxc`` 5.0.2 client (under a pty
for interactive sessions), pylxd and a websocket client of our own that checks LXD's wire
protocol (the fds, the end-of-stream messages, ``return``).

One daemon with a running busybox container ``c1`` serves the whole module (an import and a
launch per test would cost most of the time)."""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LxfsDaemon, integration_problems, make_base_dir

pytestmark = pytest.mark.integration

#: the daemon's grace between SIGHUP and SIGKILL for a command whose client went away
HANGUP_GRACE = 5.0


# --- the daemon and the clients ------------------------------------------------------------

@pytest.fixture(scope="module")
def d(busybox_image: Path) -> Iterator[LxfsDaemon]:
    """A daemon with busybox container ``c1`` running, for the whole module."""
    problems = integration_problems()
    if problems:
        pytest.fail("cannot start lxfsd here:\n  - " + "\n  - ".join(problems), pytrace=False)
    daemon = LxfsDaemon(make_base_dir())
    try:
        daemon.start()
        daemon.cli("image", "import", busybox_image, "--alias", "busybox", timeout=120)
        daemon.cli("launch", "busybox", "c1", timeout=120)
        # the client's first run writes its configuration and greets on stderr
        subprocess.run(["lxc", "query", "/1.0"], env=client_env(daemon), check=True,
                       capture_output=True, timeout=60)
        yield daemon
    finally:
        problems = daemon.teardown()
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


def client_env(d: LxfsDaemon, **extra: str) -> dict[str, str]:
    conf = d.base / "lxc-conf"
    conf.mkdir(exist_ok=True)
    return dict(os.environ, LXD_DIR=str(d.data_dir), LXD_CONF=str(conf), TERM="xterm",
                **extra)


def lxc(d: LxfsDaemon, *args: str, input: bytes | None = None, timeout: float = 60
        ) -> subprocess.CompletedProcess[bytes]:
    """The real client (output as bytes, never raising on a non-zero exit)."""
    return subprocess.run(["lxc", *args], input=input, capture_output=True,
                          env=client_env(d), timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL)


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("lxd", timeout=30)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


def api(d: LxfsDaemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A raw request; (status, the body as JSON or bytes)."""
    conn = UnixHTTP(d.data_dir / "unix.socket")
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.getheader("Content-Type", "").startswith("application/json"):
            return response.status, json.loads(data)
        return response.status, data
    finally:
        conn.close()


def wait_operation(d: LxfsDaemon, url: str, timeout: int = 30) -> dict[str, Any]:
    status, body = api(d, "GET", f"{url}/wait?timeout={timeout}")
    assert status == 200, body
    return body["metadata"]


class WS:
    """A minimal websocket client (wsproto) on the daemon's unix socket."""

    def __init__(self, d: LxfsDaemon, path: str) -> None:
        from wsproto import WSConnection
        from wsproto.connection import ConnectionType
        from wsproto.events import AcceptConnection, Request

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(str(d.data_dir / "unix.socket"))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host="lxd", target=path)))
        self.pending: list[Any] = []
        self.closed = False
        while not any(isinstance(e, AcceptConnection) for e in self.pending):
            self._fill()
        self.pending = [e for e in self.pending if not isinstance(e, AcceptConnection)]

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        self.ws.receive_data(data or None)
        self.pending += list(self.ws.events())

    def send(self, message: bytes | str) -> None:
        from wsproto.events import BytesMessage, TextMessage

        event = TextMessage(message) if isinstance(message, str) else BytesMessage(message)
        self.sock.sendall(self.ws.send(event))

    def read_until(self, needle: bytes) -> bytes:
        """Binary data up to ``needle`` (what follows stays pending)."""
        from wsproto.events import BytesMessage

        seen = b""
        while needle not in seen:
            while self.pending and isinstance(self.pending[0], BytesMessage):
                seen += bytes(self.pending.pop(0).data)
            if needle not in seen:
                self._fill()
        return seen

    def frames(self) -> list[tuple[str, bytes | str]]:
        """Every message until the server closes: ("binary"|"text", data), then ("close",
        "")."""
        from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

        out: list[tuple[str, Any]] = []
        while True:
            while self.pending:
                event = self.pending.pop(0)
                if isinstance(event, BytesMessage):
                    out.append(("binary", bytes(event.data)))
                elif isinstance(event, TextMessage):
                    out.append(("text", event.data))
                elif isinstance(event, Ping):
                    self.sock.sendall(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    out.append(("close", ""))
                    return out
            try:
                self._fill()
            except OSError:
                out.append(("close", ""))
                return out
            if not self.pending and self.ws.state.name == "CLOSED":
                out.append(("close", ""))
                return out

    def close(self) -> None:
        self.sock.close()


class Terminal:
    """A command on a pty of ours (the real client in interactive mode)."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int = 24, cols: int = 80
                 ) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the client on a terminal
            try:
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        self.resize(rows, cols)
        self.seen = b""
        self.status: int | None = None

    def resize(self, rows: int, cols: int) -> None:
        # the kernel sends SIGWINCH to the client (it leads the pty's session)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def read_until(self, needle: bytes, timeout: float = 15) -> bytes:
        """Output up to and including ``needle`` (consumed); fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not seen in {timeout}s; got {self.seen!r}")
            if select.select([self.fd], [], [], min(left, 0.2))[0]:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{needle!r} not seen before EOF; got {self.seen!r}")
                self.seen += chunk
        before, _, self.seen = self.seen.partition(needle)
        return before + needle

    def wait(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while self.status is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the client did not exit in {timeout}s; "
                                     f"output: {self.seen!r}")
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    self.seen += os.read(self.fd, 65536)
                except OSError:
                    time.sleep(0.05)
        return self.status

    def close(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.status = -9
        os.close(self.fd)


def processes(token: str) -> list[int]:
    """PIDs of processes (on the host, container ones included) whose command line contains
    ``token``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if token.encode() in cmdline and not cmdline.startswith(b"lxc "):
            found.append(int(entry))
    return found


def wait_gone(token: str, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := processes(token)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def wait_for(token: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not processes(token):
        assert time.monotonic() < deadline, f"no process {token!r} after {timeout}s"
        time.sleep(0.05)


def daemon_children(d: LxfsDaemon) -> list[tuple[int, str]]:
    assert d.proc is not None
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat[stat.rindex(b")") + 2:].split()[1]) == d.proc.pid:
            found.append((int(entry), cmdline))
    return found


def leftovers(d: LxfsDaemon, timeout: float = 10) -> list[tuple[int, str]]:
    """The daemon's children other than the one spare exec helper and its services
    (dnsmasq...), once the sessions ended."""
    deadline = time.monotonic() + timeout
    while True:
        children = [(pid, cmd) for pid, cmd in daemon_children(d)
                    if "lxc-console" in cmd or " -I -c " in cmd]
        helpers = [c for c in children if " -I -c " in c[1]]
        extra = [c for c in children if "lxc-console" in c[1]] + helpers[1:]
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.1)


# --- non-interactive, with the real client -------------------------------------------------

def test_exec_stdout(d):
    result = lxc(d, "exec", "c1", "--", "echo", "hi")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"hi\n", b"")


def test_exec_separate_stderr_and_exit_code(d):
    result = lxc(d, "exec", "c1", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    result = lxc(d, "exec", "c1", "--", "sh", "-c", "kill -TERM $$")
    assert result.returncode == 143  # a signal: 128 + its number, as LXD
    result = lxc(d, "exec", "c1", "--", "no-such-command")
    assert result.returncode == 127 and b"no-such-command" in result.stderr


def test_exec_stdin_and_eof(d):
    result = lxc(d, "exec", "c1", "--", "cat", input=b"data\n")
    assert (result.returncode, result.stdout) == (0, b"data\n")
    # without input: EOF at once
    result = lxc(d, "exec", "c1", "--", "cat", input=b"")
    assert (result.returncode, result.stdout) == (0, b"")
    # binary, and more than any pipe or socket buffer, both ways
    payload = os.urandom(3 << 20)
    result = lxc(d, "exec", "c1", "--", "cat", input=payload)
    assert result.returncode == 0 and result.stdout == payload
    result = lxc(d, "exec", "c1", "--", "wc", "-c", input=payload)
    assert result.stdout.split() == [str(len(payload)).encode()]


def test_exec_environment_cwd_user(d):
    d.write("instances", "c1", "config", "environment.FROM_CONFIG", "cfg")
    try:
        result = lxc(d, "exec", "c1", "--env", "K=V", "--env", "FROM_CONFIG=override",
                     "--", "env")
        env = dict(line.split("=", 1) for line in result.stdout.decode().splitlines())
        assert env["K"] == "V" and env["FROM_CONFIG"] == "override"
        assert env["HOME"] == "/root" and env["USER"] == "root"
        assert env["LANG"] == "C.UTF-8" and env["TERM"] == "xterm"
        assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        result = lxc(d, "exec", "c1", "--", "sh", "-c", "echo $FROM_CONFIG")
        assert result.stdout == b"cfg\n"
    finally:
        os.unlink(d.path("instances", "c1", "config", "environment.FROM_CONFIG"))
    result = lxc(d, "exec", "c1", "--", "pwd")
    assert result.stdout == b"/root\n"
    result = lxc(d, "exec", "c1", "--cwd", "/tmp", "--", "pwd")
    assert (result.returncode, result.stdout) == (0, b"/tmp\n")
    result = lxc(d, "exec", "c1", "--user", "1000", "--group", "1001", "--", "sh", "-c",
                 "id -u; id -g; echo HOME=$HOME")
    assert result.stdout.split() == [b"1000", b"1001", b"HOME="]
    result = lxc(d, "exec", "c1", "--cwd", "/nonexistent", "--", "true")
    assert result.returncode != 0 and b"/nonexistent" in result.stderr


def test_exec_errors_as_lxd(d):
    result = lxc(d, "exec", "missing", "--", "true")
    assert result.returncode == 1 and b"Error: Instance not found" in result.stderr
    d.cli("create", "busybox", "stopped1", timeout=120)
    try:
        result = lxc(d, "exec", "stopped1", "--", "true")
        assert result.returncode == 1 and b"Error: Instance is not running" in result.stderr
        status, body = api(d, "POST", "/1.0/instances/stopped1/console", {})
        assert (status, body["error"]) == (400, "Instance is not running")
    finally:
        d.cli("delete", "stopped1")
    d.write("instances", "c1", "state", "freeze")
    try:
        result = lxc(d, "exec", "c1", "--", "true")
        assert result.returncode == 1 and b"Error: Instance is frozen" in result.stderr
    finally:
        d.write("instances", "c1", "state", "unfreeze")
    status, body = api(d, "POST", "/1.0/instances/c1/exec?project=other", {"command": ["true"]})
    assert (status, body["error"]) == (404, "Project not found")
    status, body = api(d, "POST", "/1.0/instances/c1/exec", {"command": []})
    assert status == 400 and body["type"] == "error"
    status, body = api(d, "POST", "/1.0/containers/c1/exec",
                       {"command": ["true"], "environment": {"A=B": "x"}})
    assert status == 400


def test_parallel_execs(d):
    clients = [subprocess.Popen(["lxc", "exec", "c1", "--", "sh", "-c",
                                 f"echo start-{i}; head -c 200000 /dev/zero | wc -c; exit {i}"],
                                env=client_env(d), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for i in range(8)]
    for i, client in enumerate(clients):
        out, err = client.communicate(timeout=60)
        assert (client.returncode, out.split(), err) == (i, [f"start-{i}".encode(),
                                                            b"200000"], b"")
    assert leftovers(d) == []


# --- the wire protocol, with a client of our own ------------------------------------------

def start_exec(d: LxfsDaemon, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    status, body = api(d, "POST", "/1.0/instances/c1/exec", request)
    assert status == 202, body
    assert body["type"] == "async" and body["status_code"] == 100
    op = body["metadata"]
    assert op["class"] == "websocket" and op["description"] == "Executing command"
    assert op["resources"] == {"containers": ["/1.0/containers/c1"],
                               "instances": ["/1.0/instances/c1"]}
    return body["operation"], op["metadata"]


def test_protocol_noninteractive(d):
    url, meta = start_exec(d, {
        "command": ["sh", "-c", "cat; echo out; echo err >&2; exit 3"],
        "wait-for-websocket": True, "interactive": False, "environment": {"TERM": "xterm"},
        "width": 0, "height": 0, "record-output": False, "user": 0, "group": 0, "cwd": ""})
    assert sorted(meta["fds"]) == ["0", "1", "2", "control"]
    assert meta["interactive"] is False and meta["command"][0] == "sh"
    assert meta["environment"] == {
        "HOME": "/root", "LANG": "C.UTF-8", "TERM": "xterm", "USER": "root",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    # the lxc client's order: control, 0, 1, 2
    socks = {fd: WS(d, f"{url}/websocket?secret={meta['fds'][fd]}")
             for fd in ("control", "0", "1", "2")}
    try:
        socks["0"].send(b"in")
        socks["0"].send("")  # end of input: an empty text message
        frames = {fd: socks[fd].frames() for fd in ("1", "2", "control")}
    finally:
        for ws in socks.values():
            ws.close()
    # data in binary messages, the end of each stream an empty text message
    assert frames["1"][-2:] == [("text", ""), ("close", "")]
    assert b"".join(m for kind, m in frames["1"] if kind == "binary") == b"inout\n"
    assert frames["2"][-2:] == [("text", ""), ("close", "")]
    assert b"".join(m for kind, m in frames["2"] if kind == "binary") == b"err\n"
    assert frames["control"] == [("close", "")]
    op = wait_operation(d, url)
    assert op["status"] == "Success" and op["metadata"]["return"] == 3
    assert sorted(op["metadata"]["fds"]) == ["0", "1", "2", "control"]
    # a secret serves once, and not after the end
    status, _ = api(d, "GET", f"{url}/websocket?secret={meta['fds']['0']}")
    assert status in (403, 404)


def test_protocol_interactive_and_control(d):
    url, meta = start_exec(d, {
        "command": ["sh", "-c", "stty size; read line; stty size; echo got=$line; exit 4"],
        "wait-for-websocket": True, "interactive": True, "environment": {"TERM": "xterm"},
        "width": 100, "height": 30})
    assert sorted(meta["fds"]) == ["0", "control"] and meta["interactive"] is True
    control = WS(d, f"{url}/websocket?secret={meta['fds']['control']}")
    data = WS(d, f"{url}/websocket?secret={meta['fds']['0']}")
    try:
        data.read_until(b"30 100")
        control.send(json.dumps({"command": "window-resize",
                                 "args": {"width": "120", "height": "40"}}))
        time.sleep(0.5)
        data.send(b"hello\r")
        frames = data.frames()
    finally:
        control.close()
        data.close()
    output = b"".join(m for kind, m in frames if kind == "binary")
    assert b"40 120" in output and b"got=hello" in output
    assert frames[-2:] == [("text", ""), ("close", "")]
    op = wait_operation(d, url)
    assert op["metadata"]["return"] == 4


def test_websockets_not_connected(d):
    """The attach starts while the client connects, but the command runs only once it has:
    a client that never comes leaves nothing run and nothing running."""
    before = api(d, "GET", "/1.0/instances/c1/state")[1]["metadata"]["processes"]
    status, body = api(d, "POST", "/1.0/instances/c1/exec",
                       {"command": ["sh", "-c", "touch /root/ran-alone; sleep 7771"],
                        "wait-for-websocket": True})
    assert status == 202
    op = wait_operation(d, body["operation"])
    assert (op["status"], op["err"]) == ("Failure", "Timed out waiting for websockets to "
                                                    "connect")
    assert not processes("sleep 7771")
    assert not d.path("instances", "c1", "rootfs", "root", "ran-alone").exists()
    # no attached child is left waiting at the gate (it exits as the gate closes)
    deadline = time.monotonic() + 5
    while (api(d, "GET", "/1.0/instances/c1/state")[1]["metadata"]["processes"] != before
           and time.monotonic() < deadline):
        time.sleep(0.05)
    assert api(d, "GET", "/1.0/instances/c1/state")[1]["metadata"]["processes"] == before


def test_exec_without_websockets_and_recorded_output(d):
    status, body = api(d, "POST", "/1.0/instances/c1/exec", {
        "command": ["sh", "-c", "echo rec-out; echo rec-err >&2; exit 6"],
        "wait-for-websocket": False, "record-output": True})
    assert status == 202 and body["metadata"]["class"] == "task"
    op = wait_operation(d, body["operation"])
    assert op["status"] == "Success" and op["metadata"]["return"] == 6
    output = op["metadata"]["output"]
    assert sorted(output) == ["1", "2"]
    assert output["1"].startswith("/1.0/instances/c1/logs/exec-output/exec_")
    assert output["1"].endswith(".stdout") and output["2"].endswith(".stderr")
    assert api(d, "GET", output["1"]) == (200, b"rec-out\n")
    assert api(d, "GET", output["2"]) == (200, b"rec-err\n")
    status, _ = api(d, "DELETE", output["1"])
    assert status == 200
    assert api(d, "GET", output["1"])[0] == 404
    assert api(d, "GET", "/1.0/instances/c1/logs/exec-output/..%2Fetc")[0] == 404
    # without record-output: only the exit code
    status, body = api(d, "POST", "/1.0/instances/c1/exec",
                       {"command": ["sh", "-c", "echo lost; exit 2"]})
    op = wait_operation(d, body["operation"])
    assert op["metadata"] == {"return": 2}


# --- interactive, with the real client under a pty -----------------------------------------

def test_exec_interactive(d):
    term = Terminal(["lxc", "exec", "c1", "--", "sh"], client_env(d), rows=30, cols=100)

    def run(line: bytes, mark: str) -> bytes:
        """Type a line; its output up to the marker (typed split: the echo cannot match)."""
        term.write(line + b"; echo '" + mark[:2].encode() + b"''" + mark[2:].encode()
                   + b"'\n")
        return term.read_until(mark.encode() + b"\r\n")

    try:
        term.read_until(b"# ")
        answer = run(b"stty size; [ -t 0 ] && [ -t 1 ] && echo on-a-terminal", "MARK1")
        assert b"30 100" in answer and b"on-a-terminal" in answer
        term.resize(45, 132)
        time.sleep(0.5)
        assert b"45 132" in run(b"stty size", "MARK2")
        term.write(b"sleep 7772; echo not-interrupted\n")
        wait_for("sleep 7772")
        start = time.monotonic()
        term.write(b"\x03")  # Ctrl-C: the command's terminal makes it SIGINT
        assert b"rc=130" in run(b"echo rc=$?", "MARK3")
        assert time.monotonic() - start < 5 and not processes("sleep 7772")
        term.write(b"exit 5\n")
        assert term.wait() == 5
        assert b"not-interrupted" not in term.seen
    finally:
        term.close()


def test_exec_interactive_stdin_eof(d):
    """``-t`` with input from a pipe: its end reaches the command as a terminal's ^D."""
    result = lxc(d, "exec", "-t", "c1", "--", "sh", "-c", "cat; echo done", input=b"abc\n")
    assert result.returncode == 0
    assert result.stdout.replace(b"\r", b"").endswith(b"abc\ndone\n")


# --- signals and clients that go away ----------------------------------------------------------

def test_signals_are_forwarded(d):
    env = client_env(d)
    client = subprocess.Popen(["lxc", "exec", "c1", "--", "sleep", "7773"], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        wait_for("sleep 7773")
        client.send_signal(signal.SIGINT)
        assert client.wait(15) == 130
    finally:
        client.kill()
    assert not wait_gone("sleep 7773", 5)
    client = subprocess.Popen(
        ["lxc", "exec", "c1", "--", "sh", "-c",
         "trap 'echo got-term; exit 9' TERM; sleep 7774 & wait"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        wait_for("sleep 7774")
        client.send_signal(signal.SIGTERM)
        assert client.wait(15) == 9
        assert client.stdout is not None and client.stdout.read() == b"got-term\n"
    finally:
        client.kill()
    assert not wait_gone("sleep 7774", 5)  # the whole process group got it


def test_killed_client_leaves_nothing(d):
    client = subprocess.Popen(["lxc", "exec", "c1", "--", "sleep", "7775"],
                              env=client_env(d), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL)
    wait_for("sleep 7775")
    client.kill()
    client.wait()
    assert not wait_gone("sleep 7775", HANGUP_GRACE + 5)
    # interactive: a shell with a foreground job
    term = Terminal(["lxc", "exec", "c1", "--", "sh"], client_env(d))
    try:
        term.read_until(b"# ")
        term.write(b"sleep 7776\n")
        wait_for("sleep 7776")
    finally:
        term.close()  # SIGKILL
    assert not wait_gone("sleep 7776", HANGUP_GRACE + 5)
    # pylxd-like: no control connection, the client closes stdout
    url, meta = start_exec(d, {"command": ["sleep", "7777"], "wait-for-websocket": True})
    socks = [WS(d, f"{url}/websocket?secret={meta['fds'][fd]}") for fd in ("0", "1", "2")]
    wait_for("sleep 7777")
    for ws in socks:
        ws.close()
    assert not wait_gone("sleep 7777", HANGUP_GRACE + 5)
    assert wait_operation(d, url)["status"] == "Success"
    assert leftovers(d) == []


# --- pylxd -------------------------------------------------------------------------------------

def test_pylxd_execute(d):
    import pylxd
    from pylxd.models import Instance

    client = pylxd.Client(endpoint=str(d.data_dir / "unix.socket"))
    instance = Instance(client, name="c1")
    result = instance.execute(["sh", "-c", "echo o; echo e >&2; exit 2"])
    assert (result.exit_code, result.stdout, result.stderr) == (2, "o\n", "e\n")
    result = instance.execute(["cat"], stdin_payload="payload\n")
    assert (result.exit_code, result.stdout) == (0, "payload\n")
    result = instance.execute(["sh", "-c", "pwd; echo $A"], environment={"A": "1"},
                              cwd="/tmp")
    assert result.stdout == "/tmp\n1\n"


# --- the console -------------------------------------------------------------------------------

def test_console_attach_detach_and_log(d):
    term = Terminal(["lxc", "console", "c1"], client_env(d))
    try:
        assert b"<ctrl>+a q" in term.read_until(b"q")
        time.sleep(1)  # attached once lxc-console runs
        lxc(d, "exec", "c1", "--", "sh", "-c", "echo hello-console > /dev/console")
        term.read_until(b"hello-console")
        term.write(b"\x01")  # the client reads ctrl+a and q apart, as typed
        time.sleep(0.2)
        term.write(b"q")
        assert term.wait() == 0
    finally:
        term.close()
    assert leftovers(d) == []
    assert lxc(d, "exec", "c1", "--", "true").returncode == 0  # the console is free again
    result = lxc(d, "console", "c1", "--show-log")
    assert b"hello-console" in result.stdout
    status, log = api(d, "GET", "/1.0/instances/c1/console")
    assert status == 200 and b"hello-console" in log
    status, body = api(d, "DELETE", "/1.0/instances/c1/console")
    assert (status, body["type"]) == (200, "sync")
    assert api(d, "GET", "/1.0/instances/c1/console") == (200, b"")
    lxc(d, "exec", "c1", "--", "sh", "-c", "echo after-reset > /dev/console")
    deadline = time.monotonic() + 5
    while b"after-reset" not in api(d, "GET", "/1.0/containers/c1/console")[1]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert api(d, "GET", "/1.0/containers/c1/console")[1].startswith(b"after-reset")


def test_console_refusals(d):
    status, body = api(d, "POST", "/1.0/instances/c1/console", {"type": "vga"})
    assert (status, body["error"]) == (400,
                                       "VGA console is only supported by virtual machines")
    status, body = api(d, "POST", "/1.0/instances/c1/console", {"type": "spice"})
    assert (status, body["error"]) == (400, 'Unknown console type "spice"')
    status, body = api(d, "POST", "/1.0/instances/missing/console", {})
    assert (status, body["error"]) == (404, "Instance not found")


def test_console_client_killed(d):
    term = Terminal(["lxc", "console", "c1"], client_env(d))
    try:
        term.read_until(b"q")
        deadline = time.monotonic() + 10
        while not any("lxc-console" in cmd for _pid, cmd in daemon_children(d)):
            assert time.monotonic() < deadline, "no lxc-console started"
            time.sleep(0.1)
    finally:
        term.close()
    assert leftovers(d) == []


# --- fds a helper must not keep --------------------------------------------------------------

def test_descriptors_do_not_leak(d):
    """Each exec's pipes and pty end with it: the daemon's open descriptors stay flat."""
    assert d.proc is not None

    def count() -> int:
        return len(os.listdir(f"/proc/{d.proc.pid}/fd"))

    lxc(d, "exec", "c1", "--", "true")
    before = count()
    for _ in range(5):
        assert lxc(d, "exec", "c1", "--", "echo", "x").stdout == b"x\n"
        assert lxc(d, "exec", "-t", "c1", "--", "true").returncode == 0
    time.sleep(0.5)
    assert count() <= before + 2
