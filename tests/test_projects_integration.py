"""Projects on the real kernel, through the mount (``projects/NAME/``), the CLI and the real
``lxc`` client on the REST bridge: the same name in two projects, features, limits,
restrictions, moves between projects."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import time
from pathlib import Path

import pytest
from test_network_integration import net_env, netd, nic_in_profile, wait_ipv4  # noqa: F401
from test_remotes_integration import two_hosts  # noqa: F401 - a fixture
from test_storage_integration import loop_guard, make_btrfs_pool  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration


def remove_project_instances(d, project: str) -> None:
    """The fixture's teardown removes the top level's instances; a project's are ours."""
    instances = d.path("projects", project, "instances")
    if not instances.is_dir():
        return
    for name in os.listdir(instances):
        if name.startswith("."):
            continue
        try:
            (instances / name / "state").write_text("kill\n")
        except OSError:
            pass
        try:
            os.rmdir(instances / name)
        except OSError:
            pass


@pytest.fixture
def projects(daemon_with_busybox):
    d = daemon_with_busybox
    made: list[str] = []
    yield d, made
    for project in made:
        remove_project_instances(d, project)


def test_mount_projects_crud(projects):
    d, made = projects
    root = d.path("projects")
    os.mkdir(root / "p1")
    made.append("p1")
    assert sorted(os.listdir(root)) == ["default", "p1"]
    assert (root / "p1" / "config" / "features.profiles").read_text() == "true\n"
    assert sorted(os.listdir(root / "p1" / "profiles")) == ["default"]
    (root / "p1" / "config" / "limits.instances").write_text("5\n")
    with pytest.raises(OSError) as bad:
        (root / "p1" / "config" / "limits.instances").write_text("many\n")
    assert bad.value.errno == errno.EINVAL
    os.rename(root / "p1", root / "p2")
    made.append("p2")
    assert sorted(os.listdir(root)) == ["default", "p2"]
    os.mkdir(root / "p2" / "instances" / "c1")
    with pytest.raises(OSError) as busy:
        os.rmdir(root / "p2")
    assert busy.value.errno == errno.EBUSY
    with pytest.raises(OSError) as busy:
        os.rename(root / "p2", root / "p3")
    assert busy.value.errno == errno.EBUSY
    os.rmdir(root / "p2" / "instances" / "c1")
    os.rmdir(root / "p2")
    assert os.listdir(root) == ["default"]
    # the top level is unchanged: no project's entries show there
    assert "p2" not in os.listdir(d.path("profiles"))


def test_same_name_in_two_projects(projects):
    d, made = projects
    os.mkdir(d.path("projects", "p1"))
    made.append("p1")
    p1 = d.path("projects", "p1")
    (p1 / "config" / "features.profiles").write_text("false\n")
    assert os.listdir(p1 / "profiles") == ["default"]
    with pytest.raises(PermissionError):
        os.mkdir(p1 / "profiles" / "web")  # the default project's, read-only here
    d.cli("launch", "busybox", "c1")
    os.mkdir(p1 / "instances" / "c1")
    (p1 / "instances" / "c1" / "source").write_text("busybox\n")
    (p1 / "instances" / "c1" / "state").write_text("start\n")
    assert (p1 / "instances" / "c1" / "state").read_text() == "RUNNING\n"
    assert d.read("instances", "c1", "state") == "RUNNING"
    assert os.listdir(p1 / "instances") == [".list", "c1"] or \
        sorted(os.listdir(p1 / "instances")) == [".list", "c1"]
    assert d.instance_names() == ["c1"]
    pids = {d.read("instances", "c1", "pid"),
            (p1 / "instances" / "c1" / "pid").read_text().strip()}
    assert len(pids) == 2
    cgroups = {Path(f"/proc/{pid}/cgroup").read_text() for pid in pids}
    assert len(cgroups) == 2
    assert any("p1_c1" in c for c in cgroups)
    # the host name inside is the name within the project
    assert (p1 / "instances" / "c1" / "rootfs" / "etc" / "hostname").exists()
    table = (p1 / "instances" / ".list").read_text().splitlines()
    assert table[1].split("\t")[:2] == ["c1", "RUNNING"]
    # a change to the default profile reaches p1's instances
    (d.path("profiles", "default", "config") / "user.note").write_text("hi\n")
    assert (p1 / "instances" / "c1" / "expanded" / "config" / "user.note").read_text() == \
        "hi\n"
    (p1 / "instances" / "c1" / "state").write_text("kill\n")
    os.rmdir(p1 / "instances" / "c1")
    assert d.read("instances", "c1", "state") == "RUNNING"


