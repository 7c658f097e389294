"""lxfs as a simplestreams image server: the host's public images as the static tree of
``lxfs image export-streams`` (``lxfs.images.streams``), served live under ``/streams/v1/``
and ``/images/FP/FILE`` on the REST bridge's listeners, to anyone (no trust needed, public
images only): ``lxc remote add m https://HOST:8443 --protocol simplestreams``.

Each file's sha256 is computed once (in a worker thread) and kept while the file is the
same (its size and mtime).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from lxfs.image_servers import StreamFile, StreamImage, describe_files, documents, image_dir

from .app import Context, route
from .http import HttpError, Request, Response
from .images import _stream

#: (path, size, mtime_ns) of an image's files → their description
_described: dict[tuple[Any, ...], list[StreamFile]] = {}


def _files(ctx: Context, fp: str) -> tuple[Path, Path | None]:
    image = ctx.ops.images[fp]
    meta = ctx.ops.images_dir / fp
    return meta, (ctx.ops.images_dir / f"{fp}.rootfs") if image.split else None


def _describe(meta: Path, rootfs: Path | None) -> list[StreamFile]:
    key: tuple[Any, ...] = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                                 for p in (meta, rootfs) if p is not None)
    if key not in _described:
        _described[key] = describe_files(meta, rootfs)
    return _described[key]


async def public_images(ctx: Context) -> list[StreamImage]:
    found = []
    for fp, image in sorted(ctx.ops.images.items()):
        if not image.public:
            continue
        try:
            files = await trio.to_thread.run_sync(_describe, *_files(ctx, fp))
        except OSError:
            continue  # deleted meanwhile
        found.append(StreamImage(
            fingerprint=fp, architecture=image.architecture, created_at=image.created_at,
            properties=dict(image.properties), files=files,
            aliases=sorted(a for a, (target, _) in ctx.ops.aliases.items() if target == fp)))
    return found


def _json(document: Any) -> Response:
    return Response(200, json.dumps(document, indent=1).encode() + b"\n",
                    content_type="application/json")


@route("GET", "/streams/v1/index.json", untrusted=True)
async def streams_index(ctx: Context, request: Request) -> Response:
    """The simplestreams index of the host's public images."""
    return _json(documents(await public_images(ctx))[0])


@route("GET", "/streams/v1/images.json", untrusted=True)
async def streams_images(ctx: Context, request: Request) -> Response:
    """The simplestreams products of the host's public images."""
    return _json(documents(await public_images(ctx))[1])


@route("GET", "/images/{fingerprint}/{name}", untrusted=True)
async def streams_file(ctx: Context, request: Request) -> Response:
    """A file of a public image, as the simplestreams products name it."""
    fp, name = request.params["fingerprint"], request.params["name"]
    image = ctx.ops.images.get(fp)
    if image is None or not image.public:
        raise HttpError(404, "not found")
    meta, rootfs = _files(ctx, fp)
    try:
        files = await trio.to_thread.run_sync(_describe, meta, rootfs)
    except OSError:
        raise HttpError(404, "not found") from None
    for described, path in zip(files, (meta, rootfs), strict=False):
        if f"{image_dir(fp)}/{described.name}" == f"images/{fp}/{name}" and path is not None:
            return Response(200, _stream([path]), [("Content-Length", str(described.size))],
                            content_type="application/octet-stream")
    raise HttpError(404, "not found")
