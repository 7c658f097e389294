"""The OpenAPI document in docs/ is the one the code generates (regenerate it with
``python -m lxfs_plugins.rest docs/rest-openapi.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from lxfs_plugins.rest import _load_endpoints, openapi

DOC = Path(__file__).resolve().parent.parent / "docs" / "rest-openapi.json"


def test_docs_openapi_document_is_current():
    _load_endpoints()
    generated = openapi.document()
    assert json.loads(DOC.read_text()) == json.loads(json.dumps(generated)), \
        "docs/rest-openapi.json is stale: python -m lxfs_plugins.rest " \
        "docs/rest-openapi.json"


def test_every_endpoint_of_the_issue_is_documented():
    _load_endpoints()
    paths = openapi.document()["paths"]
    for path in ("/1.0", "/1.0/resources", "/1.0/instances/{name}/exec",
                 "/1.0/instances/{name}/files", "/1.0/images/aliases/{name}",
                 "/1.0/networks/{name}/leases", "/1.0/storage-pools/{pool}/volumes/{type}/{name}",
                 "/1.0/operations/{id}/wait", "/1.0/events", "/1.0/certificates"):
        assert path in paths, path
