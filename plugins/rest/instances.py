"""Instances over REST, as LXD 5.0 serves them: ``/1.0/instances`` (and its older name
``/1.0/containers``) with their state, snapshots, logs and image metadata; files are in
``files.py``.

Every change goes through the server operations the mount's files call (``create_instance``
and ``set_source`` as ``mkdir`` and ``source`` do, ``change_state`` as ``state``...), under
``Host.guarded`` like the nodes' writes, so REST and the mount see one state and the same
lifecycle events. Where LXD answers with a background operation, so does this module, and
failures it reports inside the operation are reported there; what LXD refuses at once is
refused at once. A create that fails leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from lxfs.api import write_atomic
from lxfs.errors import InvalidArgument, LxfsError, NotFound
from lxfs.model import DEFAULT, Snapshot, instance_key, split_instance_key, split_profile_key
from lxfs.nodes import File

from .app import (
    Context,
    Operation,
    check_etag,
    error,
    etag,
    read_object,
    recursion,
    route,
    sync,
)
from .http import HttpError, Request, Response
from .networks import provider
from .projects import all_projects, in_project, profile_key_in, requested_project

if TYPE_CHECKING:
    from lxfs.model import Instance, Profile

Endpoint = Callable[[Context, Request], Awaitable[Response | None]]
Devices = dict[str, dict[str, str]]

#: LXD's status and status code for each state the server reports
STATUS: dict[str, tuple[str, int]] = {
    "RUNNING": ("Running", 103), "STOPPED": ("Stopped", 102), "FROZEN": ("Frozen", 110),
    "STARTING": ("Starting", 106), "STOPPING": ("Stopping", 107),
    "FREEZING": ("Freezing", 109), "THAWED": ("Thawed", 111), "CREATING": ("Stopped", 102),
}
NEVER = "1970-01-01T00:00:00Z"  # LXD's last_used_at of an instance never started
NO_EXPIRY = "0001-01-01T00:00:00Z"  # Go's zero time: a snapshot that never expires
ACTIONS = {"start": "Starting instance", "stop": "Stopping instance",
           "restart": "Restarting instance", "freeze": "Freezing instance",
           "unfreeze": "Unfreezing instance"}
#: LXD's instance names: a host name label
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,62}$")
LOG_FILES = ("lxc.log", "console.log")


# --- routes and lookups ----------------------------------------------------------------------

def instance_route(method: str, suffix: str) -> Callable[[Endpoint], Endpoint]:
    """Register an endpoint under ``/1.0/instances{suffix}`` and ``/1.0/containers{suffix}``
    (``suffix``: ``""``, ``"/{name}"``, ``"/{name}/state"``...); both check the project
    (``?project=``) and hand the endpoint the instance's key (``p1_c1`` for ``c1`` of
    ``p1``: ``lxfs.model.instance_key``) as ``name``."""

    def register(endpoint: Endpoint) -> Endpoint:
        async def in_project(ctx: Context, request: Request) -> Response | None:
            project = requested_project(ctx, request)
            if "name" in request.params:
                request.params["name"] = instance_key(project, request.params["name"])
            return await endpoint(ctx, request)

        for prefix in ("/1.0/instances", "/1.0/containers"):
            route(method, prefix + suffix)(in_project)
        return endpoint

    return register


def requested_instance(ctx: Context, name: str) -> Instance:
    """The instance a request names, or LXD's 404."""
    inst = ctx.ops.instances.get(name)
    if inst is None:
        raise HttpError(404, "Instance not found")
    return inst


def lifecycle(ctx: Context, action: str, name: str, **context: Any) -> None:
    """A lifecycle event about an instance (those the server does not emit itself)."""
    ctx.host.events.lifecycle(action, ctx.ops.instance_url(name), **context)


def _collection(request: Request) -> str:
    """``instances`` or ``containers``: URLs answer in the words the client used."""
    return "containers" if request.path.startswith("/1.0/containers") else "instances"


def _resources(*names: str, containers: bool = True) -> dict[str, list[str]]:
    """An operation's resources; ``names``: instance keys."""
    found = {"instances": [_url("instances", n) for n in names]}
    if containers:
        found["containers"] = [_url("containers", n) for n in names]
    return found


def _url(collection: str, key: str) -> str:
    project, name = split_instance_key(key)
    return in_project(project, f"/1.0/{collection}/{name}")


def _start(ctx: Context, description: str, resources: dict[str, list[str]],
           work: Callable[[], Awaitable[Any]]) -> Response:
    async def run(_op: Operation) -> None:
        await work()

    return ctx.start_operation(Operation(description, resources=resources), run)


def _check_name(name: str) -> None:
    """LXD's rule for instance names (the server checks lxfs's own again)."""
    if "/" in name:
        raise HttpError(400, 'The character "/" is reserved for snapshots')
    if not NAME.match(name) or name.endswith("-"):
        raise HttpError(400, f"Invalid instance name: {name!r} is not a valid host name "
                             "(1-63 letters, digits and '-', starting with a letter, not "
                             "ending with '-')")


def _status(state: str) -> tuple[str, int]:
    return STATUS.get(state, ("Error", 112))


def timestamp(ts: float, never: str = NEVER) -> str:
    """RFC 3339 in UTC with nanoseconds, as LXD writes times."""
    if not ts:
        return never
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + \
        f".{int(ts % 1 * 1e9):09d}Z"


# --- request documents -----------------------------------------------------------------------

def _text(body: dict[str, Any], key: str, default: str = "") -> str:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise HttpError(400, f"{key}: expected a string")
    return value


