"""LXD 5.0's migration protocol, both ends: the source (``POST /1.0/instances/NAME`` with
``migration: true``: a websocket operation with ``control`` and ``fs`` secrets) and the sink
(``POST /1.0/instances`` with ``source.type: migration``, pulling from a source's operation,
or pushed to).

The ``control`` websocket carries LXD's protobuf messages (``migrate.proto``, compiled into
``migrate_pb2.py``): the source's offer (``MigrationHeader``), the sink's answer, and at the
end the sink's ``MigrationControl``. The ``fs`` websocket carries the generic transfer as
LXD's: the index header (JSON of the instance's backup config, one frame each way), then one
rsync session per snapshot (oldest first) and one for the instance, each direction of each
session ended by an empty text message (LXD's barrier). The sink receives every snapshot
into the new volume and snapshots it there, then the instance.

When both pools' drivers declare a native transport of LXD's (``BTRFS``, ``ZFS``: see
``transports.py``), the ``fs`` websocket carries the transport's migration header and the
driver's streams instead: one per snapshot (incremental from the one before), then the
volume's. Between two lxfs hosts those streams leave the websocket for a TLS connection of
their own (``native.py``), negotiated by a field of lxfs's in the migration headers.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import json
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import trio
from wsproto import ConnectionType
from wsproto.connection import Connection as WSFrames

from lxfs.errors import LxfsError
from lxfs.model import Snapshot

from ..http import HttpError, WebSocket
from . import migrate_pb2 as pb
from .native import StreamLink
from .transports import Transport, native_transport, offered_transport

if TYPE_CHECKING:
    from lxfs.model import Instance
    from lxfs.storage import StorageDriver

    from ..app import Context, Operation

log = logging.getLogger("lxfs.rest.migration")

#: LXD's wait for the migration websockets
CONNECT_TIMEOUT = 10.0
#: the rsync features lxfs offers and accepts (LXD 5.0's set)
RSYNC_FEATURES = ("xattrs", "delete", "compress", "bidirectional")
#: a peer that never says "bidirectional" is LXD 3.7 or older: these, no more
LEGACY_FEATURES = ("xattrs", "delete", "compress")
INDEX_HEADER_VERSION = 1
#: bytes read from a transfer's process per message (and the size its pipes are given): each
#: message costs a trip through the event loop, TLS and the websocket's framing, whatever
#: its size
CHUNK = 1 << 20
#: LXD's architecture numbers (shared/osarch)
ARCHITECTURES = {"i686": 1, "x86_64": 2, "armv7l": 3, "aarch64": 4, "ppc": 5, "ppc64": 6,
                 "ppc64le": 7, "s390x": 8, "mips": 9, "mips64": 10, "riscv32": 11,
                 "riscv64": 12}


class MigrationError(LxfsError):
    """A migration failed (the peer's or this side's reason)."""


# --- websockets ------------------------------------------------------------------------------

class ClientWebSocket(WebSocket):
    """A client-side websocket (frames masked), for a sink dialing its source's operation or
    a source pushing to its target."""

    def __init__(self, stream: trio.abc.Stream, buffered: bytes = b"") -> None:
        super().__init__(stream)
        self.frames = WSFrames(ConnectionType.CLIENT)
        if buffered:
            self.frames.receive_data(buffered)


async def connect(operation_url: str, secret: str, certificate: str) -> ClientWebSocket:
    """Dial the websocket ``secret`` of an operation (``https://HOST:PORT/1.0/operations/ID``,
    as LXD gives it), the server's certificate pinned when given (PEM)."""
    parts = urlsplit(operation_url)
    if parts.scheme not in ("https", "wss") or not parts.hostname:
        raise MigrationError(f"invalid migration operation URL: {operation_url!r}")
    from OpenSSL import SSL

    from ..tls import TLSStream, client_context  # pyOpenSSL: loaded when used

    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            tcp = await trio.open_tcp_stream(parts.hostname, parts.port or 8443)
            # the certificate is pinned below, as LXD's GetTLSConfig does
            stream = TLSStream(tcp, client_context(), server_hostname=parts.hostname)
            await stream.handshake()
    except (OSError, trio.BrokenResourceError, trio.TooSlowError, SSL.Error) as exc:
        raise MigrationError(f"cannot reach the migration peer at {parts.netloc}: "
                             f"{exc}") from None
    if certificate:
        try:
            der = ssl.PEM_cert_to_DER_cert(certificate.strip() + "\n")
        except ValueError:
            await stream.aclose()
            raise MigrationError("the migration's certificate is not a PEM certificate") \
                from None
        if stream.peer_der != der:
            await stream.aclose()
            raise MigrationError(f"{parts.netloc} did not present the certificate the "
                                 "migration names")
    key = base64.b64encode(os.urandom(16)).decode()
    path = f"{parts.path.rstrip('/')}/websocket?{urlencode({'secret': secret})}"
    request = (f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n")
    try:
        await stream.send_all(request.encode())
        data = b""
        with trio.fail_after(CONNECT_TIMEOUT):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(CHUNK)
                if not chunk:
                    break
                data += chunk
    except (trio.BrokenResourceError, trio.TooSlowError) as exc:
        raise MigrationError(f"migration websocket refused: {exc}") from None
    head, _, rest = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        body = rest.decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):
            body = json.loads(body)["error"]
        await stream.aclose()
        raise MigrationError(f"migration websocket refused: {status.decode(errors='replace')}"
                             f" {body}".strip())
    return ClientWebSocket(stream, rest)


