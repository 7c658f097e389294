"""``lxfs exec`` for the access group: the daemon runs the command for users who are not root.

Attaching to a container (joining its namespaces) needs root, so root's ``lxfs exec`` attaches
by itself. A member of the access group (group ``lxfs``) connects instead to
``DATA_DIR/exec.socket`` (mode 0660, root and the group), passes its standard input, output
and error (SCM_RIGHTS) with the exec arguments, and the daemon runs root's ``lxfs exec`` on
those very descriptors: data never goes through the daemon, terminals work as for root (a pty
in the container, raw mode on the caller's terminal), and the exit status comes back.

Protocol (SOCK_SEQPACKET, one JSON object per message):

- client → daemon, first message, with three descriptors: ``{"args": [...], "term": "..."}``
  where ``args`` are ``lxfs exec``'s arguments (NAME, options, ``--``, command);
- client → daemon: ``{"signal": N}`` for each signal the client receives (INT, TERM, HUP,
  QUIT, USR1, USR2, WINCH), sent to the command's process group as a terminal would;
- daemon → client: ``{"exit": N}`` once the command ended, or ``{"error": "..."}``.

A client that goes away hangs up its command (SIGHUP, then SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import socket
import struct
import sys
from typing import Any

import trio

from lxfs import hookimpl
from lxfs.api import Host, may_drive, peer_credentials

log = logging.getLogger("lxfs.exec")

SOCKET_NAME = "exec.socket"
#: root's ``lxfs exec`` on this host's instance, whatever default remote root's own
#: configuration names
LOCAL_EXEC = "import sys; from lxfs.cli import main; sys.exit(main(sys.argv[1:], local_only=True))"
#: signals a client may forward (what a terminal or a user sends to a foreground command)
ALLOWED_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                   signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH}
HANGUP_GRACE = 10.0  # seconds between SIGHUP and SIGKILL when the client is gone
MAX_MESSAGE = 1 << 20


@hookimpl
def lxfs_services(host: Host) -> list[Any]:
    return [functools.partial(serve, host)]


async def serve(host: Host, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                ) -> None:
    """Listen on ``DATA_DIR/exec.socket`` until cancelled."""
    path = host.data_dir / SOCKET_NAME
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        try:
            path.unlink(missing_ok=True)
            await listener.bind(str(path))
            os.chown(path, 0, host.access_gid)
            os.chmod(path, 0o660)
        except OSError as exc:  # a read-only data directory: the daemon serves without it
            log.error("no exec socket for the lxfs group (%s: %s)", path, exc.strerror)
            task_status.started()
            return
        listener.listen(32)
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(_serve_client, host, conn)
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _receive_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds += list(struct.unpack(f"{usable // 4}i", data[:usable]))
    return fds


async def _send(conn: trio.socket.SocketType, message: dict[str, Any]) -> None:
    try:
        await conn.send(json.dumps(message).encode())
    except OSError:
        pass  # the client is gone


async def _serve_client(host: Host, conn: trio.socket.SocketType) -> None:
    fds: list[int] = []
    with conn:
        try:
            pid, uid, groups = peer_credentials(conn)
            if not may_drive(uid, groups, host.access_gid):
                log.warning("exec refused to uid %d (pid %d): not root nor in the access "
                            "group", uid, pid)
                await _send(conn, {"error": "permission denied: only root and members of "
                                            "the lxfs group may exec"})
                return
            data, ancdata, _flags, _addr = await conn.recvmsg(
                MAX_MESSAGE, socket.CMSG_SPACE(3 * struct.calcsize("i")))
            fds = _receive_fds(ancdata)
            request = _parse_request(data, fds)
            if isinstance(request, str):
                await _send(conn, {"error": request})
                return
            args, term = request
            log.info("exec for uid %d: %s", uid, " ".join(args))
            await _run(host, conn, args, term, fds)
        except Exception:  # noqa: BLE001 - one client's failure must not end the service
            log.exception("exec socket: request failed")
            await _send(conn, {"error": "internal error (see the daemon's log)"})
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _parse_request(data: bytes, fds: list[int]) -> tuple[list[str], str] | str:
    """(exec arguments, TERM) of a first message, or the reason it is refused."""
    if len(fds) != 3:
        return "expected the caller's standard input, output and error (3 descriptors)"
    try:
        message = json.loads(data)
    except ValueError:
        return "malformed request (not JSON)"
    args = message.get("args") if isinstance(message, dict) else None
    term = message.get("term", "") if isinstance(message, dict) else ""
    if not (isinstance(args, list) and args and all(isinstance(a, str) for a in args)):
        return "malformed request: args must be a non-empty list of strings"
    if not isinstance(term, str) or any("\0" in a for a in [*args, term]):
        return "malformed request: NUL bytes or a bad term"
    return args, term


async def _run(host: Host, conn: trio.socket.SocketType, args: list[str], term: str,
               fds: list[int]) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "LXFS_MOUNT": str(host.mount), "LANG": "C.UTF-8"}
    if term:
        env["TERM"] = term
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", LOCAL_EXEC, "exec", *args],
        stdin=fds[0], stdout=fds[1], stderr=fds[2], env=env, start_new_session=True)
    for fd in fds:
        os.close(fd)
    fds.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_relay_signals, conn, proc)
        code = await proc.wait()
        nursery.cancel_scope.cancel()
    await _send(conn, {"exit": 128 - code if code < 0 else code})


async def _relay_signals(conn: trio.socket.SocketType, proc: trio.Process) -> None:
    """Forward the client's signals to the command's process group; hang it up when the
    client goes away."""
    while True:
        try:
            data = await conn.recv(4096)
        except OSError:
            data = b""
        if not data:
            break
        try:
            signum = int(json.loads(data).get("signal"))
        except (ValueError, TypeError, AttributeError):
            continue
        if signum in ALLOWED_SIGNALS:
            _signal_group(proc, signum)
    _signal_group(proc, signal.SIGHUP)
    await trio.sleep(HANGUP_GRACE)
    _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: trio.Process, signum: int) -> None:
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
