"""The hook the LXC runtime adds for the plugins that configure its containers (security,
seccomp, AppArmor, devices, network): registered through ``lxfs_add_hookspecs``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from lxfs.api import Host
    from lxfs.model import Instance

hookspec = pluggy.HookspecMarker("lxfs")


@hookspec
def lxfs_lxc_config(host: Host, instance: Instance) -> list[str]:
    """Return LXC configuration lines (``"lxc.key = value"``) for an instance about to start.

    A query: called by the LXC runtime once every ``lxfs_instance_pre_start`` hook has run,
    with the instance's expanded configuration (``instance.expanded_config``,
    ``instance.expanded_devices``); allocate and write files in ``pre_start``, not here.
    Lines of all plugins are concatenated (pluggy calls the last registered plugin first);
    the instance's ``raw.lxc`` comes last, so that users can override anything.
    """
