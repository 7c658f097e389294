"""The REST bridge's images and aliases, driven by the real ``lxc`` 5.0.2 client, pylxd and
raw requests, checked against the mount (and the reverse)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_rest_instances_integration import UnixConnection, lxc

pytestmark = pytest.mark.integration

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "lxd-5.0-api"


# --- helpers -------------------------------------------------------------------------------

def api(d, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One request: (status, JSON document, headers)."""
    conn = UnixConnection(d.data_dir / "unix.socket")
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        hdrs = dict(headers or {})
        if body is not None and not isinstance(body, bytes):
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else {}, dict(resp.getheaders())
    finally:
        conn.close()


def wait(d, response: dict[str, Any]) -> dict[str, Any]:
    """The finished operation of an async response."""
    assert response["type"] == "async", response
    status, doc, _ = api(d, "GET", response["operation"] + "/wait?timeout=120")
    assert status == 200, doc
    return doc["metadata"]


def sha256(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def uploads_left(d) -> list[str]:
    return sorted(os.listdir(d.data_dir / "uploads"))


def image_files(d) -> list[str]:
    return sorted(n for n in os.listdir(d.data_dir / "images") if not n.startswith("."))


def make_split(busybox_image: Path, out: Path) -> tuple[Path, Path]:
    """The busybox image as a split one: a metadata tarball and a squashfs rootfs."""
    src = out / "src"
    src.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(busybox_image), "-C", str(src)],
                   check=True)
    meta = out / "busybox-meta.tar.gz"
    members = [m for m in ("metadata.yaml", "templates") if (src / m).exists()]
    subprocess.run(["tar", "--numeric-owner", "-czf", str(meta), "-C", str(src), *members],
                   check=True)
    rootfs = out / "busybox.squashfs"
    subprocess.run(["mksquashfs", str(src / "rootfs"), str(rootfs), "-noappend", "-quiet",
                    "-no-progress"], check=True, capture_output=True)
    shutil.rmtree(src)
    return meta, rootfs


