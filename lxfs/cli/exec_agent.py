"""The exec agent: a process inside a running container that forks the commands of ``lxfs exec``.

Attaching to a container costs 3-26 ms on cgroup v1 (moving the process into each hierarchy
waits for an RCU grace period, docs/benchmarks.md). The agent pays it once: the first
``lxfs exec`` of a running container attaches as before and spawns a starter (``main``) in the
background. The starter binds ``LXC_PATH/NAME/exec-agent.socket`` on the host (root only,
0600; the container sees neither the path nor the directory), then attaches to the container
with liblxc and keeps serving in the attached process (``Agent.run``): it is in the
container's namespaces and cgroups, with its capabilities, seccomp filter and LSM label,
exactly what ``lxc-attach`` gives, and every command it forks inherits them.

Per request (SOCK_SEQPACKET): the agent greets the client it accepted (``R``); the client
sends argv, environment, directory, user and group (``encode_request``) with its stdin, stdout
and stderr (or a pty's slave) and the read end of a gate pipe (SCM_RIGHTS). The agent forks;
the child waits on the gate, which the client opens once it has the child's pid
(``P<pid>``): a client that is gone never gets its command run, and one that gets no answer
can fall back to attaching without running anything twice. The client forwards signals
(``S<signal>``); the agent reports the raw wait status (``X<status>``).

The agent never execs after entering the container: its memory stays owned by the host's user
namespace, so the container's root cannot ptrace it or read its /proc files (it can kill it;
``lxfs exec`` then attaches again). It ends when the container stops (its pid namespace dies)
and after ``IDLE_SECONDS`` without a request; it does not depend on lxfsd.

This module's top level imports ``os`` only: the client (``lxfs.cli.exec``) uses its
protocol functions on its fast path.
"""

from __future__ import annotations

import os

#: the agent's socket, in the container's LXC directory (``LXC_PATH/NAME``)
SOCKET_NAME = "exec-agent.socket"
#: serialises starters of the same container
LOCK_NAME = "exec-agent.lock"
#: the agent's errors
LOG_NAME = "exec-agent.log"
#: the agent exits after this long without a request (``LXFS_EXEC_AGENT_IDLE`` overrides)
IDLE_SECONDS = 60.0
IDLE_ENV = "LXFS_EXEC_AGENT_IDLE"
#: ``off``: ``lxfs exec`` attaches every time and starts no agent
SWITCH_ENV = "LXFS_EXEC_AGENT"
PROTOCOL = b"lxfs-exec-agent 1"
#: a command whose client went away gets SIGHUP, then SIGKILL this much later (as the
#: daemon's exec socket does to its commands)
HANGUP_GRACE = 10.0
#: largest request (argv and environment)
MAX_REQUEST = 256 << 10
#: fds of a request: stdin, stdout, stderr, the gate
REQUEST_FDS = 4


def socket_path(lxc_path: str, name: str) -> str:
    """Where the agent of container ``name`` listens."""
    return os.path.join(lxc_path, name, SOCKET_NAME)


def encode_request(argv: list[str], env: dict[str, str], cwd: str | None, explicit_cwd: bool,
                   uid: int | None, gid: int | None, use_pty: bool) -> bytes:
    """A request's bytes: NUL-separated fields (no json: its import costs 2 ms)."""
    fields = [PROTOCOL, b"" if uid is None else b"%d" % uid,
              b"" if gid is None else b"%d" % gid, os.fsencode(cwd or ""),
              b"1" if explicit_cwd else b"0", b"1" if use_pty else b"0", b"%d" % len(argv)]
    fields += [os.fsencode(a) for a in argv]
    fields += [os.fsencode(f"{k}={v}") for k, v in env.items()]
    return b"\0".join(fields)


