"""The seccomp notify proxy: a trio service of the daemon that answers intercepted system calls.

Containers with ``security.syscalls.intercept.*`` run under a policy whose ``notify`` rules
hand those calls to their LXC monitor, which forwards each one here (``lxc.seccomp.notify.proxy
= unix:DATA_DIR/seccomp.socket``; the ABI is in ``seccomp_notify.py``). The monitor connects
when the container starts and waits (30 s at most) for the answer of each message before it
reads the next notification, so one connection is served by one task, a message at a time.

- ``mknod``/``mknodat``: the character devices LXD allows (whiteout 0:0, 1:3 null, 1:5 zero,
  1:7 full, 1:8 random, 1:9 urandom, 5:0 tty, 5:1 console) are made by a short-lived helper
  (``seccomp_helper.py``) in the caller's root and cwd, with its fsuid/fsgid, groups and umask
  and no capability but CAP_MKNOD, for a caller with CAP_MKNOD in the container's user
  namespace; anything else gets EPERM.
- ``setxattr``: ``trusted.overlay.opaque`` = ``y`` (LXD's rule; the policy only notifies
  1-byte values) is set as host root for a caller with CAP_SYS_ADMIN in the container's user
  namespace (not in one it made itself), EPERM for others; any other attribute goes on to the
  kernel (``SECCOMP_USER_NOTIF_FLAG_CONTINUE``).
- ``sysinfo``: the container's uptime, memory limit and usage, swap and task count, with the
  host's loads, written into the caller's memory.

Blocking work runs in worker threads or the helper process; a malformed message gets an empty
answer (the monitor then answers ENOSYS at once) and a log line, a failing handler its
fallback answer. When the daemon is down the monitor cannot connect and answers ENOSYS itself;
it reconnects at the next notification.
"""

from __future__ import annotations

import array
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import trio
from lxfs_plugins.seccomp_notify import (
    AT_FDCWD,
    FDS_PER_MESSAGE,
    MAX_MESSAGE,
    S_IFMT,
    MalformedMessage,
    Notification,
    SysInfo,
    as_int32,
    decode_dev,
    host_sysinfo,
    kernel_notif_sizes,
    notification_valid,
    parse_message,
)

from lxfs.api import Host, cgroup_layout
from lxfs.errors import LxfsError, NotSupported
from lxfs.model import Instance

log = logging.getLogger("lxfs.seccomp")

HELPER = Path(__file__).with_name("seccomp_helper.py")
#: the helper's exit status when it failed itself (see seccomp_helper.py)
HELPER_FAILURE = 254
#: the monitor waits 30 s for an answer; a late one would be taken for the next call's
HANDLER_TIMEOUT = 10.0

#: character devices a container may create with mknod interception (LXD's list)
ALLOWED_DEVICES = frozenset({(0, 0), (1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1)})
OPAQUE_XATTR = b"trusted.overlay.opaque"
PATH_MAX = 4096
XATTR_NAME_MAX = 255
CAP_SYS_ADMIN = 21
CAP_MKNOD = 27
CGROUP_ROOT = Path("/sys/fs/cgroup")
SUN_PATH_MAX = 107


def socket_path(host: Host) -> Path:
    return host.data_dir / "seccomp.socket"


# --- the caller ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """What the kernel checks for the calling thread (host ids), from /proc/PID/status."""

    fsuid: int
    fsgid: int
    groups: tuple[int, ...]
    umask: int
    capabilities: int

    def can(self, capability: int) -> bool:
        return bool(self.capabilities >> capability & 1)


def parse_status(text: str) -> Caller:
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        return Caller(fsuid=int(fields["Uid"].split()[3]), fsgid=int(fields["Gid"].split()[3]),
                      groups=tuple(int(g) for g in fields.get("Groups", "").split()),
                      umask=int(fields.get("Umask", "0022").strip(), 8),
                      capabilities=int(fields["CapEff"].strip(), 16))
    except (KeyError, IndexError, ValueError) as exc:
        raise OSError(errno.ESRCH, f"unreadable process status ({exc!r})") from None


