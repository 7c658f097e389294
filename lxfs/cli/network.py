"""``network``: managed bridges (``networks/`` on the mount) and nics of instances."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from lxfs.cli.mount import (
    CLIError,
    Mount,
    list_dirs,
    read_devices,
    read_dir_values,
    read_lines,
    read_opt,
)
from lxfs.cli.output import FORMATS, emit, natural_key, render_yaml

TYPE_CHECKING = False  # importing typing costs 2-4 ms of start-up
if TYPE_CHECKING:
    from typing import Any


def network_path(mount: Mount, name: str, must_exist: bool = True) -> Path:
    """``networks/NAME``; ``Network not found`` when missing."""
    if not name or "/" in name or name in (".", ".."):
        raise CLIError(f"Invalid network name: {name!r}")
    path = mount.root / "networks" / name
    if must_exist and not path.is_dir():
        raise CLIError(f"Network not found: {name}")
    return path


def network_record(path: Path) -> dict[str, Any]:
    """A network as LXD's API shows it."""
    return {
        "config": read_dir_values(path / "config"),
        "description": read_opt(path / "description"),
        "name": path.name,
        "type": read_opt(path / "type", "bridge"),
        "used_by": [f"/1.0/{u}" for u in read_lines(path / "used_by")],
        "managed": read_opt(path / "managed") == "true",
        "status": "Created",
        "locations": ["none"],
    }


def set_keys(mount: Mount, path: Path, pairs: dict[str, str]) -> None:
    for key, value in pairs.items():
        if not key or "/" in key:
            raise CLIError(f"Invalid key: {key!r}")
        target = path / "config" / key
        if value == "":
            try:
                os.unlink(target)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise CLIError(mount.error_message(exc, path, f"Cannot unset {key}")) from exc
            continue
        mount.write(target, value, path, messages={
            errno.EINVAL: f"Invalid value or unknown key for {key!r}"})


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise CLIError(f"Bad key=value pair: {item!r}")
        out[key] = value
    return out


def create_network(mount: Mount, name: str, config: dict[str, str],
                   description: str = "") -> None:
    """mkdir, then the given keys (a failure removes the half-made network)."""
    path = network_path(mount, name, must_exist=False)
    mount.do(lambda: os.mkdir(path), None, messages={
        errno.EEXIST: f"The network already exists: {name}",
        errno.ENOENT: "This lxfs daemon has no network plugin (no networks/ directory)"})
    try:
        if description:
            mount.write(path / "description", description, path)
        set_keys(mount, path, config)
    except CLIError:
        try:
            os.rmdir(path)
        except OSError:
            pass
        raise


def cmd_list(args: argparse.Namespace) -> int:
    mount = Mount()
    base = mount.root / "networks"
    rows, data = [], []
    for name in sorted(list_dirs(base), key=natural_key):
        rec = network_record(base / name)
        conf = rec["config"]
        state = read_opt(base / name / "state")
        rows.append([name, rec["type"], "YES", conf.get("ipv4.address", ""),
                     conf.get("ipv6.address", ""), rec["description"],
                     str(len(rec["used_by"])), "CREATED" if state else "ERRORED"])
        data.append(rec)
    emit(args.format, ["NAME", "TYPE", "MANAGED", "IPV4", "IPV6", "DESCRIPTION", "USED BY",
                       "STATE"], rows, data)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    mount = Mount()
    sys.stdout.write(render_yaml(network_record(network_path(mount, args.name))))
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    mount = Mount()
    if args.type not in ("bridge",):
        raise CLIError(f"Network type {args.type!r} is not supported (bridge)")
    create_network(mount, args.name, _pairs(args.options), args.description or "")
    print(f"Network {args.name} created")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    mount = Mount()
    path = network_path(mount, args.name)
    mount.do(lambda: os.rmdir(path), None, messages={
        errno.EBUSY: f"The network is currently in use: {args.name}"})
    print(f"Network {args.name} deleted")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    mount = Mount()
    path = network_path(mount, args.name)
    items = args.args
    if len(items) == 2 and "=" not in items[0]:
        pairs = {items[0]: items[1]}
    else:
        pairs = _pairs(items)
    set_keys(mount, path, pairs)
    return 0


def cmd_unset(args: argparse.Namespace) -> int:
    mount = Mount()
    set_keys(mount, network_path(mount, args.name), {args.key: ""})
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    mount = Mount()
    path = network_path(mount, args.name)
    print(read_opt(path / "config" / args.key))
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    """``network edit NAME``: the YAML of ``show`` in $EDITOR (or on stdin); config and
    description are replaced by what comes back."""
    from lxfs.cli.editing import edit_loop, parse_config_document

    mount = Mount()
    path = network_path(mount, args.name)

    def apply(text: str) -> None:
        config, description = parse_config_document(text)
        old = read_dir_values(path / "config")
        set_keys(mount, path, {k: "" for k in old if k not in config})
        set_keys(mount, path, {k: v for k, v in config.items() if old.get(k) != v})
        if description is not None:
            mount.write(path / "description", description, path)

    shown = {"config": read_dir_values(path / "config"),
             "description": read_opt(path / "description"), "name": args.name,
             "type": "bridge"}
    return edit_loop(render_yaml(shown), apply)


