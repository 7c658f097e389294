"""The plugin API: everything of the core a plugin may use.

Hooks receive a :class:`Host` as ``host``; runtimes get it at construction. Plugins import
only these modules of lxfs: ``lxfs`` (``hookimpl``), ``lxfs.api``, ``lxfs.errors``,
``lxfs.config_schema`` (``KeySpec`` and the value checkers), ``lxfs.model`` (the records),
``lxfs.storage`` (``StorageDriver`` and its helpers), ``lxfs.runtime`` (``Runtime``),
``lxfs.devices`` (``DeviceType``), ``lxfs.nodes`` (building blocks for mount entries) and
``lxfs.image_servers`` (``ImageServer`` drivers, and the simplestreams documents).
``tests/test_plugin_api.py`` checks that the built-in plugins keep to it.

Unless it says otherwise, a method may be called from a worker thread (where hooks that
touch the disk run) as well as from the event loop; none blocks for long.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lxfs.atomic import write_atomic as write_atomic  # for plugins: replace a file at once

if TYPE_CHECKING:
    import pluggy

    from lxfs.events import EventBus
    from lxfs.model import Instance, Profile
    from lxfs.server import Server
    from lxfs.storage import StorageDriver

T = TypeVar("T")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_layout() -> str:
    """``v1``, ``v2`` or ``hybrid`` (v1 controllers, a v2 tree at ``unified/``), as seen
    from /sys/fs/cgroup. Only ``v2`` takes ``lxc.cgroup2.*`` limit keys."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return "v2"
    if (CGROUP_ROOT / "unified" / "cgroup.controllers").exists():
        return "hybrid"
    return "v1"


SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13


def peer_credentials(conn: Any) -> tuple[int, int, set[int]]:
    """(pid, uid, groups) of the process at the other end, as they were when it connected
    (the kernel's record, not the user database: groups given by ``newgrp`` or ``setpriv``
    count, groups added since do not)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    try:  # Python's getsockopt takes at most 1024 bytes: 256 groups
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
    except OSError:  # ERANGE: more groups than that; the primary group still counts
        raw = b""
    groups = set(struct.unpack(f"{len(raw) // 4}I", raw[:len(raw) - len(raw) % 4]))
    return pid, uid, groups | {gid}


def may_drive(uid: int, groups: set[int], access_gid: int) -> bool:
    """Whether a peer may drive lxfs: root, or a member of the access group."""
    return uid == 0 or (access_gid != 0 and access_gid in groups)


class Host:
    """The daemon as plugins see it."""

    def __init__(self, server: Server) -> None:
        self._server = server

    # --- facts ----------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """The data directory (0711: only what containers must reach is open below it)."""
        return self._server.data_dir

    @property
    def mount(self) -> Path:
        """Where the filesystem API is mounted."""
        return self._server.mount

    @property
    def access_gid(self) -> int:
        """The group whose members may drive lxfs (group ``lxfs``; 0: root alone): give it
        the sockets you serve to users (mode 0660), as the mount gives it its files."""
        return self._server.access_gid

    @property
    def hook(self) -> pluggy.HookRelay:
        """The hooks, to call another plugin's answer (``host.hook.lxfs_instance_root_ids``);
        pass ``host=host``."""
        return self._server.hook

    @staticmethod
    def cgroup_layout() -> str:
        """``v1``, ``v2`` or ``hybrid``: see :func:`cgroup_layout`."""
        return cgroup_layout()

    # --- the model (read) -----------------------------------------------------------------

    def instances(self) -> dict[str, Instance]:
        """Every instance by name (a copy of the mapping: the records themselves are live,
        read their ``expanded_config``/``expanded_devices``; never change them but through
        :meth:`set_volatile`)."""
        return dict(self._server.instances)

    def instance(self, name: str) -> Instance | None:
        return self._server.instances.get(name)

    def profiles(self) -> dict[str, Profile]:
        return dict(self._server.profiles)

    def pool(self, name: str) -> StorageDriver | None:
        """A mounted storage pool's driver by pool name."""
        return self._server.pools.get(name)

    def rootfs(self, instance: Instance) -> Path:
        """The instance's root filesystem as stored (unshifted) in its pool."""
        return self._server.rootfs(instance)

    def instance_pid(self, instance: Instance) -> int:
        """The host PID of a running instance's init, 0 otherwise (the daemon's own record:
        no runtime query)."""
        return self._server.running_pid(instance.name)

    def instance_dir(self, instance: Instance, plugin: str) -> Path:
        """A directory of the plugin's own for one instance (``DATA_DIR/instance-data/NAME/
        PLUGIN``, created 0700 on first use; its parents are 0711 so that an unprivileged
        container can be let through to files bound into it). Removed with the instance,
        renamed with it."""
        return self._server.plugin_instance_dir(instance.name, plugin)

    # --- writes ---------------------------------------------------------------------------

    def set_volatile(self, instance: Instance, key: str, value: str | None) -> None:
        """Set (``None``: remove) a ``volatile.*`` key of an instance, written to the
        database in one transaction before it is visible; on failure nothing changes.
        Call it from the hooks of an operation on that instance (``pre_create``,
        ``pre_start``...: the core holds the instance's lock) or, elsewhere, from the event
        loop."""
        self._server.set_volatile(instance, key, value)

    def load_documents(self, kind: str) -> dict[str, dict[str, Any]]:
        """Records a plugin keeps in the daemon's database, by name (``networks``...)."""
        return self._server.db.load_documents(kind)

    def put_document(self, kind: str, name: str, data: dict[str, Any]) -> None:
        """Store one record (JSON-serialisable), atomically."""
        self._server.db.put_document(kind, name, data)

    def delete_document(self, kind: str, name: str) -> None:
        self._server.db.delete_document(kind, name)

    # --- for front ends (event loop only) --------------------------------------------------

    @property
    def operations(self) -> Server:
        """The server's operations, for front-end plugins (the REST bridge) that drive
        lxfs as the mount does: the public coroutines of ``lxfs.server.Server`` that the
        mount's files call (``create_instance``, ``set_source``, ``change_state``,
        ``set_instance_key``, ``create_snapshot``, ``import_upload``...) and its public
        attributes (``instances``, ``images``, ``aliases``, ``profiles``, ``pools``,
        ``config``, ``errors``). Everything they do is validated, journaled and evented as
        through the mount; backend plugins have no use for it."""
        return self._server

    @property
    def events(self) -> EventBus:
        """The event bus behind the mount's ``events`` file: ``subscribe()`` a bounded
        channel of JSON lines, ``unsubscribe()`` it, ``emit()`` or ``lifecycle()``."""
        return self._server.events

    # --- for mount entries (event loop only) ----------------------------------------------

    async def guarded(self, scope: str, op: Awaitable[T]) -> T:
        """Run an operation and record its error (or clear it) for ``scope``'s ``error``
        file, as the core's own files do (nodes' writes call it)."""
        return await self._server.guarded(scope, op)

    def set_error(self, scope: str, message: str) -> None:
        self._server.set_error(scope, message)

    def error(self, scope: str) -> str:
        """The last error recorded for ``scope`` ("" when the last operation succeeded)."""
        return self._server.errors.get(scope, "")
