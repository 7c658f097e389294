"""The plugin manager: hookspecs from ``lxfs.hookspecs``, plugins from the ``lxfs`` entry
points (the built-in backends are registered there too, like any third-party plugin)."""

from __future__ import annotations

import logging

import pluggy

from lxfs import hookspecs

log = logging.getLogger("lxfs.plugins")


def plugin_manager(load_entry_points: bool = True, extra: tuple[object, ...] = ()
                   ) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("lxfs")
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        count = pm.load_setuptools_entrypoints("lxfs")
        log.debug("loaded %d plugins from entry points", count)
    for plugin in extra:
        pm.register(plugin)
    return pm
