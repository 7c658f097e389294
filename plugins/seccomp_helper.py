"""Run one intercepted system call as the calling container process would see it.

A short-lived helper of the seccomp proxy (``plugins/seccomp_proxy.py``), run as
``python -I -S seccomp_helper.py OP ARGS...`` with the caller's ``/proc/PID`` directory fd
inherited. It uses the standard library only. It enters the caller's root with ``chroot``
(the root fd comes from ``/proc/PID/root``, so path lookups follow the container's own mounts
and can never leave them: ``..`` stops at that root, absolute symlinks start from it) and its
cwd (or the dirfd the caller passed), so that paths resolve exactly as for the caller. Nothing
is imported after the chroot: the import system is cut off from the filesystem first, so that
files of the container are never executed.

Operations (paths are bytes, as the caller passed them):

``mknod PROC_FD DIRFD PATH MODE MAJOR MINOR FSUID FSGID GROUPS UMASK``
    DIRFD is ``cwd`` or the caller's fd number (mknodat). Creates the node with the caller's
    host fsuid/fsgid, supplementary groups (comma-separated) and umask, holding CAP_MKNOD
    alone: the root filesystem is an idmapped mount, where host root (unmapped) cannot create
    anything, and the caller's own permissions on the directory apply.
``setxattr PROC_FD DIRFD PATH NAME VALUE_HEX FLAGS``
    Sets the attribute as host root (``trusted.*`` needs CAP_SYS_ADMIN on the host), following
    symlinks like setxattr(2). The target is opened with O_PATH, never opened for reading
    (which could start a watchdog or block on a FIFO).

Exit status: 0, or the errno the system call gets; ``INTERNAL_FAILURE`` (with a message on
stderr) when the helper itself failed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys

INTERNAL_FAILURE = 254
CAP_MKNOD = 27
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def set_fs_ids(fsuid: int, fsgid: int) -> None:
    """setfsgid/setfsuid, verified (they report failure only by not changing anything)."""
    _libc.setfsgid(fsgid)
    if _libc.setfsgid(-1) != fsgid:
        raise PermissionError(errno.EPERM, f"setfsgid({fsgid}) refused")
    _libc.setfsuid(fsuid)
    if _libc.setfsuid(-1) != fsuid:
        raise PermissionError(errno.EPERM, f"setfsuid({fsuid}) refused")


def set_effective_caps(*caps: int) -> None:
    """Make exactly ``caps`` effective (they stay in the permitted set after setfsuid)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data))
    data[0].effective = data[1].effective = 0
    for cap in caps:
        data[cap // 32].effective |= 1 << (cap % 32)
    _check(_libc.capset(ctypes.byref(header), data))


def _open_start(proc_fd: int, dirfd: str) -> int:
    """The directory a relative path starts from: the caller's cwd or its dirfd."""
    name = "cwd" if dirfd == "cwd" else f"fd/{int(dirfd)}"
    try:
        fd = os.open(name, os.O_PATH | os.O_CLOEXEC, dir_fd=proc_fd)
    except FileNotFoundError:
        raise OSError(errno.EBADF, "bad dirfd") from None
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "dirfd is not a directory")
    return fd


def _seal_imports() -> None:
    """No import may read a file from now on (the root is about to be the container's)."""
    sys.path[:] = []
    sys.path_hooks[:] = []
    sys.path_importer_cache.clear()
    sys.meta_path[:] = [m for m in sys.meta_path
                        if getattr(m, "__name__", "") in ("BuiltinImporter", "FrozenImporter")]


def enter_caller_root(proc_fd: int, dirfd: str, path: bytes) -> None:
    """chroot into the caller's root and chdir to where ``path`` starts."""
    root = os.open("root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=proc_fd)
    start = _open_start(proc_fd, dirfd) if not path.startswith(b"/") else root
    _seal_imports()
    os.fchdir(root)
    os.chroot(".")
    os.fchdir(start)


def mknod(argv: list[str]) -> None:
    proc_fd, dirfd, path = int(argv[0]), argv[1], os.fsencode(argv[2])
    mode, major, minor, fsuid, fsgid = (int(a) for a in argv[3:8])
    groups = [int(g) for g in argv[8].split(",") if g]
    umask = int(argv[9])
    enter_caller_root(proc_fd, dirfd, path)
    os.umask(umask)
    os.setgroups(groups)
    set_fs_ids(fsuid, fsgid)
    set_effective_caps(CAP_MKNOD)
    parent = os.path.dirname(path.rstrip(b"/")) or b"."
    if os.statvfs(parent).f_flag & os.ST_NODEV:
        raise PermissionError(errno.EPERM, "the filesystem is mounted nodev")
    os.mknod(path, mode, os.makedev(major, minor))


def setxattr(argv: list[str]) -> None:
    proc_fd, dirfd, path = int(argv[0]), argv[1], os.fsencode(argv[2])
    name, value, flags = os.fsencode(argv[3]), bytes.fromhex(argv[4]), int(argv[5])
    # our own fd directory on the host's procfs: /proc/self/fd/N reaches the target after
    # the chroot, where /proc is the container's
    own_fds = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    enter_caller_root(proc_fd, dirfd, path)
    target = os.open(path, os.O_PATH | os.O_CLOEXEC)
    os.fchdir(own_fds)
    os.setxattr(str(target), name, value, flags)


def main(argv: list[str]) -> int:
    try:
        op = {"mknod": mknod, "setxattr": setxattr}[argv[0]]
        op(argv[1:])
    except OSError as exc:
        if exc.errno and 0 < exc.errno < INTERNAL_FAILURE:
            return exc.errno
        os.write(2, f"{exc!r}\n".encode(errors="replace"))
        return INTERNAL_FAILURE
    except BaseException as exc:  # nothing may print a traceback here
        os.write(2, f"{type(exc).__name__}: {exc}\n".encode(errors="replace"))
        return INTERNAL_FAILURE
    return 0


if __name__ == "__main__":
    os._exit(main(sys.argv[1:]))
