"""``/1.0/storage-pools``: pools, their resources, and their volumes (image, container and
custom ones, custom snapshots) as LXD's documents, over the server's operations (the same
ones ``storage-pools/`` on the mount calls).

lxfs keeps no description or configuration per custom volume: documents show them empty, and
requests that would set them are refused, saying so. Copies stay within a pool.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

import trio

from lxfs.errors import LxfsError, NotFound, NotSupported
from lxfs.model import DEFAULT, rfc3339, split_instance_key
from lxfs.storage import Pool, StorageDriver

from .app import Context, Operation, etag, read_object, recursion, route, sync
from .http import HttpError, Request, Response
from .projects import all_projects, in_project, instance_url, requested_project
from .resources import (
    blocking,
    check_etag,
    created,
    forget,
    forget_removed,
    listing,
    string_map,
    text,
    url,
    used_by_urls,
)

ZERO_TIME = "0001-01-01T00:00:00Z"
VOLUME_TYPES = ("container", "custom", "image")


# --- pools ------------------------------------------------------------------------------------


def _pool(ctx: Context, name: str) -> Pool:
    try:
        return ctx.ops.pool_record(name)
    except NotFound:
        raise NotFound("Storage pool not found") from None


def _pool_names(ctx: Context) -> list[str]:
    return sorted(set(ctx.ops.pools) | set(ctx.ops.pending_pools))


def pool_document(ctx: Context, name: str) -> dict[str, Any]:
    """LXD's ``StoragePool`` (blocking: the pool's volumes are listed for ``used_by``)."""
    pool = _pool(ctx, name)
    users = used_by_urls(ctx.ops.pool_used_by(name))
    backend = ctx.ops.pools.get(name)
    if backend is not None:
        for inst in ctx.ops.instances.values():
            if inst.root_pool() == name:
                users += [url("instances", inst.name, "snapshots", s) for s in inst.snapshots]
        users += [url("images", fp) for fp in backend.list_volumes("image")]
        users += [url("storage-pools", name, "volumes", "custom", v)
                  for v in backend.list_volumes("custom")]
    return {"config": dict(pool.config), "description": pool.description, "name": name,
            "driver": pool.driver, "used_by": sorted(users),
            "status": "Created" if backend is not None else "Pending",
            "locations": ["none"]}


def _pool_etag(pool: Pool) -> list[Any]:
    return [pool.name, pool.driver, pool.config]


def _lifecycle(ctx: Context, action: str, source: str, **context: Any) -> None:
    ctx.host.events.lifecycle(action, source, **context)


@route("GET", "/1.0/storage-pools")
async def list_pools(ctx: Context, request: Request) -> Response:
    names = _pool_names(ctx)
    if recursion(request):
        return sync(await blocking(lambda: [pool_document(ctx, n) for n in names]))
    return sync([url("storage-pools", n) for n in names])


@route("POST", "/1.0/storage-pools")
async def create_pool(ctx: Context, request: Request) -> Response:
    body = await read_object(request)
    name = text(body.get("name"), "name")
    driver = text(body.get("driver"), "driver")
    if not name:
        raise HttpError(400, "No name provided")
    if not driver:
        raise HttpError(400, "No driver provided")
    description = text(body.get("description"), "description")
    await ctx.ops.create_pool(name, driver, string_map(body.get("config")))
    if description:
        await ctx.ops.set_pool_description(name, description)
    return created(url("storage-pools", name))


@route("GET", "/1.0/storage-pools/{name}")
async def get_pool(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    document = await blocking(pool_document, ctx, name)
    return sync(document, headers=etag(_pool_etag(_pool(ctx, name))))


async def _update_pool(ctx: Context, request: Request, patch: bool) -> Response:
    name = request.params["name"]
    pool = _pool(ctx, name)
    check_etag(request, _pool_etag(pool))
    body = await read_object(request)
    current = dict(pool.config)
    config = string_map(body.get("config"))
    if patch:
        config = {**current, **config}
    description = text(body["description"], "description") if "description" in body or \
        not patch else pool.description
    keys = sorted(set(current) | set(config))
    changes = [(k, config.get(k, "")) for k in keys if config.get(k, "") != current.get(k, "")]
    done: list[tuple[str, str]] = []
    try:  # all or nothing: a refused key undoes those set before it
        for key, value in changes:
            await ctx.ops.set_pool_key(name, key, value)
            done.append((key, current.get(key, "")))
    except BaseException:
        with trio.CancelScope(shield=True):
            for key, old in reversed(done):
                with contextlib.suppress(LxfsError, OSError):
                    await ctx.ops.set_pool_key(name, key, old)
        raise
    forget_removed(ctx, f"storage-pools/{name}/config", current,
                   {k: v for k, v in config.items() if v})
    if description != pool.description:
        await ctx.ops.set_pool_description(name, description)
    _lifecycle(ctx, "storage-pool-updated", url("storage-pools", name))
    return sync(None)


@route("PUT", "/1.0/storage-pools/{name}")
async def put_pool(ctx: Context, request: Request) -> Response:
    return await _update_pool(ctx, request, patch=False)


@route("PATCH", "/1.0/storage-pools/{name}")
async def patch_pool(ctx: Context, request: Request) -> Response:
    return await _update_pool(ctx, request, patch=True)


@route("DELETE", "/1.0/storage-pools/{name}")
async def delete_pool(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    _pool(ctx, name)
    await ctx.ops.delete_pool(name)
    forget(ctx, f"storage-pools/{name}")
    return sync(None)


@route("GET", "/1.0/storage-pools/{name}/resources")
async def pool_resources(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    _pool(ctx, name)
    usage = await ctx.ops.pool_resources(name)
    return sync({"space": {"used": usage.used_bytes, "total": usage.total_bytes},
                 "inodes": {"used": usage.used_inodes, "total": usage.total_inodes}})


# --- volumes ----------------------------------------------------------------------------------


def _backend(ctx: Context, pool: str) -> StorageDriver:
    _pool(ctx, pool)
    backend = ctx.ops.pools.get(pool)
    if backend is None:
        raise HttpError(400, f"storage pool {pool} is pending (it has no driver yet)")
    return backend


def _mtime(path: os.PathLike[str]) -> str:
    try:
        return rfc3339(os.stat(path).st_mtime)
    except OSError:
        return ZERO_TIME


def volume_url(pool: str, vtype: str, name: str, project: str = DEFAULT) -> str:
    parent, _, snap = name.partition("/")
    if snap:
        return in_project(project, url("storage-pools", pool, "volumes", vtype, parent,
                                       "snapshots", snap))
    return in_project(project, url("storage-pools", pool, "volumes", vtype, name))


def _volume(name: str, vtype: str, used_by: list[str], created_at: str,
            project: str = DEFAULT) -> dict[str, Any]:
    return {"config": {}, "description": "", "name": name, "type": vtype,
            "used_by": used_by, "location": "none", "content_type": "filesystem",
            "project": project, "created_at": created_at}


def volume_documents(ctx: Context, pool: str, vtype: str | None = None,
                     project: str | None = DEFAULT) -> list[dict[str, Any]]:
    """The pool's volumes (snapshots too, as ``VOL/SNAP``) that ``project`` sees (None:
    every project's), sorted by type then name, as LXD lists them (blocking): its
    instances' volumes under their names in it, the custom volumes (the default
    project's: lxfs keeps them there whatever ``features.storage.volumes`` says) and the
    image volumes of the images it sees."""
    backend = _backend(ctx, pool)
    docs = []
    if vtype in (None, "container"):
        for key in backend.list_volumes("container"):
            inst = ctx.ops.instances.get(key)
            owner, name = (inst.project, inst.local_name) if inst else split_instance_key(key)
            if project is not None and owner != project:
                continue
            when = rfc3339(inst.created_at) if inst else ZERO_TIME
            user = instance_url(inst) if inst else in_project(owner, url("instances", name))
            docs.append(_volume(name, "container", [user], when, owner))
            for snap in inst.snapshots.values() if inst else []:
                docs.append(_volume(f"{name}/{snap.name}", "container",
                                    [instance_url(inst, "snapshots", snap.name)],
                                    rfc3339(snap.created_at), owner))
    if vtype in (None, "custom"):
        for name in backend.list_volumes("custom"):
            docs.append(custom_document(ctx, pool, backend, name))
            for snap in backend.list_snapshots("custom", name):
                docs.append(_volume(f"{name}/{snap}", "custom", [],
                                    _mtime(backend.snapshot_path("custom", name, snap))))
    if vtype in (None, "image"):
        seen = None if project is None else ctx.ops.project_images(project)
        for fp in backend.list_volumes("image"):
            if seen is not None and fp not in seen:
                continue
            image = ctx.ops.images.get(fp)
            when = rfc3339(image.uploaded_at) if image else ZERO_TIME
            docs.append(_volume(fp, "image", [url("images", fp)], when))
    return sorted(docs, key=lambda d: (d["type"], d["name"], d["project"]))


def custom_document(ctx: Context, pool: str, backend: StorageDriver, name: str
                    ) -> dict[str, Any]:
    return _volume(name, "custom", used_by_urls(ctx.ops.custom_volume_users(pool, name)),
                   _mtime(backend.volume_path("custom", name)))


def _matches(doc: dict[str, Any], expression: str) -> bool:
    """LXD's ``filter`` as its client writes it: ``KEY eq VALUE and ...``."""
    for clause in re.split(r"\s+and\s+", expression.strip()):
        key, _, value = clause.partition(" eq ")
        found = doc.get(key.strip())
        if isinstance(found, str) and found != value.strip():
            return False
    return True