def test_projects_survive_restart(projects):
    d, made = projects
    os.mkdir(d.path("projects", "p1"))
    made.append("p1")
    (d.path("projects", "p1", "config") / "limits.instances").write_text("3\n")
    os.mkdir(d.path("projects", "p1", "instances", "c1"))
    d.restart()
    assert d.read("projects", "p1", "config", "limits.instances") == "3"
    assert "c1" in os.listdir(d.path("projects", "p1", "instances"))
    state = json.dumps(sorted(os.listdir(d.path("projects", "p1", "state"))))
    assert "instances" in state


# --- the real lxc client on the REST bridge ------------------------------------------------

def test_seed_003_with_the_lxc_client(projects):
    from test_rest_instances_integration import lxc

    d, made = projects
    for name in ("client-website", "client2-website"):
        lxc(d, "project", "create", name, "-c", "features.images=false",
            "-c", "features.profiles=false")
        made.append(name)
    listed = lxc(d, "project", "list", "--format", "csv").stdout
    assert "client-website" in listed and "client2-website" in listed
    shown = lxc(d, "project", "show", "client-website").stdout
    assert "features.profiles: \"false\"" in shown or "features.profiles: 'false'" in shown \
        or "features.profiles: false" in shown
    lxc(d, "profile", "show", "default", "--project", "default")
    profile = lxc(d, "profile", "show", "default", "--project", "client-website").stdout
    assert "path: /" in profile  # the default project's, with its root disk
    lxc(d, "launch", "busybox", "dbserver", "--project", "client-website")
    lxc(d, "launch", "busybox", "dbserver")  # the same name in default
    rows = lxc(d, "list", "--project", "client-website", "--format", "csv",
               "-c", "ns").stdout.split()
    assert rows == ["dbserver,RUNNING"]
    assert d.read("projects", "client-website", "instances", "dbserver", "state") == "RUNNING"
    out = lxc(d, "exec", "dbserver", "--project", "client-website", "--", "hostname").stdout
    assert out.strip() == "dbserver"
    lxc(d, "file", "push", "-", "dbserver/root/note", "--project", "client-website",
        input="hello\n")
    assert lxc(d, "file", "pull", "dbserver/root/note", "-", "--project",
               "client-website").stdout == "hello\n"
    lxc(d, "stop", "-f", "dbserver", "--project", "client-website")
    lxc(d, "snapshot", "dbserver", "s0", "--project", "client-website")
    lxc(d, "config", "set", "dbserver", "user.role", "db", "--project", "client-website")
    lxc(d, "move", "dbserver", "dbserver", "--project", "client-website",
        "--target-project", "client2-website")
    assert lxc(d, "list", "--project", "client-website", "--format", "csv").stdout == ""
    moved = lxc(d, "config", "show", "dbserver", "--project", "client2-website").stdout
    assert "user.role: db" in moved
    snaps = lxc(d, "info", "dbserver", "--project", "client2-website").stdout
    assert "s0" in snaps
    everything = lxc(d, "list", "--all-projects", "--format", "csv", "-c", "n").stdout
    assert sorted(everything.split()) == ["dbserver", "dbserver"]
    assert d.read("instances", "dbserver", "state") == "RUNNING"
    state = lxc(d, "project", "info", "client2-website").stdout
    assert "INSTANCES" in state.upper()
    lxc(d, "delete", "-f", "dbserver", "--project", "client2-website")
    lxc(d, "project", "delete", "client-website")
    lxc(d, "project", "delete", "client2-website")
    assert "client-website" not in lxc(d, "project", "list", "--format", "csv").stdout


