"""Image servers (issue 14): ``lxfs image export-streams`` makes a simplestreams tree that a
plain HTTPS server on loopback serves; the real ``lxc`` 5.0.2 client and ``lxfs`` add it with
``--protocol simplestreams`` and launch from it (the lxfs daemon pulls); the image cache
(expiry, auto-update, refresh); lxfs's own HTTPS listener as a simplestreams server; bad
downloads (corrupt, truncated, wrong sha256, a stalling server) change nothing."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import lxfs_cli_command
from test_rest_instances_integration import api, lxc, wait
from test_rest_trust_integration import isolated_lxd  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration

#: seconds the daemon waits for a silent image server (the stalling server test)
STALL_TIMEOUT = "3"


# --- an HTTPS static server on loopback ----------------------------------------------------

@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the real ``lxc`` wants https for
    simplestreams remotes)."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "server.crt", d / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


class StaticServer:
    """A threaded HTTPS server of a directory; ``stall`` makes it answer a file's head and
    then send nothing."""

    def __init__(self, root: Path, cert: Path, key: Path) -> None:
        self.root = root
        self.stall = False
        self.requests: list[str] = []
        #: what a HEAD of /direct answers (LXD's source.type=url): (fingerprint, file path)
        self.direct: tuple[str, str] | None = None
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, directory=str(outer.root), **kw)

            def log_message(self, *_args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append(self.path)
                if outer.stall and self.path.startswith("/images/"):
                    self.send_response(200)
                    self.send_header("Content-Length", "100000000")
                    self.end_headers()
                    self.wfile.write(b"\0" * 1000)
                    self.wfile.flush()
                    time.sleep(20)
                    return
                super().do_GET()

            def do_HEAD(self) -> None:  # noqa: N802
                if self.path == "/direct" and outer.direct:
                    self.send_response(200)
                    self.send_header("LXD-Image-Hash", outer.direct[0])
                    self.send_header("LXD-Image-URL", outer.direct[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                super().do_HEAD()

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def static_server(tmp_path: Path, tls_cert: tuple[Path, Path]) -> Iterator[StaticServer]:
    root = tmp_path / "mirror"
    root.mkdir()
    server = StaticServer(root, *tls_cert)
    try:
        yield server
    finally:
        server.close()


# --- helpers -------------------------------------------------------------------------------

def start(factory: Any, **env: str) -> Any:
    return factory(env={"LXFS_IMAGE_SERVER_TIMEOUT": STALL_TIMEOUT, **env})


def use_remotes(d: Any, cert: Path, server: StaticServer, name: str = "mirror") -> None:
    """``lxfs remote add NAME URL --protocol simplestreams`` (the server's certificate
    trusted through SSL_CERT_FILE for the check, and pinned as lxc pins one)."""
    conf = d.base / "lxfs-conf"
    conf.mkdir(exist_ok=True)
    d.env["LXFS_CONF"] = str(conf)
    env = dict(d.env, SSL_CERT_FILE=str(cert))
    result = subprocess.run([*lxfs_cli_command(), "remote", "add", name, server.url,
                             "--protocol", "simplestreams"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    (conf / "servercerts").mkdir(exist_ok=True)
    shutil.copy(cert, conf / "servercerts" / f"{name}.crt")


def lxc_remote(d: Any, cert: Path, server: StaticServer, name: str = "m") -> None:
    lxc(d, "remote", "add", name, server.url, "--protocol", "simplestreams")
    servercerts = d.base / "lxc-conf" / "servercerts"
    servercerts.mkdir(exist_ok=True)
    shutil.copy(cert, servercerts / f"{name}.crt")


def images_of(d: Any) -> dict[str, dict[str, Any]]:
    status, doc, _ = api(d, "GET", "/1.0/images?recursion=1")
    assert status == 200, doc
    return {i["fingerprint"]: i for i in doc["metadata"]}


def store_files(d: Any) -> list[str]:
    return sorted(n for n in os.listdir(d.data_dir / "images") if not n.startswith("."))


def uploads_left(d: Any) -> list[str]:
    return sorted(os.listdir(d.data_dir / "uploads"))


def publish_tree(d: Any, busybox_image: Path, tree: Path) -> str:
    """Import busybox (public, alias busybox), export the streams tree, then delete the
    image here: the daemon must pull it back. Its fingerprint."""
    d.cli("image", "import", busybox_image, "--alias", "busybox", "--public", timeout=120)
    fp = d.path("images", "aliases", "busybox").resolve().name
    d.cli("image", "export-streams", tree, timeout=120)
    d.cli("image", "delete", fp)
    assert fp not in images_of(d)
    return fp


def newer_busybox(busybox_image: Path, out: Path) -> Path:
    """The busybox image with a later creation date and one more file: a new fingerprint,
    the same product."""
    src = out / "v2"
    src.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(busybox_image), "-C", str(src)],
                   check=True)
    meta = (src / "metadata.yaml").read_text()
    lines = [f"creation_date: {int(time.time()) + 120}" if line.startswith("creation_date:")
             else line for line in meta.splitlines()]
    (src / "metadata.yaml").write_text("\n".join(lines) + "\n")
    (src / "rootfs" / "etc" / "image-version").write_text("2\n")
    tarball = out / "busybox-v2.tar.gz"
    subprocess.run(["tar", "--numeric-owner", "-czf", str(tarball), "-C", str(src), "."],
                   check=True)
    shutil.rmtree(src)
    return tarball


def wait_for(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}", pytrace=False)
        time.sleep(0.3)


# --- the tree ------------------------------------------------------------------------------

def test_export_streams_tree_is_lxd_simplestreams(lxfs_daemon_factory, busybox_image, tmp_path):
    d = start(lxfs_daemon_factory)
    d.cli("image", "import", busybox_image, "--alias", "busybox", "--public", timeout=120)
    fp = d.path("images", "aliases", "busybox").resolve().name
    tree = tmp_path / "tree"
    d.cli("image", "export-streams", tree, timeout=120)
    index = json.loads((tree / "streams/v1/index.json").read_text())
    entry = index["index"]["images"]
    assert entry["datatype"] == "image-downloads" and entry["path"] == "streams/v1/images.json"
    products = json.loads((tree / entry["path"]).read_text())["products"]
    assert list(products) == entry["products"]
    (key, product), = products.items()
    assert key.startswith("busybox:") and key.count(":") == 3, key
    assert "busybox" in product["aliases"].split(",")
    (serial, version), = product["versions"].items()
    assert len(serial) >= 8 and serial[:8].isdigit()
    (item,) = version["items"].values()
    assert item["ftype"] == "lxd_combined.tar.gz" and item["sha256"] == fp
    assert (tree / item["path"]).stat().st_size == item["size"]
    # a private image is not exported; an image made private leaves the tree
    d.write("images", fp, "public", "false")
    d.cli("image", "export-streams", tree, timeout=120)
    assert json.loads((tree / "streams/v1/images.json").read_text())["products"] == {}
    assert not (tree / "images" / fp).exists()


# --- pulls: lxc and lxfs -------------------------------------------------------------------

def test_lxc_and_lxfs_launch_from_a_simplestreams_mirror(lxfs_daemon_factory, busybox_image,
                                                         static_server, tls_cert):
    d = start(lxfs_daemon_factory)
    fp = publish_tree(d, busybox_image, static_server.root)
    # the real lxc client: the remote on https, lxfs (over the unix socket) pulls
    lxc_remote(d, tls_cert[0], static_server)
    listed = lxc(d, "image", "list", "m:", "--format", "json")
    assert [i["fingerprint"] for i in json.loads(listed.stdout)] == [fp]
    lxc(d, "launch", "m:busybox", "c1", timeout=180)
    assert d.read("instances", "c1", "state") == "RUNNING"
    image = images_of(d)[fp]
    assert image["cached"] is True
    assert image["update_source"]["server"] == static_server.url
    assert image["update_source"]["protocol"] == "simplestreams"
    assert image["update_source"]["alias"] == "busybox"
    assert image["update_source"]["certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert image["last_used_at"] != "0001-01-01T00:00:00Z"
    # the mount shows it
    assert d.read("images", fp, "cached") == "true"
    assert d.read("images", fp, "update_source", "protocol") == "simplestreams"
    assert d.read("images", fp, "update_source", "server") == static_server.url
    assert uploads_left(d) == []
    # lxfs: remote add --protocol simplestreams, launch mirror:busybox
    d.cli("image", "delete", fp)
    use_remotes(d, tls_cert[0], static_server)
    d.cli("launch", "mirror:busybox", "c2", timeout=180)
    assert d.read("instances", "c2", "state") == "RUNNING"
    assert d.read("images", fp, "cached") == "true"
    # lxc image copy (not cached), with an alias; lxfs image copy likewise
    lxc(d, "image", "delete", fp)
    lxc(d, "image", "copy", "m:busybox", "local:", "--alias", "bb", timeout=180)
    assert images_of(d)[fp]["cached"] is False
    assert d.path("images", "aliases", "bb").resolve().name == fp
    d.cli("image", "delete", fp)
    d.cli("image", "copy", "mirror:busybox", "local:", "--alias", "bb2", timeout=180)
    assert d.path("images", "aliases", "bb2").resolve().name == fp
    # the architecture form (debian/12/amd64 style) resolves too; an unknown alias is refused
    arch = json.loads((static_server.root / "streams/v1/images.json").read_text())
    arch_name = next(iter(arch["products"].values()))["arch"]
    d.cli("image", "delete", fp)
    d.write("images", "pull", f"simplestreams {static_server.url} busybox/{arch_name} "
            f"certificate={_b64(tls_cert[0])} alias=viaarch")
    assert d.read("images", "pull") == fp
    assert d.path("images", "aliases", "viaarch").resolve().name == fp
    result = lxc(d, "launch", "m:nosuch", "c3", check=False)
    assert result.returncode != 0
    assert "c3" not in d.instance_names()


def _b64(cert: Path) -> str:
    return "".join(line for line in cert.read_text().splitlines()
                   if line and not line.startswith("-----"))


# --- the cache -----------------------------------------------------------------------------

def test_cached_image_expires_unused(lxfs_daemon_factory, busybox_image, static_server,
                                     tls_cert):
    # an hour of 0.25 s: images.remote_cache_expiry=1 (day) is 6 s
    d = start(lxfs_daemon_factory, LXFS_TEST_HOUR_SECONDS="0.25")
    d.write("config", "images.auto_update_interval", "0")
    fp = publish_tree(d, busybox_image, static_server.root)
    d.write("config", "images.remote_cache_expiry", "1")
    # the mount's way: an instance's source is a remote reference
    d.path("instances", "c1").mkdir()
    d.write("instances", "c1", "source",
            f"simplestreams {static_server.url} busybox certificate={_b64(tls_cert[0])}")
    assert d.read("instances", "c1", "source") == fp
    assert d.read("images", fp, "cached") == "true"
    wait_for(lambda: fp not in images_of(d), "the cached image to expire", 30)
    assert fp not in store_files(d)
    assert d.read("instances", "c1", "state") in ("STOPPED", "RUNNING")  # still there


def test_auto_update_and_refresh_pick_up_a_newer_image(lxfs_daemon_factory, busybox_image,
                                                       static_server, tls_cert, tmp_path):
    d = start(lxfs_daemon_factory, LXFS_TEST_HOUR_SECONDS="0.5")
    d.write("config", "images.auto_update_interval", "0")
    old = publish_tree(d, busybox_image, static_server.root)
    lxc_remote(d, tls_cert[0], static_server)
    lxc(d, "launch", "m:busybox", "c1", timeout=180)
    assert images_of(d)[old]["auto_update"] is True
    lxc(d, "image", "alias", "create", "mine", old)
    # refresh with nothing newer: the same image
    status, doc, _ = api(d, "POST", f"/1.0/images/{old}/refresh", {})
    assert status == 202, doc
    assert wait(d, doc)["status"] == "Success"
    assert old in images_of(d)
    # a newer busybox on the mirror (built, exported, then deleted here)
    v2 = newer_busybox(busybox_image, tmp_path)
    d.cli("image", "import", v2, "--alias", "busybox", "--public", timeout=120)
    new = d.path("images", "aliases", "busybox").resolve().name
    assert new != old
    d.cli("image", "export-streams", static_server.root, timeout=120)
    d.cli("image", "delete", new)
    d.write("config", "images.auto_update_interval", "1")  # every 0.5 s
    wait_for(lambda: new in images_of(d) and old not in images_of(d),
             "auto-update to replace the image", 60)
    image = images_of(d)[new]
    assert image["cached"] is True and image["auto_update"] is True
    assert [a["name"] for a in image["aliases"]] == ["mine"]  # the alias moved
    assert sorted(store_files(d)) == [new]
    assert uploads_left(d) == []


# --- bad input -----------------------------------------------------------------------------

def _items(tree: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    products = json.loads((tree / "streams/v1/images.json").read_text())
    (product,) = products["products"].values()
    (version,) = product["versions"].values()
    (item,) = version["items"].values()
    return products, item


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "wrong-sha256",
                                    "wrong-fingerprint", "stall", "too-large"])
def test_bad_downloads_change_nothing(lxfs_daemon_factory, busybox_image, static_server,
                                      tls_cert, damage):
    d = start(lxfs_daemon_factory)
    tree = static_server.root
    fp = publish_tree(d, busybox_image, tree)
    products, item = _items(tree)
    path = tree / item["path"]
    data = path.read_bytes()
    expected = {"corrupt": "sha256 mismatch", "truncated": "truncated",
                "wrong-sha256": "sha256 mismatch", "wrong-fingerprint": "fingerprint",
                "stall": "stall", "too-large": "max_unpacked_size"}[damage]
    if damage == "corrupt":
        path.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "wrong-sha256":
        item["sha256"] = "0" * 64
    elif damage == "wrong-fingerprint":  # split files that match their sha256s, announced
        (product,) = products["products"].values()  # under another combined fingerprint
        (version,) = product["versions"].values()
        other = "ab" * 32
        meta, rootfs = _split(busybox_image, tree)
        version["items"] = {}
        version["items"]["lxd.tar.xz"] = {
            "ftype": "lxd.tar.xz", "path": meta[0], "size": meta[1], "sha256": meta[2],
            "combined_rootxz_sha256": other, "combined_sha256": other}
        version["items"]["root.tar.xz"] = {
            "ftype": "root.tar.xz", "path": rootfs[0], "size": rootfs[1], "sha256": rootfs[2]}
    elif damage == "stall":
        static_server.stall = True
    elif damage == "too-large":  # consistent, but larger than the host takes
        import hashlib

        data += b"\0" * (3 << 19)
        path.write_bytes(data)
        item["sha256"], item["size"] = hashlib.sha256(data).hexdigest(), len(data)
        d.write("config", "images.max_unpacked_size", "1MiB")
    (tree / "streams/v1/images.json").write_text(json.dumps(products))
    before_images, before_files = images_of(d), store_files(d)
    lxc_remote(d, tls_cert[0], static_server)
    started = time.monotonic()
    result = lxc(d, "launch", "m:busybox", "c1", check=False, timeout=120)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    if damage == "stall":
        assert time.monotonic() - started < 30
    assert images_of(d) == before_images and store_files(d) == before_files
    assert fp not in images_of(d)
    assert "c1" not in d.instance_names()
    wait_for(lambda: uploads_left(d) == [], "the staging directory to go", 10)
    # the mount's pull says the same, with an errno and the reason
    with pytest.raises(OSError):
        d.write("images", "pull", f"simplestreams {static_server.url} busybox "
                f"certificate={_b64(tls_cert[0])}")
    assert expected in d.read("error")
    assert images_of(d) == before_images
    # and lxfs launch tells the reason
    use_remotes(d, tls_cert[0], static_server)
    result = d.cli("launch", "mirror:busybox", "c2", check=False, timeout=120)
    assert result.returncode != 0 and expected in result.stderr, result.stderr
    assert "certificate=" not in result.stderr
    assert "c2" not in d.instance_names() and images_of(d) == before_images


def _split(busybox_image: Path, tree: Path) -> tuple[tuple[str, int, str], ...]:
    """The busybox image as a metadata tarball and a rootfs tarball in the tree:
    ``(path, size, sha256)`` of each."""
    import hashlib

    work = tree / "split-src"
    work.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(busybox_image), "-C", str(work)],
                   check=True)
    out = tree / "split"
    out.mkdir()
    members = [m for m in ("metadata.yaml", "templates") if (work / m).exists()]
    subprocess.run(["tar", "--numeric-owner", "-czf", str(out / "lxd.tar.gz"), "-C",
                    str(work), *members], check=True)
    subprocess.run(["tar", "--numeric-owner", "-czf", str(out / "rootfs.tar.gz"), "-C",
                    str(work / "rootfs"), "."], check=True)
    shutil.rmtree(work)
    return tuple((f"split/{name}", (out / name).stat().st_size,
                  hashlib.sha256((out / name).read_bytes()).hexdigest())
                 for name in ("lxd.tar.gz", "rootfs.tar.gz"))


# --- lxfs as a simplestreams server --------------------------------------------------------

def test_https_listener_serves_public_images_as_simplestreams(lxfs_daemon_factory,
                                                              busybox_image):
    d = start(lxfs_daemon_factory)
    d.cli("image", "import", busybox_image, "--alias", "busybox", "--public", timeout=120)
    fp = d.path("images", "aliases", "busybox").resolve().name
    port = _free_port()
    d.write("config", "core.https_address", f"127.0.0.1:{port}")
    url = f"https://127.0.0.1:{port}"
    cert = d.data_dir / "server.crt"
    wait_for(lambda: _reachable(port), "the HTTPS listener", 30)
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # an untrusted client: no client certificate
    import urllib.request

    def get(path: str) -> bytes:
        with urllib.request.urlopen(url + path, context=context, timeout=30) as r:
            return r.read()

    index = json.loads(get("/streams/v1/index.json"))
    products = json.loads(get("/" + index["index"]["images"]["path"]))["products"]
    (product,) = products.values()
    (version,) = product["versions"].values()
    (item,) = version["items"].values()
    assert item["sha256"] == fp and len(get("/" + item["path"])) == item["size"]
    # the real lxc: a simplestreams remote on lxfs's listener (its certificate pinned)
    lxc(d, "remote", "add", "self", url, "--protocol", "simplestreams")
    servercerts = d.base / "lxc-conf" / "servercerts"
    servercerts.mkdir(exist_ok=True)
    shutil.copy(cert, servercerts / "self.crt")
    listed = json.loads(lxc(d, "image", "list", "self:", "--format", "json").stdout)
    assert [i["fingerprint"] for i in listed] == [fp]
    # a private image is not there
    d.write("images", fp, "public", "false")
    assert json.loads(get("/streams/v1/images.json"))["products"] == {}
    with pytest.raises(urllib.error.HTTPError):
        get("/" + item["path"])
    d.write("config", "core.https_address", "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reachable(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False



# --- split images, the LXD protocol, kill -9 -----------------------------------------------

def test_split_image_over_simplestreams(lxfs_daemon_factory, busybox_image, static_server,
                                        tls_cert, tmp_path):
    from test_rest_images_integration import make_split

    d = start(lxfs_daemon_factory)
    meta, rootfs = make_split(busybox_image, tmp_path)
    d.cli("image", "import", meta, rootfs, "--alias", "split", "--public", timeout=120)
    fp = d.path("images", "aliases", "split").resolve().name
    d.cli("image", "export-streams", static_server.root, timeout=120)
    _, item = _items_split(static_server.root)
    assert item["combined_squashfs_sha256"] == fp
    d.cli("image", "delete", fp)
    d.write("images", "pull", f"simplestreams {static_server.url} split "
            f"certificate={_b64(tls_cert[0])}")
    assert d.read("images", "pull") == fp
    assert d.path("images", fp, "export.rootfs").exists()
    assert (d.data_dir / "images" / f"{fp}.rootfs").read_bytes() == rootfs.read_bytes()
    d.path("instances", "s1").mkdir()
    d.write("instances", "s1", "source", fp)


def _items_split(tree: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    products = json.loads((tree / "streams/v1/images.json").read_text())
    (product,) = products["products"].values()
    (version,) = product["versions"].values()
    return products, version["items"]["lxd.tar.xz"]


def _https(d: Any) -> str:
    port = _free_port()
    d.write("config", "core.https_address", f"127.0.0.1:{port}")
    wait_for(lambda: _reachable(port), "the HTTPS listener", 30)
    return f"https://127.0.0.1:{port}"


def test_lxd_protocol_pulls_public_and_private_images(lxfs_daemon_factory, busybox_image,
                                                      tmp_path):
    from test_rest_images_integration import make_split

    source = start(lxfs_daemon_factory)
    source.cli("image", "import", busybox_image, "--alias", "busybox", "--public", timeout=120)
    public = source.path("images", "aliases", "busybox").resolve().name
    meta, rootfs = make_split(busybox_image, tmp_path)
    source.cli("image", "import", meta, rootfs, "--alias", "secret-split", timeout=120)
    private = source.path("images", "aliases", "secret-split").resolve().name
    url = _https(source)
    cert = _b64(source.data_dir / "server.crt")
    d = start(lxfs_daemon_factory)
    try:
        # public, anonymously, by alias; then a launch through REST with an lxd source
        d.write("images", "pull", f"lxd {url} busybox certificate={cert} alias=bb")
        assert d.read("images", "pull") == public
        d.cli("image", "delete", public)
        pem = (source.data_dir / "server.crt").read_text()
        status, doc, _ = api(d, "POST", "/1.0/instances", {
            "name": "c1", "source": {"type": "image", "mode": "pull", "server": url,
                                     "protocol": "lxd", "alias": "busybox",
                                     "certificate": pem}})
        assert status == 202, doc
        assert wait(d, doc)["status"] == "Success"
        assert images_of(d)[public]["cached"] is True
        # private: refused without the secret, pulled with one (a split image: multipart)
        with pytest.raises(OSError):
            d.write("images", "pull", f"lxd {url} {private} certificate={cert}")
        assert private not in images_of(d)
        status, doc, _ = api(source, "POST", f"/1.0/images/{private}/secret", {})
        assert status == 202, doc
        secret = doc["metadata"]["metadata"]["secret"]
        d.write("images", "pull", f"lxd {url} {private} certificate={cert} secret={secret}")
        assert d.read("images", "pull") == private
        assert (d.data_dir / "images" / f"{private}.rootfs").read_bytes() == \
            rootfs.read_bytes()
        # a wrong pinned certificate is refused
        other = _b64(d.data_dir / "server.crt")
        d.cli("image", "delete", private)
        with pytest.raises(OSError):
            d.write("images", "pull", f"lxd {url} busybox certificate={other}")
        assert "certificate" in d.read("error")
    finally:
        source.write("config", "core.https_address", "")


def test_kill9_mid_download_leaves_nothing(lxfs_daemon_factory, busybox_image, static_server,
                                           tls_cert):
    d = lxfs_daemon_factory(env={"LXFS_IMAGE_SERVER_TIMEOUT": "60"})
    fp = publish_tree(d, busybox_image, static_server.root)
    static_server.stall = True
    status, doc, _ = api(d, "POST", "/1.0/images", {"source": {
        "type": "image", "mode": "pull", "server": static_server.url,
        "protocol": "simplestreams", "alias": "busybox",
        "certificate": tls_cert[0].read_text()}})
    assert status == 202, doc

    def progress() -> str:
        op = api(d, "GET", doc["operation"])[1]["metadata"]
        return (op.get("metadata") or {}).get("download_progress", "")

    wait_for(lambda: progress().startswith("metadata: 0%"), "download_progress", 30)
    assert d.read("images", "pulling").startswith(f"{static_server.url} busybox: metadata: 0%")
    assert any(n.startswith("pull-") for n in uploads_left(d))
    d.kill9()
    static_server.stall = False
    d.start()
    assert uploads_left(d) == []
    assert fp not in images_of(d) and fp not in store_files(d)


# --- the real LXD 5.0.2 launches from lxfs over simplestreams ------------------------------

def test_lxd_launches_from_lxfs_over_simplestreams(daemon_with_busybox, isolated_lxd):  # noqa: F811
    """LXD isolated in its network namespace (``isolated_lxd`` of the trust tests: the
    LXD-protocol half is there), reaching lxfs's HTTPS listener over a veth."""
    d = daemon_with_busybox
    lxd, veth = isolated_lxd
    fp = d.path("images", "aliases", "busybox").resolve().name
    d.write("images", fp, "public", "true")
    port = _free_port()
    address = f"{veth.host_address}:{port}"
    d.write("config", "core.https_address", address)
    try:
        wait_for(lambda: _reachable_at(veth.host_address, port), "the HTTPS listener", 30)
        lxd.cli("remote", "add", "lxfs-ss", f"https://{address}", "--protocol",
                "simplestreams")
        servercerts = Path(lxd.env["LXD_CONF"]) / "servercerts"
        servercerts.mkdir(parents=True, exist_ok=True)
        shutil.copy(d.data_dir / "server.crt", servercerts / "lxfs-ss.crt")
        assert fp in lxd.cli("image", "list", "lxfs-ss:", "--format", "csv", "-c", "F")
        lxd.cli("launch", "lxfs-ss:busybox", "c1")
        assert json.loads(lxd.cli("query", "/1.0/instances/c1"))["status"] == "Running"
        assert lxd.cli("exec", "c1", "--", "echo", "over simplestreams") == \
            "over simplestreams\n"
        cached = json.loads(lxd.cli("query", f"/1.0/images/{fp}"))
        assert cached["cached"] is True
        assert cached["update_source"]["protocol"] == "simplestreams"
        assert cached["update_source"]["server"] == f"https://{address}"
        lxd.cli("delete", "--force", "c1")
    finally:
        d.write("config", "core.https_address", "")


