"""The server itself: ``/``, ``/1.0``, operations and the event stream."""

from __future__ import annotations

import json
import os
import platform
import socket
from typing import Any

import trio

from lxfs.config_schema import is_true

from . import extensions
from .app import Context, error, etag, read_object, recursion, route, sync
from .http import HttpError, Request, Response
from .projects import all_projects, requested_project


@route("GET", "/", untrusted=True)
async def get_root(ctx: Context, request: Request) -> Response:
    return sync(["/1.0"])


def server_document(ctx: Context) -> dict[str, Any]:
    env = ctx.ops.environment()
    config = {k: ("true" if ctx.ops.schema.server_spec(k) and
                  ctx.ops.schema.server_spec(k).secret else v)  # type: ignore[union-attr]
              for k, v in ctx.ops.config.items()}
    drivers = [{"Name": name, "Version": "1", "Remote": False}
               for name in env.get("storage_drivers", "").split()]
    return {
        "config": config,
        "api_extensions": extensions.IMPLEMENTED,
        "api_status": "stable",
        "api_version": "1.0",
        "auth": "trusted",
        "public": False,
        "auth_methods": ["tls"],
        "environment": {
            "addresses": [address] if (address := ctx.ops.config.get("core.https_address"))
            else [],
            "architectures": host_architectures(),
            "certificate": ctx.certificate_pem,
            "certificate_fingerprint": ctx.certificate_fingerprint,
            "driver": env.get("driver", "lxc"),
            "driver_version": env.get("driver_version", ""),
            "firewall": "nftables",
            "kernel": platform.system(),
            "kernel_architecture": platform.machine(),
            "kernel_features": {"idmapped_mounts": "true", "seccomp_listener": "true",
                                "seccomp_listener_continue": "true", "shiftfs": "false",
                                "unpriv_fscaps": "true", "netnsid_getifaddrs": "true",
                                "uevent_injection": "true"},
            "kernel_version": platform.release(),
            "lxc_features": {"cgroup2": "true", "idmapped_mounts_v2": "true",
                             "seccomp_notify": "true", "pidfd": "true"},
            "os_name": _os_release().get("NAME", "Linux"),
            "os_version": _os_release().get("VERSION_ID", ""),
            "project": "default",
            "server": "lxfs",
            "server_clustered": False,
            "server_event_mode": "full-mesh",
            "server_name": socket.gethostname(),
            "server_pid": os.getpid(),
            "server_version": env.get("server_version", ""),
            "storage": "dir",
            "storage_version": "1",
            "storage_supported_drivers": drivers,
        },
    }


def host_architectures() -> list[str]:
    """LXD's names: the machine's and, on x86_64, i686."""
    machine = platform.machine()
    return [machine, "i686"] if machine == "x86_64" else [machine]


def _os_release() -> dict[str, str]:
    found = {}
    try:
        with open("/etc/os-release") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                found[key] = value.strip('"')
    except OSError:
        pass
    return found


@route("GET", "/1.0", untrusted=True)
async def get_server(ctx: Context, request: Request) -> Response:
    """The server: its configuration and environment (to a client whose certificate is not
    trusted, only what it needs to ask for trust, as LXD)."""
    document = server_document(ctx)
    if not request.trusted:
        return sync({k: document[k] for k in ("api_extensions", "api_status", "api_version",
                                              "public", "auth_methods")} | {"auth": "untrusted"})
    return sync(document, headers=etag(document["config"]))


async def _set_server_config(ctx: Context, config: dict[str, Any], replace: bool) -> None:
    if not isinstance(config, dict):
        raise HttpError(400, "config: expected an object")
    current = dict(ctx.ops.config)
    for key, value in config.items():
        value = "" if value is None else str(value)
        if current.get(key) != value:
            await ctx.ops.set_server_key(key, value)
    if replace:
        for key in current:
            if key not in config:
                await ctx.ops.set_server_key(key, "")


