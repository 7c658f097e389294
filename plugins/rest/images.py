"""Images and aliases: ``/1.0/images...`` and ``/1.0/images/aliases...`` as LXD 5.0 serves
them, on the server operations the mount's ``images/`` files call (so either sees what the
other did).

- Uploads (``POST /1.0/images``): a unified tarball is the raw body (``X-LXD-filename``,
  ``X-LXD-public``, ``X-LXD-properties``, ``X-LXD-fingerprint``), a split image a
  ``multipart/form-data`` body whose parts are ``metadata`` then ``rootfs`` (parsed by
  ``multipart``'s push parser). The body is streamed to files in the server's upload
  directory (written and hashed 1 MiB at a time in worker threads, refused past
  :func:`upload_limit`), then imported in a background operation whose metadata gives the
  fingerprint, as LXD's does. An upload cut short, refused or failing to import leaves no
  file behind.
- ``POST /1.0/images`` with a JSON body publishes an instance or a snapshot (LXD refuses a
  running instance: ``lxc publish --force`` stops it and starts it again itself). Remote
  sources (``url``, ``image`` with a ``server``) are pulled by the daemon
  (``Server.pull_image`` through the image server drivers), with LXD's
  ``download_progress``; push mode is refused.
- Exports are the stored files, byte for byte: a unified image as one file, a split one as
  ``multipart/form-data`` with both, named as LXD names them (``FP.tar.xz``, ``meta-FP...``).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

import trio
from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header

from lxfs.config_schema import is_true, parse_size
from lxfs.errors import AlreadyExists, InvalidArgument, LxfsError, NotFound, NotSupported
from lxfs.image_servers import ImageSource

from .app import (
    Context,
    Operation,
    check_etag,
    etag,
    parse_json_object,
    read_object,
    recursion,
    route,
    sync,
)
from .http import MAX_JSON_BODY, HttpError, Request, Response
from .trust import image_secret_valid, start_image_secret

if TYPE_CHECKING:
    from lxfs.model import Image

log = logging.getLogger("lxfs.rest")

#: Go's zero time, and the epoch: what LXD shows for times never set
ZERO_TIME = "0001-01-01T00:00:00Z"
EPOCH = "1970-01-01T00:00:00Z"
WRITE_SIZE = 1 << 20  # bytes of an upload written (and hashed) per worker-thread trip
READ_SIZE = 1 << 20  # bytes of an export read per trip
#: publish's KEY=VALUE words the server reads as options, not properties
PUBLISH_OPTIONS = ("alias", "public", "force", "compression")


# --- documents -----------------------------------------------------------------------------

def go_time(t: float, unset: str = EPOCH) -> str:
    """A time as Go's encoding/json writes one (RFC 3339, nanoseconds without trailing
    zeros); ``unset`` for 0."""
    if t <= 0:
        return unset
    seconds = int(t)
    nanos = round((t - seconds) * 1e9)
    if nanos >= 1_000_000_000:
        seconds, nanos = seconds + 1, 0
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"


_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?"
                      r"(?:([Zz])|([+-])(\d\d):(\d\d))")


def parse_time(value: Any, what: str) -> float:
    """Seconds since the epoch of an RFC 3339 time; Go's zero time, the epoch and none
    are 0."""
    if value is None or value == "":
        return 0.0
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise HttpError(400, f"{what}: invalid time {value!r} (RFC 3339 expected)")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if year <= 1:
        return 0.0
    t = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    t += float(f"0.{match[7] or 0}")
    if match[9]:
        offset = int(match[10]) * 3600 + int(match[11]) * 60
        t -= offset if match[9] == "+" else -offset
    return max(t, 0.0)


def image_url(fingerprint: str) -> str:
    return f"/1.0/images/{fingerprint}"


def alias_url(name: str) -> str:
    return f"/1.0/images/aliases/{quote(name, safe='')}"


def image_document(ctx: Context, image: Image) -> dict[str, Any]:
    """LXD's ``Image`` (the fields of ``get_image_fp.json``; ``update_source`` for an
    image pulled from an image server)."""
    fp = image.fingerprint
    document = {
        "auto_update": image.auto_update,
        "properties": dict(image.properties),
        "public": image.public,
        "expires_at": go_time(image.expires_at),
        "profiles": ["default"],
        "aliases": [{"name": name, "description": description}
                    for name, (target, description) in sorted(ctx.ops.aliases.items())
                    if target == fp],
        "architecture": image.architecture,
        "cached": image.cached,
        "filename": image.filename,
        "fingerprint": fp,
        "size": image.size,
        "type": image.type or "container",
        "created_at": go_time(image.created_at),
        "last_used_at": go_time(image.last_used_at, ZERO_TIME),
        "uploaded_at": go_time(image.uploaded_at),
    }
    if image.update_source:
        document["update_source"] = {
            "alias": image.update_source.get("alias", ""),
            "certificate": image.update_source.get("certificate", ""),
            "protocol": image.update_source.get("protocol", ""),
            "server": image.update_source.get("server", ""),
            "image_type": "container"}
    return document


def image_etag_source(image: Image) -> list[Any]:
    """What LXD's image ETag covers."""
    return [image.public, image.auto_update, dict(image.properties)]