def test_events_by_project(projects):
    """``lxc monitor`` sees the default project's events, ``--project p1`` p1's,
    ``--all-projects`` both, each carrying its project; the mount's ``events`` has every
    project's and ``projects/p1/events`` p1's."""
    import subprocess

    from test_rest_instances_integration import Monitor

    d, made = projects
    os.mkdir(d.path("projects", "p1"))
    made.append("p1")
    monitors = {"default": Monitor(d), "p1": Monitor(d, "--project", "p1"),
                "all": Monitor(d, "--all-projects")}
    readers = {where: subprocess.Popen(["cat", str(d.path(*where))], stdout=subprocess.PIPE,
                                       text=True)
               for where in (("events",), ("projects", "p1", "events"))}
    time.sleep(0.5)
    try:
        os.mkdir(d.path("projects", "p1", "instances", "c1"))
        os.mkdir(d.path("instances", "c2"))
        in_p1 = ("instance-created", "/1.0/instances/c1?project=p1")
        in_default = ("instance-created", "/1.0/instances/c2")
        monitors["all"].wait_for(*in_default)
        monitors["all"].wait_for(*in_p1)
        monitors["p1"].wait_for(*in_p1)
        monitors["default"].wait_for(*in_default)
        time.sleep(0.5)
        assert in_p1 not in monitors["default"].actions()
        assert in_default not in monitors["p1"].actions()
        projects_seen = {e["metadata"]["source"]: e["project"]
                         for e in monitors["all"].events}
        assert projects_seen[in_p1[1]] == "p1" and projects_seen[in_default[1]] == "default"
    finally:
        for monitor in monitors.values():
            monitor.close()
        for reader in readers.values():
            reader.terminate()
    seen = {}
    for where, reader in readers.items():
        out, _ = reader.communicate(timeout=10)
        seen[where] = [(e["metadata"].get("action"), e["metadata"].get("source"),
                        e.get("project")) for e in map(json.loads, out.splitlines())]
    assert ("instance-created", in_p1[1], "p1") in seen[("events",)]
    assert ("instance-created", in_default[1], "default") in seen[("events",)]
    assert ("instance-created", in_p1[1], "p1") in seen[("projects", "p1", "events")]
    assert not [e for e in seen[("projects", "p1", "events")] if e[2] == "default"]


def test_events_of_an_unknown_project(projects):
    """As LXD: 404 for an unknown project (the client's websocket handshake fails), 400
    for a project beside all-projects."""
    from test_rest_instances_integration import api, lxc

    d, _made = projects
    result = lxc(d, "monitor", "--project", "nope", check=False, timeout=20)
    assert result.returncode != 0, result.stdout
    status, doc, _ = api(d, "GET", "/1.0/events?project=nope")
    assert (status, doc["error"]) == (404, "Project not found")
    status, _doc, _ = api(d, "GET", "/1.0/events?project=default&all-projects=true")
    assert status == 400


