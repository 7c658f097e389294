"""The zfs driver against a fake of the libzfs_core calls it uses (this kernel has no ZFS),
plus its clear refusal on this host. Real-kernel tests skip only when /dev/zfs is missing."""

from __future__ import annotations

import errno
import itertools
import json
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from lxfs_plugins import storage_zfs, storage_zfs_stream
from lxfs_plugins.rest import migration
from lxfs_plugins.rest.migration import make_answer, make_offer, pb
from lxfs_plugins.rest.migration.transports import TRANSPORTS
from lxfs_plugins.storage_btrfs import BtrfsDriver
from lxfs_plugins.storage_dir import DirDriver
from lxfs_plugins.storage_zfs import ZfsDriver

from lxfs.errors import AlreadyExists, Busy, InvalidArgument, NotFound, NotSupported
from lxfs.storage import Pool

FP = "f" * 64


class FakeZfs:
    """The state behind the fake module: datasets with props, snapshots with clones, in the
    shapes and with the errors of pyzfs (names are bytes; failures raise its exceptions)."""

    def __init__(self, pools: tuple[str, ...] = ("tank",)) -> None:
        self.datasets: dict[str, dict[str, Any]] = {p: {"props": {}, "origin": None}
                                                    for p in pools}
        self.snaps: dict[str, dict[str, Any]] = {}
        self.counter = itertools.count()
        self.guids = itertools.count(10**18)
        self.calls: list[str] = []

    def module(self) -> types.ModuleType:
        mod = types.ModuleType("libzfs_core")
        exc = types.ModuleType("libzfs_core.exceptions")

        class ZFSError(Exception):
            errno = errno.EIO

            def __init__(self, name: bytes | None = None) -> None:
                super().__init__(name)
                self.name = name

        def error(cls_name: str, code: int) -> type:
            return type(cls_name, (ZFSError,), {"errno": code})

        exc.ZFSError = ZFSError
        for cls_name, code in (("FilesystemExists", errno.EEXIST),
                               ("DatasetNotFound", errno.ENOENT),
                               ("ParentNotFound", errno.ENOENT),
                               ("SnapshotExists", errno.EEXIST),
                               ("SnapshotNotFound", errno.ENOENT),
                               ("SnapshotNotLatest", errno.EEXIST),
                               ("SnapshotIsCloned", errno.EEXIST),
                               ("DatasetBusy", errno.EBUSY),
                               ("SnapshotFailure", errno.EEXIST),
                               ("SnapshotDestructionFailure", errno.EEXIST),
                               ("SnapshotMismatch", errno.ENODEV),
                               ("DatasetExists", errno.EEXIST),
                               ("StreamMismatch", errno.ENODEV),
                               ("DestinationModified", errno.ETXTBSY),
                               ("BadStream", errno.EBADE)):
            setattr(exc, cls_name, error(cls_name, code))
        mod.exceptions = exc
        for name in dir(self):
            if name.startswith("lzc_"):
                setattr(mod, name, getattr(self, name))
        self.exc = exc
        return mod

    @staticmethod
    def _s(name: bytes) -> str:
        assert isinstance(name, bytes), f"libzfs_core takes bytes, got {name!r}"
        return name.decode()

    def _parent_exists(self, name: str) -> bool:
        return "/" not in name or name.rsplit("/", 1)[0] in self.datasets

    def lzc_exists(self, name: bytes) -> bool:
        n = self._s(name)
        return n in self.datasets or n in self.snaps

    def lzc_create(self, name: bytes, ds_type: str = "zfs",
                   props: dict[bytes, Any] | None = None, key: bytes | None = None) -> None:
        n = self._s(name)
        self.calls.append(f"create {n}")
        if n in self.datasets:
            raise self.exc.FilesystemExists(name)
        if not self._parent_exists(n):
            raise self.exc.ParentNotFound(name)
        self.datasets[n] = {"props": {self._s(k): v for k, v in (props or {}).items()},
                            "origin": None}

    def lzc_clone(self, name: bytes, origin: bytes, props: dict[bytes, Any] | None = None
                  ) -> None:
        n, o = self._s(name), self._s(origin)
        self.calls.append(f"clone {o} {n}")
        if n in self.datasets:
            raise self.exc.FilesystemExists(name)
        if o not in self.snaps or not self._parent_exists(n):
            raise self.exc.DatasetNotFound(name)
        self.datasets[n] = {"props": {self._s(k): v for k, v in (props or {}).items()},
                            "origin": o, "data": dict(self.snaps[o]["data"])}
        self.snaps[o]["clones"].add(n)

    def lzc_snapshot(self, snaps: list[bytes], props: dict[bytes, Any] | None = None) -> None:
        names = [self._s(s) for s in snaps]
        for n in names:
            ds = n.split("@", 1)[0]
            if n in self.snaps or ds not in self.datasets:
                raise self.exc.SnapshotFailure(n.encode())
        for n in names:
            self.calls.append(f"snapshot {n}")
            self.snaps[n] = {"clones": set(), "order": next(self.counter), "deferred": False,
                             "guid": str(next(self.guids)),
                             "data": dict(self.datasets[n.split("@", 1)[0]].get("data", {}))}

    def lzc_destroy_snaps(self, snaps: list[bytes], defer: bool) -> None:
        for name in snaps:
            n = self._s(name)
            if n not in self.snaps:
                continue  # missing snapshots are ignored
            if self.snaps[n]["clones"]:
                if not defer:
                    raise self.exc.SnapshotDestructionFailure(name)
                self.snaps[n]["deferred"] = True
                continue
            self.calls.append(f"destroy {n}")
            del self.snaps[n]

    def lzc_destroy(self, name: bytes) -> None:
        n = self._s(name)
        if n not in self.datasets:
            raise self.exc.DatasetNotFound(name)
        if any(s.startswith(f"{n}@") for s in self.snaps) or \
                any(d.startswith(f"{n}/") for d in self.datasets):
            raise self.exc.DatasetBusy(name)
        self.calls.append(f"destroy {n}")
        origin = self.datasets.pop(n)["origin"]
        if origin:
            snap = self.snaps[origin]
            snap["clones"].discard(n)
            if snap["deferred"] and not snap["clones"]:
                del self.snaps[origin]
                parked = origin.split("@", 1)[0]
                if "/deleted/" in parked and not any(s.startswith(f"{parked}@")
                                                     for s in self.snaps):
                    self.datasets.pop(parked, None)

    def lzc_rename(self, source: bytes, target: bytes) -> None:
        s, t = self._s(source), self._s(target)
        self.calls.append(f"rename {s} {t}")
        if t in self.datasets or t in self.snaps:
            raise self.exc.FilesystemExists(target)
        if s in self.snaps:
            self.snaps[t] = self.snaps.pop(s)
            for ds in self.datasets.values():
                if ds["origin"] == s:
                    ds["origin"] = t
            return
        if s not in self.datasets:
            raise self.exc.DatasetNotFound(source)
        if not self._parent_exists(t):
            raise self.exc.ParentNotFound(target)
        self.datasets[t] = self.datasets.pop(s)
        origin = self.datasets[t]["origin"]
        if origin:
            self.snaps[origin]["clones"].discard(s)
            self.snaps[origin]["clones"].add(t)
        for snap in [x for x in self.snaps if x.startswith(f"{s}@")]:
            new = t + snap[len(s):]
            self.snaps[new] = self.snaps.pop(snap)
            for clone in self.snaps[new]["clones"]:
                self.datasets[clone]["origin"] = new

    def lzc_rollback_to(self, name: bytes, snap: bytes) -> None:
        n, sn = self._s(name), self._s(snap)
        mine = [x for x in self.snaps if x.startswith(f"{n}@")]
        if sn not in mine:
            raise self.exc.SnapshotNotFound(snap)
        if max(mine, key=lambda x: self.snaps[x]["order"]) != sn:
            raise self.exc.SnapshotNotLatest(snap)
        self.calls.append(f"rollback {n} {sn}")
        self.datasets[n]["data"] = dict(self.snaps[sn]["data"])

    def lzc_set_props(self, name: bytes, prop: bytes, val: Any) -> None:
        n = self._s(name)
        if n not in self.datasets:
            raise self.exc.DatasetNotFound(name)
        self.datasets[n]["props"][self._s(prop)] = val

    def lzc_get_props(self, name: bytes) -> dict[bytes, Any]:
        n = self._s(name)
        if n in self.snaps:
            return {b"guid": int(self.snaps[n]["guid"])}
        if n not in self.datasets:
            raise self.exc.DatasetNotFound(name)
        props = {k.encode(): v for k, v in self.datasets[n]["props"].items() if v}
        props[b"usedbydataset"] = 4096
        props[b"referenced"] = 8192
        return props

    def _latest(self, dataset: str) -> str | None:
        mine = [x for x in self.snaps if x.startswith(f"{dataset}@")]
        return max(mine, key=lambda x: self.snaps[x]["order"]) if mine else None

    def lzc_send(self, snapname: bytes, fromsnap: bytes | None, fd: int,
                 flags: list[str] | None = None) -> None:
        """The stream: the snapshot's guid, its parent's and its content, as JSON."""
        n = self._s(snapname)
        if n not in self.snaps:
            raise self.exc.SnapshotNotFound(snapname)
        fromguid = None
        if fromsnap is not None:
            f = self._s(fromsnap)
            if f not in self.snaps:
                raise self.exc.SnapshotNotFound(fromsnap)
            if f.split("@")[0] != n.split("@")[0] or \
                    self.snaps[f]["order"] >= self.snaps[n]["order"]:
                raise self.exc.SnapshotMismatch(snapname)
            fromguid = self.snaps[f]["guid"]
        self.calls.append(f"send {n} from {self._s(fromsnap) if fromsnap else '-'}")
        os.write(fd, json.dumps({"toguid": self.snaps[n]["guid"], "fromguid": fromguid,
                                 "data": self.snaps[n]["data"]}).encode())

    def lzc_receive(self, snapname: bytes, fd: int, force: bool = False, raw: bool = False,
                    origin: bytes | None = None, props: dict[bytes, Any] | None = None
                    ) -> None:
        """pyzfs's rules: a full stream makes the dataset (never over one with snapshots),
        an incremental one needs the stream's parent as the latest snapshot (``force``
        rolls back to it, and over changes since); a cut stream receives nothing."""
        n = self._s(snapname)
        ds = n.split("@", 1)[0]
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        try:
            stream = json.loads(data)
        except ValueError:
            raise self.exc.BadStream(snapname) from None
        if n in self.snaps:
            raise self.exc.DatasetExists(snapname)
        if stream["fromguid"] is None:
            if ds in self.datasets:
                if self._latest(ds):
                    raise self.exc.StreamMismatch(snapname)
                if not force:
                    raise self.exc.DestinationModified(snapname)
            elif not self._parent_exists(ds):
                raise self.exc.DatasetNotFound(snapname)
            else:
                self.datasets[ds] = {"origin": None, "props": {
                    self._s(k): v for k, v in (props or {}).items()}}
        else:
            if ds not in self.datasets:
                raise self.exc.DatasetNotFound(snapname)
            base = [x for x in self.snaps if x.startswith(f"{ds}@")
                    and self.snaps[x]["guid"] == stream["fromguid"]]
            latest = self._latest(ds)
            if not base or (base[0] != latest and not force):
                raise self.exc.StreamMismatch(snapname)
            if latest and self.datasets[ds].get("data", {}) != \
                    self.snaps[latest]["data"] and not force:
                raise self.exc.DestinationModified(snapname)
            for newer in [x for x in self.snaps if x.startswith(f"{ds}@")
                          and self.snaps[x]["order"] > self.snaps[base[0]]["order"]]:
                del self.snaps[newer]  # force: rolled back to the stream's parent
        self.calls.append(f"receive {n}")
        self.datasets[ds]["data"] = dict(stream["data"])
        self.snaps[n] = {"clones": set(), "order": next(self.counter), "deferred": False,
                         "guid": stream["toguid"], "data": dict(stream["data"])}

    def lzc_list_children(self, name: bytes) -> Iterator[bytes]:
        n = self._s(name)
        if n not in self.datasets:
            raise self.exc.DatasetNotFound(name)
        for ds in sorted(self.datasets):
            if ds.startswith(f"{n}/") and "/" not in ds[len(n) + 1:]:
                yield ds.encode()

    def lzc_list_snaps(self, name: bytes) -> Iterator[bytes]:
        n = self._s(name)
        if n not in self.datasets:
            raise self.exc.DatasetNotFound(name)
        for snap in sorted(self.snaps, key=lambda x: self.snaps[x]["order"]):
            if snap.startswith(f"{n}@"):
                yield snap.encode()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeZfs:
    """The fake module in sys.modules, and mount/umount that move a dataset's files between a
    backing directory (its "disk") and its mount point."""
    state = FakeZfs()
    monkeypatch.setitem(sys.modules, "libzfs_core", state.module())
    mounted: dict[Path, str] = {}
    backing = tmp_path / "backing"
    backing.mkdir()

    def store(dataset: str) -> Path:
        return backing / dataset.replace("/", "%")

    rename = state.lzc_rename

    def lzc_rename(source: bytes, target: bytes) -> None:
        rename(source, target)
        if store(source.decode()).exists():
            os.rename(store(source.decode()), store(target.decode()))

    sys.modules["libzfs_core"].lzc_rename = lzc_rename

    def mount(self: ZfsDriver, dataset: str, path: Path) -> None:
        assert state.datasets[dataset]["props"].get("mountpoint") == b"legacy"
        if path in mounted:
            return
        if store(dataset).exists():
            os.rename(store(dataset), path)
        else:
            path.mkdir(mode=0o711)
        mounted[path] = dataset

    def umount(self: ZfsDriver, path: Path) -> None:
        dataset = mounted.pop(path, None)
        if dataset is not None:
            os.rename(path, store(dataset))

    monkeypatch.setattr(ZfsDriver, "_mount", mount)
    monkeypatch.setattr(ZfsDriver, "_umount", umount)
    state.mounted = mounted  # type: ignore[attr-defined]
    return state