@route("GET", "/1.0/storage-pools/{pool}/volumes")
async def list_volumes(ctx: Context, request: Request) -> Response:
    return await _list_volumes(ctx, request, None)


@route("GET", "/1.0/storage-pools/{pool}/volumes/{type}")
async def list_volumes_of_type(ctx: Context, request: Request) -> Response:
    vtype = request.params["type"]
    if vtype not in VOLUME_TYPES:
        raise HttpError(400, f"Invalid storage volume type {vtype!r}")
    return await _list_volumes(ctx, request, vtype)


async def _list_volumes(ctx: Context, request: Request, vtype: str | None) -> Response:
    pool = request.params["pool"]
    project = None if all_projects(request) else requested_project(ctx, request)
    docs = await blocking(volume_documents, ctx, pool, vtype, project)
    expression = request.query.get("filter", "")
    if expression.strip():
        docs = [d for d in docs if _matches(d, expression)]
    return listing(request, docs,
                   lambda d: volume_url(pool, d["type"], d["name"], d["project"]), lambda d: d)


def _custom_exists(backend: StorageDriver, name: str) -> None:
    if not backend.volume_exists("custom", name):
        raise NotFound("Storage volume not found")


def _no_settings(config: dict[str, str], description: str) -> None:
    if config:
        raise HttpError(400, f"custom volumes take no configuration in lxfs (got "
                             f"{', '.join(sorted(config))})")
    if description:
        raise HttpError(400, "custom volumes have no description in lxfs")


