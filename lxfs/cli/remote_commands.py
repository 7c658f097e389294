"""Commands on remote servers: ``lxfs list host2:``, ``lxfs launch host2:busybox host2:c1``,
``lxfs exec host2:c1 -- sh``, ``lxfs image copy local:busybox host2:``...

The commands parse as usual; when a name carries a ``REMOTE:`` prefix of an LXD-protocol
remote (or the default remote is one), ``dispatch`` runs the command here, over LXD's REST API
(``rest_client``); otherwise it strips ``local:`` and the command runs on the mount.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from lxfs.cli.base import CLIError
from lxfs.cli.remotes import LOCAL, RemotesConfig, load_config, split_remote

#: command -> the attributes of its parsed arguments that name instances or images
REF_FIELDS: dict[str, tuple[str, ...]] = {
    "launch": ("image", "name"), "create": ("image", "name"),
    "list": ("filters",), "ls": ("filters",), "info": ("name",),
    **dict.fromkeys(("start", "stop", "restart", "freeze", "pause", "unfreeze"), ("names",)),
    "delete": ("names",), "rm": ("names",), "exec": ("name",),
    "snapshot": ("name",), "restore": ("name",), "move": ("old", "new"), "mv": ("old", "new"),
    "rename": ("old", "new"), "copy": ("source", "target"), "cp": ("source", "target"),
}
CONFIG_REF_FIELDS: dict[str, tuple[str, ...]] = {
    "get": ("args",), "set": ("args",), "unset": ("args",), "show": ("name",),
}
FILE_REF_FIELDS: dict[str, tuple[str, ...]] = {"push": ("target",), "pull": ("sources",)}
IMAGE_REF_FIELDS: dict[str, tuple[str, ...]] = {
    "list": ("filters",), "ls": ("filters",), "copy": ("image", "targets"),
    "cp": ("image", "targets"), "info": ("image",), "show": ("image",),
    "delete": ("images",), "rm": ("images",),
}


def _subcommand(args: Any, command: str) -> str:
    attr = {"image": "image_command", "config": "config_command", "file": "file_command"}
    return getattr(args, attr[command], "") or "" if command in attr else ""


def _fields(args: Any, command: str) -> tuple[str, ...]:
    sub = _subcommand(args, command)
    if command == "image":
        return IMAGE_REF_FIELDS.get(sub, ())
    if command == "config":
        return CONFIG_REF_FIELDS.get(sub, ())
    if command == "file":
        return FILE_REF_FIELDS.get(sub, ())
    return REF_FIELDS.get(command, ())


def dispatch(args: Any, command: str) -> int | None:
    """Run ``args`` (of the top-level ``command``) on a remote when its names point at one;
    None to run it on the mount (with ``local:`` prefixes removed)."""
    if command == "config" and _subcommand(args, command) == "trust":
        return None  # `config trust` names its server itself
    config = load_config()
    fields = _fields(args, command)
    refs: list[tuple[str, str, str, int | None]] = []  # field, remote, name, index
    for field in fields:
        value = getattr(args, field, None)
        values = value if isinstance(value, list) else [value]
        for i, item in enumerate(values):
            if not isinstance(item, str):
                continue
            if field == "filters" and ":" in item and not item.endswith(":") \
                    and item.partition(":")[0] not in config.remotes:
                continue  # a key:value filter
            if field == "args" and (i > 0 or ":" not in item):
                continue  # config get/set: only the first word may name an instance
            remote, name = split_remote(item, config)
            refs.append((field, remote, name, i if isinstance(value, list) else None))
    remotes = {r for _, r, _, _ in refs} or {config.default_remote}
    if remotes == {LOCAL} or (command in ("launch", "create")
                             and _instance_remote(refs, config) == LOCAL):
        _strip_local(args, refs)  # the mount (a remote image for a local instance: the
        return None               # mount's own pull path handles it)
    sub = _subcommand(args, command)
    handler = HANDLERS.get(f"{command} {sub}" if sub else command)
    if handler is None:
        raise CLIError(f"`lxfs {command}` works on this host only (the remote "
                       f"{sorted(remotes - {LOCAL})[0]}: is not supported by it yet)")
    return handler(args, config, refs)


def _instance_remote(refs: list[tuple[str, str, str, int | None]], config: RemotesConfig
                     ) -> str:
    for field, remote, _name, _ in refs:
        if field == "name":
            return remote
    for field, remote, _name, _ in refs:
        if field == "image":
            return remote  # `lxfs launch host2:busybox`: the instance goes there too
    return config.default_remote


def _strip_local(args: Any, refs: list[tuple[str, str, str, int | None]]) -> None:
    for field, remote, name, index in refs:
        if remote != LOCAL:
            continue
        if index is None:
            setattr(args, field, name)
        else:
            getattr(args, field)[index] = name


def server_for(config: RemotesConfig, name: str) -> Any:
    """A REST client for the LXD-protocol remote ``name``."""
    from lxfs.cli.rest_client import Server  # noqa: PLC0415

    remote = config.get(name)
    if remote.is_local:
        raise CLIError("internal: the local remote is the mount")
    if remote.protocol != "lxd":
        raise CLIError(f"Remote {name} is an image server (protocol {remote.protocol}): it "
                       "has no instances")
    return Server(remote)


def _one_remote(refs: list[tuple[str, str, str, int | None]], what: str) -> str:
    remotes = {r for _, r, _, _ in refs}
    if len(remotes) > 1:
        raise CLIError(f"{what}: all names must be on one remote (got "
                       f"{', '.join(sorted(remotes))})")
    return remotes.pop()


def quote(name: str) -> str:
    from urllib.parse import quote as q  # noqa: PLC0415

    return q(name, safe="")


# -- instances --------------------------------------------------------------------------------


def _addresses(state: dict[str, Any] | None, family: str) -> str:
    lines = []
    for nic, info in sorted(((state or {}).get("network") or {}).items()):
        if nic == "lo":
            continue
        for addr in info.get("addresses") or []:
            if addr.get("family") == family and addr.get("scope") == "global":
                lines.append(f"{addr['address']} ({nic})")
    return "\n".join(lines)


def cmd_list(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    from lxfs.cli.output import emit, natural_key  # noqa: PLC0415

    remote = _one_remote([r for r in refs if r[2] == ""] or refs, "list") \
        if refs else config.default_remote
    if args.columns != "ns46tS":
        raise CLIError("list -c on a remote is not supported yet: the default columns only")
    server = server_for(config, remote)
    filters = [name for field, _r, name, _i in refs if name]
    instances = server.get("/1.0/instances?recursion=2")
    rows, data = [], []
    for inst in sorted(instances, key=lambda i: natural_key(i["name"])):
        if filters and not any(f in inst["name"] for f in filters):
            continue
        state = inst.get("state") or {}
        rows.append([inst["name"], inst.get("status", "").upper(), _addresses(state, "inet"),
                     _addresses(state, "inet6"),
                     "CONTAINER (EPHEMERAL)" if inst.get("ephemeral") else "CONTAINER",
                     str(len(inst.get("snapshots") or []))])
        data.append(inst)
    emit(args.format, ["NAME", "STATE", "IPV4", "IPV6", "TYPE", "SNAPSHOTS"], rows, data)
    return 0


def _image_source(config: RemotesConfig, image_remote: str, image: str, target: Any
                  ) -> dict[str, Any]:
    """The ``source`` of an instance or image made on ``target`` from ``image`` of
    ``image_remote``: the target's own image, or one the target pulls (an LXD-protocol or
    simplestreams remote), or one this client uploads first (the local mount)."""
    key = "fingerprint" if _looks_like_fingerprint(image) else "alias"
    if image_remote == target.remote.name:
        return {"type": "image", key: image}
    if image_remote == LOCAL:
        fp = upload_local_image(image, target)
        return {"type": "image", "fingerprint": fp}
    remote = config.get(image_remote)
    source: dict[str, Any] = {"type": "image", "mode": "pull", "server": remote.addr,
                              "protocol": remote.protocol, key: image}
    if remote.protocol == "lxd":
        from lxfs.cli.rest_client import Server  # noqa: PLC0415

        origin = Server(remote)
        fp = _resolve_remote_image(origin, image)
        info = origin.get(f"/1.0/images/{fp}")
        source["fingerprint"] = fp
        if origin.pinned_der is not None:
            import ssl  # noqa: PLC0415

            source["certificate"] = ssl.DER_cert_to_PEM_cert(origin.pinned_der)
        if not info.get("public"):
            source["secret"] = private_image_secret(remote, fp)[1]
    return source


def private_image_secret(remote: Any, image: str) -> tuple[str, str]:
    """An image of an LXD-protocol remote: its fingerprint and, unless it is public, a
    single-use secret with which another server (this host's daemon) may download it,
    asked for with this client's certificate ("" for a public image)."""
    from lxfs.cli.rest_client import Server  # noqa: PLC0415

    origin = Server(remote)
    fp = _resolve_remote_image(origin, image)
    if origin.get(f"/1.0/images/{fp}").get("public"):
        return fp, ""
    op = origin.request("POST", f"/1.0/images/{fp}/secret", {})
    return fp, str(((op.get("metadata") or {}).get("metadata") or {}).get("secret") or "")


def _looks_like_fingerprint(text: str) -> bool:
    return len(text) >= 12 and all(c in "0123456789abcdef" for c in text)


def _resolve_remote_image(server: Any, ref: str) -> str:
    """A remote image's fingerprint from an alias, a fingerprint or a unique prefix."""
    try:
        return server.get(f"/1.0/images/aliases/{quote(ref)}")["target"]
    except CLIError:
        pass
    try:
        return server.get(f"/1.0/images/{quote(ref)}")["fingerprint"]
    except CLIError:
        raise CLIError(f"Image not found on {server.remote.name}: {ref}") from None


def upload_local_image(ref: str, target: Any, aliases: list[str] | None = None,
                       public: bool = False) -> str:
    """Copy an image of the mount to ``target`` (unless it has it); its fingerprint."""
    from lxfs.cli.mount import Mount  # noqa: PLC0415

    mount = Mount()
    fp = mount.resolve_image(ref)
    try:
        target.get(f"/1.0/images/{fp}")
        have = True
    except CLIError:
        have = False
    if not have:
        image_dir = mount.images / fp
        rootfs = image_dir / "export.rootfs"
        headers = {"X-LXD-public": "1" if public else "0",
                   "X-LXD-filename": (image_dir / "filename").read_text().strip()}
        if rootfs.exists():
            _upload_split(target, image_dir / "export", rootfs, headers)
        else:
            from lxfs.cli.rest_client import upload_file  # noqa: PLC0415

            upload_file(target, "/1.0/images", image_dir / "export", headers)
    for alias in aliases or []:
        target.request("POST", "/1.0/images/aliases", {"name": alias, "target": fp})
    return fp


def _upload_split(target: Any, meta: Path, rootfs: Path, headers: dict[str, str]) -> None:
    """A split image as ``lxc image import META ROOTFS`` sends it (multipart/form-data)."""
    import uuid  # noqa: PLC0415

    boundary = uuid.uuid4().hex
    body = bytearray()
    for field, path in (("metadata", meta), ("rootfs", rootfs)):
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                 f"filename=\"{path.name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                 ).encode()
        body += path.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    target.run("POST", "/1.0/images", bytes(body),
               headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"})


def cmd_create(args: Any, config: RemotesConfig, refs: list[Any], start: bool) -> int:
    from lxfs.cli.instances import parse_device_overrides, parse_pairs  # noqa: PLC0415

    image_remote, image = next((r, n) for f, r, n, _ in refs if f == "image")
    remote = _instance_remote(refs, config)
    name = next((n for f, _r, n, _ in refs if f == "name"), "") or None
    server = server_for(config, remote)
    body: dict[str, Any] = {
        "source": _image_source(config, image_remote, image, server),
        "config": dict(parse_pairs(args.config, "config key=value")),
        "ephemeral": bool(args.ephemeral), "type": "container",
    }
    if name:
        body["name"] = name
    if args.no_profiles:
        body["profiles"] = []
    elif args.profile:
        body["profiles"] = list(args.profile)
    if args.description:
        body["description"] = args.description
    devices = parse_device_overrides(args.device)
    if args.storage:
        devices.setdefault("root", {}).update(pool=args.storage, path="/", type="disk")
    if devices:
        body["devices"] = devices
    print(f"Creating {name or 'the instance'}", flush=True)
    op = server.run("POST", "/1.0/instances", body)
    if not name:
        name = ((op.get("resources") or {}).get("instances") or [""])[0].rsplit("/", 1)[-1]
        print(f"Instance name is: {name}")
    if start:
        print(f"Starting {name}", flush=True)
        server.run("PUT", f"/1.0/instances/{quote(name)}/state",
                   {"action": "start", "timeout": -1})
    return 0


def cmd_state(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    if getattr(args, "all", False):
        raise CLIError("--all on a remote is not supported yet: name the instances")
    remote = _one_remote(refs, args.state_action)
    server = server_for(config, remote)
    failures = []
    for _f, _r, name, _i in refs:
        body: dict[str, Any] = {"action": args.state_action,
                                "timeout": getattr(args, "timeout", -1),
                                "force": bool(getattr(args, "force", False))}
        try:
            server.run("PUT", f"/1.0/instances/{quote(name)}/state", body)
        except CLIError as exc:
            failures.append(f"{name}: {exc.message}")
    if failures:
        raise CLIError("\n".join(failures))
    return 0


def cmd_delete(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    remote = _one_remote(refs, "delete")
    server = server_for(config, remote)
    for _f, _r, name, _i in refs:
        inst, _, snap = name.partition("/")
        if snap:
            server.run("DELETE", f"/1.0/instances/{quote(inst)}/snapshots/{quote(snap)}")
            continue
        status = server.get(f"/1.0/instances/{quote(inst)}").get("status", "")
        if status.lower() in ("running", "frozen"):
            if not args.force:
                raise CLIError("The instance is currently running, stop it first or pass "
                               "--force")
            server.run("PUT", f"/1.0/instances/{quote(inst)}/state",
                       {"action": "stop", "force": True, "timeout": -1})
        server.run("DELETE", f"/1.0/instances/{quote(inst)}")
    return 0


def cmd_info(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    from lxfs.cli.output import render_yaml  # noqa: PLC0415

    remote, name = refs[0][1], refs[0][2]
    server = server_for(config, remote)
    if not name:
        sys.stdout.write(render_yaml(server.get("/1.0")))
        return 0
    inst = server.get(f"/1.0/instances/{quote(name)}")
    state = server.get(f"/1.0/instances/{quote(name)}/state")
    lines = [f"Name: {inst['name']}", f"Status: {inst.get('status', '').upper()}",
             f"Type: container{' (ephemeral)' if inst.get('ephemeral') else ''}",
             f"Architecture: {inst.get('architecture', '')}",
             f"Created: {inst.get('created_at', '')}"]
    if state.get("pid"):
        lines += [f"PID: {state['pid']}", f"Processes: {state.get('processes', 0)}"]
    ips = _addresses(state, "inet") + "\n" + _addresses(state, "inet6")
    if ips.strip():
        lines.append("IPs:")
        lines += [f"  {line}" for line in ips.strip().split("\n")]
    if args.show_log:
        status, log = server.raw("GET", f"/1.0/instances/{quote(name)}/logs/lxc.log")
        lines += ["", "Log:", "", log.decode(errors="replace") if status == 200 else ""]
    print("\n".join(lines))
    return 0


# -- exec ---------------------------------------------------------------------------------------


def cmd_exec(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    """``lxfs exec host2:c1 [--env K=V] [-t|-T] -- CMD``: LXD's exec over websockets."""
    from lxfs.cli.rest_client import WebSocket  # noqa: PLC0415

    remote, name = refs[0][1], refs[0][2]
    server = server_for(config, remote)
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise CLIError("exec: no command given")
    interactive = (sys.stdin.isatty() and sys.stdout.isatty()
                   and not args.force_noninteractive) or args.force_interactive
    env = {"TERM": os.environ.get("TERM", "xterm")} if interactive else {}
    for pair in args.env or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CLIError(f"Bad key=value pair: {pair}")
        env[key] = value
    body: dict[str, Any] = {"command": command, "environment": env,
                            "interactive": interactive, "wait-for-websocket": True,
                            "record-output": False}
    if args.cwd:
        body["cwd"] = args.cwd
    if args.user is not None:
        body["user"] = int(args.user)
    if args.group is not None:
        body["group"] = int(args.group)
    if interactive:
        size = os.get_terminal_size(sys.stdout.fileno())
        body["width"], body["height"] = size.columns, size.lines
    document = server.request("POST", f"/1.0/instances/{quote(name)}/exec", body)
    operation = document["operation"]
    fds = (document.get("metadata") or {}).get("metadata", {}).get("fds", {})

    def open_ws(key: str) -> WebSocket:
        return WebSocket(server, f"{operation}/websocket?secret={fds[key]}")

    control = open_ws("control")
    if interactive:
        return _exec_interactive(server, operation, open_ws("0"), control)
    streams = {fd: open_ws(str(fd)) for fd in (0, 1, 2)}
    return _exec_pipes(server, operation, streams, control)


def _pump_out(ws: Any, fd: int) -> None:
    while True:
        data = ws.receive()
        if data is None:
            return
        if data:
            try:
                os.write(fd, data)
            except OSError:
                return


def _pump_in(ws: Any, fd: int) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            ws.close()
            return
        ws.send_bytes(data)


def _finish(server: Any, operation: str) -> int:
    op = server.wait(operation)
    return int((op.get("metadata") or {}).get("return", 0))


def _exec_pipes(server: Any, operation: str, streams: dict[int, Any], control: Any) -> int:
    import threading  # noqa: PLC0415

    outs = [threading.Thread(target=_pump_out, args=(streams[fd], fd), daemon=True)
            for fd in (1, 2)]
    stdin = threading.Thread(target=_pump_in, args=(streams[0], 0), daemon=True)
    for thread in (*outs, stdin):
        thread.start()
    code = _finish(server, operation)
    deadline = time.monotonic() + 5
    for thread in outs:
        thread.join(max(0.0, deadline - time.monotonic()))
    for ws in (*streams.values(), control):
        ws.close()
    return code


def _exec_interactive(server: Any, operation: str, pty_ws: Any, control: Any) -> int:
    """Relay the terminal and websocket ``0`` in one thread (both directions share one TLS
    connection), window sizes on ``control``, until the server closes ``0``."""
    import json  # noqa: PLC0415
    import selectors  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import termios  # noqa: PLC0415
    import tty  # noqa: PLC0415

    saved = termios.tcgetattr(0) if os.isatty(0) else None
    resized = []

    def on_winch(_sig: int, _frame: Any) -> None:
        resized.append(True)

    previous = signal.signal(signal.SIGWINCH, on_winch)
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ, "stdin")
    selector.register(pty_ws.sock, selectors.EVENT_READ, "ws")
    try:
        if saved is not None:
            tty.setraw(0)
        closed = False
        while not closed:
            if resized:
                resized.clear()
                size = os.get_terminal_size(sys.stdout.fileno())
                control.send_text(json.dumps({"command": "window-resize", "args": {
                    "width": str(size.columns), "height": str(size.lines)}}))
            for key, _events in selector.select(timeout=1.0):
                if key.data == "ws":
                    messages, closed = pty_ws.poll()
                    for data in messages:
                        os.write(1, data)
                    continue
                try:
                    data = os.read(0, 65536)
                except OSError:
                    data = b""
                if data:
                    pty_ws.send_bytes(data)
                else:
                    selector.unregister(0)
    finally:
        selector.close()
        signal.signal(signal.SIGWINCH, previous)
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
    code = _finish(server, operation)
    pty_ws.close()
    control.close()
    return code


# -- images -------------------------------------------------------------------------------------


def cmd_image_list(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    from lxfs.cli.images import print_images  # noqa: PLC0415

    remote = _one_remote([r for r in refs if r[2] == ""] or refs, "image list")
    filters = [n for _f, _r, n, _i in refs if n]
    if config.get(remote).protocol == "simplestreams":
        print_images(simplestreams_images(config.get(remote)), filters, args.format)
        return 0
    server = server_for(config, remote)
    print_images(server.get("/1.0/images?recursion=1"), filters, args.format)
    return 0


def _remote_image(config: RemotesConfig, refs: list[Any]) -> tuple[Any, str]:
    """The LXD-protocol server an image command names, and the image's fingerprint."""
    remote, ref = refs[0][1], refs[0][2]
    server = server_for(config, remote)
    return server, _resolve_remote_image(server, ref)


def cmd_image_info(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    from lxfs.cli.images import print_image_info  # noqa: PLC0415

    server, fp = _remote_image(config, refs)
    print_image_info(server.get(f"/1.0/images/{fp}"))
    return 0


def cmd_image_show(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    from lxfs.cli.images import print_image_show  # noqa: PLC0415

    server, fp = _remote_image(config, refs)
    print_image_show(server.get(f"/1.0/images/{fp}"))
    return 0


def cmd_image_delete(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    for ref in refs:
        server, fp = _remote_image(config, [ref])
        server.run("DELETE", f"/1.0/images/{fp}")
    return 0


def simplestreams_images(remote: Any) -> list[dict[str, Any]]:
    """An image server's container images (the newest of each product and kind), shaped as
    LXD's ``/1.0/images`` objects."""
    import datetime  # noqa: PLC0415

    from lxfs.cli.rest_client import Server, fetch_json  # noqa: PLC0415
    from lxfs.images.streams import products_images  # noqa: PLC0415

    server = Server(remote, use_client_cert=False)
    index = fetch_json(server, "/streams/v1/index.json")
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for entry in (index.get("index") or {}).values() if isinstance(index, dict) else []:
        if not isinstance(entry, dict) or entry.get("datatype") != "image-downloads" \
                or not entry.get("path"):
            continue
        for image in products_images(fetch_json(server, "/" + entry["path"].lstrip("/"))):
            key = (image["product"], image["rank"])
            if key not in found or image["serial"] > found[key]["serial"]:
                found[key] = image
    out = []
    for image in found.values():
        when = datetime.datetime.strptime(image["serial"][:8], "%Y%m%d").replace(
            tzinfo=datetime.UTC)
        props = image["properties"]
        out.append({
            "fingerprint": image["fingerprint"], "public": True, "type": "container",
            "architecture": image["architecture"],
            "aliases": [{"name": a, "description": ""} for a in image["aliases"]],
            "properties": {**props, "description": " ".join(
                props[k] for k in ("os", "release", "variant") if props.get(k))
                + f" ({image['serial']})"},
            "size": sum(f[2] for f in image["files"]),
            "uploaded_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        })
    return out


def cmd_image_copy(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    """``lxfs image copy SRC:IMAGE DST: [--alias A] [--public]``."""
    src_remote, image = refs[0][1], refs[0][2]
    targets = [(r, n) for f, r, n, _ in refs if f == "targets"]
    for dst_remote, _ in targets:
        if dst_remote == LOCAL:
            from lxfs.cli.images import pull_remote_image  # noqa: PLC0415

            pull_remote_image(config.get(src_remote), image, list(args.alias or []),
                              public=args.public, auto_update=args.auto_update)
            continue
        target = server_for(config, dst_remote)
        aliases = list(args.alias or [])
        if src_remote == LOCAL:
            upload_local_image(image, target, aliases, public=args.public)
            continue
        source = _image_source(config, src_remote, image, target)
        body: dict[str, Any] = {"source": source, "public": bool(args.public),
                                "auto_update": bool(getattr(args, "auto_update", False)),
                                "aliases": [{"name": a} for a in aliases]}
        target.run("POST", "/1.0/images", body)
    print("Image copied successfully!")
    return 0


# -- snapshots, renames, config, files ----------------------------------------------------------


def cmd_snapshot(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    server = server_for(config, refs[0][1])
    name = refs[0][2]
    body: dict[str, Any] = {"stateful": False}
    if args.snapshot:
        body["name"] = args.snapshot
    server.run("POST", f"/1.0/instances/{quote(name)}/snapshots", body)
    return 0


def cmd_restore(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    server = server_for(config, refs[0][1])
    server.run("PUT", f"/1.0/instances/{quote(refs[0][2])}", {"restore": args.snapshot})
    return 0


def cmd_rename(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    remotes = [r for _f, r, _n, _i in refs]
    if len(set(remotes)) > 1:
        from lxfs.cli.migrate import migrate  # noqa: PLC0415

        return migrate(args, config, refs, move=True)
    server = server_for(config, remotes[0])
    old, new = refs[0][2], refs[1][2]
    inst, _, snap = old.partition("/")
    if snap:
        new_snap = new.partition("/")[2] or new
        server.run("POST", f"/1.0/instances/{quote(inst)}/snapshots/{quote(snap)}",
                   {"name": new_snap})
    else:
        server.run("POST", f"/1.0/instances/{quote(old)}", {"name": new})
    return 0


def cmd_copy(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    """``lxfs copy SRC:NAME DST:[NAME]``: LXD's migration between servers (``migrate``)."""
    from lxfs.cli.migrate import migrate  # noqa: PLC0415

    return migrate(args, config, refs, move=False)


def _config_target(args: Any, refs: list[Any]) -> tuple[str, str, list[str]]:
    """``config get/set/unset``: the remote, the instance ("" = the server) and the rest."""
    remote, name = refs[0][1], refs[0][2]
    return remote, name, list(args.args[1:])


def _config_url(name: str) -> str:
    return f"/1.0/instances/{quote(name)}" if name else "/1.0"


def cmd_config_get(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    remote, name, rest = _config_target(args, refs)
    if len(rest) != 1:
        raise CLIError("config get: REMOTE:[NAME] KEY")
    document = server_for(config, remote).get(_config_url(name))
    print((document.get("config") or {}).get(rest[0], ""))
    return 0


def cmd_config_set(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    remote, name, rest = _config_target(args, refs)
    if len(rest) == 2 and "=" not in rest[0]:
        pairs = [(rest[0], rest[1])]
    else:
        pairs = []
        for item in rest:
            key, sep, value = item.partition("=")
            if not sep:
                raise CLIError(f"config set: expected KEY=VALUE, got {item!r}")
            pairs.append((key, value))
    if not pairs:
        raise CLIError("config set: REMOTE:[NAME] KEY VALUE")
    server_for(config, remote).run("PATCH", _config_url(name), {"config": dict(pairs)})
    return 0


def cmd_config_unset(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    remote, name, rest = _config_target(args, refs)
    if len(rest) != 1:
        raise CLIError("config unset: REMOTE:[NAME] KEY")
    server = server_for(config, remote)
    document = server.get(_config_url(name))
    values = dict(document.get("config") or {})
    if rest[0] not in values:
        raise CLIError(f"Can't unset key '{rest[0]}', it's not currently set")
    del values[rest[0]]
    body = {"config": values}
    if name:
        body = {k: document[k] for k in ("architecture", "devices", "ephemeral", "profiles",
                                         "description") if k in document} | body
    server.run("PUT", _config_url(name), body)
    return 0


def cmd_config_show(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    from lxfs.cli.output import render_yaml  # noqa: PLC0415

    remote, name = refs[0][1], refs[0][2]
    document = server_for(config, remote).get(_config_url(name))
    if name:
        keys = ("architecture", "config", "devices", "ephemeral", "profiles", "stateful",
                "description")
        if args.expanded:
            document = {**document, "config": document.get("expanded_config"),
                        "devices": document.get("expanded_devices")}
        document = {k: document.get(k) for k in keys}
    else:
        document = {"config": document.get("config") or {}}
    sys.stdout.write(render_yaml(document))
    return 0


def _split_file_ref(ref: str) -> tuple[str, str]:
    name, sep, path = ref.partition("/")
    if not sep or not name:
        raise CLIError(f"Invalid path {ref!r}: expected [REMOTE:]NAME/PATH")
    return name, "/" + path


def cmd_file_push(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    if args.recursive:
        raise CLIError("file push -r to a remote is not supported yet")
    server = server_for(config, refs[0][1])
    name, path = _split_file_ref(refs[0][2])
    for source in args.sources:
        target = path
        if path.endswith("/") or len(args.sources) > 1:
            target = path.rstrip("/") + "/" + os.path.basename(source)
        st = os.stat(source)
        headers = {"X-LXD-type": "file", "X-LXD-write": "overwrite",
                   "X-LXD-mode": args.mode or f"{st.st_mode & 0o7777:04o}",
                   "X-LXD-uid": str(args.uid if args.uid is not None else 0),
                   "X-LXD-gid": str(args.gid if args.gid is not None else 0),
                   "Content-Type": "application/octet-stream"}
        with open(source, "rb") as f:
            server.request("POST", f"/1.0/instances/{quote(name)}/files?path={quote(target)}",
                           f.read(), headers=headers)
    return 0


def cmd_file_pull(args: Any, config: RemotesConfig, refs: list[Any]) -> int:
    if args.recursive:
        raise CLIError("file pull -r from a remote is not supported yet")
    for _f, remote, ref, _i in refs:
        server = server_for(config, remote)
        name, path = _split_file_ref(ref)
        status, data = server.raw("GET", f"/1.0/instances/{quote(name)}/files?path={quote(path)}")
        if status >= 400:
            import json  # noqa: PLC0415

            try:
                message = json.loads(data).get("error")
            except ValueError:
                message = None
            raise CLIError(message or f"HTTP {status}")
        target = args.target
        if target == "-":
            sys.stdout.buffer.write(data)
            continue
        if os.path.isdir(target):
            target = os.path.join(target, os.path.basename(path))
        with open(target, "wb") as f:
            f.write(data)
    return 0


HANDLERS: dict[str, Any] = {
    "list": cmd_list, "ls": cmd_list, "info": cmd_info,
    "launch": lambda a, c, r: cmd_create(a, c, r, start=True),
    "create": lambda a, c, r: cmd_create(a, c, r, start=False),
    **dict.fromkeys(("start", "stop", "restart", "freeze", "pause", "unfreeze"), cmd_state),
    "delete": cmd_delete, "rm": cmd_delete, "exec": cmd_exec,
    "image list": cmd_image_list, "image ls": cmd_image_list,
    "image copy": cmd_image_copy, "image cp": cmd_image_copy,
    "image info": cmd_image_info, "image show": cmd_image_show,
    "image delete": cmd_image_delete, "image rm": cmd_image_delete,
    "snapshot": cmd_snapshot, "restore": cmd_restore,
    "copy": cmd_copy, "cp": cmd_copy,
    **dict.fromkeys(("move", "mv", "rename"), cmd_rename),
    "config get": cmd_config_get, "config set": cmd_config_set,
    "config unset": cmd_config_unset, "config show": cmd_config_show,
    "file push": cmd_file_push, "file pull": cmd_file_pull,
}
