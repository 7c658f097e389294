"""The hook the REST bridge adds (``lxfs_add_hookspecs``) for the plugins it fronts without
knowing their internals: ``lxfs_rest_networks``, which the network plugin implements."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import pluggy

from lxfs import hookimpl

if TYPE_CHECKING:
    from lxfs.api import Host

hookspec = pluggy.HookspecMarker("lxfs")


@hookspec(firstresult=True)
def lxfs_rest_networks(host: Host) -> Any:
    """Return the managed networks as ``/1.0/networks`` serves them (a query: the first
    plugin that answers wins; none: ``/1.0/networks`` lists the host's interfaces only and
    refuses to create networks).

    The object has these methods, all blocking (the bridge calls them in worker threads),
    taking and returning plain data in LXD's shapes; failures raise
    ``lxfs.errors.LxfsError`` (``NotFound``, ``InvalidArgument``, ``Busy``...):

    - ``names() -> list[str]``: the managed networks;
    - ``get(name) -> dict``: LXD's ``Network`` document (``name``, ``type``,
      ``description``, ``config``, ``managed`` true, ``status``, ``locations``, ``used_by``
      as ``/1.0/...`` URLs);
    - ``create(name, type, description, config)``: make one (``type`` "" is the plugin's
      default);
    - ``update(name, description, config)``: replace both, all or nothing;
    - ``rename(old, new)``: rename an unused network (raise ``NotSupported`` if it cannot);
    - ``delete(name)``: remove an unused network;
    - ``leases(name) -> list[dict]``: LXD's ``NetworkLease`` documents (``hostname``,
      ``hwaddr``, ``address``, ``type``: gateway, static or dynamic, ``location``);
    - ``addresses(instances) -> dict``: the addresses of running instances' nics, by
      instance name, then ``"ipv4"``/``"ipv6"``: ``(address, interface)`` pairs (what
      ``instances/NAME/ipv4`` reads; one call answers a whole ``lxc list``). Optional:
      without it the bridge reads each instance's ``ipv4`` and ``ipv6`` entries.

    The interfaces' kernel state (``/1.0/networks/NAME/state``) is read by the bridge."""


@hookimpl
def lxfs_add_hookspecs(pm: pluggy.PluginManager) -> None:
    pm.add_hookspecs(sys.modules[__name__])
