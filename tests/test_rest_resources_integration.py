"""The REST bridge's profiles, networks, storage pools and volumes, projects, certificates and
resources, driven by the real ``lxc`` 5.0.2 client (``LXD_DIR=DATA_DIR``) and pylxd, and
checked against the mount both ways (what REST changed the mount shows, and the reverse).

Networks: every bridge lives in a free /24 of 10.251.0.0/16 without NAT, so the project's
nft table drops what would leave it; bridges, dnsmasq and tables are removed after each test,
pass or fail (``Net.cleanup`` of the network tests).
"""

from __future__ import annotations

import errno
import http.client
import ipaddress
import json
import os
import pty
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import LxfsDaemon
from lxfs_plugins.network import config as cfg
from test_network_integration import Net, wait_ipv4
from test_rest_https_integration import client_certificate

pytestmark = pytest.mark.integration

LXC = "/usr/bin/lxc"
NET_ENV = {cfg.AUTO_SUBNETS_ENV: "10.251.0.0/16", cfg.NAT_DEFAULT_ENV: "false"}


# --- clients ----------------------------------------------------------------------------------


def lxc(d: LxfsDaemon, *args: str, input: str | None = None, check: bool = True,
        stdin: int | None = None, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """The real ``lxc`` client on the daemon's socket (its own config directory)."""
    assert os.path.exists(LXC), f"{LXC} is missing: run contrib/install-deps.sh"
    full = {**os.environ, "LXD_DIR": str(d.data_dir), "LXD_CONF": str(d.base / "lxc-conf"),
            **(env or {})}
    result = subprocess.run([LXC, *args], input=input, stdin=stdin, capture_output=True,
                            text=True, env=full, timeout=120)
    if check and result.returncode != 0:
        pytest.fail(f"lxc {' '.join(args)} exited with {result.returncode}\n"
                    f"--- stdout:\n{result.stdout}\n--- stderr:\n{result.stderr}")
    return result


def show(d: LxfsDaemon, *args: str) -> Any:
    return yaml.safe_load(lxc(d, *args).stdout)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("lxd", timeout=60)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(60)
        sock.connect(self.socket_path)
        self.sock = sock


def rest(d: LxfsDaemon, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPResponse, Any]:
    """One request on DATA_DIR/unix.socket: (status, response, decoded JSON)."""
    conn = _UnixConnection(str(d.data_dir / "unix.socket"))
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
        return response.status, response, json.loads(raw) if raw else None
    finally:
        conn.close()


def metadata(d: LxfsDaemon, path: str) -> Any:
    status, _response, body = rest(d, "GET", path)
    assert status == 200, body
    return body["metadata"]


def csv_rows(d: LxfsDaemon, *args: str) -> list[list[str]]:
    return [line.split(",") for line in lxc(d, *args, "-f", "csv").stdout.splitlines()]


# --- profiles ---------------------------------------------------------------------------------


EDITED = """config:
  limits.cpu: "1"
description: set in an editor
devices:
  tmp:
    path: /mnt/tmp
    source: /tmp
    type: disk
"""


def test_profiles_with_the_real_client(lxfs_daemon: LxfsDaemon) -> None:
    d = lxfs_daemon
    lxc(d, "profile", "create", "web")
    assert "web" in os.listdir(d.path("profiles"))
    lxc(d, "profile", "set", "web", "limits.memory", "256MiB")
    lxc(d, "profile", "set", "web", "user.greeting=hello")
    assert d.read("profiles", "web", "config", "limits.memory") == "256MiB"
    assert lxc(d, "profile", "get", "web", "user.greeting").stdout.strip() == "hello"
    lxc(d, "profile", "unset", "web", "user.greeting")
    assert not d.path("profiles", "web", "config", "user.greeting").exists()
    # what the mount changes, REST shows
    d.write("profiles", "web", "description", "from the mount")
    assert show(d, "profile", "show", "web") == {
        "config": {"limits.memory": "256MiB"}, "description": "from the mount",
        "devices": {}, "name": "web", "used_by": []}

    # edit through $EDITOR (stdin a terminal), then from stdin
    editor = d.base / "editor.sh"
    editor.write_text(f"#!/bin/sh\ncat > \"$1\" <<'EOF'\n{EDITED}EOF\n")
    editor.chmod(0o755)
    primary, secondary = pty.openpty()
    try:
        lxc(d, "profile", "edit", "web", stdin=secondary, env={"EDITOR": str(editor)})
    finally:
        os.close(primary)
        os.close(secondary)
    assert d.read("profiles", "web", "description") == "set in an editor"
    assert d.read("profiles", "web", "config", "limits.cpu") == "1"
    assert not d.path("profiles", "web", "config", "limits.memory").exists()  # replaced
    assert d.read("profiles", "web", "devices", "tmp", "source") == "/tmp"
    lxc(d, "profile", "edit", "web", input=EDITED.replace("set in an editor", "piped"))
    assert d.read("profiles", "web", "description") == "piped"

    # PUT is all or nothing: an unknown key refuses the whole edit
    result = lxc(d, "profile", "edit", "web", check=False,
                 input='config:\n  limits.cpu: "2"\n  no.such.key: x\ndevices: {}\n')
    assert result.returncode != 0 and "no.such.key" in result.stderr
    assert d.read("profiles", "web", "config", "limits.cpu") == "1"
    assert d.read("profiles", "web", "devices", "tmp", "type") == "disk"
    result = lxc(d, "profile", "set", "web", "limits.cpu", "lots", check=False)
    assert result.returncode != 0 and "limits.cpu" in result.stderr
    lxc(d, "profile", "device", "add", "web", "eth1", "nic", "nictype=p2p", "name=eth1")
    assert d.read("profiles", "web", "devices", "eth1", "nictype") == "p2p"
    lxc(d, "profile", "device", "remove", "web", "eth1")
    assert not d.path("profiles", "web", "devices", "eth1").exists()

    # ETag: a PUT from an older read is refused
    status, response, _body = rest(d, "GET", "/1.0/profiles/web")
    tag = response.getheader("ETag")
    assert status == 200 and tag
    d.write("profiles", "web", "config", "limits.cpu", "0-1")
    status, _response, body = rest(d, "PUT", "/1.0/profiles/web", {"config": {}},
                                   {"If-Match": tag})
    assert status == 412, body
    assert d.read("profiles", "web", "config", "limits.cpu") == "0-1"
    # PATCH keeps what it does not name
    status, _response, body = rest(d, "PATCH", "/1.0/profiles/web",
                                   {"config": {"user.a": "b"}})
    assert status == 200, body
    assert d.read("profiles", "web", "config", "limits.cpu") == "0-1"
    assert d.read("profiles", "web", "config", "user.a") == "b"

    # copy, rename; collections
    lxc(d, "profile", "copy", "web", "web2")
    lxc(d, "profile", "rename", "web2", "web3")
    assert sorted(os.listdir(d.path("profiles"))) == ["default", "web", "web3"]
    assert d.read("profiles", "web3", "config", "limits.cpu") == "0-1"
    assert metadata(d, "/1.0/profiles") == ["/1.0/profiles/default", "/1.0/profiles/web",
                                            "/1.0/profiles/web3"]
    docs = metadata(d, "/1.0/profiles?recursion=1")
    assert [p["name"] for p in docs] == ["default", "web", "web3"]
    assert docs[0]["devices"]["root"] == {"path": "/", "pool": "default", "type": "disk"}
    assert set(docs[0]) == {"config", "description", "devices", "name", "used_by"}
    status, response, body = rest(d, "POST", "/1.0/profiles", {"name": "web"})
    assert status == 409, body
    status, response, body = rest(d, "POST", "/1.0/profiles",
                                  {"name": "p4", "config": {"limits.cpu": "1"}})
    assert status == 201 and response.getheader("Location") == "/1.0/profiles/p4", body
    assert d.read("profiles", "p4", "config", "limits.cpu") == "1"
    status, _response, body = rest(d, "POST", "/1.0/profiles",
                                   {"name": "p5", "config": {"bad.key": "1"}})
    assert status == 400 and "bad.key" in body["error"]
    assert "p5" not in os.listdir(d.path("profiles"))
    lxc(d, "profile", "delete", "p4")

    # used_by, and a profile in use cannot go
    os.mkdir(d.path("instances", "c1"))
    d.write("instances", "c1", "profiles", "default\nweb")
    assert show(d, "profile", "show", "web")["used_by"] == ["/1.0/instances/c1"]
    assert "| web " in lxc(d, "profile", "list").stdout
    status, _response, body = rest(d, "DELETE", "/1.0/profiles/web")
    assert status == 400 and "in use" in body["error"], body
    assert lxc(d, "profile", "delete", "web", check=False).returncode != 0
    status, _response, body = rest(d, "DELETE", "/1.0/profiles/default")
    assert status == 403, body
    status, _response, body = rest(d, "POST", "/1.0/profiles/default", {"name": "x"})
    assert status == 403, body
    # a rename carries the instances along
    lxc(d, "profile", "rename", "web", "site")
    assert d.read("instances", "c1", "profiles").splitlines() == ["default", "site"]
    assert show(d, "profile", "show", "site")["used_by"] == ["/1.0/instances/c1"]
    os.rmdir(d.path("instances", "c1"))
    lxc(d, "profile", "delete", "site")
    lxc(d, "profile", "delete", "web3")
    assert sorted(os.listdir(d.path("profiles"))) == ["default"]
    assert rest(d, "GET", "/1.0/profiles/site")[0] == 404


def test_profile_assign_and_volume_attach_on_instances(lxfs_daemon: LxfsDaemon) -> None:
    """``lxc profile assign/add/remove`` and ``lxc storage volume attach/detach`` change an
    instance through ``/1.0/instances/NAME``: the profiles and volumes they name are ours."""
    d = lxfs_daemon
    os.mkdir(d.path("instances", "c1"))
    lxc(d, "profile", "create", "extra")
    lxc(d, "profile", "create", "more")
    lxc(d, "profile", "assign", "c1", "default,extra")
    assert d.read("instances", "c1", "profiles").splitlines() == ["default", "extra"]
    lxc(d, "profile", "add", "c1", "more")
    lxc(d, "profile", "remove", "c1", "extra")
    assert d.read("instances", "c1", "profiles").splitlines() == ["default", "more"]
    assert show(d, "profile", "show", "more")["used_by"] == ["/1.0/instances/c1"]
    lxc(d, "storage", "volume", "create", "default", "vol1")
    lxc(d, "storage", "volume", "attach", "default", "vol1", "c1", "/srv")
    assert d.read("instances", "c1", "devices", "vol1", "source") == "vol1"
    assert show(d, "storage", "volume", "show", "default", "vol1")["used_by"] == \
        ["/1.0/instances/c1"]
    lxc(d, "storage", "volume", "detach", "default", "vol1", "c1")
    # the instance's endpoint may leave the entry to the kernel's cache time (1 s)
    deadline = time.monotonic() + 2
    while d.path("instances", "c1", "devices", "vol1").exists():
        assert time.monotonic() < deadline, "instances/c1/devices/vol1 is still there"
        time.sleep(0.05)
    lxc(d, "storage", "volume", "delete", "default", "vol1")


# --- storage ----------------------------------------------------------------------------------


def test_storage_with_the_real_client(daemon_with_busybox: LxfsDaemon) -> None:
    d = daemon_with_busybox
    rows = csv_rows(d, "storage", "list")
    assert rows[0][:2] == ["default", "dir"] and rows[0][-1] == "CREATED", rows
    lxc(d, "storage", "create", "extra", "dir")
    assert d.read("storage-pools", "extra", "driver") == "dir"
    pool = show(d, "storage", "show", "extra")
    assert pool["driver"] == "dir" and pool["status"] == "Created"
    assert pool["locations"] == ["none"] and pool["used_by"] == []
    assert Path(pool["config"]["source"]).is_dir()
    # a fixed key is refused and nothing changes
    result = lxc(d, "storage", "set", "extra", "source=/var/tmp", check=False)
    assert result.returncode != 0
    assert d.read("storage-pools", "extra", "config", "source") == pool["config"]["source"]
    lxc(d, "storage", "edit", "extra",
        input=yaml.safe_dump({"config": pool["config"], "description": "spare"}))
    assert d.read("storage-pools", "extra", "description") == "spare"
    # the mount's pending pool, as REST shows it
    os.mkdir(d.path("storage-pools", "later"))
    later = metadata(d, "/1.0/storage-pools/later")
    assert later["status"] == "Pending" and later["driver"] == ""
    os.rmdir(d.path("storage-pools", "later"))
    lxc(d, "storage", "delete", "extra")
    assert sorted(os.listdir(d.path("storage-pools"))) == ["default"]
    result = lxc(d, "storage", "create", "nope", "lvm", check=False)
    assert result.returncode != 0 and "not supported" in result.stderr
    assert metadata(d, "/1.0/storage-pools") == ["/1.0/storage-pools/default"]

    # custom volumes and their snapshots
    custom = d.path("storage-pools", "default", "volumes", "custom")
    lxc(d, "storage", "volume", "create", "default", "vol1")
    assert os.listdir(custom) == ["vol1"]
    (custom / "vol1" / "data" / "hello.txt").write_text("hi\n")
    lxc(d, "storage", "volume", "snapshot", "default", "vol1")
    lxc(d, "storage", "volume", "snapshot", "default", "vol1", "first")
    assert sorted(os.listdir(custom / "vol1" / "snapshots")) == ["first", "snap0"]
    vol = show(d, "storage", "volume", "show", "default", "vol1")
    assert {k: vol[k] for k in ("name", "type", "content_type", "used_by", "config")} == {
        "name": "vol1", "type": "custom", "content_type": "filesystem", "used_by": [],
        "config": {}}
    snap = show(d, "storage", "volume", "show", "default", "vol1/first")
    assert snap["name"] == "first" and snap["content_type"] == "filesystem"
    lxc(d, "storage", "volume", "rename", "default", "vol1", "vol2")
    assert os.listdir(custom) == ["vol2"]
    assert (custom / "vol2" / "data" / "hello.txt").read_text() == "hi\n"
    assert sorted(os.listdir(custom / "vol2" / "snapshots")) == ["first", "snap0"]
    lxc(d, "storage", "volume", "copy", "default/vol2", "default/vol3")
    lxc(d, "storage", "volume", "copy", "default/vol2", "default/vol4", "--volume-only")
    assert (custom / "vol3" / "data" / "hello.txt").read_text() == "hi\n"
    assert sorted(os.listdir(custom / "vol3" / "snapshots")) == ["first", "snap0"]
    assert os.listdir(custom / "vol4" / "snapshots") == []
    (custom / "vol2" / "data" / "hello.txt").write_text("bye\n")
    lxc(d, "storage", "volume", "restore", "default", "vol2", "first")
    assert (custom / "vol2" / "data" / "hello.txt").read_text() == "hi\n"
    # attach to a profile: the volume is in use
    lxc(d, "storage", "volume", "attach-profile", "default", "vol2", "default", "data",
        "/srv/data")
    assert d.read("profiles", "default", "devices", "data", "source") == "vol2"
    assert show(d, "storage", "volume", "show", "default", "vol2")["used_by"] == \
        ["/1.0/profiles/default"]
    result = lxc(d, "storage", "volume", "delete", "default", "vol2", check=False)
    assert result.returncode != 0 and "used by" in result.stderr
    result = lxc(d, "storage", "volume", "rename", "default", "vol2", "vol9", check=False)
    assert result.returncode != 0
    lxc(d, "storage", "volume", "detach-profile", "default", "vol2", "default")
    assert not d.path("profiles", "default", "devices", "data").exists()
    lxc(d, "storage", "volume", "delete", "default", "vol2/snap0")
    assert os.listdir(custom / "vol2" / "snapshots") == ["first"]
    # a volume the mount made is REST's too
    os.mkdir(custom / "fromfs")
    assert show(d, "storage", "volume", "show", "default", "fromfs")["name"] == "fromfs"
    result = lxc(d, "storage", "volume", "create", "default", "sized", "size=1GiB",
                 check=False)
    assert result.returncode != 0 and "no configuration" in result.stderr

    # image and container volumes, and the pool's users
    fingerprint = next(n for n in os.listdir(d.path("images")) if re.fullmatch(r"[0-9a-f]{64}", n))
    os.mkdir(d.path("instances", "c1"))
    d.write("instances", "c1", "source", "busybox")
    os.mkdir(d.path("instances", "c1", "snapshots", "s1"))
    # the dir pool makes the image volume after the first launch, off its path
    deadline = time.monotonic() + 120
    while True:
        rows = csv_rows(d, "storage", "volume", "list", "default")
        names = [(r[0], r[1]) for r in rows]
        if ("image", fingerprint) in names or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ("container", "c1") in names and ("image", fingerprint) in names, rows
    assert ("custom", "vol2") in names and ("custom (snapshot)", "vol2/first") in names
    urls = metadata(d, "/1.0/storage-pools/default/volumes")
    assert "/1.0/storage-pools/default/volumes/container/c1" in urls
    assert "/1.0/storage-pools/default/volumes/container/c1/snapshots/s1" in urls
    assert "/1.0/storage-pools/default/volumes/custom/vol2/snapshots/first" in urls
    assert metadata(d, "/1.0/storage-pools/default/volumes/custom") == [
        u for u in urls if "/volumes/custom/" in u]
    container = metadata(d, "/1.0/storage-pools/default/volumes/container/c1")
    assert container["used_by"] == ["/1.0/instances/c1"] and container["type"] == "container"
    image = metadata(d, f"/1.0/storage-pools/default/volumes/image/{fingerprint}")
    assert image["used_by"] == [f"/1.0/images/{fingerprint}"]
    used_by = show(d, "storage", "show", "default")["used_by"]
    for wanted in ("/1.0/instances/c1", "/1.0/profiles/default",
                   f"/1.0/images/{fingerprint}",
                   "/1.0/storage-pools/default/volumes/custom/vol2"):
        assert wanted in used_by, used_by
    status, _response, body = rest(d, "DELETE", "/1.0/storage-pools/default")
    assert status == 400, body
    resources = metadata(d, "/1.0/storage-pools/default/resources")
    assert 0 < resources["space"]["used"] <= resources["space"]["total"]
    assert resources["inodes"]["total"] > 0
    assert "total space" in lxc(d, "storage", "info", "default").stdout
    status, _response, body = rest(d, "DELETE",
                                   "/1.0/storage-pools/default/volumes/container/c1")
    assert status == 400, body
    for name in ("vol2", "vol3", "vol4", "fromfs"):
        lxc(d, "storage", "volume", "delete", "default", name)
    assert os.listdir(custom) == []


# --- networks ---------------------------------------------------------------------------------


def test_networks_with_the_real_client(lxfs_daemon_factory: Any, busybox_image: Path) -> None:
    d = lxfs_daemon_factory(env=NET_ENV)
    net = Net(d)
    try:
        d.cli("image", "import", busybox_image, "--alias", "busybox", timeout=120)
        _networks(d, net)
    finally:
        net.cleanup()


def _networks(d: LxfsDaemon, net: Net) -> None:
    # the host's interfaces are unmanaged networks
    assert "/1.0/networks/lo" in metadata(d, "/1.0/networks")
    lo = metadata(d, "/1.0/networks/lo")
    assert (lo["managed"], lo["type"], lo["config"], lo["status"]) == (False, "loopback", {}, "")
    assert lxc(d, "network", "create", "x", "--type=macvlan", check=False).returncode != 0

    name, iface = net.name(), net.subnet()
    lxc(d, "network", "create", name, f"ipv4.address={iface}", "ipv4.nat=false",
        "ipv6.address=none")
    assert d.read("networks", name, "config", "ipv4.address") == str(iface)
    ruleset = subprocess.run(["nft", "list", "table", "inet", cfg.table_name(name)],
                             capture_output=True, text=True, check=True).stdout
    assert f'iifname "{name}" oifname != "{name}" meta nfproto ipv4 drop' in ruleset
    shown = show(d, "network", "show", name)
    assert {k: shown[k] for k in ("name", "type", "managed", "status", "locations")} == {
        "name": name, "type": "bridge", "managed": True, "status": "Created",
        "locations": ["none"]}
    assert shown["config"]["ipv4.address"] == str(iface)
    row = next(r for r in csv_rows(d, "network", "list") if r[0] == name)
    assert row[1:4] == ["bridge", "YES", str(iface)], row
    lxc(d, "network", "set", name, "dns.domain=lxfs.test")
    assert d.read("networks", name, "config", "dns.domain") == "lxfs.test"
    d.write("networks", name, "config", "user.owner", "mount")
    assert lxc(d, "network", "get", name, "user.owner").stdout.strip() == "mount"
    # all or nothing, and the ETag
    status, response, _body = rest(d, "GET", f"/1.0/networks/{name}")
    config = {**shown["config"], "dns.domain": "other.test", "no.such.key": "1"}
    status, _response, body = rest(d, "PUT", f"/1.0/networks/{name}", {"config": config},
                                   {"If-Match": response.getheader("ETag")})
    assert status == 400 and "no.such.key" in body["error"], body
    assert d.read("networks", name, "config", "dns.domain") == "lxfs.test"
    d.write("networks", name, "description", "changed since that read")
    status, _response, body = rest(d, "PATCH", f"/1.0/networks/{name}",
                                   {"config": {"dns.domain": "x.test"}},
                                   {"If-Match": response.getheader("ETag")})
    assert status == 412, body
    lxc(d, "network", "edit", name, input=yaml.safe_dump(
        {"config": {**shown["config"], "dns.domain": "lxfs.test"}, "description": "lab"}))
    assert d.read("networks", name, "description") == "lab"
    assert not d.path("networks", name, "config", "user.owner").exists()
    leases = csv_rows(d, "network", "list-leases", name)
    assert leases == [[f"{name}.gw", "", str(iface.ip), "GATEWAY"]], leases
    info = lxc(d, "network", "info", name).stdout
    assert "State: up" in info and f"inet\t{iface} (global)" in info
    state = metadata(d, f"/1.0/networks/{name}/state")
    assert state["bridge"]["forward_delay"] == 0 and state["type"] == "broadcast"

    # an instance on it: its lease, used_by, and no deletion while used
    lxc(d, "profile", "device", "add", "default", "eth0", "nic", f"network={name}",
        "name=eth0")
    assert d.read("profiles", "default", "devices", "eth0", "network") == name
    d.cli("launch", "busybox", "c1")
    address = wait_ipv4(d, "c1", timeout=10)[0].split()[0]
    assert ipaddress.IPv4Address(address) in iface.network
    mac = d.read("instances", "c1", "config", "volatile.eth0.hwaddr")
    leases = csv_rows(d, "network", "list-leases", name)
    assert ["c1", mac, address, "DYNAMIC"] in leases, leases
    assert metadata(d, f"/1.0/networks/{name}")["used_by"] == ["/1.0/profiles/default",
                                                               "/1.0/instances/c1"]
    result = lxc(d, "network", "delete", name, check=False)
    assert result.returncode != 0 and "in use" in result.stderr
    result = lxc(d, "network", "rename", name, net.name(), check=False)
    assert result.returncode != 0 and "in use" in result.stderr
    d.cli("delete", "--force", "c1")
    lxc(d, "profile", "device", "remove", "default", "eth0")

    # rename: a new bridge, the old one gone
    renamed = net.name()
    lxc(d, "network", "rename", name, renamed)
    assert subprocess.run(["ip", "link", "show", name], capture_output=True).returncode != 0
    assert subprocess.run(["ip", "link", "show", renamed], capture_output=True).returncode == 0
    assert sorted(os.listdir(d.path("networks"))) == [renamed]
    assert d.read("networks", renamed, "config", "ipv4.address") == str(iface)
    lxc(d, "network", "delete", renamed)
    assert subprocess.run(["ip", "link", "show", renamed], capture_output=True).returncode != 0
    assert subprocess.run(["nft", "list", "table", "inet", cfg.table_name(renamed)],
                          capture_output=True).returncode != 0
    # a network the mount made is REST's too
    made = net.name()
    os.mkdir(d.path("networks", made))
    doc = metadata(d, f"/1.0/networks/{made}")
    assert doc["managed"] is True and doc["config"]["ipv4.nat"] == "false"
    assert ipaddress.IPv4Interface(doc["config"]["ipv4.address"]).network.subnet_of(
        ipaddress.IPv4Network("10.251.0.0/16"))
    status, _response, body = rest(d, "DELETE", f"/1.0/networks/{made}")
    assert status == 200, body
    assert os.listdir(d.path("networks")) == []
    status, _response, body = rest(d, "DELETE", "/1.0/networks/lo")
    assert status == 400, body


def test_networks_without_the_network_plugin(lxfs_daemon_factory: Any) -> None:
    d = lxfs_daemon_factory(extra_args=["--disable-plugin", "network"])
    docs = metadata(d, "/1.0/networks?recursion=1")
    assert docs and all(doc["managed"] is False for doc in docs)
    assert "lo" in [doc["name"] for doc in docs]
    status, _response, body = rest(d, "POST", "/1.0/networks", {"name": "lxtnone"})
    assert status == 501 and "no plugin manages networks" in body["error"], body
    result = lxc(d, "network", "create", "lxtnone", check=False)
    assert result.returncode != 0 and "no plugin manages networks" in result.stderr


# --- projects, certificates, resources --------------------------------------------------------


def test_projects_certificates_and_resources(lxfs_daemon: LxfsDaemon) -> None:
    d = lxfs_daemon
    rows = csv_rows(d, "project", "list")
    assert rows[0][:5] == ["default (current)", "YES", "YES", "YES", "YES"], rows
    project = show(d, "project", "show", "default")
    assert project["name"] == "default" and project["config"]["features.profiles"] == "true"
    assert "/1.0/profiles/default" in project["used_by"]
    lxc(d, "project", "set", "default", "restricted=true")
    assert d.read("projects", "default", "config", "restricted") == "true"
    d.write("projects", "default", "config", "restricted.containers.nesting", "allow")
    assert lxc(d, "project", "get", "default",
               "restricted.containers.nesting").stdout.strip() == "allow"
    result = lxc(d, "project", "set", "default", "features.images=false", check=False)
    assert result.returncode != 0 and "features" in result.stderr
    # a restriction the profiles break refuses the whole change
    lxc(d, "profile", "set", "default", "security.nesting=true")
    status, _response, body = rest(d, "PUT", "/1.0/projects/default", {
        "description": "tight", "config": {"restricted": "true",
                                           "restricted.containers.nesting": "block"}})
    assert status == 403 and "profile default" in body["error"], body
    assert d.read("projects", "default", "config", "restricted.containers.nesting") == "allow"
    assert d.read("projects", "default", "description") != "tight"
    lxc(d, "profile", "unset", "default", "security.nesting")
    lxc(d, "project", "unset", "default", "restricted")
    assert not d.path("projects", "default", "config", "restricted").exists()
    lxc(d, "project", "create", "other")  # more in tests/test_projects_integration.py
    assert rest(d, "GET", "/1.0/projects/other")[0] == 200
    lxc(d, "project", "delete", "other")
    assert rest(d, "GET", "/1.0/projects/other")[0] == 404

    # certificates: the trust store, empty at first; a bad certificate is refused with
    # the reason; the unix socket's clients (trusted) add and remove them, as on the mount
    assert metadata(d, "/1.0/certificates") == []
    assert lxc(d, "config", "trust", "list", "-f", "csv").stdout.strip() == ""
    status, _response, body = rest(d, "POST", "/1.0/certificates",
                                   {"type": "client", "certificate": "x"})
    assert status == 400 and "certificate" in body["error"], body
    crt, _key = client_certificate(d.base, "admin")
    lxc(d, "config", "trust", "add", str(crt))
    [fingerprint] = [u.rsplit("/", 1)[1] for u in metadata(d, "/1.0/certificates")]
    assert d.read("certificates", fingerprint, "name") == "admin.crt"  # lxc names it so
    assert d.read("certificates", fingerprint, "certificate") == crt.read_text().strip()
    os.rmdir(d.path("certificates", fingerprint))
    assert metadata(d, "/1.0/certificates") == []

    # resources
    out = lxc(d, "info", "--resources").stdout
    assert "CPU" in out and "Memory:" in out and "Total:" in out, out
    res = metadata(d, "/1.0/resources")
    assert set(res) == {"cpu", "memory", "gpu", "network", "storage", "usb", "pci", "system"}
    threads = [t for s in res["cpu"]["sockets"] for c in s["cores"] for t in c["threads"]]
    assert res["cpu"]["total"] == len(threads) == os.cpu_count()
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    assert res["memory"]["total"] == int(meminfo["MemTotal"].split()[0]) * 1024
    assert 0 < res["memory"]["used"] < res["memory"]["total"]
    assert res["storage"]["total"] == len(res["storage"]["disks"])
    assert res["system"]["type"] in ("physical", "virtual-machine", "container")
    for key in ("firmware", "chassis", "motherboard"):
        assert isinstance(res["system"][key], dict)


# --- pylxd ------------------------------------------------------------------------------------


def test_pylxd_profiles_networks_and_pools(lxfs_daemon_factory: Any) -> None:
    import pylxd

    d = lxfs_daemon_factory(env=NET_ENV)
    net = Net(d)
    try:
        client = pylxd.Client(endpoint=str(d.data_dir / "unix.socket"))
        assert [p.name for p in client.profiles.all()] == ["default"]
        profile = client.profiles.create("py", config={"limits.cpu": "1"}, devices={},
                                         description="from pylxd")
        assert d.read("profiles", "py", "description") == "from pylxd"
        profile.config["user.k"] = "v"
        profile.save()
        assert d.read("profiles", "py", "config", "user.k") == "v"
        assert client.profiles.get("py").config == {"limits.cpu": "1", "user.k": "v"}
        client.profiles.get("py").delete()
        assert not client.profiles.exists("py")

        name, iface = net.name(), net.subnet()
        created = client.networks.create(name, type="bridge", config={
            "ipv4.address": str(iface), "ipv4.nat": "false", "ipv6.address": "none"})
        assert created.managed and created.config["ipv4.address"] == str(iface)
        assert name in [n.name for n in client.networks.all()]
        assert client.networks.get(name).state().state == "up"
        assert d.read("networks", name, "type") == "bridge"
        assert client.networks.get("lo").managed is False
        client.networks.get(name).delete()
        assert not client.networks.exists(name)
        assert not d.path("networks", name).exists()

        pool = client.storage_pools.create({"name": "pypool", "driver": "dir", "config": {}})
        assert pool.driver == "dir" and pool.status == "Created"
        assert d.read("storage-pools", "pypool", "driver") == "dir"
        assert [p.name for p in client.storage_pools.all()] == ["default", "pypool"]
        assert client.storage_pools.get("pypool").resources.get().space["total"] > 0
        volume = pool.volumes.create({"name": "v1", "type": "custom", "config": {}})
        assert d.path("storage-pools", "pypool", "volumes", "custom", "v1").is_dir()
        assert volume.snapshots.create("s1").name == "s1"
        volume.snapshots.get("s1").delete(wait=True)
        volume.delete()
        with pytest.raises(pylxd.exceptions.LXDAPIException):
            client.storage_pools.get("default").delete()
        client.storage_pools.get("pypool").delete()
        assert not d.path("storage-pools", "pypool").exists()
        with pytest.raises(OSError) as exc:
            os.stat(d.path("storage-pools", "pypool"))
        assert exc.value.errno == errno.ENOENT
    finally:
        net.cleanup()
