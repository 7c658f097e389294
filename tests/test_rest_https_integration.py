"""The HTTPS listener and its trust store, driven by Debian's real ``lxc`` 5.0.2 client and
pylxd over TLS on loopback, and by raw TLS clients for what untrusted clients get (compared
with the captures of LXD 5.0.2 in the shared reference)."""

from __future__ import annotations

import datetime
import errno
import http.client
import json
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_rest_seeds_integration import Lxc

pytestmark = pytest.mark.integration

PASSWORD = "correct horse"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_certificate(directory: Path, name: str,
                       not_before: datetime.datetime | None = None,
                       not_after: datetime.datetime | None = None) -> tuple[Path, Path]:
    """A self-signed client certificate, as ``lxc`` makes one (valid from a minute ago for
    30 days, unless told otherwise)."""
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - datetime.timedelta(minutes=1))
            .not_valid_after(not_after or now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA384()))
    crt, pem_key = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem_key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    return crt, pem_key


def request(port: int, method: str, path: str, body: Any = None,
            cert: tuple[Path, Path] | None = None) -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # as curl -k
    if cert:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_listening(port: int, wanted: bool = True) -> None:
    deadline = time.monotonic() + 10
    while listening(port) != wanted:
        assert time.monotonic() < deadline, f"port {port} listening: expected {wanted}"
        time.sleep(0.05)


@pytest.fixture
def https(daemon_with_busybox):
    d = daemon_with_busybox
    port = free_port()
    d.write("config", "core.https_address", f"127.0.0.1:{port}")
    d.write("config", "core.trust_password", PASSWORD)
    wait_listening(port)
    return d, port


def test_lxc_remote_add_with_the_trust_password(https, tmp_path):
    d, port = https
    lxc = Lxc(d, tmp_path)
    out = lxc("remote", "add", "r", f"https://127.0.0.1:{port}", "--accept-certificate",
              "--password", PASSWORD)
    assert "Client certificate now trusted by server: r" in out
    assert "NAME" in lxc("list", "r:")
    lxc("launch", "r:busybox", "r:c1")
    assert d.read("instances", "c1", "state") == "RUNNING"  # the mount agrees at once
    assert lxc("exec", "r:c1", "--", "sh", "-c", "echo over-tls; exit 3",
               check=False) == "over-tls\n"
    result = lxc("exec", "r:c1", "--", "false", check=False)
    assert result == ""
    info = lxc("info", "r:")
    assert "auth: trusted" in info and f"127.0.0.1:{port}" in info
    trusted = lxc("config", "trust", "list", "r:", "--format", "csv")
    assert trusted.count("client,") == 1
    fingerprint = lxc("query", "r:/1.0/certificates").split('"')[1].rsplit("/", 1)[1]
    lxc("config", "trust", "remove", "r:" + fingerprint)
    with pytest.raises(AssertionError, match="not authorized"):
        lxc("list", "r:")