def read_caller(proc_fd: int) -> Caller:
    fd = os.open("status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    with open(fd, closefd=True) as f:
        return parse_status(f.read())


def in_container_userns(proc_fd: int, init_pid: int) -> bool:
    """Whether the caller is in its container's own user namespace (not one it made: a
    process is root in a user namespace it creates, which must not count)."""
    caller = os.stat("ns/user", dir_fd=proc_fd)
    container = os.stat(f"/proc/{init_pid}/ns/user")
    return (caller.st_dev, caller.st_ino) == (container.st_dev, container.st_ino)


def read_memory(mem_fd: int, address: int, size: int) -> bytes:
    """``size`` bytes of the caller's memory (fewer where its mapping ends)."""
    try:
        return os.pread(mem_fd, size, address)
    except (OSError, OverflowError):
        raise OSError(errno.EFAULT, "bad address") from None


def read_string(mem_fd: int, address: int, limit: int) -> bytes:
    """A NUL-terminated string of the caller's memory, at most ``limit`` bytes with the NUL."""
    data = read_memory(mem_fd, address, limit)
    end = data.find(b"\0")
    if end < 0:
        raise OSError(errno.ENAMETOOLONG if len(data) >= limit else errno.EFAULT,
                      "unterminated string")
    return data[:end]


# --- sysinfo for a container ---------------------------------------------------------------


def cgroup_paths(init_pid: int) -> dict[str, str]:
    """controller (``""`` for cgroup v2) -> the init's cgroup; systemd's ``init.scope`` is
    taken as its parent, the container's cgroup."""
    paths: dict[str, str] = {}
    for line in Path(f"/proc/{init_pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        path = path.removesuffix("/init.scope")
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return sys.maxsize
    try:
        return int(text)
    except ValueError:
        return None


def _effective_limit(base: Path, leaf: str, name: str) -> int | None:
    """The smallest ``name`` from ``leaf`` up to the hierarchy's root (limits nest)."""
    values = []
    parts = [p for p in leaf.split("/") if p]
    for depth in range(len(parts), -1, -1):
        value = _read_int(base.joinpath(*parts[:depth], name))
        if value is not None:
            values.append(value)
    return min(values) if values else None


def _stat_value(path: Path, *keys: str) -> int:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    stats = dict(line.split(None, 1) for line in lines if " " in line)
    for key in keys:
        if key in stats:
            return int(stats[key])
    return 0


def container_sysinfo(init_pid: int, machine: SysInfo | None = None) -> SysInfo:
    """sysinfo(2) as the container should see it: uptime since its init started, its memory
    limit as total RAM (limit minus usage free), swap from its memory+swap limit, the tasks
    of its pids cgroup; the host's loads, and the host's memory where it has no limit."""
    machine = machine or host_sysinfo()
    info = replace(machine)
    stat_fields = Path(f"/proc/{init_pid}/stat").read_text().rsplit(")", 1)[1].split()
    started = int(stat_fields[19]) / os.sysconf("SC_CLK_TCK")
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    info.uptime = max(0, int(uptime - started))
    paths = cgroup_paths(init_pid)
    v2 = cgroup_layout() == "v2"
    if v2:
        memory = pids = CGROUP_ROOT / paths.get("", "/").lstrip("/")
        mem_leaf = pids_leaf = paths.get("", "/")
        limit = _effective_limit(CGROUP_ROOT, mem_leaf, "memory.max")
        usage = _read_int(memory / "memory.current")
        swap_limit = _effective_limit(CGROUP_ROOT, mem_leaf, "memory.swap.max")
        swap_usage = _read_int(memory / "memory.swap.current")
        shared = _stat_value(memory / "memory.stat", "shmem")
    else:
        mem_leaf, pids_leaf = paths.get("memory", "/"), paths.get("pids", "/")
        memory = CGROUP_ROOT / "memory" / mem_leaf.lstrip("/")
        pids = CGROUP_ROOT / "pids" / pids_leaf.lstrip("/")
        limit = _effective_limit(CGROUP_ROOT / "memory", mem_leaf, "memory.limit_in_bytes")
        usage = _read_int(memory / "memory.usage_in_bytes")
        memsw = _effective_limit(CGROUP_ROOT / "memory", mem_leaf,
                                 "memory.memsw.limit_in_bytes")
        memsw_usage = _read_int(memory / "memory.memsw.usage_in_bytes")
        swap_limit = memsw - limit if memsw is not None and limit is not None else None
        swap_usage = (memsw_usage - usage if memsw_usage is not None and usage is not None
                      else None)
        shared = _stat_value(memory / "memory.stat", "total_shmem", "shmem")
    if limit is not None and usage is not None and limit < machine.totalram:
        info.totalram = limit
        info.freeram = max(0, limit - usage)
        info.sharedram = min(shared, limit)
        info.bufferram = 0
        if swap_limit is not None and swap_limit < machine.totalswap:
            info.totalswap = max(0, swap_limit)
            info.freeswap = max(0, info.totalswap - max(0, swap_usage or 0))
    tasks = _read_int(pids / "pids.current")
    if tasks is not None:
        info.procs = tasks
    return info


# --- the service ---------------------------------------------------------------------------


@dataclass
class Request:
    """One notification with the fds that came with it (closed by the proxy afterwards)."""

    notification: Notification
    proc_fd: int
    mem_fd: int
    notify_fd: int


Handler = Callable[[Request, Instance], Awaitable[bytes]]


class SeccompProxy:
    """Listens on ``DATA_DIR/seccomp.socket`` (mode 0600) for liblxc's monitors."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.path = socket_path(host)
        self.kernel_sizes = kernel_notif_sizes()
        self.handlers: dict[str, Handler] = {
            "mknod": self._mknod, "mknodat": self._mknod, "setxattr": self._setxattr,
            "sysinfo": self._sysinfo,
        }

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """The service: listen, then serve every monitor that connects. If it cannot listen,
        the daemon runs on without it (instances with interception then refuse to start)."""
        try:
            listener, inode = await self._listen()
        except (OSError, LxfsError) as exc:
            log.error("seccomp notify proxy not started: %s; instances with "
                      "security.syscalls.intercept.* cannot start", exc)
            task_status.started()
            return
        try:
            log.info("seccomp notify proxy listening on %s", self.path)
            task_status.started()
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        conn, _ = await listener.accept()
                    except OSError as exc:  # EMFILE and the like: retry, never die
                        log.error("seccomp proxy: accept failed: %s", exc)
                        await trio.sleep(0.1)
                        continue
                    nursery.start_soon(self._serve_connection, conn)
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == inode:
                    self.path.unlink()

    async def _listen(self) -> tuple[trio.socket.SocketType, int]:
        """The listening socket (mode 0600) and its inode."""
        if self.kernel_sizes is None:
            raise NotSupported("this kernel has no seccomp user notification "
                               "(SECCOMP_GET_NOTIF_SIZES failed)")
        if len(os.fsencode(self.path)) > SUN_PATH_MAX:
            raise NotSupported(f"{self.path} is too long for a unix socket (at most "
                               f"{SUN_PATH_MAX} bytes): use a shorter data directory")
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.path.unlink(missing_ok=True)
            await listener.bind(str(self.path))
            os.chmod(self.path, 0o600)
            listener.listen(128)
            return listener, os.stat(self.path).st_ino
        except BaseException:
            listener.close()
            raise

    async def _serve_connection(self, conn: trio.socket.SocketType) -> None:
        """Serve one monitor until it disconnects; nothing escapes (the daemon must live)."""
        with conn:
            try:
                await self._serve_messages(conn)
            except Exception:
                log.exception("seccomp proxy: connection failed")

    async def _serve_messages(self, conn: trio.socket.SocketType) -> None:
        pid, uid, _gid = struct.unpack(
            "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid != 0:
            log.warning("seccomp proxy: refusing a connection from uid %d (pid %d)", uid, pid)
            return
        log.debug("seccomp proxy: monitor %d connected", pid)
        while True:
            try:
                data, ancdata, flags, _ = await conn.recvmsg(
                    MAX_MESSAGE, socket.CMSG_SPACE(FDS_PER_MESSAGE * 4),
                    socket.MSG_CMSG_CLOEXEC)
            except OSError as exc:
                log.debug("seccomp proxy: monitor %d: %s", pid, exc)
                return
            fds = received_fds(ancdata)
            try:
                if not data and not fds:
                    log.debug("seccomp proxy: monitor %d disconnected", pid)
                    return
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                    log.warning("seccomp proxy: truncated message from monitor %d", pid)
                    reply = b""
                else:
                    reply = await self.answer(data, fds)
            finally:
                for fd in fds:
                    os.close(fd)
            try:
                await conn.send(reply)
            except OSError as exc:
                log.warning("seccomp proxy: cannot answer monitor %d: %s", pid, exc)
                return

    async def answer(self, data: bytes, fds: list[int]) -> bytes:
        """The answer to one message (empty when it is malformed). Never raises."""
        try:
            notification = parse_message(data, self.kernel_sizes)
            if len(fds) != FDS_PER_MESSAGE:
                raise MalformedMessage(f"{len(fds)} fds instead of {FDS_PER_MESSAGE}")
        except MalformedMessage as exc:
            log.warning("seccomp proxy: malformed message answered with ENOSYS: %s", exc)
            return b""
        request = Request(notification, *fds)
        name = notification.syscall
        handler = self.handlers.get(name or "")
        fallback = (notification.answer_continue() if name == "sysinfo"
                    else notification.answer(errno.EPERM))
        try:
            instance = await self._instance_of(notification)
            if instance is None:
                log.warning("seccomp proxy: notification from pid %d of unknown container "
                            "(init %d, cookie %r): let the kernel decide", notification.pid,
                            notification.init_pid, notification.cookie)
                return notification.answer_continue()
            if handler is None:
                log.warning("seccomp proxy: %s: system call %d (arch %#x) has no handler",
                            instance.name, notification.nr, notification.arch)
                return notification.answer(errno.ENOSYS)
            with trio.move_on_after(HANDLER_TIMEOUT):
                reply = await handler(request, instance)
                log.debug("seccomp proxy: %s: %s of pid %d answered", instance.name, name,
                          notification.pid)
                return reply
            log.warning("seccomp proxy: %s: %s of pid %d took over %ds", instance.name, name,
                        notification.pid, HANDLER_TIMEOUT)
            return fallback
        except OSError as exc:
            return notification.answer(exc.errno or errno.EPERM)
        except Exception:
            log.exception("seccomp proxy: handling %s of pid %d failed", name,
                          notification.pid)
            return fallback

    async def _instance_of(self, notification: Notification) -> Instance | None:
        """The instance whose init is ``init_pid``. The cookie (its name, which cannot change
        while it runs) names it first; it is trusted alone while the daemon does not know the
        init yet (during its start, or at daemon start-up before the reattach)."""
        host = self.host
        name = notification.cookie.decode(errors="replace")
        candidates = [name] + [n for n in host.instances() if n != name]
        for candidate in candidates:
            instance = host.instance(candidate)
            if instance is None:
                continue
            pid = host.instance_pid(instance)
            if pid == notification.init_pid > 0 or (candidate == name and pid == 0):
                return instance
        return None

    # --- handlers ---------------------------------------------------------------------------

    async def _mknod(self, request: Request, instance: Instance) -> bytes:
        n = request.notification
        if n.syscall == "mknod":
            dirfd, path_address, mode, dev = AT_FDCWD, n.args[0], n.args[1], n.args[2]
        else:
            dirfd, path_address, mode, dev = as_int32(n.args[0]), *n.args[1:4]
        mode &= 0xFFFF
        major, minor = decode_dev(dev)
        if not stat.S_ISCHR(mode & S_IFMT) or (major, minor) not in ALLOWED_DEVICES:
            return n.answer(errno.EPERM)
        if dirfd < 0 and dirfd != AT_FDCWD:
            return n.answer(errno.EBADF)
        path, caller, own_userns = await trio.to_thread.run_sync(
            lambda: (read_string(request.mem_fd, path_address, PATH_MAX),
                     read_caller(request.proc_fd),
                     in_container_userns(request.proc_fd, n.init_pid)))
        check_still_waiting(request)
        if not (caller.can(CAP_MKNOD) and own_userns):
            return n.answer(errno.EPERM)
        if not path:
            return n.answer(errno.ENOENT)
        err = await self._run_helper(request, [
            "mknod", str(request.proc_fd), "cwd" if dirfd == AT_FDCWD else str(dirfd), path,
            str(mode), str(major), str(minor), str(caller.fsuid), str(caller.fsgid),
            ",".join(map(str, caller.groups)), str(caller.umask)])
        return n.answer(err)

    async def _setxattr(self, request: Request, instance: Instance) -> bytes:
        n = request.notification
        path_address, name_address, value_address, size, flags = n.args[:5]

        def read() -> tuple[bytes, bytes, bytes, Caller, bool] | None:
            name = read_string(request.mem_fd, name_address, XATTR_NAME_MAX + 1)
            if name != OPAQUE_XATTR or size != 1:
                return None
            value = read_memory(request.mem_fd, value_address, size)
            if value != b"y":
                return None
            path = read_string(request.mem_fd, path_address, PATH_MAX)
            caller = read_caller(request.proc_fd)
            own_userns = in_container_userns(request.proc_fd, n.init_pid)
            check_still_waiting(request)
            return name, value, path, caller, own_userns

        found = await trio.to_thread.run_sync(read)
        if found is None:
            return n.answer_continue()
        name, value, path, caller, own_userns = found
        if not (caller.can(CAP_SYS_ADMIN) and own_userns):
            return n.answer(errno.EPERM)
        if not path:
            return n.answer(errno.ENOENT)
        err = await self._run_helper(request, [
            "setxattr", str(request.proc_fd), "cwd", path, name, value.hex(),
            str(flags & 0xFFFFFFFF)])
        return n.answer(err)

    async def _sysinfo(self, request: Request, instance: Instance) -> bytes:
        n = request.notification

        def fill() -> int:
            data = container_sysinfo(n.init_pid).pack(compat_32bit=n.is_32bit)
            if not notification_valid(request.notify_fd, n.id):
                return errno.ESRCH  # the caller is gone: its memory is not ours to write
            try:
                os.pwrite(request.mem_fd, data, n.args[0])
            except (OSError, OverflowError):
                return errno.EFAULT
            return 0

        return n.answer(await trio.to_thread.run_sync(fill))

    async def _run_helper(self, request: Request, args: list[str | bytes]) -> int:
        """Run seccomp_helper.py; return the errno it reports (0 for success)."""
        command: list[str | bytes] = [sys.executable, "-I", "-S", str(HELPER), *args]
        result = await trio.run_process(
            command, check=False, capture_stderr=True, stdin=b"", stdout=subprocess.DEVNULL,
            pass_fds=(request.proc_fd,))
        if result.returncode == HELPER_FAILURE or result.returncode < 0:
            log.error("seccomp helper %s failed (%d): %s", args[0], result.returncode,
                      result.stderr.decode(errors="replace").strip())
            return errno.EPERM
        return result.returncode


def check_still_waiting(request: Request) -> None:
    """Raise ESRCH if the caller no longer waits in this call (killed, its pid reused): what
    was read from its memory and /proc may then belong to another process."""
    if not notification_valid(request.notify_fd, request.notification.id):
        raise OSError(errno.ESRCH, "the caller is gone")


def received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds of SCM_RIGHTS control messages."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", data[: len(data) - len(data) % 4]))
    return fds