def alias_document(ctx: Context, name: str) -> dict[str, Any]:
    fp, description = ctx.ops.aliases[name]
    image = ctx.ops.images.get(fp)
    return {"description": description, "target": fp, "name": name,
            "type": (image.type if image else "") or "container"}


def find_image(ctx: Context, ref: str) -> Image:
    """An image by fingerprint or unique fingerprint prefix (LXD's lookup: no aliases)."""
    ref = ref.lower()
    image = ctx.ops.images.get(ref)
    if image is not None:
        return image
    matches = [fp for fp in ctx.ops.images if fp.startswith(ref)] if ref else []
    if len(matches) > 1:
        raise HttpError(400, "More than one image matches")
    if not matches:
        raise HttpError(404, "Image not found")
    return ctx.ops.images[matches[0]]


def find_alias(ctx: Context, name: str) -> str:
    if name not in ctx.ops.aliases:
        raise HttpError(404, "Image alias not found")
    return name


def check_project(ctx: Context, request: Request) -> None:
    project = request.query.get("project") or "default"
    if project not in ctx.ops.projects:
        raise HttpError(404, "Project not found")


def check_properties(value: Any, what: str = "properties") -> dict[str, str]:
    """Image properties: string values under names the mount can show as files."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HttpError(400, f"{what}: expected an object of strings")
    for key, item in value.items():
        if not isinstance(item, str):
            raise HttpError(400, f"{what}: {key!r} must be a string")
        if not key or key in (".", "..") or "/" in key or "\0" in key or \
                len(key.encode()) > 255:
            raise HttpError(400, f"{what}: invalid property name {key!r} (1-255 bytes, no '/')")
    return dict(value)


def check_bool(value: Any, what: str, default: bool = False) -> bool:
    """A JSON boolean; null (as Go decodes it) is ``default``."""
    if value is None:
        return default
    if not isinstance(value, bool):
        raise HttpError(400, f"{what}: expected true or false")
    return value


def check_string(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HttpError(400, f"{what}: expected a string")
    return value


# --- filters (api_filtering) ---------------------------------------------------------------

def parse_filter(text: str) -> list[tuple[str, bool, str, str, str]]:
    """LXD's filter language: ``[not] FIELD eq|ne VALUE [and|or ...]`` (a value may be
    quoted to hold spaces). Clauses are (joined by, not, field, operator, value)."""
    words = text.split()
    clauses = []
    joined, i = "and", 0
    while i < len(words):
        negate = words[i].lower() == "not"
        i += negate
        if i == len(words):
            raise HttpError(400, "Invalid filter: incomplete not clause")
        if i + 1 == len(words):
            raise HttpError(400, "Invalid filter: clause has no operator")
        if i + 2 == len(words):
            raise HttpError(400, "Invalid filter: clause has no value")
        field, operator, value = words[i], words[i + 1], words[i + 2]
        i += 3
        if value.startswith('"'):
            value = value[1:]
            while not value.endswith('"'):
                if i >= len(words):
                    raise HttpError(400, "Invalid filter: unterminated quote")
                value += " " + words[i]
                i += 1
            value = value[:-1]
        if operator not in ("eq", "ne"):
            raise HttpError(400, f"Invalid filter: unknown operator {operator!r}")
        clauses.append((joined, negate, field, operator, value))
        if i < len(words):
            joined = words[i]
            if joined not in ("and", "or"):
                raise HttpError(400, "Invalid filter: invalid clause composition")
            i += 1
            if i == len(words):
                raise HttpError(400, "Invalid filter: unterminated compound clause")
    return clauses


def _field(document: Any, path: str) -> Any:
    key, _, rest = path.partition(".")
    if not isinstance(document, dict):
        return None
    if rest and isinstance(document.get(key), dict):
        inner = document[key]
        if all(isinstance(v, str) for v in inner.values()):
            return inner.get(rest, "")  # a string map: the rest is one key ("user.x")
        return _field(inner, rest)
    return document.get(key) if not rest else None


def matches(document: dict[str, Any], clauses: list[tuple[str, bool, str, str, str]]) -> bool:
    """Whether a document passes the filter: strings as case-insensitive regular expressions
    anchored at both ends (unless the value holds ``^`` or ``$``), other values by text."""
    result = True
    for joined, negate, field, operator, value in clauses:
        current = _field(document, field)
        if isinstance(current, str):
            pattern = value if ("^" in value or "$" in value) else f"^(?:{value})$"
            try:
                hit = re.search(pattern, current, re.IGNORECASE) is not None
            except re.error:
                hit = current.lower() == value.lower()
        elif isinstance(current, bool):
            hit = value.lower() == ("true" if current else "false")
        else:
            hit = current is not None and str(current) == value
        hit = hit != (operator == "ne")
        hit = hit != negate
        result = (result and hit) if joined == "and" else (result or hit)
    return result


# --- uploads -------------------------------------------------------------------------------

def upload_limit(ctx: Context) -> int:
    """The largest upload accepted: twice ``images.max_unpacked_size`` and 64 MiB (room for
    tar's headers and padding: the server refuses, at import, an image whose files add up
    to more than the limit; this refuses, while it arrives, a body no acceptable image
    fills)."""
    spec = ctx.ops.schema.server_spec("images.max_unpacked_size")
    value = ctx.ops.config.get("images.max_unpacked_size") or (spec.default if spec else "")
    return 2 * parse_size(value or "2GiB") + (64 << 20)


class Upload:
    """A request body being stored in files of the server's upload directory: written 1 MiB
    per worker-thread trip and hashed on the way (the sha256 of every file's bytes in turn:
    LXD's fingerprint of a unified or split image), refused (413) past ``limit`` bytes.
    ``discard()`` removes every file it made."""

    def __init__(self, ctx: Context, limit: int) -> None:
        self.ctx = ctx
        self.limit = limit
        self.received = 0
        self.digest = hashlib.sha256()
        self.paths: list[Path] = []
        self._fd = -1
        self._buffer = bytearray()

    @property
    def fingerprint(self) -> str:
        return self.digest.hexdigest()

    async def begin_file(self) -> None:
        await self.end_file()
        try:
            path = await trio.to_thread.run_sync(self.ctx.ops.new_upload_path)
            self.paths.append(path)
            self._fd = await trio.to_thread.run_sync(os.open, path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:  # a full or read-only data directory
            raise HttpError(500, f"cannot store the upload: {exc.strerror or exc}") from None

    async def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.limit:
            raise HttpError(413, f"image upload larger than {self.limit} bytes (lxfs takes "
                                 "uploads up to twice images.max_unpacked_size and 64 MiB)")
        self._buffer += data
        if len(self._buffer) >= WRITE_SIZE:
            await self._flush()

    async def _flush(self) -> None:
        if not self._buffer:
            return
        data, self._buffer = bytes(self._buffer), bytearray()
        try:
            await trio.to_thread.run_sync(self._write, self._fd, data)
        except OSError as exc:
            raise HttpError(500, f"cannot store the upload: {exc.strerror or exc}") from None

    def _write(self, fd: int, data: bytes) -> None:
        self.digest.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    async def end_file(self) -> None:
        """Write what is buffered and close the file, its data on disk (a late write error,
        ENOSPC or EIO, shows here)."""
        if self._fd < 0:
            return
        await self._flush()
        fd, self._fd = self._fd, -1
        try:
            await trio.to_thread.run_sync(_sync_and_close, fd)
        except OSError as exc:
            raise HttpError(500, f"cannot store the upload: {exc.strerror or exc}") from None

    async def discard(self) -> None:
        """Remove every file (shielded: it runs on the way out of a cancelled request too)."""
        fd, self._fd = self._fd, -1
        paths, self.paths = self.paths, []
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_discard, fd, paths)


def _sync_and_close(fd: int) -> None:
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _discard(fd: int, paths: list[Path]) -> None:
    if fd >= 0:
        os.close(fd)
    for path in paths:
        path.unlink(missing_ok=True)


async def receive_unified(upload: Upload, first: bytes, chunks: AsyncIterator[bytes]) -> None:
    """Store a raw body (its first chunk already read) as one file."""
    await upload.begin_file()
    await upload.write(first)
    async for chunk in chunks:
        await upload.write(chunk)
    await upload.end_file()


async def receive_split(upload: Upload, boundary: str, chunks: AsyncIterator[bytes]) -> str:
    """Store a split image's multipart body (``metadata``, then ``rootfs``) as two files;
    returns the rootfs part's file name (LXD's ``filename`` of a split image)."""
    try:
        parser = PushMultipartParser(boundary, max_segment_count=16)
    except MultipartError as exc:
        raise HttpError(400, f"invalid multipart body: {exc}") from None
    part, filename = 0, ""
    try:
        async for chunk in chunks:
            for event in parser.parse(chunk):
                if isinstance(event, MultipartSegment):
                    part += 1
                    if part == 1 and event.name != "metadata":
                        raise HttpError(400, "Invalid multipart image")
                    if part == 2 and event.name == "rootfs.img":
                        raise HttpError(400, "virtual-machine images are not supported by "
                                             "lxfs (containers only)")
                    if part == 2 and event.name != "rootfs":
                        raise HttpError(400, "Invalid multipart image")
                    if part <= 2:
                        await upload.begin_file()
                        filename = event.filename or ""
                elif event is not None and part <= 2:  # a chunk of a part's body
                    await upload.write(bytes(event))
        parser.close()
    except MultipartError as exc:
        raise HttpError(400, f"invalid multipart body: {exc}") from None
    if part < 2:
        raise HttpError(400, "Invalid multipart image")
    await upload.end_file()
    return filename


def upload_options(request: Request) -> tuple[bool, dict[str, str], str]:
    """``X-LXD-public``, ``X-LXD-properties`` (a URL-encoded form) and
    ``X-LXD-fingerprint`` of an upload."""
    public = is_true(request.headers.get("x-lxd-public"))
    form = parse_qs(request.headers.get("x-lxd-properties", ""), keep_blank_values=True)
    properties = check_properties({k: v[0] for k, v in form.items()}, "X-LXD-properties")
    return public, properties, request.headers.get("x-lxd-fingerprint", "").strip().lower()


def start_import(ctx: Context, request: Request, upload: Upload, filename: str) -> Response:
    """Import the stored upload in a background operation (LXD's "Downloading image")."""
    public, properties, expected = upload_options(request)
    fingerprint, size = upload.fingerprint, upload.received
    meta, rootfs = upload.paths[0], (upload.paths[1] if len(upload.paths) > 1 else None)
    project = request.query.get("project") or "default"

    async def work(op: Operation) -> None:
        try:
            if expected and expected != fingerprint:
                raise InvalidArgument(f"fingerprints don't match, got {fingerprint} expected "
                                      f"{expected}")
            op.metadata = {"fingerprint": fingerprint, "size": str(size)}
            if fingerprint in ctx.ops.project_images(project):
                raise AlreadyExists("Image with same fingerprint already exists")
            if fingerprint in ctx.ops.images:  # another project's: this one gains it
                await ctx.ops.claim_image(fingerprint, project, new=False)
                return
            image = await ctx.ops.import_image(meta, rootfs, filename)
            upload.paths.clear()  # in the image store now
            await ctx.ops.claim_image(image.fingerprint, project, new=True)
            op.metadata = {"fingerprint": image.fingerprint, "size": str(image.size)}
            if public:
                await ctx.ops.set_image_field(image.fingerprint, "public", "true")
            for key, value in properties.items():
                await ctx.ops.set_image_field(image.fingerprint, f"properties/{key}", value)
        finally:
            await upload.discard()

    return ctx.start_operation(Operation("Downloading image"), work)


async def read_json_body(first: bytes, chunks: AsyncIterator[bytes]) -> Any:
    data = bytearray(first)
    async for chunk in chunks:
        data += chunk
        if len(data) > MAX_JSON_BODY:
            raise HttpError(413, f"request body larger than {MAX_JSON_BODY} bytes")
    if not data.strip():
        raise HttpError(400, "unexpected EOF")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"invalid JSON: {exc}") from None