class Monitor:
    """``lxc monitor --type lifecycle --format json`` in the background."""

    def __init__(self, d) -> None:
        conf = d.base / "lxc-conf"
        conf.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            ["lxc", "monitor", "--type", "lifecycle", "--format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            env=dict(os.environ, LXD_DIR=str(d.data_dir), LXD_CONF=str(conf)), text=True)
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        time.sleep(1)  # connected

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def actions(self, timeout: float = 5) -> list[tuple[str, str]]:
        time.sleep(timeout)
        self.proc.terminate()
        self.proc.wait(10)
        self.thread.join(5)
        events = []
        for line in self.lines:
            line = line.strip()
            if line.startswith("{"):
                meta = json.loads(line)["metadata"]
                events.append((meta["action"], meta["source"]))
        return events


# --- the module's pieces -------------------------------------------------------------------

def test_times_and_filters():
    from lxfs_plugins.rest import images

    assert images.go_time(0) == "1970-01-01T00:00:00Z"
    assert images.go_time(0, images.ZERO_TIME) == "0001-01-01T00:00:00Z"
    assert images.go_time(1795431374) == "2026-11-23T10:56:14Z"
    assert images.go_time(1795431374.5) == "2026-11-23T10:56:14.5Z"
    assert images.parse_time("0001-01-01T00:00:00Z", "t") == 0
    assert images.parse_time("1970-01-01T00:00:00Z", "t") == 0
    assert images.parse_time("2026-11-23T12:56:14.5+02:00", "t") == 1795431374.5
    with pytest.raises(images.HttpError):
        images.parse_time("yesterday", "t")
    doc = {"properties": {"os": "Debian", "user.x": "1"}, "public": False, "size": 5,
           "fingerprint": "abc"}
    for text, expected in (("properties.os eq debian", True), ("properties.os eq deb", False),
                           ("properties.os eq ^deb", True), ("properties.user.x eq 1", True),
                           ("public eq false and size eq 5", True),
                           ("not fingerprint eq abc or size ne 6", True),
                           ('properties.os eq "Debian GNU"', False), ("missing eq x", False)):
        assert images.matches(doc, images.parse_filter(text)) is expected, text
    for bad in ("public", "public eq", "not", "a eq b xor c eq d", "a eq b and",
                'a eq "b c', "a gt b"):
        with pytest.raises(images.HttpError):
            images.parse_filter(bad)


# --- documents, listing, info --------------------------------------------------------------

def test_documents_match_lxd(daemon_with_busybox):
    d = daemon_with_busybox
    fp = d.read("images", "aliases", "busybox", "fingerprint")
    status, doc, _ = api(d, "GET", "/1.0/images")
    assert status == 200 and doc["metadata"] == [f"/1.0/images/{fp}"]
    status, doc, headers = api(d, "GET", f"/1.0/images/{fp}")
    image = doc["metadata"]
    reference = json.loads((REFERENCE / "get_image_fp.json").read_text())["metadata"]
    assert set(image) == set(reference)
    assert image["fingerprint"] == fp
    assert image["aliases"] == [{"name": "busybox", "description": ""}]
    assert image["filename"] == d.read("images", fp, "filename")
    assert image["size"] == int(d.read("images", fp, "size")) == \
        os.path.getsize(d.path("images", fp, "export"))
    assert image["architecture"] == d.read("images", fp, "architecture")
    assert image["properties"]["os"] == d.read("images", fp, "properties", "os")
    assert (image["public"], image["auto_update"], image["cached"]) == (False, False, False)
    assert image["profiles"] == ["default"] and image["type"] == "container"
    assert image["expires_at"] == "1970-01-01T00:00:00Z"
    assert image["last_used_at"] == "0001-01-01T00:00:00Z"
    assert image["created_at"].endswith("Z") and image["uploaded_at"].endswith("Z")
    assert "Etag" in headers or "ETag" in headers
    # a unique prefix works; a bad fingerprint is 404
    assert api(d, "GET", f"/1.0/images/{fp[:12]}")[1]["metadata"]["fingerprint"] == fp
    status, doc, _ = api(d, "GET", "/1.0/images/0123456789ab")
    assert (status, doc["error"], doc["error_code"]) == (404, "Image not found", 404)
    assert api(d, "DELETE", "/1.0/images/0123456789ab")[0] == 404
    assert api(d, "GET", "/1.0/images/nothex/export")[0] == 404
    # recursion and filters
    listed = api(d, "GET", "/1.0/images?recursion=1")[1]["metadata"]
    assert listed == [image]
    hits = api(d, "GET", "/1.0/images?recursion=1&filter=properties.os+eq+busybox")[1]
    assert [i["fingerprint"] for i in hits["metadata"]] == [fp]
    assert api(d, "GET", "/1.0/images?filter=properties.os+eq+other")[1]["metadata"] == []
    assert api(d, "GET", "/1.0/images?filter=not+public+eq+true")[1]["metadata"] == \
        [f"/1.0/images/{fp}"]
    assert api(d, "GET", "/1.0/images?filter=public")[0] == 400
    # aliases
    assert api(d, "GET", "/1.0/images/aliases")[1]["metadata"] == ["/1.0/images/aliases/busybox"]
    alias = {"description": "", "target": fp, "name": "busybox", "type": "container"}
    assert api(d, "GET", "/1.0/images/aliases?recursion=1")[1]["metadata"] == [alias]
    status, doc, _ = api(d, "GET", "/1.0/images/aliases/busybox")
    reference = json.loads((REFERENCE / "get_image_alias_busybox.json").read_text())
    assert set(doc) == set(reference) and set(doc["metadata"]) == set(reference["metadata"])
    assert doc["metadata"] == alias
    status, doc, _ = api(d, "GET", "/1.0/images/aliases/nope")
    assert (status, doc["error"]) == (404, "Image alias not found")


def test_lxc_list_and_info(daemon_with_busybox):
    d = daemon_with_busybox
    fp = d.read("images", "aliases", "busybox", "fingerprint")
    listed = json.loads(lxc(d, "image", "list", "--format", "json").stdout)
    assert [(i["fingerprint"], i["aliases"][0]["name"]) for i in listed] == [(fp, "busybox")]
    table = lxc(d, "image", "list", "--format", "csv").stdout
    assert f"busybox,{fp[:12]},no," in table
    assert lxc(d, "image", "list", "busybox", "--format", "csv").stdout == table
    assert lxc(d, "image", "list", "nomatch", "--format", "csv").stdout == ""
    info = lxc(d, "image", "info", "busybox").stdout
    assert f"Fingerprint: {fp}" in info
    assert "Aliases:\n    - busybox" in info and "Public: no" in info
    assert "Expires: never" in info and "Last used: never" in info
    assert "os: busybox" in info and "Profiles:\n    - default" in info
    shown = lxc(d, "image", "show", fp[:10]).stdout
    assert "public: false" in shown and "os: busybox" in shown
    assert "Image not found" in lxc(d, "image", "info", "nope", check=False).stderr


# --- import and export ---------------------------------------------------------------------

def test_import_export_unified(lxfs_daemon, busybox_image, tmp_path):
    d = lxfs_daemon
    monitor = Monitor(d)
    out = lxc(d, "image", "import", str(busybox_image), "--alias", "x", "release=edge")
    fp = sha256(busybox_image)
    assert f"Image imported with fingerprint: {fp}" in out.stdout
    # the mount sees it
    assert d.read("images", "aliases", "x", "fingerprint") == fp
    assert d.read("images", fp, "filename") == busybox_image.name
    assert d.read("images", fp, "properties", "release") == "edge"
    assert (d.path("images", fp, "export").read_bytes() == busybox_image.read_bytes())
    # export: the file as imported, named as LXD names it
    exported = tmp_path / "export"
    exported.mkdir()
    lxc(d, "image", "export", "x", str(exported))
    names = os.listdir(exported)
    assert names == [f"{fp}.tar.xz"], names
    assert sha256(exported / names[0]) == fp
    # the same image again: refused as LXD does, nothing left behind
    again = lxc(d, "image", "import", str(busybox_image), check=False)
    assert again.returncode != 0
    assert "Image with same fingerprint already exists" in again.stderr
    assert uploads_left(d) == []
    lxc(d, "image", "delete", "x")
    assert not d.path("images", fp).exists() and not d.path("images", "aliases", "x").exists()
    assert image_files(d) == [] and uploads_left(d) == []
    events = monitor.actions()
    assert ("image-created", f"/1.0/images/{fp}") in events
    assert ("image-alias-created", "/1.0/images/aliases/x") in events
    assert ("image-deleted", f"/1.0/images/{fp}") in events


def test_import_export_split(lxfs_daemon, busybox_image, tmp_path):
    d = lxfs_daemon
    meta, rootfs = make_split(busybox_image, tmp_path)
    out = lxc(d, "image", "import", str(meta), str(rootfs), "--alias", "s", "--public")
    fp = sha256(meta, rootfs)
    assert f"Image imported with fingerprint: {fp}" in out.stdout
    assert d.read("images", fp, "public") == "true"
    assert d.path("images", fp, "export").read_bytes() == meta.read_bytes()
    assert d.path("images", fp, "export.rootfs").read_bytes() == rootfs.read_bytes()
    image = api(d, "GET", f"/1.0/images/{fp}")[1]["metadata"]
    assert image["size"] == meta.stat().st_size + rootfs.stat().st_size
    assert image["filename"] == rootfs.name  # as LXD: the rootfs part's name
    exported = tmp_path / "export"
    exported.mkdir()
    lxc(d, "image", "export", "s", str(exported))
    assert sorted(os.listdir(exported)) == sorted([f"meta-{fp}.tar.gz", f"{fp}.squashfs"])
    assert (exported / f"meta-{fp}.tar.gz").read_bytes() == meta.read_bytes()
    assert (exported / f"{fp}.squashfs").read_bytes() == rootfs.read_bytes()
    # it launches (through the mount)
    os.mkdir(d.path("instances", "s1"))
    d.write("instances", "s1", "source", "s")
    d.write("instances", "s1", "state", "start")
    assert d.cli("exec", "s1", "--", "echo", "split").stdout == "split\n"
    assert uploads_left(d) == []


# --- aliases -------------------------------------------------------------------------------

def test_aliases_with_lxc_and_the_mount(daemon_with_busybox):
    d = daemon_with_busybox
    fp = d.read("images", "aliases", "busybox", "fingerprint")
    lxc(d, "image", "alias", "create", "a1", fp[:8])
    assert d.read("images", "aliases", "a1", "fingerprint") == fp
    assert api(d, "PATCH", "/1.0/images/aliases/a1", {"description": "first"})[0] == 200
    listed = lxc(d, "image", "alias", "list", "--format", "csv").stdout.splitlines()
    assert f"a1,{fp[:12]},CONTAINER,first" in listed
    assert f"busybox,{fp[:12]},CONTAINER," in listed
    dup = lxc(d, "image", "alias", "create", "a1", fp, check=False)
    assert dup.returncode != 0 and 'Alias "a1" already exists' in dup.stderr
    lxc(d, "image", "alias", "rename", "a1", "a2")
    assert not d.path("images", "aliases", "a1").exists()
    assert d.read("images", "aliases", "a2", "fingerprint") == fp
    doc = api(d, "GET", "/1.0/images/aliases/a2")[1]["metadata"]
    assert doc["description"] == "first"  # kept by the rename
    info = lxc(d, "image", "info", fp).stdout
    assert "    - a2 (first)" in info
    lxc(d, "image", "alias", "delete", "a2")
    assert not d.path("images", "aliases", "a2").exists()
    # the reverse: what the mount does shows through REST
    os.symlink(fp, d.path("images", "aliases", "fromfs"))
    assert api(d, "GET", "/1.0/images/aliases/fromfs")[1]["metadata"]["target"] == fp
    os.unlink(d.path("images", "aliases", "fromfs"))
    assert api(d, "GET", "/1.0/images/aliases/fromfs")[0] == 404
    os.rmdir(d.path("images", fp))
    assert api(d, "GET", f"/1.0/images/{fp}")[0] == 404
    assert api(d, "GET", "/1.0/images/aliases")[1]["metadata"] == []


def test_alias_requests(daemon_with_busybox):
    d = daemon_with_busybox
    fp = d.read("images", "aliases", "busybox", "fingerprint")
    status, doc, headers = api(d, "POST", "/1.0/images/aliases",
                               {"name": "r1", "target": fp, "description": "d"})
    assert status == 201 and headers["Location"] == "/1.0/images/aliases/r1", doc
    status, doc, _ = api(d, "POST", "/1.0/images/aliases", {"name": "r1", "target": fp})
    assert (status, doc["error"]) == (409, 'Alias "r1" already exists')
    status, doc, _ = api(d, "POST", "/1.0/images/aliases", {"name": "r2", "target": "ffff"})
    assert (status, doc["error"]) == (404, "Image not found")
    assert api(d, "POST", "/1.0/images/aliases", {"name": "r2"})[0] == 400
    assert api(d, "POST", "/1.0/images/aliases", {"name": "a b", "target": fp})[0] == 400
    # PUT and PATCH, with LXD's ETag check
    _, _, headers = api(d, "GET", "/1.0/images/aliases/r1")
    tag = headers.get("Etag") or headers["ETag"]
    assert api(d, "PUT", "/1.0/images/aliases/r1", {"target": fp, "description": "new"},
               {"If-Match": tag})[0] == 200
    status, doc, _ = api(d, "PUT", "/1.0/images/aliases/r1",
                         {"target": fp, "description": "again"}, {"If-Match": tag})
    assert status == 412 and "ETag doesn't match" in doc["error"]
    assert api(d, "PUT", "/1.0/images/aliases/r1", {"description": "x"})[0] == 400
    assert api(d, "PATCH", "/1.0/images/aliases/r1", {"description": "patched"})[0] == 200
    doc = api(d, "GET", "/1.0/images/aliases/r1")[1]["metadata"]
    assert (doc["description"], doc["target"]) == ("patched", fp)
    status, doc, headers = api(d, "POST", "/1.0/images/aliases/r1", {"name": "r3"})
    assert status == 201 and headers["Location"] == "/1.0/images/aliases/r3"
    assert api(d, "POST", "/1.0/images/aliases/r3", {"name": "busybox"})[0] == 409
    assert api(d, "POST", "/1.0/images/aliases/gone", {"name": "r4"})[0] == 404
    assert api(d, "DELETE", "/1.0/images/aliases/r3")[0] == 200
    assert api(d, "DELETE", "/1.0/images/aliases/r3")[0] == 404
    assert sorted(os.listdir(d.path("images", "aliases"))) == ["busybox"]


# --- edit ----------------------------------------------------------------------------------

def test_edit_properties(daemon_with_busybox, tmp_path):
    d = daemon_with_busybox
    fp = d.read("images", "aliases", "busybox", "fingerprint")
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i -e 's/^  os: busybox$/  os: edited/' "
                      "-e 's/^properties:$/properties:\\n  added: by the editor/' "
                      "-e 's/^public: false$/public: true/' \"$1\"\n")
    editor.chmod(0o755)
    # the editor runs when stdin is a terminal: under script(1)
    conf = d.base / "lxc-conf"
    conf.mkdir(exist_ok=True)
    run = subprocess.run(["script", "-qec", "lxc image edit busybox", "/dev/null"],
                         env=dict(os.environ, LXD_DIR=str(d.data_dir), LXD_CONF=str(conf),
                                  EDITOR=str(editor), VISUAL=str(editor)),
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stdout + run.stderr
    assert d.read("images", fp, "properties", "os") == "edited"
    assert d.read("images", fp, "properties", "added") == "by the editor"
    assert d.read("images", fp, "public") == "true"
    # from stdin: the properties are replaced as a whole
    lxc(d, "image", "edit", "busybox", input="public: false\nproperties:\n  os: piped\n")
    assert os.listdir(d.path("images", fp, "properties")) == ["os"]
    assert d.read("images", fp, "public") == "false"
    # the reverse: the mount's writes show through REST
    d.write("images", fp, "properties", "release", "from-the-mount")
    d.write("images", fp, "auto_update", "true")
    image = api(d, "GET", f"/1.0/images/{fp}")[1]["metadata"]
    assert image["properties"] == {"os": "piped", "release": "from-the-mount"}
    assert image["auto_update"] is True
    # PATCH merges; a stale ETag is refused; a refused value changes nothing
    _, _, headers = api(d, "GET", f"/1.0/images/{fp}")
    tag = headers.get("Etag") or headers["ETag"]
    assert api(d, "PATCH", f"/1.0/images/{fp}", {"properties": {"extra": "1"}})[0] == 200
    status, doc, _ = api(d, "PUT", f"/1.0/images/{fp}", {"properties": {}}, {"If-Match": tag})
    assert status == 412, doc
    status, doc, _ = api(d, "PUT", f"/1.0/images/{fp}",
                         {"public": True, "properties": {"a": "1", "z": "two\nlines"}})
    assert status == 400, doc
    image = api(d, "GET", f"/1.0/images/{fp}")[1]["metadata"]
    assert image["properties"] == {"os": "piped", "release": "from-the-mount", "extra": "1"}
    assert image["public"] is False
    assert api(d, "PUT", f"/1.0/images/{fp}", {"profiles": ["nope"]})[0] == 400
    assert api(d, "PUT", f"/1.0/images/{fp}",
               {"expires_at": "2030-01-01T00:00:00Z"})[0] == 400


# --- publish -------------------------------------------------------------------------------

def make_instance(d, name: str, start: bool = False) -> None:
    os.mkdir(d.path("instances", name))
    d.write("instances", name, "source", "busybox")
    if start:
        d.write("instances", name, "state", "start")


def test_publish_with_lxc(daemon_with_busybox):
    d = daemon_with_busybox
    make_instance(d, "c1")
    d.write("instances", "c1", "state", "start")
    d.cli("exec", "c1", "--", "sh", "-c", "echo published > /root/mark")
    d.write("instances", "c1", "state", "stop")
    out = lxc(d, "publish", "c1", "--alias", "p1", "os=custom")
    fp = d.read("images", "aliases", "p1", "fingerprint")
    assert f"Instance published with fingerprint: {fp}" in out.stdout
    assert d.read("images", fp, "properties", "os") == "custom"
    assert d.read("instances", "c1", "state") == "STOPPED"
    # a snapshot, the instance running
    os.mkdir(d.path("instances", "c1", "snapshots", "snap0"))
    d.write("instances", "c1", "state", "start")
    lxc(d, "publish", "c1/snap0", "--alias", "p2")
    fp2 = d.read("images", "aliases", "p2", "fingerprint")
    assert fp2 != fp and d.read("instances", "c1", "state") == "RUNNING"
    # running: refused without --force; with it, stopped, published, started again
    refused = lxc(d, "publish", "c1", "--alias", "p3", check=False)
    assert refused.returncode != 0 and "--force" in refused.stderr
    lxc(d, "publish", "c1", "--alias", "p3", "--force", "--compression", "none")
    fp3 = d.read("images", "aliases", "p3", "fingerprint")
    assert d.read("instances", "c1", "state") == "RUNNING"
    # what was published launches
    os.mkdir(d.path("instances", "c2"))
    d.write("instances", "c2", "source", "p3")
    d.write("instances", "c2", "state", "start")
    assert d.cli("exec", "c2", "--", "cat", "/root/mark").stdout == "published\n"
    assert uploads_left(d) == [] and fp3 in image_files(d)


def test_publish_requests(daemon_with_busybox):
    d = daemon_with_busybox
    make_instance(d, "r1", start=True)
    status, doc, _ = api(d, "POST", "/1.0/images",
                         {"source": {"type": "instance", "name": "r1"}})
    assert status == 202, doc
    op = wait(d, doc)
    assert op["status"] == "Failure"
    assert op["err"] == "Cannot export a running instance as an image"
    status, doc, _ = api(d, "POST", "/1.0/images",
                         {"source": {"type": "instance", "name": "nope"}})
    assert (status, doc["error"]) == (404, "Instance not found")
    assert api(d, "POST", "/1.0/images",
               {"source": {"type": "snapshot", "name": "r1"}})[1]["error"] == "Not a snapshot"
    assert api(d, "POST", "/1.0/images",
               {"source": {"type": "bogus"}})[1]["error"] == "Invalid images JSON"
    os.mkdir(d.path("instances", "r1", "snapshots", "s0"))
    status, doc, _ = api(d, "POST", "/1.0/images", {
        "source": {"type": "snapshot", "name": "r1/s0"}, "public": True,
        "properties": {"description": "from s0"}, "compression_algorithm": "zstd",
        "aliases": [{"name": "ps0", "description": "published s0"}]})
    assert status == 202, doc
    op = wait(d, doc)
    assert op["status"] == "Success", op
    fp = op["metadata"]["fingerprint"]
    assert op["metadata"]["size"] == str(os.path.getsize(d.path("images", fp, "export")))
    image = api(d, "GET", f"/1.0/images/{fp}")[1]["metadata"]
    assert image["public"] is True and image["properties"]["description"] == "from s0"
    assert image["aliases"] == [{"name": "ps0", "description": "published s0"}]
    status, doc, _ = api(d, "POST", "/1.0/images", {
        "source": {"type": "snapshot", "name": "r1/s0"}, "aliases": [{"name": "ps0"}]})
    assert (status, doc["error"]) == (409, "Alias already exists: ps0")
    # remote sources: pulled by the daemon (tests/test_image_servers_integration.py); an
    # unreachable server fails the operation clearly
    for source in ({"type": "url", "url": "https://127.0.0.1:1/x"},
                   {"type": "image", "server": "https://127.0.0.1:1",
                    "protocol": "simplestreams", "alias": "debian/12"}):
        status, doc, _ = api(d, "POST", "/1.0/images", {"source": source})
        assert status == 202, doc
        op = wait(d, doc)
        assert op["status"] == "Failure" and "cannot reach image server" in op["err"], op
    # refresh: an image from no server, as LXD
    status, doc, _ = api(d, "POST", f"/1.0/images/{fp}/refresh")
    op = wait(d, doc)
    assert op["status"] == "Failure" and "Image source not found" in op["err"]


# --- pylxd ---------------------------------------------------------------------------------

def test_pylxd(lxfs_daemon, busybox_image, tmp_path):
    import pylxd

    d = lxfs_daemon
    client = pylxd.Client(endpoint=str(d.data_dir / "unix.socket"))
    image = client.images.create(busybox_image.read_bytes(), wait=True)
    fp = sha256(busybox_image)
    assert image.fingerprint == fp and d.path("images", fp).is_dir()
    image.add_alias("py", "from pylxd")
    assert d.read("images", "aliases", "py", "fingerprint") == fp
    again = client.images.get_by_alias("py")
    assert again.aliases == [{"name": "py", "description": "from pylxd"}]
    again.properties["os"] = "pylxd"
    again.save()
    assert d.read("images", fp, "properties", "os") == "pylxd"
    assert again.export().read() == busybox_image.read_bytes()
    again.delete(wait=True)
    assert not d.path("images", fp).exists()
    # split, through pylxd's multipart encoder
    meta, rootfs = make_split(busybox_image, tmp_path)
    split = client.images.create(rootfs.read_bytes(), metadata=meta.read_bytes(), public=True,
                                 wait=True)
    assert split.fingerprint == sha256(meta, rootfs)
    assert client.images.get(split.fingerprint).public is True
    assert d.read("images", split.fingerprint, "public") == "true"
    assert image_files(d) == sorted([split.fingerprint, f"{split.fingerprint}.rootfs"])
    assert uploads_left(d) == []


# --- uploads that fail ---------------------------------------------------------------------

def raw_upload(d, head: bytes, body: bytes, close_early: bool = True) -> bytes:
    """Send a request head and part of a body, then close (or read the answer)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(str(d.data_dir / "unix.socket"))
    data = b""
    try:
        sock.sendall(head + body)
        if close_early:
            sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            data += chunk
    except (BrokenPipeError, ConnectionResetError):  # the server closed first
        pass
    finally:
        sock.close()
    return data


def test_failed_uploads_leave_nothing(daemon_with_busybox, busybox_image, tmp_path):
    d = daemon_with_busybox
    before = image_files(d)
    data = busybox_image.read_bytes()
    # cut off mid-body (declared length and chunked)
    head = (b"POST /1.0/images HTTP/1.1\r\nHost: lxd\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % (len(data) * 4))
    raw_upload(d, head, data)
    chunked = (b"POST /1.0/images HTTP/1.1\r\nHost: lxd\r\nTransfer-Encoding: chunked\r\n\r\n")
    raw_upload(d, chunked, b"%x\r\n" % len(data) + data + b"\r\n")
    boundary = b"xyzzy"
    multi = (b"POST /1.0/images HTTP/1.1\r\nHost: lxd\r\nContent-Type: multipart/form-data; "
             b"boundary=" + boundary + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    part = (b"--xyzzy\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"m\"\r\n"
            b"\r\n" + data)
    raw_upload(d, multi, b"%x\r\n" % len(part) + part + b"\r\n")
    time.sleep(1)
    assert uploads_left(d) == [] and image_files(d) == before
    # not an image: the operation fails, nothing is kept
    status, doc, _ = api(d, "POST", "/1.0/images", b"not an image at all" * 1000,
                         {"X-LXD-filename": "junk.tar"})
    assert status == 202
    op = wait(d, doc)
    assert op["status"] == "Failure" and "not an LXD image" in op["err"], op
    # a metadata tarball alone: no pending half as through the mount, a failure
    meta, rootfs = make_split(busybox_image, tmp_path)
    op = wait(d, api(d, "POST", "/1.0/images", meta.read_bytes())[1])
    assert op["status"] == "Failure" and "rootfs" in op["err"], op
    # a split body whose parts are misnamed
    body = (b"--xyzzy\r\nContent-Disposition: form-data; name=\"rootfs\"; filename=\"r\"\r\n\r\n"
            + rootfs.read_bytes() + b"\r\n--xyzzy--\r\n")
    status, doc, _ = api(d, "POST", "/1.0/images", body,
                         {"Content-Type": "multipart/form-data; boundary=xyzzy"})
    assert (status, doc["error"]) == (400, "Invalid multipart image")
    # the fingerprint the client expects
    status, doc, _ = api(d, "POST", "/1.0/images", data, {"X-LXD-fingerprint": "ab" * 32})
    op = wait(d, doc)
    assert op["status"] == "Failure" and "fingerprints don't match" in op["err"]
    # larger than the server takes: refused while it arrives
    d.write("config", "images.max_unpacked_size", "1MiB")
    big = b"\0" * (67 << 20)
    status, doc, _ = api(d, "POST", "/1.0/images", big)
    assert status == 413, doc
    assert uploads_left(d) == [] and image_files(d) == before
    # and the server still serves
    assert api(d, "GET", "/1.0/images")[0] == 200
