"""An instance's files over REST: ``GET/HEAD/POST/DELETE /1.0/instances/NAME/files?path=``,
LXD's file API (``X-LXD-uid``, ``-gid``, ``-mode``, ``-type``, ``-write`` headers; regular
files, directories, symbolic links; ``write=append``).

It works on the root filesystem as stored (unshifted: uids and gids are the container's own)
the way the mount's ``rootfs/`` does: every path is resolved inside it as the container
would resolve it (``openat2`` with RESOLVE_IN_ROOT from the rootfs), and the last component
is acted on through ``*at`` calls on its confined parent, so a symbolic link or ``..`` the
container planted never leads a request out of its files. Only regular files are opened
(checked through an ``O_PATH`` descriptor first): a FIFO or a device node a container made
is never read or written. Blocking I/O runs in worker threads under a limiter of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import posixpath
import stat
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import trio

from lxfs.errors import InvalidArgument

from .app import Context, error, sync
from .http import HttpError, Request, Response
from .instances import instance_route, lifecycle, requested_instance

T = TypeVar("T")

#: worker threads for file transfers (apart from the server's): a slow disk or a large
#: transfer never takes the threads the server's operations need
FILE_THREADS = trio.CapacityLimiter(8)
#: bytes read or written per worker-thread trip
CHUNK = 1 << 20
#: the longest symbolic link target accepted (PATH_MAX)
MAX_LINK_TARGET = 4096
DEFAULT_FILE_MODE = 0o644  # as LXD's file server creates files
DEFAULT_DIR_MODE = 0o750  # LXD's default for a pushed directory

SYS_OPENAT2 = 437  # the same number on every architecture
RESOLVE_NO_XDEV, RESOLVE_NO_MAGICLINKS, RESOLVE_IN_ROOT = 0x01, 0x02, 0x10
CONFINED = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _openat2(dirfd: int, path: str, flags: int, mode: int = 0) -> int:
    """``openat2(dirfd, path)`` resolved inside ``dirfd`` (RESOLVE_IN_ROOT): symbolic links
    and ``..`` stop at it, as they do at a chroot's ``/``."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, CONFINED)
    fd = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_long(dirfd), os.fsencode(path),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


async def in_file_thread(fn: Callable[..., T], *args: Any) -> T:
    return await trio.to_thread.run_sync(fn, *args, limiter=FILE_THREADS)


# --- paths inside a root filesystem (blocking) -------------------------------------------


def container_path(raw: str) -> str:
    """The ``path`` parameter as an absolute, normalised path inside the container."""
    if not raw:
        raise HttpError(400, "Missing path argument")
    if "\0" in raw:
        raise HttpError(400, "invalid path: it holds a NUL byte")
    return posixpath.normpath("/" + raw.lstrip("/"))