# --- /1.0/images ---------------------------------------------------------------------------

@route("GET", "/1.0/images", untrusted=True)
async def list_images(ctx: Context, request: Request) -> Response:
    """The project's images: their URLs, or (recursion=1) their documents; ``filter`` as
    LXD. An untrusted client sees the public ones only."""
    check_project(ctx, request)
    clauses = parse_filter(request.query.get("filter", ""))
    images = ctx.ops.project_images(request.query.get("project") or "default")
    documents = [image_document(ctx, image)
                 for _fp, image in sorted(images.items())
                 if request.trusted or image.public]
    documents = [d for d in documents if matches(d, clauses)]
    if recursion(request):
        return sync(documents)
    return sync([image_url(d["fingerprint"]) for d in documents])


@route("POST", "/1.0/images")
async def create_image(ctx: Context, request: Request) -> Response:
    """An upload (raw or multipart body), or a JSON request (publish, a copy, a pull from an
    image server). As LXD, a body that parses as JSON is a request whatever its content
    type."""
    check_project(ctx, request)
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    ctype = ctype.lower()
    upload_options(request)  # refuse bad headers before the body is stored
    async with aclosing(request.chunks()) as chunks:
        if ctype == "multipart/form-data":
            upload = Upload(ctx, upload_limit(ctx))
            try:
                filename = await receive_split(upload, params.get("boundary", ""), chunks)
            except BaseException:
                await upload.discard()
                raise
            return start_import(ctx, request, upload, filename)
        first = b""
        async for chunk in chunks:
            if chunk:
                first = chunk
                break
        if ctype == "application/json" or first.lstrip()[:1] == b"{":
            body = parse_json_object(await read_json_body(first, chunks))
            return await create_from_request(ctx, body)
        upload = Upload(ctx, upload_limit(ctx))
        try:
            await receive_unified(upload, first, chunks)
        except BaseException:
            await upload.discard()
            raise
        return start_import(ctx, request, upload, request.headers.get("x-lxd-filename", ""))


