"""The ``lxfs`` command's client for remote servers: LXD's REST API over HTTPS.

HTTP is the standard library's ``http.client``, TLS its ``ssl`` module (the client side needs
no more: it presents its certificate and pins the server's), websockets are ``wsproto``'s.
A remote's certificate is pinned when it is added (``$LXFS_CONF/servercerts/NAME.crt``) and
compared byte for byte at every connection, as ``lxc`` does. Imported only for remotes.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import ssl
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from lxfs.cli.base import CLIError
from lxfs.cli.remotes import (
    Remote,
    client_cert_paths,
    config_dir,
    server_cert_path,
    write_private,
)

TIMEOUT = 30.0
USER_AGENT = "lxfs"


def pem_to_der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem)


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _split_addr(addr: str) -> tuple[str, str, int, str]:
    url = urllib.parse.urlsplit(addr)
    if url.hostname is None:
        raise CLIError(f"Invalid remote URL {addr!r}")
    default = 443 if url.scheme == "https" else 80
    return url.scheme, url.hostname, url.port or default, url.path.rstrip("/")



#: the collections LXD scopes by project (``?project=``)
PROJECT_SCOPED = ("/1.0/instances", "/1.0/containers", "/1.0/profiles", "/1.0/images")


def in_project(path: str, stored: str) -> str:
    """``path`` in the project ``--project`` names, else the remote's current one
    (``stored``); unchanged for the default project and for unscoped paths."""
    from lxfs.cli.projects import explicit_project  # noqa: PLC0415

    project = explicit_project() or stored
    if project in ("", "default") or not path.startswith(PROJECT_SCOPED) or \
            "project=" in path:
        return path
    return f"{path}{'&' if '?' in path else '?'}project={urllib.parse.quote(project)}"

class UnixConnection(http.client.HTTPConnection):
    """HTTP on a unix socket (this host's ``DATA_DIR/unix.socket``)."""

    def __init__(self, path: str, timeout: float = TIMEOUT) -> None:
        super().__init__("unix.socket", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def local_socket() -> str:
    """This host's REST socket, as the mount names its data directory."""
    from lxfs.cli.base import mount_point, read_opt  # noqa: PLC0415

    data_dir = read_opt(os.path.join(mount_point(), "environment", "data_dir")).strip()
    if not data_dir:
        raise CLIError("the mount does not publish environment/data_dir")
    return os.path.join(data_dir, "unix.socket")


class Server:
    """A connection to one LXD-protocol server: lxfs's HTTPS listener or LXD's, or this
    host's unix socket for ``local`` (what the mount has no files for: join tokens)."""

    def __init__(self, remote: Remote, pinned_der: bytes | None = None,
                 use_client_cert: bool = True) -> None:
        self.remote = remote
        if remote.is_local:
            self.scheme, self.host, self.port, self.prefix = "unix", local_socket(), 0, ""
        else:
            self.scheme, self.host, self.port, self.prefix = _split_addr(remote.addr)
        if pinned_der is None:
            pinned = server_cert_path(remote.name)
            if pinned is not None:
                pinned_der = pem_to_der(pinned.read_text())
        self.pinned_der = pinned_der
        self.use_client_cert = use_client_cert and not remote.public
        self._conn: http.client.HTTPConnection | None = None
        self.peer_der: bytes | None = None

    # -- connections --------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.pinned_der is None and self.remote.public:
            context.load_default_certs()  # a public server with a CA-signed certificate
        else:
            context.check_hostname = False  # the pinned certificate is compared instead
            context.verify_mode = ssl.CERT_NONE
        if self.use_client_cert:
            cert, key = client_cert_paths()
            context.load_cert_chain(cert, key)
        return context

    def _check_peer(self, sock: ssl.SSLSocket) -> None:
        der = sock.getpeercert(binary_form=True)
        self.peer_der = der
        if self.pinned_der is not None and der != self.pinned_der:
            raise CLIError(
                f"The certificate of remote {self.remote.name} ({self.remote.addr}) changed: "
                f"fingerprint {fingerprint(der or b'')}, expected "
                f"{fingerprint(self.pinned_der)}. If it was renewed, remove and add the remote "
                "again")

    def connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.scheme == "unix":
                conn: http.client.HTTPConnection = UnixConnection(self.host)
            elif self.scheme == "https":
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=TIMEOUT,
                                                   context=self.ssl_context())
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
            try:
                conn.connect()
            except (OSError, ssl.SSLError) as exc:
                raise CLIError(f"cannot reach remote {self.remote.name} at "
                               f"{self.remote.addr}: {exc}") from None
            if isinstance(conn.sock, ssl.SSLSocket):
                self._check_peer(conn.sock)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- requests -----------------------------------------------------------------------------

    def raw(self, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """One request; ``body`` is JSON-encoded unless bytes or a file object."""
        hdrs = {"User-Agent": USER_AGENT, **(headers or {})}
        path = in_project(path, self.remote.project)
        if body is not None and not isinstance(body, bytes) and not hasattr(body, "read"):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        for attempt in (1, 2):
            conn = self.connection()
            try:
                conn.request(method, self.prefix + path, body=body, headers=hdrs)
                response = conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()  # a kept-alive connection the server closed: once more
                if attempt == 2 or hasattr(body, "read"):
                    raise CLIError(f"remote {self.remote.name} closed the connection") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise CLIError(f"remote {self.remote.name}: {exc}") from None
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> dict[str, Any]:
        """A request whose answer is LXD's JSON envelope; an error envelope raises CLIError."""
        status, data = self.raw(method, path, body, headers)
        try:
            document = json.loads(data)
        except ValueError:
            raise CLIError(f"remote {self.remote.name}: {method} {path}: HTTP {status}, "
                           "not a JSON answer") from None
        if not isinstance(document, dict):
            raise CLIError(f"remote {self.remote.name}: {method} {path}: unexpected answer")
        if document.get("type") == "error" or status >= 400:
            raise CLIError(str(document.get("error") or f"HTTP {status}"))
        return document

    def get(self, path: str) -> Any:
        return self.request("GET", path).get("metadata")

    def run(self, method: str, path: str, body: Any = None, **kwargs: Any) -> dict[str, Any]:
        """A request answered by an operation, waited for; its final metadata."""
        document = self.request(method, path, body, **kwargs)
        if document.get("type") != "async":
            return document.get("metadata") or {}
        return self.wait(document["operation"])

    def wait(self, operation: str) -> dict[str, Any]:
        """Wait for an operation (its URL), however long it runs; CLIError with its error
        if it failed."""
        conn = self.connection()
        if conn.sock is not None:
            conn.sock.settimeout(None)
        try:
            op = self.request("GET", f"{operation}/wait?timeout=-1").get("metadata") or {}
        finally:
            if self._conn is not None and self._conn.sock is not None:
                self._conn.sock.settimeout(TIMEOUT)
        if op.get("status") != "Success":
            raise CLIError(op.get("err") or f"operation {op.get('status', 'failed')}")
        return op


# -- remote add -------------------------------------------------------------------------------


def decode_token(text: str) -> dict[str, Any] | None:
    """A join token (base64 of JSON with ``addresses``, ``fingerprint``, ``secret``), or None
    when ``text`` is not one."""
    if "://" in text or ":" in text or "." in text:
        return None
    try:
        data = json.loads(base64.b64decode(text + "=" * (-len(text) % 4)))
    except ValueError:
        return None
    if not isinstance(data, dict) or not all(k in data for k in ("addresses", "fingerprint",
                                                                 "secret")):
        return None
    return {**data, "text": text}


def _save_server_cert(name: str, der: bytes) -> None:
    directory = config_dir() / "servercerts"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(directory / f"{name}.crt", ssl.DER_cert_to_PEM_cert(der))


def _peer_certificate(remote: Remote) -> bytes:
    probe = Server(remote, use_client_cert=False)
    probe.pinned_der = None
    probe.remote = Remote(remote.name, remote.addr, remote.protocol, False, remote.auth_type)
    probe.connection()
    probe.close()
    assert probe.peer_der is not None
    return probe.peer_der


def _ask(question: str) -> str:
    if not sys.stdin.isatty():
        return ""
    sys.stderr.write(question)
    sys.stderr.flush()
    return sys.stdin.readline().strip()


def _trust(server: Server, secret: str) -> None:
    """Ask an untrusted server to trust this client's certificate with a password or a
    join token's secret, then check it did."""
    server.request("POST", "/1.0/certificates", {"type": "client", "password": secret})
    server.close()
    if server.get("/1.0").get("auth") != "trusted":
        raise CLIError(f"Server {server.remote.addr} did not trust this client")


def accepted_certificate(remote: Remote, accept_certificate: bool, why: str) -> bytes:
    """The server's certificate (DER), once the user accepted it: given
    ``--accept-certificate``, or asked on a terminal (its fingerprint shown, as ``lxc``)."""
    der = _peer_certificate(remote)
    fp = fingerprint(der)
    if not accept_certificate:
        answer = _ask(f"Certificate fingerprint: {fp}\nok (y/n/[fingerprint])? ")
        if answer.lower() not in ("y", "yes", fp):
            raise CLIError(f"The server's certificate (fingerprint {fp}) {why}: check it and "
                           "give --accept-certificate")
    return der


def add_lxd_remote(remote: Remote, accept_certificate: bool, password: str | None) -> None:
    """Pin the server's certificate (asking unless accepted), then get trusted (with the
    password, asked for when missing and a terminal is there)."""
    der = accepted_certificate(remote, accept_certificate, "was not accepted")
    server = Server(remote, pinned_der=der)
    info = server.get("/1.0")
    if info.get("auth") != "trusted" and not remote.public:
        if password is None:
            import getpass  # noqa: PLC0415

            if not sys.stdin.isatty():
                raise CLIError(f"Server {remote.addr} does not trust this client yet: give "
                               "--password (its core.trust_password) or use a join token")
            password = getpass.getpass(f"Admin password (or token) for {remote.name}: ")
        _trust(server, password)
    server.close()
    _save_server_cert(remote.name, der)


def join_with_token(name: str, addresses: list[str], token: dict[str, Any]) -> Remote:
    """``lxfs remote add NAME TOKEN``: the first address whose certificate has the token's
    fingerprint, trusted with the token's secret."""
    problems = []
    for addr in addresses:
        remote = Remote(name, addr)
        try:
            der = _peer_certificate(remote)
        except CLIError as exc:
            problems.append(exc.message)
            continue
        if fingerprint(der) != token["fingerprint"]:
            problems.append(f"{addr}: certificate fingerprint {fingerprint(der)} is not the "
                            "token's")
            continue
        server = Server(remote, pinned_der=der)
        if server.get("/1.0").get("auth") != "trusted":
            _trust(server, token["text"])  # the whole token, as `lxc remote add` sends it
        server.close()
        _save_server_cert(name, der)
        return remote
    raise CLIError("no address of the token works:\n  " + "\n  ".join(problems))


def check_simplestreams(remote: Remote, accept_certificate: bool = False) -> None:
    """Check that ``remote`` serves a simplestreams index. Over HTTPS, a certificate the
    system's CAs do not vouch for is pinned (as for LXD remotes) once accepted."""
    url = remote.addr + "/streams/v1/index.json"
    try:
        document = fetch_json(Server(remote, use_client_cert=False), "/streams/v1/index.json")
    except CLIError as exc:
        if "CERTIFICATE_VERIFY_FAILED" not in exc.message:
            raise CLIError(f"cannot read the image server's index {url}: {exc.message}") \
                from None
        der = accepted_certificate(remote, accept_certificate,
                                   "is not signed by a known authority")
        document = fetch_json(Server(remote, pinned_der=der, use_client_cert=False),
                              "/streams/v1/index.json")
        _save_server_cert(remote.name, der)
    if not isinstance(document, dict) or "index" not in document:
        raise CLIError(f"{url} is not a simplestreams index")


def fetch_json(server: Server, path: str) -> Any:
    """A JSON document of an image server (simplestreams: not LXD's envelope)."""
    status, data = server.raw("GET", path)
    if status != 200:
        raise CLIError(f"{server.remote.addr}{path}: HTTP {status}")
    try:
        return json.loads(data)
    except ValueError:
        raise CLIError(f"{server.remote.addr}{path}: not JSON") from None


# -- websockets (exec) ------------------------------------------------------------------------


class WebSocket:
    """A blocking websocket client on its own connection, framed by wsproto."""

    def __init__(self, server: Server, path: str) -> None:
        from wsproto import ConnectionType, WSConnection  # noqa: PLC0415
        from wsproto.events import AcceptConnection, RejectConnection, Request  # noqa: PLC0415

        if server.scheme == "unix":  # this host's socket (a migration's relay)
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.settimeout(TIMEOUT)
            raw.connect(server.host)
        else:
            raw = socket.create_connection((server.host, server.port), timeout=TIMEOUT)
        if server.scheme == "https":
            sock = server.ssl_context().wrap_socket(raw)
            server._check_peer(sock)
        else:
            sock = raw
        sock.settimeout(None)
        self.sock = sock
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._send(self.ws.send(Request(host=server.host, target=server.prefix + path)))
        self.pending: list[Any] = []
        while True:
            event = self._next_event()
            if isinstance(event, AcceptConnection):
                break
            if isinstance(event, RejectConnection) or event is None:
                raise CLIError(f"the server refused the websocket {path}")

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _next_event(self) -> Any:
        while True:
            for event in self.ws.events():
                return event
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            if not data:
                for event in self.ws.events():
                    return event
                return None

    def send_bytes(self, data: bytes) -> None:
        from wsproto.events import Message  # noqa: PLC0415

        self._send(self.ws.send(Message(data=data)))

    def send_text(self, text: str) -> None:
        from wsproto.events import TextMessage  # noqa: PLC0415

        self._send(self.ws.send(TextMessage(data=text)))

    def poll(self) -> tuple[list[bytes], bool]:
        """After the socket polled readable: the messages that arrived, and whether the peer
        closed. One thread may then read and write (TLS allows no two at once)."""
        try:
            data = self.sock.recv(65536)
            while isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
                data += self.sock.recv(self.sock.pending())
        except OSError:
            return [], True
        self.ws.receive_data(data or None)
        messages, closed = self._events()
        return messages, closed or not data

    def _events(self) -> tuple[list[bytes], bool]:
        """The messages wsproto has parsed (pings and the close answered)."""
        from wsproto.events import CloseConnection, Message, Ping  # noqa: PLC0415

        messages, closed = [], False
        for event in self.ws.events():
            if isinstance(event, CloseConnection):
                try:
                    self._send(self.ws.send(event.response()))
                except Exception:  # noqa: BLE001 - closing anyway
                    pass
                closed = True
            elif isinstance(event, Ping):
                self._send(self.ws.send(event.response()))
            elif isinstance(event, Message):
                payload = event.data
                messages.append(payload.encode() if isinstance(payload, str) else bytes(payload))
        return messages, closed

    def receive(self) -> bytes | None:
        """The next message's bytes (blocking), or None once the peer closed."""
        closed = False
        while not self.pending:
            messages, closed = self._events() if not closed else ([], True)
            self.pending += messages
            if self.pending or closed:
                break
            messages, closed = self.poll()
            self.pending += messages
        return self.pending.pop(0) if self.pending else None

    def close(self) -> None:
        from wsproto.events import CloseConnection  # noqa: PLC0415

        try:
            self._send(self.ws.send(CloseConnection(code=1000)))
        except Exception:  # noqa: BLE001 - already closed
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def upload_file(server: Server, path: str, file: Path, headers: dict[str, str]) -> Any:
    """POST a file's bytes (streamed) to ``path``; the operation's final metadata."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        return server.run("POST", path, f, headers={**headers, "Content-Length": str(size),
                                                     "Content-Type": "application/octet-stream"})