class Rootfs:
    """An instance's root filesystem, opened once per request (``with Rootfs(path)``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> Rootfs:
        self.fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def open(self, path: str, flags: int, mode: int = 0) -> int:
        """``path`` (absolute in the container) opened the way the container resolves it."""
        rel = path.lstrip("/") or "."
        return _openat2(self.fd, rel, flags, mode)

    @contextlib.contextmanager
    def parent(self, path: str) -> Iterator[tuple[int, str]]:
        """``with root.parent(path) as (dirfd, name)``: the confined parent directory and the
        last component, for ``*at`` calls that never follow that component."""
        if path == "/":
            raise OSError(errno.EINVAL, "the root directory itself", path)
        fd = self.open(posixpath.dirname(path), os.O_PATH | os.O_DIRECTORY)
        try:
            yield fd, posixpath.basename(path)
        finally:
            os.close(fd)


@dataclass
class Entry:
    """What ``GET`` found at a path."""

    kind: str  # file, directory, symlink
    uid: int
    gid: int
    mode: int
    mtime: float
    fd: int = -1  # an open regular file
    entries: list[str] = field(default_factory=list)
    target: str = ""

    def headers(self) -> list[tuple[str, str]]:
        modified = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.mtime)) + \
            f".{int(self.mtime % 1 * 1e9):09d} +0000 UTC"
        return [("X-LXD-uid", str(self.uid)), ("X-LXD-gid", str(self.gid)),
                ("X-LXD-mode", f"{stat.S_IMODE(self.mode) & 0o777:04o}"),
                ("X-LXD-modified", modified), ("X-LXD-type", self.kind)]


def _reopen(path_fd: int, flags: int) -> int:
    """A real descriptor of the inode an ``O_PATH`` descriptor holds (never the path
    again: whatever was swapped in since is not what gets opened)."""
    return os.open(f"/proc/self/fd/{path_fd}", flags | os.O_CLOEXEC)


def look_up(rootfs: Path, path: str, content: bool) -> Entry:
    """Stat ``path`` without following it; with ``content``, open a regular file, list a
    directory or read a link's target (LXD answers a link with the absolute path it points
    to)."""
    with Rootfs(rootfs) as root:
        if path == "/":
            pfd = root.open("/", os.O_PATH | os.O_DIRECTORY)
        else:
            with root.parent(path) as (dirfd, name):
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(name, dir_fd=dirfd) if content else ""
                    if target:
                        target = posixpath.normpath(posixpath.join(posixpath.dirname(path),
                                                                   target))
                    return Entry("symlink", st.st_uid, st.st_gid, st.st_mode, st.st_mtime,
                                 target=target)
                pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        try:
            st = os.fstat(pfd)
            entry = Entry("file", st.st_uid, st.st_gid, st.st_mode, st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                entry.kind = "directory"
                if content:
                    dfd = _reopen(pfd, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        entry.entries = sorted(os.listdir(dfd))
                    finally:
                        os.close(dfd)
            elif not stat.S_ISREG(st.st_mode):
                raise OSError(errno.ENXIO, "not a regular file, directory or symbolic link",
                              path)
            elif content:
                entry.fd = _reopen(pfd, os.O_RDONLY)
            return entry
        finally:
            os.close(pfd)


def open_for_write(rootfs: Path, path: str, append: bool, mode: int, uid: int, gid: int
                   ) -> tuple[int, bool]:
    """Open a regular file for a push (following a last symbolic link inside the rootfs, as
    the container would): truncated (overwrite) or at its end (append). A file that does not
    exist is created (overwrite only) with ``mode`` (-1: 0644) and ``uid``/``gid`` (-1:
    root); an existing file keeps its own (as LXD). Returns the fd and whether it was
    created."""
    with Rootfs(rootfs) as root:
        try:
            pfd = root.open(path, os.O_PATH)
        except FileNotFoundError:
            if append:
                raise
            fd = root.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                           DEFAULT_FILE_MODE)
            try:
                os.fchmod(fd, DEFAULT_FILE_MODE if mode < 0 else mode)
                if uid >= 0 or gid >= 0:
                    os.fchown(fd, uid, gid)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError), root.parent(path) as (dirfd, name):
                    os.unlink(name, dir_fd=dirfd)
                raise
            return fd, True
        try:
            st = os.fstat(pfd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.ENXIO, "not a regular file", path)
            return _reopen(pfd, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC)), False
        finally:
            os.close(pfd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def remove_created(rootfs: Path, path: str) -> None:
    """Undo a push that created a file and failed: remove it."""
    with Rootfs(rootfs) as root, root.parent(path) as (dirfd, name):
        os.unlink(name, dir_fd=dirfd)


def make_symlink(rootfs: Path, path: str, target: str, uid: int, gid: int) -> bool:
    """Create a symbolic link (nothing to do if it exists with that target); False when
    nothing changed."""
    with Rootfs(rootfs) as root, root.parent(path) as (dirfd, name):
        with contextlib.suppress(OSError):
            if os.readlink(name, dir_fd=dirfd) == target:
                return False
        os.symlink(target, name, dir_fd=dirfd)
        if uid >= 0 or gid >= 0:
            os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
        return True


def make_directory(rootfs: Path, path: str, mode: int, uid: int, gid: int) -> bool:
    """Create a directory (nothing to do if the path exists, as LXD); False when nothing
    changed."""
    with Rootfs(rootfs) as root:
        with contextlib.suppress(FileNotFoundError):
            os.close(root.open(path, os.O_PATH))
            return False
        with root.parent(path) as (dirfd, name):
            os.mkdir(name, 0o700, dir_fd=dirfd)
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC,
                         dir_fd=dirfd)
            try:  # through the new directory's own inode: never a path swapped in since
                os.chmod(f"/proc/self/fd/{fd}", DEFAULT_DIR_MODE if mode < 0 else mode)
                if uid >= 0 or gid >= 0:
                    os.chown(f"/proc/self/fd/{fd}", uid, gid)
            finally:
                os.close(fd)
        return True


def remove_entry(rootfs: Path, path: str) -> None:
    """Remove a file, a link (not what it points to) or an empty directory."""
    with Rootfs(rootfs) as root, root.parent(path) as (dirfd, name):
        try:
            os.unlink(name, dir_fd=dirfd)
        except IsADirectoryError:
            os.rmdir(name, dir_fd=dirfd)


# --- requests ----------------------------------------------------------------------------


@dataclass
class FileHeaders:
    """LXD's ``X-LXD-*`` request headers (-1: not given)."""

    uid: int = -1
    gid: int = -1
    mode: int = -1
    type: str = "file"
    write: str = "overwrite"

    @classmethod
    def of(cls, request: Request) -> FileHeaders:
        headers = cls(_id(request.headers.get("x-lxd-uid")),
                      _id(request.headers.get("x-lxd-gid")),
                      _mode(request.headers.get("x-lxd-mode")),
                      request.headers.get("x-lxd-type") or "file",
                      request.headers.get("x-lxd-write") or "overwrite")
        if headers.write not in ("overwrite", "append"):
            raise HttpError(400, f"Bad file write mode: {headers.write}")
        if headers.type not in ("file", "directory", "symlink"):
            raise HttpError(400, f"Bad file type: {headers.type}")
        return headers


