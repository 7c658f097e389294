"""The FUSE side: maps the kernel's requests (pyfuse3) onto the node tree in ``lxfs.nodes``.

Inodes are allocated per path and dropped when the kernel forgets them. Every handler is
guarded: an ``LxfsError`` or ``OSError`` becomes its errno, anything else EIO and a log line,
so that no input can bring the filesystem down. Handlers run concurrently (pyfuse3 tasks);
slow work is done by the server in worker threads, so a long operation on one file never blocks
the others.

Host files (root filesystems, volumes, image exports) are passed through, and every system call
on them that may wait for a disk runs in a worker thread under a limiter of its own
(``HOST_IO_THREADS``): a slow disk holds up the requests on its files only, and cannot take the
threads the server's operations need. Reads try the page cache first without waiting
(``preadv2(RWF_NOWAIT)``, on the event loop: a thread trip costs about 100 µs here, as much as
the read), and go to a thread when the data is not there. The inode tables, the handles and
``creating`` are only touched on the event loop; a handle's fd is closed once no thread uses it.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyfuse3
import trio

from lxfs.errors import InvalidArgument, LxfsError, NotFound, PermissionDenied
from lxfs.nodes import Dir, File, HostFile, Link, Node, StaticDir, Upload, root
from lxfs.server import Server

log = logging.getLogger("lxfs.fs")
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

Path_ = tuple[str, ...]
TIMEOUT = 1.0
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR


def guarded(fn: F) -> F:
    """No exception but FUSEError leaves a handler."""

    @functools.wraps(fn)
    async def wrapper(*args: Any) -> Any:
        try:
            return await fn(*args)
        except pyfuse3.FUSEError:
            raise
        except LxfsError as exc:
            log.debug("%s: %s", fn.__name__, exc.message)
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s%r", fn.__name__, args[1:3])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


@dataclass
class Handle:
    node: Node
    path: Path_
    pid: int = 0
    fd: int = -1
    data: bytes | None = None
    buffer: bytearray = field(default_factory=bytearray)
    upload_path: Path | None = None
    uploaded: bool = False
    events: Any = None
    pending: bytes = b""


def _fatal_signal_pending(pid: int) -> bool:
    """Whether process ``pid`` is gone or about to die (SIGKILL pending)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("ShdPnd:", "SigPnd:")) and int(line.split()[1], 16) & (
                        1 << (9 - 1)):
                    return True
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return True
    return False


class LxfsOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, server: Server) -> None:
        super().__init__()
        self.srv = server
        #: group of the virtual files and directories (the access group, or root's)
        self.gid = server.access_gid
        self.root = root(server)
        self.path_of: dict[int, Path_] = {pyfuse3.ROOT_INODE: ()}
        self.ino_of: dict[Path_, int] = {(): pyfuse3.ROOT_INODE}
        self.lookups: dict[int, int] = {}
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.handles: dict[int, Handle] = {}
        self.next_fh = 1
        #: paths of files created with O_CREAT and not yet written (they exist meanwhile)
        self.creating: dict[Path_, Node] = {}
        self.started = trio.current_time() if False else 0.0
        import time

        self.mount_time = time.time()
        server.on_change = self._on_change

    # --- inodes ---------------------------------------------------------------------------

    def _ino(self, path: Path_) -> int:
        ino = self.ino_of.get(path)
        if ino is None:
            ino = self.next_ino
            self.next_ino += 1
            self.ino_of[path] = ino
            self.path_of[ino] = path
        return ino

    def _path(self, ino: int) -> Path_:
        try:
            return self.path_of[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    async def resolve(self, path: Path_) -> Node:
        node: Node = self.root
        for i, name in enumerate(path):
            if isinstance(node, HostFile):
                child: Node | None = node.child(name)
            elif isinstance(node, Dir):
                child = await node.child(name)
            else:
                child = None
            if child is None:
                child = self.creating.get(path[:i + 1])
            if child is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            node = child
        return node

    async def _parent_dir(self, ino: int) -> tuple[Path_, Node]:
        path = self._path(ino)
        return path, await self.resolve(path)

    def _attrs(self, node: Node, ino: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        e.st_blksize = 4096
        if isinstance(node, HostFile):
            st = os.lstat(node.path)
            e.st_mode = st.st_mode
            if node.readonly:
                e.st_mode &= ~0o222
            e.st_nlink = st.st_nlink
            e.st_uid, e.st_gid = st.st_uid, st.st_gid
            e.st_rdev = st.st_rdev
            e.st_size = st.st_size
            if node.root is not None and stat.S_ISLNK(st.st_mode):
                e.st_size = len(os.fsencode(node.link_target()))
            e.st_blocks = st.st_blocks
            e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = (st.st_atime_ns, st.st_mtime_ns,
                                                           st.st_ctime_ns)
            if node.private:
                e.st_mode &= ~0o077
                e.st_uid = e.st_gid = 0
            return e
        # Virtual nodes: root's, and the access group's (rw for both, nothing for others),
        # except private ones; the kernel enforces it (default_permissions).
        ts = int(self.mount_time * 1e9)
        if isinstance(node, Dir):
            e.st_mode = stat.S_IFDIR | 0o770
            e.st_nlink = 2
            if node.mtime:
                ts = int(node.mtime * 1e9)
        elif isinstance(node, Link):
            e.st_mode = stat.S_IFLNK | 0o777
            e.st_nlink = 1
            e.st_size = len(node.target)
        elif isinstance(node, File):
            e.st_mode = stat.S_IFREG | node.mode & 0o700 | (node.mode & 0o700) >> 3
            e.st_nlink = 1
            e.st_size = 0 if node.dynamic else 4096
        else:  # Upload in progress
            e.st_mode = stat.S_IFREG | 0o660
            e.st_nlink = 1
        e.st_uid = 0
        e.st_gid = self.gid
        if node.private:
            e.st_mode &= ~0o077
            e.st_gid = 0
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = ts
        return e

    async def _entry(self, path: Path_) -> pyfuse3.EntryAttributes:
        node = await self.resolve(path)
        ino = self._ino(path)
        attrs = self._attrs(node, ino)
        self.lookups[ino] = self.lookups.get(ino, 0) + 1
        return attrs

    def _on_change(self, kind: str, name: str) -> None:
        """The server changed something behind the kernel's back."""
        if kind == "instance-deleted":
            parent = self.ino_of.get(("instances",))
            if parent is not None:
                try:
                    pyfuse3.invalidate_entry_async(parent, name.encode())
                except Exception:  # noqa: BLE001 - best effort, the cache expires anyway
                    pass

    # --- lookups --------------------------------------------------------------------------

    @guarded
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        path = self._path(parent_inode) + (os.fsdecode(name),)
        return await self._entry(path)

    async def forget(self, inode_list: Any) -> None:
        for ino, count in inode_list:
            left = self.lookups.get(ino, 0) - count
            if left > 0:
                self.lookups[ino] = left
                continue
            self.lookups.pop(ino, None)
            if ino == pyfuse3.ROOT_INODE:
                continue
            path = self.path_of.pop(ino, None)
            if path is not None and self.ino_of.get(path) == ino:
                del self.ino_of[path]

    @guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext
                      ) -> pyfuse3.EntryAttributes:
        return self._attrs(await self.resolve(self._path(inode)), inode)

    @guarded
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = await self.resolve(self._path(inode))
        if isinstance(node, HostFile):
            if node.readonly:
                raise pyfuse3.FUSEError(errno.EROFS)
            p = node.path
            if fields.update_size:
                if fh is not None and fh in self.handles and self.handles[fh].fd >= 0:
                    os.ftruncate(self.handles[fh].fd, attr.st_size)
                else:
                    os.truncate(p, attr.st_size)
            if fields.update_mode and not stat.S_ISLNK(os.lstat(p).st_mode):
                os.chmod(p, stat.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                os.chown(p, attr.st_uid if fields.update_uid else -1,
                         attr.st_gid if fields.update_gid else -1, follow_symlinks=False)
            if fields.update_atime or fields.update_mtime:
                st = os.lstat(p)
                atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
                mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
                os.utime(p, ns=(atime, mtime), follow_symlinks=False)
        elif isinstance(node, (File, Upload)):
            pass  # sizes and times of virtual files are not settable; truncation is implicit
        else:
            raise pyfuse3.FUSEError(errno.EPERM)
        return self._attrs(node, inode)

    @guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = await self.resolve(self._path(inode))
        if isinstance(node, Link):
            return node.target.encode()
        if isinstance(node, HostFile):
            return os.fsencode(node.link_target())
        raise pyfuse3.FUSEError(errno.EINVAL)

    # --- directories ----------------------------------------------------------------------

    @guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = await self.resolve(self._path(inode))
        if isinstance(node, HostFile):
            if not stat.S_ISDIR(os.lstat(node.path).st_mode):
                raise pyfuse3.FUSEError(errno.ENOTDIR)
        elif not isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        path = self._path(fh)
        node = await self.resolve(path)
        if isinstance(node, HostFile):
            names = sorted(os.listdir(node.path))
        else:
            assert isinstance(node, Dir)
            names = await node.list()
        for index in range(start_id, len(names)):
            name = names[index]
            child_path = path + (name,)
            try:
                child = await self.resolve(child_path)
                ino = self._ino(child_path)
                attrs = self._attrs(child, ino)
            except (pyfuse3.FUSEError, OSError, LxfsError):
                continue  # vanished meanwhile
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, index + 1):
                break
            self.lookups[ino] = self.lookups.get(ino, 0) + 1

    async def releasedir(self, fh: int) -> None:
        return None

    @guarded
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path, parent = await self._parent_dir(parent_inode)
        fname = os.fsdecode(name)
        if isinstance(parent, HostFile):
            self._writable(parent)
            os.mkdir(parent.path / fname, mode & 0o7777)
            os.chown(parent.path / fname, ctx.uid, ctx.gid)
        elif isinstance(parent, Dir):
            if await parent.child(fname) is not None:
                raise pyfuse3.FUSEError(errno.EEXIST)
            await parent.mkdir(fname)
        else:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return await self._entry(path + (fname,))

    @guarded
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        _, parent = await self._parent_dir(parent_inode)
        fname = os.fsdecode(name)
        if isinstance(parent, HostFile):
            self._writable(parent)
            os.rmdir(parent.path / fname)
        elif isinstance(parent, Dir):
            if await parent.child(fname) is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            await parent.rmdir(fname)
        else:
            raise pyfuse3.FUSEError(errno.ENOTDIR)

    @guarded
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        _, parent = await self._parent_dir(parent_inode)
        fname = os.fsdecode(name)
        if isinstance(parent, HostFile):
            self._writable(parent)
            os.unlink(parent.path / fname)
        elif isinstance(parent, Dir):
            if await parent.child(fname) is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            await parent.unlink(fname)
        else:
            raise pyfuse3.FUSEError(errno.ENOTDIR)

    @guarded
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path, parent = await self._parent_dir(parent_inode)
        fname = os.fsdecode(name)
        if isinstance(parent, HostFile):
            self._writable(parent)
            os.symlink(target, parent.path / fname)
            os.chown(parent.path / fname, ctx.uid, ctx.gid, follow_symlinks=False)
        elif isinstance(parent, Dir):
            await parent.symlink(fname, os.fsdecode(target))
        else:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return await self._entry(path + (fname,))

    @guarded
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        old_path, old_parent = await self._parent_dir(parent_inode_old)
        new_path, new_parent = await self._parent_dir(parent_inode_new)
        old, new = os.fsdecode(name_old), os.fsdecode(name_new)
        if isinstance(old_parent, HostFile) and isinstance(new_parent, HostFile):
            self._writable(old_parent)
            self._writable(new_parent)
            if flags & pyfuse3.RENAME_NOREPLACE and os.path.lexists(new_parent.path / new):
                raise pyfuse3.FUSEError(errno.EEXIST)
            os.rename(old_parent.path / old, new_parent.path / new)
        elif isinstance(old_parent, Dir) and isinstance(new_parent, Dir):
            if await old_parent.child(old) is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            await old_parent.rename(old, new_parent, new)
        else:
            raise pyfuse3.FUSEError(errno.EXDEV)
        self._move_paths(old_path + (old,), new_path + (new,))

    def _move_paths(self, old: Path_, new: Path_) -> None:
        """Keep the kernel's inodes for a renamed entry and everything under it."""
        n = len(old)
        for path in [p for p in self.ino_of if p[:n] == old]:
            ino = self.ino_of.pop(path)
            moved = new + path[n:]
            stale = self.ino_of.pop(moved, None)
            if stale is not None:
                self.path_of.pop(stale, None)
            self.ino_of[moved] = ino
            self.path_of[ino] = moved

    @staticmethod
    def _writable(node: HostFile) -> None:
        if node.readonly:
            raise pyfuse3.FUSEError(errno.EROFS)

    # --- files ----------------------------------------------------------------------------

    def _new_handle(self, handle: Handle) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = handle
        return fh

    @guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        path = self._path(inode)
        node = await self.resolve(path)
        writing = bool(flags & WRITE_FLAGS)
        if isinstance(node, HostFile):
            if writing:
                self._writable(node)
            fd = os.open(node.path, (flags & ~os.O_CREAT) | os.O_NOFOLLOW)
            return pyfuse3.FileInfo(fh=self._new_handle(Handle(node, path, ctx.pid, fd=fd)))
        if not isinstance(node, File):
            raise pyfuse3.FUSEError(errno.EISDIR if isinstance(node, Dir) else errno.EACCES)
        if writing and not node.mode & 0o200:
            raise PermissionDenied("read-only file")
        if not writing and not node.mode & 0o444:
            raise PermissionDenied("write-only file")
        handle = Handle(node, path, ctx.pid)
        if node.stream:
            handle.events = self.srv.events.subscribe()
        return pyfuse3.FileInfo(fh=self._new_handle(handle), direct_io=True,
                                nonseekable=node.stream)

    @guarded
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path, parent = await self._parent_dir(parent_inode)
        fname = os.fsdecode(name)
        child_path = path + (fname,)
        if isinstance(parent, HostFile):
            self._writable(parent)
            target = parent.path / fname
            fd = os.open(target, flags | os.O_CREAT | os.O_NOFOLLOW, mode & 0o7777)
            os.fchown(fd, ctx.uid, ctx.gid)
            node: Node = HostFile(target, scope=parent.scope, root=parent.root,
                                  view=parent.view)
            handle = Handle(node, child_path, ctx.pid, fd=fd)
            info = pyfuse3.FileInfo(fh=self._new_handle(handle))
        elif isinstance(parent, Dir):
            if await parent.child(fname) is not None:
                raise pyfuse3.FUSEError(errno.EEXIST)
            node = parent.create(fname)
            handle = Handle(node, child_path, ctx.pid)
            if isinstance(node, Upload):
                handle.upload_path = self.srv.new_upload_path()
                handle.fd = os.open(handle.upload_path, os.O_WRONLY | os.O_TRUNC)
            self.creating[child_path] = node
            info = pyfuse3.FileInfo(fh=self._new_handle(handle), direct_io=True)
        else:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return info, await self._entry(child_path)

    @guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self.handles[fh]
        if handle.fd >= 0:
            return os.pread(handle.fd, size, off)
        node = handle.node
        if isinstance(node, File) and node.stream:
            return await self._read_stream(handle, size)
        if not isinstance(node, File):
            raise pyfuse3.FUSEError(errno.EINVAL)
        if handle.data is None or off == 0:
            handle.data = await node.read()
        return handle.data[off:off + size]

    async def _read_stream(self, handle: Handle, size: int) -> bytes:
        while not handle.pending:
            with trio.move_on_after(0.5):
                handle.pending = await handle.events.receive()
                break
            # pyfuse3 has no FUSE interrupts: give up when the reader is gone or killed
            if _fatal_signal_pending(handle.pid):
                raise pyfuse3.FUSEError(errno.EINTR)
        data, handle.pending = handle.pending[:size], handle.pending[size:]
        return data

    @guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.handles[fh]
        if handle.fd >= 0:
            return os.pwrite(handle.fd, buf, off)
        node = handle.node
        if not isinstance(node, File):
            raise pyfuse3.FUSEError(errno.EINVAL)
        if len(handle.buffer) + len(buf) > 1 << 20:
            raise InvalidArgument("values are limited to 1 MiB")
        if off == 0:
            handle.buffer = bytearray(buf)
        else:
            handle.buffer += buf
        await node.write(bytes(handle.buffer) if node.accumulate else buf)
        self.creating.pop(handle.path, None)
        return len(buf)

    @guarded
    async def flush(self, fh: int) -> None:
        handle = self.handles.get(fh)
        if handle is not None and isinstance(handle.node, Upload) and not handle.uploaded:
            await self._finish_upload(handle)

    async def _finish_upload(self, handle: Handle) -> None:
        assert isinstance(handle.node, Upload) and handle.upload_path is not None
        handle.uploaded = True
        self.creating.pop(handle.path, None)
        if handle.fd >= 0:
            os.close(handle.fd)
            handle.fd = -1
        try:
            await self.srv.guarded("", self.srv.import_upload(handle.upload_path,
                                                              handle.node.name))
        except BaseException:
            handle.upload_path.unlink(missing_ok=True)
            raise
        self._invalidate(handle.path)

    def _invalidate(self, path: Path_) -> None:
        parent = self.ino_of.get(path[:-1])
        if parent is not None:
            try:
                pyfuse3.invalidate_entry_async(parent, path[-1].encode())
            except Exception:  # noqa: BLE001
                pass

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        if self.creating.pop(handle.path, None) is not None:
            # created but never written (or its value was refused): the kernel still holds
            # the entry create() returned, so the next create of that name would find it
            self._invalidate(handle.path)
        if isinstance(handle.node, Upload) and not handle.uploaded:
            try:
                await self._finish_upload(handle)
            except Exception as exc:  # noqa: BLE001 - release cannot report errors
                log.error("upload of %s failed: %s", handle.node.name, exc)
        if handle.fd >= 0:
            os.close(handle.fd)
        if handle.events is not None:
            self.srv.events.unsubscribe(handle.events)

    @guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self.handles.get(fh)
        if handle is not None and handle.fd >= 0:
            (os.fdatasync if datasync else os.fsync)(handle.fd)

    @guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.srv.data_dir)
        data = pyfuse3.StatvfsData()
        for attr in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail"):
            setattr(data, attr, getattr(st, attr))
        data.f_namemax = 255
        return data

    @guarded
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = await self.resolve(self._path(inode))
        path, parent = await self._parent_dir(new_parent_inode)
        if not (isinstance(node, HostFile) and isinstance(parent, HostFile)):
            raise pyfuse3.FUSEError(errno.EPERM)
        self._writable(parent)
        os.link(node.path, parent.path / os.fsdecode(new_name), follow_symlinks=False)
        return await self._entry(path + (os.fsdecode(new_name),))

    @guarded
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path, parent = await self._parent_dir(parent_inode)
        if not isinstance(parent, HostFile):
            raise pyfuse3.FUSEError(errno.EPERM)
        self._writable(parent)
        os.mknod(parent.path / os.fsdecode(name), mode, rdev)
        return await self._entry(path + (os.fsdecode(name),))


__all__ = ["LxfsOperations", "NotFound", "StaticDir"]
