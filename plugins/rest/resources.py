"""``/1.0/resources``: the host's CPUs, memory, disks, network cards and system, in LXD's
document (``lxc info --resources``), read from /proc and /sys in a worker thread on each
request (a few hundred small reads, no subprocess). GPUs, USB and PCI devices are listed
empty.

Also the helpers the other resource modules of the bridge share (``profiles``, ``networks``,
``storage``, ``projects``): URLs, ETag checks, request values.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import trio

from .app import Context, check_etag, etag, route, sync  # noqa: F401 - check_etag re-exported
from .http import HttpError, Request, Response

T = TypeVar("T")

# --- helpers shared by the resource modules ---------------------------------------------------


def url(*parts: str) -> str:
    """``/1.0/PART/PART...``, each part escaped as LXD escapes names."""
    return "/1.0/" + "/".join(quote(p, safe="") for p in parts)


def used_by_urls(paths: Iterable[str]) -> list[str]:
    """The server's ``instances/NAME``, ``profiles/NAME`` as LXD's ``/1.0/...`` URLs
    (``projects/P/instances/NAME``: ``/1.0/instances/NAME?project=P``)."""
    found = []
    for path in paths:
        parts = path.split("/")
        if len(parts) == 4 and parts[0] == "projects":
            found.append(f"{url(parts[2], parts[3])}?project={parts[1]}")
        else:
            found.append(url(*path.split("/", 1)))
    return found


def text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HttpError(400, f"{what}: expected a string")
    return value


def _scalar(value: Any, what: str) -> str:
    """A config value: a string (booleans and numbers, which Go's decoder would refuse,
    are taken as their text)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise HttpError(400, f"{what}: expected a string")


def string_map(value: Any, what: str = "config") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HttpError(400, f"{what}: expected an object of strings")
    return {str(k): _scalar(v, f"{what}.{k}") for k, v in value.items()}


