"""HTTP/1.1 and websockets over any trio stream (a unix socket now, TLS later), on h11 and
wsproto: the libraries parse and frame, this module only drives them.

A connection serves requests one after another (keep-alive). A handler gets a ``Request``
and returns a ``Response``; it may instead upgrade the request to a websocket
(``await request.accept_websocket()``), after which the connection belongs to it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import trio
from wsproto.connection import Connection as WSFrames
from wsproto.connection import ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.utilities import generate_accept_token

log = logging.getLogger("lxfs.rest")

READ_SIZE = 65536
MAX_JSON_BODY = 16 << 20  # bodies read into memory (JSON documents); uploads are streamed
Handler = Callable[["Request"], Awaitable["Response | None"]]


class HttpError(Exception):
    """A request the server refuses before any handler (malformed, too large)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Response:
    status: int
    body: bytes | AsyncIterator[bytes] = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, document: Any, headers: list[tuple[str, str]] | None = None
             ) -> Response:
        return cls(status, json.dumps(document, separators=(",", ":")).encode() + b"\n",
                   headers or [])


class Connection:
    """One client connection: h11's state machine over the stream."""

    def __init__(self, stream: trio.abc.Stream, peer: Any = None) -> None:
        self.stream = stream
        self.peer = peer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        self.upgraded = False

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    async def next_event(self) -> h11.Event:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(READ_SIZE)
                self.h11.receive_data(data)  # b"": the peer closed
                continue
            return event


class Request:
    def __init__(self, conn: Connection, event: h11.Request) -> None:
        self.conn = conn
        self.method = event.method.decode()
        target = event.target.decode("latin-1")
        parts = urlsplit(target)
        self.path = unquote(parts.path)
        self.query = {k: v[-1] for k, v in parse_qs(parts.query,
                                                      keep_blank_values=True).items()}
        self.headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
        self._body_done = False
        #: what the route matched, by name
        self.params: dict[str, str] = {}
        #: whether the peer may use the whole API (set by the dispatcher)
        self.trusted = True

    # --- the body -------------------------------------------------------------------------

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (for uploads)."""
        while not self._body_done:
            try:
                event = await self.conn.next_event()
            except h11.RemoteProtocolError as exc:  # cut short, or malformed chunking
                raise HttpError(400, f"invalid request body: {exc}") from None
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._body_done = True
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpError(400, "the client closed the connection mid-request")
            else:
                raise HttpError(400, f"unexpected {type(event).__name__} in a request body")

    async def body(self, limit: int = MAX_JSON_BODY) -> bytes:
        data = bytearray()
        async for chunk in self.chunks():
            data += chunk
            if len(data) > limit:
                raise HttpError(413, f"request body larger than {limit} bytes")
        return bytes(data)

    async def json(self) -> Any:
        """The body as JSON (LXD's messages for bad JSON: ``unexpected EOF``...)."""
        data = await self.body()
        if not data.strip():
            raise HttpError(400, "unexpected EOF")
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"invalid JSON: {exc}") from None

    async def drain(self) -> None:
        async for _chunk in self.chunks():
            pass

    # --- websockets -----------------------------------------------------------------------

    @property
    def wants_websocket(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "websocket" and \
            "sec-websocket-key" in self.headers

    async def accept_websocket(self) -> WebSocket:
        """Answer 101 and hand the connection over to a websocket."""
        if not self.wants_websocket:
            raise HttpError(400, "Bad Request")
        await self.drain()
        token = generate_accept_token(self.headers["sec-websocket-key"].encode())
        await self.conn.send(h11.InformationalResponse(
            status_code=101, headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                      ("Sec-WebSocket-Accept", token)]))
        self.conn.upgraded = True
        trailing, _closed = self.conn.h11.trailing_data
        return WebSocket(self.conn.stream, bytes(trailing))