async def create_from_request(ctx: Context, body: dict[str, Any]) -> Response:
    source = parse_json_object(body.get("source") or {}, "source")
    kind = check_string(source.get("type"), "source.type")
    if check_string(source.get("mode"), "source.mode") == "push":
        raise NotSupported("image push (source.mode=push) is not supported by lxfs yet")
    aliases = []
    for entry in body.get("aliases") or []:
        entry = parse_json_object(entry, "aliases")
        name = check_string(entry.get("name"), "aliases.name")
        if not name:
            raise HttpError(400, "aliases: every alias needs a name")
        if name in ctx.ops.aliases:
            raise HttpError(409, f"Alias already exists: {name}")
        aliases.append((name, check_string(entry.get("description"), "aliases.description")))
    if kind == "url":
        return pull_url(ctx, body, source, aliases)
    if kind == "image" and source.get("server"):
        return pull(ctx, body, source_of(source), aliases)
    if kind == "image":
        return copy_local(ctx, source, aliases)
    if kind in ("container", "virtual-machine", "instance", "snapshot"):
        return publish(ctx, body, source, kind, aliases)
    raise HttpError(400, "Invalid images JSON")


def source_of(source: dict[str, Any]) -> tuple[ImageSource, str]:
    """An image source with a server (``source.type=image``, ``mode=pull``) as the server
    operation takes it, and the image asked for (fingerprint, else alias)."""
    protocol = check_string(source.get("protocol"), "source.protocol") or "lxd"
    ref = check_string(source.get("fingerprint"), "source.fingerprint") or \
        check_string(source.get("alias"), "source.alias")
    if not ref:
        raise HttpError(400, "source: a fingerprint or alias is required")
    return ImageSource(server=check_string(source.get("server"), "source.server"),
                       protocol=protocol,
                       certificate=check_string(source.get("certificate"),
                                                "source.certificate"),
                       secret=check_string(source.get("secret"), "source.secret")), ref