@route("POST", "/1.0/storage-pools/{pool}/volumes")
async def create_volume_untyped(ctx: Context, request: Request) -> Response:
    return await _create_volume(ctx, request, None)


@route("POST", "/1.0/storage-pools/{pool}/volumes/{type}")
async def create_volume(ctx: Context, request: Request) -> Response:
    return await _create_volume(ctx, request, request.params["type"])


async def _create_volume(ctx: Context, request: Request, vtype: str | None) -> Response:
    pool = request.params["pool"]
    body = await read_object(request)
    vtype = vtype or text(body.get("type"), "type") or "custom"
    if vtype != "custom":
        raise HttpError(400, f"Only custom volumes can be created (not {vtype!r})")
    _backend(ctx, pool)
    name = text(body.get("name"), "name")
    if not name:
        raise HttpError(400, "No name provided")
    if text(body.get("content_type"), "content_type") not in ("", "filesystem"):
        raise NotSupported("block volumes are not supported by lxfs: only filesystem ones")
    source = body.get("source") or {}
    if not isinstance(source, dict):
        raise HttpError(400, "source: expected an object")
    source_type = text(source.get("type"), "source.type")
    source_name = text(source.get("name"), "source.name")
    _no_settings(string_map(body.get("config")), text(body.get("description"), "description"))
    if source_type in ("", "none") or not source_name:
        if source_type not in ("", "none"):
            raise HttpError(400, "source.name: the volume to copy is missing")
        await ctx.ops.create_custom_volume(pool, name)
        return sync(None)
    if source_type != "copy":
        raise NotSupported(f"volume source {source_type!r} is not supported: only copies "
                           "within this server")
    if (text(source.get("pool"), "source.pool") or pool) != pool:
        raise NotSupported("copying custom volumes between storage pools is not supported "
                           "yet: copy within one pool")
    if text(source.get("project"), "source.project") not in ("", "default") or \
            source.get("refresh"):
        raise NotSupported("only plain copies within the default project are supported")
    if "/" in source_name:
        raise NotSupported("copying a custom volume from one of its snapshots is not "
                           "supported yet: restore it, then copy")
    backend = _backend(ctx, pool)
    await blocking(_custom_exists, backend, source_name)
    snapshots = not source.get("volume_only")

    async def work(op: Operation) -> None:
        await ctx.ops.copy_custom_volume(pool, source_name, name, snapshots)

    return ctx.start_operation(Operation(
        "Copying storage volume",
        resources={"storage_volumes": [volume_url(pool, "custom", name)]}), work)