def test_volume_listing_by_project(projects):
    """``c1`` of ``p1`` shows as ``c1`` of project p1 in ``lxc storage volume list``, not
    as its host-level name ``p1_c1``; ``--all-projects`` shows both ``c1``; the REST
    listing's URLs carry ``?project=``."""
    from test_rest_instances_integration import api, lxc

    d, made = projects
    lxc(d, "project", "create", "p1", "-c", "features.profiles=false",
        "-c", "features.images=false")
    made.append("p1")
    lxc(d, "init", "busybox", "c1", "--project", "p1")
    lxc(d, "init", "busybox", "c1")

    def containers(*flags: str) -> list[str]:
        out = lxc(d, "storage", "volume", "list", "default", "-f", "csv", *flags).stdout
        return sorted(line for line in out.splitlines() if ",container," in f",{line}")

    in_p1 = containers("--project", "p1", "-c", "tn")
    assert in_p1 == ["container,c1"], in_p1
    assert containers("-c", "tn") == ["container,c1"]
    every = containers("--all-projects", "-c", "etn")
    assert every == ["default,container,c1", "p1,container,c1"], every
    status, doc, _ = api(d, "GET", "/1.0/storage-pools/default/volumes/container?project=p1")
    assert status == 200
    assert doc["metadata"] == ["/1.0/storage-pools/default/volumes/container/c1?project=p1"]
    status, doc, _ = api(d, "GET",
                         "/1.0/storage-pools/default/volumes/container/c1?project=p1")
    assert status == 200 and doc["metadata"]["project"] == "p1"
    assert doc["metadata"]["used_by"] == ["/1.0/instances/c1?project=p1"]
    status, _doc, _ = api(d, "GET", "/1.0/storage-pools/default/volumes/container/p1_c1")
    assert status == 404
    # the lxfs command likewise
    listed = d.cli("storage", "volume", "list", "default", "--project", "p1", "-f",
                   "csv").stdout
    assert [line for line in listed.splitlines() if ",container," in line] == \
        ["default,container,c1,1"], listed
    listed = d.cli("storage", "volume", "list", "default", "--all-projects", "-f",
                   "csv").stdout
    assert sorted(line for line in listed.splitlines() if ",container," in line) == \
        ["default,default,container,c1,1", "p1,default,container,c1,1"], listed
    lxc(d, "delete", "c1", "--project", "p1")
    lxc(d, "delete", "c1")


def test_features_networks_refused(projects):
    """A project of LXD 5.0 owns only OVN networks, which lxfs has not: features.networks
    stays false, refused clearly through every front end."""
    from test_rest_instances_integration import lxc

    d, made = projects
    result = lxc(d, "project", "create", "p1", "-c", "features.networks=true", check=False)
    assert result.returncode != 0 and "OVN" in result.stderr, result.stderr
    os.mkdir(d.path("projects", "p2"))
    made.append("p2")
    with pytest.raises(OSError) as refused:
        (d.path("projects", "p2", "config", "features.networks")).write_text("true\n")
    assert refused.value.errno == errno.EOPNOTSUPP
    assert "OVN" in d.read("error")


# --- the lxfs command ------------------------------------------------------------------------

def test_seed_003_with_lxfs(projects, tmp_path):
    d, made = projects
    d.env["LXFS_CONF"] = str(tmp_path / "conf")  # the current project is the user's

    def cli(*args: str, check: bool = True):
        return d.cli(*args, check=check)

    for name in ("client-website", "client2-website"):
        cli("project", "create", name, "-c", "features.images=false",
            "-c", "features.profiles=false")
        made.append(name)
    assert d.read("projects", "client-website", "config", "features.profiles") == "false"
    assert "path: /" in cli("profile", "show", "default", "--project", "default").stdout
    assert "path: /" in cli("profile", "show", "default", "--project",
                            "client-website").stdout
    cli("launch", "busybox", "dbserver", "--project", "client-website")
    cli("launch", "busybox", "dbserver")
    listed = cli("list", "--project", "client-website", "--format", "csv", "-c", "ns").stdout
    assert listed.split() == ["dbserver,RUNNING"]
    out = cli("exec", "--project", "client-website", "dbserver", "--", "hostname").stdout
    assert out.strip() == "dbserver"
    cli("snapshot", "dbserver", "s0", "--project", "client-website")
    cli("config", "set", "dbserver", "user.role", "db", "--project", "client-website")
    cli("stop", "dbserver", "--force", "--project", "client-website")
    cli("move", "dbserver", "dbserver", "--project", "client-website",
        "--target-project", "client2-website")
    assert cli("list", "--project", "client-website", "--format", "csv").stdout == ""
    assert cli("config", "get", "dbserver", "user.role", "--project",
               "client2-website").stdout.strip() == "db"
    assert os.listdir(d.path("projects", "client2-website", "instances", "dbserver",
                             "snapshots")) == ["s0"]
    cli("copy", "dbserver", "dbcopy", "--project", "client2-website",
        "--target-project", "client-website")
    assert cli("config", "get", "dbcopy", "user.role", "--project",
               "client-website").stdout.strip() == "db"
    cli("delete", "dbcopy", "--project", "client-website")
    rows = cli("list", "--all-projects", "--format", "csv", "-c", "ns").stdout.split()
    assert rows == ["client2-website,dbserver,STOPPED", "default,dbserver,RUNNING"]
    # the current project, kept with the remotes
    cli("project", "switch", "client2-website")
    assert "client2-website (current)" in cli("project", "list").stdout
    assert cli("list", "--format", "csv", "-c", "n").stdout.split() == ["dbserver"]
    cli("start", "dbserver")
    assert d.read("projects", "client2-website", "instances", "dbserver", "state") == \
        "RUNNING"
    cli("project", "switch", "default")
    # limits, get/set/unset, info
    cli("project", "set", "client2-website", "limits.instances", "1")
    refused = cli("launch", "busybox", "web", "--project", "client2-website", check=False)
    assert refused.returncode != 0 and "limits.instances=1" in refused.stderr
    assert cli("project", "get", "client2-website", "limits.instances").stdout.strip() == "1"
    info = cli("project", "info", "client2-website", "--format", "csv").stdout
    assert "INSTANCES,1,1" in info
    cli("project", "unset", "client2-website", "limits.instances")
    busy = cli("project", "delete", "client2-website", check=False)
    assert busy.returncode != 0
    cli("delete", "-f", "dbserver", "--project", "client2-website")
    cli("project", "rename", "client2-website", "client3-website")
    made.append("client3-website")
    cli("project", "delete", "client-website", "client3-website")
    assert cli("project", "list", "--format", "csv").stdout.split(",")[0] == "default (current)"


