"""``image`` commands: list, info, show, import, export, delete, alias, build."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
from pathlib import Path

from lxfs.cli.mount import (
    CLIError,
    Mount,
    parse_bool,
    read_dir_values,
    read_lines,
    read_opt,
    strip_local_remote,
)
from lxfs.cli.output import FORMATS, emit, fmt_time, fmt_upload_date, render_yaml, size_iec

TYPE_CHECKING = False  # importing typing costs 2-4 ms of start-up
if TYPE_CHECKING:
    from typing import Any

CHUNK = 1 << 20
RECIPES = ("busybox", "debian")
DEFAULT_SUITE = "bookworm"
KNOWN_SUFFIXES = (".tar.gz", ".tar.xz", ".tar.bz2", ".tar.zst", ".tar.lzma", ".tgz", ".txz",
                  ".tbz2", ".tar", ".squashfs")


def out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# -- reading images ----------------------------------------------------------------------------
def image_aliases(mount: Mount, fp: str) -> list[str]:
    """Aliases of an image (its ``aliases`` file)."""
    return read_lines(mount.images / fp / "aliases")


def image_object(mount: Mount, fp: str) -> dict[str, Any]:
    """One image shaped like LXD's ``/1.0/images?recursion=1`` entries."""
    d = mount.images / fp
    try:
        size = int(read_opt(d / "size", "0") or 0)
    except ValueError:
        size = 0
    return {
        "auto_update": parse_bool(read_opt(d / "auto_update", "false")),
        "properties": read_dir_values(d / "properties"),
        "public": parse_bool(read_opt(d / "public", "false")),
        "expires_at": "1970-01-01T00:00:00Z",
        "profiles": ["default"],
        "aliases": [{"name": a, "description": ""} for a in image_aliases(mount, fp)],
        "architecture": read_opt(d / "architecture"),
        "cached": parse_bool(read_opt(d / "cached", "false")),
        "filename": read_opt(d / "filename"),
        "fingerprint": fp,
        "size": size,
        "type": read_opt(d / "type", "container") or "container",
        "created_at": read_opt(d / "created_at"),
        "last_used_at": read_opt(d / "last_used_at"),
        "uploaded_at": read_opt(d / "uploaded_at"),
    }


def _alias_cell(aliases: list[str]) -> str:
    if not aliases:
        return ""
    shortest = min(aliases, key=lambda a: (len(a), a))
    return shortest if len(aliases) == 1 else f"{shortest} ({len(aliases) - 1} more)"


def cmd_list(args: argparse.Namespace) -> int:
    """``lxfs image list [FILTER...] [--format F]``."""
    mount = Mount()
    filters = []
    for f in args.filters:
        if f.endswith(":"):
            strip_local_remote(f)
            continue
        filters.append(strip_local_remote(f) if ":" in f else f)
    print_images([image_object(mount, fp) for fp in mount.image_fingerprints()], filters,
                 args.format)
    return 0


def print_images(images: list[dict[str, Any]], filters: list[str], fmt: str) -> None:
    """Print images (LXD's ``/1.0/images?recursion=1`` objects, from the mount or a
    remote) as ``lxc image list`` does, keeping those that match every filter."""
    objects = []
    for obj in images:
        haystack = [obj["fingerprint"], obj["properties"].get("description", "")]
        haystack += [a["name"] for a in obj["aliases"]]
        if all(any(flt.lower() in h.lower() for h in haystack) for flt in filters):
            objects.append(obj)
    rows = []
    for obj in objects:
        aliases = [a["name"] for a in obj["aliases"]]
        rows.append([
            _alias_cell(aliases),
            obj["fingerprint"][:12],
            "yes" if obj["public"] else "no",
            obj["properties"].get("description", ""),
            obj["architecture"],
            obj["type"].upper(),
            size_iec(obj["size"]),
            fmt_upload_date(obj["uploaded_at"]),
        ])
    order = sorted(range(len(rows)), key=lambda i: (rows[i][0], objects[i]["fingerprint"]))
    rows = [rows[i] for i in order]
    objects = [objects[i] for i in order]
    emit(fmt, ["ALIAS", "FINGERPRINT", "PUBLIC", "DESCRIPTION", "ARCHITECTURE", "TYPE",
               "SIZE", "UPLOAD DATE"], rows, objects)


def cmd_info(args: argparse.Namespace) -> int:
    """``lxfs image info IMAGE``."""
    mount = Mount()
    print_image_info(image_object(mount, mount.resolve_image(args.image)))
    return 0


