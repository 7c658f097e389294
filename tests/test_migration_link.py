"""The stream link between two lxfs hosts (``plugins/rest/migration/native.py``): a stream
between two ends on loopback through socat over TLS, the ``fs`` websocket in memory; a
failure on either end stops both with its reason; a stranger's certificate is refused; the
negotiation picks the link only when exactly one end dialed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from lxfs_plugins.rest import migration
from lxfs_plugins.rest.migration.native import StreamLink


class _Pipe:
    """One direction of the ``fs`` websocket in memory: data messages, None for a barrier."""

    def __init__(self) -> None:
        self.put, self.get = trio.open_memory_channel[bytes | None](1000)


class _End(migration.Channel):
    def __init__(self, out: _Pipe, into: _Pipe) -> None:
        self.out, self.into = out, into

    async def send(self, data: bytes) -> None:
        await self.out.put.send(data)

    async def end(self) -> None:
        await self.out.put.send(None)

    async def receive(self) -> bytes | None:
        try:
            return await self.into.get.receive()
        except trio.EndOfChannel:
            raise migration.MigrationError("the migration peer closed the connection") \
                from None


def linked(stranger: bool = False) -> tuple[StreamLink, StreamLink]:
    """A listening end (as the dialed one) and a dialing end on loopback, each with the
    other's certificate (``stranger``: the dialer presents another than it announced)."""
    listener = StreamLink(local="127.0.0.1", peer="127.0.0.1")
    dialer = StreamLink(dial="127.0.0.1")
    assert listener.accept(dialer.hello()) and dialer.accept(listener.hello())
    if stranger:
        other = StreamLink(dial="127.0.0.1")
        (dialer.dir / "mine.pem").write_bytes((other.dir / "mine.pem").read_bytes())
        other.close()
    return listener, dialer


async def run_both(listener: StreamLink, send: list[str], dialer: StreamLink,
                   receive: list[str], *, listener_sends: bool = True
                   ) -> dict[str, BaseException | None]:
    """One stream, ``send`` on one end and ``receive`` on the other; each end's error."""
    a, b = _Pipe(), _Pipe()
    results: dict[str, BaseException | None] = {}

    async def end(name: str, link: StreamLink, argv: list[str], fs: migration.Channel,
                  sending: bool) -> None:
        try:
            await link.stream(argv, fs, sending=sending)
            results[name] = None
        except migration.MigrationError as exc:
            results[name] = exc
        finally:
            (a if name == "listener" else b).put.close()  # as a websocket closed after

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(end, "listener", listener, send if listener_sends else receive,
                               _End(a, b), listener_sends)
            nursery.start_soon(end, "dialer", dialer, receive if listener_sends else send,
                               _End(b, a), not listener_sends)
    listener.close()
    dialer.close()
    return results


async def test_a_stream_goes_through_both_ways(tmp_path: Path) -> None:
    data = os.urandom(8 << 20)
    (tmp_path / "src").write_bytes(data)
    for listener_sends in (True, False):
        out = tmp_path / f"out-{listener_sends}"
        results = await run_both(*_pair(tmp_path, out), listener_sends=listener_sends)
        assert results == {"listener": None, "dialer": None}
        assert out.read_bytes() == data


def _pair(tmp_path: Path, out: Path) -> tuple[StreamLink, list[str], StreamLink, list[str]]:
    listener, dialer = linked()
    return listener, ["cat", str(tmp_path / "src")], dialer, ["sh", "-c", f"cat > {out}"]


async def test_a_failing_end_stops_both_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(os.urandom(4 << 20))
    listener, dialer = linked()
    # the receiving end fails at once: the sender's processes are stopped, its error says
    # what the receiver said
    results = await run_both(listener, ["cat", str(tmp_path / "src")], dialer,
                             ["sh", "-c", "echo no room >&2; exit 3"])
    assert "no room" in str(results["dialer"])
    assert "the migration peer" in str(results["listener"])
    assert "no room" in str(results["listener"])
    # the sending end fails: the receiver says so
    listener, dialer = linked()
    results = await run_both(listener, ["sh", "-c", "head -c 100000 /dev/zero; exit 4"],
                             dialer, ["sh", "-c", "cat > /dev/null"])
    assert "exit 4" in str(results["listener"])
    assert "exit 4" in str(results["dialer"])


async def test_a_stranger_certificate_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (tmp_path / "src").write_bytes(b"secret")
    listener, dialer = linked(stranger=True)
    results = await run_both(listener, ["cat", str(tmp_path / "src")], dialer,
                             ["sh", "-c", f"cat > {out}"])
    assert results["listener"] is not None and results["dialer"] is not None
    assert "TLS link" in str(results["listener"]) + str(results["dialer"])
    assert not out.exists() or out.read_bytes() == b""


def test_the_link_needs_exactly_one_dialer() -> None:
    a, b = StreamLink(local="127.0.0.1", peer="127.0.0.1"), \
        StreamLink(local="127.0.0.1", peer="127.0.0.1")
    assert not a.accept(b.hello())  # relay mode: both were dialed
    c, d = StreamLink(dial="127.0.0.1"), StreamLink(dial="127.0.0.1")
    assert not c.accept(d.hello())
    for link in (a, b, c, d):
        link.close()
        assert not link.dir.exists()


@pytest.fixture(autouse=True)
def _no_leftovers() -> None:
    """Nothing of the links' processes stays behind."""
    yield
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                assert "(socat)" not in stat, stat
