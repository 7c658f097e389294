"""``/1.0/projects`` (the ``default`` project only: others come in a later issue; its
``restricted*`` keys are the server's, as ``projects/default/config/`` on the mount) and
``/1.0/certificates`` (an empty trust store until lxfs listens on HTTPS)."""

from __future__ import annotations

from typing import Any

from lxfs.errors import NotFound, NotSupported
from lxfs.model import Project

from .app import Context, etag, read_object, route, sync
from .http import HttpError, Request, Response
from .resources import check_etag, forget_removed, listing, string_map, text, url

#: LXD's project features: all on in the default project, and fixed there
FEATURES = {"features.images": "true", "features.networks": "true",
            "features.profiles": "true", "features.storage.volumes": "true"}


def _project(ctx: Context, name: str) -> Project:
    project = ctx.ops.projects.get(name)
    if project is None:
        raise NotFound("Project not found")
    return project


def _config(project: Project) -> dict[str, str]:
    return {**FEATURES, **project.config}


def project_document(ctx: Context, project: Project) -> dict[str, Any]:
    used_by = [url("instances", n) for n in sorted(ctx.ops.instances)]
    used_by += [url("profiles", n) for n in sorted(ctx.ops.profiles)]
    used_by += [url("images", fp) for fp in sorted(ctx.ops.images)]
    return {"config": _config(project), "description": project.description,
            "name": project.name, "used_by": used_by}


def _etag_of(project: Project) -> list[Any]:
    return [project.description, _config(project)]


@route("GET", "/1.0/projects")
async def list_projects(ctx: Context, request: Request) -> Response:
    projects = [ctx.ops.projects[n] for n in sorted(ctx.ops.projects)]
    return listing(request, projects, lambda p: url("projects", p.name),
                   lambda p: project_document(ctx, p))


@route("POST", "/1.0/projects")
async def create_project(ctx: Context, request: Request) -> Response:
    await request.drain()
    raise NotSupported("lxfs has only the default project for now: creating projects "
                       "comes in a later version")


@route("GET", "/1.0/projects/{name}")
async def get_project(ctx: Context, request: Request) -> Response:
    project = _project(ctx, request.params["name"])
    return sync(project_document(ctx, project), headers=etag(_etag_of(project)))


async def _update(ctx: Context, request: Request, patch: bool) -> Response:
    project = _project(ctx, request.params["name"])
    check_etag(request, _etag_of(project))
    body = await read_object(request)
    current = _config(project)
    config = string_map(body.get("config")) if "config" in body or not patch else current
    if patch:
        config = {**current, **config}
    description = text(body["description"], "description") if "description" in body or \
        not patch else project.description
    for key, value in FEATURES.items():
        if config.get(key, value) != value:
            raise HttpError(400, "You can't change the features of the default project")
    own = {k: v for k, v in config.items() if k not in FEATURES}
    before = dict(project.config)
    await ctx.ops.update_project(project.name, description, own)
    forget_removed(ctx, f"projects/{project.name}/config", before,
                   {k: v for k, v in own.items() if v})
    ctx.host.events.lifecycle("project-updated", url("projects", project.name))
    return sync(None)


@route("PUT", "/1.0/projects/{name}")
async def put_project(ctx: Context, request: Request) -> Response:
    return await _update(ctx, request, patch=False)


@route("PATCH", "/1.0/projects/{name}")
async def patch_project(ctx: Context, request: Request) -> Response:
    return await _update(ctx, request, patch=True)


@route("POST", "/1.0/projects/{name}")
async def rename_project(ctx: Context, request: Request) -> Response:
    _project(ctx, request.params["name"])
    await request.drain()
    raise HttpError(403, "The 'default' project cannot be renamed")


@route("DELETE", "/1.0/projects/{name}")
async def delete_project(ctx: Context, request: Request) -> Response:
    _project(ctx, request.params["name"])
    raise HttpError(403, "The 'default' project cannot be deleted")


@route("GET", "/1.0/projects/{name}/state")
async def project_state(ctx: Context, request: Request) -> Response:
    _project(ctx, request.params["name"])
    usage = {"containers": len(ctx.ops.instances), "instances": len(ctx.ops.instances),
             "virtual-machines": 0, "networks": 0}
    return sync({"resources": {k: {"limit": -1, "usage": v} for k, v in usage.items()}})