def cmd_info(args: argparse.Namespace) -> int:
    mount = Mount()
    path = network_path(mount, args.name)
    counters = read_dir_values(path / "counters")
    out = [f"Name: {args.name}", f"MAC address: {read_opt(path / 'hwaddr')}",
           f"MTU: {read_opt(path / 'mtu')}", f"State: {read_opt(path / 'state')}",
           "Type: broadcast", "", "IP addresses:"]
    for addr in read_lines(path / "addresses"):
        family = "inet6" if ":" in addr else "inet"
        scope = "link" if addr.startswith("fe80:") else "global"
        out.append(f"  {family}\t{addr} ({scope})")
    out += ["", "Network usage:",
            f"  Bytes received: {counters.get('rx_bytes', '0')}",
            f"  Bytes sent: {counters.get('tx_bytes', '0')}",
            f"  Packets received: {counters.get('rx_packets', '0')}",
            f"  Packets sent: {counters.get('tx_packets', '0')}"]
    print("\n".join(out))
    return 0


def cmd_list_leases(args: argparse.Namespace) -> int:
    mount = Mount()
    path = network_path(mount, args.name)
    rows, data = [], []
    for line in read_lines(path / "leases"):
        host, mac, address, expiry, kind = (line.split() + [""] * 5)[:5]
        host = "" if host == "-" else host
        rows.append([host, mac, address, kind.upper()])
        data.append({"hostname": host, "hwaddr": mac, "address": address, "type": kind,
                     "expiry": expiry})
    emit(args.format, ["HOSTNAME", "MAC ADDRESS", "IP ADDRESS", "TYPE"], rows, data)
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    """Add a nic on the network to an instance: device DEVICE (default: the network's name),
    interface INTERFACE (default: the next free ethN)."""
    mount = Mount()
    network_path(mount, args.network)
    inst = mount.instance(args.instance)
    device = args.device or args.network
    existing = read_devices(inst / "expanded" / "devices")
    if device in existing:
        raise CLIError(f"The device already exists: {device}")
    iface = args.interface
    if not iface:
        names = {d.get("name") for d in existing.values() if d.get("type") == "nic"}
        iface = next(f"eth{i}" for i in range(100) if f"eth{i}" not in names)
    dev = inst / "devices" / device
    mount.do(lambda: os.mkdir(dev), inst)
    for key, value in (("type", "nic"), ("network", args.network), ("name", iface)):
        mount.write(dev / key, value, inst)
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    mount = Mount()
    inst = mount.instance(args.instance)
    devices = read_devices(inst / "devices")
    names = [args.device] if args.device else [
        n for n, d in devices.items() if d.get("type") == "nic" and
        d.get("network") == args.network]
    if not names or any(n not in devices for n in names):
        raise CLIError("No device found for this network")
    for name in names:
        mount.do(lambda n=name: os.rmdir(inst / "devices" / n), inst)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``network``."""
    network = sub.add_parser("network", help="Manage networks")
    nsub = network.add_subparsers(dest="network_command", metavar="COMMAND")
    nsub.required = True

    p = nsub.add_parser("list", aliases=["ls"], help="List networks")
    p.add_argument("-f", "--format", choices=FORMATS, default="table")
    p.set_defaults(func=cmd_list)
    p = nsub.add_parser("show", help="Show a network: NAME")
    p.add_argument("name")
    p.set_defaults(func=cmd_show)
    p = nsub.add_parser("create", help="Create a network: NAME [KEY=VALUE...]")
    p.add_argument("name")
    p.add_argument("options", metavar="KEY=VALUE", nargs="*")
    p.add_argument("-t", "--type", default="bridge")
    p.add_argument("--description")
    p.set_defaults(func=cmd_create)
    p = nsub.add_parser("delete", aliases=["rm"], help="Delete a network: NAME")
    p.add_argument("name")
    p.set_defaults(func=cmd_delete)
    p = nsub.add_parser("set", help="Set keys: NAME KEY VALUE | NAME KEY=VALUE...")
    p.add_argument("name")
    p.add_argument("args", metavar="ARG", nargs="+")
    p.set_defaults(func=cmd_set)
    p = nsub.add_parser("unset", help="Unset a key: NAME KEY")
    p.add_argument("name")
    p.add_argument("key")
    p.set_defaults(func=cmd_unset)
    p = nsub.add_parser("get", help="Get a key: NAME KEY")
    p.add_argument("name")
    p.add_argument("key")
    p.set_defaults(func=cmd_get)
    p = nsub.add_parser("edit", help="Replace config and description from YAML on stdin")
    p.add_argument("name")
    p.set_defaults(func=cmd_edit)
    p = nsub.add_parser("info", help="Runtime information: NAME")
    p.add_argument("name")
    p.set_defaults(func=cmd_info)
    p = nsub.add_parser("list-leases", help="DHCP leases: NAME")
    p.add_argument("name")
    p.add_argument("-f", "--format", choices=FORMATS, default="table")
    p.set_defaults(func=cmd_list_leases)
    p = nsub.add_parser("attach", help="Attach to an instance: NETWORK INSTANCE [DEVICE] "
                        "[INTERFACE]")
    p.add_argument("network")
    p.add_argument("instance")
    p.add_argument("device", nargs="?")
    p.add_argument("interface", nargs="?")
    p.set_defaults(func=cmd_attach)
    p = nsub.add_parser("detach", help="Detach from an instance: NETWORK INSTANCE [DEVICE]")
    p.add_argument("network")
    p.add_argument("instance")
    p.add_argument("device", nargs="?")
    p.set_defaults(func=cmd_detach)