@pytest.fixture
def pool(fake: FakeZfs, tmp_path: Path) -> ZfsDriver:
    fake.datasets["tank/lxfs"] = {"props": {}, "origin": None}
    driver = ZfsDriver(Pool("z", "zfs", {"source": "tank/lxfs"}), tmp_path)
    driver.fill_defaults()
    driver.create()
    return driver


def unpack(dest: Path) -> None:
    (dest / "metadata.yaml").write_text("architecture: x86_64\n")
    (dest / "rootfs").mkdir()
    (dest / "rootfs" / "hello").write_text("hi\n")


def test_check_host_fails_clearly_without_zfs() -> None:
    if os.path.exists("/dev/zfs"):
        pytest.skip("this host has ZFS: the refusal cannot be observed")
    with pytest.raises(NotSupported, match="not supported on this host.*no ZFS"):
        ZfsDriver.check_host()


def test_pool_on_dataset(pool: ZfsDriver, fake: FakeZfs) -> None:
    assert not pool.loop and pool.dataset == "tank/lxfs"
    for sub in ("images", "containers", "custom", "deleted"):
        assert fake.datasets[f"tank/lxfs/{sub}"]["props"] == {"mountpoint": b"none"}
    with pytest.raises(NotFound):
        ZfsDriver(Pool("y", "zfs", {"source": "tank/none"}), pool.data_dir).create()


