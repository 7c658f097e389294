"""``/1.0/profiles``: LXD's profile documents over the server's profiles (the same records
``profiles/`` on the mount shows). PUT and PATCH replace a profile in one step
(``Server.update_profile``): every key and device is checked first, nothing changes on a
refusal. ``?project=`` names the project; one with ``features.profiles=false`` sees and
changes the default project's profiles (LXD's effective project)."""

from __future__ import annotations

from typing import Any

import trio

from lxfs.errors import LxfsError, NotFound
from lxfs.model import Profile, split_profile_key

from .app import Context, error, etag, read_object, route, sync
from .http import HttpError, Request, Response
from .projects import in_project, instance_url, profile_key_in, requested_project
from .resources import (
    check_etag,
    created,
    devices_map,
    forget,
    forget_removed,
    listing,
    string_map,
    text,
    url,
)


def profile_document(ctx: Context, profile: Profile) -> dict[str, Any]:
    return {
        "config": dict(profile.config),
        "description": profile.description,
        "devices": {name: dict(dev) for name, dev in profile.devices.items()},
        "name": split_profile_key(profile.name)[1],
        "used_by": [instance_url(ctx.ops.instances[n])
                    for n in ctx.ops.profile_used_by(profile.name)],
    }


def _key(ctx: Context, request: Request, name: str | None = None) -> str:
    """The key of the profile a request names (``name``, else the URL's) in its project."""
    project = requested_project(ctx, request)
    return profile_key_in(ctx, project, request.params["name"] if name is None else name)


def _url(key: str) -> str:
    project, name = split_profile_key(key)
    return in_project(project, url("profiles", name))


def _etag_of(profile: Profile) -> list[Any]:
    """What LXD's profile ETag covers."""
    return [profile.config, profile.description, profile.devices]


def _mount_path(key: str) -> str:
    project, name = split_profile_key(key)
    return f"profiles/{name}" if project == "default" else f"projects/{project}/profiles/{name}"


def _profile(ctx: Context, name: str) -> Profile:
    """The profile of key ``name``, or LXD's 404."""
    profile = ctx.ops.profiles.get(name)
    if profile is None:
        raise NotFound("Profile not found")
    return profile


def _lifecycle(ctx: Context, action: str, name: str, **context: Any) -> None:
    ctx.host.events.lifecycle(f"profile-{action}", _url(name), **context)


def _new_name(body: dict[str, Any]) -> str:
    name = text(body.get("name"), "name")
    if not name:
        raise HttpError(400, "No name provided")
    return name


@route("GET", "/1.0/profiles")
async def list_profiles(ctx: Context, request: Request) -> Response:
    owned = ctx.ops.project_profiles(requested_project(ctx, request))
    profiles = [owned[n] for n in sorted(owned)]
    return listing(request, profiles, lambda p: _url(p.name),
                   lambda p: profile_document(ctx, p))


@route("POST", "/1.0/profiles")
async def create_profile(ctx: Context, request: Request) -> Response:
    body = await read_object(request)
    name = _key(ctx, request, _new_name(body))
    description = text(body.get("description"), "description")
    config, devices = string_map(body.get("config")), devices_map(body.get("devices"))
    if name in ctx.ops.profiles:
        return error(409, f"Error inserting {split_profile_key(name)[1]!r} into database: The "
                          "profile already exists")
    ctx.ops.check_profile(name, config, devices)
    await ctx.ops.create_profile(name)
    if description or config or devices:
        try:
            await ctx.ops.update_profile(name, description, config, devices)
        except BaseException:
            with trio.CancelScope(shield=True):
                await ctx.ops.delete_profile(name)
            raise
    _lifecycle(ctx, "created", name)
    return created(_url(name))


@route("GET", "/1.0/profiles/{name}")
async def get_profile(ctx: Context, request: Request) -> Response:
    profile = _profile(ctx, _key(ctx, request))
    return sync(profile_document(ctx, profile), headers=etag(_etag_of(profile)))


@route("PUT", "/1.0/profiles/{name}")
async def put_profile(ctx: Context, request: Request) -> Response:
    profile = _profile(ctx, _key(ctx, request))
    check_etag(request, _etag_of(profile))
    body = await read_object(request)
    await _update(ctx, profile, text(body.get("description"), "description"),
                  string_map(body.get("config")), devices_map(body.get("devices")))
    return sync(None)


async def _update(ctx: Context, profile: Profile, description: str, config: dict[str, str],
                  devices: dict[str, dict[str, str]]) -> None:
    before = {"config": dict(profile.config),
              "devices": {k: dict(v) for k, v in profile.devices.items()}}
    await ctx.ops.update_profile(profile.name, description, config, devices)
    forget_removed(ctx, _mount_path(profile.name), before,
                   {"config": profile.config, "devices": profile.devices})
    _lifecycle(ctx, "updated", profile.name)


@route("PATCH", "/1.0/profiles/{name}")
async def patch_profile(ctx: Context, request: Request) -> Response:
    """Keys and devices in the request replace those of the same name; the rest stays."""
    profile = _profile(ctx, _key(ctx, request))
    check_etag(request, _etag_of(profile))
    body = await read_object(request)
    description = text(body["description"], "description") if "description" in body \
        else profile.description
    config = {**profile.config, **string_map(body.get("config"))}
    devices = {**profile.devices, **devices_map(body.get("devices"))}
    await _update(ctx, profile, description, config, devices)
    return sync(None)


@route("POST", "/1.0/profiles/{name}")
async def rename_profile(ctx: Context, request: Request) -> Response:
    name = _key(ctx, request)
    if request.params["name"] == "default":
        return error(403, 'The "default" profile cannot be renamed')
    _profile(ctx, name)
    new_name = _new_name(await read_object(request))
    new = _key(ctx, request, new_name)
    if new in ctx.ops.profiles:
        return error(409, f"Name {new_name!r} already in use")
    await ctx.ops.rename_profile(name, new)
    forget(ctx, _mount_path(name))
    _lifecycle(ctx, "renamed", new, old_name=request.params["name"])
    return created(_url(new))


@route("DELETE", "/1.0/profiles/{name}")
async def delete_profile(ctx: Context, request: Request) -> Response:
    name = _key(ctx, request)
    if request.params["name"] == "default":
        return error(403, 'The "default" profile cannot be deleted')
    _profile(ctx, name)
    users = ctx.ops.profile_used_by(name)
    if users:
        return error(400, f"Profile is currently in use (by {', '.join(users)})")
    try:
        await ctx.ops.delete_profile(name)
    except LxfsError as exc:
        return error(400 if exc.status == 500 else exc.status, exc.message)
    forget(ctx, _mount_path(name))
    _lifecycle(ctx, "deleted", name)
    return sync(None)