def _id(value: str | None) -> int:
    """A uid or gid header: a number of 0..2^32-2, else -1 (as LXD ignores what it cannot
    parse)."""
    try:
        number = int(value or "", 10)
    except ValueError:
        return -1
    return number if 0 <= number < 0xFFFFFFFF else -1


def _mode(value: str | None) -> int:
    """``X-LXD-mode``: LXD parses it with Go's base prefixes (``0644`` octal) and keeps the
    permission bits."""
    if not value:
        return -1
    text = value.strip()
    try:
        if text.lower().startswith("0x"):
            number = int(text[2:], 16)
        elif text.lower().startswith("0o"):
            number = int(text[2:], 8)
        elif len(text) > 1 and text.startswith("0"):
            number = int(text[1:], 8)
        else:
            number = int(text, 10)
    except ValueError:
        return -1
    return number & 0o777 if number >= 0 else -1


def _file_error(path: str, exc: OSError) -> Response:
    """A system error in LXD's words and statuses."""
    if exc.errno == errno.ENOENT:
        return error(404, "not found")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return error(403, f"{path}: {exc.strerror}")
    if exc.errno == errno.EEXIST:
        return error(409, f"{path}: {exc.strerror}")
    if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.ENXIO, errno.ELOOP, errno.EXDEV,
                     errno.ENOTEMPTY, errno.EINVAL, errno.ENAMETOOLONG, errno.EROFS,
                     errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return error(400, f"{path}: {exc.strerror}")
    return error(500, f"{path}: {exc.strerror or exc}")


def _rootfs(ctx: Context, name: str) -> Path:
    inst = requested_instance(ctx, name)
    if inst.storage_state != "ready":
        raise InvalidArgument(f"instance {name} has no root filesystem yet")
    return ctx.host.rootfs(inst)


def _filename(path: str) -> str:
    """The last component for ``Content-Disposition``, in printable ASCII (a container's
    file names may hold anything)."""
    return quote(posixpath.basename(path) or "/", safe="")


