"""Device validation (the device model: disk, nic, unix-char, unix-block, none)."""

from __future__ import annotations

import re

from lxfs.errors import InvalidArgument

_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*(bit|kbit|Mbit|Gbit|Tbit)$", re.IGNORECASE)
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}


def parse_rate(value: str) -> int:
    """``10Mbit`` → bits per second (LXD's units for nic limits.ingress/egress/max)."""
    m = _RATE.match(value.strip())
    if not m:
        raise InvalidArgument(f"invalid rate {value!r} (examples: 100kbit, 10Mbit, 1Gbit)")
    bits = int(float(m.group(1)) * _RATE_UNITS[m.group(2).lower()])
    if bits < 8000:
        raise InvalidArgument(f"rate {value!r} is below 8kbit")
    return bits

DEVICE_KEYS: dict[str, set[str]] = {
    "disk": {"path", "source", "pool", "readonly", "size", "shift", "required", "propagation",
             "recursive", "limits.read", "limits.write", "limits.max"},
    "nic": {"network", "nictype", "parent", "name", "hwaddr", "mtu", "host_name",
            "ipv4.address", "ipv6.address", "limits.ingress", "limits.egress", "limits.max",
            "vlan", "security.mac_filtering"},
    "unix-char": {"source", "path", "major", "minor", "uid", "gid", "mode", "required"},
    "unix-block": {"source", "path", "major", "minor", "uid", "gid", "mode", "required"},
    "none": set(),
}


def validate_device(name: str, device: dict[str, str], partial: bool = False) -> None:
    """Raise ``InvalidArgument`` if the device is invalid. ``partial``: the device is being
    written key by key, so required keys may still be missing."""
    dtype = device.get("type")
    if dtype is None:
        if partial and not device:
            return
        raise InvalidArgument(f"device {name}: write its type first (disk, nic, unix-char, "
                              "unix-block, none)")
    if dtype not in DEVICE_KEYS:
        raise InvalidArgument(f"device {name}: unknown type {dtype!r} "
                              f"(one of {', '.join(DEVICE_KEYS)})")
    for key in device:
        if key != "type" and key not in DEVICE_KEYS[dtype] and not key.startswith("user."):
            raise InvalidArgument(f"device {name}: unknown key {key!r} for a {dtype} device")
    for key in ("limits.ingress", "limits.egress", "limits.max"):
        if dtype == "nic" and device.get(key):
            try:
                parse_rate(device[key])
            except InvalidArgument as exc:
                raise InvalidArgument(f"device {name}: {key}: {exc.message}") from None
    if dtype == "disk" and device.get("path") == "/" and not partial and "pool" not in device:
        raise InvalidArgument(f"device {name}: a root disk needs a pool")
