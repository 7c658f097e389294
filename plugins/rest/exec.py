"""Exec and console over the REST bridge, as LXD 5.0 speaks them.

``POST /1.0/instances/NAME/exec`` runs a command the way the exec socket does: root's
``lxfs exec`` in a process of its own (its own session), on descriptors the daemon made.
Without a terminal those are three pipes, relayed to the websockets ``0``, ``1`` and ``2``;
with one (``interactive``) the slave of a pty allocated here (``lxfs exec -t`` then gives the
command a pty of its own and relays it in raw mode), relayed to websocket ``0``. The
``control`` websocket takes ``window-resize`` (the pty's size, then SIGWINCH to the helper,
which passes the size on) and ``signal`` (to the command's process group).

LXD's wire protocol, as the ``lxc`` 5.0 client and pylxd read it: data are binary messages; an
empty text message ends a stream (stdout and stderr when their pipe reaches EOF, stdin when
the client's input ends); the operation's ``metadata.return`` carries the exit code, set once
the output was sent; the ``control`` websocket is closed first, then the others. A client
that goes away (``control`` closed, or without ``control`` a message or a close on
``stdout``; interactive: websocket ``0`` closed) hangs the command up: SIGHUP, SIGKILL after
``HANGUP_GRACE`` seconds. Without ``wait-for-websocket`` the command runs in a ``task``
operation with stdin on /dev/null and, with ``record-output``, stdout and stderr in files
served at ``/1.0/instances/NAME/logs/exec-output/FILE``.

Starting Python and importing the exec code is most of a short exec's time, so one helper
waits ready (``HelperPool``): an interpreter with ``lxfs.cli.exec`` imported that receives its
arguments and descriptors over a socket and then runs ``lxfs exec`` as the command line would.

``POST /1.0/instances/NAME/console`` attaches websocket ``0`` to the container's console
through ``lxc-console`` on a pty of ours; ``GET``/``DELETE`` on the same path read and clear
the console log.
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import termios
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from lxfs.model import instance_key, split_instance_key

from .app import Context, Operation, read_object, route, sync
from .http import HttpError, Request, Response, WebSocket
from .projects import in_project, requested_project

if TYPE_CHECKING:
    from lxfs.api import Host
    from lxfs.model import Instance

log = logging.getLogger("lxfs.rest")

#: LXD's wait for an exec's websockets
WS_CONNECT_TIMEOUT = 5.0
#: seconds between SIGHUP and SIGKILL when the client went away
HANGUP_GRACE = 5.0
#: a detached console's ``lxc-console`` gets this long to exit before SIGKILL
CONSOLE_EXIT_GRACE = 2.0
#: what an exec waits at most for ``lxfs exec -t`` to put our pty in raw mode before it
#: writes the client's input to it (typed before that, input would be echoed)
RAW_WAIT = 5.0
READ_CHUNK = 128 * 1024
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: LXD adds these to the default PATH when the container has the first path
EXTRA_PATHS = {"/snap": "/snap/bin", "/etc/NIXOS": "/run/current-system/sw/bin"}
OUTPUT_DIR = "exec-output"
OUTPUT_NAME = re.compile(r"^exec_[0-9a-f-]{1,64}\.(stdout|stderr)$")
CONSOLE_LOG = "console.log"
CTRL_A = b"\x01"
#: signals sent to the helper itself while the command is not attached yet
EARLY_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                 signal.SIGUSR1, signal.SIGUSR2, signal.SIGKILL}


# --- requests ------------------------------------------------------------------------------

@dataclass
class ExecRequest:
    """``InstanceExecPost``, checked (pylxd sends ``null`` for unset fields)."""

    command: list[str]
    environment: dict[str, str]
    interactive: bool = False
    wait_for_ws: bool = False
    record_output: bool = False
    width: int = 0
    height: int = 0
    user: int = 0
    group: int = 0
    cwd: str = ""


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise HttpError(400, f"{key}: expected a boolean")
    return value


def _integer(body: dict[str, Any], key: str, low: int, high: int) -> int:
    value = body.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HttpError(400, f"{key}: expected an integer from {low} to {high}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or "\0" in value:
        raise HttpError(400, f"{what}: expected a string without NUL bytes")
    return value


def parse_exec(body: dict[str, Any]) -> ExecRequest:
    command = body.get("command")
    if not isinstance(command, list) or not command:
        raise HttpError(400, "command: expected a non-empty list of strings")
    env = body.get("environment") or {}
    if not isinstance(env, dict):
        raise HttpError(400, "environment: expected an object of strings")
    for key, value in env.items():
        if not key or "=" in key or "\0" in key:
            raise HttpError(400, f"environment: invalid variable name {key!r}")
        _text(value, f"environment {key}")
    return ExecRequest(
        command=[_text(arg, "command") for arg in command],
        environment=dict(env),
        interactive=_flag(body, "interactive"),
        wait_for_ws=_flag(body, "wait-for-websocket"),
        record_output=_flag(body, "record-output"),
        width=_integer(body, "width", -1 << 31, (1 << 31) - 1),
        height=_integer(body, "height", -1 << 31, (1 << 31) - 1),
        user=_integer(body, "user", 0, (1 << 32) - 1),
        group=_integer(body, "group", 0, (1 << 32) - 1),
        cwd=_text(body.get("cwd") or "", "cwd"),
    )


def exec_environment(inst: Instance, req: ExecRequest, init_pid: int) -> dict[str, str]:
    """LXD's environment: the request's, then the instance's ``environment.*`` keys, then
    the defaults (PATH, HOME and USER for root, LANG)."""
    env = dict(req.environment)
    for key, value in inst.expanded_config.items():
        if key.startswith("environment.") and key[len("environment."):]:
            env.setdefault(key[len("environment."):], value)
    if "PATH" not in env:
        path = DEFAULT_PATH
        for probe, extra in EXTRA_PATHS.items():
            if init_pid and os.path.exists(f"/proc/{init_pid}/root{probe}"):
                path += ":" + extra
        env["PATH"] = path
    if req.user == 0:
        env.setdefault("HOME", "/root")
        env.setdefault("USER", "root")
    env.setdefault("LANG", "C.UTF-8")
    return env


def exec_arguments(name: str, req: ExecRequest, env: dict[str, str], pty: bool) -> list[str]:
    """``lxfs exec``'s arguments (what follows ``exec``) for a request."""
    args = [name]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    if req.cwd:
        args += ["--cwd", req.cwd]
    if req.user:
        args += ["--user", str(req.user)]
    if req.group:
        args += ["--group", str(req.group)]
    return [*args, "-t" if pty else "-T", "--", *req.command]