def _stream(fd: int) -> AsyncIterator[bytes]:
    """A file's content, read in worker threads; the fd is closed at the end, or when the
    response is dropped unread."""
    held = [fd]

    def close() -> None:
        if held[0] >= 0:
            os.close(held[0])
            held[0] = -1

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while True:
                data = await in_file_thread(os.read, held[0], CHUNK)
                if not data:
                    return
                yield data
        finally:
            close()

    generator = chunks()
    weakref.finalize(generator, close)
    return generator


@instance_route("GET", "/{name}/files")
async def get_file(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    path = container_path(request.query.get("path", ""))
    rootfs = _rootfs(ctx, name)
    try:
        entry = await in_file_thread(look_up, rootfs, path, True)
    except OSError as exc:
        return _file_error(path, exc)
    lifecycle(ctx, "instance-file-retrieved", name, path=path)
    if entry.kind == "directory":
        return sync(entry.entries, headers=entry.headers())
    headers = [*entry.headers(), ("Content-Disposition", f"inline;filename={_filename(path)}")]
    if entry.kind == "symlink":
        return Response(200, entry.target.encode(), headers,
                        content_type="application/octet-stream")
    return Response(200, _stream(entry.fd), headers, content_type="application/octet-stream")


@instance_route("HEAD", "/{name}/files")
async def head_file(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    path = container_path(request.query.get("path", ""))
    rootfs = _rootfs(ctx, name)
    try:
        entry = await in_file_thread(look_up, rootfs, path, False)
    except OSError as exc:
        return _file_error(path, exc)
    return Response(200, b"", entry.headers(), content_type="application/octet-stream")


@instance_route("POST", "/{name}/files")
async def post_file(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    path = container_path(request.query.get("path", ""))
    wanted = FileHeaders.of(request)
    rootfs = _rootfs(ctx, name)
    if path == "/":
        return error(400, "/: cannot replace the root directory")
    try:
        if wanted.type == "directory":
            changed = await in_file_thread(make_directory, rootfs, path, wanted.mode,
                                           wanted.uid, wanted.gid)
        elif wanted.type == "symlink":
            target = (await request.body(MAX_LINK_TARGET)).decode("utf-8", "surrogateescape")
            if not target or "\0" in target:
                return error(400, f"{path}: invalid symbolic link target")
            changed = await in_file_thread(make_symlink, rootfs, path, target, wanted.uid,
                                           wanted.gid)
        else:
            await _push(rootfs, path, wanted, request)
            changed = True
    except OSError as exc:
        return _file_error(path, exc)
    if changed:
        lifecycle(ctx, "instance-file-pushed", name, path=path)
    return sync(None)


async def _push(rootfs: Path, path: str, wanted: FileHeaders, request: Request) -> None:
    """Write the request's body to the file, a MiB per worker-thread trip; a file this push
    created is removed again if the transfer fails."""
    fd, created = await in_file_thread(open_for_write, rootfs, path,
                                       wanted.write == "append", wanted.mode, wanted.uid,
                                       wanted.gid)
    try:
        pending = bytearray()
        async for chunk in request.chunks():
            pending += chunk
            if len(pending) >= CHUNK:
                await in_file_thread(write_all, fd, bytes(pending))
                pending.clear()
        if pending:
            await in_file_thread(write_all, fd, bytes(pending))
    except BaseException:
        if created:
            with trio.CancelScope(shield=True), contextlib.suppress(OSError):
                await in_file_thread(remove_created, rootfs, path)
        raise
    finally:
        os.close(fd)


@instance_route("DELETE", "/{name}/files")
async def delete_file(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    path = container_path(request.query.get("path", ""))
    rootfs = _rootfs(ctx, name)
    if path == "/":
        return error(400, "/: the root directory cannot be removed")
    try:
        await in_file_thread(remove_entry, rootfs, path)
    except OSError as exc:
        return _file_error(path, exc)
    lifecycle(ctx, "instance-file-deleted", name, path=path)
    return sync(None)

