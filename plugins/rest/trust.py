"""The trust store: client certificates allowed to use the HTTPS listener, kept as the
plugin's documents in the daemon's database (kind ``certificates``, by fingerprint), and
``/1.0/certificates`` as LXD 5.0 serves it, with its join tokens.

A client over HTTPS is trusted when its certificate's fingerprint is in the store and the
certificate is within its validity. An untrusted client may call the routes declared
``untrusted`` (``GET /1.0`` as ``auth: untrusted``, public images) and add its own certificate
with ``core.trust_password`` or a join token; everything else answers 403 "not authorized", as
LXD. Clients of the unix socket are trusted (the socket is root's and group lxfs's).

A restricted certificate (``restricted: true``) may use the endpoints of the projects it names
and those every trusted client may use; the administrator's (server configuration, the trust
store's changes, storage pools, projects' changes) answer it 403, as LXD 5.0's access handlers
(``access_level``).

Join tokens and image secrets are operations of class ``token``, as LXD's: in memory (LXD
drops its operations at a restart too), single use, cancelled by ``DELETE
/1.0/operations/ID``.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from lxfs import hookimpl
from lxfs.config_schema import KeySpec, verify_secret
from lxfs.errors import AlreadyExists, InvalidArgument, NotFound, NotSupported
from lxfs.nodes import Dir, File, Node, StaticDir

from .app import Context, Operation, Route, check_etag, etag, read_object, recursion, route, sync
from .certs import certificate_der, certificate_validity, common_name, der_to_pem, fingerprint
from .http import HttpError, Request, Response

if TYPE_CHECKING:
    from lxfs.api import Host

log = logging.getLogger("lxfs.rest")

KIND = "certificates"
TYPES = ("client", "metrics")
_NAME = re.compile(r"^[^\x00-\x1f\x7f/]{0,255}$")


@dataclass
class TlsPeer:
    """A client of the HTTPS listener: its certificate (DER), if it gave one, and the
    certificate's validity (seconds since the epoch; 0: not known)."""

    der: bytes | None
    not_before: float = 0.0
    not_after: float = 0.0

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.der) if self.der else ""

    def valid_now(self) -> bool:
        """Whether the certificate is within its validity (as LXD, an expired or not yet
        valid certificate is not trusted, whatever the store says)."""
        now = time.time()
        return (not self.not_before or now >= self.not_before) and \
            (not self.not_after or now <= self.not_after)


