"""``/1.0/networks``: the managed networks of the plugin that implements
``lxfs_rest_networks`` (the network plugin's bridges) and, as LXD shows them, the host's
other interfaces as unmanaged networks. Without such a plugin only the host's interfaces
are listed and creating a network is refused. Interface state is read from the kernel here
(sysfs and netlink), for managed and unmanaged networks alike."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

from lxfs.errors import NotFound, NotSupported

from .app import Context, etag, read_object, route, sync
from .http import HttpError, Request, Response
from .resources import (
    blocking,
    check_etag,
    created,
    forget,
    forget_removed,
    listing,
    string_map,
    text,
    url,
)

NET = Path("/sys/class/net")
#: host-side veths: LXD's (``veth*``) and lxfs's own (``lxf`` + 10 hex digits)
_HIDDEN = re.compile(r"^(veth.*|lxf[0-9a-f]{10})$")


def provider(ctx: Context) -> Any | None:
    """The managed networks' plugin object (see ``hookspecs.lxfs_rest_networks``)."""
    return ctx.host.hook.lxfs_rest_networks(host=ctx.host)


def _require(ctx: Context) -> Any:
    found = provider(ctx)
    if found is None:
        raise NotSupported("no plugin manages networks on this host (is the network plugin "
                           "disabled?): only host interfaces are listed")
    return found


def host_interfaces() -> list[str]:
    try:
        names = os.listdir(NET)
    except OSError:
        return []
    # the kernel's order (ifindex), as LXD lists them
    return sorted((n for n in names if not _HIDDEN.match(n)),
                  key=lambda n: (_read_int(NET / n / "ifindex"), n))


def interface_type(name: str) -> str:
    """LXD's type of an unmanaged interface."""
    base = NET / name
    if _read_int(base / "type") == 772:  # ARPHRD_LOOPBACK
        return "loopback"
    if (base / "bridge").exists():
        return "bridge"
    if Path(f"/proc/net/vlan/{name}").exists():
        return "vlan"
    if (base / "device").exists():
        return "physical"
    if (base / "bonding").exists():
        return "bond"
    return "unknown"


def _read_int(path: Path, default: int = 0) -> int:
    try:
        return int(path.read_text().strip(), 0)
    except (OSError, ValueError):
        return default


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _unmanaged_users(ctx: Context, name: str) -> list[str]:
    """Profiles and instances with a nic whose ``parent`` is this interface."""

    def uses(devices: dict[str, dict[str, str]]) -> bool:
        return any(d.get("type") == "nic" and d.get("parent") == name and
                   not d.get("network") for d in devices.values())

    users = [url("profiles", p.name) for p in ctx.host.profiles().values() if uses(p.devices)]
    users += [url("instances", i.name) for i in ctx.host.instances().values()
              if uses(i.expanded_devices)]
    return users


def unmanaged_document(ctx: Context, name: str) -> dict[str, Any]:
    kind = interface_type(name)
    return {"config": {}, "description": "", "name": name, "type": kind,
            "used_by": [] if kind == "loopback" else _unmanaged_users(ctx, name),
            "managed": False, "status": "", "locations": None}


def _documents(ctx: Context) -> list[dict[str, Any]]:
    """Managed networks first, then the host's other interfaces (blocking)."""
    mgr = provider(ctx)
    managed = mgr.names() if mgr is not None else []
    docs = [mgr.get(n) for n in managed] if mgr is not None else []
    docs += [unmanaged_document(ctx, n) for n in host_interfaces() if n not in managed]
    return docs


def network_document(ctx: Context, name: str) -> dict[str, Any]:
    """One network (blocking): 404 when neither managed nor a host interface."""
    mgr = provider(ctx)
    if mgr is not None and name in mgr.names():
        return mgr.get(name)
    if _HIDDEN.match(name) or not (NET / name).exists():
        raise NotFound("Network not found")
    return unmanaged_document(ctx, name)


def _etag_of(doc: dict[str, Any]) -> list[Any]:
    return [doc["name"], doc["managed"], doc["type"], doc["description"], doc["config"]]


async def _managed(ctx: Context, name: str) -> tuple[Any, dict[str, Any]]:
    doc = await blocking(network_document, ctx, name)
    if not doc["managed"]:
        raise HttpError(400, f"network {name} is not managed by lxfs (a host interface)")
    return _require(ctx), doc


def _lifecycle(ctx: Context, action: str, name: str, **context: Any) -> None:
    ctx.host.events.lifecycle(f"network-{action}", url("networks", name), **context)


@route("GET", "/1.0/networks")
async def list_networks(ctx: Context, request: Request) -> Response:
    docs = await blocking(_documents, ctx)
    return listing(request, docs, lambda d: url("networks", d["name"]), lambda d: d)


@route("POST", "/1.0/networks")
async def create_network(ctx: Context, request: Request) -> Response:
    body = await read_object(request)
    name = text(body.get("name"), "name")
    if not name:
        raise HttpError(400, "No name provided")
    mgr = _require(ctx)
    await blocking(mgr.create, name, text(body.get("type"), "type"),
                   text(body.get("description"), "description"),
                   string_map(body.get("config")))
    _lifecycle(ctx, "created", name)
    return created(url("networks", name))


