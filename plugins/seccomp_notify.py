"""The C ABI of liblxc's seccomp notify proxy, and the kernel facts the handlers need.

liblxc's monitor forwards each seccomp notification of a container to the proxy socket as one
SOCK_SEQPACKET message (``seccomp_notify_handler`` in liblxc's ``src/lxc/seccomp.c``)::

    struct seccomp_notify_proxy_msg   32 bytes: u64 reserved, i32 monitor_pid, i32 init_pid,
                                      struct seccomp_notif_sizes (3 x u16), u64 cookie_len
    struct seccomp_notif              sizes.seccomp_notif bytes (80 on 5.x/6.x kernels)
    struct seccomp_notif_resp         sizes.seccomp_notif_resp bytes (24)
    cookie                            cookie_len bytes (``lxc.seccomp.notify.cookie``), no NUL

with three fds (SCM_RIGHTS): the caller's ``/proc/PID`` directory, its ``/proc/PID/mem`` and
the notify fd. The answer is the same message without the cookie, with the response filled
in; it must be exactly header + notif + resp long, or the monitor answers ENOSYS itself.
Everything here is pure (no I/O but the two ``seccomp``/``ioctl`` calls at the end) so that it
can be tested without a kernel.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import struct
from dataclasses import dataclass

#: struct seccomp_notify_proxy_msg (natural alignment: 6 bytes of sizes, 2 of padding)
HEADER = struct.Struct("=QiiHHH2xQ")
#: the start of struct seccomp_notif: id, pid, flags, then struct seccomp_data
NOTIF = struct.Struct("=QIIiIQ6Q")
#: struct seccomp_notif_resp: id, val, error, flags
RESP = struct.Struct("=QqiI")
#: sizeof(struct seccomp_data): nr, arch, instruction_pointer, args[6]
SECCOMP_DATA_SIZE = 64

#: liblxc sends at most this: header, a kernel's structs and a cookie (an instance name)
MAX_MESSAGE = 64 * 1024
#: the fds that come with every message: /proc/PID, /proc/PID/mem, the notify fd
FDS_PER_MESSAGE = 3

SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_GET_NOTIF_SIZES = 3
#: _IOW('!', 2, __u64)
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x40082102

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCH_ARM = 0x40000028
#: x32 system calls come with AUDIT_ARCH_X86_64 and this bit set in the number
X32_SYSCALL_BIT = 0x40000000

#: (arch, number) -> the system calls the proxy handles
SYSCALLS: dict[tuple[int, int], str] = {}
for _arch, _numbers in (
    (AUDIT_ARCH_X86_64, {"mknod": 133, "mknodat": 259, "setxattr": 188, "sysinfo": 99}),
    (AUDIT_ARCH_I386, {"mknod": 14, "mknodat": 297, "setxattr": 226, "sysinfo": 116}),
    (AUDIT_ARCH_AARCH64, {"mknodat": 33, "setxattr": 5, "sysinfo": 179}),
    (AUDIT_ARCH_ARM, {"mknod": 14, "mknodat": 324, "setxattr": 226, "sysinfo": 116}),
):
    for _name, _nr in _numbers.items():
        SYSCALLS[(_arch, _nr)] = _name
        if _arch == AUDIT_ARCH_X86_64:
            SYSCALLS[(_arch, _nr | X32_SYSCALL_BIT)] = _name

#: arches whose ``long`` is 32 bits (their struct sysinfo is the compat one)
ARCHES_32BIT = {AUDIT_ARCH_I386, AUDIT_ARCH_ARM}

#: struct sysinfo where long is 64 bits (x86_64, x32, aarch64): 112 bytes
SYSINFO_64 = struct.Struct("=q3Q6QHH4xQQI4x")
#: struct sysinfo where long is 32 bits (i386, arm): 64 bytes
SYSINFO_32 = struct.Struct("=i3I6IHHIII8x")

#: the seccomp(2) system call on the host's native arch
_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277, "i686": 354, "armv7l": 383, "ppc64le": 358,
                "ppc64": 358, "s390x": 348, "riscv64": 277}


class MalformedMessage(ValueError):
    """A message that is not what liblxc sends; it is answered without being handled."""


@dataclass(frozen=True)
class Sizes:
    """struct seccomp_notif_sizes."""

    notif: int
    resp: int
    data: int


#: what this module's structs describe (the minimum a message must carry)
KNOWN_SIZES = Sizes(NOTIF.size, RESP.size, SECCOMP_DATA_SIZE)


@dataclass(frozen=True)
class Notification:
    """One forwarded notification: the proxy header, the kernel's request, the cookie."""

    monitor_pid: int
    init_pid: int
    sizes: Sizes
    id: int
    pid: int
    flags: int
    nr: int
    arch: int
    args: tuple[int, ...]
    cookie: bytes
    #: the header and the seccomp_notif as received, echoed in the answer
    raw_head: bytes

    @property
    def syscall(self) -> str | None:
        """``mknod``, ``mknodat``, ``setxattr``, ``sysinfo``, or None for any other call."""
        return SYSCALLS.get((self.arch, self.nr))

    @property
    def is_32bit(self) -> bool:
        return self.arch in ARCHES_32BIT

    def answer(self, error: int = 0, val: int = 0, flags: int = 0) -> bytes:
        """The reply to send back: ``error`` is a positive errno (0 for success)."""
        resp = RESP.pack(self.id, val, -error, flags)
        return self.raw_head + resp.ljust(self.sizes.resp, b"\0")

    def answer_continue(self) -> bytes:
        """Let the kernel run the system call as if it had not been intercepted."""
        return self.answer(flags=SECCOMP_USER_NOTIF_FLAG_CONTINUE)


