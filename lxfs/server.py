"""The server: lxfs's state and every operation on it, independent of how it is reached.

The filesystem (``lxfs.fs``) and later the REST bridge call these coroutines. The model lives
in memory and is written through to SQLite before a change is visible; blocking work (storage,
liblxc, sqlite) runs in worker threads; operations on one instance are serialised by a lock.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pluggy
import trio

from lxfs import __version__, images
from lxfs.api import Host, cgroup_layout
from lxfs.backups import Backups
from lxfs.config_schema import MAX_SECONDS, Schema, hash_secret, is_true, parse_size
from lxfs.db import Database
from lxfs.devices import DeviceTypes
from lxfs.errors import (
    AlreadyExists,
    Busy,
    InvalidArgument,
    LxfsError,
    NotFound,
    NotSupported,
    OperationFailed,
)
from lxfs.events import EventBus
from lxfs.faults import point
from lxfs.image_servers import ImageServer, ImageSource, progress_text
from lxfs.model import Image, Instance, Profile, Project, Snapshot, now
from lxfs.names import check_line, check_name, escape_controls
from lxfs.projects import (
    DEFAULT,
    DEFAULT_FEATURES,
    FEATURES,
    Forbidden,
    Restrictions,
    check_limits,
    has_feature,
    instance_key,
    profile_key,
    split_instance_key,
    split_profile_key,
    usage,
    validate_project_key,
)
from lxfs.runtime import Runtime
from lxfs.storage import (
    Pool,
    PoolUsage,
    StorageDriver,
    VolumeType,
    human_size,
    root_disk_size,
    transfer_volume,
)

log = logging.getLogger("lxfs")
T = TypeVar("T")

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
#: seconds an image server may stay silent (connecting, answering, sending a file's next
#: bytes) before a pull fails; ``LXFS_IMAGE_SERVER_TIMEOUT`` changes it (tests shorten it)
PULL_TIMEOUT = float(os.environ.get("LXFS_IMAGE_SERVER_TIMEOUT") or 60)
ACTIONS = ("start", "stop", "kill", "restart", "freeze", "unfreeze")


class PluginError(RuntimeError):
    """Plugins that cannot work together (two give the same name), or none that must be."""


def _registered(pm: pluggy.PluginManager, hook: str, key: Callable[[Any], str],
                what: str) -> list[Any]:
    """Everything the plugins return from a registration hook, in registration order;
    two plugins giving the same name (``key``) are refused, naming both."""
    items: list[Any] = []
    owners: dict[str, str] = {}
    for impl in getattr(pm.hook, hook).get_hookimpls():
        for item in impl.function() or []:
            name = key(item)
            if name in owners:
                raise PluginError(f"{what} {name!r} is provided by two plugins: "
                                  f"{owners[name]} and {impl.plugin_name}")
            owners[name] = impl.plugin_name
            items.append(item)
    return items


def validate_instance_name(name: str) -> None:
    """LXD's rules (see ``lxfs.names``)."""
    check_name("instance", name)


async def _nothing_to_settle() -> None:
    return None


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await trio.to_thread.run_sync(fn, *args)


