"""The FUSE side: maps the kernel's requests (pyfuse3) onto the node tree in ``lxfs.nodes``.

Inodes are allocated per path and dropped when the kernel forgets them. Every handler is
guarded: an ``LxfsError`` or ``OSError`` becomes its errno, anything else EIO and a log line,
so that no input can bring the filesystem down. Handlers run concurrently (pyfuse3 tasks);
slow work is done by the server in worker threads, so a long operation on one file never blocks
the others.

Host files (root filesystems, volumes, image exports) are passed through, and every system call
on them that may wait for a disk runs in a worker thread under a limiter of its own
(``HOST_IO_THREADS``): a slow disk holds up the requests on its files only, and cannot take the
threads the server's operations need. A thread trip costs 100-300 µs here, as much as a
request, so: the mount reads ahead 1 MiB (the kernel's 128 KiB made reads of 128-256 KiB, a
trip each), a directory's entries are stat'ed by the batch, and a lookup or getattr is answered
on the event loop when the kernel's caches hold the whole path and the attributes
(``CachedStat``: it cannot wait for a disk). The inode tables, the handles and ``creating`` are
only touched on the event loop; a handle's fd is closed once no thread uses it.

Virtual files behave as shell tools expect (docs/filesystem.md, "Conventions"): a size is the
length of the value (computed at getattr, the value kept a moment for the read that follows:
``FRESH_FOR``), mtimes are when values and listings changed (``ValueTimes``, brought up to date
after every daemon event, the kernel's cached attributes then dropped), O_TRUNC and truncate
empty or cut a value, and the temporary files of editors and ``sed -i`` are ``Scratch`` files,
private to their process and applied as one write when renamed over a value.

Values are read through the kernel's page cache (``_open_cached``): every open computes the
value and keeps the kernel's pages only while they hold it, so a read never sees a stale
value, whoever changed it; the kernel's listings are not cached (docs/filesystem.md,
"Caching").
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import functools
import json
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pyfuse3
import trio

from lxfs.errors import InvalidArgument, LxfsError, NotFound, PermissionDenied
from lxfs.images.format import WriteDigest
from lxfs.nodes import Dir, File, HostFile, KeyValueDir, Link, Node, StaticDir, Upload, root
from lxfs.server import Server, process_exit

log = logging.getLogger("lxfs.fs")
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
T = TypeVar("T")

Path_ = tuple[str, ...]
TIMEOUT = 1.0
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR
#: worker threads for system calls on host files, apart from the server's (trio's default
#: limiter): as many requests as the kernel sends in the background (12) and some more
HOST_IO_THREADS = 16
#: entries of a host directory stat'ed per worker-thread trip of readdir
READDIR_BATCH = 128
#: readahead of the mount in KiB: the kernel's 128 KiB makes host files read in requests of
#: 128-256 KiB; 1 MiB (libfuse's largest request) needs a quarter of the round trips
READAHEAD_KB = 1024
#: how long a front end waits for the kernel to drop entries it changed behind its back
SETTLE_TIMEOUT = 2.0
#: the largest value (and scratch file)
VALUE_MAX = 1 << 20
#: scratch files one process may hold at a time, and all processes together (at most
#: VALUE_MAX bytes each, in the daemon's memory)
SCRATCH_PER_PROCESS = 64
SCRATCH_MAX = 256
#: a value computed for a getattr serves a read that follows within this many seconds (an
#: ``open()`` stats before it reads: the value is computed once, not twice)
FRESH_FOR = 0.05
#: st_blksize of a file being uploaded into images/ (what cp sizes its writes by)
UPLOAD_BLKSIZE = 1 << 20
#: values and listings whose change times are remembered (beyond that, forgotten)
TIMES_MAX = 100_000
#: the largest value served through the kernel's page cache (larger ones are read directly)
PAGE_CACHED_MAX = 64 * 1024
#: the directories of objects (``instances/NAME``...): an ``rm -r`` of one is refused whole
OBJECT_DIRS = frozenset({"instances", "profiles", "storage-pools", "networks", "projects",
                         "images", "certificates"})
#: seconds after its last refused removal there during which a process removes nothing in
#: that object (its ``rm -r`` goes on at once; a long-lived process is not held for long)
RM_REFUSAL_WINDOW = 5.0


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


class HostStat(NamedTuple):
    """A host file's ``lstat`` as the mount shows it (a symbolic link in a root filesystem has
    the size of its target as the mount shows it)."""

    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result, size: int | None = None) -> HostStat:
        return cls(st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev,
                   st.st_size if size is None else size, st.st_blocks, st.st_atime_ns,
                   st.st_mtime_ns, st.st_ctime_ns)


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
    #: the first write error of an upload (ENOSPC, EIO...): the upload then fails at close
    failed: OSError | None = None
    #: an upload's sha256, hashed as it is written (its fingerprint without a second pass)
    digest: WriteDigest | None = None
    events: Any = None
    pending: bytes = b""
    #: worker threads using ``fd`` now: a release while they run leaves the closing to the
    #: last of them, so that no fd is closed (and its number reused) under a thread
    users: int = 0
    released: bool = False
    #: set when ``users`` drops to 0 (for a flush waiting for the writes in flight)
    idle: trio.Event | None = None
    #: values: written since opened; truncated to 0 (by O_TRUNC or ftruncate) and not
    #: written since: the value is emptied at close
    written: bool = False
    truncated: bool = False
    #: a value read through the kernel's page cache: reads serve ``PageValue`` of this inode
    ino: int = 0
    #: directories: the entries (listed at opendir or rewind), and the last batch of stats
    names: list[str] | None = None
    fresh: bool = False
    batch_start: int = 0
    batch: list[tuple[HostFile, HostStat] | None] = field(default_factory=list)


class Scratch(Node):
    """A new file in a directory of values (the temporary file of ``sed -i``, an editor,
    ``mkstemp``): private to the process that made it (``owner``, a thread group id), kept in
    memory, applied as one validated write when renamed over a value, gone when unlinked or
    when its owner exits."""

    kind = "scratch"

    def __init__(self, owner: int) -> None:
        self.owner = owner
        self.data = bytearray()
        self.mtime_ns = time.time_ns()


@dataclass
class PageValue:
    """The value of a virtual file as the kernel's page cache of its inode has it (or will
    have it once a read is answered): the one its latest open computed."""

    data: bytes
    #: a read was answered with it: the kernel may hold it, an open may keep the cache
    served: bool = False


class ValueTimes:
    """When each virtual value and directory listing last changed: a digest of what it was
    when last seen, and since when. A change is seen when a getattr, lookup or readdir
    computes the node, and right after every daemon event for its object (``touch``); what is
    seen for the first time dates from its object's last event or change through the mount,
    else from the mount's start."""

    def __init__(self) -> None:
        self.start_ns = time.time_ns()
        self.seen: dict[Path_, tuple[int, int]] = {}
        self.touched: dict[Path_, int] = {}

    def stamp(self, path: Path_, content: object) -> int:
        digest = hash(content)
        old = self.seen.get(path)
        if old is not None and old[0] == digest:
            return old[1]
        mtime = time.time_ns() if old is not None else self.known(path)
        if len(self.seen) >= TIMES_MAX:
            self.seen.clear()
        self.seen[path] = (digest, mtime)
        return mtime

    def known(self, path: Path_) -> int:
        old = self.seen.get(path)
        if old is not None:
            return old[1]
        return self.touched.get(path[:2]) or self.touched.get(path[:1], self.start_ns)

    def touch(self, path: Path_) -> None:
        """The object of ``path`` (``instances/NAME``...) changed now."""
        if len(self.touched) >= TIMES_MAX:
            self.touched.clear()
        self.touched[path[:2]] = time.time_ns()


