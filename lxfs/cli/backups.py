"""``lxfs export`` and ``lxfs import``: instance backups in LXD's tarball format, through
``instances/NAME/backups/`` and a tarball copied into ``instances/`` (docs/filesystem.md)."""

from __future__ import annotations

import argparse
import errno
import os
import secrets
import shutil
from pathlib import Path

from lxfs.cli.mount import CLIError, Mount, strip_local_remote

CHUNK = 1 << 20


def cmd_export(args: argparse.Namespace) -> int:
    """``lxfs export NAME [FILE]``: write ``create``, copy ``B/export`` out, ``rmdir B``."""
    mount = Mount()
    inst = mount.instance(strip_local_remote(args.name))
    backups = inst / "backups"
    name = f"export-{secrets.token_hex(4)}"
    line = name
    if args.instance_only:
        line += " instance_only=true"
    if args.optimized_storage:
        line += " optimized_storage=true"
    if args.compression:
        line += f" compression_algorithm={args.compression}"
    mount.write(backups / "create", line, inst, messages={
        errno.ENOENT: "Instance has no root filesystem"})
    target = args.file or "backup.tar.gz"
    try:
        with open(backups / name / "export", "rb") as src, \
                (os.fdopen(os.dup(1), "wb") if target == "-" else open(target, "wb")) as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    except OSError as exc:
        if target != "-":
            with _quiet():
                os.unlink(target)
        raise CLIError(f"{exc.filename or target}: {exc.strerror or exc}") from exc
    finally:
        with _quiet():
            os.rmdir(backups / name)
    if target != "-":
        print("Backup exported successfully!")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """``lxfs import FILE [NAME] [-s POOL]``: the tarball copied into ``instances/`` (or,
    with a name or pool, into ``instances/NAME`` made by mkdir and given its ``pool``)."""
    from lxfs.backups import BackupError, read_index

    mount = Mount()
    src = Path(args.file)
    if not src.is_file():
        raise CLIError(f"{src}: No such file")
    name = strip_local_remote(args.name) if args.name else ""
    made = False
    pool = args.storage
    if name or pool:
        try:
            index = read_index(src)
        except BackupError as exc:
            raise CLIError(f"{src}: {exc}") from None
        name = name or index["name"]
        if not pool and (mount.root / "storage-pools" / str(index.get("pool"))).is_dir():
            pool = str(index["pool"])  # as LXD: the backup's pool when it exists here
        inst = mount.instance(name, must_exist=False)
        mount.do(lambda: os.mkdir(inst), messages={
            errno.EEXIST: f"Instance {name!r} already exists",
            errno.EINVAL: f"Invalid instance name: {name!r}"})
        made = True
        dest_dir = inst
        if pool:
            try:
                mount.write(inst / "pool", pool, inst,
                            messages={errno.ENOENT: "Storage pool not found"})
            except CLIError:
                with _quiet():
                    os.rmdir(inst)
                raise
    else:
        dest_dir = mount.instances
    dest = dest_dir / f"import-{secrets.token_hex(4)}.tar"
    try:  # the import's error is the root's (the upload's)
        mount.do(lambda: _copy(src, dest), None,
                 fallback="Import failed (see the daemon's log)")
    except CLIError:
        if made:
            with _quiet():
                os.rmdir(dest_dir)
        raise
    return 0


def _copy(src: Path, dest: Path) -> None:
    with open(src, "rb") as f, open(dest, "wb") as g:
        shutil.copyfileobj(f, g, CHUNK)


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``export`` and ``import``."""
    p = sub.add_parser("export", help="Export instance backups")
    p.add_argument("name", metavar="INSTANCE")
    p.add_argument("file", metavar="FILE", nargs="?", help="the tarball (- for stdout)")
    p.add_argument("--instance-only", action="store_true",
                   help="whether or not to only backup the instance (without snapshots)")
    p.add_argument("--optimized-storage", action="store_true",
                   help="use the storage driver's own format (btrfs send streams)")
    p.add_argument("--compression", choices=("gzip", "xz", "zstd", "bzip2", "none"),
                   help="compression algorithm (default: gzip)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="Import instance backups")
    p.add_argument("file", metavar="FILE")
    p.add_argument("name", metavar="NAME", nargs="?", help="the new instance's name")
    p.add_argument("-s", "--storage", metavar="POOL", help="storage pool to use")
    p.set_defaults(func=cmd_import)