def test_image_clone_snapshots_quota(pool: ZfsDriver, fake: FakeZfs) -> None:
    pool.create_image_volume(FP, unpack)
    image = f"tank/lxfs/images/{FP}"
    assert image in fake.datasets and f"{image}@readonly" in fake.snaps
    assert pool.list_volumes("image") == [FP] and pool.volume_exists("image", FP)
    assert (pool.volume_path("image", FP) / "rootfs" / "hello").read_text() == "hi\n"

    pool.create_volume_from_image("container", "c1", FP)
    assert fake.datasets["tank/lxfs/containers/c1"]["origin"] == f"{image}@readonly"
    assert pool.volume_path("container", "c1") in fake.mounted  # type: ignore[attr-defined]
    with pytest.raises(AlreadyExists):
        pool.create_volume_from_image("container", "c1", FP)
    with pytest.raises(NotFound):
        pool.create_volume_from_image("container", "c9", "0" * 64)

    assert ZfsDriver.quotas and ZfsDriver.live_resize
    pool.set_volume_quota("container", "c1", 2**30)
    assert fake.datasets["tank/lxfs/containers/c1"]["props"]["refquota"] == 2**30
    with pytest.raises(InvalidArgument, match="smaller than what volume c1 already uses"):
        pool.set_volume_quota("container", "c1", 1024)  # it references 8 KiB
    assert fake.datasets["tank/lxfs/containers/c1"]["props"]["refquota"] == 2**30
    assert pool.volume_usage("container", "c1") == 4096

    pool.create_snapshot("container", "c1", "s1")
    pool.create_snapshot("container", "c1", "s2")
    with pytest.raises(AlreadyExists):
        pool.create_snapshot("container", "c1", "s2")
    assert pool.list_snapshots("container", "c1") == ["s1", "s2"]
    assert pool.snapshot_path("container", "c1", "s1") == \
        pool.volume_path("container", "c1") / ".zfs/snapshot/snapshot-s1"
    with pytest.raises(Busy, match="latest snapshot"):
        pool.restore_snapshot("container", "c1", "s1")
    pool.restore_snapshot("container", "c1", "s2")
    assert "rollback tank/lxfs/containers/c1 tank/lxfs/containers/c1@snapshot-s2" in fake.calls
    pool.rename_snapshot("container", "c1", "s1", "first")
    assert pool.list_snapshots("container", "c1") == ["first", "s2"]

    pool.copy_volume("container", "c1", "c2", snapshots=False)
    assert fake.datasets["tank/lxfs/containers/c2"]["props"]["refquota"] == 2**30
    pool.copy_snapshot_to_volume("container", "c1", "s2", "c3")
    assert fake.datasets["tank/lxfs/containers/c3"]["origin"] == \
        "tank/lxfs/containers/c1@snapshot-s2"
    pool.rename_volume("container", "c3", "c4")
    assert pool.list_volumes("container") == ["c1", "c2", "c4"]

    # an image still cloned is parked, and goes once its last clone is gone
    pool.delete_volume("image", FP)
    assert pool.list_volumes("image") == []
    assert f"tank/lxfs/deleted/images-{FP}" in fake.datasets
    for name in ("c4", "c2", "c1"):
        pool.delete_volume("container", name)
    pool.delete_volume("container", "missing")
    assert pool.list_volumes("container") == []
    assert sorted(fake.datasets) == ["tank", "tank/lxfs", "tank/lxfs/containers",
                                     "tank/lxfs/custom", "tank/lxfs/deleted",
                                     "tank/lxfs/images"]
    assert fake.snaps == {}