class Request:
    """A decoded request (``decode_request``)."""

    __slots__ = ("argv", "env", "cwd", "explicit_cwd", "uid", "gid", "use_pty")

    def __init__(self, data: bytes) -> None:
        fields = data.split(b"\0")
        if len(fields) < 7 or fields[0] != PROTOCOL:
            raise ValueError("not an lxfs exec agent request")
        self.uid = int(fields[1]) if fields[1] else None
        self.gid = int(fields[2]) if fields[2] else None
        self.cwd = os.fsdecode(fields[3]) or None
        self.explicit_cwd = fields[4] == b"1"
        self.use_pty = fields[5] == b"1"
        count = int(fields[6])
        if count < 1 or len(fields) < 7 + count:
            raise ValueError("bad argv")
        self.argv = [os.fsdecode(a) for a in fields[7:7 + count]]
        self.env: dict[str, str] = {}
        for item in fields[7 + count:]:
            key, sep, value = os.fsdecode(item).partition("=")
            if not sep or not key:
                raise ValueError("bad environment entry")
            self.env[key] = value


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    import _socket  # noqa: PLC0415 - loaded before the attach (main)
    import array  # noqa: PLC0415

    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return list(fds)


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Agent:
    """The serving loop, in the attached process. Everything it uses is imported before the
    attach: the container's files are not the host's Python."""

    def __init__(self, listener_fd: int, idle: float) -> None:
        self.listener_fd = listener_fd
        self.idle = idle
        self.conns: dict[int, Any] = {}  # client socket fd -> socket
        self.pid_of: dict[int, int] = {}  # client socket fd -> its command's pid
        self.conn_of: dict[int, int | None] = {}  # command pid -> client fd (None: gone)
        self.kill_at: dict[int, float] = {}  # hung-up command pid -> when to SIGKILL it

    def run(self) -> int:
        import _signal as signal  # noqa: PLC0415
        import _socket  # noqa: PLC0415
        import select  # noqa: PLC0415
        import time  # noqa: PLC0415

        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        listener = _socket.socket(fileno=self.listener_fd)
        listener.setblocking(False)
        listener.listen(64)  # again: a client's SO_PEERCRED now names the agent, not the starter
        last_active = time.monotonic()
        while True:
            timeout = None
            now = time.monotonic()
            if not self.conns and not self.conn_of:
                timeout = last_active + self.idle - now
                if timeout <= 0:
                    listener.close()  # queued clients see EOF and attach themselves
                    return 0
            for pid, deadline in list(self.kill_at.items()):
                if deadline <= now:
                    del self.kill_at[pid]
                    self._signal(pid, signal.SIGKILL)
                else:
                    timeout = min(timeout or deadline - now, deadline - now)
            try:
                readable, _, _ = select.select([self.listener_fd, wake_r, *self.conns], [],
                                               [], timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            if readable:
                last_active = time.monotonic()
            if wake_r in readable:
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                self._reap()
            if self.listener_fd in readable:
                try:
                    fd, _ = listener._accept()  # noqa: SLF001 - _socket has no accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    fd = -1
                if fd >= 0:
                    self.conns[fd] = _socket.socket(fileno=fd)
                    self._send(fd, b"R")  # the client sends its fds to a live agent only
            for fd in readable:
                if fd in self.conns:
                    self._receive(fd)

    def _receive(self, fd: int) -> None:
        import _socket  # noqa: PLC0415

        conn = self.conns[fd]
        try:
            data, ancdata, flags, _ = conn.recvmsg(
                MAX_REQUEST, _socket.CMSG_SPACE(REQUEST_FDS * 4), _socket.MSG_CMSG_CLOEXEC)
        except OSError:
            data, ancdata, flags = b"", [], 0
        fds = _received_fds(ancdata)
        if not data:  # the client is gone: its command (if any) is hung up
            _close(fds)
            pid = self.pid_of.get(fd)
            if pid is not None:
                import _signal as signal  # noqa: PLC0415
                import time  # noqa: PLC0415

                self._signal(pid, signal.SIGHUP)
                self.kill_at[pid] = time.monotonic() + HANGUP_GRACE
            self._drop(fd)
            return
        pid = self.pid_of.get(fd)
        if pid is not None:
            _close(fds)
            if data[:1] == b"S" and self.conn_of.get(pid) == fd:
                try:
                    self._signal(pid, int(data[1:]))
                except ValueError:
                    pass
            return
        try:
            if flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC) or len(fds) != REQUEST_FDS:
                raise ValueError("truncated request")
            request = Request(data)
        except ValueError as exc:
            _close(fds)
            self._send(fd, b"E" + str(exc).encode())
            self._drop(fd)
            return
        try:
            pid = os.fork()
        except OSError as exc:
            _close(fds)
            self._send(fd, b"Ecannot fork: " + str(exc.strerror).encode())
            self._drop(fd)
            return
        if pid == 0:  # pragma: no cover - the command's process
            os._exit(_child(request, fds))
        _close(fds)
        self.pid_of[fd] = pid
        self.conn_of[pid] = fd
        self._send(fd, b"P%d" % pid)

    def _signal(self, pid: int, sig: int) -> None:
        """Signal a command not reaped yet (its pid cannot have been reused)."""
        if pid in self.conn_of:
            try:
                os.kill(pid, sig)
            except OSError:
                pass

    def _send(self, fd: int, data: bytes) -> None:
        try:
            self.conns[fd].send(data)
        except OSError:
            pass

    def _drop(self, fd: int) -> None:
        conn = self.conns.pop(fd, None)
        if conn is not None:
            conn.close()
        pid = self.pid_of.pop(fd, None)
        if pid is not None and pid in self.conn_of:
            self.conn_of[pid] = None

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.kill_at.pop(pid, None)
            fd = self.conn_of.pop(pid, None)
            if fd is not None:
                self._send(fd, b"X%d" % status)
                self.pid_of.pop(fd, None)
                self._drop(fd)


