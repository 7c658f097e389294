"""``/1.0/projects``: LXD's projects over the server's (``projects/`` on the mount): create,
show, update, rename and delete (empty ones), and ``state`` (usage against limits). Also
the helpers the other modules use to read ``?project=`` and to name a project's instances
and profiles in URLs."""

from __future__ import annotations

from typing import Any

from lxfs.errors import NotFound
from lxfs.model import (
    DEFAULT,
    DEFAULT_FEATURES,
    FEATURES,
    Instance,
    Project,
    profile_key,
    split_profile_key,
)

from .app import Context, etag, read_object, route, sync
from .http import HttpError, Request, Response
from .resources import check_etag, created, forget_removed, listing, string_map, text, url


def requested_project(ctx: Context, request: Request) -> str:
    """The project a request names (``?project=``, ``default`` without), or LXD's 404."""
    project = request.query.get("project") or DEFAULT
    if project not in ctx.ops.projects:
        raise HttpError(404, "Project not found")
    return project


def all_projects(request: Request) -> bool:
    """``?all-projects=true`` (400 beside ``?project=``, as LXD)."""
    wanted = request.query.get("all-projects", "").lower() in ("true", "1", "yes")
    if wanted and request.query.get("project"):
        raise HttpError(400, "Cannot specify a project when requesting all projects")
    return wanted


def in_project(project: str, path: str) -> str:
    """``path`` with ``?project=`` when ``project`` is not ``default``."""
    return path if project == DEFAULT else f"{path}?project={project}"


def instance_url(inst: Instance, *rest: str) -> str:
    return in_project(inst.project, url("instances", inst.local_name, *rest))


def profile_key_in(ctx: Context, project: str, name: str) -> str:
    """The key of profile ``name`` as ``project`` sees it (the default project's when its
    ``features.profiles`` is off, as LXD's effective project)."""
    return profile_key(ctx.ops.profiles_project(project), name)


def _project(ctx: Context, name: str) -> Project:
    project = ctx.ops.projects.get(name)
    if project is None:
        raise NotFound("Project not found")
    return project


def _config(project: Project) -> dict[str, str]:
    if project.name == DEFAULT:
        return {**DEFAULT_FEATURES, **project.config}
    return dict(project.config)


def project_document(ctx: Context, project: Project) -> dict[str, Any]:
    name = project.name
    used_by = [instance_url(i) for i in sorted(ctx.ops.project_instances(name),
                                               key=lambda i: i.name)]
    if ctx.ops.profiles_project(name) == name:
        used_by += [in_project(name, url("profiles", split_profile_key(k)[1]))
                    for k in sorted(ctx.ops.profiles) if split_profile_key(k)[0] == name]
    if name == DEFAULT:
        used_by += [url("images", fp) for fp in sorted(ctx.ops.images)]
    return {"config": _config(project), "description": project.description,
            "name": name, "used_by": used_by}


def _etag_of(project: Project) -> list[Any]:
    return [project.description, _config(project)]


@route("GET", "/1.0/projects")
async def list_projects(ctx: Context, request: Request) -> Response:
    projects = [ctx.ops.projects[n] for n in sorted(ctx.ops.projects)]
    return listing(request, projects, lambda p: url("projects", p.name),
                   lambda p: project_document(ctx, p))


@route("POST", "/1.0/projects")
async def create_project(ctx: Context, request: Request) -> Response:
    body = await read_object(request)
    name = text(body.get("name"), "name")
    if not name:
        raise HttpError(400, "No name provided")
    if name in ctx.ops.projects:
        raise HttpError(409, f"Error inserting {name!r} into database: The project already "
                             "exists")
    await ctx.ops.create_project(name, text(body.get("description"), "description"),
                                 string_map(body.get("config")))
    return created(url("projects", name))


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
    if project.name == DEFAULT:
        for key, value in DEFAULT_FEATURES.items():
            if config.get(key, value) != value:
                raise HttpError(400, "You can't change the features of the default project")
        config = {k: v for k, v in config.items() if k not in FEATURES}
    elif not patch:  # a PUT without a feature turns it off, as LXD
        config = {**dict.fromkeys(FEATURES, "false"), **config}
    before = dict(project.config)
    await ctx.ops.update_project(project.name, description, config)
    forget_removed(ctx, f"projects/{project.name}/config", before,
                   {k: v for k, v in config.items() if v})
    return sync(None)


@route("PUT", "/1.0/projects/{name}")
async def put_project(ctx: Context, request: Request) -> Response:
    return await _update(ctx, request, patch=False)


@route("PATCH", "/1.0/projects/{name}")
async def patch_project(ctx: Context, request: Request) -> Response:
    return await _update(ctx, request, patch=True)


@route("POST", "/1.0/projects/{name}")
async def rename_project(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    _project(ctx, name)
    if name == DEFAULT:
        await request.drain()
        raise HttpError(403, "The 'default' project cannot be renamed")
    new = text((await read_object(request)).get("name"), "name")
    if not new:
        raise HttpError(400, "No name provided")
    if new in ctx.ops.projects:
        raise HttpError(409, f"Name {new!r} already in use")
    await ctx.ops.rename_project(name, new)
    return created(url("projects", new))


@route("DELETE", "/1.0/projects/{name}")
async def delete_project(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    _project(ctx, name)
    if name == DEFAULT:
        raise HttpError(403, "The 'default' project cannot be deleted")
    if not ctx.ops.project_is_empty(name):
        raise HttpError(400, "Only empty projects can be removed")
    await ctx.ops.delete_project(name)
    return sync(None)


@route("GET", "/1.0/projects/{name}/state")
async def project_state(ctx: Context, request: Request) -> Response:
    _project(ctx, request.params["name"])
    usage = ctx.ops.project_usage(request.params["name"])
    resources = {resource: {"limit": limit, "usage": used}
                 for resource, (used, limit) in usage.items()}
    resources["networks"] = {"limit": -1, "usage": 0}
    return sync({"resources": resources})
