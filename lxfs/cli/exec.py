"""``lxfs exec``: run a command in a running instance through python-lxc (not the mount).

The command runs in a process attached to the container: forked by the instance's exec agent
(``lxfs.cli.exec_agent``) when one runs, else a child of this process that LXC attaches (which
also starts the agent, in the background, for the next execs). Without a terminal it gets
this process's own stdin/stdout/stderr (data streams natively, nothing is copied). With a
terminal it gets a new pty, relayed here in raw mode.
"""

from __future__ import annotations

# the C module under ``signal``: the same functions and numbers, without the enums (importing
# enum is 4 ms, an eighth of a short exec)
import _signal as signal
import errno
import fcntl
import os
import select
import struct
import sys
import termios
import tty
import warnings  # noqa: F401 - see attached_child
from types import SimpleNamespace

from lxfs.cli import exec_agent
from lxfs.cli.base import (
    CLIError,
    NoMount,
    check_mount,
    host_name,
    instance_dir,
    mount_point,
    read_opt,
    read_text,
)

TYPE_CHECKING = False  # importing typing costs 2-4 ms of start-up
if TYPE_CHECKING:
    import argparse
    from typing import Any

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)
VALUE_OPTIONS = ("--env", "--cwd", "--user", "--group")
#: set by the REST bridge's exec helper: the read end of a pipe on which the attached child
#: waits for b"1" before it runs the command (the attach overlaps the client's websocket
#: connections; EOF instead means the client never came: nothing runs)
GATE_FD = -1
#: the attached child's exit status when the gate closed without opening
GATE_CLOSED = 125
#: set by the REST bridge's exec helper: the container directory (``lxc_path``) the daemon
#: already knows. The ``--env`` options are then the whole environment (the daemon computed
#: it): nothing is read from the mount, whose daemon is busy with the client's websockets.
PRESET_LXC_PATH = ""
#: what runs the agent's starter (``lxfs.cli.exec_agent.main``)
AGENT_STARTER = "import sys; from lxfs.cli.exec_agent import main; sys.exit(main(sys.argv[1:]))"
#: how long an exec waits for the agent's answer before it asks liblxc whether the instance
#: runs (a frozen one's agent cannot answer), and then before it gives up on the agent
AGENT_FIRST_WAIT = 0.2
AGENT_LAST_WAIT = 10.0


class ChildSpec:
    """What the attached child needs; prepared before attaching (the child imports nothing).
    A plain class: ``dataclasses`` costs 7 ms of start-up."""

    __slots__ = ("argv", "env", "cwd", "explicit_cwd", "uid", "use_pty", "max_fd", "gate_fd")

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str | None,
                 explicit_cwd: bool, uid: int, use_pty: bool) -> None:
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.explicit_cwd = explicit_cwd
        self.uid = uid
        self.use_pty = use_pty
        self.max_fd = os.sysconf("SC_OPEN_MAX")
        self.gate_fd = GATE_FD


def _passwd_entry(uid: int) -> tuple[str, str] | None:
    """``(name, home)`` of ``uid`` in the container's /etc/passwd (read from inside)."""
    try:
        with open("/etc/passwd", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2] == str(uid):
                    return fields[0], fields[5]
    except OSError:
        return None
    return None


def attached_child(spec: ChildSpec) -> int:
    """Runs inside the container (after LXC's fork and setns): set up and exec the command.
    It sees the container's files, not the host's Python: whatever it uses must be imported
    beforehand (``os.execvpe`` imports ``warnings``: hence the import at the top).

    Returns only on failure; the returned number is the exit status.
    """
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, *FORWARDED_SIGNALS, signal.SIGCHLD,
                    signal.SIGWINCH):
            signal.signal(sig, signal.SIG_DFL)
        if spec.gate_fd >= 0 and os.read(spec.gate_fd, 1) != b"1":
            return GATE_CLOSED
        if spec.use_pty:
            try:
                os.setsid()
            except OSError:
                pass
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        env = dict(spec.env)
        if spec.uid > 0 and ("HOME" not in env or "USER" not in env):
            entry = _passwd_entry(spec.uid)
            if entry is not None:
                env.setdefault("USER", entry[0])
                env.setdefault("HOME", entry[1])
        cwd = spec.cwd or env.get("HOME") or "/"
        try:
            os.chdir(cwd)
        except OSError as exc:
            if spec.explicit_cwd:
                os.write(2, f"Error: cannot change directory to {cwd}: {exc.strerror}\n"
                         .encode())
                return 1
            os.chdir("/")
        os.closerange(3, spec.max_fd)
        os.execvpe(spec.argv[0], spec.argv, env)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            os.write(2, f"Error: command not found: {spec.argv[0]}\n".encode())
            return 127
        os.write(2, f"Error: cannot run {spec.argv[0]}: {exc.strerror}\n".encode())
        return 126
    except BaseException as exc:  # noqa: BLE001 - nothing may escape into LXC's child
        os.write(2, f"Error: {exc}\n".encode())
        return 126
    return 126  # pragma: no cover - execvpe does not return