def progress_reporter(op: Operation) -> Callable[[str], None]:
    """LXD's ``download_progress`` in the operation's metadata."""

    def report(text: str) -> None:
        op.metadata = {**(op.metadata or {}), "download_progress": text}

    return report


def pull(ctx: Context, body: dict[str, Any], remote: tuple[ImageSource, str],
         aliases: list[tuple[str, str]]) -> Response:
    """``source.type=image`` with a server: the daemon pulls the image (``lxc image copy
    REMOTE:IMAGE local:``)."""
    source, ref = remote
    public = check_bool(body.get("public"), "public")
    auto_update = check_bool(body.get("auto_update"), "auto_update")

    async def work(op: Operation) -> None:
        image = await ctx.ops.pull_image(source, ref, auto_update=auto_update, public=public,
                                         progress=progress_reporter(op))
        op.metadata = {"fingerprint": image.fingerprint, "size": str(image.size)}
        if public and not image.public:
            await ctx.ops.set_image_field(image.fingerprint, "public", "true")
        for name, description in aliases:
            await ctx.ops.create_alias(name, image.fingerprint, description)

    return ctx.start_operation(Operation("Downloading image"), work)


def pull_url(ctx: Context, body: dict[str, Any], source: dict[str, Any],
             aliases: list[tuple[str, str]]) -> Response:
    """``source.type=url``: as LXD, the URL answers a HEAD with ``LXD-Image-URL`` and
    ``LXD-Image-Hash`` headers naming the image file and its fingerprint (the ``url``
    driver of the image servers plugin)."""
    url = check_string(source.get("url"), "source.url")
    if not url:
        raise HttpError(400, "source.url is required")
    public = check_bool(body.get("public"), "public")
    auto_update = check_bool(body.get("auto_update"), "auto_update")
    remote = ImageSource(server=url, protocol="url")

    async def work(op: Operation) -> None:
        image = await ctx.ops.pull_image(remote, url, auto_update=auto_update, public=public,
                                         progress=progress_reporter(op))
        op.metadata = {"fingerprint": image.fingerprint, "size": str(image.size)}
        for name, description in aliases:
            await ctx.ops.create_alias(name, image.fingerprint, description)

    return ctx.start_operation(Operation("Downloading image"), work)


def copy_local(ctx: Context, source: dict[str, Any], aliases: list[tuple[str, str]]
               ) -> Response:
    """``source.type=image`` without a server: an image of this server (already here)."""
    ref = check_string(source.get("fingerprint"), "source.fingerprint") or \
        check_string(source.get("alias"), "source.alias")
    if ref in ctx.ops.aliases:
        image = ctx.ops.images[ctx.ops.aliases[ref][0]]
    else:
        image = find_image(ctx, ref) if ref else None
    if image is None:
        raise HttpError(400, "source: a fingerprint or alias is required")
    fp = image.fingerprint

    async def work(op: Operation) -> None:
        op.metadata = {"fingerprint": fp, "size": str(image.size)}
        for name, description in aliases:
            await ctx.ops.create_alias(name, fp, description)

    return ctx.start_operation(Operation("Downloading image"), work)


