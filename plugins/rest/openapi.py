"""The OpenAPI document of what the REST bridge serves, generated from its routes (their
templates, docstrings, body and query schemas), served at ``GET /openapi.json`` and written
to ``docs/rest-openapi.json`` by ``python -m lxfs_plugins.rest``. The schema-driven
fuzzer (``tests/test_rest_fuzz_integration.py``) generates its requests from it."""

from __future__ import annotations

import inspect
import re
from typing import Any

from .app import ROUTES, Context, route, sync
from .http import Request, Response

ENVELOPE = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": ["sync", "async", "error"]},
        "status": {"type": "string"},
        "status_code": {"type": "integer"},
        "operation": {"type": "string"},
        "error_code": {"type": "integer"},
        "error": {"type": "string"},
        "metadata": {},
    },
}


STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
DEVICES = {"type": "object", "additionalProperties": STRINGS}
NAMES = {"type": "array", "items": {"type": "string"}}
INSTANCE_PUT = {"type": "object", "properties": {
    "config": STRINGS, "devices": DEVICES, "profiles": NAMES, "description": {"type": "string"},
    "ephemeral": {"type": "boolean"}, "restore": {"type": "string"}}}
INSTANCE_CREATE = {"type": "object", "properties": {
    "name": {"type": "string"}, "type": {"type": "string", "enum": ["container"]},
    "source": {"type": "object", "properties": {
        "type": {"type": "string", "enum": ["image", "copy", "none"]},
        "alias": {"type": "string"}, "fingerprint": {"type": "string"},
        "source": {"type": "string"}, "instance_only": {"type": "boolean"}}},
    "config": STRINGS, "devices": DEVICES, "profiles": NAMES, "ephemeral": {"type": "boolean"},
    "description": {"type": "string"}}}
RENAME = {"type": "object", "properties": {"name": {"type": "string"}}}
NAMED = {"type": "object", "properties": {
    "name": {"type": "string"}, "description": {"type": "string"}, "config": STRINGS,
    "devices": DEVICES}}
#: request bodies of the main endpoints (routes may also declare theirs with ``body=``)
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PUT", "/1.0"): {"type": "object", "properties": {"config": STRINGS}},
    ("PATCH", "/1.0"): {"type": "object", "properties": {"config": STRINGS}},
    ("POST", "/1.0/instances"): INSTANCE_CREATE,
    ("PUT", "/1.0/instances/{name}"): INSTANCE_PUT,
    ("PATCH", "/1.0/instances/{name}"): INSTANCE_PUT,
    ("POST", "/1.0/instances/{name}"): RENAME,
    ("PUT", "/1.0/instances/{name}/state"): {"type": "object", "properties": {
        "action": {"type": "string", "enum": ["start", "stop", "restart", "freeze",
                                              "unfreeze"]},
        "force": {"type": "boolean"}, "timeout": {"type": "integer"},
        "stateful": {"type": "boolean"}}},
    ("POST", "/1.0/instances/{name}/snapshots"): {"type": "object", "properties": {
        "name": {"type": "string"}, "stateful": {"type": "boolean"}}},
    ("POST", "/1.0/instances/{name}/snapshots/{snapshot}"): RENAME,
    ("POST", "/1.0/instances/{name}/exec"): {"type": "object", "properties": {
        "command": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "environment": STRINGS, "interactive": {"type": "boolean"},
        "wait-for-websocket": {"type": "boolean"}, "record-output": {"type": "boolean"},
        "width": {"type": "integer"}, "height": {"type": "integer"},
        "user": {"type": "integer"}, "group": {"type": "integer"}, "cwd": {"type": "string"}}},
    ("POST", "/1.0/images"): {"type": "object", "properties": {
        "source": {"type": "object", "properties": {
            "type": {"type": "string", "enum": ["instance", "snapshot"]},
            "name": {"type": "string"}}},
        "aliases": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "description": {"type": "string"}}}},
        "properties": STRINGS, "public": {"type": "boolean"}}},
    ("PUT", "/1.0/images/{fingerprint}"): {"type": "object", "properties": {
        "properties": STRINGS, "public": {"type": "boolean"},
        "auto_update": {"type": "boolean"}}},
    ("POST", "/1.0/images/aliases"): {"type": "object", "properties": {
        "name": {"type": "string"}, "description": {"type": "string"},
        "target": {"type": "string"}}},
    ("POST", "/1.0/images/aliases/{name}"): RENAME,
    ("POST", "/1.0/profiles"): NAMED,
    ("PUT", "/1.0/profiles/{name}"): NAMED,
    ("PATCH", "/1.0/profiles/{name}"): NAMED,
    ("POST", "/1.0/profiles/{name}"): RENAME,
    ("PUT", "/1.0/projects/{name}"): {"type": "object", "properties": {
        "config": STRINGS, "description": {"type": "string"}}},
    ("POST", "/1.0/storage-pools/{name}/volumes/custom"): {"type": "object", "properties": {
        "name": {"type": "string"}, "type": {"type": "string", "enum": ["custom"]}}},
}


def document(version: str = "") -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in sorted(ROUTES, key=lambda r: (r.template, r.method)):
        template = re.sub(r"\{(\w+):path\}", r"{\1}", r.template)
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in re.findall(r"\{(\w+)", r.template)]
        params += [{"name": name, "in": "query", "required": False, "schema": schema}
                   for name, schema in sorted(r.query.items())]
        summary = (inspect.getdoc(r.endpoint) or r.endpoint.__name__).split("\n")[0]
        operation: dict[str, Any] = {
            "summary": summary,
            "operationId": f"{r.method.lower()}_{r.endpoint.__module__.rsplit('.', 1)[-1]}_"
                           f"{r.endpoint.__name__}",
            "parameters": params,
            "responses": {
                code: {"description": what, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Envelope"}}}}
                for code, what in (("200", "done (sync)"), ("202", "operation created"),
                                   ("400", "refused"), ("404", "not found"),
                                   ("409", "conflict"))},
        }
        body = r.body if r.body is not None else BODIES.get(
            (r.method, r.template.replace("/1.0/containers", "/1.0/instances")))
        if body is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": body}}}
        paths.setdefault(template, {})[r.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "lxfs REST API (LXD 1.0 compatible)", "version": version or "1.0",
                 "description": "What lxfs's REST bridge serves, generated from its routes."},
        "paths": paths,
        "components": {"schemas": {"Envelope": ENVELOPE}},
    }


@route("GET", "/openapi.json")
async def get_openapi(ctx: Context, request: Request) -> Response:
    """The OpenAPI document of this API (generated from the code)."""
    return Response.json(200, document(ctx.ops.environment().get("server_version", "")))


__all__ = ["document", "sync"]