def parse_message(data: bytes, kernel_sizes: Sizes | None = None) -> Notification:
    """Decode one proxy message; raise ``MalformedMessage`` saying what is wrong."""
    if len(data) < HEADER.size:
        raise MalformedMessage(f"message of {len(data)} bytes is shorter than its header")
    reserved, monitor_pid, init_pid, n_notif, n_resp, n_data, cookie_len = \
        HEADER.unpack_from(data)
    if reserved != 0:
        raise MalformedMessage("the reserved field is not zero")
    sizes = Sizes(n_notif, n_resp, n_data)
    if kernel_sizes is not None and sizes != kernel_sizes:
        raise MalformedMessage(f"struct sizes {sizes} differ from the kernel's {kernel_sizes}")
    if n_notif < NOTIF.size or n_resp < RESP.size or n_data < SECCOMP_DATA_SIZE:
        raise MalformedMessage(f"struct sizes {sizes} are smaller than seccomp's "
                               f"{KNOWN_SIZES}")
    head = HEADER.size + n_notif
    expected = head + n_resp + cookie_len
    if len(data) != expected:
        raise MalformedMessage(f"message of {len(data)} bytes, expected {expected} "
                               f"(sizes {sizes}, cookie of {cookie_len})")
    nid, pid, flags, nr, arch, _ip, *args = NOTIF.unpack_from(data, HEADER.size)
    return Notification(
        monitor_pid=monitor_pid, init_pid=init_pid, sizes=sizes, id=nid, pid=pid, flags=flags,
        nr=nr, arch=arch, args=tuple(args), cookie=bytes(data[head + n_resp:]),
        raw_head=bytes(data[:head]))


def build_message(*, id: int, pid: int, nr: int, arch: int, args: tuple[int, ...] = (),
                  monitor_pid: int = 0, init_pid: int = 0, cookie: bytes = b"",
                  sizes: Sizes = KNOWN_SIZES) -> bytes:
    """A message as liblxc's monitor sends it (for tests and tools)."""
    full_args = (tuple(args) + (0,) * 6)[:6]
    header = HEADER.pack(0, monitor_pid, init_pid, sizes.notif, sizes.resp, sizes.data,
                         len(cookie))
    notif = NOTIF.pack(id, pid, 0, nr, arch, 0, *full_args).ljust(sizes.notif, b"\0")
    return header + notif + bytes(sizes.resp) + cookie


def parse_answer(data: bytes, sizes: Sizes = KNOWN_SIZES) -> tuple[int, int, int, int]:
    """(id, val, error, flags) of an answer (for tests)."""
    return RESP.unpack_from(data, HEADER.size + sizes.notif)