async def process_exit(pid: int) -> None:
    """Return once process ``pid`` has ended (at once if it is gone already), through a
    pidfd: no polling, and a pid reused meanwhile is not mistaken for it."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


def expand(instance: Instance, profiles: dict[str, Profile]) -> None:
    """Fill ``expanded_config``/``expanded_devices``: profiles in order, then the instance's own
    keys; a ``none`` device masks an inherited device of the same name."""
    config: dict[str, str] = {}
    devices: dict[str, dict[str, str]] = {}
    for name in instance.profiles:
        profile = profiles.get(name)
        if profile:
            config.update(profile.config)
            devices.update({k: dict(v) for k, v in profile.devices.items()})
    config.update(instance.config)
    # a device just made (mkdir, no type yet) masks nothing: not an inherited root disk
    devices.update({k: dict(v) for k, v in instance.devices.items() if v})
    instance.expanded_config = config
    instance.expanded_devices = {k: v for k, v in devices.items() if v.get("type") != "none"}


class Server:
    def __init__(self, data_dir: Path, mount: Path, pm: pluggy.PluginManager,
                 access_gid: int = 0) -> None:
        self.data_dir = data_dir
        self.mount = mount
        #: the group whose members may drive lxfs (group ``lxfs``; 0: root alone). Plugins
        #: give it their sockets (mode 0660) as the mount gives it its files.
        self.access_gid = access_gid
        self.pm = pm
        self.hook = pm.hook
        #: what plugins see of the daemon (``lxfs.api``)
        self.api = Host(self)
        self.images_dir = data_dir / "images"
        self.uploads_dir = data_dir / "uploads"
        self.instance_data_dir = data_dir / "instance-data"
        self.db: Database
        try:
            self.schema = Schema(_registered(pm, "lxfs_config_keys", lambda k: k.name,
                                             "configuration key"))
            self.device_types = DeviceTypes(_registered(pm, "lxfs_device_types",
                                                        lambda t: t.name, "device type"))
        except ValueError as exc:  # a plugin declares one of the core's own
            raise PluginError(f"{exc} (by the core and by a plugin)") from None
        self.events = EventBus()
        self.storage_drivers: dict[str, type[StorageDriver]] = {
            d.name: d for d in _registered(pm, "lxfs_storage_drivers", lambda d: d.name,
                                           "storage driver")}
        #: image server drivers by protocol name (``lxfs_image_servers``)
        self.image_servers: dict[str, type[ImageServer]] = {
            d.protocol: d for d in _registered(pm, "lxfs_image_servers", lambda d: d.protocol,
                                               "image server protocol")}
        runtimes = _registered(pm, "lxfs_runtimes", lambda r: r.type, "runtime for type")
        if not runtimes:
            raise PluginError("no runtime plugin is registered: no instance could run (is "
                              "lxfs installed? `pip install -e .` registers the built-in "
                              "plugins through the lxfs entry points)")
        self.runtime: Runtime = runtimes[0](self.api)
        self.pools: dict[str, StorageDriver] = {}
        self.pending_pools: dict[str, Pool] = {}  # made by mkdir, no driver yet
        self.instances: dict[str, Instance] = {}
        self.images: dict[str, Image] = {}
        self.aliases: dict[str, tuple[str, str]] = {}
        self.profiles: dict[str, Profile] = {}
        #: projects (only ``default`` for now): their restrictions
        self.projects: dict[str, Project] = {}
        self.config: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.transient: dict[str, str] = {}
        self._locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        self._image_locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        #: ``POOL/FINGERPRINT`` of the spare volumes being copied (``_prepare_spare``)
        self._spares_under_way: set[str] = set()
        self._running_pids: dict[str, int] = {}  # the init of every running instance
        self._frozen: set[str] = set()
        self._restarting: set[str] = set()
        #: instances a recovered operation (a restore) must start again once open
        self._start_after_repair: list[str] = []
        self._pending: dict[str, tuple[Path, str]] = {}
        #: what a successful operation wants the user to know (shown in the error file)
        self._notices: dict[str, str] = {}
        #: the last image published from each instance (or NAME/SNAP)
        self.published: dict[str, str] = {}
        #: the fingerprint of the last image pulled through the mount's ``images/pull``
        self.last_pulled = ""
        #: the pulls under way: ``SERVER IMAGE`` → their progress (``images/pulling``)
        self.pulls: dict[str, str] = {}
        self.nursery: trio.Nursery | None = None
        #: the mount's cache drops for changes made behind the kernel's back (``lxfs.fs``)
        self.on_change: Callable[[str, str], None] = lambda kind, name: None
        #: waits until the kernel has dropped them (front ends call it before answering)
        self.settle_changes: Callable[[], Awaitable[None]] = _nothing_to_settle
        self._config_changed = trio.Event()
        #: instance backups and their imports (``lxfs.backups``)
        self.backups = Backups(self)

    # --- startup --------------------------------------------------------------------------

    async def open(self, nursery: trio.Nursery) -> None:
        """Load the state, make the defaults on first start, repair what a crash left,
        reattach running instances and start the autostart ones."""
        self.nursery = nursery
        nursery.start_soon(self.backups.prune_loop)  # expired backups, hourly as LXD
        await in_thread(self._open_sync)
        for services in self.hook.lxfs_services(host=self.api):
            for service in services:
                await nursery.start(service)
        autostart: list[Instance] = []
        for inst in list(self.instances.values()):
            if inst.storage_state == "ready":
                try:
                    state = await in_thread(self.runtime.state, inst)
                except (LxfsError, OSError, RuntimeError) as exc:
                    log.error("cannot ask the runtime about %s: %s", inst.name, exc)
                    self.set_error(inst.name, f"its state is unknown at start: {exc}")
                    continue
                if state in ("RUNNING", "FROZEN"):
                    pid = await in_thread(self.runtime.pid, inst)
                    log.info("reattached %s (%s, pid %d)", inst.name, state, pid)
                    if state == "FROZEN":
                        self._frozen.add(inst.name)
                    self._watch(inst.name, pid)
                elif is_true(inst.expanded_config.get("boot.autostart")):
                    autostart.append(inst)
        autostart += [self.instances[n] for n in self._start_after_repair
                      if n in self.instances and self.instances[n] not in autostart
                      and n not in self._running_pids]
        if autostart:
            autostart.sort(key=lambda i: -int(i.expanded_config.get("boot.autostart.priority")
                                               or 0))
            nursery.start_soon(self._autostart, [i.name for i in autostart])

    def _open_sync(self) -> None:
        try:
            for d, mode in ((self.data_dir, 0o711), (self.instance_data_dir, 0o711),
                            (self.data_dir / "storage-pools", 0o711), (self.images_dir, 0o700)):
                d.mkdir(parents=True, exist_ok=True)
                os.chmod(d, mode)  # unprivileged containers traverse the first three
            _detach_mounts_under(self.uploads_dir)  # a publish's bind, after a crash
            shutil.rmtree(self.uploads_dir, ignore_errors=True)
            self.uploads_dir.mkdir(mode=0o700)
        except OSError as exc:  # full or read-only: serve what can be read
            log.error("the data directory cannot be written (%s): serving reads; writes "
                      "will be refused until it can", exc.strerror)
        self.load()
        try:
            self._repair()
        except (LxfsError, OSError) as exc:
            log.error("repair postponed to the next start: %s", exc)
            self.errors[""] = f"the daemon could not repair its state at start: {exc}"

    def load(self, first_start: bool = True) -> None:
        """Read the state from the database and mount the pools; on a first start (and
        every start of the daemon) make the default pool and profile when missing.
        ``lxfsd --check`` loads with ``first_start=False``: it changes nothing."""
        self.db = Database(self.data_dir / "lxfs.db")
        self.config = self.db.load_server_config()
        self.profiles = {k: Profile.from_record(v) for k, v in self.db.load("profiles").items()}
        self.projects = {k: Project.from_record(v) for k, v in self.db.load("projects").items()}
        self.projects.setdefault("default", Project("default", "Default lxfs project"))
        self.images = {k: Image.from_record(v) for k, v in self.db.load("images").items()}
        self.aliases = self.db.load_aliases()
        self.instances = {k: Instance.from_record(v) for k, v in self.db.load("instances").items()}
        pools = self.db.load("pools")
        if not pools and first_start:
            pools = self._make_default_pool()
        for name, rec in pools.items():
            pool = Pool(**rec)
            if not pool.driver:
                self.pending_pools[name] = pool
                continue
            cls = self.storage_drivers.get(pool.driver)
            if cls is None:
                log.error("pool %s: no plugin provides storage driver %r", name, pool.driver)
                continue
            driver = cls(pool, self.data_dir)
            try:
                driver.mount()
            except (LxfsError, OSError) as exc:
                log.error("pool %s (%s) cannot be mounted: %s", name, pool.driver, exc)
                continue
            self.pools[name] = driver
        if "default" not in self.profiles and first_start:
            profile = Profile("default", "Default lxfs profile", {},
                              {"root": {"type": "disk", "path": "/", "pool": "default"}})
            self.db.put("profiles", "default", profile.to_record())
            self.profiles["default"] = profile
        for inst in self.instances.values():
            expand(inst, self.profiles)
        self._call_each("lxfs_startup")

    def _make_default_pool(self) -> dict[str, dict[str, Any]]:
        """The ``default`` pool of a first start, by the first driver that can make one on a
        plain directory of the data directory (``StorageDriver.default_pool``)."""
        cls = next((c for c in self.storage_drivers.values() if c.default_pool), None)
        if cls is None:
            message = ("no storage driver can make the default pool (none of the registered "
                       "drivers declares default_pool; lxfs's own is the storage_dir plugin): "
                       "create a pool named 'default' (mkdir storage-pools/default, then write "
                       "its driver) before creating instances")
            log.error("%s", message)
            self.errors[""] = message
            return {}
        pool = Pool("default", cls.name, {}, "Default storage pool")
        driver = cls(pool, self.data_dir)
        driver.fill_defaults()
        driver.create()
        self.db.put("pools", pool.name, vars(pool))
        return {pool.name: vars(pool)}

    def _repair(self) -> None:
        """Finish or undo what a crash interrupted: each pool repairs its own leftovers,
        each operation still in the journal is finished or undone, and then no volume is
        left without its record, no record without its volume."""
        for pool in self.pools.values():
            try:
                pool.recover()
            except (LxfsError, OSError, subprocess.CalledProcessError) as exc:
                log.error("pool %s: cannot repair its leftovers: %s", pool.pool.name, exc)
        self._recover_journal()
        for inst in list(self.instances.values()):
            if inst.storage_state in ("creating", "deleting"):
                pool = self.pools.get(inst.root_pool())
                if pool:
                    pool.delete_volume("container", inst.name)
                log.warning("%s the interrupted %s of %s",
                            "finishing" if inst.storage_state == "deleting" else "undoing",
                            "deletion" if inst.storage_state == "deleting" else "creation",
                            inst.name)
                self._forget_instance(inst)
        for pool in self.pools.values():
            for vol in pool.list_volumes("container"):
                inst = self.instances.get(vol)
                if inst is None or inst.storage_state != "ready" or inst.root_pool() != \
                        pool.pool.name:
                    log.warning("pool %s: removing orphan volume %s", pool.pool.name, vol)
                    pool.delete_volume("container", vol)
                    continue
                stored = set(pool.list_snapshots("container", vol))
                for snap in sorted(stored - set(inst.snapshots)):
                    log.warning("pool %s: removing orphan snapshot %s/%s", pool.pool.name,
                                vol, snap)
                    pool.delete_snapshot("container", vol, snap)
                lost = sorted(set(inst.snapshots) - stored)
                if lost:
                    log.error("instance %s: snapshots %s have no files: forgetting them",
                              vol, ", ".join(lost))
                    for snap in lost:
                        del inst.snapshots[snap]
                    self.db.put("instances", inst.name, inst.to_record())
            for fp in pool.list_volumes("image"):
                if fp not in self.images:
                    pool.delete_volume("image", fp)
        self.backups.repair()
        self.backups.prune_expired()
        for path in self.images_dir.iterdir():
            if path.name.split(".")[0] not in self.images:
                log.warning("removing orphan image file %s", path.name)
                path.unlink()

    def _forget_instance(self, inst: Instance) -> None:
        """Remove an instance's record and what the runtime and plugins keep for it."""
        self.runtime.cleanup(inst)
        shutil.rmtree(self.instance_data_dir / inst.name, ignore_errors=True)
        self.db.delete("instances", inst.name)
        self.instances.pop(inst.name, None)

    def _recover_journal(self) -> None:
        """Finish or undo every operation a crash interrupted (``_journal``), oldest first."""
        for op_id, kind, target, data in self.db.journal_pending():
            log.warning("recovering the interrupted %s of %s", kind, target)
            try:
                getattr(self, "_recover_" + kind.replace("-", "_"))(target, data)
            except Exception:  # noqa: BLE001 - one failed recovery must not stop the start
                log.exception("cannot recover the interrupted %s of %s", kind, target)
            self.db.journal_end(op_id)

    def _recover_create(self, name: str, data: dict[str, Any]) -> None:
        inst = self.instances.get(name)
        if inst is not None and inst.storage_state == "creating":
            pool = self.pools.get(data.get("pool", ""))
            if pool is not None:
                pool.delete_volume("container", name)
            self._forget_instance(inst)  # the launch it belonged to is gone as a whole

    _recover_copy = _recover_create
    _recover_import = _recover_create  # a backup's import (``lxfs.backups``)

    def _recover_snapshot(self, name: str, data: dict[str, Any]) -> None:
        inst = self.instances.get(name)
        if inst is not None and data["snapshot"] not in inst.snapshots:
            self.pool_of(inst).delete_snapshot("container", name, data["snapshot"])

    def _recover_snapshot_delete(self, name: str, data: dict[str, Any]) -> None:
        inst = self.instances.get(name)
        if inst is None:
            return
        if inst.snapshots.pop(data["snapshot"], None) is not None:
            self.db.put("instances", name, inst.to_record())
        self.pool_of(inst).delete_snapshot("container", name, data["snapshot"])

    def _recover_snapshot_rename(self, name: str, data: dict[str, Any]) -> None:
        inst = self.instances.get(name)
        if inst is None or data["new"] in inst.snapshots:
            return
        pool = self.pool_of(inst)
        stored = pool.list_snapshots("container", name)
        if data["new"] in stored and data["old"] not in stored:
            pool.rename_snapshot("container", name, data["new"], data["old"])

    def _recover_restore(self, name: str, data: dict[str, Any]) -> None:
        inst = self.instances.get(name)
        if inst is None or data["snapshot"] not in inst.snapshots:
            return
        if self.runtime.state(inst) != "STOPPED":
            return  # restored and started again: only the journal's end was missing
        self._restore_files_and_record(inst, data["snapshot"])
        if data.get("was_running"):
            self._start_after_repair.append(name)

    def _recover_rename(self, old: str, data: dict[str, Any]) -> None:
        new = data["new"]
        if new in self.instances:
            self._rename_files(self.instances[new], old, new)
        elif old in self.instances:
            self._rename_files(self.instances[old], new, old)

    def _recover_pool_create(self, name: str, data: dict[str, Any]) -> None:
        if name not in self.pools and name not in self.pending_pools:
            self._delete_pool_store(data["pool"])

    def _recover_pool_delete(self, name: str, data: dict[str, Any]) -> None:
        if name not in self.pools:
            self._delete_pool_store(data["pool"])

    def _delete_pool_store(self, record: dict[str, Any]) -> None:
        cls = self.storage_drivers.get(record.get("driver", ""))
        if cls is not None and not cls.unavailable:
            cls(Pool(**record), self.data_dir).delete()

    def _recover_volume_copy(self, name: str, data: dict[str, Any]) -> None:
        pool = self.pools.get(data.get("pool", ""))
        if pool is not None:
            pool.delete_volume("custom", name)

    async def _autostart(self, names: list[str]) -> None:
        """Start instances by ``boot.autostart.priority`` (highest first), waiting
        ``boot.autostart.delay`` seconds after each."""
        for name in names:
            try:
                await self.change_state(name, "start")
            except (LxfsError, OSError) as exc:
                self.set_error(name, f"autostart failed: {exc}")
                continue
            except Exception:
                log.exception("autostart of %s failed", name)
                continue
            inst = self.instances.get(name)
            delay = int(inst.expanded_config.get("boot.autostart.delay") or 0) if inst else 0
            await trio.sleep(delay)

    def _call_each(self, hook: str) -> None:
        """Call every plugin's implementation of a startup/shutdown hook; one plugin's
        failure is logged and does not keep the others (or the daemon) from running."""
        for impl in getattr(self.hook, hook).get_hookimpls():
            try:
                impl.function(host=self.api)
            except Exception:
                log.exception("plugin %s failed in %s", impl.plugin_name, hook)

    async def close(self) -> None:
        await in_thread(self._call_each, "lxfs_shutdown")
        self.db.close()

    # --- helpers --------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        env = {
            "server": "lxfs",
            "server_version": __version__,
            "server_pid": str(os.getpid()),
            "data_dir": str(self.data_dir),
            "mount": str(self.mount),
            "kernel": platform.system(),
            "kernel_version": platform.release(),
            "architecture": platform.machine(),
            "storage_drivers": " ".join(sorted(n for n, c in self.storage_drivers.items()
                                               if not c.unavailable)),
            "cgroup_layout": cgroup_layout(),
            **self.runtime.facts(),
        }
        for extra in self.hook.lxfs_environment():
            env.update({k: str(v) for k, v in extra.items()})
        return env

    def instance_url(self, key: str, rest: str = "") -> str:
        """An instance's REST URL (``/1.0/instances/c1?project=p1``), for events."""
        project, name = split_instance_key(key)
        if project == DEFAULT:
            return f"/1.0/instances/{key}{rest}"
        return f"/1.0/instances/{name}{rest}?project={project}"

    def _forget_entry(self, key: str) -> None:
        """Tell the mount an instance's entry is gone (its project's ``instances/``)."""
        project, name = split_instance_key(key)
        if project == DEFAULT:
            self.on_change("instance-deleted", key)
        else:
            self.on_change("entry-deleted", f"projects/{project}/instances/{name}")

    def instance(self, name: str) -> Instance:
        inst = self.instances.get(name)
        if inst is None:
            raise NotFound(f"instance {name!r} not found")
        return inst

    def pool_of(self, inst: Instance) -> StorageDriver:
        name = inst.root_pool()
        if not name:
            raise InvalidArgument(
                f"instance {inst.name} has no root disk device (a disk with path=/ and pool=...)")
        pool = self.pools.get(name)
        if pool is None:
            raise NotFound(f"storage pool {name!r} of instance {inst.name} not found")
        return pool

    def running_pid(self, name: str) -> int:
        """The init PID of a running instance from the daemon's record (0 otherwise)."""
        return self._running_pids.get(name, 0)

    def plugin_instance_dir(self, name: str, plugin: str) -> Path:
        """``DATA_DIR/instance-data/NAME/PLUGIN``: a plugin's files for one instance."""
        if not plugin or "/" in plugin or plugin.startswith("."):
            raise ValueError(f"invalid plugin name {plugin!r}")
        base = self.instance_data_dir / name
        base.mkdir(mode=0o711, exist_ok=True)
        path = base / plugin
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def set_volatile(self, inst: Instance, key: str, value: str | None) -> None:
        """Set or remove a ``volatile.*`` key: the database first, memory after (one
        transaction; nothing changes when it fails). See ``Host.set_volatile``."""
        if not key.startswith("volatile."):
            raise InvalidArgument(f"{key}: only volatile.* keys are set this way")
        if value is not None:
            self.schema.validate_instance_key(key, value, internal=True)
        config = dict(inst.config)
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
        record = inst.to_record()
        record["config"] = config
        self.db.put("instances", inst.name, record)
        inst.config = config
        if value is None:
            inst.expanded_config.pop(key, None)
        else:
            inst.expanded_config[key] = value

    def rootfs(self, inst: Instance) -> Path:
        return self.pool_of(inst).volume_path("container", inst.name) / "rootfs"

    def snapshot_rootfs(self, inst: Instance, snapshot: str) -> Path:
        return self.pool_of(inst).snapshot_path("container", inst.name, snapshot) / "rootfs"

    async def _save(self, inst: Instance) -> None:
        await in_thread(self.db.put, "instances", inst.name, inst.to_record())

    def set_error(self, scope: str, message: str) -> None:
        message = escape_controls(message)  # one line: nothing injected into the log
        self.errors[scope] = message
        if message:
            log.error("%s: %s", scope or "lxfs", message)

    @contextlib.asynccontextmanager
    async def _journal(self, kind: str, target: str, **data: Any) -> AsyncIterator[None]:
        """Record an operation's intent before its first step and remove it after its last
        (also when it fails and has undone itself): what a crash interrupts stays in the
        journal for the next start to finish or undo (``_recover_journal``)."""
        op_id = await in_thread(self.db.journal_begin, kind, target, data)
        try:
            yield
        finally:
            with trio.CancelScope(shield=True):
                await in_thread(self.db.journal_end, op_id)

    async def guarded(self, scope: str, op: Awaitable[T]) -> T:
        """Run an operation, recording its error (or success) for ``scope``'s error file."""
        try:
            result = await op
        except LxfsError as exc:
            self.set_error(scope, exc.message)
            raise
        except OSError as exc:
            self.set_error(scope, f"{exc.strerror or exc}" + (f": {exc.filename}"
                                                               if exc.filename else ""))
            raise
        except Exception as exc:
            log.exception("unexpected error in %s", scope or "lxfs")
            self.set_error(scope, f"internal error: {exc!r}")
            raise OperationFailed(f"internal error: {exc!r}") from exc
        self.errors[scope] = self._notices.pop(scope, "")
        return result

    # --- instances ------------------------------------------------------------------------

    async def create_instance(self, name: str, *, profiles: list[str] | None = None,
                              config: dict[str, str] | None = None, ephemeral: bool = False,
                              description: str = "",
                              devices: dict[str, dict[str, str]] | None = None,
                              project: str = DEFAULT, staged: bool = False) -> Instance:
        """Create an instance record (no root filesystem yet), with its own ``devices``
        (REST's create) checked whole first. ``name`` is the name within ``project`` and
        ``profiles`` the project's profile names; the record is keyed by the host-level
        name (``instance_key``). ``staged``: the mount's ``mkdir``, whose keys come next
        (the limits that need them are checked at start)."""
        validate_instance_name(name)
        self.project(project)
        key = instance_key(project, name)
        if key in self.instances:
            where = "" if project == DEFAULT else f" in project {project!r}"
            raise AlreadyExists(f"instance {name!r} already exists{where}")
        profiles = self.profile_keys(project, ["default"] if profiles is None else profiles)
        for key_, value in (config or {}).items():
            self.schema.validate_instance_key(key_, value)
        own_devices = self._checked_devices(devices or {})
        t = now()
        inst = Instance(name=key, architecture=platform.machine(), created_at=t,
                        ephemeral=ephemeral, description=description, config=dict(config or {}),
                        devices=own_devices, profiles=list(profiles), project=project)
        expand(inst, self.profiles)
        restrictions = self.restrictions(project)
        restrictions.check_config(f"instance {name}", inst.expanded_config, instance=True)
        restrictions.check_devices(f"instance {name}", inst.expanded_devices)
        self.check_project_limits(project, inst, complete=not staged)
        name = key
        self.instances[name] = inst
        try:
            await self._save(inst)
        except BaseException:
            del self.instances[name]
            raise
        self.errors[name] = ""
        self.events.lifecycle("instance-created", self.instance_url(name), type="container")
        return inst

    def resolve_image(self, ref: str) -> Image:
        """An alias, a fingerprint, or a unique fingerprint prefix."""
        ref = ref.strip()
        if ref.startswith("local:"):
            ref = ref[len("local:"):]
        if ref in self.aliases:
            return self.images[self.aliases[ref][0]]
        if ref in self.images:
            return self.images[ref]
        if re.fullmatch(r"[0-9a-f]{1,63}", ref):
            matches = [fp for fp in self.images if fp.startswith(ref)]
            if len(matches) == 1:
                return self.images[matches[0]]
            if len(matches) > 1:
                raise InvalidArgument(f"fingerprint prefix {ref!r} is ambiguous")
        if ":" in ref:
            raise NotFound(f"image {ref!r} not found: a remote image is named by a remote "
                           "reference (PROTOCOL URL IMAGE, e.g. `simplestreams "
                           "https://mirror.example busybox`)")
        raise NotFound(f"image {ref!r} not found (no such alias or fingerprint)")

    async def set_source(self, name: str, ref: str) -> None:
        """Create the instance's root filesystem from an image; returns when it is done."""
        inst = self.instance(name)
        self.check_project_limits(inst.project, inst)  # its keys are all there now
        if ref.strip().startswith(("instances/", "projects/")):
            return await self.copy_instance(name, ref)
        async with self._locks[name]:
            if inst.storage_state:
                raise AlreadyExists(
                    f"instance {name} was already created from image {inst.source or '?'}")
            remote = self.parse_remote_ref(ref)
            progress_key = None
            if remote is not None:  # pulled into the cache, as LXD's launch of REMOTE:IMAGE
                image = await self.pull_image(*remote, cached=True,
                                              auto_update=self.auto_update_cached())
                progress_key = f"{remote[0].server} {remote[1].strip()}"  # as the pull's
            else:
                image = self.resolve_image(ref)
            if image.architecture not in images.host_architectures():
                raise InvalidArgument(  # as LXD: the launch is refused, the import was not
                    f"image {image.fingerprint[:12]} is for {image.architecture}: this host runs "
                    f"{', '.join(images.host_architectures())} (requested architecture isn't "
                    "supported by this host)")
            pool = self.pool_of(inst)
            await in_thread(lambda: self.hook.lxfs_instance_pre_create(host=self.api,
                                                                       instance=inst))
            # A pool whose volumes are copies of its image volume (dir) without one yet
            # unpacks the image straight into the new volume, as LXD's dir driver does: one
            # unpack on the launch's path, not an unpack and then a copy. The image volume
            # (and a spare copy) are made afterwards, off the critical path (_spare_task).
            direct = pool.spare_volumes and not await in_thread(
                pool.volume_exists, "image", image.fingerprint)
            if not direct:
                await self._ensure_image_volume(pool, image, progress_key)
            await self._image_used(image)
            async with self._journal("create", name, pool=pool.pool.name):
                inst.storage_state, inst.source = "creating", image.fingerprint
                await self._save(inst)
                point("create.after-intent")
                self.transient[name] = "CREATING"
                try:
                    if direct:
                        log.info("unpacking image %s into the volume of %s (pool %s)",
                                 image.fingerprint[:12], name, pool.pool.name)
                        await in_thread(pool.create_volume, "container", name)
                        await self._unpack(image, pool.volume_path("container", name),
                                           progress_key)
                    else:
                        await in_thread(pool.create_volume_from_image, "container", name,
                                        image.fingerprint)
                    point("create.after-volume")
                    volume = pool.volume_path("container", name)
                    await in_thread(images.render_templates, volume, "create",
                                    self._template_context(inst))
                    point("create.after-templates")
                    await self._apply_root_quota(inst, pool, tell=True)
                except BaseException:
                    await self._undo_root_volume(inst, pool)
                    raise
                inst.architecture = image.architecture or inst.architecture
                for key, value in image.properties.items():
                    inst.config[f"image.{key}"] = value
                inst.storage_state = "ready"
                await self._save(inst)
                point("create.after-ready")
                expand(inst, self.profiles)
                self.transient.pop(name, None)
            if pool.spare_volumes:
                self._prepare_spare(pool, image.fingerprint)
        await in_thread(lambda: self.hook.lxfs_instance_post_create(host=self.api, instance=inst))

    def _prepare_spare(self, pool: StorageDriver, fp: str) -> None:
        """Have ``pool`` copy image ``fp`` ahead for the next creation, in a task of the
        server's nursery (one at a time per pool and image)."""
        key = f"{pool.pool.name}/{fp}"
        if self.nursery is None or key in self._spares_under_way:
            return
        self._spares_under_way.add(key)
        self.nursery.start_soon(self._spare_task, pool, fp, key)

    async def _spare_task(self, pool: StorageDriver, fp: str, key: str) -> None:
        """Unpack the image volume when a launch went without it (at a lower priority, in a
        process of its own), then copy the spare."""
        try:
            async with self._image_locks[fp]:  # the image's deletion waits for the copy
                if fp in self.images:
                    await self._ensure_image_volume(pool, self.images[fp],
                                                    low_priority=True)
                    await in_thread(pool.prepare_spare, fp)
        except Exception as exc:  # only speed is lost: the next creation copies
            log.warning("cannot prepare a spare volume of image %s in pool %s: %s",
                        fp[:12], pool.pool.name, exc)
        finally:
            self._spares_under_way.discard(key)

    async def copy_instance(self, name: str, ref: str) -> None:
        """Make ``name`` a copy of ``instances/SRC`` or ``instances/SRC/snapshots/SNAP``
        (`` --instance-only``: without snapshots): root filesystem, configuration (not
        ``volatile.*``), devices and profiles; keys already set on ``name`` win. SRC is of
        ``name``'s project; ``projects/P/instances/SRC...`` names one of project P."""
        words = ref.split()
        instance_only = "--instance-only" in words[1:]
        if any(w != "--instance-only" for w in words[1:]):
            raise InvalidArgument(f"unknown copy option in {ref.strip()!r}")
        parts = words[0].strip("/").split("/")
        project = self.instance(name).project
        if len(parts) > 2 and parts[0] == "projects" and parts[2] == "instances":
            project, parts = parts[1], parts[2:]
            self.project(project)
        if len(parts) == 2:
            src_name, snapshot = instance_key(project, parts[1]), ""
        elif len(parts) == 4 and parts[2] == "snapshots":
            src_name, snapshot = instance_key(project, parts[1]), parts[3]
        else:
            raise InvalidArgument(f"{words[0]!r}: use instances/NAME or "
                                  "instances/NAME/snapshots/SNAP")
        src = self.instance(src_name)
        if src_name == name:
            raise InvalidArgument("an instance cannot be copied onto itself")
        if src.storage_state != "ready":
            raise NotFound(f"instance {src_name} has no root filesystem to copy")
        if snapshot and snapshot not in src.snapshots:
            raise NotFound(f"snapshot {src_name}/{snapshot} not found")
        inst = self.instance(name)
        async with self._locks[name]:
            if inst.storage_state:
                raise AlreadyExists(f"instance {name} already has a root filesystem")
            origin = src.snapshots[snapshot] if snapshot else src
            own_config = dict(inst.config)
            inst.config = {k: v for k, v in origin.config.items()
                           if not k.startswith("volatile.")} | own_config
            inst.devices = {k: dict(v) for k, v in origin.devices.items()} | inst.devices
            if inst.profiles == self.profile_keys(inst.project, ["default"]):
                owner = self.profiles_project(inst.project)  # the same names, in its project
                inst.profiles = [k for k in (profile_key(owner, split_profile_key(p)[1])
                                             for p in origin.profiles) if k in self.profiles]
            inst.architecture, inst.description = src.architecture, src.description
            expand(inst, self.profiles)
            src_pool, pool = self.pool_of(src), self.pool_of(inst)
            with_snapshots = not instance_only and not snapshot
            async with self._journal("copy", name, pool=pool.pool.name):
                inst.storage_state, inst.source = "creating", words[0]
                await self._save(inst)
                point("copy.after-intent")
                self.transient[name] = "CREATING"
                try:
                    if src_pool is not pool:
                        if snapshot:
                            raise NotSupported("copying a snapshot to another pool is not "
                                               "supported yet: copy the instance")
                        snaps = sorted(src.snapshots, key=lambda n: src.snapshots[n].created_at)
                        await in_thread(transfer_volume, src_pool, src_name, pool, name,
                                        snaps if with_snapshots else [])
                    elif snapshot:
                        await in_thread(pool.copy_snapshot_to_volume, "container", src_name,
                                        snapshot, name)
                    else:
                        await in_thread(pool.copy_volume, "container", src_name, name,
                                        with_snapshots)
                    point("copy.after-volume")
                    await in_thread(images.render_templates, pool.volume_path("container", name),
                                    "copy", self._template_context(inst))
                    await self._apply_root_quota(inst, pool, tell=True)
                except BaseException:
                    await self._undo_root_volume(inst, pool)
                    raise
                if with_snapshots:
                    inst.snapshots = {k: Snapshot(v.name, v.created_at, dict(v.config),
                                                  {d: dict(x) for d, x in v.devices.items()},
                                                  list(v.profiles))
                                      for k, v in src.snapshots.items()}
                inst.storage_state = "ready"
                await self._save(inst)
                point("copy.after-ready")
            self.transient.pop(name, None)
        await in_thread(lambda: self.hook.lxfs_instance_post_create(host=self.api, instance=inst))
        self.events.lifecycle("instance-created", self.instance_url(name),
                              copied_from=f"/1.0/{words[0]}")

    async def receive_instance(
            self, name: str,
            receive: Callable[[StorageDriver], Awaitable[list[Snapshot]]]) -> None:
        """Fill the new instance ``name``'s root volume from elsewhere (a migration from
        another host): ``receive(pool)`` makes the volume and its snapshots in ``name``'s
        pool and returns the snapshots' records. Journaled as a copy: a failure, a
        cancellation or a crash leaves no volume (the caller drops the record)."""
        inst = self.instance(name)
        async with self._locks[name]:
            if inst.storage_state:
                raise AlreadyExists(f"instance {name} already has a root filesystem")
            pool = self.pool_of(inst)
            async with self._journal("copy", name, pool=pool.pool.name):
                inst.storage_state, inst.source = "creating", "migration"
                await self._save(inst)
                self.transient[name] = "CREATING"
                try:
                    snapshots = await receive(pool)
                    await self._apply_root_quota(inst, pool, tell=True)
                except BaseException:
                    await self._undo_root_volume(inst, pool)
                    raise
                inst.snapshots = {s.name: s for s in snapshots}
                inst.storage_state = "ready"
                await self._save(inst)
            self.transient.pop(name, None)
        await in_thread(lambda: self.hook.lxfs_instance_post_create(host=self.api, instance=inst))
        self.events.lifecycle("instance-created", self.instance_url(name), migrated=True)

    async def refresh_instance(self, name: str,
                               receive: Callable[[], Awaitable[list[Snapshot]]]) -> None:
        """Bring a stopped instance's root volume up to date from elsewhere (a migration's
        refresh): ``receive()`` updates the volume in place and returns the snapshots'
        records the instance has afterwards."""
        inst = self.instance(name)
        async with self._locks[name]:
            if inst.storage_state != "ready":
                raise InvalidArgument(f"instance {name} has no root filesystem to refresh")
            if self.running_pid(name) > 0:
                raise InvalidArgument("Cannot refresh a running instance")
            snapshots = await receive()
            inst.snapshots = {s.name: s for s in snapshots}
            await self._save(inst)

    async def publish(self, name: str, snapshot: str, request: str) -> Image:
        """Build an LXD image from an instance (or snapshot) and import it."""
        inst = self.instance(name)
        aliases: list[str] = []
        public = force = False
        compression = "gzip"  # as LXD: xz packs smaller but is 5x slower here
        properties = {k[len("image."):]: v for k, v in inst.expanded_config.items()
                      if k.startswith("image.")}
        try:
            tokens = shlex.split(request)
        except ValueError as exc:
            raise InvalidArgument(f"publish: {exc}") from None
        for token in tokens:
            key, sep, value = token.partition("=")
            if not sep:
                raise InvalidArgument(f"publish: expected KEY=VALUE, got {token!r}")
            if key == "alias":
                aliases.append(value)
            elif key == "public":
                public = is_true(value)
            elif key == "force":
                force = is_true(value)
            elif key == "compression":
                if value not in ("xz", "gzip", "bzip2", "zstd", "none"):
                    raise InvalidArgument(f"publish: unknown compression {value!r}")
                compression = value
            else:
                properties[key] = value
        for alias in aliases:
            if alias in self.aliases:
                raise AlreadyExists(f"alias {alias!r} already exists")
        if inst.storage_state != "ready":
            raise NotFound(f"instance {name} has no root filesystem")
        if snapshot and snapshot not in inst.snapshots:
            raise NotFound(f"snapshot {name}/{snapshot} not found")
        async with self._locks[name]:
            if not snapshot and not force:
                state = await in_thread(self.runtime.state, inst)
                if state != "STOPPED":
                    raise Busy(f"instance {name} is {state.lower()}: stop it first, or "
                               "publish with force=true")
            pool = self.pool_of(inst)
            volume = (pool.snapshot_path("container", name, snapshot) if snapshot
                      else pool.volume_path("container", name))
            out = self.new_upload_path()
            point("publish.after-intent")
            try:
                info = await in_thread(images.publish_volume, volume, out, inst.architecture,
                                       properties, compression)
            except BaseException:
                out.unlink(missing_ok=True)
                raise
            point("publish.after-tarball")
        suffix = {"gzip": ".gz", "xz": ".xz", "bzip2": ".bz2", "zstd": ".zst"}
        image = await self._register_image(out, None,
                                           f"{name}.tar{suffix.get(compression, '')}",
                                           known=info)
        point("publish.after-register")
        if public:
            await self.set_image_field(image.fingerprint, "public", "true")
        for alias in aliases:
            await self.create_alias(alias, image.fingerprint)
        self.published[name if not snapshot else f"{name}/{snapshot}"] = image.fingerprint
        return image

    async def usage(self, name: str) -> dict[str, int]:
        """Processes, memory, memory peak and CPU time of a running instance."""
        return (await self.usages([name])).get(name, {})

    async def usages(self, names: list[str]) -> dict[str, dict[str, int]]:
        """``usage`` of many instances in one thread trip (a listing would otherwise queue a
        trip per instance behind the event loop's hold of the GIL); the stopped ones, and
        those unknown, are left out."""
        running = [self.instances[n] for n in names
                   if n in self.instances and n in self._running_pids  # the daemon's record
                   and self.instances[n].storage_state == "ready"]
        if not running:
            return {}

        def read() -> dict[str, dict[str, int]]:
            return {inst.name: self.runtime.usage(inst) for inst in running}

        return await in_thread(read)

    async def disk_usage(self, name: str) -> int:
        inst = self.instance(name)
        if inst.storage_state != "ready":
            return 0
        return await in_thread(self.pool_of(inst).volume_usage, "container", name)

    async def _ensure_image_volume(self, pool: StorageDriver, image: Image,
                                   progress_key: str | None = None,
                                   low_priority: bool = False) -> None:
        """Unpack ``image`` into ``pool`` unless it is there (``low_priority``: niced, in a
        process of its own, for work nobody waits for now)."""
        fp = image.fingerprint
        async with self._image_locks[f"{pool.pool.name}/{fp}"]:
            if await in_thread(pool.volume_exists, "image", fp):
                return
            log.info("unpacking image %s into pool %s", fp[:12], pool.pool.name)
            if low_priority:
                path, rootfs = self._image_files(image)
                limit = self._unpacked_limit()
                try:
                    await in_thread(pool.create_image_volume, fp, lambda dest:
                                    images.unpack_image_low_priority(path, rootfs, dest, limit))
                except images.ImageError as exc:
                    raise InvalidArgument(f"image {fp[:12]}: {exc}") from None
                return
            await self._unpack(image, None, progress_key,
                               lambda unpack: pool.create_image_volume(fp, unpack))

    def _image_files(self, image: Image) -> tuple[Path, Path | None]:
        """The image's file, and its rootfs file when it is a split image."""
        fp = image.fingerprint
        return (self.images_dir / fp,
                self.images_dir / f"{fp}.rootfs" if image.split else None)

    async def _unpack(self, image: Image, dest: Path | None, progress_key: str | None = None,
                      into: Callable[[Callable[[Path], None]], None] | None = None) -> None:
        """Unpack ``image`` into ``dest`` (see :func:`images.unpack_image`), or through
        ``into(unpack)``, which calls ``unpack(dest)`` (a driver's ``create_image_volume``).
        Its progress (``Unpack: 45%``, LXD's words) shows in ``pulls`` under
        ``progress_key`` (a pull's: the launch that pulled it follows one line), else
        ``unpack FINGERPRINT``. The unpack is where the image's content is checked (the
        member rules, ``images.max_unpacked_size``): a hostile image is refused here, with
        nothing of it left in place."""
        fp = image.fingerprint
        path, rootfs = self._image_files(image)
        limit = self._unpacked_limit()
        key = progress_key or f"unpack {fp[:12]}"
        token = trio.lowlevel.current_trio_token()

        def progress(done: int, total: int) -> None:  # in the worker thread
            text = f"Unpack: {done * 100 // total if total else 100}%"
            trio.from_thread.run_sync(self.pulls.__setitem__, key, text, trio_token=token)

        def unpack(target: Path) -> None:
            images.unpack_image(path, rootfs, target, progress, limit)

        try:
            if into is not None:
                await in_thread(into, unpack)
            else:
                assert dest is not None
                await in_thread(unpack, dest)
        except images.ImageError as exc:  # a user's error, not an internal one
            raise InvalidArgument(f"image {fp[:12]}: {exc}") from None
        finally:
            self.pulls.pop(key, None)

    async def state(self, name: str) -> str:
        """The state as the daemon follows it (no runtime query: a ``state`` read is the most
        frequent request). Every start registers its init, a pidfd notices its end, and
        freeze/unfreeze go through ``change_state``; the runtime is asked at start-up."""
        inst = self.instance(name)
        if name in self.transient:
            return self.transient[name]
        if inst.storage_state != "ready" or name not in self._running_pids:
            return "STOPPED"
        return "FROZEN" if name in self._frozen else "RUNNING"

    async def pid(self, name: str) -> int:
        self.instance(name)
        return self._running_pids.get(name, 0)

    def pid_now(self, name: str) -> int:
        """``pid`` without a checkpoint: 0 for a stopped or unknown instance."""
        return self._running_pids.get(name, 0)

    async def change_state(self, name: str, action: str) -> None:
        """Run a state action; return when the transition is complete."""
        action, timeout = _normalise_action(action)
        force = action == "kill"
        inst = self.instance(name)
        stopped_pid = 0
        async with self._locks[name]:
            if inst.storage_state != "ready":
                raise NotFound(f"instance {name} has no root filesystem yet: write an image "
                               "alias or fingerprint to its source file first", errno.ENOENT)
            state = await in_thread(self.runtime.state, inst)
            _check_transition(name, action, state)
            if action == "start":
                await self._start(inst)
            elif action in ("stop", "kill"):
                stopped_pid = self._running_pids.get(name, 0)
                await self._stop(inst, force=force, timeout=timeout)
            elif action == "restart":
                self._restarting.add(name)
                try:
                    old = self._running_pids.pop(name, 0)
                    await self._stop(inst, force=False)
                    await self._after_stop(inst, old, restarting=True)
                    await self._start(inst)
                finally:
                    self._restarting.discard(name)
                self.events.lifecycle("instance-restarted", self.instance_url(name))
            elif action == "freeze":
                self.transient[name] = "FREEZING"
                try:
                    await in_thread(self.runtime.freeze, inst)
                    self._frozen.add(name)
                finally:
                    self.transient.pop(name, None)
                self.events.lifecycle("instance-paused", self.instance_url(name))
            elif action == "unfreeze":
                await in_thread(self.runtime.unfreeze, inst)
                self._frozen.discard(name)
                self.events.lifecycle("instance-resumed", self.instance_url(name))
        if action in ("stop", "kill"):
            await self._after_stop(inst, stopped_pid)

    async def _start(self, inst: Instance) -> None:
        name = inst.name
        expand(inst, self.profiles)
        restrictions = self.restrictions(inst.project)
        restrictions.check_config(f"instance {name}", inst.expanded_config, instance=True)
        restrictions.check_devices(f"instance {name}", inst.expanded_devices)
        self.check_project_limits(inst.project, inst)
        rootfs = self.rootfs(inst)
        self.transient[name] = "STARTING"
        try:
            await self._apply_root_quota(inst, self.pool_of(inst), tell=False)
            await in_thread(lambda: self.hook.lxfs_instance_pre_start(host=self.api,
                                                                      instance=inst))
            await in_thread(images.render_templates, rootfs.parent, "start",
                            self._template_context(inst))
            await in_thread(self.runtime.start, inst, rootfs)
            self._frozen.discard(name)
            self._watch(name, await in_thread(self.runtime.pid, inst))
        finally:
            self.transient.pop(name, None)
        inst.last_used_at = now()
        await self._save(inst)
        await in_thread(lambda: self.hook.lxfs_instance_post_start(host=self.api, instance=inst))
        self.events.lifecycle("instance-started", self.instance_url(name))

    async def _undo_root_volume(self, inst: Instance, pool: StorageDriver) -> None:
        """Roll back a root volume whose creation (from an image, or as a copy) failed or
        was cancelled: delete it and forget the source, even under cancellation."""
        with trio.CancelScope(shield=True):
            await in_thread(pool.delete_volume, "container", inst.name)
            inst.storage_state, inst.source = "", ""
            await self._save(inst)
            self.transient.pop(inst.name, None)

    @staticmethod
    def _template_context(inst: Instance) -> images.TemplateContext:
        return {"name": inst.local_name, "architecture": inst.architecture,
                "privileged": is_true(inst.expanded_config.get("security.privileged")),
                "ephemeral": inst.ephemeral, "config": dict(inst.expanded_config),
                "devices": {k: dict(v) for k, v in inst.expanded_devices.items()}}

    async def _stop(self, inst: Instance, force: bool, timeout: int | None = None) -> None:
        self.transient[inst.name] = "STOPPING"
        try:
            await in_thread(lambda: self.hook.lxfs_instance_pre_stop(host=self.api, instance=inst))
            if force:
                await in_thread(self.runtime.kill, inst)
            else:
                if timeout is None:
                    timeout = int(inst.expanded_config.get("boot.host_shutdown_timeout")
                                  or 30)
                if not await in_thread(self.runtime.shutdown, inst, timeout):
                    log.warning("%s did not stop within %ds: killing it", inst.name, timeout)
                    await in_thread(self.runtime.kill, inst)
        finally:
            self.transient.pop(inst.name, None)

    def _watch(self, name: str, pid: int) -> None:
        """Follow a running instance's init: notice when it stops by itself."""
        if pid <= 0:
            return
        self._running_pids[name] = pid
        if self.nursery is not None:
            self.nursery.start_soon(self._watch_task, name, pid)

    async def _watch_task(self, name: str, pid: int) -> None:
        """A task of the server's nursery: nothing may escape it, or the daemon would stop."""
        try:
            await self._watch_pid(name, pid)
        except Exception:
            log.exception("while handling the stop of %s", name)

    async def _watch_pid(self, name: str, pid: int) -> None:
        await process_exit(pid)
        if self._running_pids.get(name) != pid:
            return  # an operation of ours handled this stop
        inst = self.instances.get(name)
        if inst is None:
            return
        mine = name not in self.transient  # init is gone: no longer RUNNING for readers
        if mine:
            self.transient[name] = "STOPPING"
        try:
            async with self._locks[name]:
                for _ in range(100):  # the monitor needs a moment to tear down
                    if await in_thread(self.runtime.state, inst) == "STOPPED":
                        break
                    await trio.sleep(0.05)
        finally:
            if mine and self.transient.get(name) == "STOPPING":
                del self.transient[name]
        if self._running_pids.get(name) == pid:
            await self._after_stop(inst, pid)

    async def _after_stop(self, inst: Instance, pid: int, restarting: bool = False) -> None:
        """Once per stop of a given init PID: release, notify, delete if ephemeral."""
        if pid and self._running_pids.get(inst.name) == pid:
            del self._running_pids[inst.name]
        elif pid:
            return
        self._frozen.discard(inst.name)
        await in_thread(self.runtime.after_stop, inst)
        await in_thread(lambda: self.hook.lxfs_instance_post_stop(host=self.api, instance=inst))
        self.events.lifecycle("instance-stopped", self.instance_url(inst.name))
        if inst.ephemeral and not restarting and inst.name in self.instances:
            log.info("deleting ephemeral instance %s", inst.name)
            try:
                await self.delete_instance(inst.name)
            except LxfsError as exc:
                log.error("could not delete ephemeral instance %s: %s", inst.name, exc)

    async def delete_instance(self, name: str) -> None:
        inst = self.instance(name)
        async with self._locks[name]:
            if inst.storage_state == "ready":
                state = await in_thread(self.runtime.state, inst)
                if state != "STOPPED":
                    raise Busy(f"instance {name} is {state.lower()}: stop it first "
                               "(echo kill > state, or lxfs delete --force)")
            await in_thread(lambda: self.hook.lxfs_instance_pre_delete(host=self.api,
                                                                       instance=inst))
            if inst.storage_state:
                inst.storage_state = "deleting"
                await self._save(inst)
                point("delete.after-intent")
                with contextlib.suppress(LxfsError):
                    pool = self.pool_of(inst)
                    await in_thread(pool.delete_volume, "container", name)
                point("delete.after-volume")
            await in_thread(self.runtime.cleanup, inst)
            await in_thread(shutil.rmtree, self.instance_data_dir / name, True)
            await in_thread(self.db.delete, "instances", name)
            point("delete.after-record")
            del self.instances[name]
            self.errors.pop(name, None)
        self._locks.pop(name, None)
        self._forget_entry(name)  # deleted by REST: the mount forgets it too
        await in_thread(lambda: self.hook.lxfs_instance_post_delete(host=self.api, instance=inst))
        self.events.lifecycle("instance-deleted", self.instance_url(name))

    async def move_to_pool(self, name: str, pool_name: str) -> None:
        """Move a stopped instance's root volume (with snapshots) to another pool; its own
        root disk device then names that pool."""
        inst = self.instance(name)
        pool_name = pool_name.strip()
        if pool_name not in self.pools:
            raise NotFound(f"storage pool {pool_name!r} not found")
        async with self._locks[name]:
            src = self.pool_of(inst)
            dst = self.pools[pool_name]
            if src is dst:
                return
            if inst.storage_state == "ready":
                state = await in_thread(self.runtime.state, inst)
                if state != "STOPPED":
                    raise Busy(f"instance {name} is {state.lower()}: stop it before moving "
                               "it to another pool")
                snaps = sorted(inst.snapshots, key=lambda n: inst.snapshots[n].created_at)
                await in_thread(transfer_volume, src, name, dst, name, snaps)
                point("move.after-transfer")
                try:
                    await self._apply_root_quota(inst, dst, tell=True)
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await in_thread(dst.delete_volume, "container", name)
                    raise
            root = next((d for d, dev in inst.expanded_devices.items()
                         if dev.get("type") == "disk" and dev.get("path") == "/"), "root")
            device = dict(inst.expanded_devices.get(root, {"type": "disk", "path": "/"}))
            device["pool"] = pool_name
            inst.devices[root] = device
            for snap in inst.snapshots.values():  # a restore brings their devices back
                snap.devices[root] = dict(device)
            try:
                await self._save(inst)
            except BaseException:
                del inst.devices[root]
                with trio.CancelScope(shield=True):
                    await in_thread(dst.delete_volume, "container", name)
                raise
            point("move.after-record")
            expand(inst, self.profiles)
            if inst.storage_state == "ready":
                await in_thread(src.delete_volume, "container", name)
                point("move.after-source-delete")
        self.events.lifecycle("instance-updated", self.instance_url(name), pool=pool_name)

    async def rename_instance(self, old: str, new: str, project: str | None = None) -> None:
        """Rename instance ``old`` (a key) to ``new`` (a name within ``project``, its own
        project when None): a move to another project is a rename of its host-level
        objects (volume with snapshots, runtime directory, plugin data)."""
        inst = self.instance(old)
        validate_instance_name(new)
        project = inst.project if project is None else project
        self.project(project)
        new_name, new = new, instance_key(project, new)
        if new in self.instances:
            where = "" if project == DEFAULT else f" in project {project!r}"
            raise AlreadyExists(f"instance {new_name!r} already exists{where}")
        old_project = inst.project
        if project != old_project:
            probe = copy.copy(inst)
            probe.project = project
            probe.profiles = self.profile_keys(project, [split_profile_key(p)[1]
                                                         for p in inst.profiles])
            expand(probe, self.profiles)
            if inst.root_pool() and probe.root_pool() != inst.root_pool():
                raise InvalidArgument(
                    f"in project {project!r} instance {new_name} would have its root disk in "
                    f"pool {probe.root_pool() or '(none)'!r} instead of "
                    f"{inst.root_pool()!r}: give it its own root disk device first, or the "
                    "project's profiles one")
            restrictions = self.restrictions(project)
            restrictions.check_config(f"instance {new_name}", probe.expanded_config, True)
            restrictions.check_devices(f"instance {new_name}", probe.expanded_devices)
            self.check_project_limits(project, probe)
        old_profiles = inst.profiles
        async with self._locks[old]:
            if inst.storage_state == "ready":
                state = await in_thread(self.runtime.state, inst)
                if state != "STOPPED":
                    raise Busy(f"instance {old} is {state.lower()}: stop it before renaming")
            async with self._journal("rename", old, new=new):
                await in_thread(self._rename_files, inst, old, new)
                inst.name, inst.project = new, project
                if project != old_project:
                    inst.profiles = probe.profiles
                try:
                    await in_thread(self.db.rename, "instances", old, new, inst.to_record())
                except BaseException:
                    inst.name, inst.project, inst.profiles = old, old_project, old_profiles
                    with trio.CancelScope(shield=True):
                        await in_thread(self._rename_files, inst, new, old)
                    raise
                point("rename.after-record")
            self.instances[new] = self.instances.pop(old)
            self.errors[new] = self.errors.pop(old, "")
            expand(inst, self.profiles)
        self._locks.pop(old, None)
        self._forget_entry(old)  # renamed by REST: the old name is gone
        self.events.lifecycle("instance-renamed", self.instance_url(new), old_name=old)

    def _rename_files(self, inst: Instance, old: str, new: str) -> None:
        """Everything of an instance stored under its name: volume (with snapshots), the
        runtime's directory, the plugins' instance data. Each step only if the source
        exists, so recovery can run it again or backwards."""
        pool = self.pool_of(inst)
        if pool.volume_exists("container", old) and not pool.volume_exists("container", new):
            pool.rename_volume("container", old, new)
        point("rename.after-volume")
        self.runtime.rename(Instance(name=old), new)
        point("rename.after-runtime")
        data = self.instance_data_dir / old
        if data.exists() and not (self.instance_data_dir / new).exists():
            os.rename(data, self.instance_data_dir / new)

    # --- instance configuration ---------------------------------------------------------

    async def set_instance_key(self, name: str, key: str, value: str) -> None:
        inst = self.instance(name)
        value = value.removesuffix("\n")
        if value == "":
            return await self.unset_instance_key(name, key)
        self.schema.validate_instance_key(key, value)
        self.restrictions(inst.project).check_key(f"instance {name}", key, value)
        probe = copy.copy(inst)
        probe.config = {**inst.config, key: value}
        expand(probe, self.profiles)
        self.check_project_limits(inst.project, probe, complete=False)
        async with self._locks[name]:
            old = inst.config.get(key)
            inst.config[key] = value
            try:
                await self._save(inst)
            except BaseException:
                if old is None:
                    inst.config.pop(key, None)
                else:
                    inst.config[key] = old
                raise
            expand(inst, self.profiles)
            await self._apply_live(inst)
        self.events.lifecycle("instance-updated", self.instance_url(name))

    async def _apply_live(self, inst: Instance) -> None:
        """Apply what can change while the instance runs (limits); the rest waits for the
        next start. A refusal by the kernel is reported, the new value is kept."""
        if inst.storage_state != "ready" or inst.name in self.transient or \
                inst.name not in self._running_pids:
            return
        try:
            await in_thread(self.runtime.apply_limits, inst)
        except (LxfsError, OSError) as exc:
            self.set_error(inst.name, f"saved, but could not be applied to the running "
                                      f"instance (applies at next start): {exc}")

    async def unset_instance_key(self, name: str, key: str) -> None:
        inst = self.instance(name)
        spec = self.schema.instance_spec(key)
        if spec and spec.readonly:
            raise InvalidArgument(f"{key} is managed by lxfs and cannot be unset")
        async with self._locks[name]:
            if key not in inst.config:
                raise NotFound(f"key {key} is not set on instance {name}")
            old = inst.config.pop(key)
            try:
                await self._save(inst)
            except BaseException:
                inst.config[key] = old
                raise
            expand(inst, self.profiles)
            await self._apply_live(inst)
        self.events.lifecycle("instance-updated", self.instance_url(name))

    async def set_instance_field(self, name: str, field: str, value: str) -> None:
        """``description``, ``ephemeral`` or ``profiles`` (one per line)."""
        inst = self.instance(name)
        value = value.removesuffix("\n")
        async with self._locks[name]:
            if field == "description":
                inst.description = value
            elif field == "ephemeral":
                from lxfs.config_schema import check_bool
                check_bool(value)
                inst.ephemeral = is_true(value)
            elif field == "profiles":
                names = self.profile_keys(inst.project, [p.strip() for p in value.splitlines()
                                                         if p.strip()])
                if len(set(names)) != len(names):
                    raise InvalidArgument("a profile is listed twice")
                probe = copy.copy(inst)
                probe.profiles = names
                expand(probe, self.profiles)
                self.check_project_limits(inst.project, probe, complete=False)
                await self._resize_roots([(inst, probe)], name)
                inst.profiles = names
            else:
                raise InvalidArgument(f"unknown field {field}")
            expand(inst, self.profiles)
            await self._save(inst)
            if field == "profiles":
                await self._apply_live(inst)
        self.events.lifecycle("instance-updated", self.instance_url(name))

    async def update_instance(self, name: str, *, config: dict[str, str] | None = None,
                              devices: dict[str, dict[str, str]] | None = None,
                              profiles: list[str] | None = None,
                              description: str | None = None,
                              ephemeral: bool | None = None) -> None:
        """Replace what is given of an instance's configuration, devices, profiles,
        description and ephemeral flag in one change (REST's PUT and PATCH): all of it is
        checked first and stored in one transaction, so a refused key, device, profile or
        root disk size leaves the instance as it was. ``config`` is the whole set of the
        user's keys (an empty value drops one); keys lxfs manages (``volatile.*``) stay as
        they are, and one given with another value is refused."""
        inst = self.instance(name)
        async with self._locks[name]:
            probe = copy.copy(inst)
            if config is not None:
                probe.config = self._replacement_config(inst, config)
            if devices is not None:
                probe.devices = self._checked_devices(devices)
            if profiles is not None:
                probe.profiles = self._checked_profiles(profiles, inst.project)
            expand(probe, self.profiles)
            restrictions = self.restrictions(inst.project)
            restrictions.check_devices(f"instance {inst.local_name}", probe.expanded_devices)
            self.check_project_limits(inst.project, probe)
            await self._resize_roots([(inst, probe)], name)
            before = (inst.config, inst.devices, inst.profiles, inst.description,
                      inst.ephemeral)
            expanded_before = inst.expanded_devices
            inst.config, inst.devices, inst.profiles = probe.config, probe.devices, \
                probe.profiles
            if description is not None:
                inst.description = description
            if ephemeral is not None:
                inst.ephemeral = ephemeral
            try:
                await self._save(inst)
            except BaseException:
                (inst.config, inst.devices, inst.profiles, inst.description,
                 inst.ephemeral) = before
                expand(inst, self.profiles)
                with trio.CancelScope(shield=True), contextlib.suppress(LxfsError, OSError):
                    await self._resize_roots([(probe, inst)], name)  # the old sizes back
                raise
            expand(inst, self.profiles)
            await self._apply_live(inst)
            await self._hotplug(inst, expanded_before, name)
        self.events.lifecycle("instance-updated", self.instance_url(name))

    def _replacement_config(self, inst: Instance, requested: dict[str, str]
                            ) -> dict[str, str]:
        """``requested`` checked as the whole of an instance's config: the keys lxfs
        manages kept as they are, the others validated (restrictions for changed ones)."""
        restrictions = self.restrictions(inst.project)
        config = {}
        for key, value in inst.config.items():
            spec = self.schema.instance_spec(key)
            if spec is not None and spec.readonly:
                config[key] = value
        for key, value in requested.items():
            spec = self.schema.instance_spec(key)
            if spec is not None and spec.readonly:
                if value != inst.config.get(key, ""):
                    raise InvalidArgument(f"{key} is managed by lxfs and cannot be set")
                continue
            if value == "":
                continue
            self.schema.validate_instance_key(key, value)
            if inst.config.get(key) != value:
                restrictions.check_key(f"instance {inst.name}", key, value)
            config[key] = value
        return config

    def _checked_devices(self, devices: dict[str, dict[str, str]]
                         ) -> dict[str, dict[str, str]]:
        """A copy of a whole set of devices, each validated complete."""
        checked = {}
        for device, keys in devices.items():
            check_name("device", device)
            self.device_types.validate(device, keys)
            checked[device] = dict(keys)
        return checked

    def _checked_profiles(self, names: list[str], project: str = DEFAULT) -> list[str]:
        names = self.profile_keys(project, names)
        if len(set(names)) != len(names):
            raise InvalidArgument("a profile is listed twice")
        return list(names)

    async def set_device_key(self, owner: Instance | Profile, device: str, key: str,
                             value: str) -> None:
        value = value.removesuffix("\n")
        devices = owner.devices
        new = dict(devices.get(device, {}))
        if value == "":
            new.pop(key, None)
        else:
            new[key] = value
        self.device_types.validate(device, new, partial=True)
        await self._resize_roots_of(owner, {**devices, device: new})
        devices[device] = new
        await self._save_owner(owner, devices=True)

    async def add_device(self, owner: Instance | Profile, device: str) -> None:
        if device in owner.devices:
            raise AlreadyExists(f"device {device!r} already exists")
        check_name("device", device)
        owner.devices[device] = {}
        await self._save_owner(owner, devices=True)

    async def remove_device(self, owner: Instance | Profile, device: str) -> None:
        if device not in owner.devices:
            raise NotFound(f"device {device!r} not found")
        await self._resize_roots_of(owner, {k: v for k, v in owner.devices.items()
                                            if k != device})
        del owner.devices[device]
        await self._save_owner(owner, devices=True)

    async def _save_owner(self, owner: Instance | Profile, devices: bool = False) -> None:
        if isinstance(owner, Instance):
            await self._save(owner)
            before = owner.expanded_devices
            expand(owner, self.profiles)
            if devices:
                await self._hotplug(owner, before, owner.name)
            self.events.lifecycle("instance-updated", self.instance_url(owner.name))
        else:
            await in_thread(self.db.put, "profiles", owner.name, owner.to_record())
            for inst in list(self.instances.values()):
                if owner.name in inst.profiles:
                    before = inst.expanded_devices
                    expand(inst, self.profiles)
                    await self._apply_live(inst)
                    if devices:
                        await self._hotplug(inst, before, "")

    async def _hotplug(self, inst: Instance, before: dict[str, dict[str, str]],
                       scope: str) -> None:
        """Apply device changes to a running instance through plugins; what no plugin can
        apply live waits for the next start, and the user is told."""
        if inst.storage_state != "ready" or inst.name not in self._running_pids:
            return
        after = inst.expanded_devices
        pending = []
        for name in sorted(set(before) | set(after)):
            old, new = before.get(name, {}), after.get(name, {})
            if old == new or _root_size_change(old, new):
                continue  # a root disk's size is applied as a quota (_resize_roots)
            try:
                done = await in_thread(lambda o=old, n=new, d=name: self.hook.lxfs_device_hotplug(
                    host=self.api, instance=inst, name=d, old=o, new=n))
            except (LxfsError, OSError) as exc:
                self._notice(scope, f"saved, but device {name} could not be changed in the "
                                    f"running {inst.name} (applies at next start): {exc}")
                continue
            if not done:
                pending.append(name)
        if pending:
            self._notice(scope, f"saved: changes to device {', '.join(pending)} apply at "
                                f"the next start of {inst.name}")

    async def override_device(self, name: str, request: str) -> None:
        """LXD's ``config device override``: ``DEVICE [KEY=VALUE...]`` gives the instance its
        own copy of a device it inherits from its profiles, with those keys changed (an empty
        value removes one), in one step: on a refusal nothing changes."""
        inst = self.instance(name)
        try:
            words = shlex.split(request)
        except ValueError as exc:
            raise InvalidArgument(f"override: {exc}") from None
        if not words:
            raise InvalidArgument("override: write DEVICE [KEY=VALUE...]")
        device, pairs = words[0], words[1:]
        if device in inst.devices:
            raise AlreadyExists(f"instance {name} already has its own device {device!r}: "
                                f"change its keys instead")
        if device not in inst.expanded_devices:
            raise NotFound(f"no profile of instance {name} has a device {device!r}")
        new = dict(inst.expanded_devices[device])
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise InvalidArgument(f"override: expected KEY=VALUE, got {pair!r}")
            if value:
                new[key] = value
            else:
                new.pop(key, None)
        self.device_types.validate(device, new)
        await self._resize_roots_of(inst, {**inst.devices, device: new})
        inst.devices[device] = new
        await self._save_owner(inst, devices=True)

    # --- root disk quotas -----------------------------------------------------------------

    def _notice(self, scope: str, message: str) -> None:
        """Add to what the current operation, once it succeeds, tells the user (its scope's
        ``error`` file)."""
        earlier = self._notices.get(scope)
        self._notices[scope] = f"{earlier}\n{message}" if earlier else message

    def _tell_no_quotas(self, scope: str, inst: Instance, pool: StorageDriver,
                        size: int) -> None:
        message = (f"the root disk size {human_size(size)} of {inst.name} is kept but not "
                   f"enforced: storage pool {pool.pool.name} ({pool.pool.driver}) has no quotas")
        log.warning("%s", message)
        self._notice(scope, message)

    async def _set_quota(self, inst: Instance, pool: StorageDriver, size: int | None) -> None:
        """The driver's ``set_volume_quota`` on the root volume, its errors in words."""
        try:
            await in_thread(pool.set_volume_quota, "container", inst.name, size)
        except InvalidArgument as exc:
            raise InvalidArgument(f"root disk of {inst.name}: {exc.message}") from None
        except OSError as exc:
            raise OperationFailed(f"could not set the root disk quota of {inst.name}: "
                                  f"{exc}") from exc

    async def _apply_root_quota(self, inst: Instance, pool: StorageDriver, tell: bool) -> None:
        """Give a root volume its root disk's ``size`` (after it is made, before each
        start). On a driver without quotas the size is not enforced: with ``tell``, the user
        is told so."""
        if pool.quotas:
            await self._set_quota(inst, pool, root_disk_size(inst))
        elif tell:
            size = root_disk_size(inst)
            if size is not None:
                self._tell_no_quotas(inst.name, inst, pool, size)

    async def _resize_roots_of(self, owner: Instance | Profile,
                               devices: dict[str, dict[str, str]]) -> None:
        """Before ``owner`` (an instance, or a profile and the instances using it) gets
        ``devices``: apply the root disk sizes this changes."""
        if isinstance(owner, Instance):
            probe = copy.copy(owner)
            probe.devices = devices
            expand(probe, self.profiles)
            await self._resize_roots([(owner, probe)], owner.name)
            return
        profile = copy.copy(owner)
        profile.devices = devices
        profiles = {**self.profiles, owner.name: profile}
        pairs = []
        for inst in self.instances.values():
            if owner.name in inst.profiles:
                probe = copy.copy(inst)
                expand(probe, profiles)
                pairs.append((inst, probe))
        await self._resize_roots(pairs, "")

    async def _resize_roots(self, pairs: list[tuple[Instance, Instance]], scope: str) -> None:
        """Apply new root disk sizes (``probe``: the instance as the change will make it)
        before the change is saved: at once, unless the instance runs on a driver without
        ``live_resize`` (then at its next start; the user is told). A refused size undoes
        the quotas set so far and raises: the change is not made."""
        done: list[tuple[Instance, StorageDriver, int | None]] = []
        try:
            for inst, probe in pairs:
                if inst.storage_state == "ready" and inst.root_pool() and \
                        probe.root_pool() != inst.root_pool():
                    raise InvalidArgument(_root_pool_refusal(inst, probe))
                new = root_disk_size(probe)
                try:
                    old = root_disk_size(inst)
                except InvalidArgument:
                    old = -1  # an unreadable stored size: set the new one
                pool = self.pools.get(inst.root_pool())
                if new == old or inst.storage_state != "ready" or pool is None or \
                        probe.root_pool() != inst.root_pool():
                    continue
                if not pool.quotas:
                    if new is not None:
                        self._tell_no_quotas(scope, inst, pool, new)
                elif not pool.live_resize and (inst.name in self._running_pids or
                                               inst.name in self.transient):
                    self._notice(scope, f"saved: the new root disk size of {inst.name} "
                                        f"applies at next start")
                else:
                    await self._set_quota(inst, pool, new)
                    done.append((inst, pool, None if old == -1 else old))
        except BaseException:
            with trio.CancelScope(shield=True):
                for inst, pool, old in reversed(done):
                    with contextlib.suppress(LxfsError, OSError):
                        await in_thread(pool.set_volume_quota, "container", inst.name, old)
            raise

    # --- snapshots ------------------------------------------------------------------------

    async def create_snapshot(self, name: str, snapshot: str) -> None:
        inst = self.instance(name)
        check_name("snapshot", snapshot)
        async with self._locks[name]:
            if inst.storage_state != "ready":
                raise NotFound(f"instance {name} has no root filesystem yet")
            if snapshot in inst.snapshots:
                raise AlreadyExists(f"snapshot {name}/{snapshot} already exists")
            pool = self.pool_of(inst)
            async with self._journal("snapshot", name, snapshot=snapshot):
                point("snapshot.after-intent")
                await in_thread(pool.create_snapshot, "container", name, snapshot)
                point("snapshot.after-volume")
                inst.snapshots[snapshot] = Snapshot(
                    snapshot, now(), dict(inst.config),
                    {k: dict(v) for k, v in inst.devices.items()}, list(inst.profiles))
                try:
                    await self._save(inst)
                except BaseException:
                    del inst.snapshots[snapshot]
                    with trio.CancelScope(shield=True):
                        await in_thread(pool.delete_snapshot, "container", name, snapshot)
                    raise
                point("snapshot.after-record")
        self.events.lifecycle("instance-snapshot-created",
                              self.instance_url(name, f"/snapshots/{snapshot}"))

    async def delete_snapshot(self, name: str, snapshot: str) -> None:
        inst = self.instance(name)
        async with self._locks[name]:
            if snapshot not in inst.snapshots:
                raise NotFound(f"snapshot {name}/{snapshot} not found")
            # the record goes first: a crash then leaves files without a record (removed at
            # the next start), never a record without its files
            async with self._journal("snapshot-delete", name, snapshot=snapshot):
                point("snapshot-delete.after-intent")
                snap = inst.snapshots.pop(snapshot)
                try:
                    await self._save(inst)
                except BaseException:
                    inst.snapshots[snapshot] = snap
                    raise
                point("snapshot-delete.after-record")
                await in_thread(self.pool_of(inst).delete_snapshot, "container", name,
                                snapshot)
                point("snapshot-delete.after-files")
        self.events.lifecycle("instance-snapshot-deleted",
                              self.instance_url(name, f"/snapshots/{snapshot}"))

    async def rename_snapshot(self, name: str, old: str, new: str) -> None:
        inst = self.instance(name)
        check_name("snapshot", new)
        async with self._locks[name]:
            if old not in inst.snapshots:
                raise NotFound(f"snapshot {name}/{old} not found")
            if new in inst.snapshots:
                raise AlreadyExists(f"snapshot {name}/{new} already exists")
            async with self._journal("snapshot-rename", name, old=old, new=new):
                pool = self.pool_of(inst)
                await in_thread(pool.rename_snapshot, "container", name, old, new)
                point("snapshot-rename.after-files")
                snap = inst.snapshots.pop(old)
                snap.name = new
                inst.snapshots[new] = snap
                try:
                    await self._save(inst)
                except BaseException:
                    snap.name = old
                    inst.snapshots[old] = inst.snapshots.pop(new)
                    with trio.CancelScope(shield=True):
                        await in_thread(pool.rename_snapshot, "container", name, new, old)
                    raise
                point("snapshot-rename.after-record")
        self.events.lifecycle("instance-snapshot-renamed",
                              self.instance_url(name, f"/snapshots/{new}"), old_name=old)

    async def restore_snapshot(self, name: str, snapshot: str) -> None:
        """Restore the root filesystem and configuration; a running instance is stopped,
        restored and started again (as LXD does)."""
        inst = self.instance(name)
        snapshot = snapshot.strip()
        if snapshot not in inst.snapshots:
            raise NotFound(f"snapshot {snapshot!r} of {name} not found")
        async with self._locks[name]:
            state = await in_thread(self.runtime.state, inst)
            was_running = state != "STOPPED"
            async with self._journal("restore", name, snapshot=snapshot,
                                     was_running=was_running):
                if was_running:
                    self._restarting.add(name)
                    old = self._running_pids.pop(name, 0)
                    try:
                        await self._stop(inst, force=True)
                        await self._after_stop(inst, old, restarting=True)
                    finally:
                        self._restarting.discard(name)
                point("restore.after-stop")
                await in_thread(self._restore_files_and_record, inst, snapshot)
                point("restore.after-record")
                if was_running:
                    await self._start(inst)
                    point("restore.after-start")
        self.events.lifecycle("instance-restored", self.instance_url(name), snapshot=snapshot)

    def _restore_files_and_record(self, inst: Instance, snapshot: str) -> None:
        """The blocking part of a restore (also what recovery redoes): the root filesystem,
        then the configuration, devices and profiles of the snapshot."""
        self.pool_of(inst).restore_snapshot("container", inst.name, snapshot)
        point("restore.after-files")
        snap = inst.snapshots[snapshot]
        before = (dict(inst.config), {k: dict(v) for k, v in inst.devices.items()},
                  list(inst.profiles))
        inst.config = dict(snap.config) or inst.config
        inst.devices = {k: dict(v) for k, v in snap.devices.items()}
        inst.profiles = [p for p in snap.profiles if p in self.profiles] or inst.profiles
        try:
            self.db.put("instances", inst.name, inst.to_record())
        except BaseException:
            inst.config, inst.devices, inst.profiles = before
            raise
        finally:
            expand(inst, self.profiles)

    # --- images ---------------------------------------------------------------------------

    def new_upload_path(self) -> Path:
        fd, path = _mkstemp(self.uploads_dir)
        os.close(fd)
        return Path(path)

    async def import_upload(self, path: Path, filename: str) -> Image | None:
        """Import an uploaded file. Returns the image, or None when it is the first half of
        a split image (kept pending until the other half arrives)."""
        kind = await in_thread(images.classify_upload, path)  # inspect reuses its scan
        if kind is None:
            raise InvalidArgument(
                f"{filename}: not an LXD image (expected a tarball with metadata.yaml, or a "
                "squashfs rootfs for a split image)")
        if kind == "unified":
            return await self._register_image(path, None, filename)
        other = "squashfs" if kind == "metadata" else "metadata"
        pending = self._pending.get(other)
        if pending is None:
            old = self._pending.pop(kind, None)
            if old:
                old[0].unlink(missing_ok=True)
            self._pending[kind] = (path, filename)
            return None
        del self._pending[other]
        meta, rootfs = (path, pending[0]) if kind == "metadata" else (pending[0], path)
        meta_name = filename if kind == "metadata" else pending[1]
        try:
            return await self._register_image(meta, rootfs, meta_name)
        except BaseException:
            pending[0].unlink(missing_ok=True)  # the caller removes the other half
            raise

    def _unpacked_limit(self) -> int:
        """``images.max_unpacked_size`` in bytes: the most an image may unpack to (checked
        as it is unpacked)."""
        spec = self.schema.server_spec("images.max_unpacked_size")
        default = spec.default if spec is not None else "0"
        return parse_size(self.config.get("images.max_unpacked_size") or default)

    async def drop_pending_upload(self, name: str) -> None:
        for kind, (path, filename) in list(self._pending.items()):
            if filename == name:
                path.unlink(missing_ok=True)
                del self._pending[kind]
                return
        raise NotFound(f"{name} not found")

    def pending_uploads(self) -> dict[str, Path]:
        return {name: path for path, name in self._pending.values()}

    async def import_image(self, meta: Path, rootfs: Path | None, filename: str) -> Image:
        """Import an image whose files are all at hand (a unified tarball, or a split image's
        metadata tarball and rootfs: REST's uploads), never pending. The files are moved into
        the store (or removed when the image is already there); on failure they are left for
        the caller to remove."""
        return await self._register_image(meta, rootfs, filename)

    async def _register_image(self, meta: Path, rootfs: Path | None, filename: str,
                              expected: str = "", fields: dict[str, Any] | None = None,
                              known: images.ImageInfo | None = None) -> Image:
        """Inspect, move into the store and record an image; ``expected``: the fingerprint
        it must have (a pull), ``fields``: more of its record (``cached``...), ``known``:
        what inspecting it would say, for an image this server built (a publish). As LXD,
        the import hashes the files and reads metadata.yaml: the content is checked at the
        first unpack (``_unpack``)."""
        try:
            info = known or await in_thread(images.inspect_image, meta, rootfs)
        except images.ImageError as exc:
            raise InvalidArgument(f"{filename}: {exc}") from None
        point("image-import.after-inspect")
        fp = info.fingerprint
        if expected and fp != expected:
            raise InvalidArgument(f"{filename}: the image's fingerprint is {fp}, the server "
                                  f"announced {expected}: corrupt download")
        if fp in self.images:
            meta.unlink(missing_ok=True)
            if rootfs:
                rootfs.unlink(missing_ok=True)
            log.info("image %s already present", fp[:12])
            return self.images[fp]
        image = Image(fingerprint=fp, filename=filename, size=info.size,
                      architecture=info.architecture, created_at=info.created_at,
                      uploaded_at=now(), expires_at=getattr(info, "expiry_date", 0) or 0,
                      split=rootfs is not None,
                      properties=dict(info.properties), templates=dict(info.templates or {}))
        for key, value in (fields or {}).items():
            setattr(image, key, value)
        os.replace(meta, self.images_dir / fp)
        if rootfs:
            os.replace(rootfs, self.images_dir / f"{fp}.rootfs")
        point("image-import.after-move")
        try:
            await in_thread(self.db.put, "images", fp, image.to_record())
        except BaseException:
            (self.images_dir / fp).unlink(missing_ok=True)
            (self.images_dir / f"{fp}.rootfs").unlink(missing_ok=True)
            raise
        self.images[fp] = image
        point("image-import.after-record")
        log.info("imported image %s (%s)", fp, filename)
        self.events.lifecycle("image-created", f"/1.0/images/{fp}")
        return image

    # --- image servers and the image cache ------------------------------------------------

    def parse_remote_ref(self, text: str) -> tuple[ImageSource, str] | None:
        """A remote reference, ``PROTOCOL URL IMAGE [certificate=BASE64] [secret=S]`` (the
        certificate: the server's PEM without its header lines and newlines), as the
        source and the image asked for; None when the first word names no protocol."""
        words = text.split()
        if len(words) < 3 or words[0] not in self.image_servers:
            return None
        source = ImageSource(server=words[1], protocol=words[0])
        for word in words[3:]:
            key, sep, value = word.partition("=")
            if not sep or key not in ("certificate", "secret"):
                raise InvalidArgument(f"unknown option {word!r} in the remote reference "
                                      "(certificate=BASE64 and secret=S are known)")
            if key == "certificate":
                body = "\n".join(value[i:i + 64] for i in range(0, len(value), 64))
                value = f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"
            setattr(source, key, value)
        return source, words[2]

    async def pull_from_line(self, line: str) -> None:
        """The mount's ``images/pull``: ``PROTOCOL URL IMAGE [certificate=B64] [secret=S]
        [alias=NAME]... [public=true] [auto_update=true]`` pulls an image (not cached)."""
        words, aliases, flags = [], [], {"public": False, "auto_update": False}
        for word in line.split():
            key, sep, value = word.partition("=")
            if sep and key == "alias":
                check_name("alias", value)
                aliases.append(value)
            elif sep and key in flags:
                flags[key] = is_true(value)
            else:
                words.append(word)
        remote = self.parse_remote_ref(" ".join(words))
        if remote is None:
            known = ", ".join(sorted(self.image_servers))
            raise InvalidArgument(f"expected PROTOCOL URL IMAGE, PROTOCOL one of {known} "
                                  f"(got {line.strip()!r})")
        for alias in aliases:
            if alias in self.aliases:
                raise AlreadyExists(f"alias {alias!r} already exists")
        image = await self.pull_image(*remote, **flags)
        for alias in aliases:
            await self.create_alias(alias, image.fingerprint)
        self.last_pulled = image.fingerprint

    def auto_update_cached(self) -> bool:
        return is_true(self.config.get("images.auto_update_cached", "true"))

    async def pull_image(self, source: ImageSource, ref: str, *, cached: bool = False,
                         auto_update: bool = False, public: bool = False,
                         progress: Callable[[str], None] | None = None) -> Image:
        """Download image ``ref`` (alias or fingerprint) from an image server through the
        driver of ``source.protocol``, check it and register it. Staged in the upload
        directory (emptied at every start): on any failure nothing is left and no image
        changed. An image already here is returned as it is (marked used when ``cached``).
        The download's progress (LXD's words) goes to ``progress``, the log (every tenth)
        and ``pulls``."""
        driver_class = self.image_servers.get(source.protocol)
        if driver_class is None:
            known = ", ".join(sorted(self.image_servers)) or "none"
            raise InvalidArgument(f"unknown image server protocol {source.protocol!r} "
                                  f"(known: {known})")
        if not source.server:
            raise InvalidArgument("an image server's URL is required")
        driver = driver_class(self.api, source, PULL_TIMEOUT, self._unpacked_limit())
        remote = await driver.resolve(ref.strip(), images.host_architectures())
        fp = remote.fingerprint
        async with self._image_locks[f"pull:{fp}"]:
            image = self.images.get(fp)
            if image is not None:
                if cached:
                    await self._image_used(image)
                return image
            log.info("pulling image %s (%s) from %s (%s)", fp[:12], ref, source.server,
                     source.protocol)
            staging = Path(await in_thread(lambda: tempfile.mkdtemp(prefix="pull-",
                                                                   dir=self.uploads_dir)))
            key, started, logged = f"{source.server} {ref.strip()}", trio.current_time(), {}

            def report(stage: str, done: int, total: int) -> None:
                text = progress_text(stage, done, total, trio.current_time() - started)
                self.pulls[key] = text
                tenth = done * 10 // total if total else done >> 26
                if logged.get(stage) != tenth:
                    logged[stage] = tenth
                    log.info("image %s download: %s", fp[:12], text)
                if progress is not None:
                    progress(text)

            try:
                meta, rootfs = await driver.download(remote, staging, report)
                point("image-pull.after-download")
                record = ImageSource(source.server, source.protocol, ref.strip(),
                                     source.certificate).record()
                image = await self._register_image(
                    meta, rootfs, remote.filename or meta.name, expected=fp,
                    fields={"cached": cached, "auto_update": auto_update, "public": public,
                            "last_used_at": now() if cached else 0.0,
                            "update_source": record})
            finally:
                self.pulls.pop(key, None)
                with trio.CancelScope(shield=True):
                    await in_thread(lambda: shutil.rmtree(staging, ignore_errors=True))
        return image

    async def _image_used(self, image: Image) -> None:
        image.last_used_at = now()
        await in_thread(self.db.put, "images", image.fingerprint, image.to_record())

    async def refresh_image(self, fp: str, progress: Callable[[str], None] | None = None
                            ) -> Image | None:
        """Look for a newer version of an image at its ``update_source``; when there is
        one, it replaces the image as LXD's refresh does (it takes the aliases, flags and
        last use; the old fingerprint is deleted). Returns the new image, or None."""
        image = self.images.get(fp)
        if image is None:
            raise NotFound(f"image {fp} not found")
        if not image.update_source:
            raise NotFound(f'Failed to update image "{fp}" in project "default": Image source '
                           "not found")
        source = ImageSource(**image.update_source)
        new = await self.pull_image(source, source.alias, cached=image.cached,
                                    auto_update=image.auto_update, public=image.public,
                                    progress=progress)
        if new.fingerprint == fp:
            return None
        new.last_used_at = image.last_used_at
        await in_thread(self.db.put, "images", new.fingerprint, new.to_record())
        for alias, (target, description) in list(self.aliases.items()):
            if target == fp:
                await self.update_alias(alias, new.fingerprint, description)
        await self.delete_image(fp)
        log.info("image %s refreshed: now %s", fp[:12], new.fingerprint[:12])
        self.events.lifecycle("image-refreshed", f"/1.0/images/{fp}")
        return new

    async def refresh_images(self) -> None:
        """Refresh every image with ``auto_update`` and a source (the background task of
        ``images.auto_update_interval``); failures are logged, never raised."""
        for fp, image in list(self.images.items()):
            if image.auto_update and image.update_source and fp in self.images:
                try:
                    await self.refresh_image(fp)
                except LxfsError as exc:
                    log.warning("auto-update of image %s: %s", fp[:12], exc)

    def image_setting(self, key: str) -> int:
        """An integer ``images.*`` server key (its default when unset)."""
        spec = self.schema.server_spec(key)
        return int(self.config.get(key) or (spec.default if spec else "0") or 0)

    async def expire_cached_images(self, max_age: float) -> list[str]:
        """Delete cached images unused for ``max_age`` seconds; their fingerprints."""
        expired = [fp for fp, image in self.images.items()
                   if image.cached and (image.last_used_at or image.uploaded_at) + max_age
                   < now()]
        for fp in expired:
            log.info("image %s expired from the cache (unused for %.0f s)", fp[:12], max_age)
            with contextlib.suppress(NotFound):
                await self.delete_image(fp)
        return expired

    async def delete_image(self, fp: str) -> None:
        if fp not in self.images:
            raise NotFound(f"image {fp} not found")
        async with self._image_locks[fp]:
            await in_thread(self.db.delete_image, fp)
            point("image-delete.after-record")
            image = self.images.pop(fp)
            self.aliases = {a: v for a, v in self.aliases.items() if v[0] != fp}
            for pool in self.pools.values():
                await in_thread(pool.delete_volume, "image", fp)
            point("image-delete.after-volumes")
            (self.images_dir / fp).unlink(missing_ok=True)
            (self.images_dir / f"{fp}.rootfs").unlink(missing_ok=True)
        self.on_change("image-deleted", fp)
        self.events.lifecycle("image-deleted", f"/1.0/images/{image.fingerprint}")

    async def set_image_field(self, fp: str, field: str, value: str) -> None:
        image = self.images[fp]
        value = value.strip()
        if field in ("public", "auto_update"):
            from lxfs.config_schema import check_bool
            check_bool(value)
            setattr(image, field, is_true(value))
        elif field.startswith("properties/"):
            key = field.split("/", 1)[1]
            check_line(f"property {key}", value)
            if value:
                image.properties[key] = value
            else:
                image.properties.pop(key, None)
        else:
            raise InvalidArgument(f"{field} is read-only")
        await in_thread(self.db.put, "images", fp, image.to_record())

    async def create_alias(self, alias: str, target: str, description: str = "") -> None:
        check_name("alias", alias)
        if alias == "aliases":
            raise InvalidArgument("invalid alias name 'aliases': it names the directory")
        if alias in self.aliases:
            raise AlreadyExists(f"alias {alias!r} already exists")
        target = target.strip().rstrip("/")
        target = target.rsplit("/", 1)[-1]  # ../FP or /lxfs/images/FP
        image = self.resolve_image(target)
        await in_thread(self.db.put_alias, alias, image.fingerprint, description)
        self.aliases[alias] = (image.fingerprint, description)
        self.events.lifecycle("image-alias-created", f"/1.0/images/aliases/{alias}",
                              target=image.fingerprint)

    async def update_alias(self, alias: str, target: str, description: str) -> None:
        """Point an alias at another image (a fingerprint, prefix or alias) and set its
        description."""
        if alias not in self.aliases:
            raise NotFound(f"alias {alias!r} not found")
        image = self.resolve_image(target)
        await in_thread(self.db.put_alias, alias, image.fingerprint, description)
        self.aliases[alias] = (image.fingerprint, description)
        self.events.lifecycle("image-alias-updated", f"/1.0/images/aliases/{alias}",
                              target=image.fingerprint)

    async def rename_alias(self, old: str, new: str) -> None:
        check_name("alias", new)
        if new == "aliases":
            raise InvalidArgument("invalid alias name 'aliases': it names the directory")
        if old not in self.aliases:
            raise NotFound(f"alias {old!r} not found")
        if new in self.aliases:
            raise AlreadyExists(f"alias {new!r} already exists")
        await in_thread(self.db.rename_alias, old, new)
        self.aliases[new] = self.aliases.pop(old)
        self.on_change("alias-deleted", old)
        self.events.lifecycle("image-alias-renamed", f"/1.0/images/aliases/{new}",
                              old_name=old)

    async def delete_alias(self, alias: str) -> None:
        if alias not in self.aliases:
            raise NotFound(f"alias {alias!r} not found")
        await in_thread(self.db.delete_alias, alias)
        del self.aliases[alias]
        self.on_change("alias-deleted", alias)
        self.events.lifecycle("image-alias-deleted", f"/1.0/images/aliases/{alias}")

    # --- profiles -------------------------------------------------------------------------

    async def create_profile(self, name: str) -> Profile:
        """``name``: the profile's key (``PROJECT/NAME`` for a project's own)."""
        project, local = split_profile_key(name)
        check_name("profile", local)
        if project != DEFAULT and not has_feature(project, self.project(project).config,
                                                  "profiles"):
            raise InvalidArgument(f"project {project!r} uses the default project's profiles "
                                  "(features.profiles=false)")
        if name in self.profiles:
            raise AlreadyExists(f"profile {name!r} already exists")
        profile = Profile(name)
        await in_thread(self.db.put, "profiles", name, profile.to_record())
        self.profiles[name] = profile
        return profile

    async def rename_profile(self, old: str, new: str) -> None:
        """Rename a profile; the instances using it follow, in one transaction."""
        if old not in self.profiles:
            raise NotFound(f"profile {old!r} not found")
        if split_profile_key(old)[1] == "default":
            raise Busy("the default profile cannot be renamed")
        check_name("profile", split_profile_key(new)[1])
        if split_profile_key(new)[0] != split_profile_key(old)[0]:
            raise InvalidArgument("a profile stays in its project")
        if new in self.profiles:
            raise AlreadyExists(f"profile {new!r} already exists")
        profile = self.profiles[old]
        users = [i for i in self.instances.values() if old in i.profiles]
        changes: list[tuple[str, str, dict[str, Any] | None]] = [
            ("profiles", old, None), ("profiles", new, {**profile.to_record(), "name": new})]
        for inst in users:
            rec = inst.to_record()
            rec["profiles"] = [new if p == old else p for p in inst.profiles]
            changes.append(("instances", inst.name, rec))
        await in_thread(self.db.apply, changes)
        profile.name = new
        self.profiles[new] = self.profiles.pop(old)
        for inst in users:
            inst.profiles = [new if p == old else p for p in inst.profiles]

    def profile_used_by(self, name: str) -> list[str]:
        return sorted(i.name for i in self.instances.values() if name in i.profiles)

    async def delete_profile(self, name: str) -> None:
        if name not in self.profiles:
            raise NotFound(f"profile {name!r} not found")
        if name == "default":
            raise Busy("the default profile cannot be deleted")
        if split_profile_key(name)[1] == "default" and \
                split_profile_key(name)[0] in self.projects:
            raise Busy("a project's default profile cannot be deleted")
        used = self.profile_used_by(name)
        if used:
            raise Busy(f"profile {name} is used by {', '.join(used)}")
        await in_thread(self.db.delete, "profiles", name)
        del self.profiles[name]

    async def set_profile_key(self, name: str, key: str, value: str) -> None:
        profile = self.profiles[name]
        value = value.removesuffix("\n")
        if value == "":
            profile.config.pop(key, None)
        else:
            self.schema.validate_instance_key(key, value)
            self.restrictions(split_profile_key(name)[0]).check_key(f"profile {name}", key,
                                                                    value)
            profile.config[key] = value
        await self._save_owner(profile)

    async def set_profile_description(self, name: str, value: str) -> None:
        profile = self.profiles[name]
        profile.description = value.removesuffix("\n")
        await self._save_owner(profile)

    def check_profile(self, name: str, config: dict[str, str],
                      devices: dict[str, dict[str, str]]) -> None:
        """Validate a whole profile (keys, restrictions, devices) without changing anything
        (REST's POST and PUT)."""
        for key, value in config.items():
            self.schema.validate_instance_key(key, value)
            self.restrictions(split_profile_key(name)[0]).check_key(f"profile {name}", key,
                                                                    value)
        for device, keys in devices.items():
            check_name("device", device)
            self.device_types.validate(device, keys)

    async def update_profile(self, name: str, description: str, config: dict[str, str],
                             devices: dict[str, dict[str, str]]) -> None:
        """Replace a profile's description, config and devices in one step (REST's PUT):
        everything is checked first, root disk sizes are applied to the instances using it;
        on a refusal nothing changes."""
        profile = self.profiles.get(name)
        if profile is None:
            raise NotFound(f"profile {name!r} not found")
        config = {k: v for k, v in config.items() if v != ""}
        devices = {k: dict(v) for k, v in devices.items()}
        self.check_profile(name, config, devices)
        await self._resize_roots_of(profile, devices)
        old = (profile.description, profile.config, profile.devices)
        profile.description, profile.config, profile.devices = description, config, devices
        try:
            await self._save_owner(profile, devices=True)
        except BaseException:
            profile.description, profile.config, profile.devices = old
            raise

    # --- projects -------------------------------------------------------------------------

    def restrictions(self, project: str = "default") -> Restrictions:
        """What the project lets its instances and profiles use."""
        return Restrictions(project, self.projects[project].config, self._is_lowlevel)

    def _is_lowlevel(self, key: str) -> bool:
        spec = self.schema.instance_spec(key)
        return spec is not None and spec.lowlevel

    def project(self, name: str) -> Project:
        project = self.projects.get(name)
        if project is None:
            raise NotFound(f"project {name!r} not found")
        return project

    def project_instances(self, project: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.project == project]

    def profiles_project(self, project: str) -> str:
        """Whose profiles ``project`` uses: its own, or ``default``'s (features.profiles)."""
        if project == DEFAULT or has_feature(project, self.project(project).config,
                                             "profiles"):
            return project
        return DEFAULT

    def project_profiles(self, project: str) -> dict[str, Profile]:
        """The profiles ``project`` uses, by their name in it."""
        owner = self.profiles_project(project)
        return {split_profile_key(k)[1]: p for k, p in self.profiles.items()
                if split_profile_key(k)[0] == owner}

    def images_project(self, project: str) -> str:
        """Whose images ``project`` uses: its own, or ``default``'s (features.images)."""
        if project == DEFAULT or has_feature(project, self.project(project).config, "images"):
            return project
        return DEFAULT

    def project_images(self, project: str) -> dict[str, Image]:
        """The images ``project`` sees, by fingerprint."""
        owner = self.images_project(project)
        return {fp: i for fp, i in self.images.items() if owner in i.projects}

    async def import_into_project(self, path: Path, filename: str, project: str
                                  ) -> Image | None:
        """``import_upload`` into ``project``'s images: a new image belongs to it alone, a
        known one gains it."""
        known = set(self.images)
        image = await self.import_upload(path, filename)
        if image is not None:
            await self.claim_image(image.fingerprint, project,
                                   new=image.fingerprint not in known)
        return image

    async def claim_image(self, fp: str, project: str, new: bool) -> None:
        """Give image ``fp`` to ``project``'s images: alone when it was ``new`` (just
        imported for it), else beside the projects holding it."""
        owner = self.images_project(project)
        image = self.images[fp]
        projects = [owner] if new else sorted({*image.projects, owner})
        if projects != image.projects:
            image.projects = projects
            await in_thread(self.db.put, "images", fp, image.to_record())

    async def delete_project_image(self, fp: str, project: str) -> None:
        """Drop an image from ``project``'s images: the record and files go with the last
        project that holds it."""
        owner = self.images_project(project)
        image = self.images.get(fp)
        if image is None or owner not in image.projects:
            raise NotFound(f"image {fp} not found")
        if image.projects == [owner]:
            return await self.delete_image(fp)
        image.projects = [p for p in image.projects if p != owner]
        await in_thread(self.db.put, "images", fp, image.to_record())
        self.events.lifecycle("image-deleted", f"/1.0/images/{fp}"
                              + ("" if owner == DEFAULT else f"?project={owner}"))

    def profile_keys(self, project: str, names: list[str]) -> list[str]:
        """The keys of the profiles ``names`` of ``project`` (NotFound for a missing one)."""
        owner = self.profiles_project(project)
        keys = [profile_key(owner, n) for n in names]
        for name, key in zip(names, keys, strict=True):
            if key not in self.profiles:
                where = "" if project == DEFAULT else f" in project {project!r}"
                raise NotFound(f"profile {name!r} not found{where}")
        return keys

    def _limit_entities(self, project: str, changed: Instance | None = None
                        ) -> list[tuple[str, str, dict[str, str], dict[str, dict[str, str]]]]:
        found = [(i.local_name, i.type, i.expanded_config, i.expanded_devices)
                 for i in self.project_instances(project)
                 if changed is None or i.name != changed.name]
        if changed is not None:
            found.append((changed.local_name, changed.type, changed.expanded_config,
                          changed.expanded_devices))
        return found

    def check_project_limits(self, project: str, changed: Instance | None = None,
                             complete: bool = True) -> None:
        """Refuse when the project's instances, ``changed`` (new or as it would become)
        among them, exceed one of its limits, or ``changed`` sets no value a summed limit
        needs (unless not ``complete``: a record the mount fills key by key, held to it at
        start)."""
        config = self.project(project).config
        if not any(k.startswith("limits.") for k in config):
            return
        required = [changed.local_name] if changed is not None and complete else []
        check_limits(project, config, self._limit_entities(project, changed), required)

    def project_usage(self, project: str) -> dict[str, tuple[int, int]]:
        """Resource → (usage, limit or -1): LXD's project state."""
        return usage(self.project(project).config, self._limit_entities(project))

    def _project_entities(self, name: str) -> list[tuple[str, dict[str, str],
                                                        dict[str, dict[str, str]], bool]]:
        entities = [(f"instance {i.local_name}", i.expanded_config, i.expanded_devices, True)
                    for i in self.project_instances(name)]
        entities += [(f"profile {local}", p.config, p.devices, False)
                     for local, p in self.project_profiles(name).items()
                     if self.profiles_project(name) == name]
        return entities

    def project_is_empty(self, name: str) -> bool:
        """No instances, no profiles but its default, no images of its own."""
        return not self.project_instances(name) and not any(
            split_profile_key(k)[0] == name and split_profile_key(k)[1] != "default"
            for k in self.profiles) and not any(name in i.projects
                                                for i in self.images.values())

    def _check_project_config(self, name: str, before: dict[str, str],
                              config: dict[str, str]) -> None:
        for key, value in config.items():
            validate_project_key(key, value)
        changed = {k for k in FEATURES if before.get(k) != config.get(k)}
        if changed and name == DEFAULT:
            raise InvalidArgument("the features of the default project cannot be changed")
        if changed and name in self.projects and not self.project_is_empty(name):
            raise Busy(f"the features of project {name!r} can only be changed while it is "
                       "empty (changed: " + ", ".join(sorted(changed)) + ")")
        broken = Restrictions(name, config, self._is_lowlevel).violations(
            self._project_entities(name) if name in self.projects else [])
        if broken:
            raise Forbidden("the project's instances or profiles break this restriction: "
                            + "; ".join(broken))
        if name in self.projects:
            check_limits(name, config, self._limit_entities(name))

    async def _store_project(self, updated: Project, before: Project | None) -> None:
        """Write a project and the default profile its ``features.profiles`` gives it
        (made or dropped in the same transaction)."""
        name = updated.name
        key = profile_key(name, "default")
        own = name != DEFAULT and has_feature(name, updated.config, "profiles")
        changes: list[tuple[str, str, dict[str, Any] | None]] = [
            ("projects", name, updated.to_record())]
        profile = None
        if own and key not in self.profiles:
            profile = Profile(key, f"Default lxfs profile for project {name}")
            changes.append(("profiles", key, profile.to_record()))
        if not own and name != DEFAULT and key in self.profiles:
            changes.append(("profiles", key, None))
        await in_thread(self.db.apply, changes)
        self.projects[name] = updated
        if profile is not None:
            self.profiles[key] = profile
        elif not own and name != DEFAULT:
            self.profiles.pop(key, None)

    async def create_project(self, name: str, description: str = "",
                             config: dict[str, str] | None = None) -> Project:
        """A new project; the features not given take LXD's defaults for a new project."""
        check_name("project", name)
        if name in self.projects:
            raise AlreadyExists(f"project {name!r} already exists")
        config = {k: v for k, v in (config or {}).items() if v != ""}
        config = {**FEATURES, **config}
        self._check_project_config(name, {}, config)
        project = Project(name, description.removesuffix("\n"), config)
        await self._store_project(project, None)
        self.events.lifecycle("project-created", f"/1.0/projects/{name}")
        return project

    async def delete_project(self, name: str) -> None:
        self.project(name)
        if name == DEFAULT:
            raise Busy("the default project cannot be deleted")
        if not self.project_is_empty(name):
            used = [f"instance {i.local_name}" for i in self.project_instances(name)]
            used += [f"profile {split_profile_key(k)[1]}" for k in self.profiles
                     if split_profile_key(k)[0] == name and split_profile_key(k)[1] != "default"]
            used += [f"image {fp[:12]}" for fp, i in self.images.items() if name in i.projects]
            raise Busy(f"project {name!r} is not empty: {', '.join(sorted(used))}")
        changes: list[tuple[str, str, dict[str, Any] | None]] = [("projects", name, None)]
        key = profile_key(name, "default")
        if key in self.profiles:
            changes.append(("profiles", key, None))
        await in_thread(self.db.apply, changes)
        del self.projects[name]
        self.profiles.pop(key, None)
        self.on_change("entry-deleted", f"projects/{name}")
        self.events.lifecycle("project-deleted", f"/1.0/projects/{name}")

    async def rename_project(self, old: str, new: str) -> None:
        """Rename an empty project (LXD renames empty projects only)."""
        project = self.project(old)
        if old == DEFAULT:
            raise Busy("the default project cannot be renamed")
        check_name("project", new)
        if new in self.projects:
            raise AlreadyExists(f"project {new!r} already exists")
        if not self.project_is_empty(old):
            raise Busy(f"project {old!r} is not empty: only empty projects can be renamed")
        changes: list[tuple[str, str, dict[str, Any] | None]] = [
            ("projects", old, None), ("projects", new, {**project.to_record(), "name": new})]
        old_key, new_key = profile_key(old, "default"), profile_key(new, "default")
        profile = self.profiles.get(old_key)
        if profile is not None:
            changes += [("profiles", old_key, None),
                        ("profiles", new_key, {**profile.to_record(), "name": new_key})]
        await in_thread(self.db.apply, changes)
        self.projects[new] = Project(new, project.description, dict(project.config))
        del self.projects[old]
        if profile is not None:
            profile.name = new_key
            self.profiles[new_key] = self.profiles.pop(old_key)
        self.on_change("entry-deleted", f"projects/{old}")
        self.events.lifecycle("project-renamed", f"/1.0/projects/{new}", old_name=old)

    async def set_project_key(self, name: str, key: str, value: str) -> None:
        """Set (or with "" unset) a project key; a restriction or limit that the project's
        instances or profiles already break is refused, naming them (as LXD does)."""
        project = self.project(name)
        value = value.removesuffix("\n")
        config = dict(project.config)
        if value == "":
            if key in FEATURES and name != DEFAULT:
                value = "false"  # an unset feature is off, as in LXD
            else:
                config.pop(key, None)
        if value != "":
            config[key] = value
        await self.update_project(name, project.description, config)

    async def set_project_description(self, name: str, value: str) -> None:
        project = self.project(name)
        updated = Project(project.name, value.removesuffix("\n"), dict(project.config))
        await in_thread(self.db.put, "projects", name, updated.to_record())
        self.projects[name] = updated

    async def update_project(self, name: str, description: str, config: dict[str, str]
                             ) -> None:
        """Replace a project's description and config in one step (REST's PUT): every key
        is validated and the whole checked against the project's instances and profiles
        (restrictions, limits; features only while it is empty); on a refusal nothing
        changes."""
        project = self.project(name)
        config = {k: v for k, v in config.items() if v != ""}
        if name == DEFAULT:
            config = {k: v for k, v in config.items()
                      if k not in FEATURES or v != DEFAULT_FEATURES[k]}
        self._check_project_config(name, project.config, config)
        updated = Project(project.name, description, config)
        await self._store_project(updated, project)
        self.events.lifecycle("project-updated", f"/1.0/projects/{name}")

    # --- server config --------------------------------------------------------------------

    async def set_server_key(self, key: str, value: str) -> None:
        value = value.removesuffix("\n")
        if value == "":
            if key in self.config:
                await in_thread(self.db.set_server_config, key, None)
                self.config.pop(key, None)
                self._server_config_changed()
            return
        self.schema.validate_server_key(key, value)
        spec = self.schema.server_spec(key)
        if spec is not None and spec.secret:
            value = await in_thread(hash_secret, value)
        await in_thread(self.db.set_server_config, key, value)
        self.config[key] = value
        self._server_config_changed()

    def _server_config_changed(self) -> None:
        self._config_changed.set()
        self._config_changed = trio.Event()
        self.events.lifecycle("config-updated", "/1.0")

    async def wait_server_config_change(self) -> None:
        """Return at the next change of the server configuration (``config/``, REST's
        ``/1.0``): services that follow a key (the HTTPS listener) wait on it."""
        await self._config_changed.wait()

    # --- storage pools ---------------------------------------------------------------------

    def pool_used_by(self, name: str) -> list[str]:
        """The mount's paths of the instances and profiles using pool ``name`` (another
        project's under ``projects/P/``)."""
        def where(project: str, kind: str, local: str) -> str:
            return f"{kind}/{local}" if project == DEFAULT else \
                f"projects/{project}/{kind}/{local}"

        users = [where(i.project, "instances", i.local_name) for i in self.instances.values()
                 if i.root_pool() == name]
        for profile in self.profiles.values():
            if any(d.get("pool") == name for d in profile.devices.values()):
                project, local = split_profile_key(profile.name)
                users.append(where(project, "profiles", local))
        return sorted(users)

    def pool_record(self, name: str) -> Pool:
        """A pool's record, created or pending (``mkdir`` done, no driver written yet)."""
        if name in self.pools:
            return self.pools[name].pool
        if name in self.pending_pools:
            return self.pending_pools[name]
        raise NotFound(f"storage pool {name!r} not found")

    def storage_driver_class(self, driver: str) -> type[StorageDriver]:
        """The class of a driver name: EINVAL unknown, EOPNOTSUPP known but not available."""
        cls = self.storage_drivers.get(driver)
        if cls is not None and cls.unavailable:
            raise NotSupported(f"storage driver {driver} is not supported on this host: "
                               f"{cls.unavailable}")
        if cls is not None:
            return cls
        raise InvalidArgument(f"unknown storage driver {driver!r} (available: "
                              f"{', '.join(self.environment()['storage_drivers'].split())})")

    def pool_keys(self) -> set[str]:
        """Every pool config key some driver accepts (what a pending pool may hold)."""
        return {k for cls in self.storage_drivers.values() for k in cls.pool_keys}

    async def create_pending_pool(self, name: str) -> None:
        """``mkdir storage-pools/NAME``: a record with config but no driver yet."""
        check_name("pool", name)
        if name in self.pools or name in self.pending_pools:
            raise AlreadyExists(f"storage pool {name!r} already exists")
        pool = Pool(name, "")
        await in_thread(self.db.put, "pools", name, vars(pool))
        self.pending_pools[name] = pool

    async def create_pool(self, name: str, driver: str, config: dict[str, str] | None = None
                          ) -> None:
        """Create a pool with ``driver`` (a pending pool's config is used when ``config`` is
        None). Returns when the backing store exists and is mounted."""
        driver = driver.strip()
        async with self._locks[f"pool/{name}"]:
            if name in self.pools:
                raise AlreadyExists(f"storage pool {name!r} already exists")
            pending = self.pending_pools.get(name)
            if pending is None:
                check_name("pool", name)
            cls = self.storage_driver_class(driver)
            await in_thread(cls.check_host)
            config = dict(pending.config if config is None and pending else config or {})
            for key in config:
                if key not in cls.pool_keys:
                    raise InvalidArgument(f"{driver} pools have no config key {key!r} "
                                          f"(keys: {', '.join(sorted(cls.pool_keys))})")
            pool = Pool(name, driver, config, pending.description if pending else "")
            backend = cls(pool, self.data_dir)
            await in_thread(backend.fill_defaults)
            async with self._journal("pool-create", name, pool=vars(pool)):
                point("pool-create.after-intent")
                await in_thread(backend.create)
                point("pool-create.after-driver")
                try:
                    await in_thread(self.db.put, "pools", name, vars(pool))
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await in_thread(backend.delete)
                    raise
                point("pool-create.after-record")
            self.pending_pools.pop(name, None)
            self.pools[name] = backend
        log.info("created storage pool %s (%s): %s", name, driver, pool.config)
        self.events.lifecycle("storage-pool-created", f"/1.0/storage-pools/{name}")

    async def delete_pool(self, name: str) -> None:
        """Delete a pool and its backing store (EBUSY while instances or profiles use it).
        Images cached in the pool go with it."""
        async with self._locks[f"pool/{name}"]:
            if name in self.pending_pools:
                await in_thread(self.db.delete, "pools", name)
                del self.pending_pools[name]
                return
            backend = self.pools.get(name)
            if backend is None:
                raise NotFound(f"storage pool {name!r} not found")
            used = self.pool_used_by(name)
            if used:
                raise Busy(f"storage pool {name} is used by {', '.join(used)}")
            custom = await in_thread(backend.list_volumes, "custom")
            if custom:
                raise Busy(f"storage pool {name} holds custom volumes: {', '.join(custom)}")
            # the record goes first: a crash then leaves a backing store the next start
            # removes (from the journal), never a record whose store is gone
            async with self._journal("pool-delete", name, pool=vars(backend.pool)):
                await in_thread(self.db.delete, "pools", name)
                del self.pools[name]
                point("pool-delete.after-record")
                for fp in await in_thread(backend.list_volumes, "image"):
                    async with self._image_locks[f"{name}/{fp}"]:
                        await in_thread(backend.delete_volume, "image", fp)
                await in_thread(backend.delete)
                point("pool-delete.after-driver")
        self.events.lifecycle("storage-pool-deleted", f"/1.0/storage-pools/{name}")

    async def set_pool_key(self, name: str, key: str, value: str) -> None:
        """Set (empty value: unset) a pool config key. A pending pool takes any key a driver
        knows; an existing pool asks its driver (most keys are fixed at creation)."""
        value = value.removesuffix("\n")
        check_line(key, value)
        async with self._locks[f"pool/{name}"]:
            pool = self.pool_record(name)
            if name in self.pending_pools:
                if key not in self.pool_keys():
                    raise InvalidArgument(f"unknown storage pool key {key!r} (keys: "
                                          f"{', '.join(sorted(self.pool_keys()))})")
                old = dict(pool.config)
                if value:
                    pool.config[key] = value
                else:
                    pool.config.pop(key, None)
            else:
                if pool.config.get(key, "") == value:
                    return
                old = dict(pool.config)
                await in_thread(self.pools[name].update_pool_key, key, value)
            try:
                await in_thread(self.db.put, "pools", name, vars(pool))
            except BaseException:
                pool.config = old
                raise

    async def set_pool_description(self, name: str, value: str) -> None:
        pool = self.pool_record(name)
        pool.description = value.removesuffix("\n")
        await in_thread(self.db.put, "pools", name, vars(pool))

    async def pool_resources(self, name: str) -> PoolUsage:
        backend = self.pools.get(name)
        if backend is None:
            return PoolUsage(0, 0)
        return await in_thread(backend.usage)

    # --- custom volumes -------------------------------------------------------------------

    def custom_volume_users(self, pool: str, volume: str) -> list[str]:
        """Instances and profiles with a disk device on a custom volume."""
        users = []
        owners: list[tuple[str, dict[str, dict[str, str]]]] = [
            (f"instances/{i.name}", i.devices) for i in self.instances.values()]
        owners += [(f"profiles/{p.name}", p.devices) for p in self.profiles.values()]
        for label, devices in owners:
            if any(d.get("type") == "disk" and d.get("pool") == pool
                   and d.get("source") == volume and d.get("path") != "/"
                   for d in devices.values()):
                users.append(label)
        return users

    def _custom_pool(self, pool: str) -> StorageDriver:
        backend = self.pools.get(pool)
        if backend is None:
            raise NotFound(f"storage pool {pool!r} not found")
        return backend

    async def create_custom_volume(self, pool: str, volume: str) -> None:
        check_name("volume", volume)
        backend = self._custom_pool(pool)
        if await in_thread(backend.volume_exists, "custom", volume):
            raise AlreadyExists(f"volume {volume} already exists in pool {pool}")
        await in_thread(backend.create_volume, "custom", volume)
        point("volume-create.after-volume")
        self.events.lifecycle("storage-volume-created",
                              f"/1.0/storage-pools/{pool}/volumes/custom/{volume}")

    async def delete_custom_volume(self, pool: str, volume: str) -> None:
        users = self.custom_volume_users(pool, volume)
        if users:
            raise Busy(f"volume {volume} is used by {', '.join(users)}")
        await in_thread(self._custom_pool(pool).delete_volume, "custom", volume)
        point("volume-delete.after-volume")
        self.events.lifecycle("storage-volume-deleted",
                              f"/1.0/storage-pools/{pool}/volumes/custom/{volume}")

    async def copy_custom_volume(self, pool: str, volume: str, target: str,
                                 snapshots: bool = False) -> None:
        target = target.strip()
        check_name("volume", target)
        backend = self._custom_pool(pool)
        if await in_thread(backend.volume_exists, "custom", target):
            raise AlreadyExists(f"volume {target} already exists in pool {pool}")
        async with self._journal("volume-copy", target, pool=pool):
            point("volume-copy.after-intent")
            await in_thread(backend.copy_volume, "custom", volume, target, snapshots)

    async def rename_custom_volume(self, pool: str, volume: str, new: str) -> None:
        """Rename a custom volume with its snapshots (EBUSY while a device uses it)."""
        check_name("volume", new)
        backend = self._custom_pool(pool)
        users = self.custom_volume_users(pool, volume)
        if users:
            raise Busy(f"volume {volume} is used by {', '.join(users)}: detach it first")
        async with self._locks[f"volume/{pool}/{volume}"]:
            if not await in_thread(backend.volume_exists, "custom", volume):
                raise NotFound(f"volume {volume} not found in pool {pool}")
            if await in_thread(backend.volume_exists, "custom", new):
                raise AlreadyExists(f"volume {new} already exists in pool {pool}")
            await in_thread(backend.rename_volume, "custom", volume, new)
        self.events.lifecycle("storage-volume-renamed",
                              f"/1.0/storage-pools/{pool}/volumes/custom/{new}",
                              old_name=volume)

    async def rename_custom_snapshot(self, pool: str, volume: str, old: str, new: str
                                     ) -> None:
        check_name("snapshot", new)
        backend = self._custom_pool(pool)
        snapshots = await in_thread(backend.list_snapshots, "custom", volume)
        if old not in snapshots:
            raise NotFound(f"snapshot {volume}/{old} not found")
        if new in snapshots:
            raise AlreadyExists(f"snapshot {volume}/{new} already exists")
        await in_thread(backend.rename_snapshot, "custom", volume, old, new)

    async def snapshot_custom_volume(self, pool: str, volume: str, snapshot: str) -> None:
        check_name("snapshot", snapshot)
        await in_thread(self._custom_pool(pool).create_snapshot, "custom", volume, snapshot)

    async def delete_custom_snapshot(self, pool: str, volume: str, snapshot: str) -> None:
        await in_thread(self._custom_pool(pool).delete_snapshot, "custom", volume, snapshot)

    async def restore_custom_volume(self, pool: str, volume: str, snapshot: str) -> None:
        backend = self._custom_pool(pool)
        snapshot = snapshot.strip()
        if snapshot not in await in_thread(backend.list_snapshots, "custom", volume):
            raise NotFound(f"snapshot {volume}/{snapshot} not found")
        running = [u for u in self.custom_volume_users(pool, volume)
                   if u.startswith("instances/") and self.instances[u[10:]].storage_state ==
                   "ready" and u[10:] in self._running_pids]
        if running:
            raise Busy(f"volume {volume} is in use by running {', '.join(running)}")
        await in_thread(backend.restore_snapshot, "custom", volume, snapshot)

    async def pool_volumes(self, name: str, vtype: VolumeType) -> list[str]:
        backend = self.pools.get(name)
        return await in_thread(backend.list_volumes, vtype) if backend else []

    async def volume_usage(self, name: str, vtype: VolumeType, volume: str) -> int:
        return await in_thread(self.pools[name].volume_usage, vtype, volume)