@route("GET", "/1.0/storage-pools/{pool}/volumes/{type}/{name}")
async def get_volume(ctx: Context, request: Request) -> Response:
    pool, vtype, name = (request.params[k] for k in ("pool", "type", "name"))
    if vtype not in VOLUME_TYPES:
        raise HttpError(400, f"Invalid storage volume type {vtype!r}")
    if vtype == "custom":  # one volume: no listing
        backend = _backend(ctx, pool)
        await blocking(_custom_exists, backend, name)
        docs = [await blocking(custom_document, ctx, pool, backend, name)]
    else:
        docs = await blocking(volume_documents, ctx, pool, vtype,
                              requested_project(ctx, request))
    for doc in docs:
        if doc["name"] == name:
            return sync(doc, headers=etag([doc["name"], doc["type"], doc["config"]]))
    raise NotFound("Storage volume not found")


async def _custom(ctx: Context, request: Request) -> tuple[str, str, StorageDriver]:
    pool, vtype, name = (request.params[k] for k in ("pool", "type", "name"))
    if vtype != "custom":
        raise HttpError(400, f"{vtype} volumes are managed with their "
                             f"{'instance' if vtype == 'container' else 'image'}")
    backend = _backend(ctx, pool)
    await blocking(_custom_exists, backend, name)
    return pool, name, backend


async def _update_volume(ctx: Context, request: Request, patch: bool) -> Response:
    pool, name, _backend_ = await _custom(ctx, request)
    check_etag(request, [name, "custom", {}])
    body = await read_object(request)
    restore = text(body.get("restore"), "restore")
    if restore:
        await ctx.ops.restore_custom_volume(pool, name, restore)
        return sync(None)
    _no_settings(string_map(body.get("config")), text(body.get("description"), "description"))
    return sync(None)


