"""Instance backups in LXD 5.0's tarball format.

A backup is a (compressed) tarball::

    backup/index.yaml            name, backend, pool, optimized, optimized_header, type,
                                 snapshots and config (what backup.yaml holds)
    backup/snapshots/SNAP/       each snapshot's volume (metadata.yaml, templates/, rootfs/)
    backup/container/            the instance's volume, with backup.yaml
    backup/optimized_header.yaml, backup/snapshots/SNAP.bin, backup/container.bin
                                 instead of the trees with ``--optimized-storage`` (the
                                 pool driver's own send streams: ``StorageDriver``'s
                                 ``optimized_backups``)

Owners are stored as the container sees them (LXD unshifts them while writing its tarball;
lxfs keeps volumes unshifted on disk and maps them at mount time), so a tarball moves between
LXD and lxfs hosts whatever the idmaps. Backups live with the instance's data
(``instance-data/NAME/backups/``: ``B.tar`` and its record ``B.json``), so a rename or a
delete of the instance takes them along. An import unpacks into the daemon's staging
directory (emptied at every start), then makes the volume and registers the instance under
the journal (``import``): a crash leaves nothing half-imported.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
import yaml

from lxfs.errors import AlreadyExists, InvalidArgument, LxfsError, NotFound, OperationFailed
from lxfs.faults import point
from lxfs.model import (  # the records live in the model, which plugins may import
    COMPRESSIONS,
    NO_EXPIRY,
    Backup,
    Instance,
    Snapshot,
    now,
    rfc3339,
    split_profile_key,
)

if TYPE_CHECKING:
    from lxfs.server import Server
    from lxfs.storage import StorageDriver

log = logging.getLogger(__name__)

_COMPRESSORS = {"gzip": ["gzip", "-c", "-6"], "xz": ["xz", "-T0", "-c", "-6"],
                "zstd": ["zstd", "-q", "-T0", "-c", "--no-progress"],
                "bzip2": ["bzip2", "-c", "-9"]}
_MAX_INDEX = 16 * 2**20


class BackupError(InvalidArgument):
    """A tarball lxfs cannot import (corrupt, truncated, not a backup)."""


# --- documents --------------------------------------------------------------------------------

def _instance_doc(inst: Instance) -> dict[str, Any]:
    # the files are stored unshifted (LXD's DiskIdmap of an idmapped-mount volume: none)
    config = dict(inst.config) | {"volatile.last_state.idmap": "[]"}
    return {
        "architecture": inst.architecture, "config": config,
        "devices": {k: dict(v) for k, v in inst.devices.items()},
        "ephemeral": inst.ephemeral, "profiles": [split_profile_key(p)[1] for p in inst.profiles],
        "stateful": False,
        "description": inst.description, "created_at": rfc3339(inst.created_at),
        "expanded_config": dict(inst.expanded_config),
        "expanded_devices": {k: dict(v) for k, v in inst.expanded_devices.items()},
        "name": inst.local_name, "status": "Stopped", "status_code": 102,
        "last_used_at": rfc3339(inst.last_used_at), "location": "none", "type": inst.type,
        "project": inst.project,
    }


def _snapshot_doc(inst: Instance, snap: Snapshot) -> dict[str, Any]:
    return {
        "architecture": inst.architecture, "config": dict(snap.config),
        "created_at": rfc3339(snap.created_at),
        "devices": {k: dict(v) for k, v in snap.devices.items()},
        "ephemeral": inst.ephemeral, "expanded_config": dict(snap.config),
        "expanded_devices": {k: dict(v) for k, v in snap.devices.items()},
        "last_used_at": rfc3339(0), "name": snap.name,
        "profiles": [split_profile_key(p)[1] for p in snap.profiles],
        "stateful": False, "size": -1, "expires_at": NO_EXPIRY,
    }


def backup_config(srv: Server, inst: Instance, snapshots: list[str]) -> dict[str, Any]:
    """What LXD writes as backup.yaml (and embeds in index.yaml): the instance, its
    snapshots, its pool, the profiles and the volume records."""
    pool = srv.pool_of(inst).pool
    created = rfc3339(inst.created_at)

    def volume(name: str, created_at: str) -> dict[str, Any]:
        return {"name": name, "description": "", "config": {}, "type": "container",
                "content_type": "filesystem", "created_at": created_at, "location": "none",
                "used_by": None}

    return {
        "container": _instance_doc(inst),
        "snapshots": [_snapshot_doc(inst, inst.snapshots[s]) for s in snapshots],
        "pool": {"name": pool.name, "driver": pool.driver, "description": pool.description,
                 "config": dict(pool.config), "status": "Created", "locations": ["none"],
                 "used_by": None},
        "profiles": [{"name": split_profile_key(p.name)[1], "description": p.description,
                      "config": dict(p.config),
                      "devices": {k: dict(v) for k, v in p.devices.items()}, "used_by": None}
                     for p in (srv.profiles[n] for n in inst.profiles if n in srv.profiles)],
        "volume": volume(inst.local_name, created),
        "volume_snapshots": [volume(s, rfc3339(inst.snapshots[s].created_at))
                             for s in snapshots],
    }


# --- writing a tarball ------------------------------------------------------------------------

def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise OperationFailed(f"{what} failed: {'; '.join(err[-3:]) or proc.returncode}")


def write_tarball(staging: Path, out: Path, compression: str, pool: StorageDriver,
                  name: str, snapshots: list[str], optimized: bool,
                  index: dict[str, Any]) -> None:
    """Build the backup tarball ``out`` from the volume of instance ``name`` (its
    ``snapshots`` first, oldest first), in ``staging`` (a fresh directory whose binds
    ``_detach_mounts_under`` removes after a crash). The volumes are bound read-only into
    ``staging/backup/``, never copied."""
    base = staging / "backup"
    base.mkdir()
    members = ["backup/index.yaml"]
    binds: list[Path] = []
    try:
        if optimized:
            header, streams = pool.export_optimized_backup("container", name, snapshots, base)
            if header is not None:
                (base / "optimized_header.yaml").write_text(yaml.safe_dump(header))
                members.append("backup/optimized_header.yaml")
            members += [f"backup/{rel}" for rel in streams]
        else:
            pairs = [(base / "snapshots" / s, pool.snapshot_path("container", name, s))
                     for s in snapshots]
            pairs.append((base / "container", pool.volume_path("container", name)))
            for target, source in pairs:
                target.mkdir(parents=True)
                _run(["mount", "--bind", str(source), str(target)], "binding a volume")
                binds.append(target)
                _run(["mount", "-o", "remount,bind,ro", str(target)], "making a bind read-only")
                members.append(str(target.relative_to(staging)))
        (base / "index.yaml").write_text(yaml.safe_dump(index, sort_keys=False))
        point("backup.before-tar")
        _tar(staging, members, out, compression)
    finally:
        for target in reversed(binds):
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def _tar(staging: Path, members: list[str], out: Path, compression: str) -> None:
    cmd = ["tar", "-c", "-f", "-", "-C", str(staging), "--format=posix", "--numeric-owner",
           "--xattrs", "--xattrs-include=*", "--", *members]
    env = {**os.environ, "LC_ALL": "C"}
    with open(out, "wb") as outf, tempfile.TemporaryFile() as err:
        if compression == "none":
            tar = subprocess.Popen(cmd, stdout=outf, stderr=err, stdin=subprocess.DEVNULL,
                                   env=env)
            comp = None
        else:
            tar = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                   stdin=subprocess.DEVNULL, env=env)
            comp = subprocess.Popen(_COMPRESSORS[compression], stdin=tar.stdout, stdout=outf,
                                    stderr=err, env=env)
            assert tar.stdout is not None
            tar.stdout.close()
        rc = tar.wait()
        crc = comp.wait() if comp is not None else 0
        if rc not in (0, 1) or crc != 0:  # 1: a file changed while read (a running instance)
            err.seek(0)
            lines = err.read().decode(errors="replace").strip().splitlines()
            raise OperationFailed("writing the backup failed: "
                                  + ("; ".join(lines[-3:]) or f"exit status {rc or crc}"))
        outf.flush()
        os.fsync(outf.fileno())


# --- reading a tarball ------------------------------------------------------------------------

def read_index(path: Path) -> dict[str, Any]:
    """``backup/index.yaml`` of a tarball (checked to be a container backup)."""
    from lxfs.images.format import _STREAM_ERRORS, ImageError, _sniff, _tar_stream

    fmt = _sniff(path)
    if fmt not in ("gzip", "xz", "bzip2", "zstd", "tar", "lzma"):
        raise BackupError("not an instance backup (expected a tarball with backup/index.yaml)")
    try:
        with _tar_stream(path, fmt) as (tf, flt, _verify):
            for member in tf:
                flt.decide(member, tf.offset, False)
                if member.name.lstrip("./") == "backup/index.yaml":
                    if not member.isreg() or member.size > _MAX_INDEX:
                        raise BackupError("backup/index.yaml is not a small regular file")
                    f = tf.extractfile(member)
                    data = f.read() if f is not None else b""
                    break
            else:
                raise BackupError("not an instance backup: backup/index.yaml is missing")
    except (ImageError, *_STREAM_ERRORS) as exc:
        raise BackupError(f"cannot read the backup: {exc}") from None
    index = _load_yaml(data, "backup/index.yaml")
    if not isinstance(index, dict) or not isinstance(index.get("name"), str):
        raise BackupError("backup/index.yaml has no instance name")
    if index.get("type", "container") not in ("container", None, ""):
        raise BackupError(f"lxfs runs containers only: this is a {index['type']} backup")
    snaps = index.get("snapshots") or []
    if not isinstance(snaps, list) or not all(isinstance(s, str) for s in snaps):
        raise BackupError("backup/index.yaml: snapshots is not a list of names")
    return index


def _load_yaml(data: bytes, what: str) -> Any:
    """YAML of a backup, refused when its aliases would expand it beyond bounds (the
    checks of image metadata: "billion laughs", depth)."""
    from lxfs.images.format import ImageError, _check_yaml_shape

    try:
        _check_yaml_shape(yaml.parse(data, Loader=yaml.SafeLoader))
        return yaml.safe_load(data)
    except ImageError as exc:
        raise BackupError(str(exc).replace("metadata.yaml", what)) from None
    except yaml.YAMLError as exc:
        raise BackupError(f"{what} is not valid YAML: {' '.join(str(exc).split())}") from None


def unpack(path: Path, dest: Path) -> None:
    """Extract the whole tarball into ``dest`` (GNU tar in an identity-mapped user
    namespace, through the member rules of image unpacking: no device nodes, no member
    written through a symlink, owners as stored)."""
    from lxfs.images.format import ImageError, _sniff
    from lxfs.images.unpack import _extract_tarball

    fmt = _sniff(path) or "tar"
    try:
        _extract_tarball(path, fmt, dest, "rootfs")
    except ImageError as exc:
        text = str(exc)
        if "No space left" in text:
            raise OperationFailed(f"no space left to unpack the backup: {text}") from None
        raise BackupError(f"cannot unpack the backup: {text}") from None


def _fill(target: Path, source: Path) -> None:
    """Make ``target``'s content that of ``source`` (its entries moved, or copied across
    filesystems)."""
    for entry in list(target.iterdir()):
        _run(["rm", "-rf", "--one-file-system", "--", str(entry)], "emptying a volume")
    if not source.is_dir():
        return
    for entry in list(source.iterdir()):
        try:
            os.rename(entry, target / entry.name)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            _run(["cp", "-a", "--", str(entry), str(target / entry.name)], "copying the backup")


def _parse_time(text: Any, strict: bool = False) -> float:
    """An RFC 3339 time as Go writes it (nanoseconds, ``Z``); now when absent or bad (or
    ``InvalidArgument`` with ``strict``)."""
    from datetime import datetime

    if isinstance(text, str) and text:
        fixed = re.sub(r"(\.\d{1,6})\d*", r"\1", text.strip()).replace("Z", "+00:00")
        try:
            when = datetime.fromisoformat(fixed)
            if when.tzinfo is not None or not strict:
                return when.timestamp()
        except ValueError:
            pass
    if strict:
        raise InvalidArgument(f"invalid time {text!r} (RFC 3339: 2030-01-31T12:00:00Z)")
    return now()


def _shifted(index: dict[str, Any]) -> bool:
    """Whether a backup's volume was shifted on its host's disk (LXD without idmapped
    mounts): its optimized streams then hold shifted owners."""
    conf = index.get("config")
    container = conf.get("container") if isinstance(conf, dict) else None
    config = container.get("config") if isinstance(container, dict) else None
    raw = config.get("volatile.last_state.idmap") if isinstance(config, dict) else None
    if not raw:
        return False
    try:
        return bool(json.loads(raw))
    except (TypeError, ValueError):
        return True


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def _devices(value: Any) -> dict[str, dict[str, str]]:
    if not isinstance(value, dict):
        return {}
    return {str(k): _strings(v) for k, v in value.items() if isinstance(v, dict)}


# --- the server's side -----------------------------------------------------------------------

class Backups:
    """Backups of instances and imports, for the mount, the CLI and REST."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        #: what an import left out, by instance (shown in its error file once imported)
        self.notices: dict[str, str] = {}

    def _dir(self, name: str) -> Path:
        return self.srv.plugin_instance_dir(name, "backups")

    def list(self, name: str) -> list[Backup]:
        self.srv.instance(name)
        base = self.srv.instance_data_dir / name / "backups"
        found = []
        if base.is_dir():
            for rec in sorted(base.glob("*.json")):
                if rec.name.startswith(".") or not rec.with_suffix(".tar").exists():
                    continue
                with contextlib.suppress(OSError, ValueError, TypeError):
                    found.append(Backup(**json.loads(rec.read_text())))
        return sorted(found, key=lambda b: b.created_at)

    def get(self, name: str, backup: str) -> Backup:
        for b in self.list(name):
            if b.name == backup:
                return b
        raise NotFound(f"backup {name}/{backup} not found")

    def path(self, name: str, backup: str) -> Path:
        self.get(name, backup)
        return self.srv.instance_data_dir / name / "backups" / f"{backup}.tar"

    def next_name(self, name: str) -> str:
        taken = {b.name for b in self.list(name)}
        n = 0
        while f"backup{n}" in taken:
            n += 1
        return f"backup{n}"

    @staticmethod
    def check_name(backup: str) -> None:
        if not backup or "/" in backup or backup.startswith(".") or len(backup) > 255 \
                or any(c.isspace() or not c.isprintable() for c in backup):
            raise InvalidArgument(f"invalid backup name {backup!r} (no '/', no spaces, "
                                  "not starting with '.')")

    async def create(self, name: str, backup: str = "", *, instance_only: bool = False,
                     optimized: bool = False, compression: str = "",
                     expires_at: str = NO_EXPIRY) -> Backup:
        """Make a backup of instance ``name`` (it may run, as with LXD)."""
        srv = self.srv
        inst = srv.instance(name)
        backup = backup or self.next_name(name)
        self.check_name(backup)
        compression = compression or srv.config.get("backups.compression_algorithm") or "gzip"
        if expires_at and expires_at != NO_EXPIRY:
            _parse_time(expires_at, strict=True)
        if compression not in COMPRESSIONS:
            raise InvalidArgument(f"unknown compression {compression!r} (one of "
                                  f"{', '.join(COMPRESSIONS)})")
        if inst.storage_state != "ready":
            raise NotFound(f"instance {name} has no root filesystem to back up")
        if any(b.name == backup for b in self.list(name)):
            raise AlreadyExists(f"backup {name}/{backup} already exists")
        pool = srv.pool_of(inst)
        if optimized and not pool.optimized_backups:
            optimized = False  # as LXD: a driver without its own format writes the trees
        async with srv._locks[name]:
            if any(b.name == backup for b in self.list(name)):  # made while we waited
                raise AlreadyExists(f"backup {name}/{backup} already exists")
            snapshots = [] if instance_only else sorted(
                inst.snapshots, key=lambda s: inst.snapshots[s].created_at)
            config = backup_config(srv, inst, snapshots)
            index = {"name": inst.local_name, "backend": pool.pool.driver,
                     "pool": pool.pool.name,
                     "snapshots": snapshots or None, "optimized": optimized,
                     "optimized_header": bool(optimized and pool.optimized_backup_header),
                     "type": "container", "config": config}
            if not snapshots:
                del index["snapshots"]
            record = Backup(backup, now(), expires_at or NO_EXPIRY, instance_only, optimized,
                            compression)
            base = await trio.to_thread.run_sync(self._dir, name)
            final = base / f"{backup}.tar"
            tmp = base / f".{backup}.tar.tmp"
            staging = await trio.to_thread.run_sync(
                lambda: Path(tempfile.mkdtemp(prefix=".backup-", dir=srv.uploads_dir)))
            volume = pool.volume_path("container", name)

            def build() -> None:
                try:
                    (volume / "backup.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
                    write_tarball(staging, tmp, compression, pool, name, snapshots, optimized,
                                  index)
                    os.rename(tmp, final)
                    rec = base / f"{backup}.json"
                    rec_tmp = base / f".{backup}.json.tmp"
                    rec_tmp.write_text(json.dumps(asdict(record)))
                    os.rename(rec_tmp, rec)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    final.unlink(missing_ok=True)
                    raise
                finally:
                    _remove_staging(staging)

            try:
                await trio.to_thread.run_sync(build)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise OperationFailed(f"no space left for backup {name}/{backup}") from None
                raise
        srv.events.lifecycle("instance-backup-created",
                             f"/1.0/instances/{name}/backups/{backup}")
        return record

    async def delete(self, name: str, backup: str) -> None:
        path = self.path(name, backup)

        def remove() -> None:
            path.with_suffix(".json").unlink(missing_ok=True)
            path.unlink(missing_ok=True)

        await trio.to_thread.run_sync(remove)
        self.srv.events.lifecycle("instance-backup-deleted",
                                  f"/1.0/instances/{name}/backups/{backup}")

    async def rename(self, name: str, old: str, new: str) -> None:
        self.check_name(new)
        record = self.get(name, old)
        if any(b.name == new for b in self.list(name)):
            raise AlreadyExists(f"backup {name}/{new} already exists")
        base = self.srv.instance_data_dir / name / "backups"

        def move() -> None:
            record.name = new
            os.rename(base / f"{old}.tar", base / f"{new}.tar")
            (base / f".{new}.json.tmp").write_text(json.dumps(asdict(record)))
            os.rename(base / f".{new}.json.tmp", base / f"{new}.json")
            (base / f"{old}.json").unlink(missing_ok=True)

        await trio.to_thread.run_sync(move)
        self.srv.events.lifecycle("instance-backup-renamed",
                                  f"/1.0/instances/{name}/backups/{new}", old_name=old)

    async def set_expiry(self, name: str, backup: str, expires_at: str) -> None:
        record = self.get(name, backup)
        if expires_at.strip() and expires_at.strip() != NO_EXPIRY:
            _parse_time(expires_at.strip(), strict=True)
        record.expires_at = expires_at.strip() or NO_EXPIRY
        base = self.srv.instance_data_dir / name / "backups"

        def save() -> None:
            (base / f".{backup}.json.tmp").write_text(json.dumps(asdict(record)))
            os.rename(base / f".{backup}.json.tmp", base / f"{backup}.json")

        await trio.to_thread.run_sync(save)

    # --- import ------------------------------------------------------------------------------

    async def import_tarball(self, path: Path, name: str = "", pool_name: str = "") -> str:
        """Import a backup tarball as a new instance (``name``: the backup's own by
        default; ``pool_name``: the backup's pool when it exists here, else the default
        profile's). An instance record made beforehand (``mkdir``, no root filesystem yet)
        is filled. Returns the instance's name. ``path`` is left for the caller."""
        srv = self.srv
        index = await trio.to_thread.run_sync(read_index, path)
        name = name or index["name"]
        from lxfs.server import validate_instance_name

        validate_instance_name(name)
        existing = srv.instances.get(name)
        if existing is not None and existing.storage_state:
            raise AlreadyExists(f"instance {name!r} already exists")
        pool_name = pool_name or (existing.root_pool() if existing is not None else "") or (
            index.get("pool") if index.get("pool") in srv.pools else "")
        if not pool_name:
            root = next((d for d in srv.profiles["default"].devices.values()
                         if d.get("type") == "disk" and d.get("path") == "/"), {}) \
                if "default" in srv.profiles else {}
            pool_name = root.get("pool", "")
        pool = srv.pools.get(pool_name)
        if pool is None:
            raise NotFound(f"storage pool {pool_name!r} not found")
        optimized = bool(index.get("optimized"))
        if optimized and (not pool.optimized_backups
                          or index.get("backend") != pool.pool.driver):
            raise InvalidArgument(
                f"optimized backup storage driver {index.get('backend')!r} differs from the "
                f"target storage pool driver {pool.pool.driver!r}: import it into a "
                f"{index.get('backend')} pool, or export it without --optimized-storage")
        if optimized and _shifted(index):
            raise InvalidArgument(
                "this optimized backup holds files shifted for its host's idmap "
                "(volatile.last_state.idmap): lxfs imports optimized streams of unshifted "
                "volumes only; export it without --optimized-storage (the tarball's owners "
                "are always unshifted)")
        inst: Instance | None = None
        before = existing.to_record() if existing is not None else None
        try:
            async with srv._locks[name], srv._journal("import", name, pool=pool.pool.name):
                if srv.instances.get(name) is not existing:
                    raise AlreadyExists(f"instance {name!r} already exists")
                inst = existing or await srv.create_instance(name)
                inst.storage_state, inst.source = "creating", ""
                await srv._save(inst)  # from here a crash forgets the instance at start
                srv.transient[name] = "CREATING"
                point("import.after-intent")
                await self._import(inst, path, index, pool, optimized)
        except BaseException:
            self.notices.pop(name, None)
            with trio.CancelScope(shield=True):
                srv.transient.pop(name, None)
                if inst is not None and srv.instances.get(name) is inst and \
                        inst.storage_state != "ready":
                    if existing is None:
                        inst.storage_state = ""
                        with contextlib.suppress(Exception):
                            await srv.delete_instance(name)
                    elif before is not None:  # the record made by mkdir stays as it was
                        old = Instance.from_record(before)
                        inst.config, inst.devices, inst.profiles = (old.config, old.devices,
                                                                    old.profiles)
                        inst.storage_state = ""
                        from lxfs.server import expand

                        expand(inst, srv.profiles)
                        with contextlib.suppress(Exception):
                            await srv._save(inst)
            raise
        srv.transient.pop(name, None)
        srv.errors[name] = self.notices.pop(name, "")
        await trio.to_thread.run_sync(
            lambda: srv.hook.lxfs_instance_post_create(host=srv.api, instance=inst))
        srv.on_change("instance-created", name)
        srv.events.lifecycle("instance-created", f"/1.0/instances/{name}", imported=True)
        return name

    async def _import(self, inst: Instance, path: Path, index: dict[str, Any],
                      pool: StorageDriver, optimized: bool) -> None:
        """Unpack into a staging directory, check, make the volume, set the record."""
        srv, name = self.srv, inst.name
        staging = await trio.to_thread.run_sync(
            lambda: Path(tempfile.mkdtemp(prefix=".import-", dir=srv.uploads_dir)))
        try:
            await trio.to_thread.run_sync(unpack, path, staging)
            point("import.after-unpack")
            conf = index.get("config")
            yaml_path = staging / "backup" / "container" / "backup.yaml"
            if not isinstance(conf, dict) and yaml_path.is_file():
                if yaml_path.stat().st_size > _MAX_INDEX:
                    raise BackupError("backup.yaml is larger than 16 MiB")
                conf = _load_yaml(yaml_path.read_bytes(), "backup.yaml")
            if not isinstance(conf, dict) or not isinstance(conf.get("container"), dict):
                raise BackupError("the backup has no instance configuration (index.yaml's "
                                  "config or backup.yaml)")
            snapshots = list(index.get("snapshots") or [])
            for snap in snapshots:
                if "/" in snap or snap.startswith(".") or not snap:
                    raise BackupError(f"invalid snapshot name {snap!r} in the backup")
                if not optimized and not (staging / "backup" / "snapshots" / snap).is_dir():
                    raise BackupError(f"snapshot {snap} is missing from the backup")
            if not optimized and not (staging / "backup" / "container" / "rootfs").is_dir():
                raise BackupError("the backup has no backup/container/rootfs")
            self._configure(inst, conf, pool)
            try:
                await trio.to_thread.run_sync(self._make_volume, pool, name, snapshots,
                                              staging, optimized)
                point("import.after-volume")
                if name != index.get("name"):  # a new name: as a copy's
                    from lxfs import images

                    await trio.to_thread.run_sync(
                        images.render_templates, pool.volume_path("container", name),
                        "copy", srv._template_context(inst))
                await srv._apply_root_quota(inst, pool, tell=True)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(pool.delete_volume, "container", name)
                raise
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_remove_staging, staging)
        snap_docs = {d.get("name"): d for d in conf.get("snapshots") or []
                     if isinstance(d, dict)}
        inst.snapshots = {}
        for snap in snapshots:
            d = snap_docs.get(snap) or {}
            snap_config, snap_devices, _ = self._valid(d)
            inst.snapshots[snap] = Snapshot(
                snap, _parse_time(d.get("created_at")), snap_config,
                snap_devices or {k: dict(v) for k, v in inst.devices.items()},
                [p for p in d.get("profiles") or inst.profiles if p in srv.profiles])
        own_root = next(((k, v) for k, v in inst.devices.items()
                         if v.get("type") == "disk" and v.get("path") == "/"), None)
        if own_root is not None:  # a restore keeps the pool it was imported into
            for snapshot in inst.snapshots.values():
                snapshot.devices = {k: v for k, v in snapshot.devices.items()
                                    if not (v.get("type") == "disk" and v.get("path") == "/")}
                snapshot.devices[own_root[0]] = dict(own_root[1])
        inst.storage_state = "ready"
        await srv._save(inst)
        point("import.after-ready")

    def _valid(self, doc: dict[str, Any]
               ) -> tuple[dict[str, str], dict[str, dict[str, str]], list[str]]:
        """The config keys and devices of an instance or snapshot document that this host
        takes (no ``volatile.*``), and what it does not, with the reasons."""
        srv, left_out = self.srv, []
        config = {}
        for key, value in _strings(doc.get("config")).items():
            if key.startswith("volatile."):
                continue
            try:
                srv.schema.validate_instance_key(key, value)
            except LxfsError as exc:
                left_out.append(f"config {key} ({exc.message})")
                continue
            config[key] = value
        devices = {}
        for device, keys in _devices(doc.get("devices")).items():
            try:
                srv.device_types.validate(device, keys)
            except LxfsError as exc:
                left_out.append(f"device {device} ({exc.message})")
                continue
            devices[device] = keys
        return config, devices, left_out

    def _configure(self, inst: Instance, conf: dict[str, Any], pool: StorageDriver) -> None:
        """The record from the backup's: config (no volatile keys), devices, profiles; what
        a record made by mkdir set already wins; the root disk names ``pool``."""
        from lxfs.server import expand

        srv, c = self.srv, conf["container"]
        config, devices, left_out = self._valid(c)
        if left_out:  # what this host cannot take: said in the instance's error file
            message = "imported without " + "; ".join(left_out)
            log.warning("%s: %s", inst.name, message)
            self.notices[inst.name] = message
        profiles = [p for p in (c.get("profiles") or ["default"])
                    if isinstance(p, str) and p in srv.profiles]
        if inst.profiles == ["default"]:
            inst.profiles = profiles
        inst.config = config | dict(inst.config)
        own_root = {k: v for k, v in inst.devices.items()
                    if v.get("type") == "disk" and v.get("path") == "/"}
        inst.devices = {k: v for k, v in devices.items()
                        if not (v.get("type") == "disk" and v.get("path") == "/")} | own_root
        inst.architecture = str(c.get("architecture") or inst.architecture)
        inst.description = str(c.get("description") or inst.description)
        inst.ephemeral = bool(c.get("ephemeral"))
        inst.created_at = _parse_time(c.get("created_at"))
        root = next((k for k, v in devices.items()
                     if v.get("type") == "disk" and v.get("path") == "/"), "root")
        expand(inst, srv.profiles)
        if inst.root_pool() != pool.pool.name:
            dev = dict(devices.get(root, {"type": "disk", "path": "/"}))
            dev["pool"] = pool.pool.name
            inst.devices[root] = dev
            expand(inst, srv.profiles)

    @staticmethod
    def _make_volume(pool: StorageDriver, name: str, snapshots: list[str], staging: Path,
                     optimized: bool) -> None:
        base = staging / "backup"
        if optimized:
            pool.import_optimized_backup("container", name, snapshots, base)
            return
        pool.create_volume("container", name)
        try:
            target = pool.volume_path("container", name)
            for snap in snapshots:
                _fill(target, base / "snapshots" / snap)
                pool.create_snapshot("container", name, snap)
            _fill(target, base / "container")
            os.chmod(target, 0o711)
        except BaseException:
            pool.delete_volume("container", name)
            raise

    def repair(self) -> None:
        """Remove what an interrupted backup left (``.B.tar.tmp``, a tarball without its
        record)."""
        for base in self.srv.instance_data_dir.glob("*/backups"):
            for entry in base.iterdir():
                stale = entry.name.startswith(".") or (
                    entry.suffix == ".tar" and not entry.with_suffix(".json").exists())
                if stale:
                    log.warning("removing the unfinished backup file %s", entry)
                    entry.unlink(missing_ok=True)

    async def prune_loop(self, every: float = 3600.0) -> None:
        """Delete expired backups every hour (LXD's ``pruneExpiredContainerBackupsTask``)."""
        while True:
            await trio.sleep(every)
            try:
                await trio.to_thread.run_sync(self.prune_expired)
            except OSError as exc:
                log.error("cannot prune expired backups: %s", exc)

    def prune_expired(self) -> None:
        """Delete the backups whose ``expires_at`` has passed (at start, as LXD's hourly
        task)."""
        for base in self.srv.instance_data_dir.glob("*/backups"):
            for rec in base.glob("*.json"):
                with contextlib.suppress(OSError, ValueError, TypeError):
                    b = Backup(**json.loads(rec.read_text()))
                    if b.expires_at != NO_EXPIRY and _parse_time(b.expires_at) < time.time():
                        rec.with_suffix(".tar").unlink(missing_ok=True)
                        rec.unlink()


def _remove_staging(staging: Path) -> None:
    from lxfs.server import _detach_mounts_under

    with contextlib.suppress(OSError):
        _detach_mounts_under(staging)
    if not any(True for _ in _mounts_below(staging)):
        shutil.rmtree(staging, ignore_errors=True)


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path) + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4].startswith(prefix):
                found.append(fields[4])
    return found
