"""The REST bridge: LXD's REST API 1.0 on ``DATA_DIR/unix.socket``, so that the real ``lxc``
client (``LXD_DIR=/var/lib/lxfs lxc list``, ``lxc remote add lxfs unix://...``), pylxd and
every tool built on them drive lxfs.

HTTP/1.1 comes from h11 and websockets from wsproto, over trio streams (``http.py``); the
endpoints (``core``, ``instances``, ``exec``, ``images``, ``resources``...) call the same server
operations the mount's files call. The socket is mode 0660, owned by root and the ``lxfs``
group; the peer is checked too (root or a member of the group).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import subprocess
from typing import Any

import trio

from lxfs import hookimpl
from lxfs.api import Host, may_drive, peer_credentials

from . import core, openapi  # noqa: F401 - register their routes
from .app import App, Context, error
from .hookspecs import lxfs_add_hookspecs  # noqa: F401 - adds lxfs_rest_networks
from .http import Connection, _send_response, serve_connection  # noqa: F401
from .https import ensure_certificate, follow_address
from .trust import TrustStore, lxfs_mount_entries, register, unregister  # noqa: F401 - hook

log = logging.getLogger("lxfs.rest")

SOCKET_NAME = "unix.socket"


def _load_endpoints() -> None:
    """Import the endpoint modules (each registers its routes)."""
    import importlib

    for module in ("instances", "exec", "images", "resources", "profiles", "networks",
                   "storage", "projects", "trust", "streams", "backups"):
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{module}":
                raise  # a dependency of the module is missing: say so
            log.debug("REST: no endpoint module %s", module)


@hookimpl
def lxfs_services(host: Host) -> list[Any]:
    return [functools.partial(serve_unix, host)]


async def serve_unix(host: Host, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                     ) -> None:
    """Serve the API on ``DATA_DIR/unix.socket`` until cancelled."""
    _load_endpoints()
    path = host.data_dir / SOCKET_NAME
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            path.unlink(missing_ok=True)
            await sock.bind(str(path))
            os.chown(path, 0, host.access_gid)
            os.chmod(path, 0o660)
        except OSError as exc:  # a read-only data directory: the daemon serves without it
            log.error("no REST API socket (%s: %s)", path, exc.strerror)
            task_status.started()
            return
        sock.listen(128)
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            context = Context(host, nursery)
            context.trust = await TrustStore.load(host)
            register(host, context.trust)
            try:
                context.certificate_pem, context.certificate_fingerprint = \
                    await ensure_certificate(host)
            except (OSError, ValueError, subprocess.CalledProcessError) as exc:
                log.error("no server certificate (%s): the HTTPS listener is off", exc)
            app = App(context)
            if context.certificate_pem:
                await nursery.start(follow_address, host, app)
            task_status.started()
            log.info("REST API on %s", path)
            await trio.serve_listeners(functools.partial(_serve_client, host, app),
                                       [listener])
    finally:
        unregister(host)
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


async def _serve_client(host: Host, app: App, stream: trio.SocketStream) -> None:
    try:
        _pid, uid, groups = peer_credentials(stream.socket)
    except OSError:
        await trio.aclose_forcefully(stream)
        return
    if not may_drive(uid, groups, host.access_gid):
        log.warning("REST: uid %d refused (not root nor in the access group)", uid)
        await _send_response(Connection(stream), error(403, "not authorized"))
        await trio.aclose_forcefully(stream)
        return
    await serve_connection(stream, app, peer=uid)
