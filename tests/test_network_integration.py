"""The network plugin against the real kernel: bridges, dnsmasq, nftables, nics, `lxfs init`.

Safety: every bridge lives in 10.251.0.0/16, with no NAT (the daemon's default is NAT off and
``auto`` picks inside 10.251.0.0/16) and an nft forward-drop rule; traffic goes only to our
own bridges and containers. Every bridge, dnsmasq and nft table a test made is removed after
it, pass or fail.
"""

from __future__ import annotations

import ipaddress
import os
import pty
import re
import secrets
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LxfsDaemon, lxfs_cli_command
from lxfs_plugins.network import config as cfg

pytestmark = pytest.mark.integration


def _host_used() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "-o", "route", "show", "table", "all"],
                         capture_output=True, text=True, check=True).stdout
    used = []
    for line in out.splitlines():
        word = line.split()[0] if line.split()[0] not in ("local", "broadcast") \
            else line.split()[1]
        if word != "default":
            used.append(ipaddress.IPv4Network(word if "/" in word else f"{word}/32",
                                              strict=False))
    return used


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Net:
    """Names, subnets and cleanup for one test's networks."""

    def __init__(self, d: LxfsDaemon) -> None:
        self.d = d
        self.names: list[str] = []
        self.taken: list[ipaddress.IPv4Network] = []

    def name(self) -> str:
        name = "lxt" + secrets.token_hex(3)
        self.names.append(name)
        return name

    def subnet(self) -> ipaddress.IPv4Interface:
        iface = cfg.pick_ipv4_subnet(_host_used() + self.taken, "10.251.0.0/16")
        self.taken.append(iface.network)
        return iface

    def create(self, **config: str) -> tuple[str, ipaddress.IPv4Interface]:
        name, iface = self.name(), self.subnet()
        config = {"ipv4.address": str(iface), "ipv4.nat": "false", "ipv6.address": "none",
                  **config}
        self.d.cli("network", "create", name, *(f"{k}={v}" for k, v in config.items()))
        assert self.d.read("networks", name, "config", "ipv4.nat") == "false"
        return name, iface

    def pid(self, name: str) -> int:
        """dnsmasq's pid file (0 while a restart has removed it or not yet written it)."""
        try:
            return int((self.d.data_dir / "networks" / name / "dnsmasq.pid").read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def cleanup(self) -> None:
        d = self.d
        if d.running:
            d._remove_instances()
            d.stop()
        for name in self.names:
            pidfile = d.data_dir / "networks" / name / "dnsmasq.pid"
            try:
                pid = int(pidfile.read_text())
                if f"--pid-file={pidfile}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
            subprocess.run(["nft", "delete", "table", "inet", cfg.table_name(name)],
                           capture_output=True, check=False)


@pytest.fixture
def net_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's networks default to 10.251.0.0/16 without NAT."""
    monkeypatch.setenv(cfg.AUTO_SUBNETS_ENV, "10.251.0.0/16")
    monkeypatch.setenv(cfg.NAT_DEFAULT_ENV, "false")


@pytest.fixture
def netd(net_env: None, daemon_with_busybox: LxfsDaemon) -> Iterator[tuple[LxfsDaemon, Net]]:
    net = Net(daemon_with_busybox)
    try:
        yield daemon_with_busybox, net
    finally:
        net.cleanup()


def nic_in_profile(d: LxfsDaemon, network: str, ipv4: str = "") -> None:
    dev = d.path("profiles", "default", "devices", "eth0")
    os.mkdir(dev)
    d.write("profiles", "default", "devices", "eth0", "type", "nic")
    d.write("profiles", "default", "devices", "eth0", "network", network)
    d.write("profiles", "default", "devices", "eth0", "name", "eth0")


def wait_ipv4(d: LxfsDaemon, inst: str, timeout: float = 5.0) -> tuple[str, float]:
    """The first address in instances/INST/ipv4 and how long it took to appear."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        lines = d.read("instances", inst, "ipv4").splitlines()
        if lines:
            return lines[0], time.monotonic() - start
        time.sleep(0.02)
    pytest.fail(f"{inst} got no IPv4 address within {timeout}s\n"
                f"{d.read('instances', inst, 'console')}")


def ping(target: str) -> None:
    result = subprocess.run(["ping", "-c", "2", "-i", "0.2", "-W", "1", target],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bridge_dhcp_ping_and_list(netd):
    d, net = netd
    name, iface = net.create()
    assert iface.network.subnet_of(ipaddress.IPv4Network("10.251.0.0/16"))
    assert d.read("networks", name, "state") == "up"
    assert f"{iface}" in d.read("networks", name, "addresses").splitlines()
    ruleset = subprocess.run(["nft", "list", "table", "inet", cfg.table_name(name)],
                             capture_output=True, text=True, check=True).stdout
    assert f'iifname "{name}" oifname != "{name}" meta nfproto ipv4 drop' in ruleset
    assert "masquerade" not in ruleset
    cmdline = Path(f"/proc/{net.pid(name)}/cmdline").read_bytes().split(b"\0")
    for arg in (b"--no-resolv", b"--no-ping", b"--bind-interfaces", f"--interface={name}".encode()):
        assert arg in cmdline
    nic_in_profile(d, name)
    d.cli("launch", "busybox", "c1")
    addr1, took = wait_ipv4(d, "c1")
    print(f"lease after {took:.3f}s")
    assert took < 2.0
    ip1 = addr1.split()[0]
    assert addr1 == f"{ip1} (eth0)" and ipaddress.IPv4Address(ip1) in iface.network
    d.cli("launch", "busybox", "c2")
    ip2 = wait_ipv4(d, "c2")[0].split()[0]
    listed = d.cli("list").stdout
    assert f"{ip1} (eth0)" in listed and f"{ip2} (eth0)" in listed
    ping(ip1)
    result = d.cli("exec", "c1", "--", "ping", "-c", "2", "-W", "1", ip2, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    leases = d.read("networks", name, "leases")
    assert re.search(rf"^c1 00:16:3e:\S+ {re.escape(ip1)} \S+ dynamic$", leases, re.M), leases
    assert "c1" in d.cli("network", "list-leases", name).stdout
    assert "instances/c1" in d.read("networks", name, "used_by")
    info = d.cli("network", "info", name).stdout
    assert f"inet\t{iface}" in info and "State: up" in info
    # the MAC address is generated once and survives stop/start
    mac = d.read("instances", "c1", "config", "volatile.eth0.hwaddr")
    assert d.cli("exec", "c1", "--", "cat", "/sys/class/net/eth0/address").stdout.strip() == mac
    d.write("instances", "c1", "state", "stop")
    d.write("instances", "c1", "state", "start")
    assert d.read("instances", "c1", "config", "volatile.eth0.hwaddr") == mac
    assert d.cli("exec", "c1", "--", "cat", "/sys/class/net/eth0/address").stdout.strip() == mac
    assert wait_ipv4(d, "c1")[0] == addr1


def test_static_address(netd):
    d, net = netd
    name, iface = net.create()
    static = str(iface.network.network_address + 50)
    d.cli("create", "busybox", "c1")
    d.cli("network", "attach", name, "c1", "eth0", "eth0")
    d.write("instances", "c1", "devices", "eth0", "ipv4.address", static)
    d.write("instances", "c1", "state", "start")
    assert wait_ipv4(d, "c1")[0] == f"{static} (eth0)"
    ping(static)
    hosts = (d.data_dir / "networks" / name / "dnsmasq.hosts").read_text()
    assert f",{static},c1" in hosts
    assert " static" in d.read("networks", name, "leases")
    # an address outside the subnet is refused at start, with the reason
    d.write("instances", "c1", "state", "kill")
    d.write("instances", "c1", "devices", "eth0", "ipv4.address", "10.250.0.5")
    with pytest.raises(OSError):
        d.write("instances", "c1", "state", "start")
    assert "ipv4.address" in d.read("instances", "c1", "error")


def test_delete_refused_in_use_then_removes_everything(netd):
    d, net = netd
    name, _ = net.create()
    pid = net.pid(name)
    d.cli("create", "busybox", "c1")
    d.cli("network", "attach", name, "c1")
    result = d.cli("network", "delete", name, check=False)
    assert result.returncode == 1 and "in use by instances/c1" in result.stderr
    with pytest.raises(OSError) as exc:
        os.rmdir(d.path("networks", name))
    assert exc.value.errno == 16  # EBUSY
    d.cli("network", "detach", name, "c1")
    d.cli("network", "delete", name)
    assert not d.path("networks", name).exists()
    assert subprocess.run(["ip", "link", "show", name], capture_output=True).returncode != 0
    assert subprocess.run(["nft", "list", "table", "inet", cfg.table_name(name)],
                          capture_output=True).returncode != 0
    assert not _alive(pid)
    assert not (d.data_dir / "networks" / name).exists()


def test_bad_network_input(netd):
    d, net = netd
    with pytest.raises(OSError) as exc:
        os.mkdir(d.path("networks", "0bad"))
    assert exc.value.errno == 22
    name, _ = net.create()
    with pytest.raises(OSError):
        d.write("networks", name, "config", "ipv4.address", "not-an-address")
    assert "ipv4.address" in d.read("networks", name, "error")
    with pytest.raises(OSError):
        d.write("networks", name, "config", "bogus.key", "1")
    result = d.cli("network", "create", name, check=False)
    assert result.returncode == 1 and "already exists" in result.stderr


def test_dnsmasq_restarted_and_daemon_restore(netd):
    d, net = netd
    name, iface = net.create()
    nic_in_profile(d, name)
    d.cli("launch", "busybox", "c1")
    addr = wait_ipv4(d, "c1")[0]
    old = net.pid(name)
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            new = net.pid(name)
        except (OSError, ValueError):
            new = 0
        if new and new != old and _alive(new):
            break
        time.sleep(0.02)
    else:
        pytest.fail("dnsmasq was not restarted")
    d.kill9()
    d.restart()
    assert name in os.listdir(d.path("networks"))
    assert d.read("networks", name, "state") == "up"
    assert str(iface) in d.read("networks", name, "addresses").splitlines()
    restored = net.pid(name)
    assert _alive(restored) and not _alive(new)
    assert subprocess.run(["nft", "list", "table", "inet", cfg.table_name(name)],
                          capture_output=True).returncode == 0
    assert d.read("instances", "c1", "state") == "RUNNING"
    assert d.read("instances", "c1", "ipv4").splitlines()[0] == addr
    ping(addr.split()[0])
    os.kill(restored, signal.SIGKILL)  # still supervised after the restart
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not (_alive(net.pid(name)) and
                                               net.pid(name) != restored):
        time.sleep(0.02)
    assert net.pid(name) != restored and _alive(net.pid(name))


def test_init_auto_preseed_dump(netd):
    d, net = netd
    name, iface = net.name(), net.subnet()
    out = d.cli("init", "--auto", "--bridge-name", name, "--bridge-ipv4", str(iface),
                "--bridge-ipv6", "none").stdout
    assert f"Network {name} created" in out and "device eth0 added" in out
    assert d.read("networks", name, "config", "ipv4.address") == str(iface)
    assert d.read("networks", name, "config", "ipv4.nat") == "false"
    assert d.read("profiles", "default", "devices", "eth0", "network") == name
    again = d.cli("init", "--auto", "--bridge-name", name, "--bridge-ipv4", str(iface),
                  "--bridge-ipv6", "none").stdout
    assert "Nothing to change" in again
    d.cli("launch", "busybox", "c1")
    assert ipaddress.IPv4Address(wait_ipv4(d, "c1")[0].split()[0]) in iface.network
    dump = d.cli("init", "--dump").stdout
    import yaml

    state = yaml.safe_load(dump)
    assert any(n["name"] == name for n in state["networks"])
    assert state["profiles"][0]["devices"]["eth0"]["network"] == name
    second, iface2 = net.name(), net.subnet()
    preseed = {
        "config": {"images.auto_update_interval": "12"},
        "networks": [{"name": second, "type": "bridge",
                      "config": {"ipv4.address": str(iface2), "ipv4.nat": False,
                                 "ipv6.address": "none"}}],
        "storage_pools": [{"name": "default", "driver": "dir"}],
        "profiles": [{"name": "web", "description": "web servers", "config": {},
                      "devices": {"eth0": {"type": "nic", "network": second,
                                           "name": "eth0"}}}],
    }
    out = d.cli("init", "--preseed", input=yaml.safe_dump(preseed)).stdout
    assert f"Network {second} created" in out and "Profile web created" in out
    assert d.read("config", "images.auto_update_interval") == "12"
    assert d.read("profiles", "web", "devices", "eth0", "network") == second
    assert "Nothing to change" in d.cli("init", "--preseed", input=yaml.safe_dump(preseed)).stdout
    bad = d.cli("init", "--preseed", input="networks: [{name: x, type: macvlan}]\n", check=False)
    assert bad.returncode == 1 and "bridge" in bad.stderr
    d.cli("delete", "-f", "c1")
    os.rmdir(d.path("profiles", "default", "devices", "eth0"))
    os.rmdir(d.path("profiles", "web"))
    d.cli("network", "delete", name)
    d.cli("network", "delete", second)


def _expect(fd: int, pattern: str, buf: list[str], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while pattern not in "".join(buf):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            pytest.fail(f"no {pattern!r} in the dialogue:\n{''.join(buf)}")
        try:
            buf.append(os.read(fd, 4096).decode(errors="replace"))
        except OSError:
            pytest.fail(f"dialogue ended before {pattern!r}:\n{''.join(buf)}")


def test_init_interactive_through_pty(netd):
    d, net = netd
    name, iface = net.name(), net.subnet()
    master, slave = pty.openpty()
    proc = subprocess.Popen([*lxfs_cli_command(), "init"], stdin=slave, stdout=slave,
                            stderr=slave, env=d.env, close_fds=True)
    os.close(slave)
    buf: list[str] = []
    answers = [
        ("clustering? (yes/no) [default=no]: ", ""),
        ("new storage pool? (yes/no) [default=yes]: ", ""),
        ("Name of the new storage pool [default=default]: ", ""),
        ("storage backend to use (", ""),
        ("new local network bridge? (yes/no) [default=yes]: ", ""),
        ("What should the new bridge be called? [default=lxdbr0]: ", name),
        ("What IPv4 address should be used?", str(iface)),
        ("What IPv6 address should be used?", "none"),
        ("available over the network? (yes/no) [default=no]: ", ""),
        ("updated automatically? (yes/no) [default=yes]: ", ""),
        ("preseed to be printed? (yes/no) [default=no]: ", "yes"),
    ]
    try:
        for prompt, answer in answers:
            _expect(master, prompt, buf)
            buf.append("\n")  # separates prompts already answered
            os.write(master, answer.encode() + b"\n")
        _expect(master, f"Network {name} created", buf)
        assert proc.wait(15) == 0, "".join(buf)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = "".join(buf)
    assert f"name: {name}" in text and f"ipv4.address: {iface}" in text  # the preseed
    assert d.read("networks", name, "config", "ipv4.address") == str(iface)
    assert d.read("networks", name, "config", "ipv6.address") == "none"
    assert d.read("profiles", "default", "devices", "eth0", "network") == name


def test_nic_bandwidth_limits(netd):
    """limits.ingress shapes the host side of the veth, limits.egress the instance's side,
    both as token buckets set through netlink."""
    d, net = netd
    name, _iface = net.create()
    nic_in_profile(d, name)
    d.write("profiles", "default", "devices", "eth0", "limits.ingress", "10Mbit")
    d.write("profiles", "default", "devices", "eth0", "limits.egress", "2Mbit")
    with pytest.raises(OSError):
        d.write("profiles", "default", "devices", "eth0", "limits.egress", "fast")
    d.cli("launch", "busybox", "q1")
    pid = d.read("instances", "q1", "pid")
    host = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout
    assert "rate 10Mbit" in host, host
    inner = subprocess.run(["nsenter", "-t", pid, "-n", "tc", "qdisc", "show", "dev", "eth0"],
                           capture_output=True, text=True).stdout
    assert "tbf" in inner and "rate 2Mbit" in inner, inner