def test_project_images(projects, busybox_image):
    """features.images=true: an image imported in p1 is invisible in default, and p1's
    instances launch from it."""
    d, made = projects
    os.mkdir(d.path("projects", "p1"))
    made.append("p1")
    (d.path("projects", "p1", "config") / "features.profiles").write_text("false\n")
    shared = [n for n in os.listdir(d.path("images")) if len(n) == 64]
    assert len(shared) == 1
    os.rmdir(d.path("images", shared[0]))  # only p1 will hold it
    d.cli("image", "import", str(busybox_image), "--alias", "bb", "--project", "p1")
    assert [n for n in os.listdir(d.path("images")) if len(n) == 64] == []
    assert os.listdir(d.path("projects", "p1", "images")) == shared
    d.cli("launch", shared[0], "c1", "--project", "p1")
    assert d.read("projects", "p1", "instances", "c1", "state") == "RUNNING"
    from test_rest_instances_integration import lxc

    assert lxc(d, "image", "list", "--format", "csv").stdout == ""
    assert shared[0][:12] in lxc(d, "image", "list", "--project", "p1", "--format",
                                 "csv").stdout


def test_move_between_projects_on_btrfs_copies_nothing(loop_guard, daemon_with_busybox):  # noqa: F811
    """lxfs move --target-project renames the subvolumes: the same subvolume (its id) with
    its snapshot, under the new host-level name."""
    import btrfsutil

    d = daemon_with_busybox
    loop_guard.append(d.base)
    try:
        root = make_btrfs_pool(d)
        for name in ("p1", "p2"):
            d.cli("project", "create", name, "-c", "features.profiles=false")
        d.cli("launch", "busybox", "c1", "-s", "bt", "--project", "p1")
        d.cli("snapshot", "c1", "s0", "--project", "p1")
        d.cli("stop", "-f", "c1", "--project", "p1")
        before = btrfsutil.subvolume_id(str(root / "containers" / "p1_c1"))
        snap = btrfsutil.subvolume_id(str(root / "containers-snapshots" / "p1_c1" / "s0"))
        assert d.read("storage-pools", "bt", "used_by") == "projects/p1/instances/c1"
        d.cli("move", "c1", "c1", "--project", "p1", "--target-project", "p2")
        assert btrfsutil.subvolume_id(str(root / "containers" / "p2_c1")) == before
        assert btrfsutil.subvolume_id(
            str(root / "containers-snapshots" / "p2_c1" / "s0")) == snap
        assert not (root / "containers" / "p1_c1").exists()
        d.cli("start", "c1", "--project", "p2")
        assert d.read("projects", "p2", "instances", "c1", "state") == "RUNNING"
    finally:
        remove_project_instances(d, "p1")
        remove_project_instances(d, "p2")


