"""The plugin manager: hookspecs from ``lxfs.hookspecs``, plugins from the ``lxfs`` entry
points (the built-in backends are registered there too, like any third-party plugin)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pluggy

from lxfs import hookspecs

log = logging.getLogger("lxfs.plugins")


def plugin_manager(load_entry_points: bool = True, extra: tuple[object, ...] = (),
                   disabled: Iterable[str] = ()) -> pluggy.PluginManager:
    """The plugins: ``extra`` objects and the ``lxfs`` entry points but those named in
    ``disabled`` (entry-point names: ``storage_dir``...)."""
    pm = pluggy.PluginManager("lxfs")
    pm.add_hookspecs(hookspecs)
    for name in disabled:
        pm.set_blocked(name)
        log.warning("plugin %s is disabled", name)
    if load_entry_points:
        count = pm.load_setuptools_entrypoints("lxfs")
        log.debug("loaded %d plugins from entry points", count)
    for plugin in extra:
        pm.register(plugin)
    pm.hook.lxfs_add_hookspecs(pm=pm)
    pm.check_pending()  # a hookimpl naming no hook is a typo: fail at start, saying which
    return pm
