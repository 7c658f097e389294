"""The server's logic with a fake runtime and the real dir driver on a temp directory:
validation, rollback of failed creations, locking, persistence across restarts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio
from lxfs_plugins import storage_dir

from lxfs import hookimpl
from lxfs.errors import AlreadyExists, Busy, InvalidArgument, NotFound, OperationFailed
from lxfs.plugins import plugin_manager
from lxfs.runtime import Runtime
from lxfs.server import Server


class FakeRuntime(Runtime):
    """States in a dict; a running instance's "init" is a real ``sleep`` process, so the
    server's pidfd watch works as with LXC."""

    states: dict[str, str] = {}
    inits: dict[str, subprocess.Popen[bytes]] = {}
    fail_start = False

    def state(self, instance):
        return self.states.get(instance.name, "STOPPED")

    def pid(self, instance):
        proc = self.inits.get(instance.name)
        return proc.pid if proc is not None and proc.poll() is None else 0

    def start(self, instance, rootfs):
        assert rootfs.is_dir()
        if FakeRuntime.fail_start:
            raise OperationFailed("start failed on purpose")
        self.states[instance.name] = "RUNNING"
        self.inits[instance.name] = subprocess.Popen(["sleep", "600"])

    def _end(self, name):
        proc = self.inits.pop(name, None)
        if proc is not None:
            proc.kill()
            proc.wait()

    def shutdown(self, instance, timeout):
        self.states[instance.name] = "STOPPED"
        self._end(instance.name)
        return True

    def kill(self, instance):
        self.states[instance.name] = "STOPPED"
        self._end(instance.name)

    def freeze(self, instance):
        self.states[instance.name] = "FROZEN"

    def unfreeze(self, instance):
        self.states[instance.name] = "RUNNING"

    def cleanup(self, instance):
        self.states.pop(instance.name, None)
        self._end(instance.name)

    def rename(self, instance, new_name):
        self.states[new_name] = self.states.pop(instance.name, "STOPPED")
        if instance.name in self.inits:
            self.inits[new_name] = self.inits.pop(instance.name)

    def log(self, instance):
        return ""

    def console_log(self, instance):
        return ""


@pytest.fixture(autouse=True)
def _end_fake_inits():
    yield
    for name in list(FakeRuntime.inits):
        FakeRuntime._end(FakeRuntime, name)  # type: ignore[arg-type]


class FakeRuntimePlugin:
    @hookimpl
    def lxfs_runtimes(self):
        return [FakeRuntime]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    src = tmp_path / "img"
    (src / "rootfs" / "etc").mkdir(parents=True)
    (src / "rootfs" / "etc" / "hostname").write_text("x\n")
    (src / "templates").mkdir()
    (src / "templates" / "hostname.tpl").write_text("{{ container.name }}\n")
    (src / "metadata.yaml").write_text(
        "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  os: test\n"
        "templates:\n  /etc/hostname:\n    when: [create]\n    template: hostname.tpl\n")
    out = tmp_path / "img.tar.gz"
    subprocess.run(["tar", "-czf", str(out), "-C", str(src), "metadata.yaml", "templates",
                    "rootfs"], check=True)
    return out


def make_server(data_dir: Path) -> Server:
    FakeRuntime.states = {}
    FakeRuntime.fail_start = False
    pm = plugin_manager(load_entry_points=False, extra=(storage_dir, FakeRuntimePlugin()))
    return Server(data_dir, data_dir / "mnt", pm)


async def import_image(srv: Server, image: Path, alias: str = "img") -> str:
    upload = srv.new_upload_path()
    upload.write_bytes(image.read_bytes())
    img = await srv.import_upload(upload, image.name)
    assert img is not None
    await srv.create_alias(alias, img.fingerprint)
    return img.fingerprint


async def test_create_start_snapshot_delete(tmp_path, image, nursery):
    srv = make_server(tmp_path / "data")
    await srv.open(nursery)
    fp = await import_image(srv, image)
    await srv.create_instance("c1")
    await srv.set_source("c1", "img")
    assert srv.instances["c1"].source == fp
    rootfs = srv.rootfs(srv.instances["c1"])
    assert (rootfs / "etc" / "hostname").read_text() == "c1\n"
    assert srv.instances["c1"].config["image.os"] == "test"
    await srv.change_state("c1", "start")
    assert await srv.state("c1") == "RUNNING"
    with pytest.raises(Busy):
        await srv.change_state("c1", "start")
    with pytest.raises(Busy):
        await srv.delete_instance("c1")
    await srv.create_snapshot("c1", "s0")
    (rootfs / "new").write_text("x")
    await srv.restore_snapshot("c1", "s0")
    assert not (srv.rootfs(srv.instances["c1"]) / "new").exists()
    assert await srv.state("c1") == "RUNNING"
    await srv.change_state("c1", "kill")
    await srv.delete_instance("c1")
    pool = tmp_path / "data" / "storage-pools" / "default"
    assert list((pool / "containers").iterdir()) == []
    assert list((pool / "containers-snapshots").iterdir()) == []


