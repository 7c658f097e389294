"""The REST bridge's application: routes, LXD's response envelopes and errors, background
operations, the event stream. Endpoints live in the modules of this package; each declares
its routes with ``@route``.

Every endpoint calls the same server operations the mount's files call (``host.operations``),
so REST and the mount never disagree.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from lxfs.errors import LxfsError

from .http import HttpError, Request, Response, WebSocket

if TYPE_CHECKING:
    from lxfs.api import Host

log = logging.getLogger("lxfs.rest")

Endpoint = Callable[["Context", Request], Awaitable[Response | None]]
#: finished operations stay this many seconds (as LXD: about 5)
KEEP_FINISHED = 5.0


def rfc3339_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def sync(metadata: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
         ) -> Response:
    """LXD's synchronous envelope."""
    return Response.json(status, {"type": "sync", "status": "Success", "status_code": 200,
                                  "operation": "", "error_code": 0, "error": "",
                                  "metadata": metadata}, headers)


def error(status: int, message: str) -> Response:
    """LXD's error envelope."""
    return Response.json(status, {"type": "error", "status": "", "status_code": 0,
                                  "operation": "", "error_code": status, "error": message,
                                  "metadata": None})


# --- routes --------------------------------------------------------------------------------

@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    endpoint: Endpoint
    template: str
    #: JSON schema of the request body (documented in the OpenAPI document, and what the
    #: schema-driven fuzzer generates), or None
    body: dict[str, Any] | None = None
    #: query parameters the endpoint reads: name → JSON schema
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: HTTPS clients whose certificate is not trusted may call it
    untrusted: bool = False


ROUTES: list[Route] = []


def route(method: str, template: str, body: dict[str, Any] | None = None,
          query: dict[str, dict[str, Any]] | None = None, untrusted: bool = False
          ) -> Callable[[Endpoint], Endpoint]:
    """Declare an endpoint: ``@route("GET", "/1.0/instances/{name}")``. ``{x}`` matches one
    path segment, ``{x:path}`` the rest of the path. ``body`` and ``query`` describe the
    request for the OpenAPI document (``openapi.py``); the endpoint's docstring is its
    summary. ``untrusted``: HTTPS clients whose certificate is not trusted may call it too
    (every other endpoint answers them 403, as LXD)."""
    regex = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", template)
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)

    def register(endpoint: Endpoint) -> Endpoint:
        ROUTES.append(Route(method, re.compile(f"^{regex}/?$"), endpoint, template, body,
                            dict(query or {}), untrusted))
        return endpoint

    return register


# --- operations ----------------------------------------------------------------------------

#: the ``?project=`` of the request being served (``default`` without)
REQUEST_PROJECT: contextvars.ContextVar[str] = contextvars.ContextVar(
    "rest_request_project", default="default")


@dataclass
class Operation:
    """A background operation, as LXD shows it (``/1.0/operations/ID``)."""

    description: str
    op_class: str = "task"  # task, websocket, token
    resources: dict[str, list[str]] = field(default_factory=dict)
    metadata: Any = None
    may_cancel: bool = False
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: str = field(default_factory=rfc3339_now)
    updated_at: str = ""
    status: str = "Running"
    status_code: int = 103
    err: str = ""
    error_status: int = 0
    done: trio.Event = field(default_factory=trio.Event)
    finished_at: float = 0.0
    cancel_scope: trio.CancelScope | None = None
    #: websocket operations: secret → the connection waiting for it
    secrets: dict[str, trio.MemorySendChannel[WebSocket]] = field(default_factory=dict)
    #: the project its events belong to: that of the request that made it (as LXD's), which
    #: is what the client's listener follows while it waits
    project: str = field(default_factory=lambda: REQUEST_PROJECT.get())

    def __post_init__(self) -> None:
        self.updated_at = self.created_at

    def document(self) -> dict[str, Any]:
        return {"id": self.id, "class": self.op_class, "description": self.description,
                "created_at": self.created_at, "updated_at": self.updated_at,
                "status": self.status, "status_code": self.status_code,
                "resources": self.resources or None, "metadata": self.metadata,
                "may_cancel": self.may_cancel, "err": self.err, "location": "none"}

    @property
    def url(self) -> str:
        return f"/1.0/operations/{self.id}"