@route("GET", "/1.0/networks/{name}")
async def get_network(ctx: Context, request: Request) -> Response:
    doc = await blocking(network_document, ctx, request.params["name"])
    return sync(doc, headers=etag(_etag_of(doc)))


@route("PUT", "/1.0/networks/{name}")
async def put_network(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    mgr, doc = await _managed(ctx, name)
    check_etag(request, _etag_of(doc))
    body = await read_object(request)
    config = string_map(body.get("config"))
    await blocking(mgr.update, name, text(body.get("description"), "description"), config)
    forget_removed(ctx, f"networks/{name}/config", doc["config"], config)
    _lifecycle(ctx, "updated", name)
    return sync(None)


@route("PATCH", "/1.0/networks/{name}")
async def patch_network(ctx: Context, request: Request) -> Response:
    """Keys in the request replace those of the same name (an empty value removes one)."""
    name = request.params["name"]
    mgr, doc = await _managed(ctx, name)
    check_etag(request, _etag_of(doc))
    body = await read_object(request)
    description = text(body["description"], "description") if "description" in body \
        else doc["description"]
    config = {**doc["config"], **string_map(body.get("config"))}
    await blocking(mgr.update, name, description, config)
    forget_removed(ctx, f"networks/{name}/config", doc["config"],
                   {k: v for k, v in config.items() if v})
    _lifecycle(ctx, "updated", name)
    return sync(None)


@route("POST", "/1.0/networks/{name}")
async def rename_network(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    mgr, _doc = await _managed(ctx, name)
    new = text((await read_object(request)).get("name"), "name")
    if not new:
        raise HttpError(400, "No name provided")
    await blocking(mgr.rename, name, new)
    forget(ctx, f"networks/{name}")
    _lifecycle(ctx, "renamed", new, old_name=name)
    return created(url("networks", new))


@route("DELETE", "/1.0/networks/{name}")
async def delete_network(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    mgr, _doc = await _managed(ctx, name)
    await blocking(mgr.delete, name)
    forget(ctx, f"networks/{name}")
    _lifecycle(ctx, "deleted", name)
    return sync(None)


@route("GET", "/1.0/networks/{name}/leases")
async def network_leases(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    mgr, _doc = await _managed(ctx, name)
    return sync(await blocking(mgr.leases, name))


@route("GET", "/1.0/networks/{name}/state")
async def network_state(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    await blocking(network_document, ctx, name)  # 404 for what is not listed
    return sync(await blocking(interface_state, name))


# --- the kernel's view of an interface --------------------------------------------------------

IFF_UP, IFF_BROADCAST, IFF_LOOPBACK, IFF_POINTOPOINT = 0x1, 0x2, 0x8, 0x10


def _scope(address: str) -> str:
    if address.startswith("127.") or address == "::1":
        return "local"
    if address.startswith(("169.254.", "fe80:")):
        return "link"
    return "global"


def interface_state(name: str) -> dict[str, Any]:
    """LXD's ``NetworkState`` of a host interface (blocking)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise NotFound(f"Network interface {name!r} not found")
        link = ipr.get_links(found[0])[0]
        addrs = ipr.get_addr(index=found[0])
    flags = link["flags"]
    kind = "unknown"
    if flags & IFF_BROADCAST:
        kind = "broadcast"
    if flags & IFF_POINTOPOINT:
        kind = "point-to-point"
    if flags & IFF_LOOPBACK:
        kind = "loopback"
    stats = link.get("stats64") or {}
    addresses = []
    for addr in addrs:
        address = addr.get("address") or ""
        addresses.append({"family": "inet6" if addr["family"] == socket.AF_INET6 else "inet",
                          "address": address, "netmask": str(addr["prefixlen"]),
                          "scope": _scope(address)})
    state: dict[str, Any] = {
        "addresses": addresses,
        "counters": {"bytes_received": stats.get("rx_bytes", 0),
                     "bytes_sent": stats.get("tx_bytes", 0),
                     "packets_received": stats.get("rx_packets", 0),
                     "packets_sent": stats.get("tx_packets", 0)},
        "hwaddr": "" if flags & IFF_LOOPBACK else link.get("address") or "",
        "mtu": link.get("mtu") or 0,
        "state": "up" if flags & IFF_UP else "down",
        "type": kind,
        "bond": None, "bridge": None, "vlan": None, "ovn": None,
    }
    base = NET / name
    if (base / "bridge").exists():
        bridge = base / "bridge"
        state["bridge"] = {
            "id": _read(bridge / "bridge_id"), "stp": _read_int(bridge / "stp_state") == 1,
            "forward_delay": _read_int(bridge / "forward_delay"),
            "vlan_default": _read_int(bridge / "default_pvid"),
            "vlan_filtering": _read_int(bridge / "vlan_filtering") == 1,
            "upper_devices": sorted(os.listdir(base / "brif")) if (base / "brif").is_dir()
            else []}
    if (base / "bonding").exists():
        bond = base / "bonding"
        state["bond"] = {
            "mode": _read(bond / "mode").split(" ")[0],
            "transmit_policy": _read(bond / "xmit_hash_policy").split(" ")[0],
            "up_delay": _read_int(bond / "updelay"), "down_delay": _read_int(bond / "downdelay"),
            "mii_frequency": _read_int(bond / "miimon"), "mii_state": _read(bond / "mii_status"),
            "lower_devices": _read(bond / "slaves").split()}
    return state
