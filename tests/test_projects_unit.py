"""Projects in the core, with test_server's fake runtime and the real dir driver: names
mapped to host-level keys, CRUD, features, limits and restrictions per project, moves."""

from __future__ import annotations

import pytest
import trio
from lxfs_plugins import devices, runtime_lxc, security, storage_dir
from test_server import (
    FakeRuntimePlugin,
    image,  # noqa: F401 - a fixture
    import_image,
    make_server,
)

from lxfs import hookimpl
from lxfs.errors import AlreadyExists, Busy, InvalidArgument, NotFound
from lxfs.plugins import plugin_manager
from lxfs.projects import (
    Forbidden,
    check_limits,
    instance_key,
    split_instance_key,
    split_profile_key,
    usage,
)


def test_keys_split_back():
    assert instance_key("default", "c1") == "c1"
    assert instance_key("p1", "c1") == "p1_c1"
    assert instance_key("my_proj", "c1") == "my_proj_c1"
    for key in ("c1", "p1_c1", "my_proj_c1"):
        project, name = split_instance_key(key)
        assert instance_key(project, name) == key
    assert split_profile_key("p1/default") == ("p1", "default")
    assert split_profile_key("web") == ("default", "web")


def test_limits_count_and_refuse():
    one = ("a", "container", {"limits.memory": "128MiB"}, {})
    two = ("b", "container", {"limits.memory": "192MiB"}, {})
    check_limits("p", {"limits.memory": "256MiB"}, [one])
    with pytest.raises(Forbidden, match=r"limits.memory=256MiB .*320MiB"):
        check_limits("p", {"limits.memory": "256MiB"}, [one, two])
    with pytest.raises(Forbidden, match="has no 'limits.memory'"):
        check_limits("p", {"limits.memory": "256MiB"}, [("c", "container", {}, {})])
    with pytest.raises(Forbidden, match="limits.instances=1"):
        check_limits("p", {"limits.instances": "1"}, [one, two])
    disk = ("d", "container", {}, {"root": {"type": "disk", "path": "/", "size": "1GiB"}})
    assert usage({"limits.disk": "2GiB"}, [disk])["disk"] == (2**30, 2 * 2**30)
    assert usage({}, [one, two])["instances"] == (2, -1)


async def test_two_projects_same_name(tmp_path, image, nursery):  # noqa: F811
    srv = make_server(tmp_path / "data")
    await srv.open(nursery)
    await import_image(srv, image)
    await srv.create_project("p1", config={"features.profiles": "false",
                                           "features.images": "false"})
    await srv.create_instance("c1")
    await srv.create_instance("c1", project="p1")
    with pytest.raises(AlreadyExists, match="in project 'p1'"):
        await srv.create_instance("c1", project="p1")
    assert sorted(srv.instances) == ["c1", "p1_c1"]
    assert srv.instances["p1_c1"].local_name == "c1"
    assert srv.instances["p1_c1"].profiles == ["default"]  # the default project's
    for key in ("c1", "p1_c1"):
        await srv.set_source(key, "img")
        await srv.change_state(key, "start")
    # the template saw the name within the project
    assert (srv.rootfs(srv.instances["p1_c1"]) / "etc" / "hostname").read_text() == "c1\n"
    assert srv.pool_of(srv.instances["p1_c1"]).volume_exists("container", "p1_c1")
    assert srv.instance_url("p1_c1") == "/1.0/instances/c1?project=p1"
    with pytest.raises(Busy, match="not empty"):
        await srv.delete_project("p1")
    await srv.change_state("p1_c1", "kill")
    await srv.delete_instance("p1_c1")
    assert await srv.state("c1") == "RUNNING"
    await srv.delete_project("p1")
    assert "p1" not in srv.projects


async def test_project_crud_persists(tmp_path, nursery):
    srv = make_server(tmp_path / "data")
    await srv.open(nursery)
    await srv.create_project("p1", "first")
    assert srv.projects["p1"].config["features.profiles"] == "true"
    assert "p1/default" in srv.profiles  # its own default profile
    with pytest.raises(AlreadyExists):
        await srv.create_project("p1")
    with pytest.raises(InvalidArgument):
        await srv.create_project("bad/name")
    with pytest.raises(InvalidArgument):
        await srv.create_project("p2", config={"limits.memory": "lots"})
    await srv.rename_project("p1", "p2")
    assert "p2/default" in srv.profiles and "p1/default" not in srv.profiles
    await srv.set_project_key("p2", "limits.instances", "3")
    with pytest.raises(Busy, match="default project cannot be deleted"):
        await srv.delete_project("default")
    with pytest.raises(InvalidArgument, match="features of the default project"):
        await srv.set_project_key("default", "features.images", "false")
    srv.db.close()
    again = make_server(tmp_path / "data")
    again.load()
    assert again.projects["p2"].config["limits.instances"] == "3"
    assert again.projects["p2"].description == "first"
    assert "p2/default" in again.profiles
    again.db.close()


