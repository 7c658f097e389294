"""The tree of the mount: what each directory lists and what each file reads and accepts.

Nodes are small objects made on demand from the server's state; ``lxfs.fs`` maps the kernel's
requests onto them. A directory lists names and makes child nodes; a file reads bytes and
applies writes through the server (which validates them). See docs/filesystem.md.
"""

from __future__ import annotations

import posixpath
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from lxfs.errors import (
    AlreadyExists,
    InvalidArgument,
    LxfsError,
    NotFound,
    PermissionDenied,
)
from lxfs.model import Instance, Profile, rfc3339
from lxfs.projects import (
    DEFAULT,
    PROJECT_KEYS,
    instance_key,
    profile_key,
    split_profile_key,
)
from lxfs.storage import VOLUME_TYPES, Pool, VolumeType

if TYPE_CHECKING:
    from lxfs.api import Host
    from lxfs.server import Server

    #: what the building blocks (Dir, StaticDir, File, KeyValueDir) need of their owner:
    #: ``guarded`` and ``set_error``; the core gives the server, plugins their ``Host``
    Owner = Server | Host

Reader = Callable[[], Awaitable[str] | str]
Writer = Callable[[str], Awaitable[None]]


def text(value: object) -> bytes:
    """A value as the mount shows it: text with one trailing newline."""
    if isinstance(value, bool):
        value = "true" if value else "false"
    s = str(value)
    return (s if s.endswith("\n") or s == "" else s + "\n").encode()


def lines(items: list[str]) -> str:
    return "".join(f"{i}\n" for i in items)


class Node:
    kind = "node"
    #: the error file this node's failures go to ("" = the root error file)
    scope = ""
    #: root's alone: the mount shows it mode 0700/0600 owned by root:root, so that members
    #: of the access group (who drive everything else) cannot reach containers' files
    private = False


class Dir(Node):
    kind = "dir"
    mtime: float = 0.0

    def __init__(self, srv: Owner, scope: str = "") -> None:
        self.srv = srv
        self.scope = scope

    async def list(self) -> list[str]:
        return []

    async def child(self, name: str) -> Node | None:
        return None

    async def mkdir(self, name: str) -> None:
        raise PermissionDenied("directories cannot be created here")

    async def rmdir(self, name: str) -> None:
        raise PermissionDenied("this directory cannot be removed")

    def create(self, name: str) -> Node:
        """A node for a file about to be created by ``open(O_CREAT)``; it exists once
        written."""
        raise PermissionDenied("files cannot be created here")

    async def unlink(self, name: str) -> None:
        raise PermissionDenied("this file cannot be removed")

    async def symlink(self, name: str, target: str) -> None:
        raise PermissionDenied("symbolic links cannot be created here")

    async def rename(self, old: str, new_parent: Dir, new: str) -> None:
        raise PermissionDenied("entries here cannot be renamed")


class StaticDir(Dir):
    """A directory with a fixed set of children."""

    def __init__(self, srv: Owner, children: dict[str, Callable[[], Node | None]],
                 scope: str = "") -> None:
        super().__init__(srv, scope)
        self.children = children

    async def list(self) -> list[str]:
        return [name for name, make in self.children.items() if make() is not None]

    async def child(self, name: str) -> Node | None:
        make = self.children.get(name)
        return make() if make else None


class File(Node):
    kind = "file"
    #: mode bits: 0o444 read-only, 0o644 read-write, 0o200 write-only
    mode = 0o444
    #: writes accumulate in one value (config values) or are applied chunk by chunk (actions)
    accumulate = True
    #: content changes by itself: size 0 (like procfs), every read sees the current value
    dynamic = False
    stream = False

    def __init__(self, srv: Owner, read: Reader | None = None, write: Writer | None = None,
                 scope: str = "", dynamic: bool = False, accumulate: bool = True,
                 private: bool = False, verbatim: bool = False) -> None:
        self.srv = srv
        self._read = read
        self._write = write
        self.scope = scope
        self.dynamic = dynamic
        self.accumulate = accumulate
        self.private = private
        #: read as it is, no newline added: a file that grows (``tail -f log`` reads on
        #: from where the last read ended)
        self.verbatim = verbatim
        self.mode = (0o444 if read else 0) | (0o200 if write else 0)

    async def read(self) -> bytes:
        if self._read is None:
            raise PermissionDenied("this file is write-only")
        value = self._read()
        if not isinstance(value, str):
            value = await value
        return value.encode() if self.verbatim else text(value)

    async def write(self, data: bytes) -> None:
        if self._write is None:
            raise PermissionDenied("this file is read-only")
        try:
            value = data.decode()
        except UnicodeDecodeError:
            raise InvalidArgument("values are UTF-8 text") from None
        await self.srv.guarded(self.scope, self._write(value))


class Link(Node):
    kind = "link"

    def __init__(self, target: str) -> None:
        self.target = target