def _tgid(pid: int) -> int:
    """The process (thread group) of a thread id (FUSE requests carry the thread's)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pid


def _event_object(source: str) -> Path_:
    """The mount path of the object an event's ``source`` names (``/1.0/instances/c1/...``
    → ``instances/c1``; ``/1.0`` → ``config``)."""
    parts = [p for p in source.split("/") if p][1:]
    if not parts:
        return ("config",)
    return tuple(parts[:2])


async def _failed_upload(name: str, exc: OSError) -> None:
    """Fail an upload a write error cut short: a truncated file is never imported."""
    raise OSError(exc.errno, f"upload of {name} failed ({exc.strerror}): nothing was imported")


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


# --- blocking work on host files (run in worker threads) ------------------------------------


def _new_entry(parent: HostFile, name: str) -> HostFile:
    """The node of ``name`` in the host directory ``parent``, which need not exist yet."""
    return HostFile(parent.path / name, parent.readonly, parent.scope, parent.root, parent.view)


SYS_OPENAT2 = 437  # the same number on every architecture
RESOLVE_NO_XDEV, RESOLVE_NO_MAGICLINKS, RESOLVE_IN_ROOT = 0x01, 0x02, 0x10
_libc = ctypes.CDLL(None, use_errno=True)


def _openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    fd = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_long(dirfd), os.fsencode(path),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def _confined(node: HostFile, flags: int, target: Path | None = None) -> int:
    """Open ``target`` (default: the node's own path) the way the container that owns it
    would resolve it: inside its root filesystem (``node.root``) symbolic links and ``..``
    never lead out of it, whatever the container swapped in since the kernel looked the
    path up; elsewhere (image files, the daemon's own) as it is."""
    path = node.path if target is None else target
    if node.root is None:
        return os.open(path, flags | os.O_CLOEXEC)
    rel = path.relative_to(node.root)
    root = os.open(node.root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return _openat2(root, str(rel) if rel.parts else ".", flags,
                        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)
    finally:
        os.close(root)


class _At:
    """``with _At(node) as (dirfd, name)``: the node's directory, opened confined, and its
    last component: every operation on a host entry goes through ``*at`` calls on them."""

    def __init__(self, node: HostFile) -> None:
        self.node = node
        self.fd = -1

    def __enter__(self) -> tuple[int, str]:
        path = self.node.path
        at_root = self.node.root is not None and path == self.node.root
        parent = path if at_root else path.parent
        self.fd = _confined(HostFile(parent, root=self.node.root), os.O_PATH | os.O_DIRECTORY)
        return self.fd, "." if at_root else path.name

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def host_stat(node: HostFile) -> HostStat:
    with _At(node) as (fd, name):
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if node.root is not None and stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=fd)
            return HostStat.of(st, len(os.fsencode(node.link_target(target))))
    return HostStat.of(st)


def read_link(node: HostFile) -> str:
    """The link's target as the mount shows it."""
    with _At(node) as (fd, name):
        return node.link_target(os.readlink(name, dir_fd=fd))


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class _StatxTime(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_int64), ("nsec", ctypes.c_uint32), ("reserved", ctypes.c_int32)]

    @property
    def ns(self) -> int:
        return self.sec * 1_000_000_000 + self.nsec


class _Statx(ctypes.Structure):
    _fields_ = [("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32),
                ("attributes", ctypes.c_uint64), ("nlink", ctypes.c_uint32),
                ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32), ("mode", ctypes.c_uint16),
                ("spare0", ctypes.c_uint16), ("ino", ctypes.c_uint64), ("size", ctypes.c_uint64),
                ("blocks", ctypes.c_uint64), ("attributes_mask", ctypes.c_uint64),
                ("atime", _StatxTime), ("btime", _StatxTime), ("ctime", _StatxTime),
                ("mtime", _StatxTime), ("rdev_major", ctypes.c_uint32),
                ("rdev_minor", ctypes.c_uint32), ("dev_major", ctypes.c_uint32),
                ("dev_minor", ctypes.c_uint32), ("spare", ctypes.c_uint64 * 14)]


class CachedStat:
    """``lstat`` from the kernel's caches alone, for the event loop: the path is resolved only
    if every component is in the dentry cache (``openat2`` with RESOLVE_CACHED, Linux 5.12),
    and the attributes are the cached ones (``statx`` with AT_STATX_DONT_SYNC), so it never
    waits for a disk or a server. Calling it gives None when a thread has to stat."""

    SYS_OPENAT2 = 437  # the same number on every architecture
    RESOLVE_CACHED = 0x20
    RESOLVE_NO_SYMLINKS = 0x04
    AT_EMPTY_PATH = 0x1000
    AT_STATX_DONT_SYNC = 0x4000
    STATX_BASIC_STATS = 0x7FF

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._statx = getattr(libc, "statx", None)
        self.enabled = self._statx is not None
        # used on the event loop only, one call at a time
        # no symbolic link on the way (a container may have swapped one in): a thread then
        # resolves the path confined (a trailing link is fine: O_PATH | O_NOFOLLOW)
        self._how = _OpenHow(os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, 0,
                             self.RESOLVE_CACHED | self.RESOLVE_NO_SYMLINKS)
        self._buf = _Statx()

    def __call__(self, node: HostFile) -> HostStat | None:
        if not self.enabled:
            return None
        fd = self._syscall(ctypes.c_long(self.SYS_OPENAT2), ctypes.c_long(-100),  # AT_FDCWD
                           os.fsencode(node.path), ctypes.byref(self._how),
                           ctypes.c_size_t(ctypes.sizeof(self._how)))
        if fd < 0:
            if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.EPERM):
                self.enabled = False  # an older kernel (or a seccomp filter)
            return None  # EAGAIN: not all cached; any other error is for the thread to see
        try:
            if self._statx(fd, b"", self.AT_EMPTY_PATH | self.AT_STATX_DONT_SYNC,
                           self.STATX_BASIC_STATS, ctypes.byref(self._buf)) < 0:
                return None
        finally:
            os.close(fd)
        x = self._buf
        if node.root is not None and stat.S_ISLNK(x.mode):
            return None  # the target has to be read
        return HostStat(x.mode, x.nlink, x.uid, x.gid, os.makedev(x.rdev_major, x.rdev_minor),
                        x.size, x.blocks, x.atime.ns, x.mtime.ns, x.ctime.ns)


def _open_host(node: HostFile, flags: int) -> int:
    """Open a regular host file. The entry is checked through an O_PATH fd and reopened from
    it: the kernel only opens files it saw as regular ones, and if a container has put a FIFO
    or a device node there since, no open may wait for a writer or touch a device."""
    with _At(node) as (fd, name):
        path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    try:
        if not stat.S_ISREG(os.fstat(path_fd).st_mode):
            raise OSError(errno.ENXIO, "not a regular file", str(node.path))
        return os.open(f"/proc/self/fd/{path_fd}",
                       flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW))
    finally:
        os.close(path_fd)