async def test_features_profiles(tmp_path, image, nursery):  # noqa: F811
    srv = make_server(tmp_path / "data")
    await srv.open(nursery)
    await import_image(srv, image)
    await srv.create_project("shared", config={"features.profiles": "false"})
    await srv.create_project("own")
    assert set(srv.project_profiles("shared")) == {"default"}
    assert srv.project_profiles("shared")["default"] is srv.profiles["default"]
    with pytest.raises(InvalidArgument, match="features.profiles=false"):
        await srv.create_profile("shared/web")
    await srv.create_instance("c1", project="shared")
    await srv.set_profile_key("default", "user.note", "hello")
    assert srv.instances["shared_c1"].expanded_config["user.note"] == "hello"
    # own profiles: an instance there needs a root disk in its own default profile
    await srv.create_profile("own/web")
    with pytest.raises(NotFound, match="in project 'own'"):
        await srv.create_instance("c2", project="own", profiles=["nosuch"])
    inst = await srv.create_instance("c1", project="own", profiles=["default", "web"])
    assert inst.profiles == ["own/default", "own/web"]
    assert "user.note" not in inst.expanded_config
    with pytest.raises(Busy, match="only be changed while it is empty"):
        await srv.set_project_key("own", "features.profiles", "false")


class LimitKeys:
    """The LXC runtime's config keys (``limits.memory``...) beside the fake runtime (with
    the security and devices plugins: ``security.privileged``, disks)."""

    @hookimpl
    def lxfs_config_keys(self):
        return [*runtime_lxc.KEYS, *security.lxfs_config_keys()]

    @hookimpl
    def lxfs_device_types(self):
        return devices.lxfs_device_types()


async def test_limits_and_restrictions(tmp_path, nursery):
    srv = make_server(tmp_path / "data")
    pm = plugin_manager(load_entry_points=False,
                        extra=(storage_dir, FakeRuntimePlugin(), LimitKeys()))
    srv = type(srv)(tmp_path / "data", tmp_path / "data" / "mnt", pm)
    await srv.open(nursery)
    await srv.create_project("p1", config={"features.profiles": "false",
                                           "limits.instances": "2"})
    await srv.create_instance("a", project="p1")
    await srv.create_instance("b", project="p1")
    with pytest.raises(Forbidden, match="limits.instances=2"):
        await srv.create_instance("c", project="p1")
    await srv.create_project("mem", config={"features.profiles": "false",
                                            "limits.memory": "256MiB"})
    with pytest.raises(Forbidden, match="has no 'limits.memory'"):
        await srv.create_instance("a", project="mem")
    await srv.create_instance("a", project="mem", config={"limits.memory": "200MiB"})
    with pytest.raises(Forbidden, match="limits.memory=256MiB"):
        await srv.create_instance("b", project="mem", config={"limits.memory": "100MiB"})
    with pytest.raises(Forbidden, match="limits.memory=256MiB"):
        await srv.set_instance_key("mem_a", "limits.memory", "300MiB")
    assert srv.project_usage("mem")["memory"] == (200 * 2**20, 256 * 2**20)
    await srv.create_project("r", config={"features.profiles": "false",
                                          "restricted": "true",
                                          "restricted.devices.disk": "allow",
                                          "restricted.devices.disk.paths": "/srv"})
    with pytest.raises(Forbidden, match="privileged"):
        await srv.create_instance("x", project="r", config={"security.privileged": "true"})
    with pytest.raises(Forbidden, match="outside restricted.devices.disk.paths"):
        await srv.create_instance("x", project="r", devices={
            "d": {"type": "disk", "source": "/etc", "path": "/mnt"}})
    await srv.create_instance("x", project="r", devices={
        "d": {"type": "disk", "source": "/srv/data", "path": "/mnt"}})
    # default's restrictions are its own: privileged is fine there
    await srv.create_instance("x", config={"security.privileged": "true"})


async def test_move_between_projects_keeps_snapshots(tmp_path, image, nursery):  # noqa: F811
    srv = make_server(tmp_path / "data")
    await srv.open(nursery)
    await import_image(srv, image)
    for name in ("p1", "p2"):
        await srv.create_project(name, config={"features.profiles": "false"})
    await srv.create_instance("c1", project="p1", config={"user.k": "v"})
    await srv.set_source("p1_c1", "img")
    await srv.create_snapshot("p1_c1", "s0")
    await srv.rename_instance("p1_c1", "c1", "p2")
    inst = srv.instances["p2_c1"]
    assert "p1_c1" not in srv.instances
    assert (inst.project, inst.local_name, inst.config["user.k"]) == ("p2", "c1", "v")
    assert list(inst.snapshots) == ["s0"]
    pool = srv.pool_of(inst)
    assert pool.volume_exists("container", "p2_c1")
    assert not pool.volume_exists("container", "p1_c1")
    # and to the default project
    await srv.rename_instance("p2_c1", "c9", "default")
    assert srv.instances["c9"].project == "default"
    # a project whose own profiles give no root disk is refused, nothing moved
    await srv.create_project("bare")
    with pytest.raises(InvalidArgument, match="root disk"):
        await srv.rename_instance("c9", "c9", "bare")
    assert srv.instances["c9"].project == "default"