def publish(ctx: Context, body: dict[str, Any], source: dict[str, Any], kind: str,
            aliases: list[tuple[str, str]]) -> Response:
    """Publish an instance (stopped: LXD refuses a running one) or a snapshot."""
    name = check_string(source.get("name"), "source.name")
    if not name:
        raise HttpError(400, "No source provided")
    instance, _, snapshot = name.partition("/")
    if kind == "snapshot" and not snapshot:
        raise HttpError(400, "Not a snapshot")
    if kind != "snapshot" and snapshot:
        raise HttpError(400, "This is a snapshot")
    inst = ctx.ops.instances.get(instance)
    if inst is None:
        raise HttpError(404, "Instance not found")
    if snapshot and snapshot not in inst.snapshots:
        raise HttpError(404, "Instance snapshot not found")
    if parse_time(body.get("expires_at"), "expires_at"):
        raise HttpError(400, "expires_at: lxfs images do not expire")
    properties = check_properties(body.get("properties"))
    # ``lxc publish x1 public=true`` (as LXD's guide shows it) sends a property
    # named public: it means the image's public flag, which is what lxfs makes of it.
    make_public = is_true(properties.pop("public", "false"))
    reserved = sorted(set(properties) & set(PUBLISH_OPTIONS))
    if reserved:
        raise HttpError(400, f"properties: lxfs cannot publish a property named "
                             f"{', '.join(reserved)} (a publish option of the server)")
    words = [f"compression={check_string(body.get('compression_algorithm'), 'compression')}"]
    if words[0] == "compression=":
        words = []
    if check_bool(body.get("public"), "public") or make_public:
        words.append("public=true")
    words += [f"{key}={value}" for key, value in properties.items()]

    async def work(op: Operation) -> None:
        if not snapshot and await ctx.ops.state(instance) != "STOPPED":
            raise InvalidArgument("Cannot export a running instance as an image")
        image = await ctx.ops.publish(instance, snapshot, shlex.join(words))
        op.metadata = {"fingerprint": image.fingerprint, "size": str(image.size)}
        for alias, description in aliases:
            await ctx.ops.create_alias(alias, image.fingerprint, description)

    return ctx.start_operation(Operation("Downloading image"), work)


# --- /1.0/images/aliases (before /1.0/images/{fingerprint}: "aliases" is a segment too) -----

@route("GET", "/1.0/images/aliases")
async def list_aliases(ctx: Context, request: Request) -> Response:
    """Aliases: their URLs, or (recursion=1) their documents."""
    check_project(ctx, request)
    names = sorted(ctx.ops.aliases)
    if recursion(request):
        return sync([alias_document(ctx, name) for name in names])
    return sync([alias_url(name) for name in names])


@route("POST", "/1.0/images/aliases")
async def create_alias(ctx: Context, request: Request) -> Response:
    """Create an alias of an image (``name``, ``target``: a fingerprint or prefix)."""
    check_project(ctx, request)
    body = await read_object(request)
    name = check_string(body.get("name"), "name")
    target = check_string(body.get("target"), "target")
    description = check_string(body.get("description"), "description")
    if not name or not target:
        raise HttpError(400, "name and target are required")
    if name in ctx.ops.aliases:
        raise HttpError(409, f'Alias "{name}" already exists')
    image = find_image(ctx, target)
    await ctx.ops.create_alias(name, image.fingerprint, description)
    return sync(None, 201, [("Location", alias_url(name))])


@route("GET", "/1.0/images/aliases/{name}", untrusted=True)
async def get_alias(ctx: Context, request: Request) -> Response:
    """An alias (``name``, ``target``, ``description``, ``type``), with its ETag.

    An untrusted client sees only the aliases of public images."""
    check_project(ctx, request)
    document = alias_document(ctx, find_alias(ctx, request.params["name"]))
    image = ctx.ops.images.get(document["target"])
    if not request.trusted and (image is None or not image.public):
        raise HttpError(404, "Image alias not found")
    return sync(document, headers=etag(document))


@route("PUT", "/1.0/images/aliases/{name}")
async def put_alias(ctx: Context, request: Request) -> Response:
    """Point an alias at an image (``target`` required) and set its description."""
    check_project(ctx, request)
    name = find_alias(ctx, request.params["name"])
    body = await read_object(request)
    target = check_string(body.get("target"), "target")
    description = check_string(body.get("description"), "description")
    if not target:
        raise HttpError(400, "The target field is required")
    check_etag(request, alias_document(ctx, name))
    image = find_image(ctx, target)
    await ctx.ops.update_alias(name, image.fingerprint, description)
    return sync(None)


@route("PATCH", "/1.0/images/aliases/{name}")
async def patch_alias(ctx: Context, request: Request) -> Response:
    """Change an alias's ``target`` and/or ``description``."""
    check_project(ctx, request)
    name = find_alias(ctx, request.params["name"])
    body = await read_object(request)
    document = alias_document(ctx, name)
    check_etag(request, document)
    target, description = document["target"], document["description"]
    if "target" in body:
        target = check_string(body["target"], "target")
    if "description" in body:
        description = check_string(body["description"], "description")
    image = find_image(ctx, target)
    await ctx.ops.update_alias(name, image.fingerprint, description)
    return sync(None)


@route("POST", "/1.0/images/aliases/{name}")
async def rename_alias(ctx: Context, request: Request) -> Response:
    """Rename an alias (``name``: the new one)."""
    check_project(ctx, request)
    body = await read_object(request)
    new = check_string(body.get("name"), "name")
    if new in ctx.ops.aliases:
        raise HttpError(409, f'Alias "{new}" already exists')
    old = find_alias(ctx, request.params["name"])
    await ctx.ops.rename_alias(old, new)
    return sync(None, 201, [("Location", alias_url(new))])