def exit_code(status: int) -> int:
    """Exit status for a raw wait status (a signal gives 128+signal, like a shell)."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def build_env(inst: str, uid: int, use_pty: bool, extra: list[str], defaults: bool = True
              ) -> dict[str, str]:
    """LXD's defaults, then the instance's ``environment.*`` keys, then ``--env``
    (without ``defaults``: ``--env`` only, the whole environment as the daemon made it)."""
    env: dict[str, str] = {}
    keys: list[str] = []
    if defaults:
        env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
        if uid == 0:
            env["HOME"] = "/root"
            env["USER"] = "root"
        term = os.environ.get("TERM")
        if term:
            env["TERM"] = term
        elif use_pty:
            env["TERM"] = "xterm"
        config = os.path.join(inst, "expanded", "config")
        try:
            keys = sorted(k for k in os.listdir(config) if k.startswith("environment."))
        except OSError:
            keys = []
    for key in keys:
        try:
            value = read_text(os.path.join(config, key))
        except OSError:
            continue
        if key[len("environment."):]:
            env[key[len("environment."):]] = value
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"Bad key=value pair: {item}")
        env[key] = value
    return env


def _winsize(fd: int) -> bytes | None:
    """The window size of a terminal (None when unknown or 0x0)."""
    try:
        size = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None
    rows, cols = struct.unpack("HHHH", size)[:2]
    return size if rows and cols else None


class Waiter:
    """Signal plumbing while the command runs: forwards signals, wakes the relay loop."""

    def __init__(self, pid: int, pty_master: int | None = None) -> None:
        self.pid = pid
        self.master = pty_master
        self.status: int | None = None
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        #: what wakes the relay loop
        self.wake_fds: tuple[int, ...] = (self.wake_r,)
        self.old: dict[int, Any] = {}
        self.old_wakeup = -1

    def __enter__(self) -> Waiter:
        self.old_wakeup = signal.set_wakeup_fd(self.wake_w)
        for sig in FORWARDED_SIGNALS:
            self.old[sig] = signal.signal(sig, self._forward)
        self.old[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)
        if self.master is not None:
            self.old[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, self._winch)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self.old_wakeup)
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _forward(self, sig: int, _frame: object) -> None:
        if self.status is not None:
            return
        if sig in (signal.SIGINT, signal.SIGQUIT) and self.master is None:
            try:
                if os.getpgid(self.pid) == os.getpgrp():
                    return  # the terminal already sent it to the whole process group
            except OSError:
                return
        try:
            os.kill(self.pid, sig)
        except OSError:
            pass

    def _winch(self, _sig: int, _frame: object) -> None:
        size = _winsize(sys.stdin.fileno()) or _winsize(sys.stdout.fileno())
        if size is not None and self.master is not None:
            try:
                fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
            except OSError:
                pass

    def poll(self) -> int | None:
        """Reap the child if it exited."""
        if self.status is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.status = 255 << 8
                return self.status
            if pid == self.pid:
                self.status = status
        return self.status

    def wait(self) -> int:
        """Block until the child exits."""
        while self.status is None:
            try:
                _pid, status = os.waitpid(self.pid, 0)
                self.status = status
            except ChildProcessError:
                self.status = 255 << 8
        return self.status

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass


class AgentWaiter(Waiter):
    """``Waiter`` for a command the exec agent forked: signals and the exit status go through
    the agent's socket (the command is in the container's pid namespace, and in no process
    group of this terminal: every signal is forwarded)."""

    def __init__(self, sock: Any, pid: int, pty_master: int | None = None) -> None:
        super().__init__(pid, pty_master)
        self.sock = sock
        self.wake_fds = (self.wake_r, sock.fileno())
        self.lost = False

    def _forward(self, sig: int, _frame: object) -> None:
        if self.status is None:
            try:
                self.sock.send(b"S%d" % sig)
            except OSError:
                pass

    def _take(self, data: bytes) -> None:
        if data[:1] == b"X":
            self.status = int(data[1:])
        else:  # the agent is gone (killed from inside the container)
            self.lost = True
            self.status = 255 << 8

    def poll(self) -> int | None:
        if self.status is None:
            import _socket  # noqa: PLC0415 - loaded by run_through_agent

            try:
                data = self.sock.recv(64, _socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
            except OSError:
                data = b""
            self._take(data)
        return self.status

    def wait(self) -> int:
        while self.status is None:
            try:
                data = self.sock.recv(64)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            except OSError:
                data = b""
            self._take(data)
        return self.status


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])


def relay(waiter: Waiter, master: int, stdin_fd: int, stdout_fd: int) -> int:
    """Copy between our stdin/stdout and the pty master until the command exits."""
    os.set_blocking(master, False)
    stdin_open = True
    pending = b""
    last_byte = b""
    while True:
        rlist = [master, *waiter.wake_fds]
        if stdin_open and len(pending) < 65536:
            rlist.append(stdin_fd)
        wlist = [master] if pending else []
        try:
            # the timeout covers a SIGCHLD that came before the handlers were installed
            readable, writable, _ = select.select(rlist, wlist, [], 1.0)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            continue
        if waiter.wake_r in readable:
            waiter.drain_wakeups()
        if master in readable:
            try:
                data = os.read(master, 65536)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""  # EIO: every holder of the slave closed it
            if data == b"":
                break
            if data:
                _write_all(stdout_fd, data)
        if stdin_fd in readable:
            try:
                data = os.read(stdin_fd, 65536)
            except OSError:
                data = b""
            if data:
                pending += data
                last_byte = data[-1:]
            else:
                stdin_open = False
                if not os.isatty(stdin_fd):
                    # end of input (canonical mode): a first ^D flushes an unfinished line
                    pending += b"\x04" if last_byte in (b"", b"\n") else b"\x04\x04"
        if pending and master in writable:
            try:
                pending = pending[os.write(master, pending):]
            except BlockingIOError:
                pass
            except OSError:
                pending = b""
        if waiter.poll() is not None:
            _drain(master, stdout_fd)
            break
    return waiter.wait()


def _drain(master: int, stdout_fd: int) -> None:
    """Copy what the command wrote just before it exited."""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            return
        if not data:
            return
        _write_all(stdout_fd, data)


def run(args: argparse.Namespace) -> int:
    """``lxfs exec NAME [options] [--] CMD...`` (``args`` as ``parse_fast`` or argparse
    make it). Whether the instance runs is asked from liblxc, not read from the mount."""
    if args.force_interactive and args.force_noninteractive:
        raise CLIError("-t and -T cannot be used together")
    if not args.command:
        raise CLIError("Missing command: lxfs exec NAME -- COMMAND [ARGS...]")
    lxc_path = PRESET_LXC_PATH
    inst = ""
    lxc_name = host_name(args.name)  # p1_c1 for c1 of project p1
    if not lxc_path:
        root = mount_point()
        try:
            check_mount(root)
        except NoMount:
            lxc_path = daemonless_lxc_path(lxc_name)
            if not lxc_path:
                raise
        else:
            inst = instance_dir(root, args.name)
            if os.geteuid() != 0:
                return run_through_daemon(root, args)
            lxc_path = read_opt(os.path.join(root, "environment", "lxc_path"))
            if not lxc_path:
                raise CLIError("The server does not publish environment/lxc_path")

    # the REST bridge's helper (a gate, a preset path) attaches ahead of its client: no agent;
    # LXFS_EXEC_AGENT=off attaches every time (to compare, or to rule the agent out)
    use_agent = (GATE_FD < 0 and not PRESET_LXC_PATH
                 and os.environ.get(exec_agent.SWITCH_ENV) != "off")
    sock = connect_agent(lxc_path, lxc_name) if use_agent else None
    # no agent: liblxc says whether the instance runs, before anything else is looked at
    container = None if sock is not None else running_container(lxc_name, lxc_path)

    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    if args.force_interactive:
        use_pty = True
    elif args.force_noninteractive:
        use_pty = False
    else:
        use_pty = os.isatty(stdin_fd) and os.isatty(stdout_fd)

    uid = 0 if args.user is None else args.user
    gid = 0 if args.group is None else args.group
    env = build_env(inst, uid, use_pty, args.env or [], defaults=not PRESET_LXC_PATH)
    cwd = args.cwd or ("/root" if uid == 0 else None)
    spec = ChildSpec(argv=list(args.command), env=env, cwd=cwd, explicit_cwd=bool(args.cwd),
                     uid=uid, use_pty=use_pty)
    sys.stdout.flush()
    sys.stderr.flush()
    if sock is not None:
        try:
            code = _agent_session(sock, lxc_path, lxc_name, spec, args.user,
                                  None if args.user is None and args.group is None else gid,
                                  stdin_fd, stdout_fd)
        finally:
            sock.close()
        if code is not None:
            return code
        container = running_container(lxc_name, lxc_path)  # nothing ran: attach

    import _lxc as lxc  # noqa: PLC0415 - loaded by running_container
    options: dict[str, Any] = {
        "env_policy": lxc.LXC_ATTACH_CLEAR_ENV,
        "extra_env_vars": [f"{k}={v}" for k, v in env.items()],
    }
    if args.user is not None:
        options["uid"] = uid
    if args.group is not None or args.user is not None:
        options["gid"] = gid
    if cwd:
        options["initial_cwd"] = cwd
    agent = (lxc_name, lxc_path) if use_agent else None
    if not use_pty:
        return _run_plain(container, spec, options, agent)
    return _run_pty(container, spec, options, stdin_fd, stdout_fd, agent)


def running_container(lxc_name: str, lxc_path: str) -> Any:
    """python-lxc's container, checked to be running, its attach errors logged to its LXC
    log (as LXD's are; ``attach_errors`` quotes them)."""
    try:
        # python-lxc's C module: its ``lxc`` wrapper adds nothing exec uses and imports
        # subprocess (4 ms of start-up)
        import _lxc as lxc  # noqa: PLC0415 - only exec needs python-lxc
    except ImportError as exc:
        raise CLIError("python-lxc is not installed (needed by exec)") from exc
    container = lxc.Container(lxc_name, lxc_path)
    if container.state != "RUNNING":
        raise CLIError("Instance is not running")
    container.set_config_item("lxc.log.file", os.path.join(lxc_path, lxc_name, "lxc.log"))
    container.set_config_item("lxc.log.level", "ERROR")
    return container


def daemonless_lxc_path(lxc_name: str) -> str:
    """The LXC path of an instance when no daemon answers at the mount: the default data
    directory's (``LXFS_DIR``, else /var/lib/lxfs, as lxfsd), for root, when the instance's
    LXC directory is there; else "". The instance's ``environment.*`` keys are then unknown:
    the command gets LXD's defaults and ``--env``."""
    if os.geteuid() != 0 or not lxc_name or "/" in lxc_name or lxc_name in (".", ".."):
        return ""
    lxc_path = os.path.join(os.environ.get("LXFS_DIR") or "/var/lib/lxfs", "containers")
    return lxc_path if os.path.isfile(os.path.join(lxc_path, lxc_name, "config")) else ""


def spawn_agent(lxc_name: str, lxc_path: str) -> None:
    """Start the instance's exec agent in the background (``lxfs.cli.exec_agent.main``: it
    leaves at once if one answers). It gets none of our fds and a session of its own."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    idle = os.environ.get(exec_agent.IDLE_ENV)
    if idle:
        env[exec_agent.IDLE_ENV] = idle
    actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0),
                                      (os.POSIX_SPAWN_DUP2, 0, 1), (os.POSIX_SPAWN_DUP2, 0, 2)]
    try:
        open_fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        open_fds = []
    for fd in open_fds:
        if fd > 2:
            try:
                inherited = not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            except OSError:
                continue
            if inherited:
                actions.append((os.POSIX_SPAWN_CLOSE, fd))
    try:
        os.posix_spawn(sys.executable, [sys.executable, "-S", "-c", AGENT_STARTER, lxc_name,
                                        lxc_path], env, file_actions=actions, setsid=True)
    except OSError:
        pass  # the next exec attaches again


def connect_agent(lxc_path: str, lxc_name: str) -> Any:
    """A connection to the instance's exec agent, None when none listens."""
    import _socket  # noqa: PLC0415 - ``socket`` imports enum (4 ms)

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(exec_agent.socket_path(lxc_path, lxc_name))
    except OSError:
        sock.close()
        return None
    return sock


def run_through_agent(lxc_path: str, lxc_name: str, spec: ChildSpec, uid: int | None,
                      gid: int | None, stdin_fd: int, stdout_fd: int) -> int | None:
    """Run the command through the instance's exec agent; None when no agent answers
    (nothing ran: the caller attaches)."""
    sock = connect_agent(lxc_path, lxc_name)
    if sock is None:
        return None
    try:
        return _agent_session(sock, lxc_path, lxc_name, spec, uid, gid, stdin_fd, stdout_fd)
    finally:
        sock.close()


def _agent_session(sock: Any, lxc_path: str, lxc_name: str, spec: ChildSpec,
                   uid: int | None, gid: int | None, stdin_fd: int, stdout_fd: int
                   ) -> int | None:
    import _socket  # noqa: PLC0415

    gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
    master = slave = -1
    saved = None
    try:
        if spec.use_pty:
            master, slave = os.openpty()
            os.set_inheritable(master, False)
            if os.isatty(stdin_fd):
                saved = termios.tcgetattr(stdin_fd)
                termios.tcsetattr(slave, termios.TCSANOW, saved)
            size = (_winsize(stdin_fd) or _winsize(stdout_fd)
                    or struct.pack("HHHH", 24, 80, 0, 0))
            fcntl.ioctl(master, termios.TIOCSWINSZ, size)
            fds = [slave, slave, slave, gate_r]
        else:
            fds = [stdin_fd, stdout_fd, 2, gate_r]
        request = exec_agent.encode_request(spec.argv, spec.env, spec.cwd, spec.explicit_cwd,
                                            uid, gid, spec.use_pty)
        # the agent greets each client it accepted: our fds are sent only to a live agent (a
        # frozen one would hold them, and the pipes of whoever waits for our output, open)
        if _agent_answer(sock, lxc_path, lxc_name) != b"R":
            return None
        try:
            sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                      struct.pack(f"{len(fds)}i", *fds))])
        except OSError:
            return None  # e.g. a closed stdin, a request too big: attaching copes
        os.close(gate_r)
        gate_r = -1
        if slave >= 0:
            os.close(slave)
            slave = -1
        answer = _agent_answer(sock, lxc_path, lxc_name)
        if answer[:1] != b"P":
            return None
        pid = int(answer[1:])
        with AgentWaiter(sock, pid, master if spec.use_pty else None) as waiter:
            os.write(gate_w, b"1")  # the command runs from here on
            os.close(gate_w)
            gate_w = -1
            if spec.use_pty:
                if saved is not None:
                    tty.setraw(stdin_fd, termios.TCSANOW)
                status = relay(waiter, master, stdin_fd, stdout_fd)
            else:
                status = waiter.wait()
        if waiter.lost:
            raise CLIError("the instance's exec agent ended while the command ran", 255)
        return exit_code(status)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        for fd in (gate_r, gate_w, slave, master):
            if fd >= 0:
                os.close(fd)