def _create_host(node: HostFile, flags: int, mode: int, uid: int, gid: int
                 ) -> tuple[int, HostStat]:
    with _At(node) as (dirfd, name):
        fd = os.open(name, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o7777,
                     dir_fd=dirfd)
    try:
        os.fchown(fd, uid, gid)
        return fd, HostStat.of(os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise


def _mkdir_host(node: HostFile, mode: int, uid: int, gid: int) -> HostStat:
    with _At(node) as (fd, name):
        os.mkdir(name, mode & 0o7777, dir_fd=fd)
        os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
    return host_stat(node)


def _symlink_host(node: HostFile, target: bytes, uid: int, gid: int) -> HostStat:
    with _At(node) as (fd, name):
        os.symlink(target, name, dir_fd=fd)
        os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
    return host_stat(node)


def _link_host(source: HostFile, node: HostFile) -> HostStat:
    with _At(source) as (sfd, sname), _At(node) as (fd, name):
        os.link(sname, name, src_dir_fd=sfd, dst_dir_fd=fd, follow_symlinks=False)
    return host_stat(node)


def _mknod_host(node: HostFile, mode: int, rdev: int) -> HostStat:
    with _At(node) as (fd, name):
        os.mknod(name, mode, rdev, dir_fd=fd)
    return host_stat(node)


def _rename_host(old: HostFile, new: HostFile, noreplace: bool) -> None:
    with _At(old) as (ofd, oname), _At(new) as (nfd, nname):
        if noreplace:
            try:
                os.stat(nname, dir_fd=nfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                raise FileExistsError(errno.EEXIST, "exists", str(new.path))
        os.rename(oname, nname, src_dir_fd=ofd, dst_dir_fd=nfd)


def _remove_host(node: HostFile, directory: bool) -> None:
    with _At(node) as (fd, name):
        if directory:
            os.rmdir(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)


def _list_host_dir(node: HostFile) -> list[str]:
    try:
        fd = _confined(node, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symbolic link
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(node.path)) \
                from None
        raise
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def _stat_entries(parent: HostFile, names: list[str]
                  ) -> list[tuple[HostFile, HostStat] | None]:
    """The nodes and stats of entries of ``parent`` (None for those gone meanwhile)."""
    found: list[tuple[HostFile, HostStat] | None] = []
    for name in names:
        node = _new_entry(parent, name)
        try:
            found.append((node, host_stat(node)))
        except OSError:
            found.append(None)
    return found


class AttrChange(NamedTuple):
    """What a setattr changes on a host file (None: left as it is)."""

    size: int | None
    mode: int | None
    uid: int
    gid: int
    atime_ns: int | None
    mtime_ns: int | None


def _setattr_host(fd: int, node: HostFile, change: AttrChange) -> HostStat:
    if change.size is not None:
        if fd >= 0:
            os.ftruncate(fd, change.size)
        else:
            own = _open_host(node, os.O_WRONLY)
            try:
                os.ftruncate(own, change.size)
            finally:
                os.close(own)
    with _At(node) as (dirfd, name):
        if change.mode is not None:
            entry = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            try:
                if not stat.S_ISLNK(os.fstat(entry).st_mode):  # links have no mode
                    os.chmod(f"/proc/self/fd/{entry}", change.mode)
            finally:
                os.close(entry)
        if change.uid != -1 or change.gid != -1:
            os.chown(name, change.uid, change.gid, dir_fd=dirfd, follow_symlinks=False)
        if change.atime_ns is not None or change.mtime_ns is not None:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            atime = st.st_atime_ns if change.atime_ns is None else change.atime_ns
            mtime = st.st_mtime_ns if change.mtime_ns is None else change.mtime_ns
            os.utime(name, ns=(atime, mtime), dir_fd=dirfd, follow_symlinks=False)
    return host_stat(node)


def _set_readahead(mount: Path, kib: int) -> None:
    """Set the readahead of the lxfs mount on ``mount`` (through its device's sysfs entry)."""
    point = str(mount)
    for char, escaped in (("\\", "\\134"), (" ", "\\040"), ("\t", "\\011"),
                          ("\n", "\\012")):
        point = point.replace(char, escaped)
    device = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == point and fields[fields.index("-") + 1] == "fuse.lxfs":
                device = fields[2]  # the last one is on top
    if device is None:
        raise FileNotFoundError(errno.ENOENT, "no lxfs mount", point)
    with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as f:
        f.write(f"{kib}\n")


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError as exc:  # release cannot report it; the fd is gone all the same
        log.warning("closing a host file: %s", exc)


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
        #: scratch files, by path; processes whose exit drops theirs (and their rm -r marks)
        self.scratch: dict[Path_, Scratch] = {}
        self.followed: set[int] = set()
        #: (process, object) -> when: that process's ``rm -r`` of the object was refused
        #: then, and it may remove nothing below it (``RM_REFUSAL_WINDOW``)
        self.refused_rm: dict[tuple[int, Path_], float] = {}
        self.times = ValueTimes()
        #: the value a getattr computed last, per path (``FRESH_FOR``)
        self.fresh: dict[Path_, tuple[float, bytes]] = {}
        #: values read through the kernel's page cache, by inode (``_open_cached``), and the
        #: sizes the kernel's cached attributes give them
        self.page_values: dict[int, PageValue] = {}
        self.attr_sizes: dict[int, int] = {}
        #: worker threads of host-file system calls
        self.host_threads = trio.CapacityLimiter(HOST_IO_THREADS)
        self.cached_stat = CachedStat()
        #: the mount's readahead is raised at the first open of a host file (it cannot be
        #: done earlier: the kernel's INIT caps it at 128 KiB)
        self.readahead_set = False
        server.on_change = self._on_change
        server.settle_changes = self.settle_changes
        # a value kept for a read (``FRESH_FOR``) is not served once the daemon announced a
        # change: dropped as the event is emitted, before any reader can hear of it
        server.events.listeners.append(lambda _event: self.fresh.clear())
        #: entries dropped by ``_on_change`` that ``settle_changes`` has not waited for
        self._unsettled: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=1024)
        if server.nursery is not None:
            server.nursery.start_soon(self._follow_events)

    # --- host I/O -------------------------------------------------------------------------

    async def _host(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (blocking work on host files) in a worker thread."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.host_threads)

    async def _stat(self, node: HostFile) -> HostStat:
        """A host file's attributes: from the kernel's caches if they have them all, else
        from a thread."""
        return self.cached_stat(node) or await self._host(host_stat, node)

    async def _with_fd(self, handle: Handle, fn: Callable[..., T], *args: Any) -> T:
        """``fn(handle.fd, *args)`` in a worker thread; the fd stays open until it returns."""
        handle.users += 1
        try:
            return await self._host(fn, handle.fd, *args)
        finally:
            handle.users -= 1
            if not handle.users:
                if handle.idle is not None:
                    handle.idle.set()
                    handle.idle = None
                if handle.released:
                    await self._close_fd(handle)

    async def _idle(self, handle: Handle) -> None:
        """Wait until no worker thread uses the handle's fd."""
        while handle.users:
            if handle.idle is None:
                handle.idle = trio.Event()
            await handle.idle.wait()

    async def _close_fd(self, handle: Handle) -> None:
        """Close the handle's fd (no thread uses it), even when the caller is cancelled."""
        fd, handle.fd = handle.fd, -1
        if fd >= 0:
            with trio.CancelScope(shield=True):
                await self._host(_close_quietly, fd)

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
        """The node at ``path``. Below a host directory nothing is checked (no disk access on
        the event loop): the system call on the entry tells whether it exists."""
        node: Node = self.root
        for i, name in enumerate(path):
            if isinstance(node, HostFile):
                child: Node | None = node.child(name)
            elif isinstance(node, Dir):
                child = await node.child(name)
            else:
                child = None
            if child is None:
                child = self.creating.get(path[:i + 1]) or self.scratch.get(path[:i + 1])
            if child is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            node = child
        return node

    async def _parent_dir(self, ino: int) -> tuple[Path_, Node]:
        path = self._path(ino)
        return path, await self.resolve(path)

    async def _attrs(self, node: Node, ino: int, path: Path_) -> pyfuse3.EntryAttributes:
        if isinstance(node, HostFile):
            return self._host_attrs(node, ino, await self._stat(node))
        return self._virtual_attrs(node, ino, *await self._measure(path, node))

    async def _measure(self, path: Path_, node: Node, keep: bool = True) -> tuple[int, int]:
        """A virtual node's size and mtime (ns), from its current value (a directory: its
        entries). The value is kept a moment for the read that follows (``FRESH_FOR``)."""
        if isinstance(node, Scratch):
            return len(node.data), node.mtime_ns
        if isinstance(node, File):
            if node.stream:
                return 0, self.times.known(path)
            try:
                data = await node.read()
            except (LxfsError, OSError):
                data = b""  # write-only, or gone meanwhile
            if keep:
                if len(self.fresh) >= 256:
                    self.fresh.clear()
                self.fresh[path] = (time.monotonic(), data)
            return len(data), self.times.stamp(path, data)
        if isinstance(node, Dir):
            try:
                names = tuple(await node.list())
            except (LxfsError, OSError):
                names = ()
            return 0, self.times.stamp(path, names)
        return 0, self.times.known(path)

    def _take_fresh(self, path: Path_) -> bytes | None:
        kept = self.fresh.pop(path, None)
        if kept is None or time.monotonic() - kept[0] > FRESH_FOR:
            return None
        return kept[1]

    def _changed(self, path: Path_) -> None:
        """A value or an entry changed through the mount: no kept value is served since."""
        self.fresh.clear()
        self.times.touch(path)

    def _new_attrs(self, ino: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        e.st_blksize = 4096
        return e

    def _host_attrs(self, node: HostFile, ino: int, hs: HostStat) -> pyfuse3.EntryAttributes:
        e = self._new_attrs(ino)
        e.st_mode = hs.mode
        if node.readonly:
            e.st_mode &= ~0o222
        e.st_nlink = hs.nlink
        e.st_uid, e.st_gid = hs.uid, hs.gid
        e.st_rdev = hs.rdev
        e.st_size = hs.size
        e.st_blocks = hs.blocks
        e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = hs.atime_ns, hs.mtime_ns, hs.ctime_ns
        if node.private:
            e.st_mode &= ~0o077
            e.st_uid = e.st_gid = 0
        return e

    def _virtual_attrs(self, node: Node, ino: int, size: int = 0, mtime_ns: int = 0,
                       timeout: float = TIMEOUT) -> pyfuse3.EntryAttributes:
        """Attributes of a virtual node: ``size`` the length of its value, ``mtime_ns`` when
        it last changed (``ValueTimes``); ``timeout`` for the kernel's attribute cache."""
        # Root's, and the access group's (rw for both, nothing for others), except private
        # ones; the kernel enforces it (default_permissions).
        e = self._new_attrs(ino)
        e.attr_timeout = timeout
        ts = mtime_ns or self.times.start_ns
        if isinstance(node, Dir):
            e.st_mode = stat.S_IFDIR | 0o770
            e.st_nlink = 2
        elif isinstance(node, Link):
            e.st_mode = stat.S_IFLNK | 0o777
            e.st_nlink = 1
            e.st_size = len(node.target)
        elif isinstance(node, File):
            e.st_mode = stat.S_IFREG | node.mode & 0o700 | (node.mode & 0o700) >> 3
            e.st_nlink = 1
            e.st_size = size
            if timeout > 0:
                self.attr_sizes[ino] = size
            else:
                self.attr_sizes.pop(ino, None)
        elif isinstance(node, Scratch):  # its owner's alone: never cached by the kernel
            e.st_mode = stat.S_IFREG | 0o660
            e.st_nlink = 1
            e.st_size = len(node.data)
            e.entry_timeout = e.attr_timeout = 0
        else:  # Upload in progress
            e.st_mode = stat.S_IFREG | 0o660
            e.st_nlink = 1
            # cp sizes its buffer from the target's st_blksize: large writes, each one FUSE
            # request (the kernel's max_write is 1 MiB), copy an image a third faster
            e.st_blksize = UPLOAD_BLKSIZE
        e.st_uid = 0
        e.st_gid = self.gid
        if node.private:
            e.st_mode &= ~0o077
            e.st_gid = 0
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = ts
        return e

    async def _entry(self, path: Path_) -> pyfuse3.EntryAttributes:
        node = await self.resolve(path)
        if isinstance(node, HostFile):
            return self._host_entry(path, node, await self._stat(node))
        measured = await self._measure(path, node)
        ino = self._ino(path)
        self.lookups[ino] = self.lookups.get(ino, 0) + 1
        return self._virtual_attrs(node, ino, *measured)

    def _host_entry(self, path: Path_, node: HostFile, hs: HostStat
                    ) -> pyfuse3.EntryAttributes:
        """A looked-up host entry: its inode (counted) and attributes, from a stat made in a
        thread; the inode tables change here, on the event loop, in one step."""
        ino = self._ino(path)
        self.lookups[ino] = self.lookups.get(ino, 0) + 1
        return self._host_attrs(node, ino, hs)

    def _on_change(self, kind: str, name: str) -> None:
        """The server changed something behind the kernel's back (the REST bridge...): the
        kernel forgets the entry now rather than when its cache expires (queued to
        pyfuse3's notify thread; ``settle_changes`` waits for it)."""
        where = {"instance-deleted": ("instances",), "image-deleted": ("images",),
                 "alias-deleted": ("images", "aliases")}.get(kind)
        if kind == "entry-deleted":  # any entry, by its path: ``profiles/web/devices/eth1``
            *parent_path, name = name.split("/")
            where = tuple(parent_path)
        if where is not None:
            parent = self.ino_of.get(where)
            if parent is not None:
                self._unsettled.append((parent, name.encode()))
                try:
                    pyfuse3.invalidate_entry_async(parent, name.encode(), ignore_enoent=True)
                except Exception:  # noqa: BLE001 - best effort, the cache expires anyway
                    pass

    async def settle_changes(self) -> None:
        """Return once the kernel has dropped the entries ``_on_change`` named, so that a
        client told "deleted" finds the mount agreeing. The kernel may wait for requests
        on the same directory, which the event loop serves meanwhile: hence a thread (at
        most ``SETTLE_TIMEOUT`` seconds; the queued drop still happens after that)."""
        if not self._unsettled:
            return
        entries = list(self._unsettled)
        self._unsettled.clear()

        def drop() -> None:
            for parent, name in entries:
                with contextlib.suppress(OSError):
                    pyfuse3.invalidate_entry(parent, name)

        with trio.move_on_after(SETTLE_TIMEOUT):
            await trio.to_thread.run_sync(drop, abandon_on_cancel=True)

    async def _follow_events(self) -> None:
        """A task of the daemon's nursery: after each event, the values and listings of its
        object that have been seen are computed again, so that their mtimes are those of the
        change (a state transition, an instance stopping by itself...) and the kernel drops
        the attributes it holds of those that changed."""
        events = self.srv.events.subscribe()
        try:
            for name in list(self.srv.instances):
                try:
                    await self._restamp(("instances", name, "state"))
                except Exception:  # noqa: BLE001 - the mount's times are best effort
                    log.exception("while noting the state of %s", name)
            async for line in events:
                try:
                    source = json.loads(line).get("metadata", {}).get("source")
                    if isinstance(source, str):
                        await self._object_changed(_event_object(source))
                except Exception:  # noqa: BLE001 - the mount's times are best effort
                    log.exception("while following an event")
        finally:
            self.srv.events.unsubscribe(events)

    async def _object_changed(self, obj: Path_) -> None:
        self.fresh.clear()
        self.times.touch(obj)
        n = len(obj)
        paths = [p for p in self.times.seen if p[:n] == obj]
        if obj[:1] == ("instances",) and n == 2:
            paths.append(obj + ("state",))  # seen from its creation on: exact mtimes
        changed = [ino for path in [obj[:-1], *paths] if (ino := await self._restamp(path))]
        if changed:
            def drop() -> None:
                for ino in changed:
                    with contextlib.suppress(Exception):  # (and any cached pages)
                        pyfuse3.invalidate_inode(ino)

            await trio.to_thread.run_sync(drop)

    async def _restamp(self, path: Path_) -> int | None:
        """Compute a virtual node again; its inode if the kernel holds it and it changed."""
        before = self.times.seen.get(path)
        try:
            node = await self.resolve(path)
        except pyfuse3.FUSEError:
            self.times.seen.pop(path, None)
            return None
        if isinstance(node, HostFile):
            return None
        await self._measure(path, node, keep=False)
        if self.times.seen.get(path) == before:
            return None
        return self.ino_of.get(path)

    # --- scratch files and refused rm -r -----------------------------------------------------

    async def _takes_scratch(self, parent: Dir) -> bool:
        """Whether ``parent``, where files cannot be created, holds values that can be
        written (a new file made with O_EXCL there is then a scratch file; in ``config/``,
        one whose name is not a key)."""
        for entry in await parent.list():
            child = await parent.child(entry)
            if isinstance(child, File) and child.mode & 0o200 and not child.stream:
                return True
        return False

    def _follow_owner(self, owner: int) -> None:
        """Drop what ``owner`` leaves (scratch files, rm -r refusals) when it exits."""
        if owner in self.followed or self.srv.nursery is None:
            return
        self.followed.add(owner)
        self.srv.nursery.start_soon(self._reap_owner, owner)

    async def _reap_owner(self, owner: int) -> None:
        try:
            await process_exit(owner)
        finally:
            self.followed.discard(owner)
            for path, scratch in list(self.scratch.items()):
                if scratch.owner == owner:
                    del self.scratch[path]
                    self._invalidate(path)
            self.refused_rm = {r: t for r, t in self.refused_rm.items() if r[0] != owner}

    def _visible(self, path: Path_, ctx: pyfuse3.RequestContext) -> None:
        """A scratch file exists for its owner only."""
        scratch = self.scratch.get(path)
        if scratch is not None and scratch.owner != _tgid(ctx.pid):
            raise pyfuse3.FUSEError(errno.ENOENT)

    def _check_rm(self, path: Path_, ctx: pyfuse3.RequestContext) -> None:
        """After a process's removal of a fixed entry of an object's directory was refused
        (an ``rm -r`` of an instance, a profile...), it removes nothing below it: no key
        unset, no device removed, no file of a root filesystem deleted one by one."""
        if not self.refused_rm or len(path) < 2:
            return
        key = (_tgid(ctx.pid), path[:2])
        now = time.monotonic()
        refused = self.refused_rm.get(key)
        if refused is not None and now - refused < RM_REFUSAL_WINDOW:
            self.refused_rm[key] = now
            raise PermissionDenied(f"{'/'.join(path[:2])} is removed by rmdir, not entry by "
                                   "entry: this rm -r removed nothing")

    def _refused_rm(self, path: Path_, exc: LxfsError, ctx: pyfuse3.RequestContext) -> None:
        if len(path) == 3 and path[0] in OBJECT_DIRS and isinstance(exc, PermissionDenied):
            owner = _tgid(ctx.pid)
            self.refused_rm[owner, path[:2]] = time.monotonic()
            self._follow_owner(owner)
            self.srv.set_error(path[1] if path[0] == "instances" else "",
                               f"cannot remove {'/'.join(path)}: {path[0]}/{path[1]} is "
                               f"removed by rmdir {path[0]}/{path[1]}, not by rm -r: "
                               "nothing was removed")

    async def _create_scratch(self, path: Path_, ctx: pyfuse3.RequestContext
                              ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        owner = _tgid(ctx.pid)
        if len(self.scratch) >= SCRATCH_MAX or sum(
                s.owner == owner for s in self.scratch.values()) >= SCRATCH_PER_PROCESS:
            raise pyfuse3.FUSEError(errno.ENOSPC)
        scratch = Scratch(owner)
        self.scratch[path] = scratch
        self._follow_owner(owner)
        info = pyfuse3.FileInfo(fh=self._new_handle(Handle(scratch, path, ctx.pid)),
                                direct_io=True)
        return info, await self._entry(path)

    async def _apply_scratch(self, scratch: Scratch, parent: Dir, path: Path_) -> None:
        """Rename of a scratch file over ``path``: its content is one write of that value
        (a key that does not exist yet is created)."""
        target = await parent.child(path[-1])
        if isinstance(target, Dir):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if isinstance(target, Scratch) or (target is None and path in self.scratch):
            self.scratch[path] = scratch
            return
        if target is None:
            target = parent.create(path[-1])
        if not isinstance(target, File) or isinstance(target, Upload):
            raise pyfuse3.FUSEError(errno.EPERM)
        if not target.mode & 0o200:
            raise self._denied(parent, path, "read-only file")
        self._changed(path)
        await target.write(bytes(scratch.data))
        if target.accumulate and not scratch.data.rstrip(b"\n"):
            self._invalidate(path)  # emptied: the key is unset

    def _denied(self, parent: Dir, path: Path_, why: str) -> LxfsError:
        exc = PermissionDenied(f"{'/'.join(path)}: {why}")
        self.srv.set_error(parent.scope, exc.message)
        return exc

    # --- lookups --------------------------------------------------------------------------

    @guarded
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        path = self._path(parent_inode) + (os.fsdecode(name),)
        if self.scratch:
            self._visible(path, ctx)
        return await self._entry(path)

    async def forget(self, inode_list: Any) -> None:
        for ino, count in inode_list:
            left = self.lookups.get(ino, 0) - count
            if left > 0:
                self.lookups[ino] = left
                continue
            self.lookups.pop(ino, None)
            self.page_values.pop(ino, None)
            self.attr_sizes.pop(ino, None)
            if ino == pyfuse3.ROOT_INODE:
                continue
            path = self.path_of.pop(ino, None)
            if path is not None and self.ino_of.get(path) == ino:
                del self.ino_of[path]

    @guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext
                      ) -> pyfuse3.EntryAttributes:
        path = self._path(inode)
        return await self._attrs(await self.resolve(path), inode, path)

    @guarded
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = await self.resolve(self._path(inode))
        if isinstance(node, HostFile):
            if node.readonly:
                raise pyfuse3.FUSEError(errno.EROFS)
            change = AttrChange(
                size=attr.st_size if fields.update_size else None,
                mode=stat.S_IMODE(attr.st_mode) if fields.update_mode else None,
                uid=attr.st_uid if fields.update_uid else -1,
                gid=attr.st_gid if fields.update_gid else -1,
                atime_ns=attr.st_atime_ns if fields.update_atime else None,
                mtime_ns=attr.st_mtime_ns if fields.update_mtime else None)
            handle = self.handles.get(fh) if fh is not None else None
            if change.size is not None and handle is not None and handle.fd >= 0:
                hs = await self._with_fd(handle, _setattr_host, node, change)
            else:
                hs = await self._host(_setattr_host, -1, node, change)
            return self._host_attrs(node, inode, hs)
        path = self._path(inode)
        if fields.update_size and isinstance(node, (File, Scratch)):
            await self._truncate(path, node, attr.st_size, fh)
        # modes, owners and times of virtual nodes are lxfs's: setting them (tar, rsync -a,
        # cp -p, touch) succeeds and changes nothing
        return await self._attrs(node, inode, path)

    async def _truncate(self, path: Path_, node: Node, size: int, fh: int | None) -> None:
        """``truncate``, ``ftruncate``, O_TRUNC: a value cut to ``size``. To 0 through an
        open file (O_TRUNC, ``truncate -s 0``), the value is emptied at close unless written
        meanwhile (an empty value unsets a key, or is refused where one is required)."""
        if size > VALUE_MAX:
            raise pyfuse3.FUSEError(errno.EFBIG)
        if isinstance(node, Scratch):
            del node.data[size:]
            node.data.extend(bytes(size - len(node.data)))
            node.mtime_ns = time.time_ns()
            return
        if not isinstance(node, File) or node.stream:
            raise pyfuse3.FUSEError(errno.EINVAL)
        handle = self.handles.get(fh) if fh is not None else None
        if size == 0 and handle is not None and handle.path == path and isinstance(
                handle.node, File):
            handle.truncated, handle.written = True, False
            handle.buffer = bytearray()
            return
        value = b"" if size == 0 else await node.read()
        await self._write_value(path, node, value[:size].ljust(size, b"\0"))

    async def _write_value(self, path: Path_, node: File, data: bytes) -> None:
        """One whole write of a value (a truncate, an emptied O_TRUNC)."""
        self._changed(path)
        await node.write(data)
        if node.accumulate and not data.rstrip(b"\n"):
            await self._drop_entry(path)  # an empty value unsets a key: see write()

    @guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = await self.resolve(self._path(inode))
        if isinstance(node, Link):
            return node.target.encode()
        if isinstance(node, HostFile):
            return os.fsencode(await self._host(read_link, node))
        raise pyfuse3.FUSEError(errno.EINVAL)

    # --- directories ----------------------------------------------------------------------

    @guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        path = self._path(inode)
        self._check_rm(path, ctx)
        node = await self.resolve(path)
        handle = Handle(node, path, ctx.pid)
        if isinstance(node, HostFile):
            # listed now: the listing checks that it is a directory (and readdir follows)
            handle.names = await self._host(_list_host_dir, node)
            handle.fresh = True
        elif not isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return self._new_handle(handle)

    @guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self.handles[fh]
        node, path = handle.node, handle.path
        if handle.names is None or (start_id == 0 and not handle.fresh):  # opened or rewound
            if isinstance(node, HostFile):
                handle.names = await self._host(_list_host_dir, node)
            else:
                assert isinstance(node, Dir)
                handle.names = await node.list()
                if self.scratch:  # the reader's own scratch files
                    owner = _tgid(handle.pid)
                    handle.names += [p[-1] for p, s in self.scratch.items()
                                     if p[:-1] == path and s.owner == owner]
            handle.batch = []
        handle.fresh = False
        names = handle.names
        for index in range(start_id, len(names)):
            name = names[index]
            child_path = path + (name,)
            if isinstance(node, HostFile):
                found = await self._host_dir_entry(handle, node, index)
                if found is None:
                    continue  # vanished meanwhile
                ino = self._ino(child_path)
                attrs = self._host_attrs(found[0], ino, found[1])
            else:
                assert isinstance(node, Dir)
                try:
                    child = (await node.child(name) or self.creating.get(child_path)
                             or self.scratch.get(child_path))
                except (pyfuse3.FUSEError, OSError, LxfsError):
                    continue
                if child is None:
                    continue  # vanished meanwhile
                if isinstance(child, HostFile):  # (rootfs/, export): its own attributes
                    try:
                        hs = await self._stat(child)
                    except OSError:
                        continue
                    ino = self._ino(child_path)
                    if not pyfuse3.readdir_reply(token, os.fsencode(name),
                                                 self._host_attrs(child, ino, hs), index + 1):
                        break
                    self.lookups[ino] = self.lookups.get(ino, 0) + 1
                    continue
                if isinstance(child, File) and (child.dynamic or child.stream):
                    # computed at the getattr that follows, if any (not for a plain ls)
                    measured = (0, self.times.known(child_path), 0.0)
                elif isinstance(child, (File, Scratch)):
                    measured = (*await self._measure(child_path, child, keep=False), TIMEOUT)
                else:  # a directory's entries are listed at its own getattr
                    measured = (0, self.times.known(child_path), TIMEOUT)
                ino = self._ino(child_path)
                attrs = self._virtual_attrs(child, ino, *measured)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, index + 1):
                break
            self.lookups[ino] = self.lookups.get(ino, 0) + 1

    async def _host_dir_entry(self, handle: Handle, node: HostFile, index: int
                              ) -> tuple[HostFile, HostStat] | None:
        """Entry ``index`` of a listed host directory, stat'ed in batches: one thread trip
        for the next READDIR_BATCH entries."""
        offset = index - handle.batch_start
        if not 0 <= offset < len(handle.batch):
            assert handle.names is not None
            names = handle.names[index:index + READDIR_BATCH]
            handle.batch = await self._host(_stat_entries, node, names)
            handle.batch_start, offset = index, 0
        return handle.batch[offset]

    async def releasedir(self, fh: int) -> None:
        self.handles.pop(fh, None)

    @guarded
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path, parent = await self._parent_dir(parent_inode)
        fname = os.fsdecode(name)
        if isinstance(parent, HostFile):
            self._writable(parent)
            node = _new_entry(parent, fname)
            hs = await self._host(_mkdir_host, node, mode, ctx.uid, ctx.gid)
            return self._host_entry(path + (fname,), node, hs)
        if not isinstance(parent, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if await parent.child(fname) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        await parent.mkdir(fname)
        return await self._entry(path + (fname,))

    @guarded
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path, parent = await self._parent_dir(parent_inode)
        fname = os.fsdecode(name)
        self._check_rm(path + (fname,), ctx)
        if isinstance(parent, HostFile):
            self._writable(parent)
            await self._host(_remove_host, _new_entry(parent, fname), True)
        elif isinstance(parent, Dir):
            if await parent.child(fname) is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            self._changed(path + (fname,))
            try:
                await parent.rmdir(fname)
            except LxfsError as exc:
                self._refused_rm(path + (fname,), exc, ctx)
                raise
        else:
            raise pyfuse3.FUSEError(errno.ENOTDIR)

    @guarded
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path, parent = await self._parent_dir(parent_inode)
        fname = os.fsdecode(name)
        child_path = path + (fname,)
        self._check_rm(child_path, ctx)
        if isinstance(parent, HostFile):
            self._writable(parent)
            await self._host(_remove_host, _new_entry(parent, fname), False)
        elif child_path in self.scratch:
            self._visible(child_path, ctx)
            del self.scratch[child_path]
        elif isinstance(parent, Dir):
            if await parent.child(fname) is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            self._changed(child_path)
            try:
                await parent.unlink(fname)
            except LxfsError as exc:
                self._refused_rm(child_path, exc, ctx)
                raise
        else:
            raise pyfuse3.FUSEError(errno.ENOTDIR)

    @guarded
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path, parent = await self._parent_dir(parent_inode)
        fname = os.fsdecode(name)
        if isinstance(parent, HostFile):
            self._writable(parent)
            node = _new_entry(parent, fname)
            hs = await self._host(_symlink_host, node, target, ctx.uid, ctx.gid)
            return self._host_entry(path + (fname,), node, hs)
        if not isinstance(parent, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        await parent.symlink(fname, os.fsdecode(target))
        return await self._entry(path + (fname,))

    @guarded
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        old_path, old_parent = await self._parent_dir(parent_inode_old)
        new_path, new_parent = await self._parent_dir(parent_inode_new)
        old, new = os.fsdecode(name_old), os.fsdecode(name_new)
        self._check_rm(old_path + (old,), ctx)
        self._check_rm(new_path + (new,), ctx)
        scratch = self.scratch.get(old_path + (old,))
        if scratch is not None:
            self._visible(old_path + (old,), ctx)
            if not isinstance(new_parent, Dir):
                raise pyfuse3.FUSEError(errno.EXDEV)
            if flags & pyfuse3.RENAME_EXCHANGE:  # a value cannot become a scratch file
                raise pyfuse3.FUSEError(errno.EINVAL)
            if flags & pyfuse3.RENAME_NOREPLACE and (
                    await new_parent.child(new) is not None or new_path + (new,) in self.scratch):
                raise pyfuse3.FUSEError(errno.EEXIST)
            await self._apply_scratch(scratch, new_parent, new_path + (new,))
            if self.scratch.get(old_path + (old,)) is scratch:
                del self.scratch[old_path + (old,)]
        elif isinstance(old_parent, HostFile) and isinstance(new_parent, HostFile):
            self._writable(old_parent)
            self._writable(new_parent)
            await self._host(_rename_host, _new_entry(old_parent, old),
                             _new_entry(new_parent, new),
                             bool(flags & pyfuse3.RENAME_NOREPLACE))
        elif isinstance(old_parent, Dir) and isinstance(new_parent, Dir):
            if await old_parent.child(old) is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            self._changed(old_path + (old,))
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
        writing = bool(flags & WRITE_FLAGS)
        try:
            node = await self.resolve(path)
        except pyfuse3.FUSEError as exc:
            node = await self._recreate(path, exc) if writing else None
            if node is None:
                raise
        if isinstance(node, HostFile):
            if writing:
                self._writable(node)
            if not self.readahead_set:
                self.readahead_set = True
                try:
                    await self._host(_set_readahead, self.srv.mount, READAHEAD_KB)
                except OSError as exc:
                    log.info("readahead of the mount left as it is: %s", exc)
            fd = await self._host(_open_host, node, flags)
            return pyfuse3.FileInfo(fh=self._new_handle(Handle(node, path, ctx.pid, fd=fd)))
        if isinstance(node, Scratch):
            return pyfuse3.FileInfo(fh=self._new_handle(Handle(node, path, ctx.pid)),
                                    direct_io=True)
        if not isinstance(node, File):
            raise pyfuse3.FUSEError(errno.EISDIR if isinstance(node, Dir) else errno.EACCES)
        if writing and not node.mode & 0o200:
            raise PermissionDenied("read-only file")
        if not writing and not node.mode & 0o444:
            raise PermissionDenied("write-only file")
        handle = Handle(node, path, ctx.pid)
        if not writing and not node.stream and not getattr(node, "verbatim", False):
            cached = await self._open_cached(inode, node, handle)
            if cached is not None:
                return cached
        handle.truncated = writing and bool(flags & os.O_TRUNC)  # (FUSE's atomic O_TRUNC)
        if node.stream:
            handle.events = self.srv.events.subscribe(getattr(node, "project", None))
        return pyfuse3.FileInfo(fh=self._new_handle(handle), direct_io=True,
                                nonseekable=node.stream)

    async def _open_cached(self, inode: int, node: File, handle: Handle
                           ) -> pyfuse3.FileInfo | None:
        """A read-only open of a value, read through the kernel's page cache. The value is
        computed now: if it is the one the kernel's pages hold, they are kept (reads never
        reach the daemon); else the kernel drops them at this open, and first its cached
        attributes if their size is no longer the value's (a read stops at that size).
        Every open sees the current value, whoever changed it, whether or not an event said
        so. None: too large a value for the cache (read directly)."""
        # computed again even after a getattr's (``FRESH_FOR``): a value can change with no
        # announcement (an ``error`` file), and what a getattr after the last open kept
        # would serve the next open (a lookup then open of ``usage/disk`` computes it twice)
        value = await node.read()
        if len(value) > PAGE_CACHED_MAX:
            handle.data = value
            return None
        kept = self.page_values.get(inode)
        keep = kept is not None and kept.served and kept.data == value
        if not keep:
            self.page_values[inode] = PageValue(value)
        size = self.attr_sizes.get(inode)
        if size is not None and size != len(value):
            self.attr_sizes.pop(inode, None)
            self._drop_attrs(inode)
        handle.ino = inode
        return pyfuse3.FileInfo(fh=self._new_handle(handle), keep_cache=keep)

    @staticmethod
    def _drop_attrs(inode: int) -> None:
        """Make the kernel forget an inode's cached attributes, at once. Only attributes:
        the kernel then waits for no page lock nor request (pyfuse3's reason to call an
        invalidation from a thread is dirty pages of a writeback cache, which lxfs has not),
        so no thread trip is needed."""
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_inode(inode, attr_only=True)

    async def _recreate(self, path: Path_, exc: pyfuse3.FUSEError) -> Node | None:
        """A write-open of a name the kernel still holds but lxfs dropped (a refused or
        emptied value, a create never written: the kernel's entry goes asynchronously) is a
        create again, as the writer's O_CREAT meant; None where that cannot be."""
        if exc.errno != errno.ENOENT or not path:
            return None
        try:
            parent = await self.resolve(path[:-1])
        except pyfuse3.FUSEError:
            return None
        if not isinstance(parent, Dir):
            return None
        try:
            created = parent.create(path[-1])
        except LxfsError:
            return None
        if not isinstance(created, File) or isinstance(created, Upload):
            return None
        self.creating[path] = created
        return created

    @guarded
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path, parent = await self._parent_dir(parent_inode)
        fname = os.fsdecode(name)
        child_path = path + (fname,)
        if isinstance(parent, HostFile):
            self._writable(parent)
            node = _new_entry(parent, fname)
            fd, hs = await self._host(_create_host, node, flags, mode, ctx.uid, ctx.gid)
            info = pyfuse3.FileInfo(fh=self._new_handle(Handle(node, child_path, ctx.pid,
                                                               fd=fd)))
            return info, self._host_entry(child_path, node, hs)
        if not isinstance(parent, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if await parent.child(fname) is not None or child_path in self.scratch:
            raise pyfuse3.FUSEError(errno.EEXIST)
        try:
            if flags & os.O_EXCL and isinstance(parent, KeyValueDir) and not parent.is_key(
                    fname) and parent.set_key is not None:
                return await self._create_scratch(child_path, ctx)
            created = parent.create(fname)
        except PermissionDenied:
            if not (flags & os.O_EXCL and await self._takes_scratch(parent)):
                raise
            return await self._create_scratch(child_path, ctx)
        handle = Handle(created, child_path, ctx.pid)
        if isinstance(created, Upload):
            handle.upload_path = self.srv.new_upload_path()
            handle.fd = os.open(handle.upload_path, os.O_WRONLY | os.O_TRUNC)
            handle.digest = WriteDigest()
        self.creating[child_path] = created
        info = pyfuse3.FileInfo(fh=self._new_handle(handle), direct_io=True)
        return info, await self._entry(child_path)

    @guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self.handles[fh]
        if handle.fd >= 0:
            return await self._with_fd(handle, os.pread, size, off)
        node = handle.node
        if isinstance(node, Scratch):
            return bytes(node.data[off:off + size])
        if isinstance(node, File) and node.stream:
            return await self._read_stream(handle, size)
        if not isinstance(node, File):
            raise pyfuse3.FUSEError(errno.EINVAL)
        if handle.ino:  # through the page cache: the value of the latest open of the inode
            page = self.page_values.get(handle.ino)
            if page is None:  # (forgotten meanwhile)
                page = self.page_values[handle.ino] = PageValue(await node.read())
            page.served = True
            return page.data[off:off + size]
        # read again from the start, and past the end of a value that grows (tail -f log)
        if handle.data is None or off == 0 or (node.dynamic and off >= len(handle.data)):
            fresh = self._take_fresh(handle.path)
            handle.data = await node.read() if fresh is None else fresh
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
            try:
                if handle.digest is not None:
                    return await self._with_fd(handle, handle.digest.pwrite, buf, off)
                return await self._with_fd(handle, os.pwrite, buf, off)
            except OSError as exc:
                if isinstance(handle.node, Upload) and handle.failed is None:
                    handle.failed = exc
                raise
        node = handle.node
        if isinstance(node, Scratch):
            if off + len(buf) > VALUE_MAX:
                raise pyfuse3.FUSEError(errno.EFBIG)
            node.data.extend(bytes(max(0, off - len(node.data))))
            node.data[off:off + len(buf)] = buf
            node.mtime_ns = time.time_ns()
            return len(buf)
        if not isinstance(node, File):
            raise pyfuse3.FUSEError(errno.EINVAL)
        if len(handle.buffer) + len(buf) > VALUE_MAX:
            raise InvalidArgument("values are limited to 1 MiB")
        if off == 0:
            handle.buffer = bytearray(buf)
        elif not handle.written and not handle.truncated and node.accumulate and (
                node.mode & 0o444):  # the first write lands inside the value (O_APPEND)
            handle.buffer = bytearray((await node.read())[:off].ljust(off, b"\0")) + buf
        else:
            handle.buffer += buf
        handle.written, handle.truncated = True, False
        self._changed(handle.path)
        try:
            await node.write(bytes(handle.buffer) if node.accumulate else buf)
        except Exception:
            if self.creating.pop(handle.path, None) is not None:
                # refused: the new name is free again, before the writer hears of it (a
                # retry's open would otherwise still meet the entry create() made: ENOENT)
                await self._drop_entry(handle.path)
            raise
        except BaseException:
            if self.creating.pop(handle.path, None) is not None:
                self._invalidate(handle.path)
            raise
        self.creating.pop(handle.path, None)
        if node.accumulate and not handle.buffer.rstrip(b"\n"):
            # an empty value unsets a key: the kernel forgets its entry before the writer
            # goes on (its cached attributes are dropped too, so a write-open of the name
            # at once would meet ENOENT at the permission check instead of creating it)
            await self._drop_entry(handle.path)
        return len(buf)

    @guarded
    async def flush(self, fh: int) -> None:
        handle = self.handles.get(fh)
        if handle is not None and handle.truncated and isinstance(handle.node, File):
            handle.truncated = False  # emptied and not written: an empty value
            await self._write_value(handle.path, handle.node, b"")
        if handle is not None and isinstance(handle.node, Upload) and not handle.uploaded:
            await self._finish_upload(handle)

    async def _finish_upload(self, handle: Handle) -> None:
        assert isinstance(handle.node, Upload) and handle.upload_path is not None
        handle.uploaded = True
        self.creating.pop(handle.path, None)
        await self._idle(handle)  # a close() racing a write() of another thread
        if handle.failed is None and handle.fd >= 0:
            try:  # a write-back error (EIO, a late ENOSPC) shows here, not at close
                await self._with_fd(handle, os.fdatasync)
            except OSError as exc:
                handle.failed = exc
        await self._close_fd(handle)
        try:
            if handle.failed is not None:
                await self.srv.guarded("", _failed_upload(handle.node.name, handle.failed))
            if handle.digest is not None:
                handle.digest.remember(handle.upload_path)
            await self.srv.guarded("", handle.node.importer(handle.upload_path,
                                                            handle.node.name))
        except BaseException:
            handle.upload_path.unlink(missing_ok=True)
            self._invalidate(handle.path)  # a refused upload's name is free again at once
            raise
        self._invalidate(handle.path)

    async def _drop_entry(self, path: Path_) -> None:
        """Make the kernel forget an entry and wait until it has (in a thread: the kernel
        may first wait for requests on the directory, which the event loop serves)."""
        parent = self.ino_of.get(path[:-1])
        if parent is None:
            return

        def drop() -> None:
            with contextlib.suppress(OSError):
                pyfuse3.invalidate_entry(parent, path[-1].encode())

        with trio.move_on_after(SETTLE_TIMEOUT):
            await trio.to_thread.run_sync(drop, abandon_on_cancel=True)

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
        handle.released = True
        if handle.events is not None:
            self.srv.events.unsubscribe(handle.events)
        if self.creating.pop(handle.path, None) is not None:
            # created but never written (or its value was refused): the kernel still holds
            # the entry create() returned, so the next create of that name would find it
            self._invalidate(handle.path)
        if isinstance(handle.node, Upload) and not handle.uploaded:
            try:
                await self._finish_upload(handle)
            except Exception as exc:  # noqa: BLE001 - release cannot report errors
                log.error("upload of %s failed: %s", handle.node.name, exc)
        if not handle.users:  # else the last thread using the fd closes it
            await self._close_fd(handle)

    @guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self.handles.get(fh)
        if handle is not None and handle.fd >= 0:
            await self._with_fd(handle, os.fdatasync if datasync else os.fsync)

    @guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = await self._host(os.statvfs, self.srv.data_dir)
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
        fname = os.fsdecode(new_name)
        entry = _new_entry(parent, fname)
        hs = await self._host(_link_host, node, entry)
        return self._host_entry(path + (fname,), entry, hs)

    @guarded
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path, parent = await self._parent_dir(parent_inode)
        if not isinstance(parent, HostFile):
            raise pyfuse3.FUSEError(errno.EPERM)
        self._writable(parent)
        fname = os.fsdecode(name)
        entry = _new_entry(parent, fname)
        hs = await self._host(_mknod_host, entry, mode, rdev)
        return self._host_entry(path + (fname,), entry, hs)


__all__ = ["LxfsOperations", "NotFound", "StaticDir"]
