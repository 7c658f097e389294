"""``file push|pull|delete`` through ``instances/NAME/rootfs/``.

Paths inside the instance are resolved by hand, component by component, so that the
container's symlinks (``/etc/x -> /etc/shadow``) are followed inside its root filesystem and
never on the host.
"""

from __future__ import annotations

import os
import stat
import sys

from lxfs.cli.base import CLIError, check_mount, instance_dir, mount_point

TYPE_CHECKING = False  # typing, argparse and pathlib (lxfs.cli.mount): 15 ms of start-up
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator
    from typing import BinaryIO

CHUNK = 1 << 20
MAX_LINKS = 40


def split_target(spec: str) -> tuple[str, str]:
    """``NAME/PATH`` -> ``(NAME, /PATH)``; a trailing ``/`` is kept."""
    if "/" not in spec:
        raise CLIError(f"Invalid path {spec!r}: expected NAME/PATH")
    name, path = spec.split("/", 1)
    if ":" in name:
        from lxfs.cli.mount import strip_local_remote  # noqa: PLC0415

        name = strip_local_remote(name)
    if not name:
        raise CLIError(f"Invalid path {spec!r}: expected NAME/PATH")
    return name, "/" + path


def resolve_in_root(root: str, path: str, follow_last: bool = True) -> str:
    """Host path of ``path`` inside ``root``, with symlinks resolved relative to ``root``.

    Missing components are kept as they are (the file may be about to be created).
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if parts or follow_last:
            try:
                st = os.lstat(candidate)
            except (FileNotFoundError, NotADirectoryError):
                resolved.append(part)
                continue
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_LINKS:
                    raise CLIError(f"{path}: too many levels of symbolic links")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    resolved = []
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                continue
        resolved.append(part)
    return os.path.join(root, *resolved)


class Instance:
    """The root filesystem of one instance, as seen through the mount."""

    def __init__(self, mount_root: str, name: str) -> None:
        self.name = name
        self.root = os.path.join(instance_dir(mount_root, name), "rootfs")
        if not os.path.isdir(self.root):
            raise CLIError(f"Instance {name!r} has no root filesystem")

    def host(self, path: str, follow_last: bool = True) -> str:
        return resolve_in_root(self.root, path, follow_last)


def checked_mount() -> str:
    """The mount point, once an lxfs daemon answers there."""
    root = mount_point()
    check_mount(root)
    return root


def _fail(what: str, exc: OSError) -> CLIError:
    return CLIError(f"{what}: {exc.strerror or exc}")


def copy_stream(src: BinaryIO, dst_fd: int) -> None:
    """Copy ``src`` to ``dst_fd`` in 1 MiB chunks."""
    while True:
        chunk = src.read(CHUNK)
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            n = os.write(dst_fd, view)
            view = view[n:]


def write_file(dest: str, src: BinaryIO, mode: int, uid: int, gid: int, display: str) -> None:
    """Create or replace ``dest`` (never through a symlink) and set its mode and owner."""
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode & 0o7777)
    except OSError as exc:
        raise _fail(display, exc) from exc
    try:
        copy_stream(src, fd)
    except OSError as exc:
        os.close(fd)
        raise _fail(display, exc) from exc
    try:
        os.close(fd)
        if uid >= 0 or gid >= 0:
            os.chown(dest, uid, gid, follow_symlinks=False)
        os.chmod(dest, mode & 0o7777)
    except OSError as exc:
        raise _fail(display, exc) from exc


def _owner(flag: int | None, value: int) -> int:
    return value if flag is None else flag


def _mode(flag: str | None, value: int) -> int:
    if flag is None:
        return stat.S_IMODE(value)
    try:
        return int(flag, 8)
    except ValueError as exc:
        raise CLIError(f"Invalid mode: {flag!r} (octal, e.g. 0644)") from exc


def push_path(inst: Instance, src: str, dest_path: str, args: argparse.Namespace) -> None:
    """Push one local file, symlink or (with -r) directory to ``dest_path`` in ``inst``."""
    if src == "-":
        mode = _mode(args.mode, 0o644)
        write_file(inst.host(dest_path), sys.stdin.buffer, mode, _owner(args.uid, 0),
                   _owner(args.gid, 0), f"{inst.name}{dest_path}")
        return
    try:
        st = os.lstat(src)
    except OSError as exc:
        raise _fail(src, exc) from exc
    uid, gid = _owner(args.uid, st.st_uid), _owner(args.gid, st.st_gid)
    if stat.S_ISDIR(st.st_mode):
        if not args.recursive:
            raise CLIError(f"{src} is a directory (use -r)")
        host = inst.host(dest_path)
        try:
            if not os.path.isdir(host):
                os.mkdir(host, stat.S_IMODE(st.st_mode))
            os.chown(host, uid, gid, follow_symlinks=False)
            os.chmod(host, stat.S_IMODE(st.st_mode))
        except OSError as exc:
            raise _fail(f"{inst.name}{dest_path}", exc) from exc
        for entry in sorted(os.scandir(src), key=lambda e: e.name):
            push_path(inst, entry.path, dest_path.rstrip("/") + "/" + entry.name, args)
        return
    if stat.S_ISLNK(st.st_mode):
        if not args.recursive:
            push_regular(inst, src, dest_path, args, os.stat(src))
            return
        host = inst.host(dest_path, follow_last=False)
        try:
            if os.path.lexists(host):
                os.unlink(host)
            os.symlink(os.readlink(src), host)
            os.chown(host, uid, gid, follow_symlinks=False)
        except OSError as exc:
            raise _fail(f"{inst.name}{dest_path}", exc) from exc
        return
    if not stat.S_ISREG(st.st_mode):
        sys.stderr.write(f"Skipping {src}: not a regular file, directory or symlink\n")
        return
    push_regular(inst, src, dest_path, args, st)


def push_regular(inst: Instance, src: str, dest_path: str, args: argparse.Namespace,
                 st: os.stat_result) -> None:
    """Push one regular file."""
    mode = _mode(args.mode, st.st_mode)
    uid, gid = _owner(args.uid, st.st_uid), _owner(args.gid, st.st_gid)
    try:
        f = open(src, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise _fail(src, exc) from exc
    with f:
        write_file(inst.host(dest_path), f, mode, uid, gid, f"{inst.name}{dest_path}")


def cmd_push(args: argparse.Namespace) -> int:
    """``lxfs file push SRC... NAME/PATH [-r] [-p] [--uid --gid --mode]``."""
    mount = checked_mount()
    name, target = split_target(args.target)
    inst = Instance(mount, name)
    into_dir = target.endswith("/") or len(args.sources) > 1 or args.recursive
    target_host = inst.host(target)
    if not into_dir and os.path.isdir(target_host):
        into_dir = True
    if args.create_dirs:
        parent = target_host if into_dir else os.path.dirname(target_host)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise _fail(f"{name}{target}", exc) from exc
    elif into_dir and not os.path.isdir(target_host):
        raise CLIError(f"{name}{target}: No such directory")
    for src in args.sources:
        if into_dir:
            base = os.path.basename(src.rstrip("/")) or src
            if src == "-":
                raise CLIError("Pushing from stdin needs a file name as target")
            dest = target.rstrip("/") + "/" + base
        else:
            dest = target
        push_path(inst, src, dest, args)
    return 0


def iter_tree(host: str) -> Iterator[os.DirEntry[str]]:
    """Entries of a directory, sorted by name."""
    return iter(sorted(os.scandir(host), key=lambda e: e.name))


def pull_path(inst: Instance, host: str, display: str, dest: str, recursive: bool) -> None:
    """Pull one file, symlink or (with -r) directory from the instance to ``dest``."""
    try:
        st = os.lstat(host)
    except OSError as exc:
        raise _fail(display, exc) from exc
    if stat.S_ISDIR(st.st_mode):
        if not recursive:
            raise CLIError(f"{display} is a directory (use -r)")
        try:
            os.makedirs(dest, exist_ok=True)
            os.chmod(dest, stat.S_IMODE(st.st_mode) | 0o700)
            entries = list(iter_tree(host))
        except OSError as exc:
            raise _fail(display, exc) from exc
        for entry in entries:
            pull_path(inst, entry.path, f"{display.rstrip('/')}/{entry.name}",
                      os.path.join(dest, entry.name), True)
        return
    if stat.S_ISLNK(st.st_mode):
        try:
            if os.path.lexists(dest):
                os.unlink(dest)
            os.symlink(os.readlink(host), dest)
        except OSError as exc:
            raise _fail(dest, exc) from exc
        return
    if not stat.S_ISREG(st.st_mode):
        sys.stderr.write(f"Skipping {display}: not a regular file, directory or symlink\n")
        return
    try:
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _fail(display, exc) from exc
    with os.fdopen(fd, "rb") as src:
        if dest == "-":
            sys.stdout.flush()
            try:
                copy_stream(src, sys.stdout.fileno())
            except OSError as exc:
                raise _fail("stdout", exc) from exc
            return
        try:
            out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                          stat.S_IMODE(st.st_mode))
        except OSError as exc:
            raise _fail(dest, exc) from exc
        try:
            copy_stream(src, out)
        except OSError as exc:
            raise _fail(display, exc) from exc
        finally:
            os.close(out)
    try:
        os.chmod(dest, stat.S_IMODE(st.st_mode))
    except OSError:
        pass


def cmd_pull(args: argparse.Namespace) -> int:
    """``lxfs file pull NAME/PATH... DST [-r] [-p]``."""
    mount = checked_mount()
    dest = args.target
    into_dir = (len(args.sources) > 1 or dest.endswith("/") or os.path.isdir(dest)
                or (args.recursive and os.path.exists(dest)))
    if dest == "-":
        if args.recursive or len(args.sources) > 1:
            raise CLIError("Only a single file can be pulled to stdout")
        into_dir = False
    if args.create_dirs and dest != "-":
        os.makedirs(dest if into_dir else (os.path.dirname(dest) or "."), exist_ok=True)
    if into_dir and not os.path.isdir(dest):
        raise CLIError(f"{dest}: No such directory")
    instances: dict[str, Instance] = {}
    for spec in args.sources:
        name, path = split_target(spec)
        inst = instances.get(name) or instances.setdefault(name, Instance(mount, name))
        host = inst.host(path)
        target = dest
        if into_dir:
            target = os.path.join(dest, os.path.basename(path.rstrip("/")) or name)
        pull_path(inst, host, f"{name}{path}", target, args.recursive)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """``lxfs file delete NAME/PATH... [-f]``."""
    mount = checked_mount()
    for spec in args.paths:
        name, path = split_target(spec)
        if path.strip("/") == "":
            raise CLIError("Refusing to delete the root directory")
        inst = Instance(mount, name)
        host = inst.host(path, follow_last=False)
        try:
            st = os.lstat(host)
            if stat.S_ISDIR(st.st_mode):
                if args.force:
                    import shutil  # noqa: PLC0415

                    shutil.rmtree(host)
                else:
                    os.rmdir(host)
            else:
                os.unlink(host)
        except OSError as exc:
            raise _fail(f"{name}{path}", exc) from exc
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``file push|pull|delete``."""
    file_parser = sub.add_parser("file", help="Manage files in instances")
    fsub = file_parser.add_subparsers(dest="file_command", metavar="COMMAND")
    fsub.required = True

    p = fsub.add_parser("push", help="Push files into instances")
    p.add_argument("sources", metavar="SOURCE", nargs="+")
    p.add_argument("target", metavar="NAME/PATH")
    p.add_argument("-r", "--recursive", action="store_true", help="push directories")
    p.add_argument("-p", "--create-dirs", action="store_true",
                   help="create any directories necessary")
    p.add_argument("--uid", type=int, help="owner uid (in the container)")
    p.add_argument("--gid", type=int, help="owner gid (in the container)")
    p.add_argument("--mode", help="permissions (octal, e.g. 0644)")
    p.set_defaults(func=cmd_push)

    p = fsub.add_parser("pull", help="Pull files from instances")
    p.add_argument("sources", metavar="NAME/PATH", nargs="+")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("-r", "--recursive", action="store_true", help="pull directories")
    p.add_argument("-p", "--create-dirs", action="store_true",
                   help="create any directories necessary")
    p.set_defaults(func=cmd_pull)

    p = fsub.add_parser("delete", aliases=["rm"], help="Delete files in instances")
    p.add_argument("paths", metavar="NAME/PATH", nargs="+")
    p.add_argument("-f", "--force", action="store_true", help="delete directories recursively")
    p.set_defaults(func=cmd_delete)