class WebSocket:
    """A server-side websocket on a stream (frames by wsproto)."""

    #: bytes asked of the stream per read (a bulk transfer raises it)
    read_size = READ_SIZE

    def __init__(self, stream: trio.abc.Stream, buffered: bytes = b"") -> None:
        self.stream = stream
        self.frames = WSFrames(ConnectionType.SERVER)
        if buffered:
            self.frames.receive_data(buffered)
        self._send_lock = trio.Lock()
        self._closed = False
        #: set once the websocket is closed (by either side)
        self.closed_event = trio.Event()
        self._text: list[str] = []
        self._bytes = bytearray()

    @property
    def closed(self) -> bool:
        return self._closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self._closed = value
        if value:
            self.closed_event.set()

    async def _flush(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

    async def send_bytes(self, data: bytes) -> None:
        if not self.closed:
            await self._flush(self.frames.send(BytesMessage(data=data)))

    async def send_text(self, text: str) -> None:
        if not self.closed:
            await self._flush(self.frames.send(TextMessage(data=text)))

    async def receive(self) -> str | bytes | None:
        """The next whole message; None once the peer closed."""
        while True:
            for event in self.frames.events():
                if isinstance(event, TextMessage):
                    self._text.append(event.data)
                    if event.message_finished:
                        text, self._text = "".join(self._text), []
                        return text
                elif isinstance(event, BytesMessage):
                    self._bytes += event.data
                    if event.message_finished:
                        data, self._bytes = bytes(self._bytes), bytearray()
                        return data
                elif isinstance(event, Ping):
                    await self._flush(self.frames.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if not self.closed:
                        self.closed = True
                        try:
                            await self._flush(self.frames.send(event.response()))
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass
                    return None
            if self.closed:
                return None
            try:
                data = await self.stream.receive_some(self.read_size)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.closed = True
                return None
            self.frames.receive_data(data)

    async def close(self, code: int = 1000) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self._flush(self.frames.send(CloseConnection(code=code)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def serve_connection(stream: trio.abc.Stream, handler: Handler,
                           peer: Any = None) -> None:
    """Serve requests on one connection until the client closes it (or a websocket took
    it over). A handler's failure is answered 500 and logged: it never ends the server."""
    conn = Connection(stream, peer)
    try:
        while True:
            try:
                event = await conn.next_event()
            except h11.RemoteProtocolError as exc:
                await _refuse(conn, 400, str(exc))
                return
            if isinstance(event, h11.ConnectionClosed) or event is None:
                return
            if not isinstance(event, h11.Request):
                return
            request = Request(conn, event)
            try:
                response = await handler(request)
            except HttpError as exc:
                response = _error_response(exc.status, exc.message)
            except Exception:  # noqa: BLE001 - one request's bug must not end the server
                log.exception("REST: %s %s failed", request.method, request.path)
                response = _error_response(500, "internal error (see the daemon's log)")
            if conn.upgraded:
                return
            if response is None:
                return
            try:
                await request.drain()
            except HttpError:
                return
            await _send_response(conn, response)
            if conn.h11.our_state is h11.MUST_CLOSE:
                return
            try:
                conn.h11.start_next_cycle()
            except h11.LocalProtocolError:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError,
            h11.RemoteProtocolError):
        return
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


def _error_response(status: int, message: str) -> Response:
    return Response.json(status, {"type": "error", "status": "", "status_code": 0,
                                  "operation": "", "error_code": status, "error": message,
                                  "metadata": None})


async def _refuse(conn: Connection, status: int, message: str) -> None:
    try:
        await _send_response(conn, _error_response(status, message))
    except (h11.LocalProtocolError, trio.BrokenResourceError):
        pass


async def _send_response(conn: Connection, response: Response) -> None:
    headers = [("Content-Type", response.content_type), *response.headers]
    if isinstance(response.body, bytes):
        headers.append(("Content-Length", str(len(response.body))))
        await conn.send(h11.Response(status_code=response.status, headers=headers))
        if response.body:
            await conn.send(h11.Data(data=response.body))
    else:
        await conn.send(h11.Response(status_code=response.status, headers=headers))
        async for chunk in response.body:
            if chunk:
                await conn.send(h11.Data(data=chunk))
    await conn.send(h11.EndOfMessage())