@route("PUT", "/1.0/storage-pools/{pool}/volumes/{type}/{name}")
async def put_volume(ctx: Context, request: Request) -> Response:
    return await _update_volume(ctx, request, patch=False)


@route("PATCH", "/1.0/storage-pools/{pool}/volumes/{type}/{name}")
async def patch_volume(ctx: Context, request: Request) -> Response:
    return await _update_volume(ctx, request, patch=True)


@route("POST", "/1.0/storage-pools/{pool}/volumes/{type}/{name}")
async def rename_volume(ctx: Context, request: Request) -> Response:
    """A rename (201 and the new URL) or, as ``lxc storage volume move`` asks it within
    its pool, the same as an operation."""
    pool, name, _backend_ = await _custom(ctx, request)
    body = await read_object(request)
    if body.get("migration"):
        raise NotSupported("volume migration is not supported: lxfs has no network API yet")
    target_pool = text(body.get("pool"), "pool")
    if target_pool not in ("", pool):
        raise NotSupported("moving custom volumes between storage pools is not supported yet")
    if text(body.get("project"), "project") not in ("", "default"):
        raise NotSupported("lxfs has only the default project")
    new = text(body.get("name"), "name")
    if not new:
        raise HttpError(400, "No name provided")
    if not target_pool:
        await ctx.ops.rename_custom_volume(pool, name, new)
        forget(ctx, f"storage-pools/{pool}/volumes/custom/{name}")
        return created(volume_url(pool, "custom", new))

    async def work(op: Operation) -> None:
        await ctx.ops.rename_custom_volume(pool, name, new)
        forget(ctx, f"storage-pools/{pool}/volumes/custom/{name}")

    return ctx.start_operation(Operation(
        "Moving storage volume",
        resources={"storage_volumes": [volume_url(pool, "custom", name)]}), work)


@route("DELETE", "/1.0/storage-pools/{pool}/volumes/{type}/{name}")
async def delete_volume(ctx: Context, request: Request) -> Response:
    pool, name, _backend_ = await _custom(ctx, request)
    await ctx.ops.delete_custom_volume(pool, name)
    forget(ctx, f"storage-pools/{pool}/volumes/custom/{name}")
    return sync(None)


# --- custom volume snapshots ------------------------------------------------------------------


def _snapshot_document(backend: StorageDriver, volume: str, snap: str) -> dict[str, Any]:
    return {"description": "", "expires_at": ZERO_TIME, "name": snap, "config": {},
            "content_type": "filesystem",
            "created_at": _mtime(backend.snapshot_path("custom", volume, snap))}


def _next_snapshot_name(existing: list[str]) -> str:
    """LXD's ``snapN``: one more than the highest such name."""
    numbers = [int(s[4:]) for s in existing if re.fullmatch(r"snap\d+", s)]
    return f"snap{max(numbers) + 1 if numbers else 0}"


def _no_expiry(value: Any) -> None:
    if value not in (None, "", ZERO_TIME):
        raise NotSupported("snapshot expiry is not supported by lxfs")


@route("GET", "/1.0/storage-pools/{pool}/volumes/{type}/{name}/snapshots")
async def list_snapshots(ctx: Context, request: Request) -> Response:
    pool, name, backend = await _custom(ctx, request)
    snaps = sorted(await blocking(backend.list_snapshots, "custom", name))
    if recursion(request):
        return sync(await blocking(
            lambda: [_snapshot_document(backend, name, s) for s in snaps]))
    return sync([volume_url(pool, "custom", f"{name}/{s}") for s in snaps])


