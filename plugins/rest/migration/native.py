"""lxfs's own stream link between two lxfs hosts: a native transport's streams (``btrfs
send``/``receive``, zfs) carried by ``socat`` over a TLS connection of their own instead of
being relayed, a megabyte at a time, through the daemons' event loops and the ``fs``
websocket.

Negotiated in the migration headers (``lxfsTLSStreams`` in ``migrate.proto``, a field LXD
never sends and ignores): each end offers an ephemeral certificate made for this migration
and says whether it dialed the migration's websockets. The link is used only when both ends
are lxfs, a native transport was chosen, and exactly one end dialed (pull or push mode; in
relay mode the client carries the websockets and neither end may reach the other). The end
that was dialed listens, on the address its peer reached, for its peer's address only; the
end that dialed connects to the host it dialed. Each end trusts the other's certificate
alone (both exchanged over the control websocket, itself authenticated as LXD's is), so no
one else can connect or read.

Per stream, over the ``fs`` websocket: the listening end sends the port it listens on; then
each end runs its tool and ``socat`` joined by a pipe, and sends its report (``{"error":
""}`` or why it failed) once they have ended. A failure on either end (a report with an
error, the websocket closed) stops the other's processes. ``socat`` gets SIGKILL when the
daemon dies (``setpriv --pdeathsig``, spawned from the event loop's thread: the signal
follows the spawning thread), and its tool then sees its pipe close.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from . import migrate_pb2 as pb

if TYPE_CHECKING:
    from ..http import WebSocket
    from . import Channel

#: the name both ephemeral certificates carry, checked by each end's socat
COMMON_NAME = "lxfs-migration"
#: TLS 1.2 only: in TLS 1.3 the server sends session tickets after the handshake, which a
#: sending client never reads, and a socket closed with unread data is reset (its last
#: bytes lost); AES-GCM runs in the CPU's AES instructions
TLS_OPTIONS = "verify=1,min-version=TLS1.2,max-version=TLS1.2," \
              "ciphers=ECDHE-ECDSA-AES128-GCM-SHA256"
#: socat's read size, and the size of the pipe between it and the tool
BUFFER = 1 << 20
CONNECT_TIMEOUT = 10
#: how long an end that failed waits for its peer's report
REPORT_TIMEOUT = 5.0
LISTENING = re.compile(rb"listening on AF=\d+ \[?([0-9a-fA-F.:]+)\]?:(\d+)\s*$", re.M)


def available() -> bool:
    """Whether this host can run the link (socat and setpriv on the PATH)."""
    return shutil.which("socat") is not None and shutil.which("setpriv") is not None


def ephemeral_credentials() -> tuple[bytes, bytes]:
    """A self-signed EC P-256 certificate for one migration (PEM) and its key (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def socket_addresses(ws: WebSocket) -> tuple[str, str] | None:
    """The local and the peer's IP address of a websocket's TCP connection (None: not
    over TCP)."""
    stream: Any = ws.stream
    while not hasattr(stream, "socket") and hasattr(stream, "transport"):
        stream = stream.transport
    sock = getattr(stream, "socket", None)
    if sock is None or sock.family not in (trio.socket.AF_INET, trio.socket.AF_INET6):
        return None
    def plain(address: str) -> str:  # an IPv4 peer of a dual-stack listener: as IPv4
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        mapped = getattr(ip, "ipv4_mapped", None)
        return str(mapped or ip)

    return plain(sock.getsockname()[0]), plain(sock.getpeername()[0])


class StreamLink:
    """One migration's link: this end's certificate and role, the peer's certificate once
    it answered. ``listen``: this end was dialed (it listens on ``local`` for ``peer``);
    otherwise it connects to ``dial``, the host it dialed."""

    def __init__(self, *, dial: str = "", local: str = "", peer: str = "") -> None:
        self.dial, self.local, self.peer = dial, local, peer
        self.listens = not dial
        self.cert, key = ephemeral_credentials()
        self.dir = Path(tempfile.mkdtemp(prefix="lxfs-migration-tls-"))
        (self.dir / "mine.pem").write_bytes(self.cert + key)
        self.ready = False

    @classmethod
    def for_websocket(cls, ws: WebSocket, dialed_host: str) -> StreamLink | None:
        """The link of an end whose control websocket is ``ws``: it dialed ``dialed_host``
        (empty: it was dialed). None when the link cannot run here."""
        if not available():
            return None
        if dialed_host:
            return cls(dial=dialed_host)
        addresses = socket_addresses(ws)
        if addresses is None:
            return None
        return cls(local=addresses[0], peer=addresses[1])

    def hello(self) -> Any:
        return pb.lxfsTLSStreams(certificate=self.cert.decode(), dialed=not self.listens)

    def accept(self, theirs: Any) -> bool:
        """Take the peer's hello: True when the link can run (exactly one end dialed)."""
        if theirs.dialed == (not self.listens) or not theirs.certificate:
            return False
        (self.dir / "peer.pem").write_text(theirs.certificate)
        self.ready = True
        return True

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _tls_address(self, port: int) -> str:
        files = f"cert={self.dir / 'mine.pem'},cafile={self.dir / 'peer.pem'},cn={COMMON_NAME}"
        if self.listens:
            ip = ipaddress.ip_address(self.local)
            family = "pf=ip6" if ip.version == 6 else "pf=ip4"
            bracket = (lambda a: f"[{a}]") if ip.version == 6 else (lambda a: a)
            return (f"OPENSSL-LISTEN:0,{family},bind={bracket(self.local)},"
                    f"range={bracket(self.peer)}/{ip.max_prefixlen},{files},{TLS_OPTIONS}")
        host = f"[{self.dial}]" if ":" in self.dial else self.dial
        return f"OPENSSL:{host}:{port},connect-timeout={CONNECT_TIMEOUT},{files},{TLS_OPTIONS}"

    async def stream(self, argv: list[str], fs: Channel, *, sending: bool) -> None:
        """One stream: ``argv`` (the tool) writing to the peer (``sending``) or reading
        from it, through socat; MigrationError saying which end failed and why."""
        from . import MigrationError, _collect, _reap, _widen_pipe

        errors: dict[str, bytearray] = {"tool": bytearray(), "socat": bytearray()}
        socat_proc: _Owned | None = None
        tool: trio.Process | None = None
        peer: dict[str, Any] = {}
        own = ""
        read_end, write_end = os.pipe()
        try:
            _widen_pipe(write_end)
            tool = await trio.lowlevel.open_process(
                argv, stdin=read_end if not sending else subprocess.DEVNULL,
                stdout=write_end if sending else subprocess.DEVNULL, stderr=subprocess.PIPE)
            port = 0
            if not self.listens:
                opening = _json_of(await fs.read_frame())
                if opening.get("error"):
                    raise MigrationError(f"the migration peer: {opening['error']}")
                port = int(opening.get("port") or 0)
                if not port:
                    raise MigrationError("the migration peer sent no port for the stream")
            tls = self._tls_address(port)
            socat_proc = _Owned(["socat", "-d", "-d", "-u", "-b", str(BUFFER),
                                 *(["STDIN", tls] if sending else [tls, "STDOUT"])],
                                stdin=read_end if sending else subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL if sending else write_end)
            # the tool and socat hold their ends: ours are closed, so that either sees the
            # other's end
            os.close(read_end)
            os.close(write_end)
            read_end = write_end = -1
            if self.listens:
                try:
                    port = await socat_proc.listening_port(errors["socat"])
                except MigrationError as exc:  # the dialing end waits for a word
                    with contextlib.suppress(MigrationError):
                        await fs.send(json.dumps({"error": str(exc)}).encode())
                        await fs.end()
                    raise
                await fs.send(json.dumps({"port": port}).encode())
                await fs.end()
            async with trio.open_nursery() as nursery:
                assert tool.stderr is not None
                nursery.start_soon(_collect, tool.stderr, errors["tool"])
                nursery.start_soon(_collect, socat_proc.stderr, errors["socat"])

                async def watch_peer() -> None:
                    try:
                        peer.update(_json_of(await fs.read_frame()))
                    except MigrationError as exc:
                        peer["error"] = str(exc)
                    own_tool_failed = tool.returncode not in (None, 0)
                    if peer.get("error") and not own_tool_failed and (
                            tool.returncode is None or socat_proc.returncode is None):
                        peer["stopped_us"] = True  # the peer's failure is the cause
                        socat_proc.kill()
                        tool.kill()

                nursery.start_soon(watch_peer)
                await tool.wait()
                await socat_proc.wait()
                own = self._failure(argv, tool.returncode, socat_proc.returncode, errors)
                with contextlib.suppress(MigrationError):
                    await fs.send(json.dumps({"error": own,
                                              "stopped": bool(peer.get("stopped_us"))}
                                             ).encode())
                    await fs.end()
                if own:  # the peer stops on our report: its own follows, or it is gone
                    nursery.cancel_scope.deadline = trio.current_time() + REPORT_TIMEOUT
        finally:
            for fd in (read_end, write_end):
                if fd >= 0:
                    os.close(fd)
            with trio.CancelScope(shield=True):
                if socat_proc is not None:
                    await socat_proc.reap()
                if tool is not None:
                    await _reap(tool)
        if peer.get("error") and (peer.get("stopped_us") or not own):
            raise MigrationError(f"the migration peer: {peer['error']}")
        if own and peer.get("error"):  # both failed, whichever first: say both
            raise MigrationError(f"{own}; the migration peer: {peer['error']}")
        if own:  # the cause (the peer's report then says it was stopped by it)
            raise MigrationError(own)

    def _failure(self, argv: list[str], tool: int | None, socat: int | None,
                 errors: dict[str, bytearray]) -> str:
        """Why this end's stream failed ("" when it did not): the tool's failure, the TLS
        link's, or both (either makes the other fail)."""
        reasons = []
        if tool != 0:
            reasons.append(f"{' '.join(argv[:2])} failed: exit {tool} "
                           f"({errors['tool'].decode(errors='replace').strip()})")
        if socat != 0:
            lines = [line.split(" E ", 1)[-1] for line in
                     errors["socat"].decode(errors="replace").splitlines()
                     if " E " in line or " F " in line]
            reasons.append(f"the stream's TLS link failed: socat exit {socat} "
                           f"({'; '.join(lines).strip()})")
        return "; ".join(reasons)


class _Owned:
    """socat, spawned from the event loop's thread under ``setpriv --pdeathsig KILL`` (a
    parent-death signal follows the thread that spawned the process: trio's spawning
    worker threads come and go), its stderr a trio stream, its exit awaited by pidfd."""

    def __init__(self, argv: list[str], *, stdin: int, stdout: int) -> None:
        """``stdin``, ``stdout``: file descriptors (or ``subprocess.DEVNULL``)."""
        err_read, err_write = os.pipe()
        try:
            self.popen = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", *argv],
                                          stdin=stdin, stdout=stdout, stderr=err_write)
        except BaseException:
            os.close(err_read)
            raise
        finally:
            os.close(err_write)
        self.stderr = trio.lowlevel.FdStream(err_read)
        self.pidfd = os.pidfd_open(self.popen.pid)

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    async def listening_port(self, into: bytearray) -> int:
        """The port socat listens on (from its notices), its stderr kept in ``into``."""
        from . import MigrationError

        match = LISTENING.search(into)
        with trio.move_on_after(CONNECT_TIMEOUT):
            while match is None:
                chunk = await self.stderr.receive_some(4096)
                if not chunk:
                    break
                into += chunk
                match = LISTENING.search(into)
        if match is None:
            self.kill()
            raise MigrationError("the stream's TLS link could not listen: "
                                 f"{into.decode(errors='replace').strip()}")
        return int(match.group(2))

    def kill(self) -> None:
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()

    async def wait(self) -> int:
        await trio.lowlevel.wait_readable(self.pidfd)
        return self.popen.wait()

    async def reap(self) -> None:
        """Killed if still running, then waited for (call shielded)."""
        self.kill()
        await self.wait()
        os.close(self.pidfd)
        await self.stderr.aclose()


def _json_of(data: bytes) -> dict[str, Any]:
    from . import MigrationError

    try:
        value = json.loads(data or b"{}")
    except ValueError:
        raise MigrationError("the migration peer's stream message is not JSON") from None
    return value if isinstance(value, dict) else {}
