"""Instance backups over REST, as LXD 5.0 serves them: ``/1.0/instances/NAME/backups``
(list, create as an operation), ``.../backups/B`` (get, rename, delete), ``.../backups/B/export``
(the tarball), and the import of a tarball posted to ``/1.0/instances`` as
``application/octet-stream`` (``X-LXD-name``, ``X-LXD-pool``). Everything runs on the server
operations the mount's ``backups/`` files call (``lxfs.backups``)."""

from __future__ import annotations

import os
from contextlib import aclosing
from typing import Any

import trio

from lxfs.model import COMPRESSIONS, NO_EXPIRY, Backup, rfc3339

from .app import Context, Operation, error, read_object, recursion, sync
from .http import HttpError, Request, Response
from .images import Upload, _stream
from .instances import _check_name, _collection, _resources, instance_route, requested_instance


def backup_document(b: Backup) -> dict[str, Any]:
    """LXD's ``InstanceBackup``."""
    return {"name": b.name, "created_at": rfc3339(b.created_at), "expires_at": b.expires_at,
            "instance_only": b.instance_only, "container_only": b.instance_only,
            "optimized_storage": b.optimized_storage}


def _backup(ctx: Context, name: str, backup: str) -> Backup:
    requested_instance(ctx, name)
    for b in ctx.ops.backups.list(name):
        if b.name == backup:
            return b
    raise HttpError(404, "Instance backup not found")


def _expiry(body: dict[str, Any]) -> str:
    value = body.get("expires_at")
    if value in (None, ""):
        return NO_EXPIRY
    if not isinstance(value, str):
        raise HttpError(400, "expires_at: expected a time")
    return value


@instance_route("GET", "/{name}/backups")
async def list_backups(ctx: Context, request: Request) -> Response:
    """The instance's backups."""
    name = request.params["name"]
    requested_instance(ctx, name)
    backups = ctx.ops.backups.list(name)
    if recursion(request):
        return sync([backup_document(b) for b in backups])
    collection = _collection(request)
    return sync([f"/1.0/{collection}/{name}/backups/{b.name}" for b in backups])


@instance_route("POST", "/{name}/backups")
async def create_backup(ctx: Context, request: Request) -> Response:
    """Make a backup (an operation whose ``backups`` resource names it)."""
    name = request.params["name"]
    inst = requested_instance(ctx, name)
    body = await read_object(request)
    backup = body.get("name") or ctx.ops.backups.next_name(name)
    if not isinstance(backup, str):
        return error(400, "name: expected a string")
    if "/" in backup:
        return error(400, "Backup names may not contain slashes")
    compression = body.get("compression_algorithm") or ""
    if compression and compression not in COMPRESSIONS:
        return error(400, f"Unsupported compression algorithm {compression!r}")
    if any(b.name == backup for b in ctx.ops.backups.list(name)):
        return error(409, "Backup already exists")
    if inst.storage_state != "ready":
        return error(400, "Instance has no root filesystem")
    instance_only = bool(body.get("instance_only") or body.get("container_only"))
    optimized = bool(body.get("optimized_storage"))
    expires = _expiry(body)

    async def make(_op: Operation) -> None:
        await ctx.host.guarded(name, ctx.ops.backups.create(
            name, backup, instance_only=instance_only, optimized=optimized,
            compression=compression, expires_at=expires))

    resources = _resources(name) | {"backups": [f"/1.0/backups/{backup}"]}
    return ctx.start_operation(Operation("Backing up instance", resources=resources), make)


@instance_route("GET", "/{name}/backups/{backup}")
async def get_backup(ctx: Context, request: Request) -> Response:
    """One backup."""
    return sync(backup_document(_backup(ctx, request.params["name"],
                                        request.params["backup"])))


@instance_route("POST", "/{name}/backups/{backup}")
async def rename_backup(ctx: Context, request: Request) -> Response:
    """Rename a backup."""
    name, backup = request.params["name"], request.params["backup"]
    _backup(ctx, name, backup)
    body = await read_object(request)
    new = body.get("name")
    if not isinstance(new, str) or not new:
        return error(400, "name: the new name is required")
    if "/" in new:
        return error(400, "Backup names may not contain slashes")

    async def rename(_op: Operation) -> None:
        await ctx.host.guarded(name, ctx.ops.backups.rename(name, backup, new))

    return ctx.start_operation(Operation("Renaming instance backup",
                                         resources=_resources(name)), rename)


@instance_route("DELETE", "/{name}/backups/{backup}")
async def delete_backup(ctx: Context, request: Request) -> Response:
    """Delete a backup."""
    name, backup = request.params["name"], request.params["backup"]
    _backup(ctx, name, backup)

    async def remove(_op: Operation) -> None:
        await ctx.host.guarded(name, ctx.ops.backups.delete(name, backup))

    return ctx.start_operation(Operation("Removing instance backup",
                                         resources={"container": [f"/1.0/containers/{name}"]}),
                               remove)


@instance_route("GET", "/{name}/backups/{backup}/export")
async def export_backup(ctx: Context, request: Request) -> Response:
    """The backup's tarball."""
    name, backup = request.params["name"], request.params["backup"]
    _backup(ctx, name, backup)
    path = ctx.ops.backups.path(name, backup)
    try:
        size = (await trio.to_thread.run_sync(os.stat, path)).st_size
    except OSError:
        raise HttpError(404, "Instance backup not found") from None
    ctx.host.events.lifecycle("instance-backup-retrieved",
                              f"/1.0/instances/{name}/backups/{backup}")
    return Response(200, _stream([path]),
                    [("Content-Length", str(size)),
                     ("Content-Disposition", f"inline;filename={backup}")],
                    content_type="application/octet-stream")


async def import_body(ctx: Context, request: Request) -> Response:
    """``POST /1.0/instances`` with a backup tarball as its body: stored, then imported in
    an operation (``X-LXD-name``: another name; ``X-LXD-pool``: the target pool)."""
    name = request.headers.get("x-lxd-name", "")
    pool = request.headers.get("x-lxd-pool", "")
    if name:
        _check_name(name)
        if name in ctx.ops.instances:
            return error(409, f"Instance {name!r} already exists")
    if pool and pool not in ctx.ops.pools:
        return error(404, "Storage pool not found")
    upload = Upload(ctx, 1 << 62)
    try:
        async with aclosing(request.chunks()) as chunks:
            await upload.begin_file()
            async for chunk in chunks:
                await upload.write(chunk)
            await upload.end_file()
    except BaseException:
        await upload.discard()
        raise
    path = upload.paths[0]

    async def run(op: Operation) -> None:
        try:
            created = await ctx.host.guarded("", ctx.ops.backups.import_tarball(
                path, name, pool))
            op.resources = _resources(created)
        finally:
            await upload.discard()

    return ctx.start_operation(
        Operation("Restoring backup", resources=_resources(name) if name else {}), run)