async def test_copies_name_their_project(tmp_path, image, nursery):  # noqa: F811
    srv = make_server(tmp_path / "data")
    await srv.open(nursery)
    await import_image(srv, image)
    for name in ("p1", "p2"):
        await srv.create_project(name, config={"features.profiles": "false"})
    await srv.create_instance("c1", project="p1", config={"user.k": "p1"})
    await srv.set_source("p1_c1", "img")
    await srv.create_instance("c1", config={"user.k": "default"})
    await srv.set_source("c1", "img")
    # instances/NAME is of the copy's project; projects/P/instances/NAME of P
    await srv.create_instance("c2", project="p1")
    await srv.set_source("p1_c2", "instances/c1")
    assert srv.instances["p1_c2"].config["user.k"] == "p1"
    await srv.create_instance("c3", project="p2")
    await srv.set_source("p2_c3", "projects/default/instances/c1")
    assert srv.instances["p2_c3"].config["user.k"] == "default"
    assert srv.instances["p2_c3"].profiles == ["default"]


async def test_events_carry_their_project(tmp_path, nursery):
    import json

    srv = make_server(tmp_path / "data")
    await srv.open(nursery)
    await srv.create_project("p1", config={"features.profiles": "false"})
    events = srv.events.subscribe()
    await srv.create_instance("c1", project="p1")
    await srv.create_instance("c1")
    first, second = (json.loads(events.receive_nowait()) for _ in range(2))
    assert (first["project"], first["metadata"]["source"]) == \
        ("p1", "/1.0/instances/c1?project=p1")
    assert (second["project"], second["metadata"]["source"]) == \
        ("default", "/1.0/instances/c1")


async def test_event_subscribers_follow_a_project(tmp_path, nursery):
    """As LXD's listeners: a subscriber of ``p1`` gets p1's events and those of no project
    (logging), one of every project gets them all; a project's own events belong to it."""
    import json

    srv = make_server(tmp_path / "data")
    await srv.open(nursery)
    everything, of_p1, of_default = (srv.events.subscribe(), srv.events.subscribe("p1"),
                                     srv.events.subscribe("default"))
    await srv.create_project("p1", config={"features.profiles": "false"})
    await srv.create_instance("c1", project="p1")
    await srv.create_instance("c1")
    srv.events.log("info", "hello")

    def drained(channel):
        found = []
        while True:
            try:
                found.append(json.loads(channel.receive_nowait()))
            except trio.WouldBlock:
                return found

    def summary(events):
        return [(e["type"], e.get("project"), e["metadata"].get("source")) for e in events]

    assert summary(drained(of_p1)) == [
        ("lifecycle", "p1", "/1.0/projects/p1"),
        ("lifecycle", "p1", "/1.0/instances/c1?project=p1"),
        ("logging", None, None)]
    assert summary(drained(of_default)) == [
        ("lifecycle", "default", "/1.0/instances/c1"), ("logging", None, None)]
    assert len(drained(everything)) == 4


async def test_features_images(tmp_path, image, nursery):  # noqa: F811
    srv = make_server(tmp_path / "data")
    await srv.open(nursery)
    await srv.create_project("own")  # features.images=true
    await srv.create_project("shared", config={"features.images": "false"})
    upload = srv.new_upload_path()
    upload.write_bytes(image.read_bytes())
    img = await srv.import_into_project(upload, image.name, "own")
    assert img is not None and img.projects == ["own"]
    assert img.fingerprint in srv.project_images("own")
    assert img.fingerprint not in srv.project_images("default")
    assert img.fingerprint not in srv.project_images("shared")
    with pytest.raises(Busy, match="image"):
        await srv.delete_project("own")
    # the same image imported in default: one record, both projects
    upload = srv.new_upload_path()
    upload.write_bytes(image.read_bytes())
    fp = (await srv.import_into_project(upload, image.name, "default")).fingerprint
    assert fp == img.fingerprint
    assert srv.images[fp].projects == ["default", "own"]
    await srv.delete_project_image(fp, "default")
    assert srv.images[fp].projects == ["own"]
    await srv.delete_project_image(fp, "own")
    assert fp not in srv.images
    await srv.delete_project("own")
