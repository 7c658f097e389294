"""``lxfs copy`` and ``lxfs move`` between servers, as ``lxc`` does them: the client asks
the source for a migration operation (``POST /1.0/instances/NAME`` with ``migration``) and
the target to make the instance from it (``POST /1.0/instances`` with ``source.type:
migration``): in ``pull`` mode the target dials the source's operation, in ``push`` mode the
source dials the target's. This host takes part over its own REST socket (the ``local``
remote), so ``local:c host2:`` and ``host2:c local:`` are the same code; the server that is
dialled must listen on the network (``core.https_address``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from lxfs.cli.base import CLIError
from lxfs.cli.remotes import RemotesConfig


def _server(config: RemotesConfig, name: str) -> Any:
    from lxfs.cli.rest_client import Server  # noqa: PLC0415

    remote = config.get(name)
    if remote.protocol != "lxd":
        raise CLIError(f"Remote {name} is an image server (protocol {remote.protocol}): it "
                       "has no instances")
    return Server(remote)


def _address(server: Any, what: str) -> tuple[str, str]:
    """A server's network address and certificate, from ``GET /1.0``."""
    env = (server.get("/1.0") or {}).get("environment") or {}
    addresses = env.get("addresses") or []
    if not addresses:
        raise CLIError(f"The {what} server isn't listening on the network (set its "
                       "core.https_address)")
    return addresses[0], env.get("certificate") or ""


def _q(name: str) -> str:
    from urllib.parse import quote  # noqa: PLC0415

    return quote(name, safe="")


def _relay(source: Any, src_op: dict[str, Any], target: Any, dst_op: dict[str, Any]
           ) -> None:
    """Relay mode: connect to both operations' ``control`` and ``fs`` websockets and carry
    each whole message (binary, or the empty text of LXD's barriers) to the other side, in
    one thread (TLS allows no concurrent read and write), until both sides closed."""
    import selectors  # noqa: PLC0415

    from wsproto.events import (  # noqa: PLC0415
        BytesMessage,
        CloseConnection,
        Ping,
        TextMessage,
    )

    from lxfs.cli.rest_client import WebSocket  # noqa: PLC0415

    def secrets(op: dict[str, Any]) -> dict[str, str]:
        return (op.get("metadata") or {}).get("metadata") or {}

    peer: dict[Any, Any] = {}
    for which in ("control", "fs"):
        a = WebSocket(source, f"{src_op['operation']}/websocket?secret={secrets(src_op)[which]}")
        b = WebSocket(target, f"{dst_op['operation']}/websocket?secret={secrets(dst_op)[which]}")
        peer[a], peer[b] = b, a
    partial: dict[Any, list[Any]] = {ws: [] for ws in peer}
    selector = selectors.DefaultSelector()
    for ws in peer:
        selector.register(ws.sock, selectors.EVENT_READ, ws)
    open_ = set(peer)

    def close(ws: Any) -> None:
        if ws in open_:
            open_.discard(ws)
            selector.unregister(ws.sock)
            with contextlib.suppress(Exception):
                ws._send(ws.ws.send(CloseConnection(code=1000)))
            with contextlib.suppress(OSError):
                ws.sock.close()

    def carry(ws: Any) -> bool:
        """Forward the whole messages wsproto has of ``ws``; False once it closed."""
        alive = True
        for event in ws.ws.events():
            if isinstance(event, Ping):
                ws._send(ws.ws.send(event.response()))
            elif isinstance(event, BytesMessage | TextMessage):
                partial[ws].append(event.data)
                if event.message_finished:
                    parts, partial[ws] = partial[ws], []
                    other = peer[ws]
                    if other in open_:
                        text = isinstance(event, TextMessage)
                        whole = "".join(parts) if text else b"".join(parts)
                        other._send(other.ws.send(
                            TextMessage(data=whole) if text else BytesMessage(data=whole)))
            elif isinstance(event, CloseConnection):
                alive = False
        return alive

    def read(ws: Any) -> bytes:
        try:
            data = ws.sock.recv(65536)
            while hasattr(ws.sock, "pending") and ws.sock.pending():
                data += ws.sock.recv(ws.sock.pending())
        except OSError:
            return b""
        return data

    for ws in list(peer):  # what arrived with the handshake
        if hasattr(ws.sock, "pending") and ws.sock.pending():
            ws.ws.receive_data(read(ws))
        carry(ws)
    while open_:
        for key, _ in selector.select(timeout=1):
            ws = key.data
            if ws not in open_:
                continue
            data = read(ws)
            ws.ws.receive_data(data or None)
            if not carry(ws) or not data:
                close(ws)
                close(peer[ws])


def _both(first: Callable[[], Any], second: Callable[[], Any]) -> None:
    """Wait for both ends of a migration; the first failure is the one reported."""
    try:
        first()
    except CLIError:
        with contextlib.suppress(CLIError):
            second()
        raise
    second()


