"""Remotes: two lxfs hosts, each a daemon in its own network namespace, driven from one
``lxfs`` command (``lxfs remote add``, ``lxfs list host2:``, ``lxfs launch host2:busybox
host2:c1``, ``lxfs exec host2:c1``, ``lxfs image copy local:busybox host2:``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CLIError, HostNetwork, LxfsDaemon
from test_image_servers_integration import (  # noqa: F401 - fixtures
    publish_tree,
    static_server,
    tls_cert,
)

pytestmark = pytest.mark.integration

PASSWORD = "two hosts"


def reachable(address: str, port: int = 8443) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def serve_https(daemon: LxfsDaemon, address: str) -> None:
    daemon.write("config/core.trust_password", PASSWORD)
    daemon.write("config/core.https_address", f"{address}:8443")
    deadline = time.monotonic() + 20
    while not reachable(address):
        assert time.monotonic() < deadline, f"{address}:8443 never answered"
        time.sleep(0.1)


class User:
    """One user's ``lxfs`` command on one host: its own remotes (LXFS_CONF)."""

    def __init__(self, daemon: LxfsDaemon, conf: Path) -> None:
        self.daemon = daemon
        self.env = {**daemon.env, "LXFS_CONF": str(conf)}

    def run(self, *args: str, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        from conftest import lxfs_cli_command

        cmd = [*lxfs_cli_command(), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, env=self.env,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise CLIError(done.returncode, cmd, done.stdout, done.stderr)
        return done


def interactive_exec(user: User, name: str, keys: bytes, size: tuple[int, int]
                     ) -> tuple[int, str]:
    """``lxfs exec NAME -- sh`` on a terminal of ``size`` (rows, columns): the exit code and
    the last line the shell printed before it."""
    import fcntl
    import pty
    import struct
    import termios

    from conftest import lxfs_cli_command

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    proc = subprocess.Popen([*lxfs_cli_command(), "exec", name, "--", "sh"], stdin=slave,
                            stdout=slave, stderr=slave, env=user.env, start_new_session=True)
    os.close(slave)
    output = b""
    sent = False
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        import select

        if not sent and b"# " in output:  # the prompt: the shell reads its input now
            os.write(master, keys)
            sent = True
        if select.select([master], [], [], 0.2)[0]:
            try:
                output += os.read(master, 65536)
            except OSError:
                break
    code = proc.wait(timeout=10)
    os.close(master)
    lines = [line for line in output.decode(errors="replace").splitlines()
             if line.strip() and "exit 5" not in line and "stty" not in line]
    return code, lines[-1].strip() if lines else ""


@pytest.fixture
def two_hosts(host_network: Callable[[], HostNetwork],
              lxfs_daemon_factory: Callable[..., LxfsDaemon], busybox_image: Path,
              tmp_path: Path) -> tuple[User, User, str, str]:
    network = host_network()
    ns1, addr1 = network.add("h1")
    ns2, addr2 = network.add("h2")
    host1 = lxfs_daemon_factory(netns=ns1)
    host2 = lxfs_daemon_factory(netns=ns2)
    host1.cli("image", "import", busybox_image, "--alias", "busybox", timeout=120)
    serve_https(host1, addr1)
    serve_https(host2, addr2)
    return User(host1, tmp_path / "conf1"), User(host2, tmp_path / "conf2"), addr1, addr2


def test_remote_list_has_the_defaults(lxfs_daemon: LxfsDaemon, tmp_path: Path) -> None:
    user = User(lxfs_daemon, tmp_path / "conf")
    listing = json.loads(user.run("remote", "list", "--format", "json").stdout)
    assert set(listing) == {"local", "images", "ubuntu"}
    assert listing["images"]["protocol"] == "simplestreams"
    assert user.run("remote", "get-default").stdout.strip() == "local"
    # an image server has no instances; a remote nobody added is named as such
    done = user.run("list", "images:", check=False)
    assert done.returncode == 1 and "image server" in done.stderr
    done = user.run("list", "nowhere:", check=False)
    assert done.returncode == 1 and "Remote nowhere doesn't exist" in done.stderr
    # the static remote cannot go; nothing unreachable is added
    done = user.run("remote", "remove", "local", check=False)
    assert done.returncode == 1 and "static" in done.stderr
    done = user.run("remote", "add", "x", "https://127.0.0.1:9", "--accept-certificate",
                    check=False)
    assert done.returncode == 1 and "cannot reach" in done.stderr
    assert "x" not in json.loads(user.run("remote", "list", "-f", "json").stdout)


def test_two_hosts_one_command(two_hosts: tuple[User, User, str, str]) -> None:
    user1, user2, addr1, addr2 = two_hosts
    # both ways
    user1.run("remote", "add", "host2", addr2, "--accept-certificate", "--password", PASSWORD)
    user2.run("remote", "add", "host1", f"https://{addr1}:8443", "--accept-certificate",
              "--password", PASSWORD)
    listing = json.loads(user1.run("remote", "list", "-f", "json").stdout)
    assert listing["host2"]["addr"] == f"https://{addr2}:8443"
    assert json.loads(user2.run("list", "host1:", "-f", "json").stdout) == []

    # an image of this host copied to the other, then an instance launched there
    user1.run("image", "copy", "local:busybox", "host2:", "--alias", "busybox")
    images = json.loads(user1.run("image", "list", "host2:", "-f", "json").stdout)
    assert [a["name"] for a in images[0]["aliases"]] == ["busybox"]
    assert images[0]["fingerprint"] == user1.daemon.read("images/aliases/busybox/fingerprint")
    info = user1.run("image", "info", "host2:busybox").stdout
    assert f"Fingerprint: {images[0]['fingerprint']}" in info and "    - busybox" in info
    assert "public: false" in user1.run("image", "show", "host2:busybox").stdout
    user1.run("launch", "host2:busybox", "host2:c1")
    rows = json.loads(user1.run("list", "host2:", "-f", "json").stdout)
    assert [(r["name"], r["status"]) for r in rows] == [("c1", "Running")]
    # ... which is host2's own, on its mount, and not host1's
    assert user2.daemon.read("instances/c1/state") == "RUNNING"
    assert not user1.daemon.path("instances", "c1").exists()

    done = user1.run("exec", "host2:c1", "--", "sh", "-c", "echo out; echo err >&2; exit 3",
                     check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n"), done.stderr
    done = subprocess.run(
        [*__import__("conftest").lxfs_cli_command(), "exec", "host2:c1", "--", "cat"],
        input="piped in\n", capture_output=True, text=True, env=user1.env, timeout=60)
    assert (done.returncode, done.stdout) == (0, "piped in\n")
    assert "c1" in user1.run("info", "host2:c1").stdout
    assert "Log:" in user1.run("info", "host2:c1", "--show-log").stdout
    assert interactive_exec(user1, "host2:c1", b"stty size; exit 5\n", (33, 101)) \
        == (5, "33 101")

    # snapshots, config, files
    user1.run("snapshot", "host2:c1", "snap0")
    assert user2.daemon.path("instances", "c1", "snapshots", "snap0").is_dir()
    user1.run("config", "set", "host2:c1", "user.note", "set from host1")
    assert user2.daemon.read("instances/c1/config/user.note") == "set from host1"
    assert user1.run("config", "get", "host2:c1", "user.note").stdout == "set from host1\n"
    user1.run("config", "unset", "host2:c1", "user.note")
    assert not user2.daemon.path("instances", "c1", "config", "user.note").exists()
    local_file = Path(user1.env["LXFS_CONF"]).parent / "hello.txt"
    local_file.write_text("hello from host1\n")
    user1.run("file", "push", str(local_file), "host2:c1/root/hello.txt")
    assert user1.run("exec", "host2:c1", "--", "cat", "/root/hello.txt").stdout \
        == "hello from host1\n"
    assert user1.run("file", "pull", "host2:c1/root/hello.txt", "-").stdout \
        == "hello from host1\n"

    # the other way: host2's daemon pulls host1's (private) image, for an image or an instance
    user2.run("image", "copy", "host1:busybox", "local:", "--alias", "from-host1")
    assert user2.daemon.read("images/aliases/from-host1/fingerprint") == \
        user1.daemon.read("images/aliases/busybox/fingerprint")
    user2.run("launch", "host1:busybox", "c3")
    assert user2.daemon.read("instances/c3/state") == "RUNNING"
    user2.run("delete", "--force", "c3")

    # the default remote
    user1.run("remote", "switch", "host2")
    assert user1.run("remote", "get-default").stdout.strip() == "host2"
    assert [r["name"] for r in json.loads(user1.run("list", "-f", "json").stdout)] == ["c1"]
    assert json.loads(user1.run("list", "local:", "-f", "json").stdout) == []
    user1.run("remote", "switch", "local")

    user1.run("stop", "host2:c1", "--force")
    assert user2.daemon.read("instances/c1/state") == "STOPPED"
    user1.run("delete", "host2:c1")
    assert not user2.daemon.path("instances", "c1").exists()
    user1.run("image", "delete", "host2:busybox")
    assert json.loads(user1.run("image", "list", "host2:", "-f", "json").stdout) == [
        i for i in json.loads(user2.run("image", "list", "-f", "json").stdout)]

    # rename, set-url, remove
    user1.run("remote", "rename", "host2", "second")
    assert json.loads(user1.run("list", "second:", "-f", "json").stdout) == []
    user1.run("remote", "set-url", "second", f"https://{addr2}:8443")
    user1.run("remote", "remove", "second")
    done = user1.run("list", "second:", check=False)
    assert done.returncode == 1 and "doesn't exist" in done.stderr


def test_untrusted_and_changed_certificates(two_hosts: tuple[User, User, str, str],
                                            tmp_path: Path) -> None:
    user1, user2, _addr1, addr2 = two_hosts
    done = user1.run("remote", "add", "host2", addr2, "--accept-certificate", "--password",
                     "wrong", check=False)
    assert done.returncode == 1
    assert "host2" not in json.loads(user1.run("remote", "list", "-f", "json").stdout)
    done = user1.run("remote", "add", "host2", addr2, "--accept-certificate", check=False)
    assert done.returncode == 1 and "--password" in done.stderr
    # a pinned certificate that no longer matches: refused, never silently accepted
    user1.run("remote", "add", "host2", addr2, "--accept-certificate", "--password", PASSWORD)
    pinned = Path(user1.env["LXFS_CONF"]) / "servercerts" / "host2.crt"
    other = user1.daemon.data_dir / "server.crt"
    pinned.write_text(other.read_text())
    done = user1.run("list", "host2:", check=False)
    assert done.returncode == 1 and "certificate of remote host2" in done.stderr
    assert os.stat(pinned).st_mode & 0o077 == 0


def test_join_token(two_hosts: tuple[User, User, str, str]) -> None:
    user1, user2, _addr1, _addr2 = two_hosts
    # host2's administrator makes a token on the mount's host; host1's user joins with it
    out = user2.run("config", "trust", "add", "--name", "laptop").stdout
    token = out.strip().splitlines()[-1]
    listed = json.loads(user2.run("config", "trust", "list-tokens", "-f", "json").stdout)
    assert [t["metadata"]["request"]["name"] for t in listed] == ["laptop"]
    user1.run("remote", "add", "host2", token)
    assert json.loads(user1.run("list", "host2:", "-f", "json").stdout) == []
    certs = json.loads(user2.run("config", "trust", "list", "-f", "json").stdout)
    assert "laptop" in [c["name"] for c in certs]
    # a token works once: another client (its own certificate) cannot use it again
    other_client = User(user1.daemon, Path(user1.env["LXFS_CONF"]).parent / "conf3")
    done = other_client.run("remote", "add", "again", token, check=False)
    assert done.returncode == 1 and "No matching certificate add operation" in done.stderr
    # a revoked token does not work at all; the remote's trust store is managed from afar
    token = user2.run("config", "trust", "add", "--name", "other").stdout.strip().split()[-1]
    user2.run("config", "trust", "revoke-token", "other")
    assert json.loads(user2.run("config", "trust", "list-tokens", "-f", "json").stdout) == []
    done = other_client.run("remote", "add", "other", token, check=False)
    assert done.returncode == 1


def test_simplestreams_remote_pinned_and_listed(lxfs_daemon_factory, busybox_image,
                                                static_server, tmp_path):  # noqa: F811
    d = lxfs_daemon_factory()
    fp = publish_tree(d, busybox_image, static_server.root)
    user = User(d, tmp_path / "conf")
    # a self-signed image server: not trusted without a look at its certificate
    done = user.run("remote", "add", "mirror", static_server.url, "--protocol",
                    "simplestreams", check=False)
    assert done.returncode == 1 and "--accept-certificate" in done.stderr
    user.run("remote", "add", "mirror", static_server.url, "--protocol", "simplestreams",
             "--accept-certificate")
    assert (tmp_path / "conf" / "servercerts" / "mirror.crt").exists()
    listed = json.loads(user.run("image", "list", "mirror:", "-f", "json").stdout)
    assert [(i["fingerprint"], [a["name"] for a in i["aliases"]]) for i in listed] \
        == [(fp, ["busybox"])]
    assert "busybox" in user.run("image", "list", "mirror:").stdout
    # it cannot be the default remote, and has no instances
    done = user.run("remote", "switch", "mirror", check=False)
    assert done.returncode == 1 and "image server" in done.stderr
    user.run("launch", "mirror:busybox", "c1")  # this host's daemon pulls, pinned
    assert d.read("instances", "c1", "state") == "RUNNING"


def test_default_image_servers_unreachable_say_so(
        host_network: Callable[[], HostNetwork],
        lxfs_daemon_factory: Callable[..., LxfsDaemon], tmp_path: Path) -> None:
    """``images:`` and ``ubuntu:`` are there, but this machine cannot reach them: a host in
    a namespace without a route out (nothing leaves it) gets a clear error, and nothing is
    left behind."""
    netns, _address = host_network().add("offline")
    d = lxfs_daemon_factory(netns=netns)
    user = User(d, tmp_path / "conf")
    done = user.run("launch", "images:debian/12", "c1", check=False, timeout=180)
    assert done.returncode == 1
    assert "cannot reach image server images.linuxcontainers.org" in done.stderr
    assert d.instance_names() == []
    done = user.run("image", "list", "ubuntu:", check=False, timeout=180)
    assert done.returncode == 1 and "cloud-images.ubuntu.com" in done.stderr