def _reachable_at(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 1):
        return True
    return False


def test_url_source_and_system_cas(lxfs_daemon_factory, busybox_image, static_server,
                                   tls_cert):
    """``source.type=url`` (LXD's direct download: a HEAD answers LXD-Image-Hash and
    LXD-Image-URL); no certificate given: the system's CAs (SSL_CERT_FILE) decide."""
    d = start(lxfs_daemon_factory, SSL_CERT_FILE=str(tls_cert[0]))
    fp = publish_tree(d, busybox_image, static_server.root)
    _, item = _items(static_server.root)
    static_server.direct = (fp, "/" + item["path"])
    status, doc, _ = api(d, "POST", "/1.0/images", {
        "source": {"type": "url", "url": f"{static_server.url}/direct"},
        "aliases": [{"name": "direct"}]})
    assert status == 202, doc
    op = wait(d, doc)
    assert op["status"] == "Success", op
    assert op["metadata"]["fingerprint"] == fp
    assert d.path("images", "aliases", "direct").resolve().name == fp
    assert " download: metadata: 100%" in d.log_path.read_text()
    # a hash that does not match the file: nothing registered
    d.cli("image", "delete", fp)
    static_server.direct = ("cd" * 32, "/" + item["path"])
    status, doc, _ = api(d, "POST", "/1.0/images", {
        "source": {"type": "url", "url": f"{static_server.url}/direct"}})
    op = wait(d, doc)
    assert op["status"] == "Failure" and "fingerprint" in op["err"], op
    assert fp not in images_of(d) and uploads_left(d) == []