def print_image_info(obj: dict[str, Any]) -> None:
    """An image (LXD's ``/1.0/images/FP`` object, of the mount or a remote) as ``lxc image
    info`` prints it."""
    lines = [
        f"Fingerprint: {obj['fingerprint']}",
        f"Size: {size_iec(obj['size'])}",
        f"Architecture: {obj['architecture']}",
        f"Type: {obj['type']}",
        f"Public: {'yes' if obj['public'] else 'no'}",
        "Timestamps:",
        f"    Created: {fmt_time(obj['created_at'])}",
        f"    Uploaded: {fmt_time(obj['uploaded_at'])}",
        "    Expires: never",
        f"    Last used: {fmt_time(obj['last_used_at']) or 'never'}",
        "Properties:",
    ]
    lines += [f"    {k}: {v}" for k, v in obj["properties"].items()]
    lines.append("Aliases:")
    lines += [f"    - {a['name']}" for a in obj["aliases"]]
    lines += [f"Cached: {'yes' if obj.get('cached') else 'no'}",
              f"Auto update: {'enabled' if obj.get('auto_update') else 'disabled'}",
              "Profiles:"]
    lines += [f"    - {p}" for p in obj.get("profiles") or []]
    sys.stdout.write("\n".join(lines) + "\n")


def cmd_show(args: argparse.Namespace) -> int:
    """``lxfs image show IMAGE``: the editable properties as YAML."""
    mount = Mount()
    print_image_show(image_object(mount, mount.resolve_image(args.image)))
    return 0


def print_image_show(obj: dict[str, Any]) -> None:
    keys = ("auto_update", "properties", "public", "expires_at", "profiles")
    sys.stdout.write(render_yaml({k: obj.get(k) for k in keys}))


# -- import ------------------------------------------------------------------------------------
def ensure_alias(mount: Mount, alias: str, fp: str, reuse: bool) -> None:
    """Make ``images/aliases/ALIAS`` point at ``fp`` (re-point it when ``reuse``)."""
    from lxfs.cli.fast import ensure_alias as ensure  # noqa: PLC0415

    ensure(str(mount.aliases), alias, fp, reuse)


def import_image(mount: Mount, meta: str, rootfs: str | None, aliases: list[str],
                 public: bool = False, reuse: bool = False) -> str:
    """Import a unified or split image through ``images/`` and set its aliases (the fast
    path's own function: the files are hashed as they are copied)."""
    from lxfs.cli.fast import import_image as import_files  # noqa: PLC0415

    return import_files(str(mount.images), str(mount.aliases), meta, rootfs, aliases, public,
                        reuse)


def cmd_import(args: argparse.Namespace) -> int:
    """``lxfs image import FILE [ROOTFS] [--alias A]... [--public] [--reuse]``."""
    mount = Mount()
    for path in [args.file] + ([args.rootfs] if args.rootfs else []):
        if not os.path.isfile(path):
            raise CLIError(f"{path}: No such file")
    import_image(mount, args.file, args.rootfs, args.alias or [], args.public, args.reuse)
    return 0


# -- export / delete ---------------------------------------------------------------------------
def _suffix(filename: str, sample: bytes) -> str:
    for suffix in KNOWN_SUFFIXES:
        if filename.endswith(suffix):
            return suffix
    if sample.startswith(b"\x1f\x8b"):
        return ".tar.gz"
    if sample.startswith(b"\xfd7zXZ\x00"):
        return ".tar.xz"
    if sample.startswith(b"BZh"):
        return ".tar.bz2"
    if sample.startswith(b"\x28\xb5\x2f\xfd"):
        return ".tar.zst"
    if sample.startswith(b"hsqs"):
        return ".squashfs"
    return ".tar"


def _copy_out(mount: Mount, src: Path, dest: str) -> None:
    try:
        with open(src, "rb") as f, open(dest, "wb") as g:
            while chunk := f.read(CHUNK):
                g.write(chunk)
    except OSError as exc:
        raise CLIError(f"{exc.filename or dest}: {exc.strerror or exc}") from exc


def cmd_copy(args: argparse.Namespace) -> int:
    """``lxfs image copy IMAGE local: [--alias A]``: on this host, the aliases only (copies
    that involve other servers run in ``remote_commands``)."""
    mount = Mount()
    fp = mount.resolve_image(args.image)
    for alias in args.alias or []:
        target = mount.images / "aliases" / alias
        mount.do(lambda t=target: os.symlink(fp, t))
    if args.public:
        mount.write(mount.images / fp / "public", "true")
    print("Image copied successfully!")
    return 0


def pull_remote_image(remote: Any, image: str, aliases: list[str], public: bool = False,
                      auto_update: bool = False) -> str:
    """Bring ``image`` of an image server (``remote``: an lxd or simplestreams remote) into
    this host's image store (the daemon pulls it); its fingerprint."""
    from lxfs.cli import image_servers  # noqa: PLC0415

    return image_servers.pull_remote_image(remote, image, aliases, public, auto_update)