def _flag(body: dict[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise HttpError(400, f"{key}: expected true or false")
    return value


def _string_map(body: dict[str, Any], key: str) -> dict[str, str] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise HttpError(400, f"{key}: expected an object of strings")
    return dict(value)


def _devices(body: dict[str, Any]) -> Devices | None:
    value = body.get("devices")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise HttpError(400, "devices: expected an object of devices")
    devices = {}
    for name, keys in value.items():
        if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
            raise HttpError(400, f"devices: {name}: expected an object of strings")
        devices[name] = dict(keys)
    return devices


def _profile_list(ctx: Context, body: dict[str, Any], project: str = DEFAULT
                  ) -> list[str] | None:
    """The profiles' names a request gives (checked in ``project``)."""
    value = body.get("profiles")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise HttpError(400, "profiles: expected a list of names")
    for name in value:
        if profile_key_in(ctx, project, name) not in ctx.ops.profiles:
            raise HttpError(404, f'Requested profile "{name}" doesn\'t exist')
    return list(value)


def _timeout(body: dict[str, Any]) -> int:
    value = body.get("timeout", -1)
    if value is None:
        return -1
    if isinstance(value, bool) or not isinstance(value, int):
        raise HttpError(400, "timeout: expected an integer")
    return value


def _managed(ctx: Context, key: str) -> bool:
    """A key lxfs manages itself (``volatile.*``)."""
    spec = ctx.ops.schema.instance_spec(key)
    return spec is not None and spec.readonly


# --- documents -------------------------------------------------------------------------------

def _etag_fields(inst: Instance) -> list[Any]:
    """What LXD's instance ETag covers."""
    return [inst.architecture, inst.config, inst.devices, inst.ephemeral, inst.profiles]


def expanded(config: dict[str, str], devices: Devices, profiles: list[str],
             known: dict[str, Profile]) -> tuple[dict[str, str], Devices]:
    """Config and devices with profiles applied in order, the own keys last, and ``none``
    devices masking (what the server computes for instances; here for snapshots)."""
    merged_config: dict[str, str] = {}
    merged_devices: Devices = {}
    for name in profiles:
        profile = known.get(name)
        if profile is not None:
            merged_config.update(profile.config)
            merged_devices.update({k: dict(v) for k, v in profile.devices.items()})
    merged_config.update(config)
    merged_devices.update({k: dict(v) for k, v in devices.items() if v})
    return merged_config, {k: v for k, v in merged_devices.items() if v.get("type") != "none"}


async def instance_document(ctx: Context, inst: Instance) -> dict[str, Any]:
    """LXD's ``Instance``."""
    status, code = _status(await ctx.ops.state(inst.name))
    return {
        "architecture": inst.architecture,
        "config": dict(inst.config),
        "devices": {k: dict(v) for k, v in inst.devices.items()},
        "ephemeral": inst.ephemeral,
        "profiles": [split_profile_key(p)[1] for p in inst.profiles],
        "stateful": False,
        "description": inst.description,
        "created_at": timestamp(inst.created_at),
        "expanded_config": dict(inst.expanded_config),
        "expanded_devices": {k: dict(v) for k, v in inst.expanded_devices.items()},
        "name": inst.local_name,
        "status": status,
        "status_code": code,
        "last_used_at": timestamp(inst.last_used_at),
        "location": "none",
        "type": inst.type,
        "project": inst.project,
    }


async def full_document(ctx: Context, inst: Instance,
                        state: dict[str, Any] | None = None) -> dict[str, Any]:
    """LXD's ``InstanceFull``: the instance with its state, snapshots and backups."""
    document = await instance_document(ctx, inst)
    snapshots = [snapshot_document(ctx, inst, s) for s in _snapshots_in_order(inst)]
    if state is None:
        state = await state_document(ctx, inst)
    from .backups import backup_document

    backups = [backup_document(b) for b in ctx.ops.backups.list(inst.name)]
    document.update(backups=backups or None, state=state, snapshots=snapshots or None)
    return document


async def full_documents(ctx: Context, names: list[str]) -> list[dict[str, Any]]:
    """``full_document`` of many instances, their states read together."""
    insts = [ctx.ops.instances[n] for n in names if n in ctx.ops.instances]
    states = await state_documents(ctx, insts)
    documents = []
    for inst in insts:
        if inst.name in states:
            with contextlib.suppress(NotFound):
                documents.append(await full_document(ctx, inst, states[inst.name]))
    return documents


def _snapshots_in_order(inst: Instance) -> list[Snapshot]:
    return sorted(inst.snapshots.values(), key=lambda s: s.created_at)


def snapshot_document(ctx: Context, inst: Instance, snap: Snapshot) -> dict[str, Any]:
    """LXD's ``InstanceSnapshot`` (no expiry, no stateful snapshots, size unknown: -1)."""
    config, devices = expanded(snap.config, snap.devices, snap.profiles, ctx.ops.profiles)
    return {
        "expires_at": NO_EXPIRY,
        "architecture": inst.architecture,
        "config": dict(snap.config),
        "created_at": timestamp(snap.created_at),
        "devices": {k: dict(v) for k, v in snap.devices.items()},
        "ephemeral": inst.ephemeral,
        "expanded_config": config,
        "expanded_devices": devices,
        "last_used_at": NEVER,
        "name": snap.name,
        "profiles": list(snap.profiles),
        "stateful": False,
        "size": -1,
    }


async def state_document(ctx: Context, inst: Instance) -> dict[str, Any]:
    """LXD's ``InstanceState`` of one instance (see ``state_documents``)."""
    documents = await state_documents(ctx, [inst])
    if inst.name not in documents:
        raise NotFound(f"Instance not found: {inst.name}")
    return documents[inst.name]


async def state_documents(ctx: Context, insts: list[Instance]) -> dict[str, dict[str, Any]]:
    """LXD's ``InstanceState`` by name: the server's record of the state, the runtime's
    usage, the root disk's usage where the pool keeps it cheaply (quotas), and the network:
    addresses from the plugins' ``ipv4``/``ipv6`` entries, the kernel's own view of the
    instance's network namespace for the rest. The kernel's files of all the instances are
    read in one thread trip each (usage, network), not one per instance."""
    pids = {inst.name: ctx.ops.pid_now(inst.name) for inst in insts}
    running = [name for name, pid in pids.items() if pid > 0]
    usages = await ctx.ops.usages(running)
    networks = provider(ctx)
    batch = getattr(networks, "addresses", None)
    running_insts = [inst for inst in insts if inst.name in running]

    def read_kernel() -> tuple[dict[str, ProcNet], dict[str, Addresses] | None]:
        proc_net = {name: _read_proc_net(pids[name]) for name in running}
        return proc_net, batch(running_insts) if batch is not None and running else None

    proc_net, addresses = await trio.to_thread.run_sync(read_kernel)
    documents = {}
    for inst in insts:
        try:
            status, code = _status(await ctx.ops.state(inst.name))
        except NotFound:  # deleted meanwhile: left out
            continue
        pid = pids[inst.name]
        document: dict[str, Any] = {
            "status": status, "status_code": code, "disk": await _disk_state(ctx, inst),
            "memory": {"usage": 0, "usage_peak": 0, "swap_usage": 0, "swap_usage_peak": 0},
            "network": None, "pid": pid, "processes": 0, "cpu": {"usage": 0},
        }
        if pid > 0:
            usage = usages.get(inst.name, {})
            document["memory"].update(usage=usage.get("memory", 0),
                                      usage_peak=usage.get("memory_peak", 0))
            document["processes"] = usage.get("processes", 0)
            document["cpu"]["usage"] = usage.get("cpu", 0)
            found = (addresses.get(inst.name, {}) if addresses is not None
                     else await _plugin_addresses(ctx, inst))
            document["network"] = _network_state(inst, proc_net[inst.name], found)
        documents[inst.name] = document
    return documents


async def _disk_state(ctx: Context, inst: Instance) -> dict[str, Any]:
    if inst.storage_state != "ready":
        return {}
    pool = ctx.host.pool(inst.root_pool())
    if pool is None or not pool.quotas:  # as LXD's dir driver: no usage without quotas
        return {}
    root = next((d for d, dev in inst.expanded_devices.items()
                 if dev.get("type") == "disk" and dev.get("path") == "/"), "root")
    try:
        return {root: {"usage": await ctx.ops.disk_usage(inst.name)}}
    except (LxfsError, OSError):
        return {}


async def _plugin_addresses(ctx: Context, inst: Instance) -> dict[str, list[tuple[str, str]]]:
    """``(address, interface)`` by family (``ipv4``, ``ipv6``) from the entries plugins
    give the mount's instance directories (what ``instances/NAME/ipv4`` reads)."""
    entries: dict[str, Callable[[], Any]] = {}
    for extra in ctx.host.hook.lxfs_instance_entries(host=ctx.host, instance=inst):
        entries.update(extra)
    found: dict[str, list[tuple[str, str]]] = {"ipv4": [], "ipv6": []}
    for family in found:
        node = entries[family]() if family in entries else None
        if not isinstance(node, File):
            continue
        try:
            text = (await node.read()).decode()
        except (LxfsError, OSError, UnicodeDecodeError):
            continue
        for line in text.splitlines():
            address, _, rest = line.strip().partition(" ")
            if address:
                found[family].append((address, rest.strip().strip("()")))
    return found


IPV6_SCOPES = {0x00: "global", 0x10: "local", 0x20: "link", 0x40: "site"}


#: ``(address, interface)`` pairs by family (``ipv4``, ``ipv6``)
Addresses = dict[str, list[tuple[str, str]]]
ProcNet = tuple[dict[str, list[int]], list[tuple[str, str, int, str]], list[tuple[str, int, int]]]


def _read_proc_net(pid: int) -> ProcNet:
    """The instance's network namespace as the kernel shows it in ``/proc/PID/net``:
    counters by interface, IPv6 addresses ``(iface, address, prefix, scope)`` and IPv4 routes
    ``(iface, destination, mask)``, the kernel printing addresses in host byte order.
    Blocking; what cannot be read is left out."""
    counters: dict[str, list[int]] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]:
            iface, _, data = line.partition(":")
            counters[iface.strip()] = [int(x) for x in data.split()]
    inet6 = []
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/net/if_inet6").read_text().splitlines():
            raw, _index, plen, scope, _flags, iface = line.split()
            address = str(ipaddress.IPv6Address(bytes.fromhex(raw)))
            inet6.append((iface, address, int(plen, 16),
                          IPV6_SCOPES.get(int(scope, 16), "global")))
    routes = []
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/net/route").read_text().splitlines()[1:]:
            fields = line.split()
            dest = int.from_bytes(bytes.fromhex(fields[1]), sys.byteorder)
            mask = int.from_bytes(bytes.fromhex(fields[7]), sys.byteorder)
            routes.append((fields[0], dest, mask))
    return counters, inet6, routes


def _ipv4_prefix(address: str, iface: str, routes: list[tuple[str, int, int]]) -> str:
    """The prefix length of an IPv4 address: its interface's most specific route."""
    try:
        value = int(ipaddress.IPv4Address(address))
    except ValueError:
        return ""
    best = -1
    for route_iface, dest, mask in routes:
        if route_iface == iface and mask and value & mask == dest:
            best = max(best, bin(mask).count("1"))
    return str(best) if best >= 0 else "32"


def _network_state(inst: Instance, proc_net: ProcNet, found: Addresses
                   ) -> dict[str, Any]:
    found = {"ipv4": found.get("ipv4", []), "ipv6": found.get("ipv6", [])}
    counters, inet6, routes = proc_net
    nics = {dev.get("name") or name: (name, dev) for name, dev in inst.expanded_devices.items()
            if dev.get("type") == "nic"}
    ifaces = set(counters) | {iface for family in found.values() for _a, iface in family}
    config = inst.expanded_config
    network = {}
    for iface in sorted(ifaces):
        addresses = []
        if iface == "lo":
            addresses.append({"family": "inet", "address": "127.0.0.1", "netmask": "8",
                              "scope": "local"})
        for address, where in found["ipv4"]:
            if where == iface:
                addresses.append({"family": "inet", "address": address,
                                  "netmask": _ipv4_prefix(address, iface, routes),
                                  "scope": "global"})
        for address, where in found["ipv6"]:
            if where == iface:
                plen = next((p for i, a, p, _s in inet6 if i == iface and a == address), 64)
                addresses.append({"family": "inet6", "address": address,
                                  "netmask": str(plen), "scope": "global"})
        for where, address, plen, scope in inet6:
            if where == iface and scope != "global":
                addresses.append({"family": "inet6", "address": address,
                                  "netmask": str(plen), "scope": scope})
        numbers = counters.get(iface, [])
        numbers = numbers + [0] * (16 - len(numbers))
        device_name, device = nics.get(iface, (iface, {}))
        try:
            mtu = 65536 if iface == "lo" else int(device.get("mtu") or 1500)
        except ValueError:
            mtu = 1500
        network[iface] = {
            "addresses": addresses,
            "counters": {"bytes_received": numbers[0], "bytes_sent": numbers[8],
                         "packets_received": numbers[1], "packets_sent": numbers[9],
                         "errors_received": numbers[2], "errors_sent": numbers[10],
                         "packets_dropped_outbound": numbers[11],
                         "packets_dropped_inbound": numbers[3]},
            "hwaddr": device.get("hwaddr") or config.get(f"volatile.{device_name}.hwaddr", ""),
            "host_name": device.get("host_name") or
            config.get(f"volatile.{device_name}.host_name", ""),
            "mtu": mtu,
            "state": "up",
            "type": "loopback" if iface == "lo" else "broadcast",
        }
    return network


async def _documents(ctx: Context, names: list[str],
                     render: Callable[[Context, Instance], Awaitable[dict[str, Any]]]
                     ) -> list[dict[str, Any]]:
    """Documents of many instances, rendered concurrently, in ``names``' order (an instance
    deleted meanwhile is left out)."""
    done: dict[str, dict[str, Any]] = {}

    async def one(name: str) -> None:
        inst = ctx.ops.instances.get(name)
        if inst is not None:
            with contextlib.suppress(NotFound):
                done[name] = await render(ctx, inst)

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    return [done[n] for n in names if n in done]


# --- LXD's filter syntax ---------------------------------------------------------------------

def parse_filter(text: str) -> list[tuple[str, bool, str, str, str]]:
    """``name eq c1 and not status eq Running or config.image.os eq busybox``: clauses
    ``(logical, negated, field, operator, value)``, joined left to right as LXD does;
    values may be quoted (``description eq "my box"``)."""
    words = text.split()
    clauses = []
    logical = "and"
    index = 0
    while index < len(words):
        negated = words[index].lower() == "not"
        if negated:
            index += 1
        if index + 3 > len(words):
            raise HttpError(400, f"Invalid filter: incomplete clause in {text!r}")
        field, operator, value = words[index:index + 3]
        index += 3
        if operator not in ("eq", "ne"):
            raise HttpError(400, f"Invalid filter: unknown operator {operator!r}")
        if value.startswith('"'):
            parts = [value[1:]]
            while not (parts[-1].endswith('"') and (len(parts) > 1 or len(value) > 1)):
                if index >= len(words):
                    raise HttpError(400, "Invalid filter: unterminated quote")
                parts.append(words[index])
                index += 1
            value = " ".join(parts)[:-1]
        clauses.append((logical, negated, field, operator, value))
        if index < len(words):
            logical = words[index].lower()
            if logical not in ("and", "or") or index + 1 >= len(words):
                raise HttpError(400, "Invalid filter: clauses are joined by 'and' or 'or'")
            index += 1
    return clauses


def _field(document: Any, path: str) -> Any:
    """A field of a document by dotted path; a key holding dots (``config.image.os``) is
    looked up whole in the object that holds it."""
    parts = path.split(".")
    current = document
    index = 0
    while index < len(parts):
        if not isinstance(current, dict):
            return None
        if parts[index] in current:
            current = current[parts[index]]
            index += 1
            continue
        return current.get(".".join(parts[index:]))
    return current


def _clause_matches(value: Any, wanted: str) -> bool:
    if isinstance(value, bool):
        return wanted.lower() == ("true" if value else "false")
    if isinstance(value, int | float):
        return wanted == str(value)
    if not isinstance(value, str):
        return False
    pattern = wanted if "^" in wanted or "$" in wanted else f"^{wanted}$"
    try:
        return re.search(pattern, value, re.IGNORECASE) is not None
    except re.error:
        return value.lower() == wanted.lower()


def matches(document: dict[str, Any], clauses: list[tuple[str, bool, str, str, str]]
            ) -> bool:
    result = True
    for logical, negated, field, operator, value in clauses:
        hit = _clause_matches(_field(document, field), value)
        if operator == "ne":
            hit = not hit
        if negated:
            hit = not hit
        result = (result and hit) if logical == "and" else (result or hit)
    return result


# --- /1.0/instances --------------------------------------------------------------------------

@instance_route("GET", "")
async def list_instances(ctx: Context, request: Request) -> Response:
    depth = recursion(request)
    clauses = parse_filter(request.query.get("filter", ""))
    collection = _collection(request)
    if all_projects(request):
        names = sorted(ctx.ops.instances, key=lambda k: split_instance_key(k)[::-1])
    else:
        project = requested_project(ctx, request)
        names = sorted(i.name for i in ctx.ops.project_instances(project))
    if depth == 0 and not clauses:
        return sync([_url(collection, n) for n in names])
    if depth >= 2:
        documents = await full_documents(ctx, names)
    else:
        documents = await _documents(ctx, names, instance_document)
    documents = [d for d in documents if matches(d, clauses)]
    if depth == 0:
        return sync([in_project(d["project"], f"/1.0/{collection}/{d['name']}")
                     for d in documents])
    return sync(documents)


ADJECTIVES = ("amber", "brave", "calm", "deft", "eager", "fair", "glad", "hardy", "keen",
              "lucid", "merry", "noble", "proud", "quick", "sunny", "tidy", "vivid", "witty")
ANIMALS = ("badger", "crane", "dingo", "egret", "ferret", "gecko", "heron", "ibis", "koala",
           "lemur", "marten", "newt", "otter", "puffin", "quail", "robin", "stoat", "tapir")


def _new_name(ctx: Context) -> str:
    """A free name of two words, for a create that gives none (as LXD's petnames)."""
    for _ in range(100):
        name = f"{secrets.choice(ADJECTIVES)}-{secrets.choice(ANIMALS)}"
        if name not in ctx.ops.instances:
            return name
    return f"instance-{secrets.token_hex(4)}"


def _image_source(ctx: Context, source: dict[str, Any]) -> str:
    """What the ``source`` file would be given for an image source: LXD's order is the
    fingerprint, then the alias, then a match on properties (newest image first)."""
    fingerprint = _text(source, "fingerprint")
    alias = _text(source, "alias")
    if fingerprint:
        return fingerprint  # unknown: the operation fails, as LXD's does
    if alias:
        if alias not in ctx.ops.aliases:
            raise HttpError(404, "Image alias not found")
        return alias
    properties = _string_map(source, "properties")
    if properties is not None:
        candidates = [image for image in ctx.ops.images.values()
                      if all(image.properties.get(k) == v for k, v in properties.items())]
        if not candidates:
            raise HttpError(404, "No matching image could be found")
        return max(candidates, key=lambda image: image.created_at).fingerprint
    raise HttpError(400, "Must specify one of alias, fingerprint or properties for init "
                         "from image")


def _copy_source(ctx: Context, source: dict[str, Any], project: str) -> tuple[str, str]:
    """What the ``source`` file would be given for a copy, and the source's key (in
    ``source.project``, else the target's ``project``)."""
    origin = _text(source, "source")
    if not origin:
        raise HttpError(400, "Must specify a source instance")
    source_project = _text(source, "project") or project
    if source_project not in ctx.ops.projects:
        raise HttpError(404, "Project not found")
    if _flag(source, "refresh"):
        raise HttpError(400, "refreshing a copy is not supported by lxfs: delete the "
                             "target and copy again")
    parent, _, snapshot = origin.partition("/")
    parent = instance_key(source_project, parent)
    inst = requested_instance(ctx, parent)
    if snapshot and snapshot not in inst.snapshots:
        raise HttpError(404, "Snapshot not found")
    if inst.storage_state != "ready":
        raise HttpError(400, f"instance {parent} has no root filesystem to copy")
    ref = f"instances/{inst.local_name}" + (f"/snapshots/{snapshot}" if snapshot else "")
    if source_project != project:  # the server reads instances/ in the target's project
        ref = f"projects/{source_project}/{ref}"
    if _flag(source, "instance_only") or _flag(source, "container_only"):
        ref += " --instance-only"
    return ref, parent


@instance_route("POST", "")
async def create_instance(ctx: Context, request: Request) -> Response:
    ctype = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if ctype == "application/octet-stream":  # a backup tarball (lxc import)
        from .backups import import_body

        return await import_body(ctx, request)
    body = await read_object(request)
    project = requested_project(ctx, request)
    kind = _text(body, "type")
    if kind not in ("", "container"):
        return error(400, f"lxfs runs containers only: instance type {kind!r} is not "
                          "supported")
    if _text(body, "instance_type"):
        return error(400, "instance_type is not supported by lxfs: set limits.cpu and "
                          "limits.memory instead")
    source = body.get("source") or {}
    if not isinstance(source, dict):
        return error(400, "source: expected an object")
    source_type = _text(source, "type")
    origin = ""
    remote = None
    if source_type == "image" and source.get("server"):  # pulled by the daemon first
        from .images import source_of

        remote = source_of(source)
        ref: str | None = ""
    elif source_type == "image":
        ref = _image_source(ctx, source)
    elif source_type == "copy":
        ref, origin = _copy_source(ctx, source, project)
    elif source_type == "none":
        ref = None
    elif source_type == "migration":
        return _migration_sink(ctx, body, source)
    else:
        return error(400, f"Unknown source type {source_type}")
    name = _text(body, "name") or _new_name(ctx)
    _check_name(name)
    new_key = instance_key(project, name)
    profiles = _profile_list(ctx, body, project)
    config = {k: v for k, v in (_string_map(body, "config") or {}).items()
              if not _managed(ctx, k)}  # volatile keys of a copied instance are lxfs's own
    for key, value in config.items():
        ctx.ops.schema.validate_instance_key(key, value)
    devices = _devices(body) or {}
    for device, keys in devices.items():
        ctx.ops.device_types.validate(device, keys)
    ephemeral, description = _flag(body, "ephemeral"), _text(body, "description")

    async def create(op: Operation) -> None:
        nonlocal ref
        if remote is not None:  # as LXD: the image is in the cache before the instance
            from .images import progress_reporter

            image = await ctx.ops.pull_image(
                *remote, cached=True, auto_update=ctx.ops.auto_update_cached(),
                progress=progress_reporter(op))
            ref = image.fingerprint
        await ctx.host.guarded("", ctx.ops.create_instance(
            name, profiles=profiles, config=config, ephemeral=ephemeral,
            description=description, devices=devices, project=project))
        if ref is None:
            return
        try:
            await ctx.host.guarded(new_key, ctx.ops.set_source(new_key, ref))
        except BaseException:
            with trio.CancelScope(shield=True):
                await _discard_unfinished(ctx, new_key)
            raise

    names = (new_key, origin) if origin else (new_key,)
    return ctx.start_operation(Operation("Creating instance", resources=_resources(*names)),
                               create)


async def _discard_unfinished(ctx: Context, name: str) -> None:
    """Remove the record of a create whose root filesystem could not be made."""
    inst = ctx.ops.instances.get(name)
    if inst is not None and not inst.storage_state:
        with contextlib.suppress(LxfsError):
            await ctx.ops.delete_instance(name)


# --- /1.0/instances/NAME ---------------------------------------------------------------------

@instance_route("GET", "/{name}")
async def get_instance(ctx: Context, request: Request) -> Response:
    inst = requested_instance(ctx, request.params["name"])
    render = full_document if recursion(request) > 0 else instance_document
    return sync(await render(ctx, inst), headers=etag(_etag_fields(inst)))


@instance_route("PUT", "/{name}")
async def put_instance(ctx: Context, request: Request) -> Response:
    """Replace the configuration (one change, all or nothing), or restore a snapshot."""
    name = request.params["name"]
    inst = requested_instance(ctx, name)
    check_etag(request, _etag_fields(inst))
    body = await read_object(request)
    restore = _text(body, "restore")
    if restore:
        return _restore(ctx, name, restore, _flag(body, "stateful"))
    config = _string_map(body, "config") or {}
    devices = _devices(body) or {}
    profiles = _profile_list(ctx, body, inst.project) or []
    description, ephemeral = _text(body, "description"), _flag(body, "ephemeral")

    async def update() -> None:
        await ctx.host.guarded(name, ctx.ops.update_instance(
            name, config=config, devices=devices, profiles=profiles,
            description=description, ephemeral=ephemeral))

    return _start(ctx, "Updating instance", _resources(name), update)


def _restore(ctx: Context, name: str, snapshot: str, stateful: bool) -> Response:
    if stateful:
        return error(400, "stateful snapshots are not supported by lxfs")
    parent, _, own = snapshot.rpartition("/")
    if parent not in ("", name):
        return error(400, f"snapshot {snapshot} is not a snapshot of {name}")

    async def restore() -> None:
        inst = requested_instance(ctx, name)
        if own not in inst.snapshots:
            raise NotFound(f"Snapshot {name}/{own} does not exist")
        await ctx.host.guarded(name, ctx.ops.restore_snapshot(name, own))

    return _start(ctx, "Restoring snapshot", _resources(name), restore)


@instance_route("PATCH", "/{name}")
async def patch_instance(ctx: Context, request: Request) -> Response:
    """Merge into the configuration: given keys and devices replace theirs, the rest stay
    (one change, all or nothing)."""
    name = request.params["name"]
    inst = requested_instance(ctx, name)
    check_etag(request, _etag_fields(inst))
    body = await read_object(request)
    if _text(body, "restore"):
        return error(400, "Can't call PATCH in restore mode")
    config = _string_map(body, "config")
    devices = _devices(body)
    profiles = _profile_list(ctx, body, inst.project)
    description = _text(body, "description") if "description" in body else None
    ephemeral = _flag(body, "ephemeral") if "ephemeral" in body else None
    if config is not None:
        config = {k: v for k, v in inst.config.items() if not _managed(ctx, k)} | config
    if devices is not None:
        devices = {k: dict(v) for k, v in inst.devices.items()} | devices
    await ctx.host.guarded(name, ctx.ops.update_instance(
        name, config=config, devices=devices, profiles=profiles, description=description,
        ephemeral=ephemeral))
    return sync(None)


@instance_route("DELETE", "/{name}")
async def delete_instance(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    requested_instance(ctx, name)
    if await ctx.ops.state(name) not in ("STOPPED", "CREATING"):
        return error(400, "Instance is running")

    async def delete() -> None:
        await ctx.host.guarded(name, ctx.ops.delete_instance(name))

    return _start(ctx, "Deleting instance", _resources(name), delete)


@instance_route("POST", "/{name}")
async def post_instance(ctx: Context, request: Request) -> Response:
    """Rename; with ``migration`` and a ``pool``, move the root volume to that pool."""
    name = request.params["name"]
    inst = requested_instance(ctx, name)
    body = await read_object(request)
    new = _text(body, "name") or inst.local_name
    _check_name(new)
    target = _text(body, "project") or inst.project
    if target not in ctx.ops.projects:
        return error(404, "Project not found")
    if _flag(body, "migration") and not _text(body, "pool"):
        return _migration_source(ctx, name, body)
    if _flag(body, "migration"):
        pool = _text(body, "pool")
        if body.get("target"):
            return error(400, "lxfs is not a cluster: there is no target member")
        renamed = instance_key(target, new) != name
        if renamed and instance_key(target, new) in ctx.ops.instances:
            return error(409, f'Name "{new}" already in use')

        async def move() -> None:
            await ctx.host.guarded(name, ctx.ops.move_to_pool(name, pool))
            if renamed:
                await ctx.host.guarded(name, ctx.ops.rename_instance(name, new, target))

        return _start(ctx, "Migrating instance", _resources(name), move)
    if instance_key(target, new) in ctx.ops.instances:
        return error(409, f'Name "{new}" already in use')

    async def rename() -> None:
        await ctx.host.guarded(name, ctx.ops.rename_instance(name, new, target))

    return _start(ctx, "Renaming instance", _resources(name), rename)


# --- migration between hosts (LXD's protocol: migration/) ------------------------------------

def _migration_source(ctx: Context, name: str, body: dict[str, Any], snapshot: str = ""
                      ) -> Response:
    """``POST /1.0/instances/NAME`` (or ``.../snapshots/SNAP``: that snapshot as a new
    instance) with ``migration``: a websocket operation the target connects to (pull), or
    that dials the ``target`` (push)."""
    from .migration import LIVE_REFUSAL, Source

    inst = requested_instance(ctx, name)
    if _flag(body, "live"):
        return error(400, LIVE_REFUSAL)
    if inst.storage_state != "ready":
        return error(400, f"instance {name} has no root filesystem to migrate")
    target = body.get("target")
    if target is not None and not isinstance(target, dict):
        return error(400, "target: expected an object")
    instance_only = _flag(body, "instance_only") or _flag(body, "container_only")
    op = Operation("Migrating instance", "task" if target else "websocket",
                   resources=_resources(name))
    source = Source(ctx, op, name, instance_only or bool(snapshot), target or None, snapshot)
    op.metadata = source.metadata() or None
    return ctx.start_operation(op, source.run)


def _migration_sink(ctx: Context, body: dict[str, Any], source: dict[str, Any]) -> Response:
    """``POST /1.0/instances`` with ``source.type: migration`` (pull or push; ``refresh``
    brings an existing copy up to date). A failure leaves no instance and no volume."""
    from .migration import LIVE_REFUSAL, Sink

    mode = _text(source, "mode", "pull")
    if mode not in ("pull", "push"):
        return error(400, f"Unknown migration mode {mode!r}")
    if _flag(source, "live"):
        return error(400, LIVE_REFUSAL)
    name = _text(body, "name")
    if not name:
        return error(400, "A name is required for a migration")
    _check_name(name)
    refresh = _flag(source, "refresh")
    existing = ctx.ops.instances.get(name)
    if existing is not None and not refresh:
        return error(409, "Instance name already in use")
    if existing is not None and await_state_sync(ctx, name):
        return error(400, "Cannot refresh a running instance")
    refresh = existing is not None
    profiles = _profile_list(ctx, body)
    config = {k: v for k, v in (_string_map(body, "config") or {}).items()
              if not k.startswith("volatile.")}
    for key, value in config.items():
        ctx.ops.schema.validate_instance_key(key, value)
    devices = _local_root_pool(ctx, _devices(body) or {}, profiles)
    for device, keys in devices.items():
        ctx.ops.device_types.validate(device, keys)
    ephemeral, description = _flag(body, "ephemeral"), _text(body, "description")
    architecture = _text(body, "architecture")
    op = Operation("Creating instance", "websocket" if mode == "push" else "task",
                   resources=_resources(name))
    sink = Sink(ctx, op, name, source, refresh)
    op.metadata = sink.metadata()

    async def receive(fill: Callable[[Any], Awaitable[list[Snapshot]]]) -> None:
        if refresh:
            inst = requested_instance(ctx, name)
            pool = ctx.ops.pool_of(inst)
            await ctx.host.guarded(name, ctx.ops.refresh_instance(name, lambda: fill(pool)))
            return
        await ctx.host.guarded("", ctx.ops.create_instance(
            name, profiles=profiles, config=config, ephemeral=ephemeral,
            description=description, devices=devices))
        if architecture:
            ctx.ops.instances[name].architecture = architecture
        try:
            await ctx.host.guarded(name, ctx.ops.receive_instance(name, fill))
        except BaseException:
            with trio.CancelScope(shield=True):
                await _discard_unfinished(ctx, name)
            raise

    return ctx.start_operation(op, lambda _op: sink.run(receive))


def _local_root_pool(ctx: Context, devices: Devices, profiles: list[str] | None) -> Devices:
    """A root disk naming a pool this host lacks takes the profiles' pool instead (or
    ``default``), as LXD's ``instanceFindStoragePool``."""
    for name, dev in list(devices.items()):
        if dev.get("type") != "disk" or dev.get("path") != "/" or not dev.get("pool") or \
                ctx.host.pool(dev["pool"]) is not None:
            continue
        _config, merged = expanded({}, {}, ["default"] if profiles is None else profiles,
                                   ctx.ops.profiles)
        fallback = next((d.get("pool", "") for d in merged.values()
                         if d.get("type") == "disk" and d.get("path") == "/"), "")
        devices[name] = {**dev, "pool": fallback or "default"}
    return devices


def await_state_sync(ctx: Context, name: str) -> bool:
    """Whether an instance runs now (the server's own record, no wait)."""
    return ctx.ops.pid_now(name) > 0


# --- state -----------------------------------------------------------------------------------

@instance_route("GET", "/{name}/state")
async def get_state(ctx: Context, request: Request) -> Response:
    inst = requested_instance(ctx, request.params["name"])
    return sync(await state_document(ctx, inst))


@instance_route("PUT", "/{name}/state")
async def put_state(ctx: Context, request: Request) -> Response:
    """``start``, ``stop`` (``force``, or ``timeout`` seconds before a kill; -1: the
    instance's ``boot.host_shutdown_timeout``), ``restart``, ``freeze``, ``unfreeze``."""
    name = request.params["name"]
    body = await read_object(request)
    requested_instance(ctx, name)
    action = _text(body, "action")
    if action not in ACTIONS:
        return error(400, f"Unknown action: '{action}'")
    if _flag(body, "stateful"):
        return error(400, "stateful start and stop are not supported by lxfs (the running "
                          "state cannot be saved)")
    force, timeout = _flag(body, "force"), _timeout(body)
    quick = force or timeout == 0

    async def change() -> None:
        state = await ctx.ops.state(name)
        if action == "start" and state != "STOPPED":
            raise InvalidArgument("The instance is already running")
        if action == "stop" and state == "STOPPED":
            raise InvalidArgument("The instance is already stopped")
        if action == "stop":
            words = "kill" if quick else "stop" if timeout < 0 else f"stop {timeout}"
        elif action == "restart" and quick:  # LXD's forced restart: a kill, then a start
            await ctx.host.guarded(name, ctx.ops.change_state(name, "kill"))
            words = "start"
        else:
            words = action
        await ctx.host.guarded(name, ctx.ops.change_state(name, words))

    return _start(ctx, ACTIONS[action], _resources(name, containers=False), change)


# --- snapshots -------------------------------------------------------------------------------

def _requested_snapshot(ctx: Context, name: str, snapshot: str) -> tuple[Instance, Snapshot]:
    inst = requested_instance(ctx, name)
    snap = inst.snapshots.get(snapshot)
    if snap is None:
        raise HttpError(404, "Snapshot not found")
    return inst, snap


def _next_snapshot_name(inst: Instance) -> str:
    """LXD's default: ``snapN``, one more than the highest N taken."""
    taken = [int(m.group(1)) for s in inst.snapshots
             if (m := re.fullmatch(r"snap(\d+)", s)) is not None]
    return f"snap{max(taken) + 1 if taken else 0}"


def _no_expiry(body: dict[str, Any]) -> bool:
    value = body.get("expires_at")
    return value in (None, "", NO_EXPIRY) or (isinstance(value, str) and
                                              value.startswith("0001-01-01T00:00:00"))


@instance_route("GET", "/{name}/snapshots")
async def list_snapshots(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    inst = requested_instance(ctx, name)
    snapshots = _snapshots_in_order(inst)
    if recursion(request):
        return sync([snapshot_document(ctx, inst, s) for s in snapshots])
    collection = _collection(request)
    return sync([f"/1.0/{collection}/{name}/snapshots/{s.name}" for s in snapshots])


@instance_route("POST", "/{name}/snapshots")
async def create_snapshot(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    inst = requested_instance(ctx, name)
    body = await read_object(request)
    if _flag(body, "stateful"):
        return error(400, "stateful snapshots are not supported by lxfs")
    if not _no_expiry(body):
        return error(400, "snapshot expiry is not supported by lxfs")
    snapshot = _text(body, "name") or _next_snapshot_name(inst)
    if "/" in snapshot or " " in snapshot:
        return error(400, f"Invalid snapshot name: {snapshot!r}")

    async def take() -> None:
        await ctx.host.guarded(name, ctx.ops.create_snapshot(name, snapshot))

    return _start(ctx, "Snapshotting instance", _resources(name), take)


@instance_route("GET", "/{name}/snapshots/{snapshot}")
async def get_snapshot(ctx: Context, request: Request) -> Response:
    inst, snap = _requested_snapshot(ctx, request.params["name"], request.params["snapshot"])
    return sync(snapshot_document(ctx, inst, snap), headers=etag([NO_EXPIRY]))


async def _update_snapshot(ctx: Context, request: Request) -> Response:
    """Only ``expires_at`` is writable, and lxfs keeps no expiry: accepted when it asks for
    none."""
    name, snapshot = request.params["name"], request.params["snapshot"]
    _requested_snapshot(ctx, name, snapshot)
    check_etag(request, [NO_EXPIRY])
    body = await read_object(request)
    if not _no_expiry(body):
        return error(400, "snapshot expiry is not supported by lxfs")

    async def nothing() -> None:
        return None

    return _start(ctx, "Updating snapshot", _resources(name), nothing)


instance_route("PUT", "/{name}/snapshots/{snapshot}")(_update_snapshot)
instance_route("PATCH", "/{name}/snapshots/{snapshot}")(_update_snapshot)


@instance_route("DELETE", "/{name}/snapshots/{snapshot}")
async def delete_snapshot(ctx: Context, request: Request) -> Response:
    name, snapshot = request.params["name"], request.params["snapshot"]
    _requested_snapshot(ctx, name, snapshot)

    async def delete() -> None:
        await ctx.host.guarded(name, ctx.ops.delete_snapshot(name, snapshot))

    return _start(ctx, "Deleting snapshot", _resources(name), delete)


@instance_route("POST", "/{name}/snapshots/{snapshot}")
async def rename_snapshot(ctx: Context, request: Request) -> Response:
    name, snapshot = request.params["name"], request.params["snapshot"]
    inst, _snap = _requested_snapshot(ctx, name, snapshot)
    body = await read_object(request)
    if _flag(body, "migration"):  # a copy of the snapshot to another host
        return _migration_source(ctx, name, body, snapshot)
    new = _text(body, "name")
    if not new or "/" in new or " " in new:
        return error(400, f"Invalid snapshot name: {new!r}")
    if new in inst.snapshots:
        return error(409, f"Name '{name}/{new}' already in use")

    async def rename() -> None:
        await ctx.host.guarded(name, ctx.ops.rename_snapshot(name, snapshot, new))

    return _start(ctx, "Renaming snapshot", _resources(name), rename)


# --- logs ------------------------------------------------------------------------------------

def _valid_log_name(name: str) -> bool:
    """LXD's rule for log file names, and lxfs's ``console.log``."""
    return name in ("lxc.log", "lxc.conf", "qemu.log", "console.log") or \
        name.startswith(("migration_", "snapshot_", "exec_"))


@instance_route("GET", "/{name}/logs")
async def list_logs(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    requested_instance(ctx, name)
    collection = _collection(request)
    return sync([f"/1.0/{collection}/{name}/logs/{f}" for f in LOG_FILES])


@instance_route("GET", "/{name}/logs/{file}")
async def get_log(ctx: Context, request: Request) -> Response:
    """``lxc.log`` (the LXC log of the last start) and ``console.log`` (what the container
    wrote to its console)."""
    name, file = request.params["name"], request.params["file"]
    inst = requested_instance(ctx, name)
    if not _valid_log_name(file):
        return error(400, f"log file name {file} not valid")
    if file not in LOG_FILES:
        return error(404, "not found")
    runtime = ctx.ops.runtime
    read = runtime.log if file == "lxc.log" else runtime.console_log
    text = await trio.to_thread.run_sync(read, inst)
    lifecycle(ctx, "instance-log-retrieved", name, path=file)
    return Response(200, text.encode(), [("Content-Disposition", f"inline;filename={file}")],
                    content_type="application/octet-stream")


@instance_route("DELETE", "/{name}/logs/{file}")
async def delete_log(ctx: Context, request: Request) -> Response:
    name, file = request.params["name"], request.params["file"]
    requested_instance(ctx, name)
    if not _valid_log_name(file):
        return error(400, f"log file name {file} not valid")
    if file in ("lxc.log", "lxc.conf"):
        return error(400, "lxc.log and lxc.conf may not be deleted")
    return error(404, "not found")


# --- image metadata and templates ------------------------------------------------------------

def _volume(ctx: Context, name: str) -> Path:
    """The instance's volume directory (``metadata.yaml``, ``templates/``, ``rootfs/``):
    the daemon's own files, out of the container's reach."""
    inst = requested_instance(ctx, name)
    if inst.storage_state != "ready":
        raise HttpError(400, f"instance {name} has no root filesystem yet")
    return ctx.host.rootfs(inst).parent


def _metadata_document(raw: Any) -> dict[str, Any]:
    """LXD's ``ImageMetadata`` from what ``metadata.yaml`` holds (absent fields: Go's zero
    values, as LXD shows them)."""
    data = raw if isinstance(raw, dict) else {}

    def number(key: str) -> int:
        value = data.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    templates = None
    if isinstance(data.get("templates"), dict):
        templates = {}
        for path, spec in data["templates"].items():
            spec = spec if isinstance(spec, dict) else {}
            templates[str(path)] = {
                "when": [str(w) for w in spec.get("when") or []],
                "create_only": bool(spec.get("create_only", False)),
                "template": str(spec.get("template") or ""),
                "properties": {str(k): str(v) for k, v in
                               (spec.get("properties") or {}).items()},
            }
    properties = data.get("properties")
    return {
        "architecture": str(data.get("architecture") or ""),
        "creation_date": number("creation_date"),
        "expiry_date": number("expiry_date"),
        "properties": {str(k): str(v) for k, v in properties.items()}
        if isinstance(properties, dict) else None,
        "templates": templates,
    }


def _checked_metadata(body: dict[str, Any]) -> dict[str, Any]:
    """A written metadata document, checked field by field."""
    document: dict[str, Any] = {"architecture": _text(body, "architecture")}
    for key in ("creation_date", "expiry_date"):
        value = body.get(key, 0) or 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise HttpError(400, f"{key}: expected an integer (unix time)")
        document[key] = value
    document["properties"] = _string_map(body, "properties") or {}
    templates = body.get("templates") or {}
    if not isinstance(templates, dict):
        raise HttpError(400, "templates: expected an object")
    document["templates"] = {}
    for path, spec in templates.items():
        if not isinstance(spec, dict):
            raise HttpError(400, f"templates: {path}: expected an object")
        when = spec.get("when") or []
        if not isinstance(when, list) or any(w not in ("create", "copy", "start")
                                             for w in when):
            raise HttpError(400, f"templates: {path}: when is a list of create, copy, start")
        document["templates"][path] = {
            "when": list(when), "create_only": _flag(spec, "create_only"),
            "template": _template_name(_text(spec, "template")),
            "properties": _string_map(spec, "properties") or {},
        }
    return document


def _read_metadata(volume: Path) -> Any:
    import yaml

    try:
        fd = os.open(volume / "metadata.yaml", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    with os.fdopen(fd, "rb") as f:
        return yaml.safe_load(f.read(16 << 20)) or {}


def _write_metadata(volume: Path, document: dict[str, Any]) -> None:
    import yaml

    write_atomic(volume / "metadata.yaml", yaml.safe_dump(document, sort_keys=True).encode())


@instance_route("GET", "/{name}/metadata")
async def get_metadata(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    volume = _volume(ctx, name)
    document = _metadata_document(await trio.to_thread.run_sync(_read_metadata, volume))
    lifecycle(ctx, "instance-metadata-retrieved", name)
    return sync(document, headers=etag(document))


async def _set_metadata(ctx: Context, request: Request, merge: bool) -> Response:
    name = request.params["name"]
    volume = _volume(ctx, name)
    current = _metadata_document(await trio.to_thread.run_sync(_read_metadata, volume))
    check_etag(request, current)
    body = await read_object(request)
    if merge:
        body = {k: v for k, v in current.items() if v is not None} | body
    document = _checked_metadata(body)
    await trio.to_thread.run_sync(_write_metadata, volume, document)
    lifecycle(ctx, "instance-metadata-updated", name)
    return sync(None)


@instance_route("PUT", "/{name}/metadata")
async def put_metadata(ctx: Context, request: Request) -> Response:
    return await _set_metadata(ctx, request, merge=False)


@instance_route("PATCH", "/{name}/metadata")
async def patch_metadata(ctx: Context, request: Request) -> Response:
    return await _set_metadata(ctx, request, merge=True)


def _template_name(name: str) -> str:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise HttpError(400, "Invalid template filename")
    return name


def _list_templates(volume: Path) -> list[str]:
    try:
        with os.scandir(volume / "templates") as entries:
            return sorted(e.name for e in entries if e.is_file(follow_symlinks=False))
    except FileNotFoundError:
        return []


def _read_template(volume: Path, name: str) -> bytes | None:
    try:
        fd = os.open(volume / "templates" / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, OSError):
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _write_template(volume: Path, name: str, data: bytes) -> None:
    directory = volume / "templates"
    directory.mkdir(mode=0o711, exist_ok=True)
    write_atomic(directory / name, data)


@instance_route("GET", "/{name}/metadata/templates")
async def get_templates(ctx: Context, request: Request) -> Response:
    """The template files, or one template's content (``?path=NAME``)."""
    name = request.params["name"]
    volume = _volume(ctx, name)
    path = request.query.get("path", "")
    if not path:
        return sync(await trio.to_thread.run_sync(_list_templates, volume))
    data = await trio.to_thread.run_sync(_read_template, volume, _template_name(path))
    if data is None:
        return error(404, f'Template "{path}" not found')
    return Response(200, data, [("Content-Disposition", f"inline;filename={path}")],
                    content_type="application/octet-stream")


@instance_route("POST", "/{name}/metadata/templates")
async def post_template(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    volume = _volume(ctx, name)
    path = request.query.get("path", "")
    if not path:
        return error(400, "missing path argument")
    data = await request.body()
    await trio.to_thread.run_sync(_write_template, volume, _template_name(path), data)
    lifecycle(ctx, "instance-metadata-template-created", name, path=path)
    return sync(None)


@instance_route("DELETE", "/{name}/metadata/templates")
async def delete_template(ctx: Context, request: Request) -> Response:
    name = request.params["name"]
    volume = _volume(ctx, name)
    path = request.query.get("path", "")
    if not path:
        return error(400, "missing path argument")
    try:
        await trio.to_thread.run_sync(os.unlink, volume / "templates" / _template_name(path))
    except FileNotFoundError:
        return error(404, f'Template "{path}" not found')
    lifecycle(ctx, "instance-metadata-template-deleted", name, path=path)
    return sync(None)


from . import files  # noqa: E402, F401 - registers the file routes
