"""Trust over HTTPS beyond the password (issue 14): join tokens as LXD 5.0 makes and takes
them, restricted and expired certificates, what untrusted clients see of images (public ones,
private ones with a secret), all driven by Debian's real ``lxc`` 5.0.2 client and raw TLS
clients on loopback; and the real LXD 5.0.2, isolated in a network namespace as ``bench/``
runs it, pulling an image from lxfs over the LXD protocol through a veth pair."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from test_rest_https_integration import (
    client_certificate,
    free_port,
    request,
    wait_listening,
)
from test_rest_instances_integration import api, assert_fields, reference
from test_rest_seeds_integration import Lxc

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = {"type": "error", "status": "", "status_code": 0, "operation": "",
                  "error_code": 403, "error": "not authorized", "metadata": None}


@pytest.fixture
def https(daemon_with_busybox, tmp_path):
    """The daemon listening on loopback, and an administrator's ``lxc`` (the unix socket,
    remote ``lxfs``)."""
    d = daemon_with_busybox
    port = free_port()
    d.write("config", "core.https_address", f"127.0.0.1:{port}")
    wait_listening(port)
    admin = client(tmp_path, "admin", d)
    admin("remote", "add", "lxfs", f"unix://{d.data_dir / 'unix.socket'}")
    admin("remote", "switch", "lxfs")  # lxc 5.0.2 makes tokens on the default remote only
    return d, port, admin


def client(tmp_path: Path, name: str, d: Any = None) -> Lxc:
    home = tmp_path / name
    home.mkdir()
    return Lxc(d, home)


def make_token(admin: Lxc, name: str, *flags: str) -> str:
    out = admin("config", "trust", "add", "--name", name, *flags)
    assert f"Client {name} certificate add token:" in out, out
    return out.split()[-1]


def lxc_fails(lxc: Lxc, *args: str) -> str:
    """Run ``lxc`` expecting a failure: its stderr."""
    result = subprocess.run(["lxc", *args], env=lxc.env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0, f"lxc {' '.join(args)} succeeded:\n{result.stdout}"
    return result.stderr


def server_fingerprint(d) -> str:
    pem = (d.data_dir / "server.crt").read_text()
    return hashlib.sha256(x509.load_pem_x509_certificate(pem.encode()).public_bytes(
        serialization.Encoding.DER)).hexdigest()


def pending_tokens(d) -> list[dict[str, Any]]:
    status, doc, _ = api(d, "GET", "/1.0/operations?recursion=1")
    assert status == 200, doc
    return [op for ops in doc["metadata"].values() for op in ops
            if op["class"] == "token" and op["status_code"] == 103]


# --- join tokens ------------------------------------------------------------------------------

def test_join_token_flow_with_the_real_lxc(https, tmp_path):
    d, port, admin = https
    token = make_token(admin, "x")
    decoded = json.loads(base64.b64decode(token))
    assert decoded["client_name"] == "x"
    assert decoded["addresses"] == [f"127.0.0.1:{port}"]
    assert decoded["fingerprint"] == server_fingerprint(d)
    assert len(decoded["secret"]) == 64
    # the pending token is an operation of class token, as LXD's (fields as the capture)
    [op] = pending_tokens(d)
    theirs = reference("get_operations_with_token")["metadata"]["running"][0]
    assert_fields(op, theirs)
    assert op["metadata"]["request"] == {"name": "x", "type": "client", "restricted": False,
                                         "projects": [], "certificate": "", "password": "",
                                         "token": True}
    assert (op["description"], op["may_cancel"], op["resources"]) == \
        ("Executing operation", True, None)
    listed = admin("config", "trust", "list-tokens", "lxfs:", "--format", "csv")
    assert listed.strip() == f"x,{token},"
    # a client without a certificate is told so, and the token is not spent
    status, doc = request(port, "POST", "/1.0/certificates", {"type": "client",
                                                             "password": token})
    assert (status, doc["error"]) == (400, "No client certificate provided")
    assert len(pending_tokens(d)) == 1
    # a second client joins with it (no password, no --accept-certificate: the token
    # names the server's certificate)
    joiner = client(tmp_path, "joiner", d)
    joiner("remote", "add", "r", token)
    assert "NAME" in joiner("list", "r:")
    assert "auth: trusted" in joiner("info", "r:")
    trusted = admin("config", "trust", "list", "lxfs:", "--format", "csv")
    assert trusted.startswith("client,x,"), trusted
    # used once: gone from the list, and refused to a third client
    assert pending_tokens(d) == []
    assert admin("config", "trust", "list-tokens", "lxfs:", "--format", "csv").strip() == ""
    late = client(tmp_path, "late", d)
    err = lxc_fails(late, "remote", "add", "r", token)
    assert "not authorized" in err or "No matching certificate add operation" in err, err
    status, doc = request(port, "POST", "/1.0/certificates",
                          {"type": "client", "password": token},
                          cert=client_certificate(tmp_path, "raw-late"))
    assert (status, doc["error"]) == (403, "No matching certificate add operation found")
    # a revoked token is refused
    revoked = make_token(admin, "y")
    assert "Certificate add token for y deleted" in \
        admin("config", "trust", "revoke-token", "lxfs:y")
    assert pending_tokens(d) == []
    lxc_fails(client(tmp_path, "revoked", d), "remote", "add", "r", revoked)
    # an untrusted client cannot make tokens; a token needs type client and the listener
    status, doc = request(port, "POST", "/1.0/certificates",
                          {"type": "client", "token": True},
                          cert=client_certificate(tmp_path, "raw"))
    assert (status, doc["error"]) == (403, "not authorized")
    status, doc, _ = api(d, "POST", "/1.0/certificates", {"name": "z", "token": True})
    assert (status, doc["error"]) == (400, "Tokens can only be issued for client certificates")
    status, doc, _ = api(d, "POST", "/1.0/certificates", {"type": "client", "token": True,
                                                          "certificate": "x"})
    assert (status, doc["error"]) == (400, "Can't use certificate if token is requested")
    # as LXD's, tokens are operations: a restart of the daemon ends them
    before_restart = make_token(admin, "z")
    d.stop()
    d.start()
    wait_listening(port)
    assert pending_tokens(d) == []
    lxc_fails(client(tmp_path, "after-restart", d), "remote", "add", "r", before_restart)
    assert "NAME" in joiner("list", "r:")  # the trust given outlives the restart


def test_join_tokens_expire_with_core_remote_token_expiry(https, tmp_path):
    d, port, admin = https
    admin("config", "set", "lxfs:", "core.remote_token_expiry", "2S")
    assert d.read("config", "core.remote_token_expiry") == "2S"
    with pytest.raises(AssertionError, match="Invalid expiry expression"):
        admin("config", "set", "lxfs:", "core.remote_token_expiry", "2 days")
    token = make_token(admin, "soon")
    [op] = pending_tokens(d)
    expires = datetime.datetime.fromisoformat(op["metadata"]["expiresAt"].replace("Z", "+00:00")
                                              [:26] + "+00:00")
    assert 0 < (expires - datetime.datetime.now(datetime.UTC)).total_seconds() <= 2.5
    listed = admin("config", "trust", "list-tokens", "lxfs:", "--format", "csv")
    assert listed.startswith(f"soon,{token},") and listed.strip() != f"soon,{token},"
    time.sleep(3)
    assert pending_tokens(d) == []  # cancelled at its expiry, as LXD's
    lxc_fails(client(tmp_path, "too-late", d), "remote", "add", "r", token)
    # and a token used in time works
    admin("config", "set", "lxfs:", "core.remote_token_expiry", "1H")
    joiner = client(tmp_path, "in-time", d)
    joiner("remote", "add", "r", make_token(admin, "in-time"))
    assert "NAME" in joiner("list", "r:")
    # the key outlives a restart (the REST plugin declares it before anyone reads it)
    d.stop()
    d.start()
    wait_listening(port)
    assert d.read("config", "core.remote_token_expiry") == "1H"
    make_token(admin, "after-restart")
    [op] = pending_tokens(d)
    assert "expiresAt" in op["metadata"]


# --- restricted and expired certificates --------------------------------------------------

def certificate_pem(crt: Path) -> str:
    return crt.read_text()


def trust_certificate(d, crt: Path, **fields: Any) -> str:
    status, doc, _ = api(d, "POST", "/1.0/certificates",
                         {"type": "client", "certificate": certificate_pem(crt), **fields})
    assert status == 201, doc
    return hashlib.sha256(x509.load_pem_x509_certificate(crt.read_bytes()).public_bytes(
        serialization.Encoding.DER)).hexdigest()


def short_lived_certificate(directory: Path, name: str, not_before: datetime.datetime,
                            not_after: datetime.datetime) -> tuple[Path, Path]:
    return client_certificate(directory, name, not_before, not_after)


def test_restricted_certificates_as_lxd(https, tmp_path):
    d, port, admin = https
    member = client_certificate(tmp_path, "member")
    member_fp = trust_certificate(d, member[0], restricted=True, projects=["default"])
    outsider = client_certificate(tmp_path, "outsider")
    trust_certificate(d, outsider[0], restricted=True, projects=[])
    status, doc, _ = api(d, "GET", f"/1.0/certificates/{member_fp}")
    assert (doc["metadata"]["restricted"], doc["metadata"]["projects"]) == (True, ["default"])
    assert d.read("certificates", member_fp, "restricted") == "true"
    assert d.read("certificates", member_fp, "projects") == "default"
    status, doc, _ = api(d, "POST", "/1.0/certificates",
                         {"type": "client", "restricted": True, "projects": ["nope"],
                          "certificate": certificate_pem(client_certificate(tmp_path, "n")[0])})
    assert status == 404, doc

    def get(path: str, cert: tuple[Path, Path]) -> int:
        return request(port, "GET", path, cert=cert)[0]

    # the project's endpoints: the member may, the outsider may not
    for path in ("/1.0/instances", "/1.0/instances?project=default", "/1.0/profiles",
                 "/1.0/profiles/default", "/1.0/images/aliases", "/1.0/networks",
                 "/1.0/storage-pools/default/volumes", "/1.0/projects/default"):
        assert get(path, member) == 200, path
        assert request(port, "GET", path, cert=outsider) == (403, NOT_AUTHORIZED), path
    assert get("/1.0/instances?project=other", member) == 403
    # every trusted client's endpoints
    for path in ("/1.0/certificates", "/1.0/operations", "/1.0/storage-pools",
                 "/1.0/storage-pools/default", "/1.0/resources", "/1.0/projects"):
        assert get(path, member) == 200 and get(path, outsider) == 200, path
    status, doc = request(port, "GET", "/1.0", cert=outsider)
    assert doc["metadata"]["auth"] == "trusted"
    # the administrator's: 403 to both
    refused = [("PATCH", "/1.0", {"config": {"core.https_address": ""}}),
               ("PUT", "/1.0", {"config": {}}),
               ("DELETE", f"/1.0/certificates/{member_fp}", None),
               ("POST", "/1.0/storage-pools", {"name": "p2", "driver": "dir"}),
               ("PATCH", "/1.0/storage-pools/default", {"config": {}}),
               ("DELETE", "/1.0/storage-pools/default", None),
               ("POST", "/1.0/projects", {"name": "p2"}),
               ("PATCH", "/1.0/projects/default", {"config": {}})]
    for method, path, body in refused:
        assert request(port, method, path, body, cert=member) == (403, NOT_AUTHORIZED), path
    # nor read the daemon's log records (as LXD: logging events are the administrator's)
    assert request(port, "GET", "/1.0/events?type=logging", cert=member)[0] == 403
    # a restricted client cannot make tokens, add certificates, or lift its restriction
    status, doc = request(port, "POST", "/1.0/certificates", {"type": "client", "token": True},
                          cert=member)
    assert status == 403
    status, doc = request(port, "POST", "/1.0/certificates",
                          {"type": "client",
                           "certificate": certificate_pem(client_certificate(tmp_path, "o")[0])},
                          cert=member)
    assert status == 403
    status, doc = request(port, "PATCH", f"/1.0/certificates/{member_fp}",
                          {"restricted": False}, cert=member)
    assert (status, doc["error"]) == (403, "Only the certificate can be changed")
    assert d.read("config", "core.https_address") == f"127.0.0.1:{port}"
    assert d.read("certificates", member_fp, "restricted") == "true"
    # the outsider sees images as an untrusted client does: the public ones only
    assert request(port, "GET", "/1.0/images", cert=outsider)[1]["metadata"] == []
    assert len(request(port, "GET", "/1.0/images", cert=member)[1]["metadata"]) == 1
    # the real lxc with a restricted token: lists and launches, but cannot configure
    token = make_token(admin, "limited", "--restricted", "--projects", "default")
    limited = client(tmp_path, "limited", d)
    limited("remote", "add", "r", token)
    fp = next(f for f in os.listdir(d.path("certificates"))
              if d.read("certificates", f, "name") == "limited")
    assert d.read("certificates", fp, "restricted") == "true"
    assert d.read("certificates", fp, "projects") == "default"
    limited("launch", "r:busybox", "r:c1")
    assert d.read("instances", "c1", "state") == "RUNNING"
    assert "c1" in limited("list", "r:")
    err = lxc_fails(limited, "config", "set", "r:", "core.https_address", "127.0.0.1:1")
    assert "not authorized" in err, err
    err = lxc_fails(limited, "query", "-X", "POST", "-d",
                    '{"type": "client", "token": true, "name": "more"}', "r:/1.0/certificates")
    assert "not authorized" in err, err
    limited("delete", "--force", "r:c1")


def test_every_route_has_lxds_access_level():
    """Each route's level as LXD 5.0.2's handlers give it (``lxd/*.go``: AccessHandler
    ``allowAuthenticated``, ``allowProjectPermission``, or none: the administrator's)."""
    import lxfs_plugins.rest as rest
    from lxfs_plugins.rest.app import ROUTES
    from lxfs_plugins.rest.trust import ADMIN, AUTHENTICATED, PROJECT, access_level

    rest._load_endpoints()
    admin = {("PUT", "/1.0"), ("PATCH", "/1.0"), ("POST", "/1.0/certificates"),
             ("DELETE", "/1.0/certificates/{fingerprint}"), ("POST", "/1.0/projects"),
             ("PUT", "/1.0/projects/{name}"), ("PATCH", "/1.0/projects/{name}"),
             ("POST", "/1.0/projects/{name}"), ("DELETE", "/1.0/projects/{name}"),
             ("POST", "/1.0/storage-pools"), ("PUT", "/1.0/storage-pools/{name}"),
             ("PATCH", "/1.0/storage-pools/{name}"), ("DELETE", "/1.0/storage-pools/{name}"),
             ("GET", "/"), ("GET", "/1.0")}  # the last three: untrusted routes anyway
    for r in ROUTES:
        level = access_level(r.method, r.template)
        if (r.method, r.template) in admin:
            assert level == ADMIN, (r.method, r.template)
        elif r.template.startswith(("/1.0/instances", "/1.0/containers", "/1.0/images",
                                    "/1.0/profiles", "/1.0/networks",
                                    "/1.0/storage-pools/{pool}/volumes", "/1.0/projects/")):
            assert level == PROJECT, (r.method, r.template)
        elif not r.untrusted:  # an untrusted route's level does not matter
            assert level == AUTHENTICATED, (r.method, r.template)


def test_certificates_outside_their_validity_are_not_trusted(https, tmp_path):
    d, port, _admin = https
    now = datetime.datetime.now(datetime.UTC)
    expired = short_lived_certificate(tmp_path, "expired", now - datetime.timedelta(days=2),
                                      now - datetime.timedelta(minutes=1))
    status, doc, _ = api(d, "POST", "/1.0/certificates",
                         {"type": "client", "certificate": certificate_pem(expired[0])})
    assert (status, doc["error"]) == (400, "The provided certificate is expired")
    future = short_lived_certificate(tmp_path, "future", now + datetime.timedelta(days=1),
                                     now + datetime.timedelta(days=2))
    status, doc, _ = api(d, "POST", "/1.0/certificates",
                         {"type": "client", "certificate": certificate_pem(future[0])})
    assert (status, doc["error"]) == (400, "The provided certificate isn't valid yet")
    # trusted while valid; past its notAfter, the store's entry no longer lets it in
    brief = short_lived_certificate(tmp_path, "brief", now - datetime.timedelta(minutes=1),
                                    now + datetime.timedelta(seconds=4))
    trust_certificate(d, brief[0])
    assert request(port, "GET", "/1.0/instances", cert=brief)[0] == 200
    time.sleep(max(0.0, (now + datetime.timedelta(seconds=5) -
                         datetime.datetime.now(datetime.UTC)).total_seconds()))
    assert request(port, "GET", "/1.0/instances", cert=brief) == (403, NOT_AUTHORIZED)
    assert request(port, "GET", "/1.0", cert=brief)[1]["metadata"]["auth"] == "untrusted"


# --- untrusted clients ----------------------------------------------------------------------

def test_curl_without_a_trusted_certificate_gets_403(https, tmp_path):
    _d, port, _admin = https
    url = f"https://127.0.0.1:{port}/1.0/instances"
    result = subprocess.run(["curl", "-k", "-s", "-w", "\n%{http_code}", url],
                            capture_output=True, text=True, timeout=30, check=True)
    body, code = result.stdout.rsplit("\n", 1)
    assert code == "403"
    assert json.loads(body) == reference("https_get_instances_untrusted")
    crt, key = client_certificate(tmp_path, "curl")
    result = subprocess.run(["curl", "-k", "-s", "--cert", str(crt), "--key", str(key), "-w",
                             "\n%{http_code}", url],
                            capture_output=True, text=True, timeout=30, check=True)
    body, code = result.stdout.rsplit("\n", 1)
    assert (json.loads(body), code) == (NOT_AUTHORIZED, "403")


def test_untrusted_clients_see_public_images_and_private_ones_with_a_secret(https, tmp_path):
    d, port, admin = https
    status, doc, _ = api(d, "GET", "/1.0/images/aliases/busybox")
    fp = doc["metadata"]["target"]
    stranger = client_certificate(tmp_path, "stranger")

    def untrusted(path: str) -> tuple[int, dict[str, Any]]:
        return request(port, "GET", path, cert=stranger)

    # private: nothing of it shows
    assert untrusted("/1.0/images")[1]["metadata"] == []
    assert untrusted("/1.0/images?recursion=1")[1]["metadata"] == []
    assert untrusted(f"/1.0/images/{fp}")[0] == 404
    assert untrusted(f"/1.0/images/{fp}/export")[0] == 404
    assert untrusted("/1.0/images/aliases/busybox")[0] == 404
    assert untrusted("/1.0/images/aliases") == (403, NOT_AUTHORIZED)  # as LXD
    assert request(port, "POST", f"/1.0/images/{fp}/secret", cert=stranger)[0] == 403
    # a secret (an operation of class token, as LXD's) opens it to whoever has it
    status, doc, _ = api(d, "POST", f"/1.0/images/{fp}/secret")
    assert status == 202, doc
    op = doc["metadata"]
    assert (op["class"], op["description"], op["status_code"]) == \
        ("token", "Image download token", 103)
    assert op["resources"] == {"images": [f"/1.0/images/{fp}"]}
    secret = op["metadata"]["secret"]
    assert untrusted(f"/1.0/images/{fp}?secret=wrong")[0] == 404
    status, doc = untrusted(f"/1.0/images/{fp}?secret={secret}")
    assert status == 200 and doc["metadata"]["fingerprint"] == fp
    status, op_doc, _ = api(d, "GET", f"/1.0/operations/{op['id']}")
    assert op_doc["metadata"]["status"] == "Cancelled"  # used: single use, as LXD's
    exported = export_bytes(port, f"/1.0/images/{fp}/export?secret={secret}", stranger)
    assert hashlib.sha256(exported).hexdigest() == fp
    deadline = time.monotonic() + 15
    while api(d, "GET", f"/1.0/operations/{op['id']}")[0] == 200:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert untrusted(f"/1.0/images/{fp}?secret={secret}")[0] == 404
    # public: listed, readable, exportable, its alias resolvable
    admin("image", "edit", "lxfs:busybox", input=admin("image", "show", "lxfs:busybox")
          .replace("public: false", "public: true"))
    status, doc = untrusted("/1.0/images?recursion=1")
    assert [i["fingerprint"] for i in doc["metadata"]] == [fp]
    assert_fields(doc["metadata"][0], reference("get_images_recursion1")["metadata"][0])
    assert untrusted(f"/1.0/images/{fp}")[0] == 200
    assert untrusted("/1.0/images/aliases/busybox")[1]["metadata"]["target"] == fp
    assert hashlib.sha256(export_bytes(port, f"/1.0/images/{fp}/export", stranger)
                          ).hexdigest() == fp
    # the real lxc, as a public remote: it lists the public image without trust
    viewer = client(tmp_path, "viewer", d)
    viewer("remote", "add", "pub", f"https://127.0.0.1:{port}", "--public",
           "--accept-certificate")
    assert "busybox" in viewer("image", "list", "pub:")


def export_bytes(port: int, path: str, cert: tuple[Path, Path]) -> bytes:
    import http.client
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(str(cert[0]), str(cert[1]))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data[:300]
        return data
    finally:
        conn.close()



# --- the real LXD pulls from lxfs -------------------------------------------------------------

class Veth:
    """A veth pair from this namespace into another process's network namespace, with a
    /30 of 10.251.0.0/16 that no route of the host uses yet; removed by ``remove``."""

    def __init__(self, pid: int) -> None:
        tag = os.getpid() % 100000
        self.host_end, self.peer_end = f"lxfst{tag}h", f"lxfst{tag}p"
        routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"],
                                capture_output=True, text=True, check=True).stdout
        third = next(n for n in range(150, 190) if f"10.251.{n}." not in routes)
        self.host_address, self.peer_address = f"10.251.{third}.1", f"10.251.{third}.2"
        self.pid = pid

    def add(self) -> None:
        def run(*cmd: str) -> None:
            subprocess.run(cmd, check=True, capture_output=True, timeout=30)

        run("ip", "link", "add", self.host_end, "type", "veth", "peer", "name", self.peer_end)
        run("ip", "link", "set", self.peer_end, "netns", str(self.pid))
        run("ip", "address", "add", f"{self.host_address}/30", "dev", self.host_end)
        run("ip", "link", "set", self.host_end, "up")
        inside = ("nsenter", "-t", str(self.pid), "-n")
        run(*inside, "ip", "address", "add", f"{self.peer_address}/30", "dev", self.peer_end)
        run(*inside, "ip", "link", "set", self.peer_end, "up")

    def remove(self) -> None:
        # the peer end goes with its namespace, or with the host end
        subprocess.run(["ip", "link", "del", self.host_end], capture_output=True, check=False)


@pytest.fixture
def isolated_lxd():
    """Debian's LXD 5.0.2, started isolated as ``bench/`` starts it (its own LXD_DIR, its
    own network namespace), and a veth pair into that namespace; all removed afterwards,
    even on failure."""
    from conftest import REPO

    if not shutil.which("lxd"):  # bench/ would install it: a test never reaches the internet
        pytest.fail("LXD 5.0.2 is not installed (apt-get install lxd)", pytrace=False)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench.lxd import start_isolated_lxd

    with ExitStack() as stack:
        lxd = start_isolated_lxd(stack, {})
        veth = Veth(lxd.daemon_pid)
        stack.callback(veth.remove)
        veth.add()
        yield lxd, veth


def test_lxd_pulls_a_public_image_from_lxfs(daemon_with_busybox, isolated_lxd, tmp_path):
    d = daemon_with_busybox
    lxd, veth = isolated_lxd
    port = free_port()
    address = f"{veth.host_address}:{port}"
    d.write("config", "core.https_address", address)
    deadline = time.monotonic() + 10
    while subprocess.run(["curl", "-k", "-s", "-o", "/dev/null", f"https://{address}/"],
                         timeout=10).returncode != 0:
        assert time.monotonic() < deadline, d.read("error")
        time.sleep(0.1)
    status, doc, _ = api(d, "GET", "/1.0/images/aliases/busybox")
    fp = doc["metadata"]["target"]
    status, doc, _ = api(d, "PATCH", f"/1.0/images/{fp}", {"public": True})
    assert status == 200, doc
    # LXD's daemon reaches lxfs from its namespace, over the veth only
    reach = subprocess.run(["nsenter", "-t", str(lxd.daemon_pid), "-n", "curl", "-k", "-s",
                            f"https://{address}/1.0"], capture_output=True, text=True,
                           timeout=30)
    assert json.loads(reach.stdout)["metadata"]["auth"] == "untrusted", reach
    lxd.cli("remote", "add", "lxfs", f"https://{address}", "--public", "--accept-certificate")
    assert "busybox" in lxd.cli("image", "list", "lxfs:")
    lxd.cli("image", "copy", "lxfs:busybox", "local:", "--alias", "from-lxfs")
    copied = json.loads(lxd.cli("query", "/1.0/images/aliases/from-lxfs"))
    assert copied["target"] == fp
    image = json.loads(lxd.cli("query", f"/1.0/images/{fp}"))
    assert image["fingerprint"] == fp and image["size"] > 0
    # an instance from lxfs's image, straight from the remote (LXD caches it): LXD runs it
    lxd.cli("image", "delete", "from-lxfs")
    lxd.cli("launch", "lxfs:busybox", "c1")
    assert json.loads(lxd.cli("query", "/1.0/instances/c1"))["status"] == "Running"
    assert lxd.cli("exec", "c1", "--", "echo", "pulled from lxfs") == "pulled from lxfs\n"
    cached = json.loads(lxd.cli("query", f"/1.0/images/{fp}"))
    assert cached["cached"] is True
    assert cached["update_source"]["server"] == f"https://{address}"
    assert cached["update_source"]["protocol"] == "lxd"
    lxd.cli("delete", "--force", "c1")
    lxd.cli("image", "delete", fp)
    # a private image: refused to the untrusted client; once LXD's client joins lxfs with a
    # token, it asks lxfs for a secret, and LXD's daemon downloads with it
    status, doc, _ = api(d, "PATCH", f"/1.0/images/{fp}", {"public": False})
    assert status == 200, doc
    refused = run_lxc(lxd.env, "image", "copy", "lxfs:busybox", "local:")
    assert refused.returncode != 0, refused
    admin = client(tmp_path, "admin", d)
    admin("remote", "add", "lxfs", f"unix://{d.data_dir / 'unix.socket'}")
    admin("remote", "switch", "lxfs")
    lxd.cli("remote", "add", "lxfs-trusted", make_token(admin, "lxd-host"))
    lxd.cli("image", "copy", "lxfs-trusted:busybox", "local:", "--alias", "private-copy")
    copied = json.loads(lxd.cli("query", "/1.0/images/aliases/private-copy"))
    assert copied["target"] == fp
    secrets_used = [op for ops in api(d, "GET", "/1.0/operations?recursion=1")[1]["metadata"]
                    .values() for op in ops if op["description"] == "Image download token"]
    assert all(op["status"] == "Cancelled" for op in secrets_used)  # used up


def run_lxc(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["lxc", *args], env=env, capture_output=True, text=True, timeout=300)