def test_failed_unpack_leaves_nothing(pool: ZfsDriver, fake: FakeZfs) -> None:
    def boom(dest: Path) -> None:
        raise RuntimeError("bad image")

    with pytest.raises(RuntimeError):
        pool.create_image_volume(FP, boom)
    assert not [d for d in fake.datasets if d.startswith("tank/lxfs/images/")]


def test_loop_pool_commands(fake: FakeZfs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                            ) -> None:
    commands: list[tuple[str, ...]] = []

    def run(*cmd: str) -> str:
        commands.append(cmd)
        if cmd[:2] == ("zpool", "create"):
            fake.datasets[cmd[-2]] = {"props": {}, "origin": None}
        return ""

    monkeypatch.setattr(storage_zfs, "_run", run)
    monkeypatch.setattr(ZfsDriver, "_zpool_imported", lambda self: True)
    driver = ZfsDriver(Pool("zl", "zfs", {"size": "1GiB"}), tmp_path)
    driver.fill_defaults()
    assert driver.loop and driver.dataset == "zl"
    assert driver.pool.config["source"] == str(tmp_path / "disks/zl.img")
    driver.create()
    image = tmp_path / "disks/zl.img"
    assert image.stat().st_size == 2**30
    assert ("zpool", "create", "-m", "none", "-O", "compression=on", "zl", str(image)) in \
        commands
    assert "zl/containers" in fake.datasets