def _instance(ctx: Context, request: Request) -> Instance:
    """The instance the request names (in its ``?project=``), or LXD's 404."""
    project = requested_project(ctx, request)
    inst = ctx.host.instance(instance_key(project, request.params["name"]))
    if inst is None:
        raise HttpError(404, "Instance not found")
    return inst


async def _running_instance(ctx: Context, request: Request) -> Instance:
    """The instance the request names, which must be running (LXD's 400 otherwise)."""
    inst = _instance(ctx, request)
    state = await ctx.ops.state(inst.name)
    if state == "FROZEN":
        raise HttpError(400, "Instance is frozen")
    if state != "RUNNING":
        raise HttpError(400, "Instance is not running")
    return inst


def _resources(key: str) -> dict[str, list[str]]:
    """An operation's resources; ``key``: the instance's key (its project in the URLs)."""
    project, name = split_instance_key(key)
    return {collection: [in_project(project, f"/1.0/{collection}/{name}")]
            for collection in ("containers", "instances")}


# --- the helper process ----------------------------------------------------------------------

#: the helper: imports the exec code (on idle CPU time only, SCHED_IDLE: a spare warms up
#: without taking a CPU from a running exec; the daemon gives it back a normal policy when it
#: takes it, ready or not), waits for ``lxfs exec``'s arguments (JSON) and three descriptors
#: on the socket
#: named by argv[1], puts them on 0, 1 and 2 and runs the CLI (told the container directory
#: and given the whole environment: it reads nothing from the mount)
HELPER_BOOTSTRAP = """\
import gc, os, socket, sys
try:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
except OSError:
    pass
failure = None
try:
    import json
    import _lxc
    import lxfs.cli.exec
    from lxfs.cli import main
except BaseException as exc:
    failure = exc
gc.freeze()
sock = socket.socket(fileno=int(sys.argv[1]))
try:
    message, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 4)
except OSError:
    os._exit(125)
if not message or len(fds) not in (3, 4):
    os._exit(125)
try:
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
except OSError:
    pass
sock.close()
gate = fds[3] if len(fds) == 4 else -1
fds = fds[:3]
for target, fd in enumerate(fds):
    os.dup2(fd, target)
for fd in set(fds) - {0, 1, 2}:
    os.close(fd)
if gate >= 0 and failure is None:
    if gate <= 2:  # cannot be (0-2 were taken when it came), but never wait on a std fd
        os._exit(125)
    lxfs.cli.exec.GATE_FD = gate
request = json.loads(message)
if failure is None:
    lxfs.cli.exec.PRESET_LXC_PATH = request["lxc_path"]
if failure is not None:
    sys.stderr.write(f"Error: cannot start lxfs exec: {failure}\\n")
    sys.stderr.flush()
    os._exit(125)
code = main(["exec", *request["args"]], local_only=True)
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except OSError:
        pass
os._exit(code)  # the interpreter's finalisation would only delay the exit status
"""


@dataclass
class Helper:
    proc: trio.Process
    sock: trio.socket.SocketType


