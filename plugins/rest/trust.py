"""The trust store: client certificates allowed to use the HTTPS listener, kept as the
plugin's documents in the daemon's database (kind ``certificates``, by fingerprint), and
``/1.0/certificates`` as LXD 5.0 serves it.

A client over HTTPS is trusted when its certificate's fingerprint is in the store. An
untrusted client may read ``GET /1.0`` (``auth: untrusted``) and add its own certificate with
``core.trust_password``; everything else answers 403 "not authorized", as LXD. Clients of the
unix socket are trusted (the socket is root's and group lxfs's).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from lxfs import hookimpl
from lxfs.config_schema import verify_secret
from lxfs.errors import AlreadyExists, InvalidArgument, NotFound, NotSupported
from lxfs.nodes import Dir, File, Node, StaticDir

from .app import Context, check_etag, etag, read_object, recursion, route, sync
from .certs import certificate_der, common_name, der_to_pem, fingerprint
from .http import HttpError, Request, Response

if TYPE_CHECKING:
    from lxfs.api import Host

log = logging.getLogger("lxfs.rest")

KIND = "certificates"
TYPES = ("client", "metrics")
_NAME = re.compile(r"^[^\x00-\x1f\x7f/]{0,255}$")


@dataclass
class TlsPeer:
    """A client of the HTTPS listener: its certificate (DER), if it gave one."""

    der: bytes | None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.der) if self.der else ""


class TrustStore:
    """The trusted certificates by fingerprint, in memory (the event loop's), written through
    to the daemon's database before a change is visible."""

    def __init__(self, host: Host, records: dict[str, dict[str, Any]]) -> None:
        self.host = host
        self.records = records

    @classmethod
    async def load(cls, host: Host) -> TrustStore:
        return cls(host, await trio.to_thread.run_sync(host.load_documents, KIND))

    def trusted(self, peer: Any) -> bool:
        """Whether a connection's peer may use the whole API."""
        if not isinstance(peer, TlsPeer):
            return True  # the unix socket: its peers were checked by uid and group
        record = self.records.get(peer.fingerprint) if peer.der else None
        return record is not None and record.get("type", "client") == "client"

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
    if restricted:
        raise HttpError(501, "restricted certificates are not supported by lxfs yet: "
                             "every trusted client may use the whole API")
    return restricted, projects


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
    """Trust a certificate: a trusted client adds any; an untrusted client adds its own with
    the trust password."""
    body = await read_object(request)
    trust = store(ctx)
    peer = request.conn.peer
    trusted = trust.trusted(peer)
    if body.get("token"):
        raise HttpError(501, "join tokens are not supported by lxfs yet: use "
                             "core.trust_password, or add the certificate on the server")
    name = _check_name(body.get("name"))
    cert_type = _check_type(body.get("type"))
    restricted, projects = _check_projects(body.get("restricted", False),
                                           body.get("projects"))
    if not trusted:
        password = body.get("password", "")
        stored = ctx.ops.config.get("core.trust_password", "")
        if (not isinstance(password, str) or not stored or
                not await trio.to_thread.run_sync(verify_secret, stored, password)):
            log.warning("REST: refused a trust request from %s (wrong or no trust password)",
                        peer.fingerprint[:12] if isinstance(peer, TlsPeer) else peer)
            raise HttpError(403, "not authorized")
    text = body.get("certificate") or ""
    if text:
        if not isinstance(text, str):
            raise InvalidArgument("certificate: expected a PEM or base64 DER certificate")
        try:
            der = certificate_der(text)
        except ValueError:
            raise InvalidArgument("certificate: not a valid X.509 certificate") from None
        if not trusted and isinstance(peer, TlsPeer) and fingerprint(der) != peer.fingerprint:
            raise HttpError(403, "not authorized")
    elif isinstance(peer, TlsPeer) and peer.der:
        der = peer.der
    else:
        raise InvalidArgument("Can't use TLS data on non-TLS link")
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
    record = dict(trust.get(request.params["fingerprint"]))
    check_etag(request, _document(record))
    body = await read_object(request)
    if replace or "name" in body:
        record["name"] = _check_name(body.get("name"))
    if replace or "type" in body:
        record["type"] = _check_type(body.get("type"))
    restricted = body.get("restricted", False if replace else record.get("restricted", False))
    projects = body.get("projects", [] if replace else record.get("projects"))
    record["restricted"], record["projects"] = _check_projects(restricted, projects)
    if body.get("certificate"):
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
