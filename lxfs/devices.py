"""Devices: each type (``disk``, ``nic``, ``unix-char``...) is declared by the plugin that owns
it (hook ``lxfs_device_types``); the core owns only ``none`` (it masks an inherited device)
and knows a root disk by ``path=/`` and ``pool``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lxfs.errors import InvalidArgument
from lxfs.names import check_line, forbidden_character

#: ``validate(name, device, partial)``: raise ``InvalidArgument`` for a bad device; with
#: ``partial`` the device is being written key by key and may still lack required keys
DeviceValidator = Callable[[str, dict[str, str], bool], None]


def _accept(_name: str, _device: dict[str, str], _partial: bool) -> None:
    return None


@dataclass(frozen=True)
class DeviceType:
    """A device type and the keys its devices may carry (``user.*`` are always allowed)."""

    name: str
    keys: frozenset[str]
    validate: DeviceValidator = field(default=_accept, compare=False)
    description: str = ""


CORE_DEVICE_TYPES = (DeviceType("none", frozenset(), description="masks an inherited device"),)


class DeviceTypes:
    """The device types in force: the core's and the plugins'."""

    def __init__(self, declared: Iterable[DeviceType] = ()) -> None:
        self.types: dict[str, DeviceType] = {}
        for dtype in (*CORE_DEVICE_TYPES, *declared):
            if dtype.name in self.types:
                raise ValueError(f"device type {dtype.name!r} is declared twice")
            self.types[dtype.name] = dtype

    def validate(self, name: str, device: dict[str, str], partial: bool = False) -> None:
        """Raise ``InvalidArgument`` if the device is invalid."""
        kind = device.get("type")
        if kind is None:
            if partial and not device:
                return
            raise InvalidArgument(f"device {name}: write its type first "
                                  f"({', '.join(sorted(self.types))})")
        dtype = self.types.get(kind)
        if dtype is None:
            raise InvalidArgument(f"device {name}: unknown type {kind!r} "
                                  f"(one of {', '.join(sorted(self.types))})")
        for key, value in device.items():
            if key != "type" and key not in dtype.keys and not key.startswith("user."):
                raise InvalidArgument(f"device {name}: unknown key {key!r} for a {kind} device")
            if forbidden_character(key) is not None or any(c.isspace() for c in key):
                raise InvalidArgument(f"device {name}: invalid key name {key!r}")
            # every device value ends up on a line of a config file (LXC's, dnsmasq's)
            check_line(f"device {name}: {key}", value)
        dtype.validate(name, device, partial)