class HostFile(Node):
    """A file or directory of the host, passed through (instance root filesystems, image
    exports).

    Inside a root filesystem (``root`` set), symbolic links are shown resolved as the
    container would (``..`` stops at its ``/``) and rooted at the rootfs's place in the mount
    (``view``): a link planted by a container can never lead a host-side ``cp`` or ``cat``
    out of that container's files.
    """

    kind = "host"

    def __init__(self, path: Path, readonly: bool = False, scope: str = "",
                 root: Path | None = None, view: str = "", private: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self.scope = scope
        self.root = root
        self.view = view
        self.private = private  # only the entry itself: what is below keeps its own modes

    def child(self, name: str) -> HostFile:
        """The node of entry ``name``. It never touches the disk (the event loop calls it):
        whether the entry exists is for the system call made on it, in a worker thread."""
        return HostFile(self.path / name, self.readonly, self.scope, self.root, self.view)

    def link_target(self, target: str) -> str:
        """A link's ``target`` (as read from it) as the mount shows it."""
        if self.root is None:
            return target
        if not target.startswith("/"):
            here = "/" + str(self.path.parent.relative_to(self.root))
            target = posixpath.join(here, target)
        inside = posixpath.normpath("/" + target.lstrip("/")).lstrip("/")
        return posixpath.join(self.view, inside) if inside else self.view


# --- config directories ---------------------------------------------------------------------


class KeyValueDir(Dir):
    """``config/``: one file per key. Writing a file sets the key, ``rm`` unsets it."""

    def __init__(self, srv: Owner, get: Callable[[], dict[str, str]],
                 set_key: Callable[[str, str], Awaitable[None]] | None,
                 unset_key: Callable[[str], Awaitable[None]] | None,
                 validate_name: Callable[[str], None] | None = None, scope: str = "",
                 secret: Callable[[str], bool] = lambda key: False) -> None:
        super().__init__(srv, scope)
        self.get = get
        self.set_key = set_key
        self.unset_key = unset_key
        self.validate_name = validate_name
        self.secret = secret

    async def list(self) -> list[str]:
        return sorted(self.get(), key=self.order)

    @staticmethod
    def order(key: str) -> tuple[bool, str]:
        """Listing order: sorted (a device's ``type`` first, see ``DevicesDir``)."""
        return (False, key)

    def is_key(self, name: str) -> bool:
        """Whether a new file ``name`` would be a key (else a scratch file: ``lxfs.fs``)."""
        if self.set_key is None:
            return False
        try:
            if self.validate_name:
                self.validate_name(name)
        except LxfsError:
            return False
        return True

    def _file(self, key: str) -> File:
        write = (lambda v: self.set_key(key, v)) if self.set_key else None
        if self.secret(key):  # write-only: nobody reads a secret back, not even its hash
            return File(self.srv, None, write, scope=self.scope)
        return File(self.srv, lambda: self.get().get(key, ""), write, scope=self.scope)

    async def child(self, name: str) -> Node | None:
        return self._file(name) if name in self.get() else None

    def create(self, name: str) -> Node:
        if self.set_key is None:
            raise PermissionDenied("read-only directory")
        if self.validate_name:
            try:
                self.validate_name(name)
            except LxfsError as exc:
                self.srv.set_error(self.scope, exc.message)
                raise
        return self._file(name)

    async def unlink(self, name: str) -> None:
        if self.unset_key is None:
            raise PermissionDenied("read-only directory")
        if name not in self.get():
            raise NotFound(f"{name} is not set")
        await self.srv.guarded(self.scope, self.unset_key(name))


class DevicesDir(Dir):
    """``devices/``: a directory per device with a file per key."""

    def __init__(self, srv: Server, owner: Callable[[], Instance | Profile], scope: str,
                 readonly: bool = False) -> None:
        super().__init__(srv, scope)
        self.owner = owner
        self.readonly = readonly

    def _devices(self) -> dict[str, dict[str, str]]:
        owner = self.owner()
        return owner.expanded_devices if self.readonly and isinstance(owner, Instance) \
            else owner.devices

    async def list(self) -> list[str]:
        return sorted(self._devices())

    async def child(self, name: str) -> Node | None:
        if name not in self._devices():
            return None
        srv, owner = self.srv, self.owner

        async def set_key(key: str, value: str) -> None:
            await srv.set_device_key(owner(), name, key, value)

        async def unset_key(key: str) -> None:
            await srv.set_device_key(owner(), name, key, "")

        def validate_key(key: str) -> None:
            if key == "type" or key.startswith("user."):
                return
            kind = self._devices().get(name, {}).get("type", "")
            dtype = srv.device_types.types.get(kind)
            if dtype is None:
                raise InvalidArgument(f"device {name}: write its type first")
            if key not in dtype.keys:
                raise InvalidArgument(f"device {name}: unknown key {key!r} for a {kind} "
                                      "device")

        keys = KeyValueDir(
            srv, lambda: self._devices().get(name, {}),
            None if self.readonly else set_key, None if self.readonly else unset_key,
            validate_key, scope=self.scope)
        # ``type`` first: a copy (tar, cp -r, rsync) writes it before the keys that need it
        keys.order = lambda key: (key != "type", key)  # type: ignore[method-assign]
        return keys

    async def mkdir(self, name: str) -> None:
        if self.readonly:
            raise PermissionDenied("the expanded view is read-only")
        await self.srv.guarded(self.scope, self.srv.add_device(self.owner(), name))

    async def rmdir(self, name: str) -> None:
        if self.readonly:
            raise PermissionDenied("the expanded view is read-only")
        await self.srv.guarded(self.scope, self.srv.remove_device(self.owner(), name))


# --- instances ------------------------------------------------------------------------------


#: ``instances/.list``: every instance in one read (what ``lxfs list`` shows)
LISTING = ".list"
LISTING_COLUMNS = ("NAME", "STATE", "PID", "TYPE", "EPHEMERAL", "SNAPSHOTS", "IPV4", "IPV6")


def instance_path(inst: Instance) -> str:
    """An instance's directory on the mount, relative to its root."""
    if inst.project == DEFAULT:
        return f"instances/{inst.name}"
    return f"projects/{inst.project}/instances/{inst.local_name}"


def _project_instances(srv: Server, project: str) -> dict[str, Instance]:
    """The instances of ``project`` by their name in it."""
    if project == DEFAULT:
        return {k: i for k, i in srv.instances.items() if i.project == DEFAULT}
    return {i.local_name: i for i in srv.instances.values() if i.project == project}


async def instances_table(srv: Server, project: str = DEFAULT) -> str:
    """``instances/.list``: a header, then one tab-separated line per instance (columns
    ``LISTING_COLUMNS``; addresses as in ``ipv4``/``ipv6``, joined by ``, ``). One read
    instead of one per instance and column: its cost barely grows with the number of
    instances. The addresses of running instances are read concurrently."""
    rows: dict[str, list[str]] = {}
    addresses: dict[str, tuple[str, str]] = {}

    async def read_addresses(name: str, inst: Instance) -> None:
        entries: dict[str, Callable[[], Node | None]] = {}
        for extra in srv.hook.lxfs_instance_entries(host=srv.api, instance=inst):
            entries.update(extra)
        found = []
        for key in ("ipv4", "ipv6"):
            node = entries[key]() if key in entries else None
            try:
                data = (await node.read()).decode() if isinstance(node, File) else ""
            except LxfsError:
                data = ""
            found.append(", ".join(line for line in data.splitlines() if line))
        addresses[name] = (found[0], found[1])

    async with trio.open_nursery() as nursery:
        members = _project_instances(srv, project)
        for name in sorted(members):
            inst = members[name]
            if srv.instances.get(inst.name) is not inst:
                continue
            state = await srv.state(inst.name)
            pid = await srv.pid(inst.name)
            rows[name] = [name, state, str(pid), inst.type,
                          "true" if inst.ephemeral else "false", str(len(inst.snapshots))]
            if pid > 0:
                nursery.start_soon(read_addresses, name, inst)
    out = ["\t".join(LISTING_COLUMNS)]
    for name, row in rows.items():
        out.append("\t".join([*row, *addresses.get(name, ("", ""))]))
    return lines(out)


class InstancesDir(Dir):
    """``instances/`` (the default project's) or ``projects/NAME/instances/``: the same
    layout, names within the project (the core keys them by ``instance_key``)."""

    def __init__(self, srv: Server, project: str = DEFAULT) -> None:
        super().__init__(srv)
        self.project = project

    def _key(self, name: str) -> str | None:
        """The core's key of instance ``name`` of this project, None when there is none."""
        key = instance_key(self.project, name)
        inst = self.srv.instances.get(key)
        return key if inst is not None and inst.project == self.project else None

    async def list(self) -> list[str]:
        return [LISTING, *sorted(_project_instances(self.srv, self.project))]

    async def child(self, name: str) -> Node | None:
        if name == LISTING:
            return File(self.srv, lambda: instances_table(self.srv, self.project),
                        dynamic=True)
        key = self._key(name)
        return InstanceDir(self.srv, key) if key is not None else None

    def create(self, name: str) -> Node:
        """A backup tarball copied in: imported at close under the backup's own name."""
        if self.project != DEFAULT:
            raise PermissionDenied("backups are imported into the default project's "
                                   "instances/")
        if name in self.srv.instances or name == LISTING:
            raise InvalidArgument(f"{name} exists")
        return Upload(self.srv, name, lambda path, _n: self.srv.backups.import_tarball(path))

    async def mkdir(self, name: str) -> None:
        await self.srv.guarded("", self.srv.create_instance(name, project=self.project,
                                                            staged=True))

    async def rmdir(self, name: str) -> None:
        key = self._key(name) or instance_key(self.project, name)
        await self.srv.guarded(key, self.srv.delete_instance(key))

    async def rename(self, old: str, new_parent: Dir, new: str) -> None:
        """Within the directory a rename; to another project's ``instances/`` a move."""
        if not isinstance(new_parent, InstancesDir):
            raise InvalidArgument("instances can only be renamed within instances/")
        key = self._key(old) or instance_key(self.project, old)
        await self.srv.guarded(key, self.srv.rename_instance(key, new, new_parent.project))


class InstanceDir(Dir):
    def __init__(self, srv: Server, name: str) -> None:
        super().__init__(srv, name)
        self.name = name
        self.inst = srv.instances[name]
        self.mtime = self.inst.created_at

    def _children(self) -> dict[str, Callable[[], Node | None]]:
        srv, name, inst = self.srv, self.name, self.inst

        def field(attr: str) -> Callable[[], str]:
            return lambda: str(getattr(inst, attr))

        def setter(attr: str) -> Writer:
            return lambda v: srv.set_instance_field(name, attr, v)

        async def set_key(key: str, value: str) -> None:
            await srv.set_instance_key(name, key, value)

        async def unset_key(key: str) -> None:
            await srv.unset_instance_key(name, key)

        def validate_key(key: str) -> None:
            if srv.schema.instance_spec(key) is None:
                raise InvalidArgument(f"unknown configuration key {key!r}")

        def ready() -> bool:
            return inst.storage_state == "ready"

        return {
            "source": lambda: File(srv, lambda: inst.source,
                                   lambda v: srv.set_source(name, v), scope=name),
            "state": lambda: File(srv, lambda: srv.state(name),
                                  lambda v: srv.change_state(name, v), scope=name,
                                  dynamic=True, accumulate=False),
            "status": lambda: File(srv, lambda: _status(srv.state(name)), dynamic=True),
            "error": lambda: File(srv, lambda: srv.errors.get(name, ""), dynamic=True),
            "pid": lambda: File(srv, lambda: _str(srv.pid(name)), dynamic=True),
            "created_at": lambda: File(srv, lambda: rfc3339(inst.created_at)),
            "last_used_at": lambda: File(srv, lambda: rfc3339(inst.last_used_at),
                                         dynamic=True),
            "architecture": lambda: File(srv, field("architecture")),
            "type": lambda: File(srv, field("type")),
            "ephemeral": lambda: File(srv, lambda: "true" if inst.ephemeral else "false",
                                      setter("ephemeral"), scope=name),
            "description": lambda: File(srv, field("description"), setter("description"),
                                        scope=name),
            "profiles": lambda: File(srv, lambda: lines([split_profile_key(p)[1]
                                                         for p in inst.profiles]),
                                     setter("profiles"), scope=name),
            "config": lambda: KeyValueDir(srv, lambda: inst.config, set_key, unset_key,
                                          validate_key, scope=name),
            "devices": lambda: DevicesDir(srv, lambda: inst, name),
            "expanded": lambda: StaticDir(srv, {
                "config": lambda: KeyValueDir(srv, lambda: inst.expanded_config, None, None),
                "devices": lambda: DevicesDir(srv, lambda: inst, name, readonly=True),
            }),
            "log": lambda: File(srv, lambda: srv.runtime.log(inst), dynamic=True,
                                private=True, verbatim=True),
            "console": lambda: File(srv, lambda: srv.runtime.console_log(inst), dynamic=True,
                                    private=True, verbatim=True),
            "rootfs": lambda: _rootfs(srv.rootfs(inst), f"{instance_path(inst)}/rootfs", srv,
                                      scope=name) if ready() else None,
            "snapshots": lambda: SnapshotsDir(srv, name),
            "restore": lambda: File(srv, None, lambda v: srv.restore_snapshot(name, v),
                                    scope=name, accumulate=False),
            "override": lambda: File(srv, None, lambda v: srv.override_device(name, v),
                                     scope=name),
            "ipv4": lambda: File(srv, lambda: "", dynamic=True),
            "ipv6": lambda: File(srv, lambda: "", dynamic=True),
            "pool": lambda: File(srv, lambda: inst.root_pool(),
                                 lambda v: srv.move_to_pool(name, v), scope=name),
            "usage": lambda: StaticDir(srv, {
                **{key: _usage_file(srv, name, key)
                   for key in ("processes", "memory", "memory_peak", "cpu")},
                "disk": lambda: File(srv, lambda: _str(srv.disk_usage(name)), dynamic=True),
            }),
            "publish": lambda: File(srv, lambda: srv.published.get(name, ""),
                                    lambda v: _publish(srv, name, "", v), scope=name,
                                    accumulate=False),
            "backups": lambda: BackupsDir(srv, name) if ready() else None,
        }

    def _all_children(self) -> dict[str, Callable[[], Node | None]]:
        children = self._children()
        for extra in self.srv.hook.lxfs_instance_entries(host=self.srv.api, instance=self.inst):
            children.update(extra)
        return children

    async def list(self) -> list[str]:
        return [k for k, make in self._all_children().items() if make() is not None]

    async def child(self, name: str) -> Node | None:
        make = self._all_children().get(name)
        return make() if make else None

    def create(self, name: str) -> Node:
        """A backup tarball copied into an instance made by ``mkdir`` (no root filesystem
        yet): imported into it (its pool, config and profiles set beforehand win)."""
        if self.inst.storage_state:
            raise PermissionDenied("files cannot be created here")
        return Upload(self.srv, name,
                      lambda path, _n: self.srv.backups.import_tarball(path, self.name))


class BackupsDir(Dir):
    """``instances/NAME/backups/``: ``mkdir B`` makes backup B (with snapshots, the
    default compression), ``create`` takes ``B [instance_only=true]
    [optimized_storage=true] [compression_algorithm=C]``; ``B/export`` is the tarball,
    ``rmdir B`` deletes it, ``mv B C`` renames it."""

    def __init__(self, srv: Server, name: str) -> None:
        super().__init__(srv, name)
        self.name = name

    async def list(self) -> list[str]:
        return ["create", *(b.name for b in self.srv.backups.list(self.name))]

    async def child(self, name: str) -> Node | None:
        srv, inst = self.srv, self.name
        if name == "create":
            return File(srv, None, lambda v: _create_backup(srv, inst, v), scope=inst,
                        accumulate=False)
        try:
            b = srv.backups.get(inst, name)
        except LxfsError:
            return None

        async def set_expiry(value: str) -> None:
            await srv.backups.set_expiry(inst, name, value)

        return StaticDir(srv, {
            "name": lambda: File(srv, lambda: b.name),
            "created_at": lambda: File(srv, lambda: rfc3339(b.created_at)),
            "expires_at": lambda: File(srv, lambda: b.expires_at, set_expiry, scope=inst),
            "instance_only": lambda: File(srv, lambda: _bool(b.instance_only)),
            "optimized_storage": lambda: File(srv, lambda: _bool(b.optimized_storage)),
            "compression_algorithm": lambda: File(srv, lambda: b.compression_algorithm),
            "export": lambda: HostFile(srv.backups.path(inst, name), readonly=True,
                                       private=True),
        }, scope=inst)

    async def mkdir(self, name: str) -> None:
        await self.srv.guarded(self.scope, self.srv.backups.create(self.name, name))

    async def rmdir(self, name: str) -> None:
        await self.srv.guarded(self.scope, self.srv.backups.delete(self.name, name))

    async def rename(self, old: str, new_parent: Dir, new: str) -> None:
        if not (isinstance(new_parent, BackupsDir) and new_parent.name == self.name):
            raise InvalidArgument("backups can only be renamed within their instance")
        await self.srv.guarded(self.scope, self.srv.backups.rename(self.name, old, new))


def _bool(value: bool) -> str:
    return "true" if value else "false"


async def _create_backup(srv: Server, name: str, line: str) -> None:
    """``create``'s line: ``B [instance_only=BOOL] [optimized_storage=BOOL]
    [compression_algorithm=C] [expires_at=TIME]``."""
    words = line.split()
    if not words:
        raise InvalidArgument("create: expected a backup name and KEY=VALUE options")
    options: dict[str, str] = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep or key not in ("instance_only", "optimized_storage",
                                  "compression_algorithm", "expires_at"):
            raise InvalidArgument(f"create: unknown option {word!r}")
        options[key] = value
    flag = {"true": True, "false": False, "1": True, "0": False}
    for key in ("instance_only", "optimized_storage"):
        if options.get(key, "false") not in flag:
            raise InvalidArgument(f"create: {key} is true or false")
    await srv.backups.create(
        name, words[0], instance_only=flag[options.get("instance_only", "false")],
        optimized=flag[options.get("optimized_storage", "false")],
        compression=options.get("compression_algorithm", ""),
        expires_at=options.get("expires_at", ""))


def _rootfs(path: Path, where: str, srv: Server, scope: str = "",
            readonly: bool = False) -> HostFile:
    return HostFile(path, readonly, scope, root=path, view=f"{srv.mount}/{where}",
                    private=True)


def _usage_file(srv: Server, name: str, key: str) -> Callable[[], Node]:
    async def value() -> str:
        return str((await srv.usage(name)).get(key, 0))

    return lambda: File(srv, value, dynamic=True)


async def _publish(srv: Server, name: str, snapshot: str, request: str) -> None:
    await srv.publish(name, snapshot, request)


async def _status(state: Awaitable[str]) -> str:
    """LXD's status word (``Running``, ``Stopped``...) for a state."""
    return (await state).capitalize()


async def _str(value: Awaitable[object]) -> str:
    return str(await value)


class SnapshotsDir(Dir):
    def __init__(self, srv: Server, name: str) -> None:
        super().__init__(srv, name)
        self.inst = srv.instances[name]

    async def list(self) -> list[str]:
        return sorted(self.inst.snapshots, key=lambda s: self.inst.snapshots[s].created_at)

    async def child(self, name: str) -> Node | None:
        snap = self.inst.snapshots.get(name)
        if snap is None:
            return None
        srv, inst = self.srv, self.inst
        return StaticDir(srv, {
            "name": lambda: File(srv, lambda: snap.name),
            "created_at": lambda: File(srv, lambda: rfc3339(snap.created_at)),
            "publish": lambda: File(srv, lambda: srv.published.get(f"{inst.name}/{name}", ""),
                                    lambda v: _publish(srv, inst.name, name, v),
                                    scope=inst.name, accumulate=False),
            "rootfs": lambda: _rootfs(srv.snapshot_rootfs(inst, name),
                                      f"{instance_path(inst)}/snapshots/{name}/rootfs", srv,
                                      readonly=True),
        }, scope=self.scope)

    async def mkdir(self, name: str) -> None:
        await self.srv.guarded(self.scope, self.srv.create_snapshot(self.inst.name, name))

    async def rmdir(self, name: str) -> None:
        await self.srv.guarded(self.scope, self.srv.delete_snapshot(self.inst.name, name))

    async def rename(self, old: str, new_parent: Dir, new: str) -> None:
        if not (isinstance(new_parent, SnapshotsDir) and new_parent.inst is self.inst):
            raise InvalidArgument("snapshots can only be renamed within their instance")
        await self.srv.guarded(self.scope, self.srv.rename_snapshot(self.inst.name, old, new))


# --- images ---------------------------------------------------------------------------------


class Upload(Node):
    """A file being copied into ``images/``: bytes go to a staging file, imported at close."""

    kind = "upload"

    def __init__(self, srv: Server, name: str,
                 importer: Callable[[Path, str], Awaitable[object]] | None = None) -> None:
        self.srv = srv
        self.name = name
        #: what imports the file at close (default: ``Server.import_upload``, an image)
        self.importer = importer or srv.import_upload


class ImagesDir(Dir):
    """``images/`` (the default project's) or ``projects/NAME/images/``: a project with
    ``features.images=false`` shows the default project's, read-only. Aliases, pulls and
    pending uploads are the top level's."""

    def __init__(self, srv: Server, project: str = DEFAULT) -> None:
        super().__init__(srv)
        self.project = project

    def _writable(self) -> None:
        if self.srv.images_project(self.project) != self.project:
            raise PermissionDenied(f"project {self.project!r} uses the default project's "
                                   "images (features.images=false): change them in images/")

    async def list(self) -> list[str]:
        images = sorted(self.srv.project_images(self.project))
        if self.project != DEFAULT:
            return images
        return images + ["aliases", "pull", "pulling"] + sorted(self.srv.pending_uploads())

    async def child(self, name: str) -> Node | None:
        top = self.project == DEFAULT
        if name == "aliases" and top:
            return AliasesDir(self.srv)
        if name == "pull" and top:  # ``PROTOCOL URL IMAGE [alias=A]...`` pulls; reads the last
            return File(self.srv, lambda: self.srv.last_pulled, self.srv.pull_from_line,
                        dynamic=True)
        if name == "pulling" and top:  # the pulls under way: ``SERVER IMAGE: PROGRESS`` lines
            return File(self.srv, lambda: lines([f"{k}: {v}" for k, v in
                                                 sorted(self.srv.pulls.items())]), dynamic=True)
        if name in self.srv.project_images(self.project):
            return ImageDir(self.srv, name)
        pending = self.srv.pending_uploads().get(name) if top else None
        if pending is not None:
            return HostFile(pending, readonly=True)
        return None

    def create(self, name: str) -> Node:
        if name in ("aliases", "pull", "pulling") or name in self.srv.images:
            raise InvalidArgument(f"{name} exists")
        self._writable()
        project = self.project
        return Upload(self.srv, name,
                      lambda path, n: self.srv.import_into_project(path, n, project))

    async def rmdir(self, name: str) -> None:
        self._writable()
        await self.srv.guarded("", self.srv.delete_project_image(name, self.project))

    async def unlink(self, name: str) -> None:
        await self.srv.guarded("", self.srv.drop_pending_upload(name))


class ImageDir(Dir):
    def __init__(self, srv: Server, fp: str) -> None:
        super().__init__(srv)
        self.fp = fp
        self.image = srv.images[fp]
        self.mtime = self.image.uploaded_at

    def _children(self) -> dict[str, Callable[[], Node | None]]:
        srv, image, fp = self.srv, self.image, self.fp

        def ro(value: Callable[[], object]) -> Callable[[], Node]:
            return lambda: File(srv, lambda: _fmt(value()))

        def rw(attr: str) -> Callable[[], Node]:
            return lambda: File(srv, lambda: _fmt(getattr(image, attr)),
                                lambda v: srv.set_image_field(fp, attr, v))

        async def set_prop(key: str, value: str) -> None:
            await srv.set_image_field(fp, f"properties/{key}", value)

        async def unset_prop(key: str) -> None:
            await srv.set_image_field(fp, f"properties/{key}", "")

        rootfs = srv.images_dir / f"{fp}.rootfs"
        return {
            "fingerprint": ro(lambda: fp),
            "filename": ro(lambda: image.filename),
            "size": ro(lambda: image.size),
            "architecture": ro(lambda: image.architecture),
            "type": ro(lambda: image.type),
            "created_at": ro(lambda: rfc3339(image.created_at)),
            "uploaded_at": ro(lambda: rfc3339(image.uploaded_at)),
            "expires_at": ro(lambda: rfc3339(image.expires_at)),
            "public": rw("public"),
            "auto_update": rw("auto_update"),
            "cached": ro(lambda: image.cached),
            "last_used_at": ro(lambda: rfc3339(image.last_used_at)),
            "update_source": lambda: KeyValueDir(srv, lambda: image.update_source, None,
                                                 None) if image.update_source else None,
            "aliases": ro(lambda: lines(sorted(a for a, (f, _) in srv.aliases.items()
                                               if f == fp))),
            "properties": lambda: KeyValueDir(srv, lambda: image.properties, set_prop,
                                              unset_prop),
            "export": lambda: HostFile(srv.images_dir / fp, readonly=True),
            "export.rootfs": lambda: HostFile(rootfs, readonly=True) if image.split else None,
        }

    async def list(self) -> list[str]:
        return [k for k, make in self._children().items() if make() is not None]

    async def child(self, name: str) -> Node | None:
        make = self._children().get(name)
        return make() if make else None


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class AliasesDir(Dir):
    async def list(self) -> list[str]:
        return sorted(self.srv.aliases)

    async def child(self, name: str) -> Node | None:
        entry = self.srv.aliases.get(name)
        return Link(f"../{entry[0]}") if entry else None

    async def symlink(self, name: str, target: str) -> None:
        await self.srv.guarded("", self.srv.create_alias(name, target))

    async def unlink(self, name: str) -> None:
        await self.srv.guarded("", self.srv.delete_alias(name))


# --- profiles, pools, server ----------------------------------------------------------------


class ProfilesDir(Dir):
    """``profiles/`` (the default project's) or ``projects/NAME/profiles/``: a project
    with ``features.profiles=false`` shows the default project's, read-only."""

    def __init__(self, srv: Server, project: str = DEFAULT) -> None:
        super().__init__(srv)
        self.project = project

    def _owner(self) -> str:
        return self.srv.profiles_project(self.project)

    def _writable(self) -> None:
        if self._owner() != self.project:
            raise PermissionDenied(f"project {self.project!r} uses the default project's "
                                   "profiles (features.profiles=false): change them in "
                                   "profiles/")

    def _used_by(self, key: str) -> list[str]:
        users = []
        for inst_key in self.srv.profile_used_by(key):
            inst = self.srv.instances[inst_key]
            users.append(inst.local_name if inst.project == self.project
                         else instance_path(inst))
        return users

    async def list(self) -> list[str]:
        return sorted(self.srv.project_profiles(self.project))

    async def child(self, name: str) -> Node | None:
        owner = self._owner()
        name = profile_key(owner, name)
        profile = self.srv.profiles.get(name)
        if profile is None:
            return None
        srv = self.srv
        writable = owner == self.project

        async def set_key(key: str, value: str) -> None:
            await srv.set_profile_key(name, key, value)

        async def unset_key(key: str) -> None:
            await srv.set_profile_key(name, key, "")

        def validate_key(key: str) -> None:
            if srv.schema.instance_spec(key) is None:
                raise InvalidArgument(f"unknown configuration key {key!r}")

        def set_description(value: str) -> Awaitable[None]:
            return srv.set_profile_description(name, value)

        return StaticDir(srv, {
            "name": lambda: File(srv, lambda: split_profile_key(profile.name)[1]),
            "description": lambda: File(srv, lambda: profile.description,
                                        set_description if writable else None),
            "config": lambda: KeyValueDir(srv, lambda: profile.config,
                                          set_key if writable else None,
                                          unset_key if writable else None, validate_key),
            "devices": lambda: DevicesDir(srv, lambda: profile, "", readonly=not writable),
            "used_by": lambda: File(srv, lambda: lines(self._used_by(name)), dynamic=True),
        })

    async def mkdir(self, name: str) -> None:
        self._writable()
        await self.srv.guarded("", self.srv.create_profile(profile_key(self.project, name)))

    async def rmdir(self, name: str) -> None:
        self._writable()
        await self.srv.guarded("", self.srv.delete_profile(profile_key(self.project, name)))

    async def rename(self, old: str, new_parent: Dir, new: str) -> None:
        if not isinstance(new_parent, ProfilesDir) or new_parent.project != self.project:
            raise InvalidArgument("profiles can only be renamed within profiles/")
        self._writable()
        await self.srv.guarded("", self.srv.rename_profile(profile_key(self.project, old),
                                                           profile_key(self.project, new)))


class PoolsDir(Dir):
    """``storage-pools/``: ``mkdir`` makes a pending pool (config, no driver); writing its
    ``driver`` file creates it; ``rmdir`` deletes it (EBUSY while used)."""

    async def list(self) -> list[str]:
        return sorted(set(self.srv.pools) | set(self.srv.pending_pools))

    async def child(self, name: str) -> Node | None:
        if name not in self.srv.pools and name not in self.srv.pending_pools:
            return None
        srv = self.srv

        def pool() -> Pool:
            return srv.pool_record(name)

        async def set_key(key: str, value: str) -> None:
            await srv.set_pool_key(name, key, value)

        async def unset_key(key: str) -> None:
            await srv.set_pool_key(name, key, "")

        async def set_driver(value: str) -> None:
            if name in srv.pools:
                raise AlreadyExists(f"storage pool {name} already has driver {pool().driver}")
            await srv.create_pool(name, value.strip())

        def validate_key(key: str) -> None:
            if key not in srv.pool_keys():
                raise InvalidArgument(f"unknown storage pool key {key!r} (keys: "
                                      f"{', '.join(sorted(srv.pool_keys()))})")

        def created() -> bool:
            return name in srv.pools

        return StaticDir(srv, {
            "name": lambda: File(srv, lambda: name),
            "driver": lambda: File(srv, lambda: pool().driver, set_driver),
            "description": lambda: File(srv, lambda: pool().description,
                                        lambda v: srv.set_pool_description(name, v)),
            "config": lambda: KeyValueDir(srv, lambda: pool().config, set_key, unset_key,
                                          validate_key),
            "used_by": lambda: File(srv, lambda: lines(srv.pool_used_by(name)), dynamic=True),
            "resources": lambda: PoolResourcesDir(srv, name) if created() else None,
            "volumes": lambda: StaticDir(srv, {
                vtype: (lambda t=vtype: VolumesDir(srv, name, t)) for vtype in VOLUME_TYPES
            }) if created() else None,
        })

    async def mkdir(self, name: str) -> None:
        await self.srv.guarded("", self.srv.create_pending_pool(name))

    async def rmdir(self, name: str) -> None:
        await self.srv.guarded("", self.srv.delete_pool(name))


class PoolResourcesDir(Dir):
    """``storage-pools/NAME/resources/``: space and inodes, used and total."""

    FIELDS = {"space_used": "used_bytes", "space_total": "total_bytes",
              "inodes_used": "used_inodes", "inodes_total": "total_inodes"}

    def __init__(self, srv: Server, name: str) -> None:
        super().__init__(srv)
        self.name = name

    async def list(self) -> list[str]:
        return list(self.FIELDS)

    async def child(self, name: str) -> Node | None:
        attr = self.FIELDS.get(name)
        if attr is None:
            return None

        async def read() -> str:
            return str(getattr(await self.srv.pool_resources(self.name), attr))

        return File(self.srv, read, dynamic=True)


class VolumesDir(Dir):
    """``storage-pools/NAME/volumes/TYPE/``: one directory per volume, with ``usage``
    (bytes; exclusive bytes on copy-on-write drivers) and ``snapshots``."""

    def __init__(self, srv: Server, pool: str, vtype: VolumeType) -> None:
        super().__init__(srv)
        self.pool = pool
        self.vtype = vtype

    async def list(self) -> list[str]:
        return await self.srv.pool_volumes(self.pool, self.vtype)

    async def child(self, name: str) -> Node | None:
        if name not in await self.srv.pool_volumes(self.pool, self.vtype):
            return None
        srv, pool, vtype = self.srv, self.pool, self.vtype
        backend = srv.pools[pool]

        async def snapshots() -> str:
            return lines(await trio.to_thread.run_sync(backend.list_snapshots, vtype, name))

        children: dict[str, Callable[[], Node | None]] = {
            "name": lambda: File(srv, lambda: name),
            "type": lambda: File(srv, lambda: vtype),
            "usage": lambda: File(srv, lambda: _str(srv.volume_usage(pool, vtype, name)),
                                  dynamic=True),
            "snapshots": lambda: File(srv, snapshots, dynamic=True),
        }
        if vtype == "custom":
            children |= {
                "snapshots": lambda: CustomSnapshotsDir(srv, pool, name),
                "data": lambda: _rootfs(backend.volume_path("custom", name),
                                        f"storage-pools/{pool}/volumes/custom/{name}/data", srv),
                "used_by": lambda: File(srv, lambda: lines(srv.custom_volume_users(pool, name)),
                                        dynamic=True),
                "copy": lambda: File(srv, None,
                                     lambda v: srv.copy_custom_volume(pool, name, v)),
                "restore": lambda: File(srv, None,
                                        lambda v: srv.restore_custom_volume(pool, name, v)),
            }
        return StaticDir(srv, children)

    async def mkdir(self, name: str) -> None:
        if self.vtype != "custom":
            raise PermissionDenied(f"{self.vtype} volumes are made by lxfs; create custom ones")
        await self.srv.guarded("", self.srv.create_custom_volume(self.pool, name))

    async def rmdir(self, name: str) -> None:
        if self.vtype != "custom":
            raise PermissionDenied(f"{self.vtype} volumes go with their image or instance")
        await self.srv.guarded("", self.srv.delete_custom_volume(self.pool, name))


class CustomSnapshotsDir(Dir):
    """``volumes/custom/VOL/snapshots/``: ``mkdir`` snapshots, ``rmdir`` deletes."""

    def __init__(self, srv: Server, pool: str, volume: str) -> None:
        super().__init__(srv)
        self.pool, self.volume = pool, volume
        self.backend = srv.pools[pool]

    async def list(self) -> list[str]:
        return await trio.to_thread.run_sync(self.backend.list_snapshots, "custom", self.volume)

    async def child(self, name: str) -> Node | None:
        if name not in await self.list():
            return None
        path = self.backend.snapshot_path("custom", self.volume, name)
        where = f"storage-pools/{self.pool}/volumes/custom/{self.volume}/snapshots/{name}/data"
        return StaticDir(self.srv, {"data": lambda: _rootfs(path, where, self.srv,
                                                            readonly=True)})

    async def mkdir(self, name: str) -> None:
        await self.srv.guarded("", self.srv.snapshot_custom_volume(self.pool, self.volume, name))

    async def rmdir(self, name: str) -> None:
        await self.srv.guarded("", self.srv.delete_custom_snapshot(self.pool, self.volume,
                                                                   name))


class ProjectsDir(Dir):
    """``projects/``: one directory per project with ``name``, ``description``, ``config/``
    (``features.*``, ``limits.*``, ``restricted*``: see ``lxfs.projects``) and ``state/``
    (usage against limits). ``default`` is the mount's top level; another project also holds
    ``instances/``, ``profiles/`` and ``images/``, laid out as the top level's. ``mkdir`` creates a
    project, ``rmdir`` deletes an empty one, ``mv`` renames an empty one."""

    async def list(self) -> list[str]:
        return sorted(self.srv.projects)

    async def child(self, name: str) -> Node | None:
        if name not in self.srv.projects:
            return None
        srv = self.srv

        async def set_key(key: str, value: str) -> None:
            await srv.set_project_key(name, key, value)

        async def unset_key(key: str) -> None:
            await srv.set_project_key(name, key, "")

        def validate_key(key: str) -> None:
            if not any(spec.matches(key) for spec in PROJECT_KEYS):
                raise InvalidArgument(f"unknown project configuration key {key!r}")

        def state() -> dict[str, str]:
            return {resource: f"{used} {limit}"
                    for resource, (used, limit) in srv.project_usage(name).items()}

        children: dict[str, Callable[[], Node | None]] = {
            "name": lambda: File(srv, lambda: name),
            "description": lambda: File(srv, lambda: srv.projects[name].description,
                                        lambda v: srv.set_project_description(name, v)),
            "config": lambda: KeyValueDir(srv, lambda: srv.projects[name].config, set_key,
                                          unset_key, validate_key),
            "state": lambda: KeyValueDir(srv, state, None, None),
            "events": lambda: EventsFile(srv, name),
        }
        if name != DEFAULT:
            children["instances"] = lambda: InstancesDir(srv, name)
            children["profiles"] = lambda: ProfilesDir(srv, name)
            children["images"] = lambda: ImagesDir(srv, name)
        return StaticDir(srv, children)

    async def mkdir(self, name: str) -> None:
        await self.srv.guarded("", self.srv.create_project(name))

    async def rmdir(self, name: str) -> None:
        await self.srv.guarded("", self.srv.delete_project(name))

    async def rename(self, old: str, new_parent: Dir, new: str) -> None:
        if not isinstance(new_parent, ProjectsDir):
            raise InvalidArgument("projects can only be renamed within projects/")
        await self.srv.guarded("", self.srv.rename_project(old, new))


class EventsFile(File):
    """``events`` (every project's) or ``projects/NAME/events`` (NAME's and those of no
    project, as LXD's ``/1.0/events?project=NAME``)."""

    stream = True

    def __init__(self, srv: Server, project: str | None = None) -> None:
        super().__init__(srv, read=lambda: "", dynamic=True)
        self.project = project


def root(srv: Server) -> StaticDir:
    def server_key_name(key: str) -> None:
        if not any(s.matches(key) for s in srv.schema.server_keys):
            raise InvalidArgument(f"unknown server configuration key {key!r}")

    async def unset(key: str) -> None:
        await srv.set_server_key(key, "")

    def is_secret(key: str) -> bool:
        spec = srv.schema.server_spec(key)
        return spec is not None and spec.secret

    env = srv.environment()
    extra: dict[str, Callable[[], Node | None]] = {}
    for entries in srv.hook.lxfs_mount_entries(host=srv.api):
        extra.update(entries)
    return StaticDir(srv, extra | {
        "instances": lambda: InstancesDir(srv),
        "images": lambda: ImagesDir(srv),
        "profiles": lambda: ProfilesDir(srv),
        "storage-pools": lambda: PoolsDir(srv),
        "projects": lambda: ProjectsDir(srv),
        "config": lambda: KeyValueDir(srv, lambda: srv.config, srv.set_server_key, unset,
                                      server_key_name, secret=is_secret),
        "environment": lambda: KeyValueDir(srv, lambda: env, None, None),
        "events": lambda: EventsFile(srv),
        "error": lambda: File(srv, lambda: srv.errors.get("", ""), dynamic=True),
    })