def cmd_export(args: argparse.Namespace) -> int:
    """``lxfs image export IMAGE [TARGET]``."""
    mount = Mount()
    fp = mount.resolve_image(args.image)
    d = mount.images / fp
    meta, rootfs = d / "export", d / "export.rootfs"
    split = rootfs.exists()
    filename = read_opt(d / "filename")
    try:
        with open(meta, "rb") as f:
            sample = f.read(8)
    except OSError as exc:
        raise CLIError(mount.error_message(exc, None, f"Cannot read image {fp}")) from exc
    target = args.target or "."
    if os.path.isdir(target):
        meta_dest = os.path.join(target, fp + _suffix(filename, sample))
        rootfs_dest = os.path.join(target, fp + ".squashfs")
    else:
        meta_dest, rootfs_dest = target, target + ".root"
    _copy_out(mount, meta, meta_dest)
    if split:
        _copy_out(mount, rootfs, rootfs_dest)
    out("Image exported successfully!")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """``lxfs image delete IMAGE...``."""
    mount = Mount()
    for ref in args.images:
        fp = mount.resolve_image(ref)
        mount.do(lambda f=fp: os.rmdir(mount.images / f), None,
                 messages={errno.EBUSY: "The image is in use"})
    return 0


# -- aliases -----------------------------------------------------------------------------------
def cmd_alias(args: argparse.Namespace) -> int:
    """``lxfs image alias create|delete|list|rename``."""
    mount = Mount()
    action = args.alias_action
    if action == "create":
        fp = mount.resolve_image(args.target)
        alias = strip_local_remote(args.alias)
        if os.path.lexists(mount.aliases / alias):
            raise CLIError(f"Alias already exists: {alias}")
        ensure_alias(mount, alias, fp, reuse=False)
    elif action == "delete":
        alias = strip_local_remote(args.alias)
        path = mount.aliases / alias
        if "/" in alias or not os.path.islink(path):
            raise CLIError("Image alias not found")
        mount.do(lambda: os.unlink(path))
    elif action == "rename":
        old, new = strip_local_remote(args.old), strip_local_remote(args.new)
        if "/" in old or not os.path.islink(mount.aliases / old):
            raise CLIError("Image alias not found")
        if os.path.lexists(mount.aliases / new):
            raise CLIError(f"Alias already exists: {new}")
        fp = mount.resolve_image(old)
        ensure_alias(mount, new, fp, reuse=False)
        mount.do(lambda: os.unlink(mount.aliases / old))
    else:
        rows, data = [], []
        try:
            names = sorted(os.listdir(mount.aliases))
        except FileNotFoundError:
            names = []
        for name in names:
            try:
                fp = os.path.basename(os.readlink(mount.aliases / name).rstrip("/"))
            except OSError:
                continue
            if args.filters and not any(f in name for f in args.filters):
                continue
            kind = read_opt(mount.images / fp / "type", "container") or "container"
            rows.append([name, fp[:12], kind.upper(), ""])
            data.append({"name": name, "description": "", "target": fp, "type": kind})
        emit(args.format, ["ALIAS", "FINGERPRINT", "TYPE", "DESCRIPTION"], rows, data)
    return 0


# -- build -------------------------------------------------------------------------------------
def contrib_dir() -> Path:
    """Where the image recipes live (env ``LXFS_CONTRIB_DIR`` overrides)."""
    env = os.environ.get("LXFS_CONTRIB_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "contrib" / "images"


def _mount_points_under(path: str) -> list[str]:
    real = os.path.realpath(path)
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4:
                    point = fields[4].replace("\\040", " ")
                    if point == real or point.startswith(real + "/"):
                        found.append(point)
    except OSError:
        pass
    return found


def _cleanup(path: str) -> None:
    """Remove a build directory, unless something is still mounted inside it."""
    mounted = _mount_points_under(path)
    if mounted:
        sys.stderr.write(f"Warning: not removing {path}: {mounted[0]} is still mounted\n")
        return
    shutil.rmtree(path, ignore_errors=True)


def run_recipe(script: Path, outdir: str, extra: list[str]) -> str:
    """Run a recipe; stream its stderr; return the last line of its stdout (the tarball)."""
    import subprocess  # noqa: PLC0415

    cmd = [str(script), outdir, *extra]
    if not os.access(script, os.X_OK):
        cmd = ["bash", *cmd]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True, errors="replace")
    except OSError as exc:
        raise CLIError(f"Cannot run {script}: {exc.strerror or exc}") from exc
    last = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if last is not None:
                sys.stderr.write(last + "\n")
                sys.stderr.flush()
            last = line
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        raise CLIError(f"image recipe {script.name} failed (exit status {rc})")
    if not last:
        raise CLIError(f"image recipe {script.name} printed no image path")
    path = last.strip()
    if not os.path.isabs(path) and os.path.exists(os.path.join(outdir, path)):
        path = os.path.join(outdir, path)
    if not os.path.isfile(path):
        raise CLIError(f"image recipe {script.name} printed {path!r}, which is no file")
    return path