class HelperPool:
    """One helper started ahead of the next exec; another is started once it is taken."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._spare: Helper | None = None
        self._changed = trio.Event()

    async def spawn(self) -> Helper:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "LANG": "C.UTF-8",
                   "LXFS_MOUNT": str(self.host.mount)}
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-I", "-c", HELPER_BOOTSTRAP, str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), env=env,
                start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return Helper(proc, trio.socket.from_stdlib_socket(ours))

    async def keep(self) -> None:
        """Keep one spare (runs in the REST server's nursery)."""
        try:
            while True:
                if self._spare is None:
                    try:
                        self._spare = await self.spawn()
                    except Exception as exc:  # noqa: BLE001 - never end the REST server
                        log.error("exec: cannot start a helper: %s", exc)
                        await trio.sleep(5)
                        continue
                    self._wake()
                await self._changed.wait()
        finally:
            spare, self._spare = self._spare, None
            if spare is not None:
                with trio.CancelScope(shield=True):
                    await _discard(spare)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def take(self) -> Helper:
        spare, self._spare = self._spare, None
        self._wake()
        if spare is not None and spare.proc.returncode is None:
            return spare
        if spare is not None:
            await _discard(spare)
        return await self.spawn()


async def _discard(helper: Helper) -> None:
    helper.sock.close()  # the helper exits when its socket closes
    with contextlib.suppress(ProcessLookupError):
        helper.proc.kill()
    with trio.move_on_after(5):
        await helper.proc.wait()


_pools: weakref.WeakKeyDictionary[Context, HelperPool] = weakref.WeakKeyDictionary()


def helper_pool(ctx: Context) -> HelperPool:
    pool = _pools.get(ctx)
    if pool is None:
        pool = _pools[ctx] = HelperPool(ctx.host)
        ctx.nursery.start_soon(pool.keep)
    return pool


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def _group_members(pgid: int) -> list[int]:
    """The processes of a process group (a walk of /proc: call it in a thread)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2:].split()
        except (OSError, ValueError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def _killpg(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


class Running:
    """A command: the helper running root's ``lxfs exec`` (in a session of its own) and, once
    attached, the command, its child."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.exited = trio.Event()
        self.code: int | None = None
        #: process groups to hang up: the helper's, and the command's once seen
        self.groups = {proc.pid}

    async def wait(self) -> int:
        status = await self.proc.wait()
        self.code = 128 - status if status < 0 else status
        self.exited.set()
        return self.code

    def command_pid(self) -> int | None:
        children = _children(self.proc.pid)
        return children[0] if children else None

    async def signal(self, signum: int) -> None:
        """Deliver a signal to the command's process group (not to the helper)."""
        if self.exited.is_set():
            return
        pid = self.command_pid()
        try:
            pgid = os.getpgid(pid) if pid else 0
        except ProcessLookupError:
            pgid = 0
        if not pgid:
            if signum in EARLY_SIGNALS:
                _killpg(self.proc.pid, signum)
            return
        if pgid != self.proc.pid:  # with a pty the command leads a session of its own
            self.groups.add(pgid)
            _killpg(pgid, signum)
            return
        for member in await trio.to_thread.run_sync(_group_members, pgid):
            if member != self.proc.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(member, signum)

    def resize(self) -> None:
        """Tell the helper its terminal changed size (it passes the size on)."""
        if not self.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGWINCH)

    async def hang_up(self) -> None:
        """SIGHUP to the command's process group, SIGKILL after ``HANGUP_GRACE``."""
        if self.exited.is_set():
            return
        pid = self.command_pid()
        with contextlib.suppress(ProcessLookupError):
            if pid:
                self.groups.add(os.getpgid(pid))
        for pgid in self.groups:
            _killpg(pgid, signal.SIGHUP)
        with trio.move_on_after(HANGUP_GRACE):
            await self.exited.wait()
        self.kill()

    def kill(self) -> None:
        if not self.exited.is_set():
            for pgid in self.groups:
                _killpg(pgid, signal.SIGKILL)


async def start_command(ctx: Context, args: list[str], fds: tuple[int, ...]) -> Running:
    """Run ``lxfs exec ARGS`` on ``fds`` (stdin, stdout, stderr and, optionally, the gate:
    see ``lxfs.cli.exec.GATE_FD``) through a helper."""
    pool = helper_pool(ctx)
    message = json.dumps({"args": args, "lxc_path": _lxc_path(ctx)}).encode()
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
    for attempt in range(2):
        helper = await pool.take() if attempt == 0 else await pool.spawn()
        with contextlib.suppress(OSError):  # a spare still warming up continues at full speed
            os.sched_setscheduler(helper.proc.pid, os.SCHED_OTHER, os.sched_param(0))
        try:
            await helper.sock.sendmsg([message], rights)
        except OSError as exc:  # the spare died: start one now
            log.warning("exec: helper %d unusable (%s)", helper.proc.pid, exc)
            await _discard(helper)
            continue
        finally:
            helper.sock.close()
        return Running(helper.proc)
    raise HttpError(500, "cannot start lxfs exec")