def devices_map(value: Any) -> dict[str, dict[str, str]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HttpError(400, "devices: expected an object of devices")
    return {str(name): string_map(dev, f"devices.{name}") for name, dev in value.items()}


def listing(request: Request, items: Iterable[T], url_of: Callable[[T], str],
            document_of: Callable[[T], Any]) -> Response:
    """A collection: URLs, or the documents with ``?recursion=1``."""
    from .app import recursion

    if recursion(request):
        return sync([document_of(item) for item in items])
    return sync([url_of(item) for item in items])


def created(location: str) -> Response:
    """LXD's answer to a creation: 201, an empty sync body, the new resource's URL."""
    return sync(None, 201, [("Location", location)])


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    return await trio.to_thread.run_sync(fn, *args)


def forget(ctx: Context, *paths: str) -> None:
    """Entries of the mount that a change removed (``profiles/web/devices/eth1``): the
    kernel drops them now rather than when its cache expires."""
    for path in paths:
        ctx.ops.on_change("entry-deleted", path)


def forget_removed(ctx: Context, prefix: str, before: dict[str, Any],
                   after: dict[str, Any]) -> None:
    """The entries under ``prefix`` of keys (or devices and their keys) that went."""
    for key, value in before.items():
        if key not in after:
            forget(ctx, f"{prefix}/{key}")
        elif isinstance(value, dict) and isinstance(after[key], dict):
            forget_removed(ctx, f"{prefix}/{key}", value, after[key])


# --- /1.0/resources ---------------------------------------------------------------------------

SYS = Path("/sys")
CPU_DIR = SYS / "devices" / "system" / "cpu"
NODE_DIR = SYS / "devices" / "system" / "node"


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return default


def _int(path: Path, default: int = 0) -> int:
    try:
        return int(_read(path), 0)
    except ValueError:
        return default


def _cpu_list(text_: str) -> set[int]:
    """``0-3,8`` as a set."""
    found: set[int] = set()
    for part in text_.split(","):
        lo, sep, hi = part.strip().partition("-")
        with contextlib.suppress(ValueError):
            found.update(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return found


def _numa_node(path: Path) -> int:
    for entry in path.glob("node[0-9]*"):
        return int(entry.name[4:])
    return 0


def _cpuinfo() -> dict[int, dict[str, str]]:
    blocks: dict[int, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in _read(Path("/proc/cpuinfo")).splitlines() + [""]:
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip()] = value.strip()
        elif current:
            with contextlib.suppress(KeyError, ValueError):
                blocks[int(current["processor"])] = current
            current = {}
    return blocks


def _size(text_: str) -> int:
    """``32K``, ``1024K``, ``8M`` as bytes."""
    match = re.fullmatch(r"(\d+)([KMG]?)", text_)
    if not match:
        return 0
    return int(match[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[match[2]]


def cpu_resources() -> dict[str, Any]:
    info = _cpuinfo()
    online = _cpu_list(_read(CPU_DIR / "online")) or set(info)
    isolated = _cpu_list(_read(CPU_DIR / "isolated"))
    cpus = sorted(int(p.name[3:]) for p in CPU_DIR.glob("cpu[0-9]*"))
    sockets: dict[int, dict[str, Any]] = {}
    for n in cpus:
        topo = CPU_DIR / f"cpu{n}" / "topology"
        socket_id = max(_int(topo / "physical_package_id"), 0)
        core_id = _int(topo / "core_id", n)
        proc = info.get(n, {})
        socket = sockets.setdefault(socket_id, {
            "name": proc.get("model name", ""), "vendor": proc.get("vendor_id", ""),
            "socket": socket_id, "cache": _caches(CPU_DIR / f"cpu{n}" / "cache"),
            "cores": {}, "_freq": [], "_min": 0, "_max": 0})
        core = socket["cores"].setdefault((max(_int(topo / "die_id"), 0), core_id), {
            "core": core_id, "die": max(_int(topo / "die_id"), 0), "threads": [],
            "frequency": 0})
        freq_dir = CPU_DIR / f"cpu{n}" / "cpufreq"
        mhz = _int(freq_dir / "scaling_cur_freq") // 1000
        if not mhz:
            with contextlib.suppress(ValueError):
                mhz = int(float(proc.get("cpu MHz", "0")))
        core["frequency"] = max(core["frequency"], mhz)
        if mhz:
            socket["_freq"].append(mhz)
        socket["_min"] = socket["_min"] or _int(freq_dir / "cpuinfo_min_freq") // 1000
        socket["_max"] = max(socket["_max"], _int(freq_dir / "cpuinfo_max_freq") // 1000)
        core["threads"].append({"id": n, "numa_node": _numa_node(CPU_DIR / f"cpu{n}"),
                                "thread": len(core["threads"]), "online": n in online,
                                "isolated": n in isolated})
    documents = []
    for socket_id in sorted(sockets):
        socket = sockets[socket_id]
        freqs, low, high = socket.pop("_freq"), socket.pop("_min"), socket.pop("_max")
        socket["cores"] = [socket["cores"][k] for k in sorted(socket["cores"])]
        for key, value in (("frequency", sum(freqs) // len(freqs) if freqs else 0),
                           ("frequency_minimum", low), ("frequency_turbo", high)):
            if value:
                socket[key] = value
        for key in ("name", "vendor", "cache"):
            if not socket[key]:
                del socket[key]
        documents.append(socket)
    return {"architecture": platform.machine(), "sockets": documents, "total": len(cpus)}


def _caches(path: Path) -> list[dict[str, Any]]:
    caches = []
    for index in sorted(path.glob("index[0-9]*")):
        caches.append({"level": _int(index / "level"), "type": _read(index / "type"),
                       "size": _size(_read(index / "size"))})
    return caches


def _meminfo(path: Path) -> dict[str, int]:
    found = {}
    for line in _read(path).splitlines():
        words = line.replace(":", " ").split()
        if words and words[0] == "Node":
            words = words[2:]
        if len(words) >= 2 and words[1].isdigit():
            found[words[0]] = int(words[1]) * (1024 if words[-1] == "kB" else 1)
    return found


def memory_resources() -> dict[str, Any]:
    mem = _meminfo(Path("/proc/meminfo"))
    page = mem.get("Hugepagesize", 0)  # bytes; HugePages_* count pages
    total = mem.get("MemTotal", 0)
    document: dict[str, Any] = {
        "hugepages_total": mem.get("HugePages_Total", 0) * page,
        "hugepages_used": (mem.get("HugePages_Total", 0) - mem.get("HugePages_Free", 0)) * page,
        "hugepages_size": page,
        "used": total - mem.get("MemAvailable", mem.get("MemFree", 0)),
        "total": total,
    }
    nodes = []
    for node in sorted(NODE_DIR.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        info = _meminfo(node / "meminfo")
        nodes.append({"numa_node": int(node.name[4:]),
                      "hugepages_used": (info.get("HugePages_Total", 0) -
                                         info.get("HugePages_Free", 0)) * page,
                      "hugepages_total": info.get("HugePages_Total", 0) * page,
                      "used": info.get("MemUsed", 0), "total": info.get("MemTotal", 0)})
    if nodes:
        document["nodes"] = nodes
    return document


def _links(directory: str) -> dict[str, str]:
    """``/dev/disk/by-id``-style links by the device name they point to."""
    found: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(directory)):
            with contextlib.suppress(OSError):
                found.setdefault(os.path.basename(os.readlink(f"{directory}/{name}")), name)
    return found


def _disk_type(name: str) -> str:
    for prefix, kind in (("nvme", "nvme"), ("vd", "virtio"), ("sd", "scsi"),
                         ("mmcblk", "mmc"), ("xvd", "xen")):
        if name.startswith(prefix):
            return kind
    return ""


def storage_resources() -> dict[str, Any]:
    by_id, by_path = _links("/dev/disk/by-id"), _links("/dev/disk/by-path")
    disks = []
    base = SYS / "class" / "block"
    for entry in sorted(base.iterdir()) if base.is_dir() else []:
        if (entry / "partition").exists() or not (entry / "device").exists():
            continue  # partitions are listed under their disk; virtual devices are not disks
        name = entry.name
        device = entry / "device"
        disk: dict[str, Any] = {
            "id": name, "device": _read(entry / "dev"),
            "model": _read(device / "model"), "type": _disk_type(name),
            "read_only": _read(entry / "ro") == "1", "size": _int(entry / "size") * 512,
            "removable": _read(entry / "removable") == "1",
            "wwn": _read(device / "wwid"), "numa_node": max(_int(device / "numa_node"), 0),
            "device_path": by_path.get(name, ""),
            "block_size": _int(entry / "queue" / "logical_block_size"),
            "firmware_version": _read(device / "firmware_rev") or _read(device / "rev"),
            "rpm": 1 if _read(entry / "queue" / "rotational") == "1" else 0,
            "serial": _read(device / "serial"), "device_id": by_id.get(name, ""),
            "partitions": [],
        }
        for part in sorted(entry.glob(f"{name}*")):
            if (part / "partition").exists():
                disk["partitions"].append({
                    "id": part.name, "device": _read(part / "dev"),
                    "read_only": _read(part / "ro") == "1",
                    "size": _int(part / "size") * 512, "partition": _int(part / "partition")})
        for key in ("model", "type", "wwn", "device_path", "firmware_version", "serial"):
            if not disk[key]:
                del disk[key]
        disks.append(disk)
    return {"disks": disks, "total": len(disks)}


_PCI = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-9a-f]$")


def network_resources() -> dict[str, Any]:
    cards: dict[str, dict[str, Any]] = {}
    base = SYS / "class" / "net"
    for entry in sorted(base.iterdir()) if base.is_dir() else []:
        device = entry / "device"
        if not device.exists():
            continue  # virtual interfaces (bridges, veths...) are no cards
        real = os.path.realpath(device)
        card = cards.get(real)
        if card is None:
            driver = os.path.basename(os.path.realpath(device / "driver")) \
                if (device / "driver").exists() else ""
            card = cards[real] = {
                "driver": driver,
                # a module's own version, else the kernel's (in-tree drivers), as ethtool
                "driver_version": (_read(SYS / "module" / driver / "version") or
                                   platform.release()) if driver else "",
                "ports": [], "numa_node": max(_int(device / "numa_node"), 0),
                "pci_address": os.path.basename(real) if _PCI.match(os.path.basename(real))
                else "",
                "vendor_id": _read(device / "vendor").removeprefix("0x"),
                "product_id": _read(device / "device").removeprefix("0x"),
            }
        port: dict[str, Any] = {
            "id": entry.name, "address": _read(entry / "address"),
            "port": len(card["ports"]),
            "protocol": "infiniband" if _read(entry / "type") == "32" else "ethernet",
            "auto_negotiation": False, "link_detected": _read(entry / "carrier") == "1",
        }
        speed = _int(entry / "speed", -1)
        if speed > 0:
            port["link_speed"] = speed
            port["link_duplex"] = _read(entry / "duplex")
        card["ports"].append(port)
    documents = []
    for card in cards.values():
        documents.append({k: v for k, v in card.items() if v != "" and v != []
                          or k == "numa_node"})
    return {"cards": documents, "total": len(documents)}


#: SMBIOS chassis types (the DMI ``chassis_type`` number), as LXD names them
CHASSIS = {1: "Other", 2: "Unknown", 3: "Desktop", 4: "Low Profile Desktop", 5: "Pizza Box",
           6: "Mini Tower", 7: "Tower", 8: "Portable", 9: "Laptop", 10: "Notebook",
           11: "Hand Held", 12: "Docking Station", 13: "All In One", 14: "Sub Notebook",
           15: "Space-saving", 16: "Lunch Box", 17: "Main Server Chassis",
           18: "Expansion Chassis", 19: "SubChassis", 20: "Bus Expansion Chassis",
           21: "Peripheral Chassis", 22: "RAID Chassis", 23: "Rack Mount Chassis",
           24: "Sealed-case PC", 25: "Multi-system chassis", 26: "Compact PCI",
           27: "Advanced TCA", 28: "Blade", 29: "Blade Enclosure", 30: "Tablet",
           31: "Convertible", 32: "Detachable", 33: "IoT Gateway", 34: "Embedded PC",
           35: "Mini PC", 36: "Stick PC"}


def _system_type() -> str:
    if "container=" in _read(Path("/proc/1/environ")).replace("\0", "\n") or \
            Path("/run/.containerenv").exists() or Path("/.dockerenv").exists():
        return "container"
    if " hypervisor" in _read(Path("/proc/cpuinfo")) or _read(SYS / "hypervisor" / "type"):
        return "virtual-machine"
    return "physical"


def system_resources() -> dict[str, Any]:
    dmi = SYS / "class" / "dmi" / "id"

    def d(name: str) -> str:
        return _read(dmi / name)

    chassis = _int(dmi / "chassis_type", 2)
    return {
        "uuid": d("product_uuid"), "vendor": d("sys_vendor"), "product": d("product_name"),
        "family": d("product_family"), "version": d("product_version"),
        "sku": d("product_sku"), "serial": d("product_serial"), "type": _system_type(),
        "firmware": {"vendor": d("bios_vendor"), "date": d("bios_date"),
                     "version": d("bios_version")},
        "chassis": {"vendor": d("chassis_vendor"), "type": CHASSIS.get(chassis, "Unknown"),
                    "serial": d("chassis_serial"), "version": d("chassis_version")},
        "motherboard": {"vendor": d("board_vendor"), "product": d("board_name"),
                        "serial": d("board_serial"), "version": d("board_version")},
    }


def host_resources() -> dict[str, Any]:
    """LXD's ``Resources`` document of this host (blocking)."""
    return {
        "cpu": cpu_resources(),
        "memory": memory_resources(),
        "gpu": {"cards": [], "total": 0},
        "network": network_resources(),
        "storage": storage_resources(),
        "usb": {"devices": [], "total": 0},
        "pci": {"devices": [], "total": 0},
        "system": system_resources(),
    }


@route("GET", "/1.0/resources")
async def get_resources(ctx: Context, request: Request) -> Response:
    return sync(await blocking(host_resources))
