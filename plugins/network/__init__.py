"""The network plugin: managed bridges (``networks/`` on the mount), dnsmasq, nftables, and
``nic`` devices of instances (``lxc.net.*``, ``instances/NAME/ipv4``/``ipv6``)."""

from __future__ import annotations

import socket
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from lxfs import hookimpl
from lxfs.devices import DeviceType
from lxfs.errors import LxfsError
from lxfs.model import Instance
from lxfs.nodes import Dir, File, KeyValueDir, Node, StaticDir, lines

from . import config as cfg
from .manager import NetworkManager

if TYPE_CHECKING:
    from lxfs.api import Host

_managers: weakref.WeakKeyDictionary[Host, NetworkManager] = weakref.WeakKeyDictionary()


def manager(host: Host) -> NetworkManager:
    """The host's network manager (made on first use)."""
    mgr = _managers.get(host)
    if mgr is None:
        mgr = _managers[host] = NetworkManager(host)
    return mgr


async def _thread(fn: Callable[..., object], *args: object) -> object:
    return await trio.to_thread.run_sync(fn, *args)


# --- the mount --------------------------------------------------------------------------------


class NetworksDir(Dir):
    """``networks/``: ``mkdir`` creates a managed bridge, ``rmdir`` deletes it."""

    def __init__(self, srv: Host) -> None:
        super().__init__(srv)
        self.mgr = manager(srv)

    async def list(self) -> list[str]:
        return sorted(self.mgr.records)

    async def child(self, name: str) -> Node | None:
        return network_dir(self.srv, self.mgr, name) if name in self.mgr.records else None

    async def mkdir(self, name: str) -> None:
        await self.srv.guarded("", _thread(self.mgr.create, name))

    async def rmdir(self, name: str) -> None:
        await self.srv.guarded("", _thread(self.mgr.delete, name))


def network_dir(srv: Host, mgr: NetworkManager, name: str) -> StaticDir:
    rec = mgr.records[name]
    scope = f"networks/{name}"

    async def set_key(key: str, value: str) -> None:
        await _thread(mgr.set_key, name, key, value)

    async def unset_key(key: str) -> None:
        await _thread(mgr.set_key, name, key, "")

    def check_key(key: str) -> None:
        if key not in cfg.KEYS and not key.startswith("user."):
            cfg.validate_key(key, "")

    async def link(field: str) -> str:
        state = await trio.to_thread.run_sync(mgr.link_state, name)
        value = state[field]
        return lines(value) if isinstance(value, list) else str(value)

    async def counters() -> dict[str, str]:
        return (await trio.to_thread.run_sync(mgr.link_state, name))["counters"]

    async def leases() -> str:
        found = await trio.to_thread.run_sync(mgr.leases, name)
        return lines([f"{x['hostname'] or '-'} {x['hwaddr']} {x['address']} "
                      f"{_rfc3339(x['expiry'])} {x['type']}" for x in found])

    async def set_description(value: str) -> None:
        await _thread(mgr.set_description, name, value)

    return StaticDir(srv, {
        "name": lambda: File(srv, lambda: name),
        "type": lambda: File(srv, lambda: rec.get("type", "bridge")),
        "managed": lambda: File(srv, lambda: "true"),
        "description": lambda: File(srv, lambda: rec.get("description", ""), set_description,
                                    scope=scope),
        "config": lambda: KeyValueDir(srv, lambda: rec["config"], set_key, unset_key,
                                      check_key, scope=scope),
        "state": lambda: File(srv, lambda: link("state"), dynamic=True),
        "addresses": lambda: File(srv, lambda: link("addresses"), dynamic=True),
        "hwaddr": lambda: File(srv, lambda: link("hwaddr"), dynamic=True),
        "mtu": lambda: File(srv, lambda: link("mtu"), dynamic=True),
        "counters": lambda: _AsyncKeyValueDir(srv, counters),
        "leases": lambda: File(srv, leases, dynamic=True),
        "used_by": lambda: File(srv, lambda: lines(mgr.used_by(name)), dynamic=True),
        "error": lambda: File(srv, lambda: srv.error(scope) or mgr.errors.get(name, ""),
                              dynamic=True),
    }, scope=scope)


class _AsyncKeyValueDir(Dir):
    """A read-only directory of values computed on each listing (``counters/``)."""

    def __init__(self, srv: Host, values: Callable[[], object]) -> None:
        super().__init__(srv)
        self.values = values

    async def list(self) -> list[str]:
        return sorted(await self.values())  # type: ignore[misc]

    async def child(self, name: str) -> Node | None:
        values = await self.values()  # type: ignore[misc]
        if name not in values:
            return None
        return File(self.srv, lambda: _current(self.values, name), dynamic=True)


async def _current(values: Callable[[], object], name: str) -> str:
    return (await values()).get(name, "")  # type: ignore[misc]


def _rfc3339(expiry: str) -> str:
    from lxfs.model import rfc3339

    try:
        return rfc3339(float(expiry))
    except ValueError:
        return expiry


# --- hooks ------------------------------------------------------------------------------------


@hookimpl(optionalhook=True)  # the REST bridge's hook: absent when it is disabled
def lxfs_rest_networks(host: Host) -> object:
    from .rest import RestNetworks

    return RestNetworks(manager(host))


@hookimpl
def lxfs_startup(host: Host) -> None:
    manager(host).restore()


@hookimpl
def lxfs_shutdown(host: Host) -> None:
    manager(host).shutdown()


@hookimpl
def lxfs_mount_entries(host: Host) -> dict[str, Callable[[], Node | None]]:
    return {"networks": lambda: NetworksDir(host)}


@hookimpl
def lxfs_instance_entries(host: Host, instance: Instance
                          ) -> dict[str, Callable[[], Node | None]]:
    mgr = manager(host)

    def addresses(family: int) -> Callable[[], Node]:
        async def read() -> str:
            if not any(d.get("type") == "nic" for d in instance.expanded_devices.values()):
                return ""  # no nic: nothing to ask the kernel
            found = await trio.to_thread.run_sync(mgr.instance_addresses, instance, family)
            return lines(found)

        return lambda: File(host, read, dynamic=True)

    return {"ipv4": addresses(socket.AF_INET), "ipv6": addresses(socket.AF_INET6)}


@hookimpl
def lxfs_lxc_config(host: Host, instance: Instance) -> list[str]:
    return manager(host).lxc_lines(instance)


@hookimpl
def lxfs_instance_pre_start(host: Host, instance: Instance) -> None:
    manager(host).prepare(instance)


@hookimpl
def lxfs_device_types() -> list[DeviceType]:
    return [cfg.NIC]


@hookimpl
def lxfs_instance_post_start(host: Host, instance: Instance) -> None:
    manager(host).apply_limits(instance)


@hookimpl
def lxfs_instance_post_delete(host: Host, instance: Instance) -> None:
    mgr = manager(host)
    for device in instance.expanded_devices.values():
        name = device.get("network")
        if device.get("type") == "nic" and name in mgr.records:
            try:
                mgr.write_hosts(name, reload=True)
            except (OSError, LxfsError):
                pass
