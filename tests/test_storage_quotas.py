"""Root disk quotas through the core: the capabilities a driver declares (``quotas``,
``live_resize``, ``optimized_transfer``) and the one quota method the core calls, at creation,
copy, move, before every start and on a live change; ``override_device``. Fake drivers
(the dir driver recording quotas) with the fake runtime of tests/test_server.py."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import test_server as fake
from lxfs_plugins import storage_dir
from lxfs_plugins.devices import DISK
from lxfs_plugins.storage_dir import DirDriver, copy_tree

from lxfs import hookimpl
from lxfs.errors import AlreadyExists, InvalidArgument, NotFound
from lxfs.plugins import plugin_manager
from lxfs.server import Server
from lxfs.storage import VolumeType, check_quota_above_usage

image = fake.image
_end_fake_inits = fake._end_fake_inits
MiB = 2**20


class QuotaDriver(DirDriver):
    """The dir driver with quotas recorded (and checked against ``used``), set live."""

    name = "quota"
    default_pool = False
    quotas = True
    live_resize = True
    #: every set_volume_quota: (pool, volume, size)
    calls: ClassVar[list[tuple[str, str, int | None]]] = []
    #: bytes each volume "uses", for the too-small check
    used: ClassVar[dict[str, int]] = {}

    def set_volume_quota(self, vtype: VolumeType, name: str, size: int | None) -> None:
        check_quota_above_usage(size, self.used.get(name, 0), name)
        self.calls.append((self.pool.name, name, size))


class StaticQuotaDriver(QuotaDriver):
    """Quotas that cannot change under a running instance."""

    name = "static"
    live_resize = False


class FastDriver(QuotaDriver):
    """Declares optimized transfer between its pools (recorded)."""

    name = "fast"
    optimized_transfer = True
    transfers: ClassVar[list[tuple[str, str, str, list[str]]]] = []

    def transfer_volume_to(self, other, vtype, name, new_name, snapshots):  # type: ignore[no-untyped-def]
        self.transfers.append((self.pool.name, other.pool.name, name, list(snapshots)))
        for snap in snapshots:
            target = other.snapshot_path(vtype, new_name, snap)
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_tree(self.snapshot_path(vtype, name, snap), target)
        copy_tree(self.volume_path(vtype, name), other.volume_path(vtype, new_name))


class FakeDrivers:
    """The fake drivers, and the ``disk`` device type of the devices plugin (whose LXC
    hooks need the LXC runtime)."""

    @hookimpl
    def lxfs_storage_drivers(self):  # type: ignore[no-untyped-def]
        return [QuotaDriver, StaticQuotaDriver, FastDriver]

    @hookimpl
    def lxfs_device_types(self):  # type: ignore[no-untyped-def]
        return [DISK]


@pytest.fixture(autouse=True)
def _reset() -> None:
    QuotaDriver.calls.clear()
    QuotaDriver.used.clear()
    FastDriver.transfers.clear()


async def server(tmp_path: Path, nursery) -> Server:  # type: ignore[no-untyped-def]
    fake.FakeRuntime.states = {}
    fake.FakeRuntime.fail_start = False
    pm = plugin_manager(load_entry_points=False,
                        extra=(storage_dir, fake.FakeRuntimePlugin(), FakeDrivers()))
    srv = Server(tmp_path / "data", tmp_path / "data" / "mnt", pm)
    await srv.open(nursery)
    return srv


async def profile_on(srv: Server, pool: str, driver: str, **root: str) -> str:
    """A pool of ``driver`` and a profile ``on-POOL`` whose root disk is there."""
    if pool not in srv.pools:
        await srv.create_pool(pool, driver)
    name = f"on-{pool}"
    profile = await srv.create_profile(name)
    await srv.add_device(profile, "root")
    for key, value in {"type": "disk", "path": "/", "pool": pool, **root}.items():
        await srv.set_device_key(profile, "root", key, value)
    return name


async def launch(srv: Server, image: Path, name: str, profile: str) -> None:
    if not srv.aliases:
        await fake.import_image(srv, image)
    await srv.create_instance(name, profiles=[profile])
    await srv.set_source(name, "img")


async def test_quota_at_create_start_and_live_change(tmp_path, image, nursery):
    srv = await server(tmp_path, nursery)
    profile = await profile_on(srv, "q", "quota", size="64MiB")
    await launch(srv, image, "c1", profile)
    assert QuotaDriver.calls == [("q", "c1", 64 * MiB)]  # at creation
    await srv.change_state("c1", "start")
    assert QuotaDriver.calls[-1] == ("q", "c1", 64 * MiB)  # before every start
    inst = srv.instances["c1"]

    # a size below what the volume uses is refused: nothing changes
    QuotaDriver.used["c1"] = 10 * MiB
    calls = len(QuotaDriver.calls)
    with pytest.raises(InvalidArgument, match="smaller than what volume c1 already uses"):
        await srv.guarded("c1", srv.override_device("c1", "root size=1MiB"))
    assert "root disk of c1: size 1MiB is smaller" in srv.errors["c1"]
    assert "root" not in inst.devices and len(QuotaDriver.calls) == calls

    # override: the instance's own copy of the profile's root, resized live
    await srv.guarded("c1", srv.override_device("c1", "root size=32MiB"))
    assert inst.devices["root"] == {"type": "disk", "path": "/", "pool": "q", "size": "32MiB"}
    assert QuotaDriver.calls[-1] == ("q", "c1", 32 * MiB)
    assert srv.errors["c1"] == ""  # applied: no "next start" notice
    with pytest.raises(AlreadyExists):
        await srv.override_device("c1", "root size=48MiB")
    with pytest.raises(NotFound):
        await srv.override_device("c1", "eth9 x=y")

    # a key of the instance's own device, then its removal (no limit)
    await srv.guarded("c1", srv.set_device_key(inst, "root", "size", "48MiB"))
    assert QuotaDriver.calls[-1] == ("q", "c1", 48 * MiB) and srv.errors["c1"] == ""
    with pytest.raises(InvalidArgument, match="invalid size"):
        await srv.set_device_key(inst, "root", "size", "lots")
    await srv.set_device_key(inst, "root", "size", "")
    assert QuotaDriver.calls[-1] == ("q", "c1", None)
    calls = len(QuotaDriver.calls)
    await srv.set_device_key(inst, "root", "user.note", "x")  # no size change: no call
    assert len(QuotaDriver.calls) == calls

    # back to the profile's root (64MiB) by removing the instance's own
    await srv.remove_device(inst, "root")
    assert QuotaDriver.calls[-1] == ("q", "c1", 64 * MiB)


async def test_profile_change_resizes_every_user_or_none(tmp_path, image, nursery):
    srv = await server(tmp_path, nursery)
    profile = await profile_on(srv, "q", "quota", size="64MiB")
    await launch(srv, image, "c1", profile)
    await launch(srv, image, "c2", profile)
    await srv.change_state("c1", "start")
    QuotaDriver.calls.clear()
    await srv.guarded("", srv.set_device_key(srv.profiles[profile], "root", "size", "128MiB"))
    assert sorted(QuotaDriver.calls) == [("q", "c1", 128 * MiB), ("q", "c2", 128 * MiB)]
    # c2 uses more than the new size: refused, and c1's new quota is undone
    QuotaDriver.used["c2"] = 100 * MiB
    QuotaDriver.calls.clear()
    with pytest.raises(InvalidArgument, match="root disk of c2"):
        await srv.set_device_key(srv.profiles[profile], "root", "size", "80MiB")
    assert srv.profiles[profile].devices["root"]["size"] == "128MiB"
    assert QuotaDriver.calls == [("q", "c1", 80 * MiB), ("q", "c1", 128 * MiB)]
    # switching profiles changes the root disk too
    second = await srv.create_profile("big")
    await srv.add_device(second, "root")
    for key, value in {"type": "disk", "path": "/", "pool": "q", "size": "256MiB"}.items():
        await srv.set_device_key(second, "root", key, value)
    await srv.set_instance_field("c1", "profiles", "big\n")
    assert QuotaDriver.calls[-1] == ("q", "c1", 256 * MiB)


async def test_without_live_resize_the_size_waits_for_the_next_start(tmp_path, image, nursery):
    srv = await server(tmp_path, nursery)
    profile = await profile_on(srv, "s", "static")
    await launch(srv, image, "c1", profile)
    assert QuotaDriver.calls == [("s", "c1", None)]
    await srv.change_state("c1", "start")
    QuotaDriver.calls.clear()
    await srv.guarded("c1", srv.override_device("c1", "root size=32MiB"))
    assert QuotaDriver.calls == []
    assert srv.errors["c1"] == "saved: the new root disk size of c1 applies at next start"
    await srv.change_state("c1", "restart")
    assert QuotaDriver.calls == [("s", "c1", 32 * MiB)]
    # a stopped instance's volume is resized at once (and a too-small size refused at once)
    await srv.change_state("c1", "stop")
    await srv.set_device_key(srv.instances["c1"], "root", "size", "40MiB")
    assert QuotaDriver.calls[-1] == ("s", "c1", 40 * MiB)


async def test_a_driver_without_quotas_says_so(tmp_path, image, nursery):
    srv = await server(tmp_path, nursery)
    await fake.import_image(srv, image)
    await srv.create_instance("d1")  # the default profile: the dir pool
    await srv.set_source("d1", "img")
    await srv.change_state("d1", "start")
    await srv.guarded("d1", srv.override_device("d1", "root size=20MiB"))
    assert srv.instances["d1"].devices["root"]["size"] == "20MiB"
    assert srv.errors["d1"] == ("the root disk size 20MiB of d1 is kept but not enforced: "
                                "storage pool default (dir) has no quotas")
    await srv.change_state("d1", "stop")
    await srv.guarded("d1", srv.change_state("d1", "start"))  # no nagging at every start
    assert srv.errors["d1"] == ""
    # and at creation
    await srv.create_instance("d2")
    await srv.add_device(srv.instances["d2"], "root")
    for key, value in {"type": "disk", "path": "/", "pool": "default", "size": "1GiB"}.items():
        await srv.set_device_key(srv.instances["d2"], "root", key, value)
    await srv.guarded("d2", srv.set_source("d2", "img"))
    assert "size 1GiB of d2 is kept but not enforced" in srv.errors["d2"]


async def test_copy_and_move_set_the_quota_of_the_new_volume(tmp_path, image, nursery):
    srv = await server(tmp_path, nursery)
    profile = await profile_on(srv, "q", "quota", size="64MiB")
    await launch(srv, image, "c1", profile)
    await srv.create_instance("c2", profiles=[profile])
    await srv.set_source("c2", "instances/c1")
    assert QuotaDriver.calls[-1] == ("q", "c2", 64 * MiB)
    # a copy that would not fit its size is undone
    QuotaDriver.used["c3"] = 100 * MiB
    await srv.create_instance("c3", profiles=[profile])
    with pytest.raises(InvalidArgument, match="root disk of c3"):
        await srv.set_source("c3", "instances/c1")
    assert srv.instances["c3"].storage_state == ""
    assert not srv.pools["q"].volume_exists("container", "c3")
    # moving to another pool with quotas sets it there
    await srv.create_pool("q2", "quota")
    await srv.move_to_pool("c1", "q2")
    assert QuotaDriver.calls[-1] == ("q2", "c1", 64 * MiB)


async def test_optimized_transfer_between_pools_of_one_driver(tmp_path, image, nursery):
    srv = await server(tmp_path, nursery)
    profile = await profile_on(srv, "f1", "fast")
    await launch(srv, image, "c1", profile)
    await srv.create_snapshot("c1", "s0")
    await srv.create_pool("f2", "fast")
    await srv.move_to_pool("c1", "f2")
    assert FastDriver.transfers == [("f1", "f2", "c1", ["s0"])]
    assert (srv.rootfs(srv.instances["c1"]) / "etc" / "hostname").read_text() == "c1\n"
    await srv.move_to_pool("c1", "default")  # another driver: the core copies the files
    assert len(FastDriver.transfers) == 1
    assert srv.pools["default"].volume_exists("container", "c1")


def test_human_size() -> None:
    from lxfs.storage import human_size

    assert [human_size(n) for n in (512, 20 * MiB, 1536 * MiB)] == ["512B", "20MiB", "1.5GiB"]