def test_untrusted_clients_get_what_lxd_gives(https, tmp_path):
    d, port = https
    status, doc = request(port, "GET", "/1.0")
    assert status == 200 and doc["metadata"]["auth"] == "untrusted"
    assert set(doc["metadata"]) == {"api_extensions", "api_status", "api_version", "auth",
                                    "public", "auth_methods"}
    status, doc = request(port, "GET", "/1.0/instances")
    assert (status, doc) == (403, {"type": "error", "status": "", "status_code": 0,
                                   "operation": "", "error_code": 403,
                                   "error": "not authorized", "metadata": None})
    cert = client_certificate(tmp_path, "tester")
    assert request(port, "GET", "/1.0/instances", cert=cert)[0] == 403
    status, doc = request(port, "POST", "/1.0/certificates",
                          {"type": "client", "password": "wrong"}, cert=cert)
    assert (status, doc["error"]) == (403, "not authorized")
    # someone else's certificate cannot be slipped in with the password
    other = client_certificate(tmp_path, "other")
    status, _ = request(port, "POST", "/1.0/certificates",
                        {"type": "client", "password": PASSWORD,
                         "certificate": other[0].read_text()}, cert=cert)
    assert status == 403
    status, doc = request(port, "POST", "/1.0/certificates",
                          {"type": "client", "password": PASSWORD}, cert=cert)
    assert (status, doc["metadata"]) == (201, None)
    status, doc = request(port, "GET", "/1.0", cert=cert)
    assert doc["metadata"]["auth"] == "trusted"
    assert doc["metadata"]["environment"]["addresses"] == [f"127.0.0.1:{port}"]
    server_pem = (d.data_dir / "server.crt").read_text()
    assert doc["metadata"]["environment"]["certificate"] == server_pem
    status, doc = request(port, "GET", "/1.0/certificates?recursion=1", cert=cert)
    assert [c["name"] for c in doc["metadata"]] == ["tester"]
    assert request(port, "GET", "/1.0/instances", cert=cert)[0] == 200
    # the secret is never readable back, on the mount or over REST
    with pytest.raises(PermissionError):
        d.read("config", "core.trust_password")
    assert request(port, "GET", "/1.0", cert=cert)[1]["metadata"]["config"][
        "core.trust_password"] == "true"
    # cp to the mount's certificates/ trusts one; rmdir forgets it
    mounted = client_certificate(tmp_path, "from-mount")
    assert request(port, "GET", "/1.0/instances", cert=mounted)[0] == 403
    subprocess.run(["cp", str(mounted[0]), str(d.path("certificates"))], check=True)
    fingerprints = sorted(os.listdir(d.path("certificates")))
    assert len(fingerprints) == 2 and "from-mount.crt" not in fingerprints
    assert request(port, "GET", "/1.0/instances", cert=mounted)[0] == 200
    with pytest.raises(OSError) as exc:
        (d.path("certificates") / "junk.crt").write_text("not a certificate\n")
    assert exc.value.errno == errno.EINVAL and "not a PEM certificate" in d.read("error")
    ours = next(f for f in fingerprints
                if d.read("certificates", f, "name") == "from-mount")
    os.rmdir(d.path("certificates", ours))
    assert request(port, "GET", "/1.0/instances", cert=mounted)[0] == 403
    # the trust store outlives a restart of the daemon
    d.stop()
    d.start()
    wait_listening(port)
    assert request(port, "GET", "/1.0/instances", cert=cert)[0] == 200


def test_the_listener_follows_core_https_address(https):
    d, port = https
    d.write("config", "core.https_address", "")
    wait_listening(port, False)
    other = free_port()
    d.write("config", "core.https_address", f"127.0.0.1:{other}")
    wait_listening(other)
    assert request(other, "GET", "/1.0")[1]["metadata"]["auth"] == "untrusted"
    assert not listening(port)
    # an address that cannot be bound is reported, and the daemon serves on
    d.write("config", "core.https_address", "192.0.2.1:8443")
    deadline = time.monotonic() + 10
    while "cannot listen on 192.0.2.1:8443" not in d.read("error"):
        assert time.monotonic() < deadline, d.read("error")
        time.sleep(0.05)
    assert d.read("instances", ".list") is not None


def test_pylxd_over_https_with_a_client_certificate(https, tmp_path, monkeypatch):
    import pylxd

    d, port = https
    # requests lets these override verify=False (psf/requests#3829)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    cert = client_certificate(tmp_path, "pylxd")
    client = pylxd.Client(endpoint=f"https://127.0.0.1:{port}",
                          cert=(str(cert[0]), str(cert[1])), verify=False)
    assert not client.trusted
    client.authenticate(PASSWORD)
    assert client.trusted
    instance = client.instances.create({"name": "p1", "source": {"type": "image",
                                                                "alias": "busybox"}},
                                       wait=True)
    instance.start(wait=True)
    result = instance.execute(["sh", "-c", "echo tls-out; echo tls-err >&2; exit 2"])
    assert (result.exit_code, result.stdout, result.stderr) == (2, "tls-out\n", "tls-err\n")
    instance.stop(force=True, wait=True)
    instance.delete(wait=True)
    assert "p1" not in d.instance_names()