class Channel:
    """LXD's ``WebsocketIO`` on one websocket: binary messages are data, an empty text
    message ends a stream (a frame); the socket stays open for the next."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        ws.read_size = CHUNK

    async def send(self, data: bytes) -> None:
        if self.ws.closed:
            raise MigrationError("the migration peer closed the connection")
        try:
            await self.ws.send_bytes(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise MigrationError("the migration peer closed the connection") from None

    async def end(self) -> None:
        """The barrier: the end of this direction's stream."""
        try:
            await self.ws.send_text("")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise MigrationError("the migration peer closed the connection") from None

    async def receive(self) -> bytes | None:
        """The next data message; None at the barrier."""
        message = await self.ws.receive()
        if message is None:
            raise MigrationError("the migration peer closed the connection")
        if isinstance(message, str):
            return None
        return message

    async def read_frame(self, limit: int = 64 << 20) -> bytes:
        data = bytearray()
        while (chunk := await self.receive()) is not None:
            data += chunk
            if len(data) > limit:
                raise MigrationError("migration index header too large")
        return bytes(data)


async def send_message(ws: WebSocket, message: Any) -> None:
    try:
        await ws.send_bytes(message.SerializeToString())
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise MigrationError("the migration peer closed the control connection") from None


async def receive_message(ws: WebSocket, kind: type) -> Any:
    data = await ws.receive()
    if data is None:
        raise MigrationError("the migration peer closed the control connection")
    if not isinstance(data, bytes):
        raise MigrationError("migration control: only binary messages allowed")
    message = kind()
    try:
        message.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise MigrationError(f"migration control: invalid message: {exc}") from None
    return message


async def send_control(ws: WebSocket | None, error: str = "") -> None:
    """The final word: success, or the failure's reason."""
    if ws is None or ws.closed:
        return
    with contextlib.suppress(MigrationError), trio.move_on_after(5):
        await send_message(ws, pb.MigrationControl(success=not error, message=error))


# --- rsync over a websocket --------------------------------------------------------------------

def rsync_feature_args(features: list[str]) -> list[str]:
    args = []
    if "xattrs" in features:
        args += ["--xattrs", "--filter=-x security.selinux"]
    if "delete" in features:
        args.append("--delete")
    if "compress" in features:
        args += ["--compress", "--compress-level=2"]
    return args