# --- websocket plumbing ------------------------------------------------------------------------

async def _wait_any(*events: trio.Event) -> None:
    async def one(event: trio.Event, scope: trio.CancelScope) -> None:
        await event.wait()
        scope.cancel()

    async with trio.open_nursery() as nursery:
        for event in events:
            nursery.start_soon(one, event, nursery.cancel_scope)


async def _send(ws: WebSocket | None, data: bytes | str) -> bool:
    """Send a message; False once the peer is gone."""
    if ws is None or ws.closed:
        return False
    try:
        if isinstance(data, str):
            await ws.send_text(data)
        else:
            await ws.send_bytes(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


async def _receive(ws: WebSocket) -> str | bytes | None:
    try:
        return await ws.receive()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return None


def _pty_size(fd: int, width: int, height: int) -> None:
    if width > 0 and height > 0:
        with contextlib.suppress(OSError):
            termios.tcsetwinsize(fd, (height, width))


async def _until_raw(master: int, exited: trio.Event) -> None:
    """Wait until the program on the pty (``lxfs exec -t``, ``lxc-console``) put it in raw
    mode: typed earlier, input would be echoed and edited by the pty's line discipline
    instead of reaching the program as it is."""
    with trio.move_on_after(RAW_WAIT):
        while not exited.is_set():
            try:
                if not termios.tcgetattr(master)[3] & termios.ICANON:
                    return
            except termios.error:
                return
            await trio.sleep(0.002)


def _control_message(message: str | bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(message)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _window_size(doc: dict[str, Any]) -> tuple[int, int] | None:
    args = doc.get("args") or {}
    try:
        width, height = int(args["width"]), int(args["height"])
    except (KeyError, TypeError, ValueError):
        return None
    return (width, height) if 0 < width < 1 << 16 and 0 < height < 1 << 16 else None


class Session:
    """A websocket operation: its secrets, the connections as they arrive, the streams and
    the cleanup. Subclasses run the command or the console."""

    def __init__(self, ctx: Context, op: Operation, names: list[str], required: list[str]
                 ) -> None:
        self.ctx = ctx
        self.op = op
        self.required = required
        self.channels: dict[str, trio.MemoryReceiveChannel[WebSocket]] = {}
        self.fds: dict[str, str] = {}
        for fd in names:
            self.fds[fd], self.channels[fd] = ctx.new_secret(op)
        self.conns: dict[str, WebSocket] = {}
        self.arrived = {fd: trio.Event() for fd in names}
        self.streams: list[trio.lowlevel.FdStream] = []
        self.fds_to_close: list[int] = []

    async def _accept(self, fd: str) -> None:
        with contextlib.suppress(trio.EndOfChannel, trio.ClosedResourceError):
            self.conns[fd] = await self.channels[fd].receive()
            self.arrived[fd].set()

    async def run(self, op: Operation) -> None:
        failure: HttpError | None = None
        try:
            async with trio.open_nursery() as nursery:
                for fd in self.channels:
                    nursery.start_soon(self._accept, fd)
                failure = await self.prepare()
                if failure is None:
                    with trio.move_on_after(WS_CONNECT_TIMEOUT):
                        for fd in self.required:
                            await self.arrived[fd].wait()
                    if all(self.arrived[fd].is_set() for fd in self.required):
                        failure = await self.serve(nursery)
                    else:
                        failure = HttpError(400, "Timed out waiting for websockets to connect")
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.cleanup()
        if failure is not None:
            raise failure

    async def prepare(self) -> HttpError | None:
        """What can be done while the client connects its websockets."""
        return None

    async def serve(self, nursery: trio.Nursery) -> HttpError | None:
        raise NotImplementedError

    def stream(self, fd: int) -> trio.lowlevel.FdStream:
        stream = trio.lowlevel.FdStream(fd)
        self.streams.append(stream)
        return stream

    async def close_ws(self, *names: str) -> None:
        for name in names or tuple(self.conns):
            ws = self.conns.get(name)
            if ws is not None and not ws.closed:
                with trio.move_on_after(1):
                    await ws.close()

    async def cleanup(self) -> None:
        """Close everything (shielded: runs on cancellation too); later connections to the
        secrets are refused."""
        for secret in self.fds.values():
            self.op.secrets.pop(secret, None)
        for name, channel in self.channels.items():
            try:  # a connection that came as the session ended
                late = channel.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                pass
            else:
                self.conns.setdefault(name, late)
                if self.conns[name] is not late:
                    with trio.move_on_after(1):
                        await late.close()
            channel.close()
        await self.close_ws()
        for stream in self.streams:
            with contextlib.suppress(OSError):
                stream.close()
        for fd in self.fds_to_close:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds_to_close.clear()


class ExecSession(Session):
    """``POST /1.0/instances/NAME/exec`` with ``wait-for-websocket``."""

    def __init__(self, ctx: Context, op: Operation, name: str, req: ExecRequest,
                 env: dict[str, str]) -> None:
        names = ["0", "control"] if req.interactive else ["0", "1", "2", "control"]
        # LXD: without a terminal the control connection is optional (old clients)
        required = ["0", "control"] if req.interactive else ["0", "1", "2"]
        super().__init__(ctx, op, names, required)
        self.name = name
        self.req = req
        self.env = env
        self.running: Running | None = None
        self.client_gone = trio.Event()
        self.outputs_done = trio.Event()
        self._outputs_left = 1 if req.interactive else 2
        self._raw = False
        self.master: trio.lowlevel.FdStream | None = None
        self.pipes: tuple[trio.lowlevel.FdStream, ...] = ()
        self.gate = -1  # the write end of the gate (see ``prepare``)

    def metadata(self) -> dict[str, Any]:
        order = ["0", "1", "2", "control"]
        return {"command": self.req.command, "environment": self.env,
                "fds": {k: self.fds[k] for k in order if k in self.fds},
                "interactive": self.req.interactive}

    def _gone(self, why: str) -> None:
        """The client went away: hang the command up (if it still runs) and stop waiting
        for output nobody reads."""
        if self.client_gone.is_set():
            return
        if self.running is not None and not self.running.exited.is_set():
            log.info("exec in %s: client gone (%s): hanging up %s", self.name, why,
                     self.req.command[0])
        self.client_gone.set()

    def _output_done(self) -> None:
        self._outputs_left -= 1
        if self._outputs_left <= 0:
            self.outputs_done.set()

    async def prepare(self) -> HttpError | None:
        """Start ``lxfs exec`` at once, its command held at the gate: the attach (cgroup
        moves, namespaces, the seccomp filter: 5 to 20 ms) overlaps the client's websocket
        connections, and the command still runs only once they are there (LXD's
        ``wait-for-websocket``). A client that never connects closes the gate: the attached
        child exits without running anything."""
        req = self.req
        if req.interactive:
            master, slave = os.openpty()
            os.set_inheritable(master, False)
            os.set_inheritable(slave, False)
            self.fds_to_close.append(slave)
            _pty_size(master, req.width, req.height)
            self.master = self.stream(master)
            child_fds = (slave, slave, slave)
        else:
            pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(3)]
            self.fds_to_close += [pipes[0][0], pipes[1][1], pipes[2][1]]
            self.pipes = (self.stream(pipes[0][1]), self.stream(pipes[1][0]),
                          self.stream(pipes[2][0]))
            child_fds = (pipes[0][0], pipes[1][1], pipes[2][1])
        gate_read, self.gate = os.pipe2(os.O_CLOEXEC)
        self.fds_to_close += [gate_read, self.gate]
        args = exec_arguments(self.name, req, self.env, req.interactive)
        try:
            self.running = await start_command(self.ctx, args, (*child_fds, gate_read))
        except HttpError as exc:
            return exc
        except OSError as exc:
            return HttpError(500, f"cannot start lxfs exec: {exc.strerror}")
        finally:  # the helper has its copies: ours would hold the streams open
            for fd in (*child_fds, gate_read):
                if fd in self.fds_to_close:
                    self.fds_to_close.remove(fd)
                    os.close(fd)
        return None

    async def serve(self, nursery: trio.Nursery) -> HttpError | None:
        req = self.req
        assert self.running is not None
        try:
            os.write(self.gate, b"1")
        except OSError:  # the helper is gone (it failed before attaching): its output says
            pass
        self.ctx.host.events.lifecycle("instance-exec", self.ctx.ops.instance_url(self.name),
                                       command=req.command)
        if req.interactive:
            nursery.start_soon(self._pty_out, self.master)
            nursery.start_soon(self._pty_in, self.master)
        else:
            stdin, stdout, stderr = self.pipes
            nursery.start_soon(self._pipe_in, stdin)
            nursery.start_soon(self._pipe_out, "1", stdout)
            nursery.start_soon(self._pipe_out, "2", stderr)
        nursery.start_soon(self._control, self.master if req.interactive else None)
        nursery.start_soon(self._hang_up_when_gone)
        code = await self.running.wait()
        await _wait_any(self.outputs_done, self.client_gone)
        await self.close_ws("control")
        self.op.metadata = {**self.metadata(), "return": code}
        await self.close_ws()
        return None

    async def cleanup(self) -> None:
        if self.running is not None:
            self.running.kill()
            with trio.move_on_after(2):
                await self.running.wait()
        await super().cleanup()

    async def _hang_up_when_gone(self) -> None:
        await self.client_gone.wait()
        assert self.running is not None
        await self.running.hang_up()

    # --- without a terminal ----------------------------------------------------------------

    async def _pipe_in(self, stdin: trio.lowlevel.FdStream) -> None:
        """Websocket 0 to the command's stdin; a text message or a close is the end."""
        ws = self.conns["0"]
        open_ = True
        while True:
            message = await _receive(ws)
            if message is None or isinstance(message, str):
                break
            if message and open_:
                try:
                    await stdin.send_all(message)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    open_ = False  # the command closed its stdin: drop the rest
        await stdin.aclose()
        while message is not None:  # answer pings, notice the close
            message = await _receive(ws)

    async def _pipe_out(self, fd: str, stream: trio.lowlevel.FdStream) -> None:
        """stdout or stderr to its websocket, then the end-of-stream message."""
        ws: WebSocket | None = self.conns[fd]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_output_ws, fd)
            while True:
                try:
                    data = await stream.receive_some(READ_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    break
                if not await _send(ws, data):
                    ws = None  # the client is gone: keep the pipe drained
            await _send(ws, "")
            self._output_done()
            nursery.cancel_scope.cancel()

    async def _watch_output_ws(self, fd: str) -> None:
        """Clients send nothing on stdout and stderr: without a control connection, a
        message or a close there means the client went away (as LXD)."""
        ws = self.conns[fd]
        while True:
            message = await _receive(ws)
            if not self.arrived["control"].is_set() and fd == "1":
                self._gone(f"websocket {fd} {'closed' if message is None else 'written'}")
            if message is None:
                return

    # --- with a terminal -------------------------------------------------------------------

    async def _pty_out(self, master: trio.lowlevel.FdStream) -> None:
        ws: WebSocket | None = self.conns["0"]
        while True:
            try:
                data = await master.receive_some(READ_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""  # EIO: every holder of the slave closed it
            if not data:
                break
            if not await _send(ws, data):
                ws = None
        await _send(ws, "")
        self._output_done()

    async def _pty_in(self, master: trio.lowlevel.FdStream) -> None:
        ws = self.conns["0"]
        last = b"\n"
        while True:
            message = await _receive(ws)
            if message is None:
                self._gone("websocket 0 closed")
                return
            if isinstance(message, str):
                # the client's input ended: ^D, as a terminal would send it (twice after
                # an unfinished line)
                message = b"\x04" if last == b"\n" else b"\x04\x04"
            if not message:
                continue
            last = message[-1:]
            if not self._raw:
                assert self.running is not None
                await _until_raw(master.fileno(), self.running.exited)
                self._raw = True
            try:
                await master.send_all(message)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    # --- control ---------------------------------------------------------------------------

    async def _control(self, master: trio.lowlevel.FdStream | None) -> None:
        await self.arrived["control"].wait()
        ws = self.conns["control"]
        assert self.running is not None
        while True:
            message = await _receive(ws)
            if message is None:
                self._gone("control closed")
                return
            doc = _control_message(message)
            if doc is None:
                continue
            if doc.get("command") == "window-resize" and master is not None:
                size = _window_size(doc)
                if size is not None:
                    _pty_size(master.fileno(), *size)
                    self.running.resize()
            elif doc.get("command") == "signal":
                signum = doc.get("signal")
                if isinstance(signum, int) and 0 < signum < signal.NSIG:
                    await self.running.signal(signum)


# --- exec endpoints ----------------------------------------------------------------------------

@route("POST", "/1.0/instances/{name}/exec")
@route("POST", "/1.0/containers/{name}/exec")
async def post_exec(ctx: Context, request: Request) -> Response:
    """Run a command in an instance (a websocket operation, or a task without websockets)."""
    req = parse_exec(await read_object(request))
    inst = await _running_instance(ctx, request)
    name = inst.name
    env = exec_environment(inst, req, ctx.host.instance_pid(inst))
    if req.wait_for_ws:
        op = Operation("Executing command", "websocket", resources=_resources(name))
        session = ExecSession(ctx, op, name, req, env)
        op.metadata = session.metadata()
        return ctx.start_operation(op, session.run)
    op = Operation("Executing command", "task", resources=_resources(name))
    return ctx.start_operation(op, lambda op: _exec_task(ctx, op, inst, req, env))


def _output_dir(ctx: Context, inst: Instance) -> Path:
    path = ctx.host.instance_dir(inst, "rest") / OUTPUT_DIR
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _open_outputs(ctx: Context, inst: Instance, op_id: str) -> tuple[int, int]:
    directory = _output_dir(ctx, inst)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    out = os.open(directory / f"exec_{op_id}.stdout", flags, 0o600)
    try:
        err = os.open(directory / f"exec_{op_id}.stderr", flags, 0o600)
    except OSError:
        os.close(out)
        raise
    return out, err


async def _exec_task(ctx: Context, op: Operation, inst: Instance, req: ExecRequest,
                     env: dict[str, str]) -> None:
    """Without websockets (``wait-for-websocket: false``): stdin is /dev/null, stdout and
    stderr go to files with ``record-output``, to /dev/null otherwise."""
    metadata: dict[str, Any] = {}
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    fds = [null]
    try:
        if req.record_output:
            out, err = await trio.to_thread.run_sync(_open_outputs, ctx, inst, op.id)
            fds += [out, err]
            base = f"/1.0/instances/{inst.name}/logs/{OUTPUT_DIR}"
            metadata["output"] = {"1": f"{base}/exec_{op.id}.stdout",
                                  "2": f"{base}/exec_{op.id}.stderr"}
        else:
            out = err = null
        running = await start_command(ctx, exec_arguments(inst.name, req, env, False),
                                      (null, out, err))
    finally:
        for fd in fds:
            os.close(fd)
    ctx.host.events.lifecycle("instance-exec", ctx.ops.instance_url(inst.name),
                              command=req.command)
    try:
        metadata["return"] = await running.wait()
    finally:
        if not running.exited.is_set():  # cancelled (the daemon stops): leave nothing
            running.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await running.wait()
    op.metadata = metadata


def _output_file(ctx: Context, request: Request) -> Path:
    file = request.params["file"]
    inst = _instance(ctx, request)
    if not OUTPUT_NAME.match(file):
        raise HttpError(404, "not found")
    return ctx.host.instance_dir(inst, "rest") / OUTPUT_DIR / file


@route("GET", "/1.0/instances/{name}/logs/exec-output/{file}")
@route("GET", "/1.0/containers/{name}/logs/exec-output/{file}")
async def get_exec_output(ctx: Context, request: Request) -> Response:
    """A recorded stdout or stderr of an exec (``record-output``)."""
    path = _output_file(ctx, request)
    try:
        f = await trio.open_file(path, "rb")
    except FileNotFoundError:
        raise HttpError(404, "not found") from None

    async def body() -> Any:
        async with f:
            while chunk := await f.read(READ_CHUNK):
                yield chunk

    ctx.host.events.lifecycle("instance-log-retrieved",
                              in_project(requested_project(ctx, request), request.path))
    return Response(200, body(), [("Content-Disposition", f"inline;filename={path.name}")],
                    content_type="application/octet-stream")


@route("DELETE", "/1.0/instances/{name}/logs/exec-output/{file}")
@route("DELETE", "/1.0/containers/{name}/logs/exec-output/{file}")
async def delete_exec_output(ctx: Context, request: Request) -> Response:
    """Delete a recorded output."""
    path = _output_file(ctx, request)
    try:
        await trio.to_thread.run_sync(path.unlink)
    except FileNotFoundError:
        raise HttpError(404, "not found") from None
    ctx.host.events.lifecycle("instance-log-deleted",
                              in_project(requested_project(ctx, request), request.path))
    return sync(None)


# --- the console -------------------------------------------------------------------------------

class ConsoleSession(Session):
    """``POST /1.0/instances/NAME/console``: websocket ``0`` to ``lxc-console`` on a pty of
    ours, ``control`` for window sizes; closing either detaches."""

    def __init__(self, ctx: Context, op: Operation, name: str, lxc_path: str, width: int,
                 height: int) -> None:
        super().__init__(ctx, op, ["0", "control"], ["0"])
        self.name = name
        self.lxc_path = lxc_path
        self.width, self.height = width, height
        self.proc: trio.Process | None = None
        self.detach = trio.Event()
        self.exited = trio.Event()
        self._raw = False
        self._errors = bytearray()

    async def serve(self, nursery: trio.Nursery) -> HttpError | None:
        master, slave = os.openpty()
        os.set_inheritable(master, False)
        self.fds_to_close.append(slave)
        _pty_size(master, self.width, self.height)
        master_stream = self.stream(master)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        errors = self.stream(err_r)
        # lxc-console's escape (ctrl+a) stays on: the relay doubles ctrl+a, which passes it
        # as itself, and detaches with ctrl+a q
        command = ["lxc-console", "-P", self.lxc_path, "-n", self.name, "-t", "0"]
        try:
            self.proc = await trio.lowlevel.open_process(
                command, stdin=slave, stdout=slave, stderr=err_w, start_new_session=True)
        except OSError as exc:
            return HttpError(500, f"cannot run lxc-console: {exc.strerror}")
        finally:
            os.close(err_w)
            self.fds_to_close.remove(slave)
            os.close(slave)
        self.ctx.host.events.lifecycle("instance-console", self.ctx.ops.instance_url(self.name),
                                       type="console")
        nursery.start_soon(self._collect_errors, errors)
        nursery.start_soon(self._console_in, master_stream)
        nursery.start_soon(self._control, master)
        done = trio.Event()
        nursery.start_soon(self._console_out, master_stream, done)
        nursery.start_soon(self._detach_when_asked, master_stream)
        code = await self.proc.wait()
        self.exited.set()
        with trio.move_on_after(2):
            await done.wait()
        await self.close_ws()
        if code != 0 and not self.detach.is_set():
            message = self._errors.decode(errors="replace").strip().splitlines()
            return HttpError(400, message[-1] if message else
                             f"lxc-console exited with {code}")
        return None

    async def cleanup(self) -> None:
        if self.proc is not None and self.proc.returncode is None:  # cancelled
            _killpg(self.proc.pid, signal.SIGKILL)
            with trio.move_on_after(2):
                await self.proc.wait()
        await super().cleanup()

    async def _collect_errors(self, stream: trio.lowlevel.FdStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await stream.receive_some(4096):
                self._errors = (self._errors + data)[-4096:]

    async def _console_out(self, master: trio.lowlevel.FdStream, done: trio.Event) -> None:
        ws: WebSocket | None = self.conns["0"]
        while True:
            try:
                data = await master.receive_some(READ_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                break
            if not await _send(ws, data):
                ws = None
        # as LXD: a carriage return, then the end of the stream
        if await _send(ws, b"\r"):
            await _send(ws, "")
        done.set()

    async def _console_in(self, master: trio.lowlevel.FdStream) -> None:
        ws = self.conns["0"]
        while True:
            message = await _receive(ws)
            if message is None or isinstance(message, str):
                self.detach.set()
                return
            if not message:
                continue
            if not self._raw:
                await _until_raw(master.fileno(), self.exited)
                self._raw = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await master.send_all(message.replace(CTRL_A, CTRL_A + CTRL_A))

    async def _control(self, master: int) -> None:
        await self.arrived["control"].wait()
        ws = self.conns["control"]
        while True:
            message = await _receive(ws)
            if message is None:
                self.detach.set()
                return
            doc = _control_message(message)
            size = _window_size(doc) if doc and doc.get("command") == "window-resize" \
                else None
            if size is not None and self.proc is not None and not self.exited.is_set():
                _pty_size(master, *size)
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGWINCH)

    async def _detach_when_asked(self, master: trio.lowlevel.FdStream) -> None:
        await self.detach.wait()
        assert self.proc is not None
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await master.send_all(CTRL_A + b"q")  # lxc-console's own detach
        with trio.move_on_after(CONSOLE_EXIT_GRACE):
            await self.exited.wait()
        if self.proc.returncode is None:
            _killpg(self.proc.pid, signal.SIGKILL)


def _lxc_path(ctx: Context) -> str:
    lxc_path = ctx.ops.environment().get("lxc_path", "")
    if not lxc_path:
        raise HttpError(400, "Instance is not container type")
    return lxc_path


@route("POST", "/1.0/instances/{name}/console")
@route("POST", "/1.0/containers/{name}/console")
async def post_console(ctx: Context, request: Request) -> Response:
    """Attach to an instance's console (websockets ``0`` and ``control``)."""
    body = await read_object(request)
    kind = body.get("type") or "console"
    if kind not in ("console", "vga"):
        raise HttpError(400, f'Unknown console type "{kind}"')
    name = _instance(ctx, request).name
    if kind == "vga":
        raise HttpError(400, "VGA console is only supported by virtual machines")
    width, height = _integer(body, "width", -1 << 31, (1 << 31) - 1), \
        _integer(body, "height", -1 << 31, (1 << 31) - 1)
    await _running_instance(ctx, request)
    op = Operation("Showing console", "websocket", resources=_resources(name))
    session = ConsoleSession(ctx, op, name, _lxc_path(ctx), width, height)
    op.metadata = {"fds": {"0": session.fds["0"], "control": session.fds["control"]}}
    return ctx.start_operation(op, session.run)


def _console_log_path(ctx: Context, name: str) -> Path:
    return Path(_lxc_path(ctx)) / name / CONSOLE_LOG


@route("GET", "/1.0/instances/{name}/console")
@route("GET", "/1.0/containers/{name}/console")
async def get_console_log(ctx: Context, request: Request) -> Response:
    """The console log (what the instance wrote to its console)."""
    name = _instance(ctx, request).name
    path = _console_log_path(ctx, name)

    def read() -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return b""

    data = await trio.to_thread.run_sync(read)
    ctx.host.events.lifecycle("instance-console-retrieved", ctx.ops.instance_url(name))
    return Response(200, data, content_type="application/octet-stream")


@route("DELETE", "/1.0/instances/{name}/console")
@route("DELETE", "/1.0/containers/{name}/console")
async def delete_console_log(ctx: Context, request: Request) -> Response:
    """Clear the console log (LXC appends to it, so it can be truncated while it runs)."""
    name = _instance(ctx, request).name
    path = _console_log_path(ctx, name)
    running = await ctx.ops.state(name) in ("RUNNING", "FROZEN")

    def truncate() -> None:
        try:
            if not path.lstat().st_mode & 0o100000 or path.is_symlink():
                raise HttpError(400, "The console log is not a regular file")
        except FileNotFoundError:
            if running:  # nothing written yet: nothing to clear
                return
            raise HttpError(404, "not found") from None  # as LXD for a stopped instance
        os.truncate(path, 0)

    await trio.to_thread.run_sync(truncate)
    ctx.host.events.lifecycle("instance-console-reset", ctx.ops.instance_url(name))
    return sync(None)