def _child(request: Request, fds: list[int]) -> int:
    """The forked command process: the client's fds as 0-2, its user and group, then what an
    attached child of ``lxfs exec`` does (``attached_child``: gate, pty, env, cwd, exec)."""
    from lxfs.cli.exec import ChildSpec, attached_child  # noqa: PLC0415 - already loaded

    try:
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        if request.uid is not None or request.gid is not None:
            try:
                os.setgroups([])
            except OSError:
                pass  # as liblxc: setgroups may be denied in the user namespace
            os.setgid(request.gid or 0)
        if request.uid is not None:
            os.setuid(request.uid)
        spec = ChildSpec(argv=request.argv, env=request.env, cwd=request.cwd,
                         explicit_cwd=request.explicit_cwd, uid=request.uid or 0,
                         use_pty=request.use_pty)
        spec.gate_fd = fds[3]
        return attached_child(spec)
    except BaseException as exc:  # noqa: BLE001 - nothing may escape into the agent's loop
        _say(f"Error: {exc}\n")
        return 126


def _say(text: str) -> None:
    """Write to stderr (the command's, or the agent's log), if it can be written."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass


def serve(agent: Agent) -> int:
    """Entry of the attached process (liblxc calls it; the return value is its exit status)."""
    try:
        return agent.run()
    except BaseException as exc:  # noqa: BLE001
        _say(f"lxfs exec agent: {exc!r}\n")
        return 1


def _agent_answers(path: str) -> bool:
    import _socket  # noqa: PLC0415

    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def start(name: str, lxc_path: str, idle: float) -> int:
    """Start the agent of container ``name`` unless one answers (the starter's work; returns
    its exit status)."""
    # everything the agent and its children use, loaded before the attach
    import _signal  # noqa: F401, PLC0415
    import _socket  # noqa: PLC0415
    import array  # noqa: F401, PLC0415
    import fcntl  # noqa: PLC0415
    import select  # noqa: F401, PLC0415
    import time  # noqa: F401, PLC0415

    import _lxc  # noqa: PLC0415

    import lxfs.cli.exec  # noqa: F401, PLC0415

    directory = os.path.join(lxc_path, name)
    path = os.path.join(directory, SOCKET_NAME)
    lock = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                   0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another starter is at it
        if _agent_answers(path):
            return 0
        try:
            os.unlink(path)  # a dead agent's
        except FileNotFoundError:
            pass
        listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o077)
        try:
            listener.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        listener.listen(64)
    finally:
        os.close(lock)  # connecting now succeeds: later starters leave at _agent_answers
    container = _lxc.Container(name, lxc_path)
    if container.state != "RUNNING":
        os.unlink(path)
        return 1
    container.set_config_item("lxc.log.file", os.path.join(directory, "lxc.log"))
    container.set_config_item("lxc.log.level", "ERROR")
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    # the agent's own errors (it has no other way out)
    log = os.open(os.path.join(directory, LOG_NAME),
                  os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    pid = container.attach(serve, Agent(listener.fileno(), idle),
                           env_policy=_lxc.LXC_ATTACH_CLEAR_ENV,
                           extra_env_vars=["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                           stdin=null, stdout=null, stderr=log)
    if pid is None or pid < 0:
        from lxfs.cli.exec import attached_orphan  # noqa: PLC0415

        if attached_orphan() is None:  # (see attached_orphan: it may run all the same)
            os.unlink(path)
            return 1
    return 0


def main(argv: list[str]) -> int:
    """``python -c 'from lxfs.cli.exec_agent import main; ...' NAME LXC_PATH``: the starter,
    spawned in the background by ``lxfs exec`` (``lxfs.cli.exec.spawn_agent``)."""
    name, lxc_path = argv
    try:
        idle = float(os.environ.get(IDLE_ENV) or IDLE_SECONDS)
    except ValueError:
        idle = IDLE_SECONDS
    try:
        return start(name, lxc_path, idle)
    except OSError:
        return 1


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any