# --- arguments -----------------------------------------------------------------------------

S_IFMT = 0o170000
AT_FDCWD = -100


def decode_dev(value: int) -> tuple[int, int]:
    """(major, minor) of the ``unsigned int dev`` mknod takes (the kernel's new_decode_dev)."""
    value &= 0xFFFFFFFF
    return (value & 0xFFF00) >> 8, (value & 0xFF) | ((value >> 12) & 0xFFF00)


def as_int32(value: int) -> int:
    """A register holding an ``int`` (a dirfd such as AT_FDCWD) as a signed number."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


# --- struct sysinfo ------------------------------------------------------------------------


@dataclass
class SysInfo:
    """The fields of struct sysinfo, in bytes (``mem_unit`` 1) unless packed for 32 bits."""

    uptime: int
    loads: tuple[int, int, int]
    totalram: int
    freeram: int
    sharedram: int
    bufferram: int
    totalswap: int
    freeswap: int
    procs: int
    totalhigh: int = 0
    freehigh: int = 0
    mem_unit: int = 1

    def pack(self, compat_32bit: bool = False) -> bytes:
        """The struct as the caller's arch lays it out. For 32-bit callers, memory figures
        that do not fit are expressed in pages (``mem_unit``), as the kernel does."""
        memory = [self.totalram, self.freeram, self.sharedram, self.bufferram,
                  self.totalswap, self.freeswap, self.totalhigh, self.freehigh]
        unit = self.mem_unit
        limit = 0xFFFFFFFF if compat_32bit else 0xFFFFFFFFFFFFFFFF
        while max(v // unit for v in memory) > limit:
            unit *= 2
        ram = [v // unit for v in memory]
        procs = min(self.procs, 0xFFFF)
        loads = [min(v, limit) for v in self.loads]
        fmt = SYSINFO_32 if compat_32bit else SYSINFO_64
        uptime = min(self.uptime, 0x7FFFFFFF if compat_32bit else 0x7FFFFFFFFFFFFFFF)
        return fmt.pack(uptime, *loads, *ram[:6], procs, 0, ram[6], ram[7], unit)

    @classmethod
    def unpack(cls, data: bytes) -> SysInfo:
        (uptime, l1, l2, l3, total, free, shared, buf, tswap, fswap, procs, _pad, thigh,
         fhigh, unit) = SYSINFO_64.unpack_from(data)
        return cls(uptime, (l1, l2, l3), total, free, shared, buf, tswap, fswap, procs,
                   thigh, fhigh, unit)


_libc = ctypes.CDLL(None, use_errno=True)


def host_sysinfo() -> SysInfo:
    """The host's own sysinfo(2)."""
    buf = ctypes.create_string_buffer(SYSINFO_64.size + 64)
    if _libc.sysinfo(buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    info = SysInfo.unpack(buf.raw)
    unit = info.mem_unit or 1
    for field in ("totalram", "freeram", "sharedram", "bufferram", "totalswap", "freeswap",
                  "totalhigh", "freehigh"):
        setattr(info, field, getattr(info, field) * unit)
    info.mem_unit = 1
    return info


# --- kernel calls --------------------------------------------------------------------------


def kernel_notif_sizes() -> Sizes | None:
    """The kernel's struct sizes (``SECCOMP_GET_NOTIF_SIZES``), None if it has no user
    notification (or this arch's seccomp number is unknown here)."""
    nr = _SYS_SECCOMP.get(platform.machine())
    if nr is None:
        return None
    buf = ctypes.create_string_buffer(6)
    if _libc.syscall(nr, SECCOMP_GET_NOTIF_SIZES, 0, buf) != 0:
        return None
    return Sizes(*struct.unpack("=HHH", buf.raw))


def notification_valid(notify_fd: int, notification_id: int) -> bool:
    """Whether the caller still waits in this system call (``SECCOMP_IOCTL_NOTIF_ID_VALID``):
    false once it was killed or its pid reused."""
    try:
        fcntl.ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_ID_VALID, struct.pack("=Q", notification_id))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True