@route("DELETE", "/1.0/images/aliases/{name}")
async def delete_alias(ctx: Context, request: Request) -> Response:
    """Delete an alias (the image stays)."""
    check_project(ctx, request)
    await ctx.ops.delete_alias(find_alias(ctx, request.params["name"]))
    return sync(None)


# --- /1.0/images/{fingerprint} -------------------------------------------------------------

def visible_image(ctx: Context, request: Request) -> Image:
    """The image a request names, if the client may see it: a trusted client any, an
    untrusted one a public image or a private one with its ``?secret=`` (which this use
    ends, as LXD's: it works until its operation is gone)."""
    image = find_image(ctx, request.params["fingerprint"])
    allowed = image_secret_valid(ctx, image.fingerprint, request.query.get("secret", ""))
    if not image.public and not request.trusted and not allowed:
        raise HttpError(404, "Image not found")
    return image


@route("GET", "/1.0/images/{fingerprint}", untrusted=True,
       query={"secret": {"type": "string"}})
async def get_image(ctx: Context, request: Request) -> Response:
    """An image's document, with LXD's ETag (public, auto_update, properties).

    An untrusted client sees a public image, or a private one with a secret from ``POST
    .../secret``."""
    check_project(ctx, request)
    image = visible_image(ctx, request)
    return sync(image_document(ctx, image), headers=etag(image_etag_source(image)))


async def update_image(ctx: Context, image: Image, public: bool, auto_update: bool,
                       properties: dict[str, str]) -> None:
    """Set an image's writable fields, field by field through the server; when one is
    refused (a property value on several lines...), the fields already set are set back."""
    fp = image.fingerprint
    before = (image.public, image.auto_update, dict(image.properties))

    async def apply(public: bool, auto_update: bool, properties: dict[str, str]) -> None:
        if image.public != public:
            await ctx.ops.set_image_field(fp, "public", "true" if public else "false")
        if image.auto_update != auto_update:
            await ctx.ops.set_image_field(fp, "auto_update", "true" if auto_update else "false")
        for key in [k for k in image.properties if k not in properties]:
            await ctx.ops.set_image_field(fp, f"properties/{key}", "")
        for key, value in properties.items():
            if image.properties.get(key) != value:
                await ctx.ops.set_image_field(fp, f"properties/{key}", value)

    try:
        await apply(public, auto_update, properties)
    except BaseException:
        with trio.CancelScope(shield=True):
            try:
                await apply(*before)
            except (LxfsError, OSError) as exc:
                log.error("image %s: cannot set its fields back: %s", fp[:12], exc)
        raise
    ctx.host.events.lifecycle("image-updated", image_url(fp))


def check_profiles(ctx: Context, value: Any) -> None:
    """lxfs images carry no profiles of their own: ``["default"]`` (or none) only."""
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise HttpError(400, "profiles: expected a list of names")
    for name in value:
        if name not in ctx.ops.profiles:
            raise HttpError(400, f"Profile '{name}' doesn't exist")
    if value != ["default"]:
        raise HttpError(400, "profiles: lxfs images have no profiles of their own (instances "
                             "get theirs when created): only [\"default\"] is accepted")


def check_expiry(image: Image, value: Any) -> None:
    """lxfs images do not expire: ``expires_at`` may only be given as it is."""
    wanted = parse_time(value, "expires_at")
    if wanted and abs(wanted - image.expires_at) > 1e-3:
        raise HttpError(400, "expires_at: lxfs images do not expire (it cannot be changed)")


@route("PUT", "/1.0/images/{fingerprint}")
async def put_image(ctx: Context, request: Request) -> Response:
    """Replace an image's ``public``, ``auto_update`` and ``properties``."""
    check_project(ctx, request)
    image = find_image(ctx, request.params["fingerprint"])
    check_etag(request, image_etag_source(image))
    body = await read_object(request)
    public = check_bool(body.get("public"), "public")
    auto_update = check_bool(body.get("auto_update"), "auto_update")
    properties = check_properties(body.get("properties"))
    check_profiles(ctx, body.get("profiles"))
    check_expiry(image, body.get("expires_at"))
    await update_image(ctx, image, public, auto_update, properties)
    return sync(None)


@route("PATCH", "/1.0/images/{fingerprint}")
async def patch_image(ctx: Context, request: Request) -> Response:
    """Change some of ``public``, ``auto_update``, ``properties`` (merged)."""
    check_project(ctx, request)
    image = find_image(ctx, request.params["fingerprint"])
    check_etag(request, image_etag_source(image))
    body = await read_object(request)
    public = check_bool(body.get("public"), "public", image.public)
    auto_update = check_bool(body.get("auto_update"), "auto_update", image.auto_update)
    properties = dict(image.properties)
    if "properties" in body:
        properties.update(check_properties(body["properties"]))
    check_profiles(ctx, body.get("profiles"))
    check_expiry(image, body.get("expires_at"))
    await update_image(ctx, image, public, auto_update, properties)
    return sync(None)


