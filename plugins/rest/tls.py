"""TLS for the REST bridge's HTTPS listener: a trio stream over pyOpenSSL that accepts any
client certificate so that LXD's trust flows can run (imported once HTTPS is enabled).

Python's ``ssl`` module fails the handshake of a client whose self-signed certificate is not
already trusted, but LXD's first contact is exactly that: an unknown client presents its
certificate, reads ``GET /1.0`` as "untrusted", then ``POST /1.0/certificates`` with the trust
password or a token. pyOpenSSL's ``set_verify`` callback accepts every certificate at the
handshake; what a client may do is decided per request from its certificate's fingerprint
(``plugins/rest/trust.py``). OpenSSL runs on memory BIOs: this module only moves bytes between
them and the TCP stream (no TLS is implemented here). The same stream serves the client
side of a migration's websockets (``client_context``): a bulk transfer moves through it a
megabyte at a time (one encryption call and one send per write, every record already
received decrypted per read), not a TLS record (16 KiB) per trip through the event loop.
"""

from __future__ import annotations

import calendar
import logging
import time
from pathlib import Path

import trio
from OpenSSL import SSL, crypto

log = logging.getLogger("lxfs.rest")

#: bytes read from the TCP stream, and from OpenSSL's outgoing buffer, per call: a bulk
#: transfer (a migration's streams) costs a trip through the event loop per read
READ_SIZE = 1 << 18
HANDSHAKE_TIMEOUT = 10.0


def server_context(cert_path: Path, key_path: Path) -> SSL.Context:
    """TLS 1.2+ with the server's certificate, asking every client for its certificate
    and accepting any (trust is decided per request), HTTP/1.1 by ALPN."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate_chain_file(str(cert_path))
    ctx.use_privatekey_file(str(key_path))
    ctx.check_privatekey()
    ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
    ctx.set_alpn_select_callback(_select_http11)
    ctx.set_session_id(b"lxfs")
    return ctx


def _accept_any(_conn: SSL.Connection, _cert: crypto.X509, _errno: int, _depth: int,
                _ok: int) -> bool:
    return True


def asn1_time(value: bytes | None) -> float:
    """An X.509 time as OpenSSL gives it (``YYYYMMDDhhmmssZ``), in seconds since the epoch
    (0 when there is none or it cannot be read)."""
    if not value:
        return 0.0
    try:
        return calendar.timegm(time.strptime(value.decode("ascii"), "%Y%m%d%H%M%SZ"))
    except (UnicodeDecodeError, ValueError):
        return 0.0


def _select_http11(_conn: SSL.Connection, offered: list[bytes]) -> bytes:
    return b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def client_context() -> SSL.Context:
    """TLS 1.2+ for a client that checks the server's certificate itself (pinned by the
    caller against ``peer_der``, as LXD's migration peers are)."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


class TLSStream(trio.abc.Stream):
    """A TLS connection over ``transport`` (server side, or client side with
    ``server_hostname``): OpenSSL on memory BIOs, the ciphertext moved by trio.
    ``send_all`` and ``receive_some`` may run in two tasks at once (a websocket's reader and
    writer): what OpenSSL produced is sent under one lock, in order."""

    def __init__(self, transport: trio.abc.Stream, context: SSL.Context,
                 server_hostname: str | None = None) -> None:
        self.transport = transport
        self.conn = SSL.Connection(context, None)
        if server_hostname is None:
            self.conn.set_accept_state()
        else:
            self.conn.set_tlsext_host_name(server_hostname.encode())
            self.conn.set_connect_state()
        self._send_lock = trio.Lock()
        self._receive_lock = trio.Lock()
        self._eof = False
        self.peer_der: bytes | None = None
        #: the client certificate's validity (seconds since the epoch; 0: not known)
        self.peer_not_before = 0.0
        self.peer_not_after = 0.0

    async def handshake(self) -> None:
        """Run the handshake (at most ``HANDSHAKE_TIMEOUT`` seconds); the peer's
        certificate, if it gave one, is then ``peer_der``."""
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            while True:
                try:
                    self.conn.do_handshake()
                    break
                except SSL.WantReadError:
                    await self._flush()
                    if not await self._fill():
                        raise trio.BrokenResourceError(
                            "the peer closed during the handshake") from None
        await self._flush()
        cert = self.conn.get_peer_certificate()
        if cert is not None:
            self.peer_der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
            self.peer_not_before = asn1_time(cert.get_notBefore())
            self.peer_not_after = asn1_time(cert.get_notAfter())

    async def _flush(self) -> None:
        """Send what OpenSSL has written to its outgoing BIO."""
        async with self._send_lock:
            chunks = []
            while True:
                try:
                    chunks.append(self.conn.bio_read(READ_SIZE))
                except SSL.WantReadError:
                    break
            if chunks:
                await self.transport.send_all(b"".join(chunks))

    async def _fill(self) -> bool:
        """Feed OpenSSL the next ciphertext; False at the transport's EOF."""
        data = await self.transport.receive_some(READ_SIZE)
        if not data:
            self.conn.bio_shutdown()
            return False
        self.conn.bio_write(data)
        return True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt all of ``data`` (OpenSSL cuts the records), then send it in one go."""
        view = memoryview(data)
        while view:
            try:
                sent = self.conn.send(view)
            except SSL.WantReadError:  # a renegotiation would need input: TLS 1.2 only
                await self._flush()
                continue
            except SSL.Error as exc:
                raise trio.BrokenResourceError(f"TLS: {exc}") from None
            view = view[sent:]
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        async with self._receive_lock:
            while True:
                if self._eof:
                    return b""
                try:
                    return self._recv_pending(max_bytes or READ_SIZE)
                except SSL.WantReadError:
                    await self._flush()  # TLS 1.3 tickets, key updates
                    try:
                        more = await self._fill()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        more = False
                    if not more:
                        self._eof = True
                except SSL.ZeroReturnError:  # close_notify
                    self._eof = True
                except SSL.SysCallError:  # EOF without close_notify
                    self._eof = True
                except SSL.Error as exc:
                    raise trio.BrokenResourceError(f"TLS: {exc}") from None

    def _recv_pending(self, max_bytes: int) -> bytes:
        """Every record OpenSSL can decrypt from what it was fed, up to ``max_bytes`` (a
        read gives one record, 16 KiB at most); WantReadError etc. when there is none."""
        data = self.conn.recv(max_bytes)
        parts = [data]
        size = len(data)
        while size < max_bytes:
            try:
                more = self.conn.recv(max_bytes - size)
            except (SSL.WantReadError, SSL.ZeroReturnError, SSL.SysCallError):
                break  # the next call meets it again
            parts.append(more)
            size += len(more)
        return b"".join(parts) if len(parts) > 1 else data

    async def aclose(self) -> None:
        try:
            with trio.move_on_after(1):
                try:
                    self.conn.shutdown()
                except SSL.Error:
                    pass
                await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self.transport.aclose()