class TrustStore:
    """The trusted certificates by fingerprint, in memory (the event loop's), written through
    to the daemon's database before a change is visible."""

    def __init__(self, host: Host, records: dict[str, dict[str, Any]]) -> None:
        self.host = host
        self.records = records

    @classmethod
    async def load(cls, host: Host) -> TrustStore:
        declare_keys(host)
        return cls(host, await trio.to_thread.run_sync(host.load_documents, KIND))

    def record_of(self, peer: Any) -> dict[str, Any] | None:
        """The trusted record of an HTTPS peer (None: untrusted, or not an HTTPS peer)."""
        if not isinstance(peer, TlsPeer) or not peer.der or not peer.valid_now():
            return None
        record = self.records.get(peer.fingerprint)
        if record is None or record.get("type", "client") != "client":
            return None
        return record

    def trusted(self, peer: Any) -> bool:
        """Whether a connection's peer is trusted (it may be restricted to projects)."""
        if not isinstance(peer, TlsPeer):
            return True  # the unix socket: its peers were checked by uid and group
        return self.record_of(peer) is not None

    def projects_of(self, peer: Any) -> list[str] | None:
        """The projects a restricted client may use; None for a client that may do
        everything (the unix socket's, an unrestricted certificate's)."""
        record = self.record_of(peer)
        if record is None or not record.get("restricted"):
            return None
        return list(record.get("projects") or [])

    def is_admin(self, peer: Any) -> bool:
        return self.trusted(peer) and self.projects_of(peer) is None

    def allows(self, request: Request, candidate: Route) -> bool:
        """Whether a trusted client may call ``candidate`` (LXD 5.0's access handlers). A
        restricted client without the project gets, on the routes untrusted clients may
        call, what an untrusted client gets (``request.trusted`` is set False)."""
        projects = self.projects_of(request.conn.peer)
        if projects is None:
            return True
        level = access_level(candidate.method, candidate.template)
        if candidate.template == "/1.0/events":
            # as LXD: the daemon's log records are the administrator's alone
            wanted = request.query.get("type", "")
            if "logging" in wanted.split(","):
                return False
            request.query["type"] = wanted or "lifecycle,operation"
        if level == AUTHENTICATED:
            return True
        if level == PROJECT:
            if candidate.template.startswith("/1.0/projects/"):
                project = request.params.get("name", "")
            else:
                project = request.query.get("project") or "default"
            if project in projects:
                return True
            if candidate.untrusted:
                request.trusted = False
                return True
            return False
        return candidate.untrusted

    def get(self, fp: str) -> dict[str, Any]:
        """A record by fingerprint or by a unique prefix of it (as ``lxc config trust``)."""
        if fp in self.records:
            return self.records[fp]
        found = [r for f, r in self.records.items() if f.startswith(fp)] if fp else []
        if len(found) != 1:
            raise NotFound("Certificate not found")
        return found[0]

    async def add(self, der: bytes, name: str, cert_type: str = "client",
                  restricted: bool = False, projects: list[str] | None = None
                  ) -> dict[str, Any]:
        fp = fingerprint(der)
        if fp in self.records:
            raise AlreadyExists("Certificate already in trust store")
        record = {"fingerprint": fp, "name": name, "type": cert_type,
                  "restricted": restricted, "projects": list(projects or []),
                  "certificate": der_to_pem(der)}
        await trio.to_thread.run_sync(self.host.put_document, KIND, fp, record)
        self.records[fp] = record
        log.info("trusted certificate %s (%s)", fp[:12], name)
        return record

    async def update(self, record: dict[str, Any]) -> None:
        await trio.to_thread.run_sync(self.host.put_document, KIND, record["fingerprint"],
                                      record)
        self.records[record["fingerprint"]] = record

    async def delete(self, fp: str) -> None:
        await trio.to_thread.run_sync(self.host.delete_document, KIND, fp)
        self.records.pop(fp, None)
        log.info("removed certificate %s from the trust store", fp[:12])


def store(ctx: Context) -> TrustStore:
    trust = getattr(ctx, "trust", None)
    if trust is None:
        raise HttpError(500, "the trust store is not loaded")
    return trust


def _document(record: dict[str, Any]) -> dict[str, Any]:
    return {"name": record.get("name", ""), "type": record.get("type", "client"),
            "restricted": bool(record.get("restricted")),
            "projects": list(record.get("projects") or []),
            "certificate": record.get("certificate", ""),
            "fingerprint": record["fingerprint"]}