def migrate(args: Any, config: RemotesConfig, refs: list[Any], move: bool) -> int:
    """Copy (or move) ``refs[0]`` to ``refs[1]`` (``REMOTE:[NAME]``)."""
    (_f, src_remote, src_ref, _i), (_g, dst_remote, dst_name, _j) = refs[0], refs[1]
    src_name, _, snapshot = src_ref.partition("/")
    dst_name = dst_name or src_name
    if snapshot and move:
        raise CLIError("a snapshot cannot be moved to another server: copy it")
    if getattr(args, "stateful", False):
        from lxfs_plugins.rest.migration import LIVE_REFUSAL  # noqa: PLC0415

        raise CLIError(LIVE_REFUSAL)
    mode = getattr(args, "mode", None) or "pull"
    if mode not in ("pull", "push", "relay"):
        raise CLIError(f"Invalid --mode {mode!r}: pull, push or relay")
    source, target = _server(config, src_remote), _server(config, dst_remote)
    if src_remote == dst_remote and not move:
        target.run("POST", "/1.0/instances", {"name": dst_name, "source": {
            "type": "copy", "source": src_ref,
            "instance_only": bool(getattr(args, "instance_only", False))}})
        return 0
    src_url = f"/1.0/instances/{_q(src_name)}" + \
        (f"/snapshots/{_q(snapshot)}" if snapshot else "")
    inst = source.get(src_url)
    running = inst.get("status") == "Running"
    stateless = bool(getattr(args, "stateless", False))
    if move and running and not stateless:
        raise CLIError("The instance is running: stop it first, or move it --stateless "
                       "(stopped, moved, started on the target)")
    if running and stateless:
        source.run("PUT", f"/1.0/instances/{_q(src_name)}/state",
                   {"action": "stop", "timeout": 30, "force": False})
    devices = dict(inst.get("devices") or {})
    pool = getattr(args, "storage", None)
    if pool:
        root = next((k for k, d in (inst.get("expanded_devices") or {}).items()
                     if d.get("type") == "disk" and d.get("path") == "/"), "root")
        devices[root] = {**(devices.get(root) or {"type": "disk", "path": "/"}),
                         "pool": pool}
    instance_only = bool(getattr(args, "instance_only", False))
    body: dict[str, Any] = {
        "name": dst_name, "architecture": inst.get("architecture", ""),
        "config": {k: v for k, v in (inst.get("config") or {}).items()
                   if not k.startswith("volatile.")},
        "devices": devices, "profiles": inst.get("profiles") or [],
        "ephemeral": bool(inst.get("ephemeral")), "description": inst.get("description", ""),
        "type": "container",
    }
    if getattr(args, "config", None):  # copy's -c, -p, --no-profiles, -e
        from lxfs.cli.instances import parse_pairs  # noqa: PLC0415

        body["config"].update(dict(parse_pairs(args.config)))
    if getattr(args, "no_profiles", False):
        body["profiles"] = []
    elif getattr(args, "profile", None):
        body["profiles"] = list(args.profile)
    if getattr(args, "ephemeral", False):
        body["ephemeral"] = True
    migration = {"migration": True, "live": False, "instance_only": instance_only}
    try:
        if mode == "pull":
            address, cert = _address(source, "source")
            src_op = source.request("POST", src_url, migration)
            secrets = (src_op.get("metadata") or {}).get("metadata") or {}
            body["source"] = {
                "type": "migration", "mode": "pull", "certificate": cert,
                "operation": f"https://{address}{src_op['operation']}",
                "secrets": secrets, "instance_only": instance_only, "live": False,
                "refresh": bool(getattr(args, "refresh", False))}
            _both(lambda: target.run("POST", "/1.0/instances", body),
                  lambda: source.wait(src_op["operation"]))
        elif mode == "relay":  # this client carries the websockets between the two
            src_op = source.request("POST", src_url, migration)
            body["source"] = {"type": "migration", "mode": "push", "live": False,
                              "instance_only": instance_only,
                              "refresh": bool(getattr(args, "refresh", False))}
            dst_op = target.request("POST", "/1.0/instances", body)
            _relay(source, src_op, target, dst_op)
            _both(lambda: target.wait(dst_op["operation"]),
                  lambda: source.wait(src_op["operation"]))
        else:
            address, cert = _address(target, "target")
            body["source"] = {"type": "migration", "mode": "push", "live": False,
                              "instance_only": instance_only,
                              "refresh": bool(getattr(args, "refresh", False))}
            dst_op = target.request("POST", "/1.0/instances", body)
            secrets = (dst_op.get("metadata") or {}).get("metadata") or {}
            push = {**migration, "target": {
                "certificate": cert, "secrets": secrets,
                "operation": f"https://{address}{dst_op['operation']}"}}
            _both(lambda: source.run("POST", src_url, push),
                  lambda: target.wait(dst_op["operation"]))
    except CLIError:
        if running and stateless:  # as it was: the source runs again
            source.run("PUT", f"/1.0/instances/{_q(src_name)}/state", {"action": "start"})
        raise
    if move:
        source.run("DELETE", f"/1.0/instances/{_q(src_name)}")
    if running and stateless:
        target.run("PUT", f"/1.0/instances/{_q(dst_name)}/state", {"action": "start"})
    return 0