async def test_validation_errors(tmp_path, image, nursery):
    srv = make_server(tmp_path / "data")
    await srv.open(nursery)
    await import_image(srv, image)
    with pytest.raises(InvalidArgument):
        await srv.create_instance("9lives")
    await srv.create_instance("c1")
    with pytest.raises(AlreadyExists):
        await srv.create_instance("c1")
    with pytest.raises(NotFound):
        await srv.change_state("c1", "start")
    with pytest.raises(InvalidArgument):
        await srv.change_state("c1", "jump")
    with pytest.raises(NotFound):
        await srv.set_source("c1", "missing")
    with pytest.raises(NotFound):
        await srv.set_source("c1", "images:debian/12")
    with pytest.raises(InvalidArgument):
        await srv.set_instance_key("c1", "limits.memory", "x")
    assert "limits.memory" not in srv.instances["c1"].config
    with pytest.raises(NotFound):
        await srv.create_instance("c2", profiles=["nope"])


async def test_failed_start_reports_and_keeps_state(tmp_path, image, nursery):
    srv = make_server(tmp_path / "data")
    await srv.open(nursery)
    await import_image(srv, image)
    await srv.create_instance("c1")
    await srv.set_source("c1", "img")
    FakeRuntime.fail_start = True
    with pytest.raises(OperationFailed):
        await srv.guarded("c1", srv.change_state("c1", "start"))
    assert "on purpose" in srv.errors["c1"]
    assert await srv.state("c1") == "STOPPED"


async def test_failed_unpack_rolls_back(tmp_path, nursery, monkeypatch):
    srv = make_server(tmp_path / "data")
    await srv.open(nursery)
    bad = tmp_path / "bad.tar"
    meta = tmp_path / "m"
    (meta / "rootfs").mkdir(parents=True)
    (meta / "metadata.yaml").write_text("architecture: x86_64\ncreation_date: 1\n")
    subprocess.run(["tar", "-cf", str(bad), "-C", str(meta), "metadata.yaml", "rootfs"],
                   check=True)
    await import_image(srv, bad, "bad")

    def boom(*args):
        raise OSError(28, "No space left on device")

    # the first launch on a dir pool unpacks into a new volume; later ones copy the image's
    for method in ("create_volume", "create_volume_from_image"):
        monkeypatch.setattr(srv.pools["default"], method, boom)
    await srv.create_instance("c1")
    with pytest.raises(OSError):
        await srv.set_source("c1", "bad")
    inst = srv.instances["c1"]
    assert (inst.storage_state, inst.source) == ("", "")
    assert srv.pools["default"].list_volumes("container") == []


async def test_state_survives_restart(tmp_path, image, nursery):
    data = tmp_path / "data"
    srv = make_server(data)
    await srv.open(nursery)
    fp = await import_image(srv, image)
    await srv.create_instance("c1", config={"user.x": "1"})
    await srv.set_source("c1", "img")
    await srv.create_profile("extra")
    await srv.set_profile_key("extra", "boot.autostart.priority", "20")
    await srv.set_instance_field("c1", "profiles", "default\nextra\n")
    await srv.close()
    srv2 = make_server(data)
    await srv2.open(nursery)
    inst = srv2.instances["c1"]
    assert inst.config["user.x"] == "1"
    assert inst.profiles == ["default", "extra"]
    assert inst.expanded_config["boot.autostart.priority"] == "20"
    assert srv2.aliases["img"][0] == fp
    with pytest.raises(Busy):
        await srv2.delete_profile("extra")
    await srv2.close()


class BrokenPlugin:
    @hookimpl
    def lxfs_instance_post_stop(self, host, instance):
        raise RuntimeError("a plugin bug")

    @hookimpl
    def lxfs_startup(self, host):
        raise RuntimeError("another plugin bug")


async def test_plugin_bugs_never_stop_the_daemon(tmp_path, image, nursery):
    """A failing startup hook is logged; a failing post_stop hook while handling a stop the
    daemon noticed by itself is logged: the server goes on."""
    FakeRuntime.states = {}
    pm = plugin_manager(load_entry_points=False,
                        extra=(storage_dir, FakeRuntimePlugin(), BrokenPlugin()))
    srv = Server(tmp_path / "data", tmp_path / "mnt", pm)
    await srv.open(nursery)
    await import_image(srv, image)
    await srv.create_instance("c1")
    await srv.set_source("c1", "img")
    proc = await trio.lowlevel.open_process(["sleep", "0.1"])
    srv._running_pids["c1"] = proc.pid
    await srv._watch_task("c1", proc.pid)  # must not raise
    await proc.wait()
    assert "c1" not in srv._running_pids or srv._running_pids["c1"] != proc.pid
