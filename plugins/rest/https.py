"""The HTTPS listener of the REST bridge: it follows ``core.https_address`` (set: listen
there; changed: move; empty: stop), serves the same endpoints as the unix socket over TLS
(``tls.py``), and leaves who may do what to the trust store (``trust.py``)."""

from __future__ import annotations

import functools
import logging
import socket
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

import trio

from .app import App
from .certs import fingerprint, pem_to_der
from .http import serve_connection
from .trust import TlsPeer

if TYPE_CHECKING:
    from lxfs.api import Host

log = logging.getLogger("lxfs.rest")

DEFAULT_PORT = 8443
CERT_NAME = "server.crt"
KEY_NAME = "server.key"


def split_address(address: str) -> tuple[str | None, int]:
    """``core.https_address`` as (host, port): ``[::]:8443``, ``10.0.0.1``, ``:8443``,
    ``host.example:9443``; no host means every address."""
    host, port = address, DEFAULT_PORT
    if address.startswith("["):
        end = address.index("]")
        host, rest = address[1:end], address[end + 1:]
        if rest.startswith(":"):
            port = int(rest[1:])
    elif address.count(":") == 1:
        host, _, port_text = address.partition(":")
        port = int(port_text)
    if host in ("", "::", "0.0.0.0"):
        return None, port
    return host, port


async def ensure_certificate(host: Host) -> tuple[str, str]:
    """The server's certificate as PEM, and its fingerprint; made at the first start, in a
    process of its own (``certs.py``: the daemon itself never loads the key generation)."""
    cert_path, key_path = host.data_dir / CERT_NAME, host.data_dir / KEY_NAME
    if not cert_path.exists() or not key_path.exists():
        await trio.run_process([sys.executable, "-m", "lxfs_plugins.rest.certs", str(cert_path),
                                str(key_path), f"root@{socket.gethostname()}"],
                               capture_stdout=True, capture_stderr=True)
        log.info("made the server certificate %s", cert_path)
    pem = await trio.to_thread.run_sync(cert_path.read_text)
    return pem, fingerprint(pem_to_der(pem))


async def follow_address(host: Host, app: App, task_status: trio.TaskStatus[None] =
                         trio.TASK_STATUS_IGNORED) -> None:
    """Listen where ``core.https_address`` says, for as long as the service runs. TLS
    (pyOpenSSL) is loaded when an address is first set."""
    tls: ModuleType | None = None
    context: Any = None
    current = ""
    scope: trio.CancelScope | None = None
    task_status.started()
    async with trio.open_nursery() as nursery:
        while True:
            wanted = host.operations.config.get("core.https_address", "")
            if wanted != current:
                if scope is not None:
                    scope.cancel()
                    scope = None
                    log.info("REST API: stopped listening on %s", current)
                current = wanted
                if wanted and tls is None:
                    try:
                        from . import tls  # noqa: PLC0415 - OpenSSL only once HTTPS is on

                        context = tls.server_context(host.data_dir / CERT_NAME,
                                                     host.data_dir / KEY_NAME)
                    except Exception as exc:  # noqa: BLE001 - the daemon serves on
                        tls = None
                        log.error("REST API: no TLS (%s): the HTTPS listener is off", exc)
                        host.set_error("", f"core.https_address: no TLS: {exc}")
                        wanted = ""
                if wanted:
                    try:
                        scope = await nursery.start(_listen, app, tls, context, wanted)
                    except (OSError, ValueError) as exc:
                        message = f"cannot listen on {wanted}: {exc}"
                        log.error("REST API: %s", message)
                        host.set_error("", f"core.https_address: {message}")
            await host.operations.wait_server_config_change()


async def _listen(app: App, tls: ModuleType, context: Any, address: str,
                  task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED
                  ) -> None:
    bind_host, port = split_address(address)
    listeners = await trio.open_tcp_listeners(port, host=bind_host)
    with trio.CancelScope() as scope:
        log.info("REST API on https://%s", address)
        task_status.started(scope)
        await trio.serve_listeners(functools.partial(_serve_tls, app, tls, context),
                                   listeners)


async def _serve_tls(app: App, tls: ModuleType, context: Any, tcp: trio.SocketStream) -> None:
    stream = tls.TLSStream(tcp, context)
    try:
        await stream.handshake()
    except (trio.BrokenResourceError, trio.TooSlowError, tls.SSL.Error, OSError) as exc:
        log.debug("REST: TLS handshake failed: %s", exc)
        await trio.aclose_forcefully(tcp)
        return
    peer = TlsPeer(stream.peer_der, stream.peer_not_before, stream.peer_not_after)
    await serve_connection(stream, app, peer=peer)  # closes it
