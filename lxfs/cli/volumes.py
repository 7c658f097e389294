"""``storage volume`` commands: custom volumes of a pool (list, create, delete, attach,
detach, snapshot, restore, copy, show), through ``storage-pools/POOL/volumes/custom/``."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

from lxfs.cli.mount import CLIError, Mount, list_dirs, read_lines, read_opt, write_raw
from lxfs.cli.output import FORMATS, emit, natural_key, render_yaml
from lxfs.cli.storage import pool_dir


def custom_dir(mount: Mount, pool: str) -> Path:
    return pool_dir(mount, pool) / "volumes" / "custom"


def volume_dir(mount: Mount, pool: str, volume: str) -> Path:
    path = custom_dir(mount, pool) / volume
    if not volume or "/" in volume or not path.is_dir():
        raise CLIError(f"Storage volume not found: {pool}/{volume}")
    return path


def _strip_type(volume: str) -> str:
    """LXD accepts ``custom/NAME``."""
    return volume.removeprefix("custom/")


def _instance_volume(key: str) -> tuple[str, str]:
    """(project, name) of an instance volume's host-level name: ``p1_c1`` is ``c1`` of
    ``p1`` (instance names hold no ``_``), ``c1`` is the default project's."""
    project, sep, name = key.rpartition("_")
    return (project, name) if sep else ("default", key)


def cmd_list(args: argparse.Namespace) -> int:
    """``storage volume list [POOL] [--all-projects]``: the current project's instance volumes
    under their names in it (the mount lists them by host-level name, ``p1_c1``), the image
    volumes and the custom volumes (the default project's)."""
    from lxfs.cli.base import current_project  # noqa: PLC0415

    mount = Mount()
    project = current_project() or "default"
    every = getattr(args, "all_projects", False)
    rows = []
    for pool in sorted(list_dirs(mount.root / "storage-pools"), key=natural_key):
        base = mount.root / "storage-pools" / pool / "volumes"
        for vtype in ("container", "image", "custom"):
            if args.pool and pool != args.pool:
                continue
            for name in sorted(list_dirs(base / vtype), key=natural_key):
                owner, shown = _instance_volume(name) if vtype == "container" else \
                    ("default", name)
                if vtype == "container" and not every and owner != project:
                    continue
                used = read_lines(base / vtype / name / "used_by") if vtype == "custom" else []
                rows.append({"project": owner, "pool": pool, "type": vtype, "name": shown,
                             "used_by": len(used) if vtype == "custom" else 1})
    head = ["POOL", "TYPE", "NAME", "USED BY"]
    table = [[r["pool"], r["type"], r["name"], str(r["used_by"])] for r in rows]
    if every:
        head = ["PROJECT", *head]
        table = [[r["project"], *line] for r, line in zip(rows, table, strict=True)]
    emit(args.format, head, table, rows)
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    mount = Mount()
    base = custom_dir(mount, args.pool)
    mount.do(lambda: os.mkdir(base / _strip_type(args.volume)), messages={
        errno.EEXIST: f"Volume {args.volume} already exists"})
    print(f"Storage volume {args.volume} created")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    mount = Mount()
    path = volume_dir(mount, args.pool, _strip_type(args.volume))
    mount.do(lambda: os.rmdir(path), messages={
        errno.EBUSY: f"Storage volume {args.volume} is currently in use"})
    print(f"Storage volume {args.volume} deleted")
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    """``attach POOL VOLUME INSTANCE [DEVICE] PATH`` (LXD's order)."""
    mount = Mount()
    volume = _strip_type(args.volume)
    volume_dir(mount, args.pool, volume)
    device, path = (args.rest[0], args.rest[1]) if len(args.rest) == 2 else (volume,
                                                                             args.rest[0])
    inst = mount.instance(args.instance)
    dev = inst / "devices" / device
    mount.do(lambda: os.mkdir(dev), inst, messages={errno.EEXIST: "The device already exists"})
    try:
        for key, value in (("type", "disk"), ("pool", args.pool), ("source", volume),
                           ("path", path)):
            mount.do(lambda k=key, v=value: write_raw(dev / k, v), inst)
    except CLIError:
        os.rmdir(dev)
        raise
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    mount = Mount()
    volume = _strip_type(args.volume)
    inst = mount.instance(args.instance)
    devices = [d for d in list_dirs(inst / "devices")
               if read_opt(inst / "devices" / d / "source") == volume
               and read_opt(inst / "devices" / d / "pool") == args.pool
               and (not args.device or d == args.device)]
    if not devices:
        raise CLIError("No storage volume device found")
    for d in devices:
        mount.do(lambda d=d: os.rmdir(inst / "devices" / d), inst)
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    mount = Mount()
    path = volume_dir(mount, args.pool, _strip_type(args.volume))
    snaps = path / "snapshots"
    name = args.snapshot or next(f"snap{i}" for i in range(10**6)
                                 if not (snaps / f"snap{i}").exists())
    mount.do(lambda: os.mkdir(snaps / name))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    mount = Mount()
    path = volume_dir(mount, args.pool, _strip_type(args.volume))
    mount.do(lambda: write_raw(path / "restore", args.snapshot), messages={
        errno.EBUSY: "The volume is in use by a running instance"})
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    """``copy POOL/VOLUME POOL/NEW`` (same pool)."""
    mount = Mount()
    src_pool, _, src = args.source.partition("/")
    dst_pool, _, dst = args.target.partition("/")
    if not src or not dst:
        raise CLIError("Use POOL/VOLUME for both source and target")
    if src_pool != dst_pool:
        raise CLIError("Copying custom volumes between pools is not supported yet")
    path = volume_dir(mount, src_pool, _strip_type(src))
    mount.do(lambda: write_raw(path / "copy", _strip_type(dst)))
    print("Storage volume copied successfully!")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    mount = Mount()
    path = volume_dir(mount, args.pool, _strip_type(args.volume))
    print(render_yaml({
        "config": {},
        "description": "",
        "name": path.name,
        "type": "custom",
        "used_by": [f"/1.0/{u}" for u in read_lines(path / "used_by")],
        "content_type": "filesystem",
        "location": "none",
    }), end="")
    return 0


