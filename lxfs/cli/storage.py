"""``storage`` commands: list, show, info, create, delete, get, set, unset (pools)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from lxfs.cli.instances import parse_pairs
from lxfs.cli.mount import CLIError, Mount, list_dirs, read_dir_values, read_lines, read_opt
from lxfs.cli.output import FORMATS, emit, natural_key, render_yaml

TYPE_CHECKING = False  # importing typing costs 2-4 ms of start-up
if TYPE_CHECKING:
    from typing import Any


def pools_dir(mount: Mount) -> Path:
    return mount.root / "storage-pools"


def pool_dir(mount: Mount, name: str) -> Path:
    """Path of ``storage-pools/NAME``; ``Storage pool not found`` when it does not exist."""
    path = pools_dir(mount) / name
    if not name or "/" in name or name in (".", "..") or not path.is_dir():
        raise CLIError(f"Storage pool not found: {name}")
    return path


def _key_path(pdir: Path, key: str) -> Path:
    if not key or "/" in key or key in (".", ".."):
        raise CLIError(f"Invalid config key: {key!r}")
    return pdir / "config" / key


def pool_object(pdir: Path) -> dict[str, Any]:
    """A pool shaped like LXD's ``/1.0/storage-pools/NAME``."""
    return {
        "config": read_dir_values(pdir / "config"),
        "description": read_opt(pdir / "description"),
        "name": pdir.name,
        "driver": read_opt(pdir / "driver"),
        "used_by": [f"/1.0/{u}" for u in read_lines(pdir / "used_by")],
        "status": "Created" if read_opt(pdir / "driver") else "Pending",
        "locations": ["none"],
    }


