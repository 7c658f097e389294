"""The managed networks as the REST bridge serves them (hook ``lxfs_rest_networks``): LXD's
documents made from the manager's records, and its operations. Every method blocks (the
bridge calls them in worker threads)."""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING, Any

from lxfs.errors import NotSupported

from . import config as cfg
from .manager import NetworkManager

if TYPE_CHECKING:
    from lxfs.model import Instance

#: LXD's default network type, and the only one lxfs makes
BRIDGE = "bridge"


class RestNetworks:
    """What ``/1.0/networks`` needs of the network plugin (see the hook's contract)."""

    def __init__(self, mgr: NetworkManager) -> None:
        self.mgr = mgr

    def names(self) -> list[str]:
        return sorted(self.mgr.records)

    def addresses(self, instances: list[Instance]) -> dict[str, dict[str, list[tuple[str, str]]]]:
        found = {}
        for inst in instances:
            if any(d.get("type") == "nic" for d in inst.expanded_devices.values()):
                found[inst.name] = {
                    family: [(address, iface) for address, iface
                             in self.mgr.instance_address_pairs(inst, number)]
                    for family, number in (("ipv4", socket.AF_INET), ("ipv6", socket.AF_INET6))}
        return found

    def get(self, name: str) -> dict[str, Any]:
        rec = self.mgr.get(name)
        users = self.mgr.used_by(name)
        used_by = [f"/1.0/{u}" for u in users if u.startswith("profiles/")]
        used_by += [f"/1.0/{u}" for u in users if u.startswith("instances/")]
        return {
            "config": dict(rec["config"]),
            "description": rec.get("description", ""),
            "name": name,
            "type": rec.get("type", BRIDGE),
            "used_by": used_by,
            "managed": True,
            "status": "Errored" if self.mgr.errors.get(name) else "Created",
            "locations": ["none"],
        }

    def create(self, name: str, type: str, description: str, config: dict[str, str]) -> None:
        if type not in ("", BRIDGE):
            raise NotSupported(f"network type {type!r} is not supported: lxfs makes bridges")
        self.mgr.create(name, {k: v for k, v in config.items() if v != ""}, description)

    def update(self, name: str, description: str, config: dict[str, str]) -> None:
        self.mgr.update(name, description, config)

    def rename(self, old: str, new: str) -> None:
        self.mgr.rename(old, new)

    def delete(self, name: str) -> None:
        self.mgr.delete(name)

    def leases(self, name: str) -> list[dict[str, str]]:
        """The gateway addresses, the static leases of the nics on the network, then
        dnsmasq's leases (those not already listed), as LXD lists them."""
        conf = self.mgr.get(name)["config"]
        found: list[dict[str, str]] = []
        for iface in (cfg.ipv4_interface(conf), cfg.ipv6_interface(conf)):
            if iface is not None:
                found.append({"hostname": f"{name}.gw", "hwaddr": "",
                              "address": str(iface.ip), "type": "gateway", "location": ""})
        for inst, dev, device in self.mgr._nics_on(name):
            mac = (device.get("hwaddr") or inst.config.get(f"volatile.{dev}.hwaddr", "")).lower()
            for key in ("ipv4.address", "ipv6.address"):
                if device.get(key):
                    found.append({"hostname": inst.name, "hwaddr": mac,
                                  "address": str(ipaddress.ip_address(device[key])),
                                  "type": "static", "location": "none"})
        listed = {(x["hwaddr"], x["address"]) for x in found}
        for lease in self.mgr.leases(name):
            if (lease["hwaddr"], lease["address"]) in listed:
                continue
            found.append({"hostname": lease["hostname"], "hwaddr": lease["hwaddr"],
                          "address": lease["address"], "type": "dynamic",
                          "location": "none"})
        return found
