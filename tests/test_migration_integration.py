"""Moving instances between hosts with LXD 5.0's migration protocol (issue 15): two lxfs
hosts, each a daemon in its own network namespace, driven by ``lxfs copy``/``lxfs move``
between remotes; a kill -9 of either daemon mid-transfer; the real LXD 5.0.2 with the real
``lxc`` in both directions; live migration refused."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HostNetwork, LxfsDaemon
from test_remotes_integration import PASSWORD, User, serve_https
from test_rest_instances_integration import api, wait
from test_rest_trust_integration import isolated_lxd  # noqa: F401 - a fixture
from test_storage_integration import loop_guard, make_btrfs_pool  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration


@pytest.fixture
def hosts(loop_guard: list[Path],  # noqa: F811 - the fixture imported above
          host_network: Callable[[], HostNetwork],
          lxfs_daemon_factory: Callable[..., LxfsDaemon], busybox_image: Path,
          tmp_path: Path) -> Iterator[tuple[User, User]]:
    """Two hosts serving HTTPS; host1's user has host2 as a remote and host2's has host1."""
    network = host_network()
    ns1, addr1 = network.add("h1")
    ns2, addr2 = network.add("h2")
    host1 = lxfs_daemon_factory(netns=ns1)
    host2 = lxfs_daemon_factory(netns=ns2)
    loop_guard.extend([host1.base, host2.base])
    host1.cli("image", "import", busybox_image, "--alias", "busybox", timeout=120)
    serve_https(host1, addr1)
    serve_https(host2, addr2)
    user1, user2 = User(host1, tmp_path / "conf1"), User(host2, tmp_path / "conf2")
    user1.run("remote", "add", "host2", addr2, "--accept-certificate", "--password", PASSWORD)
    user2.run("remote", "add", "host1", addr1, "--accept-certificate", "--password", PASSWORD)
    yield user1, user2


def make_instance(user: User, name: str, pool: str = "default") -> None:
    """A stopped busybox with a file, a config key, a device of its own and 2 snapshots,
    each snapshot with its own content and config."""
    d = user.daemon
    user.run("create", "busybox", name, "-s", pool)
    status, doc, _ = api(d, "PATCH", f"/1.0/instances/{name}", {
        "config": {"user.note": "one"},
        "devices": {"null2": {"type": "unix-char", "path": "/dev/null2",
                              "source": "/dev/null"}}})
    assert status == 200, doc
    rootfs = instance_rootfs(d, name)
    (rootfs / "root").mkdir(exist_ok=True)
    (rootfs / "root" / "data").write_text("first\n")
    user.run("snapshot", name, "s1")
    api(d, "PATCH", f"/1.0/instances/{name}", {"config": {"user.note": "two"}})
    (rootfs / "root" / "data").write_text("second\n")
    (rootfs / "root" / "big").write_bytes(os.urandom(3 << 20))
    user.run("snapshot", name, "s2")
    (rootfs / "root" / "data").write_text("third\n")
    os.symlink("data", rootfs / "root" / "link")
    os.chown(rootfs / "root" / "data", 1000, 1001)


def instance_rootfs(d: LxfsDaemon, name: str, snapshot: str = "") -> Path:
    pool = api(d, "GET", f"/1.0/instances/{name}")[1]["metadata"]["expanded_devices"][
        "root"]["pool"]
    source = pool_root(d, pool)
    if snapshot:
        return source / "containers-snapshots" / name / snapshot / "rootfs"
    return source / "containers" / name / "rootfs"


def pool_root(d: LxfsDaemon, pool: str) -> Path:
    """Where a pool keeps its volumes (a loop-file btrfs pool: its mount point)."""
    mounted = d.data_dir.resolve() / "storage-pools" / pool
    if (mounted / "containers").is_dir():
        return mounted
    return Path(api(d, "GET", f"/1.0/storage-pools/{pool}")[1]["metadata"]["config"]["source"])


def tree(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry under ``root``: (mode, uid, gid, content or link target)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            path = Path(dirpath, n)
            st = path.lstat()
            if path.is_symlink():
                what = os.readlink(path)
            elif path.is_file():
                import hashlib

                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = ""
            found[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, what)
    return found


def described(d: LxfsDaemon, name: str) -> dict[str, Any]:
    """What must arrive identical: config (not volatile), devices, profiles, snapshots with
    their config."""
    doc = api(d, "GET", f"/1.0/instances/{name}?recursion=1")[1]["metadata"]
    snaps = api(d, "GET", f"/1.0/instances/{name}/snapshots?recursion=1")[1]["metadata"]
    return {
        "config": {k: v for k, v in doc["config"].items() if not k.startswith("volatile.")},
        "devices": {k: v for k, v in doc["devices"].items() if k != "root"},
        "profiles": doc["profiles"], "architecture": doc["architecture"],
        "snapshots": [(s["name"], {k: v for k, v in s["config"].items()
                                   if not k.startswith("volatile.")}) for s in snaps],
    }


def contents(d: LxfsDaemon, name: str) -> dict[str, Any]:
    snaps = [s["name"] for s in api(d, "GET", f"/1.0/instances/{name}/snapshots?recursion=1")
             [1]["metadata"]]
    return {"": tree(instance_rootfs(d, name)),
            **{s: tree(instance_rootfs(d, name, s)) for s in snaps}}


def pool_volumes(d: LxfsDaemon) -> list[str]:
    """Every container volume on every pool of a host."""
    found = []
    for url in api(d, "GET", "/1.0/storage-pools")[1]["metadata"]:
        pool = url.rsplit("/", 1)[1]
        source = pool_root(d, pool)
        for sub in ("containers", "containers-snapshots"):
            if (source / sub).is_dir():
                found += [f"{pool}/{sub}/{n}" for n in os.listdir(source / sub)]
    return sorted(found)


def subvolume(d: LxfsDaemon, name: str, snapshot: str) -> Any:
    import btrfsutil

    return btrfsutil.subvolume_info(str(instance_rootfs(d, name, snapshot).parent))


def received_from(d: LxfsDaemon, name: str, snapshot: str) -> bytes:
    return subvolume(d, name, snapshot).received_uuid


def btrfs(user: User, name: str = "bt") -> None:
    make_btrfs_pool(user.daemon, name)


def test_copy_and_move_dir_to_btrfs_and_back(hosts: tuple[User, User]) -> None:
    user1, user2 = hosts
    btrfs(user2)
    make_instance(user1, "c1")
    before, files = described(user1.daemon, "c1"), contents(user1.daemon, "c1")
    assert before["snapshots"][0][1]["user.note"] == "one"

    # dir -> btrfs, a copy: both have it afterwards, identical
    user1.run("copy", "c1", "host2:c2", "-s", "bt")
    assert described(user2.daemon, "c2") == before
    assert contents(user2.daemon, "c2") == files
    assert described(user1.daemon, "c1") == before
    doc = api(user2.daemon, "GET", "/1.0/instances/c2")[1]["metadata"]
    assert doc["expanded_devices"]["root"]["pool"] == "bt"
    # --instance-only: no snapshots
    user1.run("copy", "c1", "host2:c3", "--instance-only", "-s", "bt")
    assert described(user2.daemon, "c3")["snapshots"] == []
    assert contents(user2.daemon, "c3")[""] == files[""]
    # the copy starts on its host
    user2.run("start", "c2")
    assert user1.run("exec", "host2:c2", "--", "cat", "/root/data").stdout == "third\n"
    user2.run("stop", "c2", "--force")

    # btrfs -> dir, a move driven from host1 (the target is this host): pulled from host2
    user1.run("move", "host2:c2", "local:c4")
    assert "c2" not in user2.daemon.instance_names()
    assert described(user1.daemon, "c4") == before
    assert contents(user1.daemon, "c4") == files
    assert not [v for v in pool_volumes(user2.daemon) if v.endswith("/c2")]

    # push mode
    # a snapshot, copied as an instance of its own
    user1.run("copy", "c1/s1", "host2:fromsnap")
    assert contents(user2.daemon, "fromsnap") == {"": files["s1"]}
    assert described(user2.daemon, "fromsnap")["config"]["user.note"] == "one"
    # relay mode: this client carries the websockets
    user1.run("copy", "c1", "host2:c6", "--mode", "relay")
    assert contents(user2.daemon, "c6") == files
    assert described(user2.daemon, "c6") == before
    # push mode, with a key of its own
    user1.run("copy", "c1", "host2:c5", "--mode", "push", "-c", "user.extra=yes")
    assert contents(user2.daemon, "c5") == files
    assert described(user2.daemon, "c5")["config"] == {**before["config"], "user.extra": "yes"}


def test_btrfs_to_btrfs_and_refresh(hosts: tuple[User, User]) -> None:
    user1, user2 = hosts
    btrfs(user1)
    btrfs(user2)
    make_instance(user1, "c1", pool="bt")
    before, files = described(user1.daemon, "c1"), contents(user1.daemon, "c1")
    user1.run("copy", "c1", "host2:c1", "-s", "bt")
    assert described(user2.daemon, "c1") == before
    assert contents(user2.daemon, "c1") == files
    # by btrfs send/receive: each snapshot on host2 was received from host1's
    ids = {s: received_from(user2.daemon, "c1", s) for s in ("s1", "s2")}
    assert ids == {s: subvolume(user1.daemon, "c1", s).uuid for s in ("s1", "s2")}
    kept = {s: subvolume(user2.daemon, "c1", s).id for s in ("s1", "s2")}
    # a third snapshot and a change: --refresh sends the new snapshot and the changes
    rootfs = instance_rootfs(user1.daemon, "c1")
    (rootfs / "root" / "data").write_text("fourth\n")
    user1.run("snapshot", "c1", "s3")
    (rootfs / "root" / "new").write_text("new\n")
    (rootfs / "root" / "big").unlink()
    user1.run("copy", "c1", "host2:c1", "--refresh")
    assert described(user2.daemon, "c1") == described(user1.daemon, "c1")
    assert contents(user2.daemon, "c1") == contents(user1.daemon, "c1")
    # incremental: s1 and s2 stayed as they were, s3 came as a stream
    assert {s: subvolume(user2.daemon, "c1", s).id for s in ("s1", "s2")} == kept
    assert received_from(user2.daemon, "c1", "s3") == subvolume(user1.daemon, "c1", "s3").uuid
    # without --refresh an existing target is refused, and stays as it was
    done = user1.run("copy", "c1", "host2:c1", check=False)
    assert done.returncode != 0 and "already in use" in done.stderr
    assert contents(user2.daemon, "c1") == contents(user1.daemon, "c1")
    # push mode (the source dials, the target listens for the stream link) and relay mode
    # (neither dials the other: the streams go through the websockets and the client)
    for mode in ("push", "relay"):
        user1.run("copy", "c1", f"host2:{mode}", "--mode", mode)
        assert contents(user2.daemon, mode) == contents(user1.daemon, "c1")
        assert received_from(user2.daemon, mode, "s3") == \
            subvolume(user1.daemon, "c1", "s3").uuid


def test_stateless_move_of_a_running_instance(hosts: tuple[User, User]) -> None:
    user1, user2 = hosts
    make_instance(user1, "c1")
    user1.run("start", "c1")
    done = user1.run("move", "c1", "host2:c1", check=False)
    assert done.returncode != 0 and "--stateless" in done.stderr
    assert user1.daemon.read("instances/c1/state") == "RUNNING"
    # live migration: refused, saying why, nothing moved
    done = user1.run("move", "c1", "host2:c1", "--stateful", check=False)
    assert done.returncode != 0 and "CRIU" in done.stderr
    status, doc, _ = api(user1.daemon, "POST", "/1.0/instances/c1",
                         {"migration": True, "live": True})
    assert status == 400 and "CRIU" in doc["error"]
    assert user1.daemon.read("instances/c1/state") == "RUNNING"
    assert "c1" not in user2.daemon.instance_names()

    user1.run("move", "c1", "host2:c1", "--stateless")
    assert "c1" not in user1.daemon.instance_names()
    assert pool_volumes(user1.daemon) == []
    assert user2.daemon.read("instances/c1/state") == "RUNNING"
    assert user1.run("exec", "host2:c1", "--", "cat", "/root/data").stdout == "third\n"
    assert [s for s, _ in described(user2.daemon, "c1")["snapshots"]] == ["s1", "s2"]
    user2.run("stop", "c1", "--force")


@pytest.mark.parametrize(("victim", "pool"), [("source", "default"), ("target", "default"),
                                              ("source", "bt"), ("target", "bt")])
def test_kill_9_mid_transfer(hosts: tuple[User, User], victim: str, pool: str) -> None:
    """Either daemon killed while the volume travels (rsync between dir pools, btrfs streams
    between btrfs pools), then both started again."""
    user1, user2 = hosts
    if pool == "bt":
        btrfs(user1)
        btrfs(user2)
    make_instance(user1, "c1", pool=pool)
    rootfs = instance_rootfs(user1.daemon, "c1")
    for i in range(40):  # enough to be caught mid-transfer
        (rootfs / "root" / f"blob{i}").write_bytes(os.urandom(4 << 20))
    before, files = described(user1.daemon, "c1"), contents(user1.daemon, "c1")
    result: dict[str, Any] = {}

    def copy() -> None:
        result["done"] = user1.run("copy", "c1", "host2:c1", "-s", pool, check=False,
                                   timeout=300)

    thread = threading.Thread(target=copy)
    thread.start()
    # wait until the target receives files (its staged volume exists), then kill
    deadline = time.monotonic() + 60
    while not any(v.endswith("/c1") or ".c1." in v for v in pool_volumes(user2.daemon)):
        assert time.monotonic() < deadline, "the transfer never started"
        time.sleep(0.02)
    time.sleep(0.2)
    (user1 if victim == "source" else user2).daemon.kill9()
    thread.join(timeout=300)
    assert result["done"].returncode != 0
    for user in (user1, user2):
        if not user.daemon.running:
            user.daemon.restart()
    assert described(user1.daemon, "c1") == before
    assert contents(user1.daemon, "c1") == files
    assert "c1" not in user2.daemon.instance_names()
    assert pool_volumes(user2.daemon) == []
    status, doc, _ = api(user2.daemon, "GET", "/1.0/instances")
    assert doc["metadata"] == []
    # and the transfer works afterwards
    serve_again = user2.run("copy", "host1:c1", "local:c1", "-s", pool, check=False)
    assert serve_again.returncode == 0, serve_again.stderr
    assert contents(user2.daemon, "c1") == files


def children(pid: int, comm: str) -> list[int]:
    """The processes named ``comm`` whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name, rest = stat.split("(", 1)[1].rsplit(")", 1)
        if name == comm and int(rest.split()[1]) == pid:
            found.append(int(entry))
    return found