def cmd_list(args: argparse.Namespace) -> int:
    """``lxfs storage list``."""
    mount = Mount()
    rows, data = [], []
    for name in sorted(list_dirs(pools_dir(mount)), key=natural_key):
        obj = pool_object(pools_dir(mount) / name)
        data.append(obj)
        rows.append([name, obj["driver"], obj["config"].get("source", ""), obj["description"],
                     str(len(obj["used_by"])), obj["status"].upper()])
    emit(args.format, ["NAME", "DRIVER", "SOURCE", "DESCRIPTION", "USED BY", "STATE"], rows,
         data)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``lxfs storage show POOL``."""
    mount = Mount()
    sys.stdout.write(render_yaml(pool_object(pool_dir(mount, args.pool))))
    return 0


def _size(value: str) -> str:
    try:
        n = float(int(value))
    except ValueError:
        return value
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.2f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return value


def cmd_info(args: argparse.Namespace) -> int:
    """``lxfs storage info POOL [--bytes]``: usage and users, as YAML."""
    mount = Mount()
    pdir = pool_dir(mount, args.pool)
    res = read_dir_values(pdir / "resources")
    fmt = (lambda v: v) if args.bytes else _size
    used_by: dict[str, list[str]] = {}
    for user in read_lines(pdir / "used_by"):
        kind, _, name = user.partition("/")
        used_by.setdefault(kind, []).append(name)
    data = {
        "info": {
            "description": read_opt(pdir / "description"),
            "driver": read_opt(pdir / "driver"),
            "name": pdir.name,
            "space used": fmt(res.get("space_used", "0")),
            "total space": fmt(res.get("space_total", "0")),
            "inodes used": res.get("inodes_used", "0"),
            "total inodes": res.get("inodes_total", "0"),
        },
        "used by": used_by,
    }
    sys.stdout.write(render_yaml(data))
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    """``lxfs storage create POOL DRIVER [KEY=VALUE...]``: mkdir, config keys, then driver."""
    mount = Mount()
    name = args.pool
    if not name or "/" in name or name in (".", ".."):
        raise CLIError(f"Invalid storage pool name: {name!r}")
    pairs = parse_pairs(args.config)
    pdir = pools_dir(mount) / name
    mount.do(lambda: os.mkdir(pdir), messages={
        errno.EEXIST: f"Storage pool {name!r} already exists",
        errno.EINVAL: f"Invalid storage pool name: {name!r}",
    })
    try:
        if args.description:
            mount.write(pdir / "description", args.description)
        for key, value in pairs:
            mount.write(_key_path(pdir, key), value,
                        messages={errno.EINVAL: f"Invalid storage pool key {key!r}"})
        mount.write(pdir / "driver", args.driver, messages={
            errno.EINVAL: f"Unknown storage driver {args.driver!r}",
            errno.EOPNOTSUPP: f"Storage driver {args.driver!r} is not supported on this host",
        })
    except (CLIError, KeyboardInterrupt):
        try:
            os.rmdir(pdir)
        except OSError:
            pass
        raise
    print(f"Storage pool {name} created")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """``lxfs storage delete POOL``."""
    mount = Mount()
    pdir = pool_dir(mount, args.pool)
    mount.do(lambda: os.rmdir(pdir), messages={
        errno.EBUSY: f"The storage pool {args.pool} is currently in use",
    })
    print(f"Storage pool {args.pool} deleted")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    """``lxfs storage get POOL KEY``."""
    mount = Mount()
    path = _key_path(pool_dir(mount, args.pool), args.key)
    print(mount.do(lambda: read_opt(path)))
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    """``lxfs storage set POOL KEY VALUE`` or ``POOL KEY=VALUE...``."""
    mount = Mount()
    pdir = pool_dir(mount, args.pool)
    values = args.values
    pairs = ([(values[0], values[1])] if len(values) == 2 and "=" not in values[0]
             else parse_pairs(values))
    for key, value in pairs:
        if key == "description":
            mount.write(pdir / "description", value)
            continue
        path = _key_path(pdir, key)
        if value == "":
            _unset(mount, path)
        else:
            mount.write(path, value, messages={
                errno.EINVAL: f"Invalid value or key {key!r} for storage pool {args.pool}",
            })
    return 0


def _unset(mount: Mount, path: Path) -> None:
    mount.unset(path, None, f"Cannot unset {path.name!r}")


def cmd_unset(args: argparse.Namespace) -> int:
    """``lxfs storage unset POOL KEY``."""
    mount = Mount()
    _unset(mount, _key_path(pool_dir(mount, args.pool), args.key))
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    """``lxfs storage edit POOL``: the YAML of ``show`` in $EDITOR (or on stdin); config and
    description are replaced by what comes back (keys the driver fixes are refused)."""
    from lxfs.cli.editing import edit_loop, parse_config_document

    mount = Mount()
    pdir = pool_dir(mount, args.pool)

    def apply(text: str) -> None:
        config, description = parse_config_document(text)
        old = read_dir_values(pdir / "config")
        for key in old:
            if key not in config:
                _unset(mount, _key_path(pdir, key))
        for key, value in config.items():
            if old.get(key) != value:
                mount.write(_key_path(pdir, key), value, messages={
                    errno.EINVAL: f"Invalid value or key {key!r} for storage pool "
                                  f"{args.pool}"})
        if description is not None:
            mount.write(pdir / "description", description)

    return edit_loop(render_yaml(pool_object(pdir)), apply)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``storage``."""
    storage = sub.add_parser("storage", help="Manage storage pools")
    ssub = storage.add_subparsers(dest="storage_command", metavar="COMMAND")
    ssub.required = True

    p = ssub.add_parser("list", aliases=["ls"], help="List storage pools")
    p.add_argument("-f", "--format", choices=FORMATS, default="table")
    p.set_defaults(func=cmd_list)

    p = ssub.add_parser("show", help="Show a storage pool")
    p.add_argument("pool", metavar="POOL")
    p.set_defaults(func=cmd_show)

    p = ssub.add_parser("info", help="Show a storage pool's usage and users")
    p.add_argument("pool", metavar="POOL")
    p.add_argument("--bytes", action="store_true", help="show sizes in bytes")
    p.set_defaults(func=cmd_info)

    p = ssub.add_parser("create", help="Create a storage pool: POOL DRIVER [KEY=VALUE...]")
    p.add_argument("pool", metavar="POOL")
    p.add_argument("driver", metavar="DRIVER")
    p.add_argument("config", metavar="KEY=VALUE", nargs="*")
    p.add_argument("--description", help="pool description")
    p.set_defaults(func=cmd_create)

    p = ssub.add_parser("edit", help="Edit a storage pool as YAML")
    p.add_argument("pool")
    p.set_defaults(func=cmd_edit)

    p = ssub.add_parser("delete", aliases=["rm"], help="Delete a storage pool")
    p.add_argument("pool", metavar="POOL")
    p.set_defaults(func=cmd_delete)

    p = ssub.add_parser("get", help="Get a storage pool key: POOL KEY")
    p.add_argument("pool", metavar="POOL")
    p.add_argument("key", metavar="KEY")
    p.set_defaults(func=cmd_get)

    p = ssub.add_parser("set", help="Set storage pool keys: POOL KEY VALUE | KEY=VALUE...")
    p.add_argument("pool", metavar="POOL")
    p.add_argument("values", metavar="ARG", nargs="+")
    p.set_defaults(func=cmd_set)

    from lxfs.cli import volumes

    volumes.register(ssub)

    p = ssub.add_parser("unset", help="Unset a storage pool key: POOL KEY")
    p.add_argument("pool", metavar="POOL")
    p.add_argument("key", metavar="KEY")
    p.set_defaults(func=cmd_unset)