def register(ssub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``volume`` under ``lxfs storage``."""
    vol = ssub.add_parser("volume", help="Manage custom storage volumes")
    vsub = vol.add_subparsers(dest="volume_command", metavar="COMMAND", required=True)
    p = vsub.add_parser("list", aliases=["ls"], help="List volumes: [POOL]")
    p.add_argument("pool", nargs="?")
    p.add_argument("--format", "-f", choices=FORMATS, default="table")
    p.add_argument("--all-projects", action="store_true",
                   help="the instance volumes of every project")
    p.set_defaults(func=cmd_list)
    for name, func, helptext in (("create", cmd_create, "Create a custom volume"),
                                 ("delete", cmd_delete, "Delete a custom volume"),
                                 ("show", cmd_show, "Show a custom volume")):
        p = vsub.add_parser(name, help=f"{helptext}: POOL VOLUME")
        p.add_argument("pool")
        p.add_argument("volume")
        p.set_defaults(func=func)
    p = vsub.add_parser("attach", help="Attach: POOL VOLUME INSTANCE [DEVICE] PATH")
    p.add_argument("pool")
    p.add_argument("volume")
    p.add_argument("instance")
    p.add_argument("rest", nargs="+", metavar="[DEVICE] PATH")
    p.set_defaults(func=cmd_attach)
    p = vsub.add_parser("detach", help="Detach: POOL VOLUME INSTANCE [DEVICE]")
    p.add_argument("pool")
    p.add_argument("volume")
    p.add_argument("instance")
    p.add_argument("device", nargs="?")
    p.set_defaults(func=cmd_detach)
    p = vsub.add_parser("snapshot", help="Snapshot: POOL VOLUME [SNAPSHOT]")
    p.add_argument("pool")
    p.add_argument("volume")
    p.add_argument("snapshot", nargs="?")
    p.set_defaults(func=cmd_snapshot)
    p = vsub.add_parser("restore", help="Restore: POOL VOLUME SNAPSHOT")
    p.add_argument("pool")
    p.add_argument("volume")
    p.add_argument("snapshot")
    p.set_defaults(func=cmd_restore)
    p = vsub.add_parser("copy", help="Copy: POOL/VOLUME POOL/NEW")
    p.add_argument("source")
    p.add_argument("target")
    p.set_defaults(func=cmd_copy)