def _agent_answer(sock: Any, lxc_path: str, lxc_name: str) -> bytes:
    """The agent's next message; b"" when it closed or hangs (it is then killed; the command
    never ran: its gate stays shut). A frozen instance's agent cannot answer: liblxc is asked
    after ``AGENT_FIRST_WAIT``."""
    waits = [AGENT_FIRST_WAIT, AGENT_LAST_WAIT]
    while True:
        readable, _, _ = select.select([sock], [], [], waits[0])
        if readable:
            try:
                return sock.recv(256)
            except OSError:
                return b""
        waits.pop(0)
        if waits:
            import _lxc  # noqa: PLC0415

            if _lxc.Container(lxc_name, lxc_path).state != "RUNNING":
                raise CLIError("Instance is not running")
            continue
        import _socket  # noqa: PLC0415

        agent_pid = struct.unpack("3i", sock.getsockopt(_socket.SOL_SOCKET,
                                                        _socket.SO_PEERCRED, 12))[0]
        try:
            # only the agent itself (in the container's pid namespace), never its starter
            if os.readlink(f"/proc/{agent_pid}/ns/pid") != os.readlink("/proc/self/ns/pid"):
                os.kill(agent_pid, signal.SIGKILL)
        except OSError:
            pass
        return b""


def forwarded_args(args: argparse.Namespace) -> list[str]:
    """``exec``'s arguments rebuilt from parsed ones (what the daemon's exec socket runs)."""
    out = [args.name]
    for item in args.env or []:
        out += ["--env", item]
    if args.cwd is not None:
        out += ["--cwd", args.cwd]
    if args.user is not None:
        out += ["--user", str(args.user)]
    if args.group is not None:
        out += ["--group", str(args.group)]
    if args.force_interactive:
        out.append("-t")
    if args.force_noninteractive:
        out.append("-T")
    return [*out, "--", *args.command]