def _check_name(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidArgument("name: expected a certificate name (no control characters "
                              "or '/')")
    return value


def _check_type(value: Any) -> str:
    value = value or "client"
    if value not in TYPES:
        raise InvalidArgument(f"Unknown certificate type {value!r}")
    if value != "client":
        raise HttpError(501, "metrics certificates are not supported by lxfs")
    return value


def _check_projects(restricted: Any, projects: Any) -> tuple[bool, list[str]]:
    if not isinstance(restricted, bool):
        raise InvalidArgument("restricted: expected a boolean")
    if projects is None:
        projects = []
    if not isinstance(projects, list) or not all(isinstance(p, str) for p in projects):
        raise InvalidArgument("projects: expected a list of project names")
    return restricted, list(dict.fromkeys(projects))


def _check_projects_exist(ctx: Context, projects: list[str]) -> None:
    for name in projects:
        if name not in ctx.ops.projects:
            raise NotFound(f"Project {name!r} not found")


# --- who may call what -----------------------------------------------------------------------

#: any trusted client (LXD's ``allowAuthenticated``)
AUTHENTICATED = "authenticated"
#: a client with the request's project (LXD's ``allowProjectPermission``)
PROJECT = "project"
#: the administrator only: a client whose certificate is not restricted (LXD's default)
ADMIN = "admin"

_AUTHENTICATED_ROUTES = {
    ("GET", "/1.0/certificates"), ("GET", "/1.0/certificates/{fingerprint}"),
    ("PUT", "/1.0/certificates/{fingerprint}"), ("PATCH", "/1.0/certificates/{fingerprint}"),
    ("GET", "/1.0/events"), ("GET", "/1.0/projects"), ("GET", "/1.0/resources"),
    ("GET", "/1.0/storage-pools"), ("GET", "/1.0/storage-pools/{name}"),
    ("GET", "/1.0/storage-pools/{name}/resources"), ("GET", "/openapi.json"),
}
_PROJECT_ROUTES = re.compile(r"^/1\.0/(instances|containers|images|profiles|networks)(/|$)"
                             r"|^/1\.0/storage-pools/\{pool\}/volumes(/|$)")


def access_level(method: str, template: str) -> str:
    """Who may call a route, as LXD 5.0's handlers: the project-scoped resources
    (instances, images, profiles, networks, custom volumes) need the request's project (or
    the project named, for ``GET /1.0/projects/NAME``); the trust store's reading, events,
    operations, resources and storage pools' reading need any trust; the rest (the server's
    configuration, adding or deleting certificates, projects' and storage pools' changes)
    is the administrator's."""
    if (method, template) in _AUTHENTICATED_ROUTES or template.startswith("/1.0/operations"):
        return AUTHENTICATED
    if method == "GET" and template in ("/1.0/projects/{name}", "/1.0/projects/{name}/state"):
        return PROJECT
    if _PROJECT_ROUTES.match(template):
        return PROJECT
    return ADMIN


@route("GET", "/1.0/certificates")
async def list_certificates(ctx: Context, request: Request) -> Response:
    """The trusted certificates."""
    records = sorted(store(ctx).records.values(), key=lambda r: r["fingerprint"])
    if recursion(request):
        return sync([_document(r) for r in records])
    return sync([f"/1.0/certificates/{r['fingerprint']}" for r in records])


@route("POST", "/1.0/certificates", untrusted=True, body={"type": "object", "properties": {
    "name": {"type": "string"}, "type": {"type": "string"}, "certificate": {"type": "string"},
    "password": {"type": "string"}, "restricted": {"type": "boolean"},
    "projects": {"type": "array", "items": {"type": "string"}},
    "token": {"type": "boolean"}}})
async def add_certificate(ctx: Context, request: Request) -> Response:
    """Trust a certificate, or (``token: true``) make a join token.

    The administrator adds any certificate and makes tokens; another client adds its own
    certificate with the trust password or a token (given as ``password``, as ``lxc remote
    add NAME TOKEN`` does)."""
    body = await read_object(request)
    trust = store(ctx)
    peer = request.conn.peer
    trusted = trust.trusted(peer)
    text = body.get("certificate") or ""
    token = body.get("token", False)
    if not isinstance(token, bool):
        raise InvalidArgument("token: expected a boolean")
    if token and text:
        raise InvalidArgument("Can't use certificate if token is requested")
    if token:
        if body.get("type") != "client":
            raise InvalidArgument("Tokens can only be issued for client certificates")
        if not ctx.ops.config.get("core.https_address", ""):
            raise InvalidArgument("Can't issue token when server isn't listening on network")
    if trusted and not text and not token:
        raise InvalidArgument("Client is already trusted")
    name = _check_name(body.get("name"))
    cert_type = _check_type(body.get("type"))
    restricted, projects = _check_projects(body.get("restricted", False), body.get("projects"))
    if not trust.is_admin(peer):
        password = body.get("password", "")
        if token or not password or not isinstance(password, str):
            raise HttpError(403, "not authorized")
        if not text and not (isinstance(peer, TlsPeer) and peer.der):
            raise InvalidArgument("No client certificate provided")  # before a token is used
        join = decode_join_token(password)
        if join is not None:
            granted = redeem_join_token(ctx, join)
            name, cert_type = granted.get("name", ""), "client"
            restricted = bool(granted.get("restricted"))
            projects = list(granted.get("projects") or [])
        else:
            stored = ctx.ops.config.get("core.trust_password", "")
            if not stored or not await trio.to_thread.run_sync(verify_secret, stored, password):
                log.warning("REST: refused a trust request from %s (wrong or no trust "
                            "password)", peer.fingerprint[:12] if isinstance(peer, TlsPeer)
                            else peer)
                raise HttpError(403, "not authorized")
    _check_projects_exist(ctx, projects)
    if token:
        return await start_join_token(ctx, {
            "name": name, "type": cert_type, "restricted": restricted, "projects": projects,
            "certificate": "", "password": "", "token": True})
    if text:
        if not isinstance(text, str):
            raise InvalidArgument("certificate: expected a PEM or base64 DER certificate")
        try:
            der = certificate_der(text)
        except ValueError:
            raise InvalidArgument("certificate: not a valid X.509 certificate") from None
        if not trust.is_admin(peer) and (not isinstance(peer, TlsPeer) or
                                         fingerprint(der) != peer.fingerprint):
            raise HttpError(403, "not authorized")  # only its own, unlike LXD
    elif isinstance(peer, TlsPeer):
        if not peer.der:
            raise InvalidArgument("No client certificate provided")
        der = peer.der
    else:
        raise InvalidArgument("Can't use TLS data on non-TLS link")
    not_before, not_after = certificate_validity(der)
    if time.time() < not_before:
        raise InvalidArgument("The provided certificate isn't valid yet")
    if time.time() > not_after:
        raise InvalidArgument("The provided certificate is expired")
    if not name:
        name = common_name(der)
    record = await trust.add(der, name, cert_type, restricted, projects)
    ctx.host.events.lifecycle("certificate-created", f"/1.0/certificates/{record['fingerprint']}",
                              name=name)
    return sync(None, 201, [("Location", f"/1.0/certificates/{record['fingerprint']}")])


@route("GET", "/1.0/certificates/{fingerprint}")
async def get_certificate(ctx: Context, request: Request) -> Response:
    """One trusted certificate (by fingerprint or a unique prefix)."""
    document = _document(store(ctx).get(request.params["fingerprint"]))
    return sync(document, headers=etag(document))


async def _update(ctx: Context, request: Request, replace: bool) -> Response:
    trust = store(ctx)
    before = trust.get(request.params["fingerprint"])
    record = dict(before)
    check_etag(request, _document(record))
    body = await read_object(request)
    if replace or "name" in body:
        record["name"] = _check_name(body.get("name"))
    if replace or "type" in body:
        record["type"] = _check_type(body.get("type"))
    restricted = body.get("restricted", False if replace else record.get("restricted", False))
    projects = body.get("projects", [] if replace else record.get("projects"))
    record["restricted"], record["projects"] = _check_projects(restricted, projects)
    _check_projects_exist(ctx, record["projects"])
    if not trust.is_admin(request.conn.peer) and any(
            record.get(k) != before.get(k) for k in ("name", "restricted", "projects")):
        raise HttpError(403, "Only the certificate can be changed")
    if body.get("certificate") and body["certificate"] != before.get("certificate"):
        raise InvalidArgument("the certificate of an entry cannot be changed: add the new "
                              "one and delete this one")
    await trust.update(record)
    ctx.host.events.lifecycle("certificate-updated",
                              f"/1.0/certificates/{record['fingerprint']}")
    return sync(None)


@route("PUT", "/1.0/certificates/{fingerprint}")
async def put_certificate(ctx: Context, request: Request) -> Response:
    """Replace a certificate's name, type and restrictions."""
    return await _update(ctx, request, replace=True)


@route("PATCH", "/1.0/certificates/{fingerprint}")
async def patch_certificate(ctx: Context, request: Request) -> Response:
    """Change some of a certificate's name, type and restrictions."""
    return await _update(ctx, request, replace=False)


@route("DELETE", "/1.0/certificates/{fingerprint}")
async def delete_certificate(ctx: Context, request: Request) -> Response:
    """Stop trusting a certificate."""
    trust = store(ctx)
    record = trust.get(request.params["fingerprint"])
    await trust.delete(record["fingerprint"])
    ctx.host.events.lifecycle("certificate-deleted",
                              f"/1.0/certificates/{record['fingerprint']}")
    return sync(None)


# --- join tokens and image secrets: operations of class "token" ---------------------------

def declare_keys(host: Host) -> None:
    """``core.remote_token_expiry`` (LXD 5.0's ``remote_token_expiry``): how long a join
    token lives (``1H``, ``2d 12H``...; empty: until used or revoked)."""
    schema = host.operations.schema
    if schema.server_spec("core.remote_token_expiry") is None:
        schema.server_keys.append(KeySpec(
            "core.remote_token_expiry", check_expiry,
            description="how long a join token of lxc config trust add lives (1H, 2d 12H; "
                        "empty: until used or revoked)"))


_EXPIRY_PART = re.compile(r"^(\d+)(S|M|H|d|w|m|y)$")


def expiry_time(expression: str, now: float) -> float:
    """When something made at ``now`` expires, by LXD's expiry expressions (``30M``, ``1d
    12H``: S, M, H seconds to hours, d days, w weeks, m months, y years; each unit once); 0
    for an empty expression. InvalidArgument if it is not one."""
    parts = expression.split()
    if not parts:
        return 0.0
    amounts: dict[str, int] = {}
    for part in parts:
        match = _EXPIRY_PART.match(part)
        if match is None or match[2] in amounts or len(match[1]) > 9:
            raise InvalidArgument("Invalid expiry expression")
        amounts[match[2]] = int(match[1])
    start = datetime.datetime.fromtimestamp(now, datetime.UTC)
    months = start.month - 1 + amounts.get("m", 0) + 12 * amounts.get("y", 0)
    year, month = start.year + months // 12, months % 12 + 1
    if year > 9999:
        raise InvalidArgument("Invalid expiry expression: too far in the future")
    # as Go's AddDate: a day past the month's end rolls over into the next month
    day_overflow = max(0, start.day - calendar.monthrange(year, month)[1])
    moved = start.replace(year=year, month=month, day=start.day - day_overflow)
    try:
        delta = datetime.timedelta(
            days=day_overflow + amounts.get("d", 0) + 7 * amounts.get("w", 0),
            hours=amounts.get("H", 0), minutes=amounts.get("M", 0), seconds=amounts.get("S", 0))
        return (moved + delta).timestamp()
    except OverflowError:
        raise InvalidArgument("Invalid expiry expression: too far in the future") from None


def check_expiry(value: str) -> None:
    expiry_time(value, time.time())


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


async def listen_addresses(address: str) -> list[str]:
    """The addresses a join token names (LXD's): the listener's own, or every global
    address of the host when it listens on all (IPv4 ones only for ``0.0.0.0``)."""
    from .https import split_address  # noqa: PLC0415 - https imports this module

    host, port = split_address(address)
    if host is not None:
        return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    try:
        result = await trio.run_process(["ip", "-j", "address", "show"], capture_stdout=True,
                                        capture_stderr=True)
        interfaces = json.loads(result.stdout)
    except (OSError, trio.CalledProcessError, ValueError) as exc:
        log.warning("REST: cannot list the host's addresses for a join token: %s", exc)
        return []
    found = []
    only_ipv4 = address.startswith("0.0.0.0")
    for interface in interfaces:
        for info in interface.get("addr_info", []):
            if info.get("scope") != "global" or (only_ipv4 and info.get("family") != "inet"):
                continue
            local = info.get("local", "")
            found.append(f"[{local}]:{port}" if ":" in local else f"{local}:{port}")
    return found


async def start_join_token(ctx: Context, grant: dict[str, Any]) -> Response:
    """A pending join token: an operation of class ``token`` that runs until it is used,
    revoked or expired (``core.remote_token_expiry``), with LXD's metadata (``request``,
    ``secret``, ``fingerprint``, ``addresses``, ``expiresAt``)."""
    metadata: dict[str, Any] = {
        "addresses": await listen_addresses(ctx.ops.config.get("core.https_address", "")),
        "fingerprint": ctx.certificate_fingerprint, "request": grant,
        "secret": secrets.token_hex(32)}
    expires = expiry_time(ctx.ops.config.get("core.remote_token_expiry", ""), time.time())
    if expires:
        metadata["expiresAt"] = rfc3339(expires)

    async def pending(op: Operation) -> None:
        if expires:
            await trio.sleep_until(trio.current_time() + max(0.0, expires - time.time()))
            assert op.cancel_scope is not None
            op.cancel_scope.cancel()  # as LXD: an expired token is cancelled
        await trio.sleep_forever()

    op = Operation("Executing operation", op_class="token", metadata=metadata, may_cancel=True)
    response = ctx.start_operation(op, pending)
    log.info("REST: join token for %r made (operation %s)", grant.get("name"), op.id)
    return response


def decode_join_token(text: str) -> dict[str, Any] | None:
    """The fields of a join token (base64 of JSON: ``client_name``, ``fingerprint``,
    ``addresses``, ``secret``), or None if ``text`` is not one (then it is a password)."""
    try:
        token = json.loads(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(token, dict):
        return None
    for key in ("client_name", "secret", "fingerprint"):
        if not isinstance(token.get(key), str) or not token[key]:
            return None
    if not isinstance(token.get("addresses"), list) or not token["addresses"]:
        return None
    return token


def _same_secret(ours: Any, given: str) -> bool:
    return isinstance(ours, str) and hmac.compare_digest(ours.encode(), given.encode())


def _cancel(ctx: Context, op: Operation) -> None:
    """End a token's operation now (its task notices at its next checkpoint)."""
    ctx.finish(op, "Cancelled", 401, "operation cancelled")
    if op.cancel_scope is not None:
        op.cancel_scope.cancel()


def redeem_join_token(ctx: Context, token: dict[str, Any]) -> dict[str, Any]:
    """Use a join token once: its pending operation ends, and what it grants (name,
    restrictions) is returned; 403 if no pending token has its secret or it expired."""
    for op in list(ctx.operations.values()):
        metadata = op.metadata if isinstance(op.metadata, dict) else {}
        if op.op_class != "token" or op.done.is_set() or "request" not in metadata:
            continue
        if _same_secret(metadata.get("secret"), token["secret"]):
            _cancel(ctx, op)
            expires = metadata.get("expiresAt")
            if expires and time.time() > _parse_rfc3339(expires):
                raise HttpError(403, "Token has expired")
            log.info("REST: join token for %r used", metadata["request"].get("name"))
            return dict(metadata["request"])
    raise HttpError(403, "No matching certificate add operation found")


def _parse_rfc3339(text: str) -> float:
    return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))