def _root_size_change(old: dict[str, str], new: dict[str, str]) -> bool:
    """Whether a device change is a root disk's ``size`` alone."""
    return all(d.get("type") == "disk" and d.get("path") == "/" for d in (old, new)) and \
        {k: v for k, v in old.items() if k != "size"} == \
        {k: v for k, v in new.items() if k != "size"}


def _root_pool_refusal(inst: Instance, probe: Instance) -> str:
    """Why a change may not take an instance's root disk away or to another pool: its volume
    stays where it is (``pool`` moves it)."""
    if not probe.root_pool():
        return (f"instance {inst.name} would have no root disk (a disk with path=/ and "
                f"pool=...): its root filesystem lives in pool {inst.root_pool()}")
    return (f"the root disk of instance {inst.name} cannot change pool from "
            f"{inst.root_pool()} to {probe.root_pool()} this way: write the pool's name to "
            f"instances/{inst.name}/pool (lxfs move {inst.name} {inst.name} -s POOL)")


def _normalise_action(text: str) -> tuple[str, int | None]:
    """``start``, ``stop``, ``stop 10`` (graceful, kill after 10 s), ``kill``..."""
    words = text.strip().lower().split()
    if words in (["stop", "--force"], ["stop", "-f"], ["force-stop"]):
        return "kill", None
    if len(words) == 2 and words[0] == "stop" and words[1].isascii() and words[1].isdigit():
        if int(words[1]) > MAX_SECONDS:
            raise InvalidArgument(f"stop: a timeout of at most {MAX_SECONDS} seconds")
        return "stop", int(words[1])
    if len(words) != 1 or words[0] not in ACTIONS:
        raise InvalidArgument(f"unknown action {text.strip()!r}: use one of "
                              f"{', '.join(ACTIONS)} (or 'stop SECONDS')")
    return words[0], None


def _check_transition(name: str, action: str, state: str) -> None:
    """EBUSY with a reason when ``action`` makes no sense in ``state``."""
    if action == "start" and state != "STOPPED":
        raise Busy(f"instance {name} is already {state.lower()}")
    if action in ("stop", "kill") and state == "STOPPED":
        raise Busy(f"instance {name} is already stopped")
    if action == "restart" and state == "STOPPED":
        raise Busy(f"instance {name} is not running")
    if action == "freeze" and state != "RUNNING":
        raise Busy(f"instance {name} is {state.lower()}, not running")
    if action == "unfreeze" and state != "FROZEN":
        raise Busy(f"instance {name} is {state.lower()}, not frozen")


def _mkstemp(directory: Path) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(dir=directory, prefix="upload-")


def _detach_mounts_under(path: Path) -> None:
    """Lazily unmount everything mounted at or below ``path`` (deepest first)."""
    root = str(path.resolve()) if path.exists() else str(path)
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point_ = line.split()[4].replace("\\040", " ")
            if point_ == root or point_.startswith(root + "/"):
                points.append(point_)
    for mounted in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", mounted], capture_output=True, check=False)