@route("DELETE", "/1.0/images/{fingerprint}")
async def delete_image(ctx: Context, request: Request) -> Response:
    """Delete an image from the project (with its last project, the image and its
    aliases), in a background operation."""
    check_project(ctx, request)
    fp = find_image(ctx, request.params["fingerprint"]).fingerprint
    project = request.query.get("project") or "default"

    async def work(op: Operation) -> None:
        if fp not in ctx.ops.images:
            raise NotFound("Image not found")
        await ctx.ops.delete_project_image(fp, project)  # the files go with the last

    return ctx.start_operation(Operation("Deleting image", resources={"images": [image_url(fp)]}),
                               work)


@route("POST", "/1.0/images/{fingerprint}/refresh")
async def refresh_image(ctx: Context, request: Request) -> Response:
    """Refresh an image from its ``update_source`` now; the operation's metadata says
    whether it was (``refreshed``). As LXD, an image from no image server fails."""
    check_project(ctx, request)
    fp = find_image(ctx, request.params["fingerprint"]).fingerprint

    async def work(op: Operation) -> None:
        new = await ctx.ops.refresh_image(fp, progress_reporter(op))
        op.metadata = {"refreshed": new is not None}

    return ctx.start_operation(Operation("Refreshing image", resources={"images": [image_url(fp)]}),
                               work)


@route("POST", "/1.0/images/{fingerprint}/secret")
async def image_secret(ctx: Context, request: Request) -> Response:
    """A single-use secret for an untrusted client to read this image.

    ``?secret=`` on the image and its export; an operation of class ``token`` whose
    metadata is ``secret``, as LXD's (``lxc image copy`` from a private image asks for
    one)."""
    check_project(ctx, request)
    return start_image_secret(ctx, find_image(ctx, request.params["fingerprint"]).fingerprint)


# --- exports -------------------------------------------------------------------------------

def _extension(path: Path) -> str:
    """LXD's name for a file's compression (``.tar.xz``, ``.squashfs``...), from its magic."""
    with open(path, "rb") as f:
        head = f.read(263)
    if head[:2] == b"BZ":
        return ".tar.bz2"
    if head[:2] == b"\x1f\x8b":
        return ".tar.gz"
    if head[1:5] == b"7zXZ":
        return ".tar.xz" if head[:1] == b"\xfd" else ".tar.lzma"
    if head[:3] == b"\x5d\x00\x00":
        return ".tar.lzma"
    if head[257:262] == b"ustar":
        return ".tar"
    if head[:4] == b"hsqs":
        return ".squashfs"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return ".tar.zst"
    return ""


def _size_and_extension(path: Path) -> tuple[int, str]:
    return path.stat().st_size, _extension(path)


async def _stream(pieces: list[bytes | Path]) -> AsyncIterator[bytes]:
    """The body of an export: ``bytes`` as they are, a ``Path`` read to its end in worker
    threads (opened only once the body is being sent, closed however it ends). A read error
    ends the body early: the client sees it cut (the declared length or the multipart end
    missing)."""
    for piece in pieces:
        if isinstance(piece, bytes):
            yield piece
            continue
        try:
            fd = await trio.to_thread.run_sync(os.open, piece, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.error("REST: image export cut short: %s", exc)
            return
        try:
            while True:
                try:
                    data = await trio.to_thread.run_sync(os.read, fd, READ_SIZE)
                except OSError as exc:
                    log.error("REST: image export cut short: %s", exc)
                    return
                if not data:
                    break
                yield data
        finally:
            os.close(fd)


def _form_part(boundary: str, name: str, filename: str, first: bool) -> bytes:
    """A part's head in a multipart/form-data body, as Go's ``CreateFormFile`` writes it."""
    quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
    return (("" if first else "\r\n") + f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{name}"; filename="{quoted}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()


@route("GET", "/1.0/images/{fingerprint}/export", untrusted=True,
       query={"secret": {"type": "string"}})
async def export_image(ctx: Context, request: Request) -> Response:
    """The image's files as stored: byte for byte what was imported.

    To an untrusted client: a public image, or a private one with its secret."""
    check_project(ctx, request)
    image = visible_image(ctx, request)
    fp = image.fingerprint
    meta, rootfs = ctx.ops.images_dir / fp, ctx.ops.images_dir / f"{fp}.rootfs"
    try:
        size, ext = await trio.to_thread.run_sync(_size_and_extension, meta)
        rootfs_ext = (await trio.to_thread.run_sync(_size_and_extension, rootfs))[1] \
            if image.split else ""
    except OSError:
        raise HttpError(404, "Image not found") from None
    ctx.host.events.lifecycle("image-retrieved", image_url(fp))
    if not image.split:
        return Response(200, _stream([meta]),
                        [("Content-Length", str(size)),
                         ("Content-Disposition", f"inline;filename={fp}{ext}")],
                        content_type="application/octet-stream")
    boundary = secrets.token_hex(30)
    pieces: list[bytes | Path] = [
        _form_part(boundary, "metadata", f"meta-{fp}{ext}", True), meta,
        _form_part(boundary, "rootfs", f"{fp}{rootfs_ext}", False), rootfs,
        f"\r\n--{boundary}--\r\n".encode()]
    return Response(200, _stream(pieces), content_type=f"multipart/form-data; boundary={boundary}")