def start_image_secret(ctx: Context, fp: str) -> Response:
    """``POST /1.0/images/FP/secret``: a secret that lets an untrusted client read a private
    image (``?secret=``), as LXD: an operation of class ``token`` with the image as resource,
    pending until its first use (after which it answers for as long as LXD keeps a finished
    operation) or its cancellation."""
    op = Operation("Image download token", op_class="token",
                   resources={"images": [f"/1.0/images/{fp}"]},
                   metadata={"secret": secrets.token_hex(32)}, may_cancel=True)

    async def pending(_op: Operation) -> None:
        await trio.sleep_forever()

    response = ctx.start_operation(op, pending)
    ctx.host.events.lifecycle("image-secret-created", f"/1.0/images/{fp}")
    return response


def image_secret_valid(ctx: Context, fp: str, secret: str) -> bool:
    """Whether ``secret`` is one of ``fp``'s image secrets; its operation ends (single use:
    LXD cancels it at the first use, and answers it until the operation is gone)."""
    if not secret:
        return False
    url = f"/1.0/images/{fp}"
    for op in list(ctx.operations.values()):
        metadata = op.metadata if isinstance(op.metadata, dict) else {}
        if op.op_class != "token" or url not in (op.resources or {}).get("images", []):
            continue
        if _same_secret(metadata.get("secret"), secret):
            _cancel(ctx, op)
            return True
    return False


