"""Hot-plugging bind mounts into a running container with the new mount API.

Run as its own single-threaded process (``python -m lxfs_plugins.hotplug``), because joining
another mount namespace (``setns``) is refused to multi-threaded processes::

    attach PID SOURCE TARGET [ro] [idmap]   # clone SOURCE here, move it to TARGET there
    detach PID TARGET                        # lazily unmount TARGET in the container

The source is cloned in the host's namespace (``open_tree``), made read-only and/or idmapped
into the container's user namespace (``mount_setattr``), and then moved, from inside the
container's mount namespace, onto TARGET (``move_mount``), which must exist (the caller makes
it in the root filesystem as stored).
"""

from __future__ import annotations

import ctypes
import os
import sys

# the same numbers on every architecture for these (newer) system calls
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC, AT_RECURSIVE = 1, 0o2000000, 0x8000
AT_EMPTY_PATH, AT_FDCWD = 0x1000, -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_IDMAP = 0x1, 0x100000
CLONE_NEWNS = 0x20000
MNT_DETACH = 2

libc = ctypes.CDLL(None, use_errno=True)


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def setns(fd: int, nstype: int) -> None:
    _check(libc.setns(fd, nstype), "setns")


def attach(pid: int, source: str, target: str, readonly: bool, idmap: bool) -> None:
    tree = _check(libc.syscall(SYS_OPEN_TREE, AT_FDCWD, source.encode(),
                               OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE), "open_tree")
    attr = MountAttr()
    userns = -1
    if readonly:
        attr.attr_set |= MOUNT_ATTR_RDONLY
    if idmap:
        userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        attr.attr_set |= MOUNT_ATTR_IDMAP
        attr.userns_fd = userns
    if attr.attr_set:
        _check(libc.syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                            ctypes.byref(attr), ctypes.sizeof(attr)), "mount_setattr")
    mntns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    setns(mntns, CLONE_NEWNS)
    os.chdir("/")
    _check(libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, target.encode(),
                        MOVE_MOUNT_F_EMPTY_PATH), "move_mount")
    if userns >= 0:
        os.close(userns)


def detach(pid: int, target: str) -> None:
    mntns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    setns(mntns, CLONE_NEWNS)
    _check(libc.umount2(target.encode(), MNT_DETACH), "umount")


def main(argv: list[str]) -> int:
    try:
        if argv[0] == "attach":
            flags = set(argv[4:])
            attach(int(argv[1]), argv[2], argv[3], "ro" in flags, "idmap" in flags)
        elif argv[0] == "detach":
            detach(int(argv[1]), argv[2])
        else:
            raise ValueError(f"unknown command {argv[0]!r}")
    except (OSError, ValueError, IndexError) as exc:
        print(f"hotplug: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
