"""The OpenAPI document of what the REST bridge serves, generated from its routes (their
templates, docstrings, body and query schemas), served at ``GET /openapi.json`` and written
to ``docs/rest-openapi.json`` by ``python -m lxfs_plugins.rest.openapi``. The schema-driven
fuzzer (``tests/test_rest_fuzz_integration.py``) generates its requests from it."""

from __future__ import annotations

import inspect
import json
import re
import sys
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
        if r.body is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": r.body}}}
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


def main() -> int:
    """Write the document (with every endpoint module loaded) to the path given, or
    stdout."""
    from . import _load_endpoints

    _load_endpoints()
    text = json.dumps(document(), indent=1, sort_keys=True) + "\n"
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["document", "sync"]