@route("PUT", "/1.0")
async def put_server(ctx: Context, request: Request) -> Response:
    body = await read_object(request)
    await _set_server_config(ctx, body.get("config") or {}, replace=True)
    return sync(None)


@route("PATCH", "/1.0")
async def patch_server(ctx: Context, request: Request) -> Response:
    body = await read_object(request)
    await _set_server_config(ctx, body.get("config") or {}, replace=False)
    return sync(None)


# --- operations ----------------------------------------------------------------------------

@route("GET", "/1.0/operations")
async def list_operations(ctx: Context, request: Request) -> Response:
    groups: dict[str, list[Any]] = {}
    for op in ctx.operations.values():
        groups.setdefault(op.status.lower(), []).append(
            op.document() if recursion(request) else op.url)
    return sync(groups)


def _operation(ctx: Context, op_id: str):  # type: ignore[no-untyped-def]
    op = ctx.operations.get(op_id)
    if op is None:
        raise HttpError(404, "Operation not found")
    return op


@route("GET", "/1.0/operations/{id}")
async def get_operation(ctx: Context, request: Request) -> Response:
    return sync(_operation(ctx, request.params["id"]).document())


@route("DELETE", "/1.0/operations/{id}")
async def cancel_operation(ctx: Context, request: Request) -> Response:
    op = _operation(ctx, request.params["id"])
    if not op.may_cancel or op.cancel_scope is None:
        return error(400, "This operation can't be cancelled")
    op.cancel_scope.cancel()
    return sync(None)


@route("GET", "/1.0/operations/{id}/wait")
async def wait_operation(ctx: Context, request: Request) -> Response:
    op = _operation(ctx, request.params["id"])
    try:
        timeout = float(request.query.get("timeout", "-1") or -1)
    except ValueError:
        raise HttpError(400, "invalid timeout") from None
    with trio.move_on_after(timeout if timeout >= 0 else float("inf")):
        await op.done.wait()
    return sync(op.document())


@route("GET", "/1.0/operations/{id}/websocket", untrusted=True)  # the secret is the key
async def operation_websocket(ctx: Context, request: Request) -> Response | None:
    op = _operation(ctx, request.params["id"])
    secret = request.query.get("secret", "")
    channel = op.secrets.pop(secret, None)
    if channel is None:
        return error(403, "Invalid websocket secret" if secret else "missing secret")
    if not request.wants_websocket:
        return error(400, "Bad Request")
    ws = await request.accept_websocket()
    await channel.send(ws)
    # the operation owns the websocket now; this connection stays open until it is done
    await ws.closed_event.wait()
    return None


# --- events --------------------------------------------------------------------------------

@route("GET", "/1.0/events", query={
    "type": {"type": "string"}, "project": {"type": "string"},
    "all-projects": {"type": "boolean"}})
async def events(ctx: Context, request: Request) -> Response | None:
    """The event stream (a websocket) of one project or of all.

    ``?project=P`` (``default`` without) or ``all-projects=true``, as LXD 5.0; events of no
    project (logging) go to every listener."""
    project = None if all_projects(request) else requested_project(ctx, request)
    if not request.wants_websocket:
        return Response(400, b"Bad Request\n", content_type="text/plain; charset=utf-8")
    wanted = {t for t in request.query.get("type", "").split(",") if t} or \
        {"lifecycle", "logging", "operation"}
    ws = await request.accept_websocket()
    channel = ctx.host.events.subscribe(project)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain_client, ws, nursery.cancel_scope)
            async for line in channel:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("type") in wanted:
                    await ws.send_text(json.dumps(event))
    finally:
        ctx.host.events.unsubscribe(channel)
        await ws.close()
    return None


async def _drain_client(ws: Any, scope: trio.CancelScope) -> None:
    """Read (and ignore) what the client sends; its close ends the stream."""
    while await ws.receive() is not None:
        pass
    scope.cancel()


def truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and is_true(value))