def cmd_build(args: argparse.Namespace) -> int:
    """``lxfs image build busybox|debian [--alias NAME] [--suite SUITE]``."""
    mount = Mount()
    recipe = args.recipe
    directory = contrib_dir()
    script = directory / f"{recipe}.sh"
    if not script.is_file():
        raise CLIError(f"image recipe not found: {script} (set LXFS_CONTRIB_DIR to the "
                       "directory holding busybox.sh and debian.sh)")
    extra: list[str] = []
    if recipe == "debian":
        extra = [args.suite or DEFAULT_SUITE]
    elif args.suite:
        raise CLIError("--suite only applies to the debian recipe")
    out(f"Building image {recipe}" + (f" ({extra[0]})" if extra else ""))
    import tempfile  # noqa: PLC0415

    outdir = tempfile.mkdtemp(prefix=f"lxfs-build-{recipe}-")
    try:
        tarball = run_recipe(script, outdir, extra)
        import_image(mount, tarball, None, [args.alias or recipe], args.public, reuse=True)
    finally:
        _cleanup(outdir)
    return 0


# -- registration ------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``image ...``."""
    image = sub.add_parser("image", help="Manage images")
    isub = image.add_subparsers(dest="image_command", metavar="COMMAND")
    isub.required = True

    p = isub.add_parser("list", aliases=["ls"], help="List images")
    p.add_argument("filters", metavar="FILTER", nargs="*")
    p.add_argument("-f", "--format", choices=FORMATS, default="table")
    p.set_defaults(func=cmd_list)

    p = isub.add_parser("info", help="Show image information")
    p.add_argument("image", metavar="IMAGE")
    p.set_defaults(func=cmd_info)

    p = isub.add_parser("show", help="Show image properties")
    p.add_argument("image", metavar="IMAGE")
    p.set_defaults(func=cmd_show)

    p = isub.add_parser("import", help="Import an image tarball (or metadata + rootfs)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("rootfs", metavar="ROOTFS", nargs="?")
    p.add_argument("--alias", action="append", metavar="ALIAS", help="alias to create")
    p.add_argument("--public", action="store_true", help="make the image public")
    p.add_argument("--reuse", action="store_true", help="re-point existing aliases")
    p.set_defaults(func=cmd_import)

    p = isub.add_parser("export", help="Export an image's tarball(s)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("target", metavar="TARGET", nargs="?")
    p.set_defaults(func=cmd_export)

    p = isub.add_parser("copy", aliases=["cp"], help="Copy images between servers: "
                        "SRC:IMAGE DST: (lxfs remote list)")
    p.add_argument("image", metavar="[REMOTE:]IMAGE")
    p.add_argument("targets", metavar="REMOTE:", nargs="+")
    p.add_argument("--alias", action="append", metavar="ALIAS", help="an alias on the target")
    p.add_argument("--public", action="store_true", help="make the image public on the target")
    p.add_argument("--auto-update", action="store_true", help="keep it updated (pulled images)")
    p.set_defaults(func=cmd_copy)

    from lxfs.cli import image_servers  # noqa: PLC0415

    image_servers.register(isub)  # export-streams

    p = isub.add_parser("delete", aliases=["rm"], help="Delete images")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.set_defaults(func=cmd_delete)

    p = isub.add_parser("build", help="Build an image from a recipe and import it")
    p.add_argument("recipe", choices=RECIPES)
    p.add_argument("--alias", help="alias of the built image (default: the recipe name)")
    p.add_argument("--suite", help=f"Debian suite (default {DEFAULT_SUITE})")
    p.add_argument("--public", action="store_true", help="make the image public")
    p.set_defaults(func=cmd_build)

    alias = isub.add_parser("alias", help="Manage image aliases")
    asub = alias.add_subparsers(dest="alias_action", metavar="COMMAND")
    asub.required = True
    p = asub.add_parser("create", help="Create an alias: ALIAS FINGERPRINT|ALIAS")
    p.add_argument("alias", metavar="ALIAS")
    p.add_argument("target", metavar="TARGET")
    p = asub.add_parser("delete", aliases=["rm"], help="Delete an alias")
    p.add_argument("alias", metavar="ALIAS")
    p.set_defaults(alias_action="delete")
    p = asub.add_parser("rename", aliases=["mv"], help="Rename an alias: OLD NEW")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    p.set_defaults(alias_action="rename")
    p = asub.add_parser("list", aliases=["ls"], help="List aliases")
    p.add_argument("filters", metavar="FILTER", nargs="*")
    p.add_argument("-f", "--format", choices=FORMATS, default="table")
    p.set_defaults(alias_action="list")
    alias.set_defaults(func=cmd_alias)