def test_same_name_two_projects_distinct_addresses(netd):  # noqa: F811
    """Acceptance 2 on a managed network: c1 of default and c1 of p1 both running, with
    their own cgroups, volumes and addresses; deleting one leaves the other."""
    d, net = netd
    name, iface = net.create()
    nic_in_profile(d, name)
    d.cli("project", "create", "p1", "-c", "features.profiles=false")
    try:
        d.cli("launch", "busybox", "c1")
        d.cli("launch", "busybox", "c1", "--project", "p1")
        ip_default = wait_ipv4(d, "c1")[0].split()[0]
        p1 = d.path("projects", "p1", "instances", "c1")
        deadline = time.monotonic() + 5
        while not (p1 / "ipv4").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        ip_p1 = (p1 / "ipv4").read_text().split()[0]
        assert ip_default != ip_p1
        assert ipaddress.IPv4Address(ip_p1) in iface.network
        result = d.cli("exec", "c1", "--", "ping", "-c", "1", "-W", "1", ip_p1, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        volumes = os.listdir(d.path("storage-pools", "default", "volumes", "container"))
        assert sorted(volumes) == ["c1", "p1_c1"]
        used_by = d.read("networks", name, "used_by").split()
        assert "instances/c1" in used_by and "projects/p1/instances/c1" in used_by
        d.cli("delete", "-f", "c1", "--project", "p1")
        assert d.read("instances", "c1", "state") == "RUNNING"
        assert os.listdir(d.path("storage-pools", "default", "volumes", "container")) == ["c1"]
    finally:
        remove_project_instances(d, "p1")


def test_project_images_over_rest(projects, busybox_image):
    """lxc image import --project p1 (features.images=true): p1 alone holds it; an image
    of the default project imported again into p1 is shared, one set of files."""
    from test_rest_instances_integration import lxc

    d, made = projects
    lxc(d, "project", "create", "p1", "-c", "features.profiles=false")
    made.append("p1")
    [fp] = [n for n in os.listdir(d.path("images")) if len(n) == 64]
    lxc(d, "image", "import", str(busybox_image), "--project", "p1")
    assert os.listdir(d.path("projects", "p1", "images")) == [fp]
    assert fp in os.listdir(d.path("images"))
    lxc(d, "image", "delete", fp, "--project", "p1")
    assert os.listdir(d.path("projects", "p1", "images")) == []
    assert fp in os.listdir(d.path("images"))  # still the default project's
    lxc(d, "image", "delete", fp)
    lxc(d, "image", "import", str(busybox_image), "--project", "p1")
    assert os.listdir(d.path("projects", "p1", "images")) == [fp]
    assert fp not in os.listdir(d.path("images"))
    lxc(d, "launch", fp, "c1", "--project", "p1")
    lxc(d, "delete", "-f", "c1", "--project", "p1")
    lxc(d, "image", "delete", fp, "--project", "p1")
    lxc(d, "project", "delete", "p1")


def test_project_on_a_remote(two_hosts):  # noqa: F811
    """lxfs COMMAND host2:... --project P sends ?project=P."""
    from test_remotes_integration import PASSWORD

    user1, user2, _addr1, addr2 = two_hosts
    user1.run("remote", "add", "host2", addr2, "--accept-certificate", "--password", PASSWORD)
    user1.run("image", "copy", "local:busybox", "host2:", "--alias", "busybox")
    user2.run("project", "create", "p1", "-c", "features.profiles=false",
              "-c", "features.images=false")
    try:
        user1.run("launch", "host2:busybox", "host2:c1", "--project", "p1")
        assert user2.daemon.read("projects/p1/instances/c1/state") == "RUNNING"
        assert not user2.daemon.path("instances", "c1").exists()
        rows = json.loads(user1.run("list", "host2:", "--project", "p1", "-f", "json").stdout)
        assert [(r["name"], r["status"]) for r in rows] == [("c1", "Running")]
        assert json.loads(user1.run("list", "host2:", "-f", "json").stdout) == []
        user1.run("delete", "-f", "host2:c1", "--project", "p1")
        assert not user2.daemon.path("projects", "p1", "instances", "c1").exists()
        # lxfs project ... against the remote
        listed = user1.run("project", "list", "host2:", "-f", "csv").stdout
        assert [line.split(",")[0] for line in listed.splitlines()] == \
            ["default (current)", "p1"], listed
        assert "features.profiles: \"false\"" in \
            user1.run("project", "show", "host2:p1").stdout.replace("'", '"')
        user1.run("project", "create", "host2:p2", "-c", "limits.instances=3")
        assert user2.daemon.read("projects/p2/config/limits.instances") == "3"
        user1.run("project", "set", "host2:p2", "limits.instances=4")
        assert user1.run("project", "get", "host2:p2", "limits.instances").stdout == "4\n"
        info = json.loads(user1.run("project", "info", "host2:p2", "-f", "json").stdout)
        assert info["instances"] == {"limit": 4, "usage": 0}
        user1.run("project", "delete", "host2:p2")
        assert not user2.daemon.path("projects", "p2").exists()
        assert "p1" not in user1.run("project", "list", "-f", "csv").stdout
    finally:
        remove_project_instances(user2.daemon, "p1")


def test_restricted_project_and_memory_budget(projects):
    """Acceptance 4 through the lxfs command: restricted=true refuses a privileged container
    and a disk outside restricted.devices.disk.paths; limits.memory refuses what exceeds the
    remaining budget."""
    d, made = projects
    d.cli("project", "create", "r", "-c", "features.profiles=false", "-c", "restricted=true",
          "-c", "restricted.devices.disk=allow", "-c", "restricted.devices.disk.paths=/srv")
    made.append("r")
    refused = d.cli("launch", "busybox", "x", "-c", "security.privileged=true",
                    "--project", "r", check=False)
    assert refused.returncode != 0 and "privileged" in refused.stderr
    d.cli("create", "busybox", "x", "--project", "r")
    d.cli("config", "device", "add", "x", "d", "disk", "source=/etc", "path=/mnt",
          "--project", "r")
    refused = d.cli("start", "x", "--project", "r", check=False)
    assert refused.returncode != 0 and "restricted.devices.disk.paths" in refused.stderr
    d.cli("config", "device", "remove", "x", "d", "--project", "r")
    d.cli("start", "x", "--project", "r")
    # a memory budget
    d.cli("project", "create", "m", "-c", "features.profiles=false",
          "-c", "limits.memory=256MiB")
    made.append("m")
    refused = d.cli("launch", "busybox", "a", "--project", "m", check=False)
    assert refused.returncode != 0 and "limits.memory" in refused.stderr
    d.cli("launch", "busybox", "a", "-c", "limits.memory=200MiB", "--project", "m")
    refused = d.cli("launch", "busybox", "b", "-c", "limits.memory=100MiB", "--project", "m",
                    check=False)
    assert refused.returncode != 0 and "limits.memory=256MiB" in refused.stderr
    info = d.cli("project", "info", "m", "--format", "csv").stdout
    assert f"MEMORY,{256 * 2**20},{200 * 2**20}" in info
    # the project as YAML, edited from stdin
    shown = d.cli("project", "show", "m").stdout
    assert "limits.memory: 256MiB" in shown and "name: m" in shown
    d.cli("project", "edit", "m", input=shown.replace("256MiB", "512MiB")
          .replace("description: ''", "description: budget"))
    assert d.read("projects", "m", "config", "limits.memory") == "512MiB"
    assert d.read("projects", "m", "description") == "budget"
    # a feature is changed only while the project is empty
    refused = d.cli("project", "edit", "m", input=shown.replace(
        "features.images: 'true'", "features.images: 'false'"), check=False)
    assert refused.returncode != 0 and "empty" in refused.stderr