class Context:
    """What endpoints work with: the host, the operations in flight, the nursery."""

    def __init__(self, host: Host, nursery: trio.Nursery) -> None:
        self.host = host
        self.ops = host.operations
        self.nursery = nursery
        self.operations: dict[str, Operation] = {}
        #: the trust store of HTTPS clients (``trust.TrustStore``), set by the service
        self.trust: Any = None
        #: the server's certificate (PEM) and its fingerprint, set by the service
        self.certificate_pem = ""
        self.certificate_fingerprint = ""

    def trusted(self, peer: Any) -> bool:
        """Whether a connection's peer may use the whole API (unix socket peers were
        checked by uid and group; HTTPS peers by the trust store)."""
        if self.trust is None:
            return not hasattr(peer, "der")
        return bool(self.trust.trusted(peer))

    # --- operations -----------------------------------------------------------------------

    def _emit(self, op: Operation) -> None:
        self.host.events.emit("operation", op.document(), project=op.project)

    def start_operation(self, op: Operation, work: Callable[[Operation], Awaitable[Any]]
                        ) -> Response:
        """Run ``work(op)`` in the background and answer 202 with the operation (LXD's async
        envelope). ``work`` may set ``op.metadata``; its ``LxfsError`` becomes the
        operation's failure."""
        self.operations[op.id] = op
        self._emit(op)
        self.nursery.start_soon(self._run, op, work)
        return Response.json(202, {"type": "async", "status": "Operation created",
                                   "status_code": 100, "operation": op.url, "error_code": 0,
                                   "error": "", "metadata": op.document()},
                             [("Location", op.url)])

    async def _run(self, op: Operation, work: Callable[[Operation], Awaitable[Any]]) -> None:
        with trio.CancelScope() as scope:
            op.cancel_scope = scope
            try:
                await work(op)
                await self.ops.settle_changes()  # the mount agrees before the client hears
                self.finish(op, "Success", 200)
            except LxfsError as exc:
                self.finish(op, "Failure", 400, exc.message, exc.status)
            except HttpError as exc:
                self.finish(op, "Failure", 400, exc.message, exc.status)
            except Exception as exc:  # noqa: BLE001 - reported in the operation
                log.exception("REST operation %s (%s) failed", op.id, op.description)
                self.finish(op, "Failure", 400, f"internal error: {exc}", 500)
        if scope.cancelled_caught:
            self.finish(op, "Cancelled", 401, "operation cancelled")
        await trio.sleep(KEEP_FINISHED)
        self.operations.pop(op.id, None)

    def finish(self, op: Operation, status: str, code: int, err: str = "",
               error_status: int = 0) -> None:
        if op.done.is_set():
            return
        op.status, op.status_code, op.err = status, code, err
        op.error_status = error_status
        op.updated_at = rfc3339_now()
        op.finished_at = time.monotonic()
        op.done.set()
        self._emit(op)

    def new_secret(self, op: Operation) -> tuple[str, trio.MemoryReceiveChannel[WebSocket]]:
        """A websocket secret of ``op`` and the channel its connection arrives on."""
        secret = secrets.token_hex(32)
        send, receive = trio.open_memory_channel[WebSocket](1)
        op.secrets[secret] = send
        return secret, receive


# --- the dispatcher ------------------------------------------------------------------------

def status_of(exc: LxfsError) -> int:
    return exc.status if exc.status in (400, 403, 404, 409, 500, 501) else 400


class App:
    def __init__(self, context: Context) -> None:
        self.context = context

    async def __call__(self, request: Request) -> Response | None:
        path = request.path.rstrip("/") or "/"
        allowed = []
        for candidate in ROUTES:
            match = candidate.pattern.match(path)
            if match is None:
                continue
            if candidate.method != request.method:
                allowed.append(candidate.method)
                continue
            request.params = match.groupdict()
            request.trusted = self.context.trusted(request.conn.peer)
            if not request.trusted and not candidate.untrusted:
                return error(403, "not authorized")
            if request.trusted and self.context.trust is not None and \
                    not self.context.trust.allows(request, candidate):
                return error(403, "not authorized")  # a restricted certificate
            REQUEST_PROJECT.set(request.query.get("project") or "default")
            try:
                response = await candidate.endpoint(self.context, request)
                await self.context.ops.settle_changes()  # the mount agrees with the answer
                return response
            except LxfsError as exc:
                return error(status_of(exc), exc.message)
            except HttpError as exc:
                return error(exc.status, exc.message)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # a request document of the wrong shape: LXD answers 400
                log.debug("REST: %s %s: %r", request.method, request.path, exc)
                return error(400, f"invalid request: {exc}")
        if allowed:
            return error(405, "method not allowed")
        return error(404, "not found")


def parse_json_object(data: Any, what: str = "request") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise HttpError(400, f"{what}: expected a JSON object")
    return data


async def read_object(request: Request) -> dict[str, Any]:
    return parse_json_object(await request.json())


def recursion(request: Request) -> int:
    try:
        return int(request.query.get("recursion", "0") or 0)
    except ValueError:
        raise HttpError(400, "invalid recursion value") from None


def etag_value(document: Any) -> str:
    """sha256 of the document, as LXD's ETags."""
    import hashlib

    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def etag(document: Any) -> list[tuple[str, str]]:
    """LXD's ETag header."""
    return [("ETag", f'"{etag_value(document)}"')]


def check_etag(request: Request, current: Any) -> None:
    """LXD's ``If-Match``: a PUT or PATCH made from an older read is refused (412)."""
    wanted = request.headers.get("if-match", "").strip().strip('"')
    if wanted and wanted != (value := etag_value(current)):
        raise HttpError(412, f"ETag doesn't match: {value} vs {wanted}")