async def _pump_in(channel: Channel, write: Callable[[bytes], Awaitable[None]],
                   close: Callable[[], Awaitable[None]]) -> None:
    """The peer's stream (until its barrier) into rsync."""
    broken = False
    while (data := await channel.receive()) is not None:
        if broken:
            continue  # rsync is gone: read the stream to its end all the same
        try:
            await write(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            broken = True
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await close()


async def _pump_out(channel: Channel, read: Callable[[], Awaitable[bytes]]) -> None:
    """rsync's output to the peer, then the barrier."""
    while True:
        try:
            data = await read()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            data = b""
        if not data:
            break
        await channel.send(data)
    await channel.end()


async def _collect(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        while chunk := await stream.receive_some(CHUNK):
            if len(into) < 65536:
                into += chunk


async def rsync_send(path: Path, channel: Channel, features: list[str]) -> None:
    """Send ``path``'s tree as LXD's ``rsync.Send``: rsync as a client whose remote shell is a
    unix socket (socat) relayed to the websocket."""
    tmp = Path(tempfile.mkdtemp(prefix="lxfs-rsync-"))
    sock_path = tmp / "s"
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    errors = bytearray()
    try:
        await listener.bind(str(sock_path))
        listener.listen(1)
        args = ["rsync", "-ar", "--devices", "--numeric-ids", "--partial", "--sparse",
                *rsync_feature_args(features), f"{str(path).rstrip('/')}/", "localhost:/tmp/foo",
                "-e", f"sh -c \"exec socat - UNIX-CONNECT:{sock_path}\""]
        proc = await trio.lowlevel.open_process(args, stdin=subprocess.DEVNULL,
                                                stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE)
        try:
            async with trio.open_nursery() as nursery:
                assert proc.stderr is not None
                nursery.start_soon(_collect, proc.stderr, errors)
                with trio.move_on_after(CONNECT_TIMEOUT) as waited:
                    sock, _ = await listener.accept()
                if waited.cancelled_caught:
                    raise MigrationError(f"rsync failed to spawn after 10s ({errors.decode()})")
                stream = trio.SocketStream(sock)
                async with stream:
                    nursery.start_soon(_pump_out, channel, lambda: stream.receive_some(CHUNK))
                    await _pump_in(channel, stream.send_all, stream.send_eof)
                    await proc.wait()
        finally:
            await _reap(proc)
        if proc.returncode not in (0, 24):  # 24: files vanished while sent (LXD allows)
            raise MigrationError(f"rsync send failed: {path}: exit {proc.returncode} "
                                 f"({errors.decode(errors='replace').strip()})")
    finally:
        listener.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def rsync_receive(path: Path, channel: Channel, features: list[str]) -> None:
    """Receive a tree into ``path`` as LXD's ``rsync.Recv``: ``rsync --server`` on pipes
    relayed to the websocket."""
    args = ["rsync", "--server", "-vlogDtpre.iLsfx", "--numeric-ids", "--devices",
            "--partial", "--sparse", *rsync_feature_args(features), ".", f"{path}/"]
    await _relay_process(args, channel, out=True, into=True, what="rsync receive")


async def stream_out(argv: list[str], channel: Channel) -> None:
    """A driver's stream (``btrfs send``) to the peer, then the barrier."""
    await _relay_process(argv, channel, out=True, into=False, what=f"{argv[0]} {argv[1]}")


async def stream_in(argv: list[str], channel: Channel) -> None:
    """The peer's stream (until its barrier) into a driver's command (``btrfs receive``)."""
    await _relay_process(argv, channel, out=False, into=True, what=f"{argv[0]} {argv[1]}")


async def _relay_process(argv: list[str], channel: Channel, *, out: bool, into: bool,
                         what: str) -> None:
    """Run ``argv`` with its output sent to the peer (``out``, then the barrier) and/or the
    peer's stream as its input (``into``, until the peer's barrier); MigrationError with
    its stderr when it fails."""
    pipe = subprocess.PIPE
    proc = await trio.lowlevel.open_process(
        argv, stdin=pipe if into else subprocess.DEVNULL,
        stdout=pipe if out else subprocess.DEVNULL, stderr=pipe)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            _widen_pipe(stream.fileno())
    errors = bytearray()
    try:
        async with trio.open_nursery() as nursery:
            assert proc.stderr is not None
            nursery.start_soon(_collect, proc.stderr, errors)
            if out:
                stdout = proc.stdout
                assert stdout is not None
                pump = functools.partial(_pump_out, channel,
                                         lambda: stdout.receive_some(CHUNK))
                if into:
                    nursery.start_soon(pump)
                else:
                    await pump()
            if into:
                assert proc.stdin is not None
                await _pump_in(channel, proc.stdin.send_all, proc.stdin.aclose)
            await proc.wait()
    finally:
        await _reap(proc)
    if proc.returncode != 0:
        raise MigrationError(f"{what} failed: exit {proc.returncode} "
                             f"({errors.decode(errors='replace').strip()})")


def _widen_pipe(fd: int) -> None:
    """A pipe of CHUNK bytes (Linux's default is 64 KiB: a read per 64 KiB); where the
    system's limit (``fs.pipe-max-size``) refuses, the pipe stays as it was."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, CHUNK)


async def _reap(proc: trio.Process) -> None:
    """A process that did not end by itself is killed (shielded: on cancellation too)."""
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- headers ---------------------------------------------------------------------------------

def rsync_features(header: Any) -> list[str]:
    """The rsync features a header names (LXD's ``GetRsyncFeaturesSlice`` with its legacy
    rule)."""
    features = []
    if header.HasField("rsyncFeatures"):
        f = header.rsyncFeatures
        features = [name for name in RSYNC_FEATURES if getattr(f, name)]
    if "bidirectional" not in features:
        return list(LEGACY_FEATURES)
    return features


def _rsync_header(features: tuple[str, ...] | list[str]) -> Any:
    return pb.rsyncFeatures(**{name: name in features for name in RSYNC_FEATURES})


def make_offer(declared: tuple[str, ...], snapshots: list[Any], *, running: bool,
               native: bool = True) -> tuple[Any, Transport | None]:
    """The source's ``MigrationHeader``: the first native transport the pool's driver
    declares (unless ``native`` is false: a snapshot sent as an instance), rsync otherwise;
    a running instance goes by rsync with LXD's final sync (no optimized multi-sync)."""
    transport = native_transport(declared) if native and not running else None
    offer = pb.MigrationHeader(
        fs=transport.fs if transport else pb.RSYNC, rsyncFeatures=_rsync_header(RSYNC_FEATURES),
        indexHeaderVersion=INDEX_HEADER_VERSION, predump=False,
        snapshotNames=[s.name for s in snapshots], snapshots=snapshots)
    if transport is not None:
        transport.set_features(offer, transport.features)
    if running:
        offer.criu = pb.NONE  # a stateless transfer of a running instance: final sync
    return offer, transport


def make_answer(offer: Any, declared: tuple[str, ...], *, refresh: bool,
                wanted: list[Any]) -> tuple[Any, Transport | None]:
    """The sink's answer to an offer: its native transport when the pool's driver declares
    it too (and, on a refresh, the transport's refresh feature is offered), the rsync
    features both speak, the snapshots ``wanted``."""
    final_sync = offer.HasField("criu") and offer.criu == pb.NONE
    transport = offered_transport(offer, declared)
    if transport is not None and (final_sync or refresh and transport.refresh_feature
                                  not in transport.features_of(offer)):
        transport = None
    answer = pb.MigrationHeader(
        fs=transport.fs if transport else pb.RSYNC,
        rsyncFeatures=_rsync_header([f for f in rsync_features(offer) if f in RSYNC_FEATURES]),
        indexHeaderVersion=min(offer.indexHeaderVersion, INDEX_HEADER_VERSION),
        snapshotNames=[s.name for s in wanted], snapshots=wanted, refresh=refresh,
        predump=False)
    if transport is not None:
        transport.set_features(answer, transport.features_of(offer))
    if final_sync:
        answer.criu = pb.NONE
    return answer, transport


def snapshot_message(inst: Instance, snap: Snapshot) -> Any:
    """LXD's ``snapshotToProtobuf``."""
    return pb.Snapshot(
        name=snap.name,
        localConfig=[pb.Config(key=k, value=v) for k, v in snap.config.items()],
        profiles=list(snap.profiles), ephemeral=inst.ephemeral,
        localDevices=[pb.Device(name=d, config=[pb.Config(key=k, value=v)
                                                for k, v in keys.items()])
                      for d, keys in snap.devices.items()],
        architecture=ARCHITECTURES.get(inst.architecture, 0), stateful=False,
        creation_date=int(snap.created_at), last_used_date=0,
        expiry_date=-62135596800)  # Go's zero time: never


def snapshot_record(message: Any) -> Snapshot:
    """A snapshot's record from the offer."""
    created = float(message.creation_date) if message.HasField("creation_date") else 0.0
    return Snapshot(message.name, created if created > 0 else time.time(),
                    {c.key: c.value for c in message.localConfig},
                    {d.name: {c.key: c.value for c in d.config} for d in message.localDevices},
                    list(message.profiles))


# --- the source --------------------------------------------------------------------------------

class Source:
    """``POST /1.0/instances/NAME`` with ``migration``: the offer, the transfer, the sink's
    verdict. Pull mode waits for the sink's connections; push mode (``target``) dials it."""

    #: the stream link to an lxfs sink, when both ends agreed on it
    link: StreamLink | None = None

    def __init__(self, ctx: Context, op: Operation, name: str, instance_only: bool,
                 target: dict[str, Any] | None, snapshot: str = "") -> None:
        self.ctx, self.op, self.name = ctx, op, name
        self.snapshot = snapshot  # a snapshot sent as an instance of its own
        self.instance_only = instance_only
        self.target = target
        self.secrets: dict[str, str] = {}
        self.channels: dict[str, trio.MemoryReceiveChannel[WebSocket]] = {}
        if target is None:
            for which in ("control", "fs"):
                self.secrets[which], self.channels[which] = ctx.new_secret(op)
        self.conns: dict[str, WebSocket] = {}

    def metadata(self) -> dict[str, str]:
        return dict(self.secrets)

    async def _connect(self) -> None:
        if self.target is not None:
            websockets = self.target.get("secrets") or {}  # LXD's JSON name
            url = str(self.target.get("operation") or "")
            for which in ("control", "fs"):
                if which not in websockets:
                    raise MigrationError(f"missing {which} secret")
                self.conns[which] = await connect(url, str(websockets[which]),
                                                  str(self.target.get("certificate") or ""))
            return
        with trio.move_on_after(CONNECT_TIMEOUT):
            for which, channel in self.channels.items():
                self.conns[which] = await channel.receive()
        if len(self.conns) < 2:
            raise MigrationError("Timed out waiting for migration connections")

    async def run(self, op: Operation) -> None:
        control: WebSocket | None = None
        try:
            await self._connect()
            control = self.conns["control"]
            await self._transfer(control, Channel(self.conns["fs"]))
        except (LxfsError, HttpError) as exc:
            await send_control(control, getattr(exc, "message", str(exc)))
            raise
        finally:
            if self.link is not None:
                self.link.close()
            with trio.CancelScope(shield=True):
                for secret in self.secrets.values():
                    op.secrets.pop(secret, None)
                for channel in self.channels.values():
                    channel.close()
                for ws in self.conns.values():
                    with trio.move_on_after(1):
                        await ws.close()

    async def _transfer(self, control: WebSocket, fs: Channel) -> None:
        ops = self.ctx.ops
        inst = ops.instances.get(self.name)
        if inst is None or inst.storage_state != "ready":
            raise MigrationError(f"instance {self.name} has no root filesystem to send")
        pool = ops.pool_of(inst)
        if self.snapshot and self.snapshot not in inst.snapshots:
            raise MigrationError(f"snapshot {self.name}/{self.snapshot} not found")
        running = not self.snapshot and \
            await ops.state(self.name) not in ("STOPPED", "CREATING")
        snaps = [] if self.instance_only else \
            sorted(inst.snapshots.values(), key=lambda s: s.created_at)
        offer, transport = make_offer(pool.migration_transports,
                                      [snapshot_message(inst, s) for s in snaps],
                                      running=running, native=not self.snapshot)
        if transport is not None:
            dialed = "" if self.target is None else \
                urlsplit(str(self.target.get("operation") or "")).hostname or ""
            self.link = StreamLink.for_websocket(control, dialed)
            if self.link is not None:
                offer.lxfsTLSStreams.CopyFrom(self.link.hello())
        await send_message(control, offer)
        answer = await receive_message(control, pb.MigrationHeader)
        if self.link is not None and not (
                answer.HasField("lxfsTLSStreams") and transport is not None and
                answer.fs == transport.fs and self.link.accept(answer.lxfsTLSStreams)):
            self.link.close()
            self.link = None
        if transport is not None and answer.fs == transport.fs:
            await self._index_header(fs, answer, inst, snaps)
            await self._send_streams(pool, fs, transport, answer, [s.name for s in snaps])
            await self._verdict(control)
            return
        if answer.fs != pb.RSYNC:
            raise MigrationError(f"migration type {pb.MigrationFSType.Name(answer.fs)} is not "
                                 "supported by this lxfs source")
        features = rsync_features(answer)
        wanted = list(answer.snapshotNames) if answer.refresh else [s.name for s in snaps]
        await self._index_header(fs, answer, inst, [s for s in snaps if s.name in wanted])
        for snap in wanted:
            if snap not in inst.snapshots:
                raise MigrationError(f"snapshot {self.name}/{snap} not found")
            self.op.metadata = {**self.metadata(), "fs_progress": f"{snap}: sending"}
            await rsync_send(pool.snapshot_path("container", self.name, snap), fs, features)
        self.op.metadata = {**self.metadata(), "fs_progress": f"{self.name}: sending"}
        await rsync_send(pool.snapshot_path("container", self.name, self.snapshot)
                         if self.snapshot else pool.volume_path("container", self.name),
                         fs, features)
        if running:  # LXD's final sync of a running instance
            await rsync_send(pool.volume_path("container", self.name), fs, features)
        await self._verdict(control)

    async def _verdict(self, control: WebSocket) -> None:
        verdict = await receive_message(control, pb.MigrationControl)
        if not verdict.success:
            raise MigrationError(verdict.message or "the migration target failed")

    async def _index_header(self, fs: Channel, answer: Any, inst: Instance,
                            snaps: list[Snapshot]) -> None:
        """LXD's index header: the backup config one way, the receipt the other."""
        if answer.indexHeaderVersion <= 0:
            return
        info = {"config": backup_config(self.ctx, inst, snaps)}
        await fs.send(json.dumps(info).encode())
        await fs.end()
        response = _json(await fs.read_frame())
        if response.get("StatusCode", 200) != 200:
            raise MigrationError(f"Failed negotiating migration options: "
                                 f"{response.get('Error', '')}")

    async def _send_streams(self, pool: StorageDriver, fs: Channel, transport: Transport,
                            answer: Any, snapshots: list[str]) -> None:
        """A native transport: its migration header, the sink's reply on a refresh, then
        each snapshot's stream (incremental from the one before) and the volume's."""
        features = transport.features_of(answer)
        ids = [(n, (await trio.to_thread.run_sync(pool.stream_ids, "container", self.name,
                                                  n))[0]) for n in snapshots]
        if "migration_header" in features:
            await fs.send(json.dumps(transport.source_header(ids)).encode())
            await fs.end()
        send = list(snapshots)
        if answer.refresh and transport.refresh_feature in features:
            send = transport.to_send(_json(await fs.read_frame()), ids)
        # the parent of the first stream: the snapshot before it, which the target has
        first = snapshots.index(send[0]) if send else len(snapshots)
        parent = snapshots[first - 1] if answer.refresh and first > 0 else ""
        for snap in send:
            self.op.metadata = {**self.metadata(), "fs_progress": f"{snap}: sending"}
            await self._stream_out(pool.stream_send_command("container", self.name, snap,
                                                            parent), fs)
            parent = snap
        self.op.metadata = {**self.metadata(), "fs_progress": f"{self.name}: sending"}
        await trio.to_thread.run_sync(pool.freeze_for_send, "container", self.name)
        try:
            await self._stream_out(pool.stream_send_command("container", self.name, "",
                                                            parent), fs)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(pool.thaw_after_send, "container", self.name)

    async def _stream_out(self, argv: list[str], fs: Channel) -> None:
        if self.link is not None:
            await self.link.stream(argv, fs, sending=True)
        else:
            await stream_out(argv, fs)


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data or b"{}")
    except ValueError:
        raise MigrationError("migration index header: invalid JSON") from None
    return value if isinstance(value, dict) else {}


def backup_config(ctx: Context, inst: Instance, snaps: list[Snapshot]) -> dict[str, Any]:
    """LXD's ``backup.yaml`` as the index header carries it: the instance, its snapshots,
    its pool and volumes."""
    from ..instances import NO_EXPIRY, snapshot_document, timestamp

    pool = ctx.ops.pool_of(inst)
    container = {
        "name": inst.name, "architecture": inst.architecture, "type": "container",
        "config": dict(inst.config), "devices": {k: dict(v) for k, v in inst.devices.items()},
        "ephemeral": inst.ephemeral, "profiles": list(inst.profiles),
        "stateful": False, "description": inst.description,
        "created_at": timestamp(inst.created_at), "expanded_config": dict(inst.expanded_config),
        "expanded_devices": {k: dict(v) for k, v in inst.expanded_devices.items()},
        "status": "Stopped", "status_code": 102, "last_used_at": timestamp(inst.last_used_at),
        "location": "none", "project": "default",
    }
    volume = {"name": inst.name, "type": "container", "config": {}, "description": "",
              "content_type": "filesystem", "location": "none", "used_by": [],
              "project": "default"}
    return {
        "container": container,
        "snapshots": [snapshot_document(ctx, inst, s) for s in snaps],
        "pool": {"name": pool.pool.name, "driver": pool.pool.driver,
                 "config": dict(pool.pool.config), "description": pool.pool.description,
                 "status": "Created", "locations": ["none"], "used_by": []},
        "volume": volume,
        "volume_snapshots": [{"name": s.name, "config": {}, "description": "",
                              "content_type": "filesystem", "created_at": timestamp(s.created_at),
                              "expires_at": NO_EXPIRY} for s in snaps],
    }


# --- the sink ----------------------------------------------------------------------------------

class Sink:
    """``POST /1.0/instances`` with ``source.type: migration``: pull (dial the source's
    operation) or push (wait for the source on this operation's secrets)."""

    #: the stream link from an lxfs source, when both ends agreed on it
    link: StreamLink | None = None

    def __init__(self, ctx: Context, op: Operation, name: str, source: dict[str, Any],
                 refresh: bool) -> None:
        self.ctx, self.op, self.name = ctx, op, name
        self.source = source
        self.push = source.get("mode") == "push"
        self.refresh = refresh
        self.secrets: dict[str, str] = {}
        self.channels: dict[str, trio.MemoryReceiveChannel[WebSocket]] = {}
        if self.push:
            for which in ("control", "fs"):
                self.secrets[which], self.channels[which] = ctx.new_secret(op)
        self.conns: dict[str, WebSocket] = {}

    def metadata(self) -> dict[str, str] | None:
        return dict(self.secrets) if self.push else None

    async def _connect(self) -> None:
        if self.push:
            with trio.move_on_after(CONNECT_TIMEOUT):
                for which, channel in self.channels.items():
                    self.conns[which] = await channel.receive()
            if len(self.conns) < 2:
                raise MigrationError("Timed out waiting for migration connections")
            return
        websockets = self.source.get("secrets") or {}  # LXD's JSON name of Websockets
        if not isinstance(websockets, dict):
            raise MigrationError("source.secrets: expected an object")
        for which in ("control", "fs"):
            if which not in websockets:
                raise MigrationError(f"Missing {which} secret")
            self.conns[which] = await connect(str(self.source.get("operation") or ""),
                                              str(websockets[which]),
                                              str(self.source.get("certificate") or ""))

    async def run(self, receive: Callable[[Callable[[StorageDriver], Awaitable[list[Snapshot]]]],
                                          Awaitable[None]]) -> None:
        """Connect, negotiate, and hand the transfer to ``receive`` (the server's
        ``receive_instance``, or a refresh)."""
        control: WebSocket | None = None
        try:
            await self._connect()
            control = self.conns["control"]
            offer = await receive_message(control, pb.MigrationHeader)
            await receive(lambda pool: self._transfer(pool, control, offer))
        except (LxfsError, HttpError) as exc:
            await send_control(control, getattr(exc, "message", str(exc)))
            raise
        else:
            await send_control(control)
            with trio.move_on_after(5):  # the source closes once it has the verdict
                await control.receive()
        finally:
            if self.link is not None:
                self.link.close()
            with trio.CancelScope(shield=True):
                for secret in self.secrets.values():
                    self.op.secrets.pop(secret, None)
                for channel in self.channels.values():
                    channel.close()
                for ws in self.conns.values():
                    with trio.move_on_after(1):
                        await ws.close()

    async def _receive_streams(self, pool: StorageDriver, fs: Channel, transport: Transport,
                               answer: Any, offered: list[Any], existing: set[str]
                               ) -> list[Snapshot]:
        """A native transport, receiving: the source's migration header, on a refresh the
        snapshots this side drops and its reply, then one stream each, adopted in turn as
        a snapshot or the volume. A failure drops what the stream in progress made."""
        features = transport.features_of(answer)
        header = _json(await fs.read_frame()) if "migration_header" in features else None
        have = None
        if self.refresh and transport.refresh_feature in features:
            have = {n: (await trio.to_thread.run_sync(pool.stream_ids, "container",
                                                      self.name, n))[1] for n in existing}
        try:
            plan = transport.sink_plan(header, [s.name for s in offered], have)
        except ValueError as exc:
            raise MigrationError(str(exc)) from None
        for snap in plan.drop:  # other content under the same name, or no longer a base
            await trio.to_thread.run_sync(pool.delete_snapshot, "container", self.name, snap)
            existing.discard(snap)
        if plan.reply is not None:
            await fs.send(json.dumps(plan.reply).encode())
            await fs.end()
        by_name = {s.name: s for s in offered}
        received = []
        into: Path | None = None
        try:
            for snap in plan.streams:
                if snap and snap not in by_name:
                    raise MigrationError(f"the source sends snapshot {snap!r} it did not "
                                         "offer")
                into = await trio.to_thread.run_sync(pool.stream_receive_dir, "container",
                                                     self.name)
                self.op.metadata = {"fs_progress": f"{snap or self.name}: receiving"}
                if self.link is not None:
                    await self.link.stream(pool.stream_receive_command(into), fs,
                                           sending=False)
                else:
                    await stream_in(pool.stream_receive_command(into), fs)
                await trio.to_thread.run_sync(pool.adopt_stream, "container", self.name, snap,
                                              into)
                if snap:
                    received.append(snapshot_record(by_name[snap]))
        except BaseException:
            if into is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(pool.drop_stream, into)
            raise
        return received

    async def _transfer(self, pool: StorageDriver, control: WebSocket, offer: Any
                        ) -> list[Snapshot]:
        if offer.HasField("criu") and offer.criu == pb.CRIU_RSYNC:
            raise MigrationError(LIVE_REFUSAL)
        features = [f for f in rsync_features(offer) if f in RSYNC_FEATURES]
        offered = list(offer.snapshots)
        if len(offered) != len(offer.snapshotNames):  # LXD's legacy: names only
            offered = [pb.Snapshot(name=n, ephemeral=False, architecture=0, stateful=False)
                       for n in offer.snapshotNames]
        inst = self.ctx.ops.instances[self.name]
        existing = set(pool.list_snapshots("container", self.name)) if self.refresh else set()
        wanted = [s for s in offered if s.name not in existing]
        keep = [inst.snapshots[s.name] for s in offered
                if s.name in existing and s.name in inst.snapshots]
        gone = existing - {s.name for s in offered}
        for extra in sorted(gone):  # gone from the source
            await trio.to_thread.run_sync(pool.delete_snapshot, "container", self.name, extra)
        existing -= gone
        answer, transport = make_answer(offer, pool.migration_transports,
                                        refresh=self.refresh, wanted=wanted)
        final_sync = answer.HasField("criu") and answer.criu == pb.NONE
        if transport is not None and offer.HasField("lxfsTLSStreams"):
            dialed = "" if self.push else \
                urlsplit(str(self.source.get("operation") or "")).hostname or ""
            link = StreamLink.for_websocket(control, dialed)
            if link is not None and link.accept(offer.lxfsTLSStreams):
                answer.lxfsTLSStreams.CopyFrom(link.hello())
                self.link = link
            elif link is not None:
                link.close()
        await send_message(control, answer)
        fs = Channel(self.conns["fs"])
        if answer.indexHeaderVersion > 0:
            _json(await fs.read_frame())
            await fs.send(json.dumps({"StatusCode": 200, "Error": "",
                                      "Refresh": self.refresh}).encode())
            await fs.end()
        if transport is not None:
            received = await self._receive_streams(pool, fs, transport, answer, offered,
                                                   existing)
            self.op.metadata = None
            return [*(s for s in keep if s.name in existing and
                      s.name not in {r.name for r in received}), *received]
        volume = pool.volume_path("container", self.name)
        if not self.refresh:
            await trio.to_thread.run_sync(pool.create_volume, "container", self.name)
        received = []
        for snap in wanted:
            self.op.metadata = {"fs_progress": f"{snap.name}: receiving"}
            await rsync_receive(volume, fs, features)
            await trio.to_thread.run_sync(pool.create_snapshot, "container", self.name,
                                          snap.name)
            received.append(snapshot_record(snap))
        self.op.metadata = {"fs_progress": f"{self.name}: receiving"}
        await rsync_receive(volume, fs, features)
        if final_sync:
            await rsync_receive(volume, fs, features)
        if offer.idmap:
            await trio.to_thread.run_sync(unshift, volume, list(offer.idmap))
            for snap in received:
                await trio.to_thread.run_sync(
                    unshift, pool.snapshot_path("container", self.name, snap.name),
                    list(offer.idmap))
        self.op.metadata = None
        return [*keep, *received]


LIVE_REFUSAL = ("live migration (--stateful) is not supported by lxfs: it needs CRIU to "
                "checkpoint the running container, which lxfs does not drive (Debian 12's "
                "CRIU 3.17 fails `criu check` on this project's kernels: see docs/rest.md); "
                "move it --stateless instead (stopped, moved, started again)")


def unshift(root: Path, idmap: list[Any]) -> None:
    """Files stored shifted by the source (its ``DiskIdmap``: host ids of its container's
    map) back to the container's own ids, as lxfs stores volumes (idmapped at mount).
    Blocking."""
    def back(value: int, uid: bool) -> int:
        for entry in idmap:
            if (entry.isuid if uid else entry.isgid) and \
                    entry.hostid <= value < entry.hostid + entry.maprange:
                return value - entry.hostid + entry.nsid
        return value

    entries = [str(root)]
    for dirpath, dirnames, filenames in os.walk(root):
        entries = [*entries, *(os.path.join(dirpath, n) for n in dirnames + filenames)]
        for entry in entries:
            try:
                st = os.lstat(entry)
                uid, gid = back(st.st_uid, True), back(st.st_gid, False)
                if (uid, gid) != (st.st_uid, st.st_gid):
                    mode = st.st_mode
                    os.lchown(entry, uid, gid)
                    if not os.path.islink(entry) and mode & 0o6000:
                        os.chmod(entry, mode & 0o7777)  # chown drops setuid/setgid
            except OSError as exc:
                log.warning("unshift %s: %s", entry, exc)
        entries = []