# --- migration streams (LXD's ZFS transport) ------------------------------------------------

@pytest.fixture
def other(fake: FakeZfs, tmp_path: Path) -> ZfsDriver:
    """A second pool (another host's, as far as the streams know)."""
    fake.datasets["tank/other"] = {"props": {}, "origin": None}
    driver = ZfsDriver(Pool("y", "zfs", {"source": "tank/other"}), tmp_path)
    driver.fill_defaults()
    driver.create()
    return driver


def _run_stream(argv: list[str], **fds: int) -> int:
    """A stream command of the driver, run in this process (where the fake is)."""
    assert argv[:3] == [sys.executable, "-m", "lxfs_plugins.storage_zfs_stream"]
    return storage_zfs_stream.main(argv[3:], **fds)


def migrate(src: ZfsDriver, dst: ZfsDriver, name: str, tmp_path: Path, *,
            refresh: bool = False, cut: str | None = None) -> list[str]:
    """The REST bridge's ZFS transport between two pools, without the websockets: the
    source's header, the sink's plan (and reply on a refresh), each stream through the
    driver's commands in the plan's order, adopted in turn; ``cut`` cuts that stream
    midway (then the sink drops it, as the bridge does). Returns the streams' names."""
    transport = TRANSPORTS["ZFS"]
    snaps = src.list_snapshots("container", name)
    ids = [(n, src.stream_ids("container", name, n)[0]) for n in snaps]
    have = None
    if refresh:
        for gone in set(dst.list_snapshots("container", name)) - set(snaps):
            dst.delete_snapshot("container", name, gone)
        have = {n: dst.stream_ids("container", name, n)[1]
                for n in dst.list_snapshots("container", name)}
    header = json.loads(json.dumps(transport.source_header(ids)))
    plan = transport.sink_plan(header, snaps, have)
    for snap in plan.drop:
        dst.delete_snapshot("container", name, snap)
    send = transport.to_send(json.loads(json.dumps(plan.reply)), ids) if refresh else snaps
    assert send == plan.streams[:-1]
    first = snaps.index(send[0]) if send else len(snaps)
    parent = snaps[first - 1] if refresh and first > 0 else ""
    src.freeze_for_send("container", name)
    stream = tmp_path / "stream"
    into = None
    try:
        for snap in plan.streams:
            with open(stream, "wb") as out:
                assert _run_stream(src.stream_send_command("container", name, snap, parent),
                                   stdout=out.fileno()) == 0
            if snap == cut:
                os.truncate(stream, stream.stat().st_size // 2)
            parent = snap
            into = dst.stream_receive_dir("container", name)
            with open(stream, "rb") as inp:
                if _run_stream(dst.stream_receive_command(into), stdin=inp.fileno()) != 0:
                    raise OSError(f"receive of {snap or name} failed")
            dst.adopt_stream("container", name, snap, into)
    except OSError:
        if into is not None:
            dst.drop_stream(into)
        raise
    finally:
        src.thaw_after_send("container", name)
    return plan.streams


def _state(fake: FakeZfs, dataset: str) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A dataset's content and its snapshots' (name, guid), oldest first."""
    snaps = sorted((s for s in fake.snaps if s.startswith(f"{dataset}@")),
                   key=lambda s: fake.snaps[s]["order"])
    return fake.datasets[dataset]["data"], [(s.split("@")[1], fake.snaps[s]["guid"])
                                            for s in snaps]


def _hidden(fake: FakeZfs) -> list[str]:
    return [d for d in fake.datasets if "/." in d] + \
        [s for s in fake.snaps if "@migration-" in s]


def test_streams_full_then_refresh(pool: ZfsDriver, other: ZfsDriver, fake: FakeZfs,
                                   tmp_path: Path) -> None:
    assert ZfsDriver.migration_transports == ("ZFS",)
    src, dst = "tank/lxfs/containers/c1", "tank/other/containers/c1"
    pool.create_volume("container", "c1")
    for version, snap in ((1, "s1"), (2, "s2")):
        fake.datasets[src]["data"] = {"f": version}
        pool.create_snapshot("container", "c1", snap)
    fake.datasets[src]["data"] = {"f": 3}

    fake.calls.clear()
    assert migrate(pool, other, "c1", tmp_path) == ["s1", "s2", ""]
    sends = [c for c in fake.calls if c.startswith("send ")]
    assert sends == [f"send {src}@snapshot-s1 from -",
                     f"send {src}@snapshot-s2 from {src}@snapshot-s1",
                     f"send {src}@migration-send from {src}@snapshot-s2"]
    assert _state(fake, dst) == _state(fake, src)  # content, snapshots and their guids
    assert other.list_volumes("container") == ["c1"]
    assert other.list_snapshots("container", "c1") == ["s1", "s2"]
    assert other.volume_path("container", "c1") in fake.mounted  # type: ignore[attr-defined]
    assert fake.datasets[dst]["props"]["mountpoint"] == b"legacy"
    assert _hidden(fake) == []

    # a refresh: only what is new goes, incrementally, over what changed on the target
    fake.datasets[src]["data"] = {"f": 4}
    pool.create_snapshot("container", "c1", "s3")
    fake.datasets[src]["data"] = {"f": 5}
    fake.datasets[dst]["data"] = {"f": "changed on the target"}
    fake.calls.clear()
    assert migrate(pool, other, "c1", tmp_path, refresh=True) == ["s3", ""]
    assert [c for c in fake.calls if c.startswith("send ")] == [
        f"send {src}@snapshot-s3 from {src}@snapshot-s2",
        f"send {src}@migration-send from {src}@snapshot-s3"]
    assert f"receive {dst}@migration-receive" in fake.calls  # into the volume itself
    assert _state(fake, dst) == _state(fake, src)
    assert _hidden(fake) == []

    # nothing new but the volume: one incremental stream from the last snapshot
    fake.datasets[src]["data"] = {"f": 6}
    assert migrate(pool, other, "c1", tmp_path, refresh=True) == [""]
    assert _state(fake, dst) == _state(fake, src)


def test_refresh_after_the_histories_diverged(pool: ZfsDriver, other: ZfsDriver,
                                              fake: FakeZfs, tmp_path: Path) -> None:
    src, dst = "tank/lxfs/containers/c1", "tank/other/containers/c1"
    pool.create_volume("container", "c1")
    for version, snap in ((1, "s1"), (2, "s2")):
        fake.datasets[src]["data"] = {"f": version}
        pool.create_snapshot("container", "c1", snap)
    migrate(pool, other, "c1", tmp_path)
    # the source's s2 is taken again, other content: s2 and what follows go again
    pool.delete_snapshot("container", "c1", "s2")
    fake.datasets[src]["data"] = {"f": "two"}
    pool.create_snapshot("container", "c1", "s2")
    pool.create_snapshot("container", "c1", "s3")
    assert migrate(pool, other, "c1", tmp_path, refresh=True) == ["s2", "s3", ""]
    assert _state(fake, dst) == _state(fake, src)

    # no snapshot in common: the whole volume again, replacing the target's
    for snap in ("s1", "s2", "s3"):
        pool.delete_snapshot("container", "c1", snap)
    pool.create_snapshot("container", "c1", "t1")
    fake.datasets[src]["data"] = {"f": "new"}
    assert migrate(pool, other, "c1", tmp_path, refresh=True) == ["t1", ""]
    assert _state(fake, dst) == _state(fake, src)
    assert other.list_snapshots("container", "c1") == ["t1"]
    assert other.volume_path("container", "c1") in fake.mounted  # type: ignore[attr-defined]
    assert _hidden(fake) == []


def test_cut_streams_leave_nothing(pool: ZfsDriver, other: ZfsDriver, fake: FakeZfs,
                                   tmp_path: Path) -> None:
    src, dst = "tank/lxfs/containers/c1", "tank/other/containers/c1"
    pool.create_volume("container", "c1")
    pool.create_snapshot("container", "c1", "s1")
    pool.create_snapshot("container", "c1", "s2")
    with pytest.raises(OSError, match="receive of s2 failed"):
        migrate(pool, other, "c1", tmp_path, cut="s2")
    assert not other.volume_exists("container", "c1")
    assert _hidden(fake) == []  # s1 went with the receive dataset
    with pytest.raises(OSError, match="receive of c1 failed"):
        migrate(pool, other, "c1", tmp_path, cut="")
    assert [d for d in fake.datasets if d.startswith("tank/other/containers/")] == []

    migrate(pool, other, "c1", tmp_path)
    before = _state(fake, dst)
    pool.create_snapshot("container", "c1", "s3")
    fake.datasets[src]["data"] = {"f": "later"}
    with pytest.raises(OSError, match="receive of s3 failed"):
        migrate(pool, other, "c1", tmp_path, refresh=True, cut="s3")
    assert _state(fake, dst) == before  # a cut refresh: the target as it was
    assert _hidden(fake) == []


def test_recover_after_a_cut_migration(pool: ZfsDriver, fake: FakeZfs) -> None:
    base = "tank/lxfs/containers"
    pool.create_volume("container", "c1")
    pool.freeze_for_send("container", "c1")  # the source died while sending
    fake.datasets[f"{base}/.c2.migration-receive"] = {"props": {}, "origin": None}
    fake.snaps[f"{base}/.c2.migration-receive@snapshot-s1"] = {
        "clones": set(), "order": -1, "deferred": False, "guid": "1", "data": {}}
    # the sink died between the two renames of adopting a received volume
    fake.datasets[f"{base}/.c3.old"] = {"props": {"mountpoint": b"legacy"}, "origin": None}
    pool.recover()
    assert _hidden(fake) == []
    assert pool.list_volumes("container") == ["c1", "c3"]
    assert pool.volume_path("container", "c3") in fake.mounted  # type: ignore[attr-defined]


class _Pipe(migration.Channel):
    """One direction of the ``fs`` websocket in memory: data messages, None for a barrier."""

    def __init__(self) -> None:
        self.put, self.get = trio.open_memory_channel[bytes | None](1000)

    async def send(self, data: bytes) -> None:
        await self.put.send(data)

    async def end(self) -> None:
        await self.put.send(None)

    async def receive(self) -> bytes | None:
        return await self.get.receive()


class _Duplex(migration.Channel):
    def __init__(self, out: _Pipe, into: _Pipe) -> None:
        self.out, self.into = out, into

    async def send(self, data: bytes) -> None:
        await self.out.send(data)

    async def end(self) -> None:
        await self.out.end()

    async def receive(self) -> bytes | None:
        return await self.into.receive()


async def test_bridge_moves_zfs_streams(pool: ZfsDriver, other: ZfsDriver, fake: FakeZfs,
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    """The bridge's own sending and receiving of a native transport (``Source`` and
    ``Sink``), with ZFS between two fake pools: the stream processes run in this process
    (where the fake is), the ``fs`` websocket is in memory."""
    async def stream_out(argv: list[str], channel: migration.Channel) -> None:
        out = tmp_path / "out"
        with open(out, "wb") as f:
            assert await trio.to_thread.run_sync(
                lambda: _run_stream(argv, stdout=f.fileno())) == 0
        await channel.send(out.read_bytes())
        await channel.end()

    async def stream_in(argv: list[str], channel: migration.Channel) -> None:
        data = b""
        while (chunk := await channel.receive()) is not None:
            data += chunk
        (tmp_path / "in").write_bytes(data[:len(data) // 2] if cut else data)
        with open(tmp_path / "in", "rb") as f:
            if await trio.to_thread.run_sync(lambda: _run_stream(argv, stdin=f.fileno())):
                raise migration.MigrationError("zfs receive failed")

    monkeypatch.setattr(migration, "stream_out", stream_out)
    monkeypatch.setattr(migration, "stream_in", stream_in)
    cut = False
    src, dst = "tank/lxfs/containers/c1", "tank/other/containers/c1"
    pool.create_volume("container", "c1")
    for version, snap in ((1, "s1"), (2, "s2")):
        fake.datasets[src]["data"] = {"f": version}
        pool.create_snapshot("container", "c1", snap)
    fake.datasets[src]["data"] = {"f": 3}

    async def move(refresh: bool) -> list[str]:
        snaps = pool.list_snapshots("container", "c1")
        messages = [pb.Snapshot(name=n, ephemeral=False, architecture=2, stateful=False)
                    for n in snaps]
        offer, transport = make_offer(pool.migration_transports, messages, running=False)
        answer, chosen = make_answer(offer, other.migration_transports, refresh=refresh,
                                     wanted=messages)
        assert transport is chosen is TRANSPORTS["ZFS"]
        source = object.__new__(migration.Source)
        source.name, source.op, source.secrets = "c1", types.SimpleNamespace(), {}
        sink = object.__new__(migration.Sink)
        sink.name, sink.op, sink.refresh = "c1", types.SimpleNamespace(), refresh
        to_sink, to_source = _Pipe(), _Pipe()
        received: list[str] = []

        async def receive() -> None:
            existing = set(other.list_snapshots("container", "c1"))
            records = await sink._receive_streams(other, _Duplex(to_source, to_sink),
                                                  transport, answer, messages, existing)
            received.extend(r.name for r in records)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await source._send_streams(pool, _Duplex(to_sink, to_source), transport, answer,
                                       snaps)
        return received

    assert await move(refresh=False) == ["s1", "s2"]
    assert _state(fake, dst) == _state(fake, src)
    assert other.volume_path("container", "c1") in fake.mounted  # type: ignore[attr-defined]
    fake.datasets[src]["data"] = {"f": 4}
    pool.create_snapshot("container", "c1", "s3")
    fake.calls.clear()
    assert await move(refresh=True) == ["s3"]
    assert [c for c in fake.calls if c.startswith("send ")] == [
        f"send {src}@snapshot-s3 from {src}@snapshot-s2",
        f"send {src}@migration-send from {src}@snapshot-s3"]
    assert _state(fake, dst) == _state(fake, src)
    assert _hidden(fake) == []
    # a stream cut on a new volume: nothing on the target, the source as it was
    other.delete_volume("container", "c1")
    cut = True
    with pytest.raises(ExceptionGroup) as failed:  # the sink's, out of the nursery
        await move(refresh=False)
    assert failed.group_contains(migration.MigrationError, match="zfs receive failed")
    assert not other.volume_exists("container", "c1") and _hidden(fake) == []
    assert pool.list_snapshots("container", "c1") == ["s1", "s2", "s3"]


def test_transport_negotiation() -> None:
    """A source whose pool streams ZFS offers it; a zfs sink takes it, a btrfs or dir sink
    answers rsync (and so does a zfs sink when the source is btrfs, or the instance runs)."""
    snaps = [pb.Snapshot(name="s1", ephemeral=False, architecture=2, stateful=False)]
    offer, transport = make_offer(ZfsDriver.migration_transports, snaps, running=False)
    assert offer.fs == pb.ZFS and transport is TRANSPORTS["ZFS"]
    assert offer.zfsFeatures.migration_header and not offer.HasField("btrfsFeatures")
    for refresh in (False, True):
        answer, chosen = make_answer(offer, ("ZFS",), refresh=refresh, wanted=snaps)
        assert answer.fs == pb.ZFS and chosen is TRANSPORTS["ZFS"]
        assert answer.zfsFeatures.migration_header and answer.refresh == refresh
    for sink in (BtrfsDriver, DirDriver):
        answer, chosen = make_answer(offer, sink.migration_transports, refresh=False,
                                     wanted=snaps)
        assert answer.fs == pb.RSYNC and chosen is None
        assert answer.rsyncFeatures.bidirectional
    btrfs_offer, _ = make_offer(BtrfsDriver.migration_transports, snaps, running=False)
    assert btrfs_offer.fs == pb.BTRFS
    assert make_answer(btrfs_offer, ("ZFS",), refresh=False, wanted=snaps)[0].fs == pb.RSYNC
    running, none = make_offer(("ZFS",), snaps, running=True)
    assert running.fs == pb.RSYNC and none is None and running.criu == pb.NONE
    # a refresh without the migration header cannot be incremental: rsync
    bare = pb.MigrationHeader()
    bare.CopyFrom(offer)
    bare.ClearField("zfsFeatures")
    assert make_answer(bare, ("ZFS",), refresh=True, wanted=snaps)[0].fs == pb.RSYNC
    assert make_answer(bare, ("ZFS",), refresh=False, wanted=snaps)[0].fs == pb.ZFS


@pytest.mark.skipif(not os.path.exists("/dev/zfs"),
                    reason="this kernel has no ZFS (/dev/zfs is missing): real zfs pools "
                           "cannot be tested here")
def test_real_zfs_pool(tmp_path: Path) -> None:
    ZfsDriver.check_host()
    driver = ZfsDriver(Pool("lxfs-test-zfs", "zfs", {"size": "1GiB"}), tmp_path)
    driver.fill_defaults()
    driver.create()
    try:
        driver.create_image_volume(FP, unpack)
        driver.create_volume_from_image("container", "c1", FP)
        driver.create_snapshot("container", "c1", "s1")
        driver.restore_snapshot("container", "c1", "s1")
        driver.delete_volume("container", "c1")
        driver.delete_volume("image", FP)
    finally:
        driver.delete()
