"""Every hook a plugin can implement: the plugin author's reference.

A plugin is a module (or object) with functions decorated by ``lxfs.hookimpl`` whose names are
the hooks below. It is found through the ``lxfs`` entry-point group::

    [project.entry-points.lxfs]
    my_plugin = "my_package.my_plugin"

The built-in backends in ``plugins/`` are registered exactly the same way.

Hooks run in the daemon. Hooks that may block (touch the disk, the kernel, a subprocess) are
called from a worker thread (``trio.to_thread``); they must not call trio APIs. A hook that raises
aborts the operation it belongs to: ``pre_*`` hooks are the place to refuse an operation, with an
``lxfs.errors.LxfsError`` whose message is shown to the user.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import trio

    from lxfs.config_schema import KeySpec
    from lxfs.model import Instance
    from lxfs.nodes import Node
    from lxfs.runtime import Runtime
    from lxfs.server import Server
    from lxfs.storage import StorageDriver

hookspec = pluggy.HookspecMarker("lxfs")


# --- registration --------------------------------------------------------------------------

@hookspec
def lxfs_storage_drivers() -> list[type[StorageDriver]]:
    """Return the storage driver classes this plugin provides.

    Each class subclasses ``lxfs.storage.StorageDriver`` and has a unique ``name`` (``dir``,
    ``btrfs``...), which users give as a pool's driver. See ``lxfs/storage.py`` for the complete
    interface a driver implements.
    """


@hookspec
def lxfs_runtimes() -> list[type[Runtime]]:
    """Return the instance runtime classes this plugin provides (``lxfs.runtime.Runtime``).

    A runtime starts, stops, freezes and inspects instances of one ``type`` (``container``).
    The built-in one drives LXC.
    """


@hookspec
def lxfs_config_keys() -> list[KeySpec]:
    """Return extra instance/profile configuration keys this plugin understands.

    Keys not declared by the core schema or a plugin are refused with EINVAL. Use a prefix that
    names your plugin (``user.*`` is free-form and needs no declaration).
    """


# --- daemon lifecycle ----------------------------------------------------------------------

@hookspec
def lxfs_startup(server: Server) -> None:
    """Called once when the daemon has opened its database, before the filesystem is mounted.

    Restore what the plugin owns (bridges, helper processes...). Runs in a worker thread.
    """


@hookspec
def lxfs_services(server: Server) -> list[Callable[[trio.TaskStatus[None]], Awaitable[None]]]:
    """Return long-lived trio tasks the plugin runs inside the daemon (listeners, watchers).

    Each is an ``async def service(task_status=trio.TASK_STATUS_IGNORED)`` coroutine function.
    The daemon starts them with ``nursery.start(service)`` after ``lxfs_startup`` and before
    it reattaches or autostarts instances: call ``task_status.started()`` once the service
    is ready (its socket listens), so that instances that need it find it. Services run in
    the daemon's nursery on the event loop: never block in them (use ``trio.to_thread``).
    At shutdown the nursery is cancelled, so a service stops at its next ``await``; clean up
    in ``finally`` blocks. A service that raises brings the daemon down: catch and log
    failures of single requests inside it.
    """


@hookspec
def lxfs_shutdown(server: Server) -> None:
    """Called when the daemon stops (SIGTERM). Running instances are left running: only release
    what the daemon itself holds. Runs in a worker thread."""


# --- instance lifecycle --------------------------------------------------------------------

@hookspec
def lxfs_instance_pre_create(server: Server, instance: Instance) -> None:
    """Before an instance's root filesystem is created. Raise to refuse the creation."""


@hookspec
def lxfs_instance_post_create(server: Server, instance: Instance) -> None:
    """After an instance's root filesystem was created from its image."""


@hookspec
def lxfs_instance_pre_start(server: Server, instance: Instance) -> None:
    """Before an instance starts (after its runtime config was generated). Raise to refuse."""


@hookspec
def lxfs_instance_post_start(server: Server, instance: Instance) -> None:
    """After an instance reached RUNNING."""


@hookspec
def lxfs_instance_pre_stop(server: Server, instance: Instance) -> None:
    """Before an instance is stopped (gracefully or killed)."""


@hookspec
def lxfs_instance_post_stop(server: Server, instance: Instance) -> None:
    """After an instance stopped (by the user or by itself, when the daemon notices)."""


@hookspec
def lxfs_instance_pre_delete(server: Server, instance: Instance) -> None:
    """Before an instance and its storage are deleted. Raise to refuse."""


@hookspec
def lxfs_instance_post_delete(server: Server, instance: Instance) -> None:
    """After an instance was deleted; release everything kept for it."""


@hookspec(firstresult=True)
def lxfs_device_hotplug(server: Server, instance: Instance, name: str, old: dict[str, str],
                        new: dict[str, str]) -> bool | None:
    """A device of a running instance changed (``old``/``new``: its expanded definitions,
    ``{}`` when absent). Apply it live and return True, or return None to leave it for the
    next start (the user is told so). The first plugin returning a value wins."""


# --- runtime configuration -----------------------------------------------------------------

@hookspec
def lxfs_lxc_config(server: Server, instance: Instance) -> list[str]:
    """Return LXC configuration lines (``"lxc.key = value"``) to add to an instance's config.

    Called at every start with the instance's expanded configuration
    (``instance.expanded_config``, ``instance.expanded_devices``). Lines from all plugins are
    concatenated in plugin registration order; the instance's ``raw.lxc`` comes last so that
    users can override anything. Security plugins add idmaps and seccomp here, network plugins
    add ``lxc.net.*``.
    """


@hookspec(firstresult=True)
def lxfs_instance_root_ids(server: Server, instance: Instance) -> tuple[int, int] | None:
    """Return the host uid and gid that the instance's root (uid and gid 0 inside) maps to
    at its next start: ``(0, 0)`` for a privileged instance. The security plugin answers;
    the first plugin returning a value wins.

    Plugins that bind host paths into a container use it to open those paths to that
    container's root alone (``StorageDriver.grant_traversal``). Called from worker threads.
    """


@hookspec
def lxfs_mount_entries(server: Server) -> dict[str, Callable[[], Node | None]]:
    """Return top-level entries a plugin adds to the mount, e.g. ``{"networks": make_dir}``.

    Each value makes the node (``lxfs.nodes.Dir``, ``File``...) on demand; see
    ``lxfs/nodes.py`` for the building blocks. Names must not clash with the core's.
    """


@hookspec
def lxfs_instance_entries(server: Server, instance: Instance
                          ) -> dict[str, Callable[[], Node | None]]:
    """Return entries a plugin adds to (or overrides in) ``instances/NAME/``, e.g. ``ipv4``.

    Called on every lookup in the instance's directory: keep it cheap.
    """


@hookspec
def lxfs_environment() -> dict[str, Any]:
    """Return facts to publish under ``environment/`` on the mount (one file per key)."""