@pytest.mark.parametrize("end", ["source", "target"])
def test_stream_link_killed_midway(hosts: tuple[User, User], end: str) -> None:
    """Between two lxfs btrfs pools the streams go through socat over TLS, not the
    websocket: one end's socat killed mid-stream fails the copy, saying so; the source is
    as it was, the target has nothing; then the copy works."""
    user1, user2 = hosts
    btrfs(user1)
    btrfs(user2)
    make_instance(user1, "c1", pool="bt")
    rootfs = instance_rootfs(user1.daemon, "c1")
    for i in range(40):  # enough to be caught mid-stream
        (rootfs / "root" / f"blob{i}").write_bytes(os.urandom(4 << 20))
    before, files = described(user1.daemon, "c1"), contents(user1.daemon, "c1")
    result: dict[str, Any] = {}

    def copy() -> None:
        result["done"] = user1.run("copy", "c1", "host2:c1", "-s", "bt", check=False,
                                   timeout=300)

    thread = threading.Thread(target=copy)
    thread.start()
    victim = (user1 if end == "source" else user2).daemon.server_pid
    assert victim is not None
    killed = 0
    while thread.is_alive():  # each stream's socat, as soon as it shows
        for pid in children(victim, "socat"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
                killed += 1
        time.sleep(0.005)
    thread.join(timeout=300)
    assert killed, f"no socat under the {end}'s daemon: {result}"
    done = result["done"]
    assert done.returncode != 0
    assert "TLS link" in done.stderr or "btrfs" in done.stderr, done.stderr
    assert described(user1.daemon, "c1") == before
    assert contents(user1.daemon, "c1") == files
    assert "c1" not in user2.daemon.instance_names()
    assert pool_volumes(user2.daemon) == []
    for user in (user1, user2):  # nothing left running
        assert children(user.daemon.server_pid or 0, "socat") == []
        assert children(user.daemon.server_pid or 0, "btrfs") == []
    user1.run("copy", "c1", "host2:c1", "-s", "bt")
    assert contents(user2.daemon, "c1") == files
    assert received_from(user2.daemon, "c1", "s1") == subvolume(user1.daemon, "c1", "s1").uuid


def test_migration_rest_errors(hosts: tuple[User, User]) -> None:
    """What the REST bridge refuses at once, in LXD's error JSON."""
    user1, _user2 = hosts
    d = user1.daemon
    status, doc, _ = api(d, "POST", "/1.0/instances", {
        "name": "x", "source": {"type": "migration", "mode": "sideways"}})
    assert status == 400 and "mode" in doc["error"]
    status, doc, _ = api(d, "POST", "/1.0/instances", {
        "name": "x", "source": {"type": "migration", "mode": "pull", "live": True}})
    assert status == 400 and "CRIU" in doc["error"]
    # a pull from nowhere fails in the operation, leaving nothing
    status, doc, _ = api(d, "POST", "/1.0/instances", {
        "name": "x", "source": {"type": "migration", "mode": "pull",
                                "operation": "https://10.251.255.254:8443/1.0/operations/x",
                                "secrets": {"control": "a", "fs": "b"}}})
    assert status == 202, doc
    op = wait(d, doc)
    assert op["status"] == "Failure" and "cannot reach" in op["err"]
    assert "x" not in d.instance_names() and pool_volumes(d) == []


# --- the real LXD 5.0.2 and the real lxc ------------------------------------------------------

def test_lxc_moves_from_lxd_to_lxfs_and_copies_back(
        daemon_with_busybox: LxfsDaemon, busybox_image: Path,
        isolated_lxd: Any, tmp_path: Path) -> None:  # noqa: F811
    """``lxc move lxd:c lxfs:c`` and ``lxc copy lxfs:c lxd:c2``, both with 2 snapshots: the
    files (ownership too: LXD may store them shifted), config, devices and snapshots arrive,
    and each instance starts on its new host."""
    import subprocess

    d = daemon_with_busybox
    lxd, veth = isolated_lxd
    address = f"{veth.host_address}:8443"
    d.write("config/core.trust_password", PASSWORD)
    d.write("config/core.https_address", address)
    lxd.cli("config", "set", "core.https_address", f"{veth.peer_address}:8443")
    lxd.cli("config", "set", "core.trust_password", PASSWORD)
    env = {**os.environ, "LXD_CONF": str(tmp_path / "lxc")}

    def lxc(*args: str) -> str:
        done = subprocess.run(["lxc", *args], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    deadline = time.monotonic() + 20
    while subprocess.run(["curl", "-k", "-s", "-o", "/dev/null", f"https://{address}/"],
                         timeout=10).returncode != 0:
        assert time.monotonic() < deadline, d.read("error")
        time.sleep(0.1)
    lxc("remote", "add", "lxfs", f"https://{address}", "--accept-certificate",
        "--password", PASSWORD)
    lxc("remote", "add", "lxd", f"https://{veth.peer_address}:8443", "--accept-certificate",
        "--password", PASSWORD)

    # an instance on LXD: files (one owned by 1000:1001), config, a device, 2 snapshots
    lxd.cli("image", "import", str(busybox_image), "--alias", "busybox")
    lxd.cli("init", "busybox", "c")
    data = tmp_path / "data"
    for step in ("first", "second", "third"):
        data.write_text(step + "\n")
        lxd.cli("file", "push", "-p", str(data), "c/root/data", "--uid", "1000", "--gid",
                "1001")
        lxd.cli("config", "set", "c", "user.note", step)
        if step != "third":
            lxd.cli("snapshot", "c", "s1" if step == "first" else "s2")
    lxd.cli("config", "device", "add", "c", "null2", "unix-char", "path=/dev/null2",
            "source=/dev/null")

    lxc("move", "lxd:c", "lxfs:c")
    assert "c" not in lxc("list", "lxd:", "--format", "csv", "-c", "n").split()
    doc = api(d, "GET", "/1.0/instances/c")[1]["metadata"]
    assert doc["config"]["user.note"] == "third"
    assert doc["devices"]["null2"] == {"type": "unix-char", "path": "/dev/null2",
                                       "source": "/dev/null"}
    snaps = api(d, "GET", "/1.0/instances/c/snapshots?recursion=1")[1]["metadata"]
    assert [(s["name"], s["config"]["user.note"]) for s in snaps] == \
        [("s1", "first"), ("s2", "second")]
    rootfs = instance_rootfs(d, "c")
    assert (rootfs / "root" / "data").read_text() == "third\n"
    st = (rootfs / "root" / "data").stat()
    assert (st.st_uid, st.st_gid) == (1000, 1001)  # the container's own ids, unshifted
    assert (instance_rootfs(d, "c", "s1") / "root" / "data").read_text() == "first\n"
    assert (instance_rootfs(d, "c", "s2") / "root" / "data").read_text() == "second\n"
    assert (rootfs / "bin" / "busybox").stat().st_uid == 0
    lxc("start", "lxfs:c")
    assert lxc("exec", "lxfs:c", "--", "cat", "/root/data") == "third\n"
    assert lxc("exec", "lxfs:c", "--", "stat", "-c", "%u:%g", "/root/data") == "1000:1001\n"
    lxc("stop", "lxfs:c", "--force")

    # and back: a copy to LXD, which starts it
    lxc("copy", "lxfs:c", "lxd:c2")
    assert "c" in d.instance_names()
    info = json.loads(lxd.cli("query", "/1.0/instances/c2?recursion=1"))
    assert info["config"]["user.note"] == "third"
    assert info["devices"]["null2"]["source"] == "/dev/null"
    assert [(s["name"], s["config"]["user.note"]) for s in info["snapshots"]] == \
        [("s1", "first"), ("s2", "second")]
    lxd.cli("start", "c2")
    assert lxd.cli("exec", "c2", "--", "cat", "/root/data") == "third\n"
    assert lxd.cli("exec", "c2", "--", "stat", "-c", "%u:%g", "/root/data") == "1000:1001\n"
    lxd.cli("stop", "c2", "--force")
    lxd.cli("delete", "c2")
    # a snapshot of lxfs's, copied to LXD as an instance
    lxc("copy", "lxfs:c/s1", "lxd:c3")
    lxd.cli("start", "c3")
    assert lxd.cli("exec", "c3", "--", "cat", "/root/data") == "first\n"
    lxd.cli("delete", "--force", "c3")