# --- the mount: certificates/ ---------------------------------------------------------------

#: the trust store of each running service, by data directory (the mount and REST share it)
_STORES: dict[str, TrustStore] = {}


def register(host: Host, trust: TrustStore) -> None:
    _STORES[str(host.data_dir)] = trust


def unregister(host: Host) -> None:
    _STORES.pop(str(host.data_dir), None)


class CertificatesDir(Dir):
    """``certificates/``: one directory per trusted certificate, by fingerprint;
    ``cp client.crt certificates/`` trusts one, ``rmdir certificates/FP`` removes it."""

    def _store(self) -> TrustStore:
        trust = _STORES.get(str(self.srv.data_dir))
        if trust is None:
            raise NotSupported("the trust store is not loaded (is the REST bridge running?)")
        return trust

    async def list(self) -> list[str]:
        trust = _STORES.get(str(self.srv.data_dir))
        return sorted(trust.records) if trust else []

    async def child(self, name: str) -> Node | None:
        trust = _STORES.get(str(self.srv.data_dir))
        if trust is None or name not in trust.records:
            return None
        return certificate_dir(self.srv, trust, name)

    def create(self, name: str) -> Node:
        trust = self._store()

        async def add(text: str) -> None:
            try:
                der = certificate_der(text)
            except ValueError:
                raise InvalidArgument(f"{name}: not a PEM certificate") from None
            record = await trust.add(der, common_name(der))
            self.srv.events.lifecycle("certificate-created",
                                      f"/1.0/certificates/{record['fingerprint']}")

        return File(self.srv, write=add)

    async def rmdir(self, name: str) -> None:
        trust = self._store()

        async def delete() -> None:
            record = trust.get(name)
            await trust.delete(record["fingerprint"])
            self.srv.events.lifecycle("certificate-deleted",
                                      f"/1.0/certificates/{record['fingerprint']}")

        await self.srv.guarded("", delete())


def certificate_dir(srv: Host, trust: TrustStore, fp: str) -> StaticDir:
    scope = ""

    def value(field: str) -> Callable[[], str]:
        def read() -> str:
            record = trust.records.get(fp, {})
            item = record.get(field, "")
            if isinstance(item, bool):
                return "true" if item else "false"
            if isinstance(item, list):
                return "\n".join(item)
            return str(item)
        return read

    async def rename(text: str) -> None:
        record = dict(trust.get(fp))
        record["name"] = _check_name(text.strip())
        await trust.update(record)

    return StaticDir(srv, {
        "name": lambda: File(srv, value("name"), rename, scope=scope),
        "type": lambda: File(srv, value("type")),
        "restricted": lambda: File(srv, value("restricted")),
        "projects": lambda: File(srv, value("projects")),
        "certificate": lambda: File(srv, value("certificate")),
        "fingerprint": lambda: File(srv, value("fingerprint")),
    })


@hookimpl
def lxfs_mount_entries(host: Host) -> dict[str, Callable[[], Node | None]]:
    return {"certificates": lambda: CertificatesDir(host)}