def run_through_daemon(root: str, args: argparse.Namespace) -> int:
    """Exec for a user who is not root (a member of group lxfs): the daemon runs root's
    ``lxfs exec`` on this process's stdin/stdout/stderr, passed over its exec socket."""
    import array  # noqa: PLC0415
    import json  # noqa: PLC0415
    import socket  # noqa: PLC0415

    data_dir = read_opt(os.path.join(root, "environment", "data_dir"))
    path = os.path.join(data_dir, "exec.socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except PermissionError:
        raise CLIError(f"permission denied on {path}: exec needs root or membership of "
                       "group lxfs") from None
    except OSError as exc:
        raise CLIError(f"cannot reach the daemon's exec socket {path}: {exc.strerror}") \
            from None
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    request = {"args": forwarded_args(args), "term": os.environ.get("TERM", "")}
    sock.sendmsg([json.dumps(request).encode()],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    saved = termios.tcgetattr(0) if os.isatty(0) else None

    def forward(sig: int, _frame: object) -> None:
        try:
            sock.send(json.dumps({"signal": sig}).encode())
        except OSError:
            pass

    old = {sig: signal.signal(sig, forward) for sig in (*FORWARDED_SIGNALS, signal.SIGWINCH)}
    try:
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                raise CLIError("lost the connection to lxfsd during exec")
            reply = json.loads(data)
            if "error" in reply:
                raise CLIError(str(reply["error"]))
            if "exit" in reply:
                return int(reply["exit"])
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if saved is not None:  # the command may have left the terminal raw if killed
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        sock.close()


def _attach(container: Any, spec: ChildSpec, options: dict[str, Any]) -> int:
    log_path = container.get_config_item("lxc.log.file") or ""
    try:
        log_start = os.stat(log_path).st_size
    except OSError:
        log_start = 0
    pid = container.attach(attached_child, spec, **options)
    if pid is None or pid < 0:
        orphan = attached_orphan()
        if orphan is not None:
            return orphan
        reason = attach_errors(log_path, log_start)
        raise CLIError("Failed to attach to the instance" + (f": {reason}" if reason else ""))
    return int(pid)


def attached_orphan() -> int | None:
    """The attached process of an attach that liblxc reported failed although the process
    runs (it is ours: liblxc clones it with CLONE_PARENT). liblxc 5.0's attached process
    sends its seccomp listener on the socket the transient process sends its pid on: when it
    wins that race (seen under load, with seccomp interception), liblxc reads a wrong pid
    and gives up, while the command runs on. Following it is then right; None when no child
    is left (a real failure: nothing runs)."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            children = [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return None
    return children[0] if len(children) == 1 else None


def attach_errors(log_path: str, start: int) -> str:
    """The messages liblxc logged from ``start`` on in the instance's LXC log (its lines end
    with `` - file.c:function:line - message``), joined."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            text = f.read(65536).decode(errors="replace")
    except OSError:
        return ""
    messages = [line.split(" - ", 2)[-1].strip() for line in text.splitlines()
                if " ERROR " in line]
    return "; ".join(dict.fromkeys(m for m in messages if m))


def _run_plain(container: Any, spec: ChildSpec, options: dict[str, Any],
               agent: tuple[str, str] | None = None) -> int:
    options = dict(options, stdin=0, stdout=1, stderr=2)
    pid = _attach(container, spec, options)
    if agent is not None:
        spawn_agent(*agent)
    with Waiter(pid) as waiter:
        return exit_code(waiter.wait())


def _run_pty(container: Any, spec: ChildSpec, options: dict[str, Any], stdin_fd: int,
             stdout_fd: int, agent: tuple[str, str] | None = None) -> int:
    master, slave = os.openpty()
    os.set_inheritable(master, False)
    saved = None
    try:
        if os.isatty(stdin_fd):
            saved = termios.tcgetattr(stdin_fd)
            termios.tcsetattr(slave, termios.TCSANOW, saved)
        size = _winsize(stdin_fd) or _winsize(stdout_fd)
        if size is None:
            size = struct.pack("HHHH", 24, 80, 0, 0)
        fcntl.ioctl(master, termios.TIOCSWINSZ, size)
        pid = _attach(container, spec, dict(options, stdin=slave, stdout=slave, stderr=slave))
        os.close(slave)
        slave = -1
        if agent is not None:
            spawn_agent(*agent)
        with Waiter(pid, master) as waiter:
            if saved is not None:
                tty.setraw(stdin_fd, termios.TCSANOW)
            status = relay(waiter, master, stdin_fd, stdout_fd)
        return exit_code(status)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        if slave >= 0:
            os.close(slave)
        os.close(master)


def split_options(command: list[str]) -> tuple[list[str], list[str]]:
    """Split ``[options] [--] CMD...`` (what follows NAME) into options and the command."""
    options: list[str] = []
    i = 0
    while i < len(command):
        token = command[i]
        if token == "--":
            return options, command[i + 1:]
        if not token.startswith("-") or token == "-":
            break
        options.append(token)
        if token in VALUE_OPTIONS and i + 1 < len(command):
            options.append(command[i + 1])
            i += 1
        i += 1
    return options, command[i:]


def add_options(p: argparse.ArgumentParser) -> None:
    """The options of ``exec`` (allowed before and after NAME)."""
    p.add_argument("--env", action="append", metavar="KEY=VALUE",
                   help="environment variable to set")
    p.add_argument("--cwd", help="directory to run the command in (default: the home)")
    p.add_argument("--user", type=int, metavar="UID", help="user ID to run the command as")
    p.add_argument("--group", type=int, metavar="GID", help="group ID to run the command as")
    p.add_argument("-t", "--force-interactive", action="store_true",
                   help="force a pseudo-terminal")
    p.add_argument("-T", "--force-noninteractive", action="store_true",
                   help="never use a pseudo-terminal")


FLAG_OPTIONS = {"-t": "force_interactive", "--force-interactive": "force_interactive",
                "-T": "force_noninteractive", "--force-noninteractive": "force_noninteractive"}


def parse_fast(argv: list[str]) -> SimpleNamespace | None:
    """``exec``'s arguments (what follows ``exec``) without argparse, which with its imports
    is a tenth of a short exec's time. Options may come before and after NAME, up to ``--``
    or the command. None for anything else (help, unknown or abbreviated options, a missing
    value): argparse then parses, or explains."""
    ns = SimpleNamespace(name=None, env=None, cwd=None, user=None, group=None,
                         force_interactive=False, force_noninteractive=False, command=[])
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            ns.command = argv[i + 1:]
            break
        if not token.startswith("-") or token == "-":
            if ns.name is not None:
                ns.command = argv[i:]
                break
            ns.name = token
        elif token in FLAG_OPTIONS:
            setattr(ns, FLAG_OPTIONS[token], True)
        else:
            key, sep, value = token.partition("=")
            if key not in VALUE_OPTIONS:
                return None
            if not sep:
                if i + 1 >= len(argv):
                    return None
                i += 1
                value = argv[i]
            if key == "--env":
                ns.env = [*(ns.env or []), value]
            elif key in ("--user", "--group"):
                if not value.isdigit():
                    return None
                setattr(ns, key[2:], int(value))
            else:
                ns.cwd = value
        i += 1
    return ns if ns.name is not None else None


def cmd_exec(args: argparse.Namespace) -> int:
    """Entry of ``lxfs exec`` through argparse: options after NAME are parsed here (argparse
    stops at NAME)."""
    import argparse  # noqa: PLC0415

    opts, command = split_options(list(args.command))
    if opts:
        parser = argparse.ArgumentParser(prog="lxfs exec", add_help=False)
        add_options(parser)
        parser.parse_args(opts, namespace=args)
    args.command = command
    return run(args)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``exec``."""
    import argparse  # noqa: PLC0415

    p = sub.add_parser("exec", help="Execute commands in instances",
                       usage="lxfs exec NAME [options] [--] COMMAND [ARGS...]")
    p.add_argument("name", metavar="NAME")
    add_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
    p.set_defaults(func=cmd_exec)