@route("POST", "/1.0/storage-pools/{pool}/volumes/{type}/{name}/snapshots")
async def create_snapshot(ctx: Context, request: Request) -> Response:
    pool, name, backend = await _custom(ctx, request)
    body = await read_object(request)
    _no_expiry(body.get("expires_at"))
    existing = await blocking(backend.list_snapshots, "custom", name)
    snap = text(body.get("name"), "name") or _next_snapshot_name(existing)
    if snap in existing:
        raise HttpError(409, f"Snapshot {snap!r} already in use")

    async def work(op: Operation) -> None:
        await ctx.ops.snapshot_custom_volume(pool, name, snap)
        _lifecycle(ctx, "storage-volume-snapshot-created",
                   volume_url(pool, "custom", f"{name}/{snap}"))

    return ctx.start_operation(Operation(
        "Creating storage volume snapshot",
        resources={"storage_volumes": [volume_url(pool, "custom", name)],
                   "storage_volume_snapshots": [volume_url(pool, "custom", f"{name}/{snap}")]}),
        work)


async def _snapshot(ctx: Context, request: Request) -> tuple[str, str, str, StorageDriver]:
    pool, name, backend = await _custom(ctx, request)
    snap = request.params["snapshot"]
    if snap not in await blocking(backend.list_snapshots, "custom", name):
        raise NotFound("Storage volume snapshot not found")
    return pool, name, snap, backend


@route("GET", "/1.0/storage-pools/{pool}/volumes/{type}/{name}/snapshots/{snapshot}")
async def get_snapshot(ctx: Context, request: Request) -> Response:
    _pool_name, name, snap, backend = await _snapshot(ctx, request)
    document = await blocking(_snapshot_document, backend, name, snap)
    return sync(document, headers=etag([document["description"], document["expires_at"]]))


async def _update_snapshot(ctx: Context, request: Request) -> Response:
    await _snapshot(ctx, request)
    body = await read_object(request)
    _no_expiry(body.get("expires_at"))
    if text(body.get("description"), "description"):
        raise HttpError(400, "volume snapshots have no description in lxfs")
    return sync(None)


@route("PUT", "/1.0/storage-pools/{pool}/volumes/{type}/{name}/snapshots/{snapshot}")
async def put_snapshot(ctx: Context, request: Request) -> Response:
    return await _update_snapshot(ctx, request)


@route("PATCH", "/1.0/storage-pools/{pool}/volumes/{type}/{name}/snapshots/{snapshot}")
async def patch_snapshot(ctx: Context, request: Request) -> Response:
    return await _update_snapshot(ctx, request)


@route("POST", "/1.0/storage-pools/{pool}/volumes/{type}/{name}/snapshots/{snapshot}")
async def rename_snapshot(ctx: Context, request: Request) -> Response:
    pool, name, snap, _backend_ = await _snapshot(ctx, request)
    new = text((await read_object(request)).get("name"), "name")
    if not new:
        raise HttpError(400, "No name provided")

    async def work(op: Operation) -> None:
        await ctx.ops.rename_custom_snapshot(pool, name, snap, new)
        forget(ctx, f"storage-pools/{pool}/volumes/custom/{name}/snapshots/{snap}")

    return ctx.start_operation(Operation(
        "Renaming storage volume snapshot",
        resources={"storage_volume_snapshots": [volume_url(pool, "custom", f"{name}/{snap}")]}),
        work)


@route("DELETE", "/1.0/storage-pools/{pool}/volumes/{type}/{name}/snapshots/{snapshot}")
async def delete_snapshot(ctx: Context, request: Request) -> Response:
    pool, name, snap, _backend_ = await _snapshot(ctx, request)

    async def work(op: Operation) -> None:
        await ctx.ops.delete_custom_snapshot(pool, name, snap)
        forget(ctx, f"storage-pools/{pool}/volumes/custom/{name}/snapshots/{snap}")
        _lifecycle(ctx, "storage-volume-snapshot-deleted",
                   volume_url(pool, "custom", f"{name}/{snap}"))

    return ctx.start_operation(Operation(
        "Deleting storage volume snapshot",
        resources={"storage_volume_snapshots": [volume_url(pool, "custom", f"{name}/{snap}")]}),
        work)
