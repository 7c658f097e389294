"""Every hook a plugin can implement: the plugin author's reference.

A plugin is a module (or object) with functions decorated by ``lxfs.hookimpl`` whose names are
the hooks below. It is found through the ``lxfs`` entry-point group::

    [project.entry-points.lxfs]
    my_plugin = "my_package.my_plugin"

The built-in backends in ``plugins/`` are registered exactly the same way, and use nothing of
the core but the plugin API (``lxfs.api``: hooks receive its ``Host`` as ``host``).

Hooks run in the daemon. Hooks that may block (touch the disk, the kernel, a subprocess) are
called from a worker thread (``trio.to_thread``); they must not call trio APIs. A hook that raises
aborts the operation it belongs to: ``pre_*`` hooks are the place to refuse an operation, with an
``lxfs.errors.LxfsError`` whose message is shown to the user.

Hooks either *query* (they return something and change nothing: config keys, lines, entries,
ids) or *act* (lifecycle hooks: allocate, write, start helpers). Put side effects in the acting
hooks: queries may be called any number of times.

Where several plugins implement a hook, pluggy calls them in reverse registration order (the
last registered first) and collects their results in that order; ``tryfirst``/``trylast`` on a
``hookimpl`` change it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import trio

    from lxfs.api import Host
    from lxfs.config_schema import KeySpec
    from lxfs.devices import DeviceType
    from lxfs.image_servers import ImageServer
    from lxfs.model import Instance
    from lxfs.nodes import Node
    from lxfs.runtime import Runtime
    from lxfs.storage import StorageDriver

hookspec = pluggy.HookspecMarker("lxfs")


# --- registration --------------------------------------------------------------------------

@hookspec
def lxfs_add_hookspecs(pm: pluggy.PluginManager) -> None:
    """Add hookspecs of the plugin's own, for the plugins that extend it (the LXC runtime
    adds ``lxfs_lxc_config``): ``pm.add_hookspecs(module)``. Called once, after every plugin
    is registered and before the daemon checks that every implemented hook exists."""


@hookspec
def lxfs_storage_drivers() -> list[type[StorageDriver]]:
    """Return the storage driver classes this plugin provides.

    Each class subclasses ``lxfs.storage.StorageDriver`` and has a unique ``name`` (``dir``,
    ``btrfs``...), which users give as a pool's driver; two plugins giving the same name stop
    the daemon with an error naming both. See ``lxfs/storage.py`` for the complete interface
    and the capabilities a driver declares.
    """


@hookspec
def lxfs_runtimes() -> list[type[Runtime]]:
    """Return the instance runtime classes this plugin provides (``lxfs.runtime.Runtime``).

    A runtime starts, stops, freezes and inspects instances of one ``type`` (``container``);
    it is made with the ``Host``. Two runtimes of one type stop the daemon with an error.
    """


@hookspec
def lxfs_config_keys() -> list[KeySpec]:
    """Return the instance/profile configuration keys this plugin owns (``KeySpec``: name or
    ``prefix.*`` family, validator, default, when it applies, description).

    The core declares only its own keys (``boot.*``, ``environment.*``, ``user.*``,
    ``image.*``, ``volatile.*``); every other key is a plugin's, and a key nobody declares
    is refused with EINVAL. A key declared twice stops the daemon with an error.
    """


@hookspec
def lxfs_device_types() -> list[DeviceType]:
    """Return the device types this plugin owns (``lxfs.devices.DeviceType``: name, keys,
    validator). ``none`` is the core's; every other type (``disk``, ``nic``...) is a
    plugin's. A device of an undeclared type, or with a key its type does not declare, is
    refused with EINVAL."""


@hookspec
def lxfs_image_servers() -> list[type[ImageServer]]:
    """Return the image server drivers this plugin provides: subclasses of
    ``lxfs.image_servers.ImageServer``, one per protocol, each with a unique ``protocol``
    name (``simplestreams``, ``lxd``) that users give (``lxc remote add --protocol``, REST's
    ``source.protocol``, the first word of a remote reference on the mount). Two plugins
    giving the same name stop the daemon with an error naming both.

    A driver is made for each pull with the ``Host``, the ``ImageSource`` (server URL,
    certificate, alias, secret), a timeout and the largest download allowed;
    ``resolve(ref, architectures)`` finds the image (alias, ``alias/arch`` or fingerprint)
    and ``download(image, directory, progress)`` fetches its files into the core's staging
    directory, checking each file against what the server publishes. The core owns
    everything else: the staging directory (removed whatever happens; nothing of it
    survives a kill -9), the check of the image's fingerprint, registering it atomically,
    the cache (``cached``, ``last_used_at``, ``update_source``), expiry and auto-update.
    See ``lxfs/image_servers.py``.
    """


# --- daemon lifecycle ----------------------------------------------------------------------

@hookspec
def lxfs_startup(host: Host) -> None:
    """Called once when the daemon has opened its database, before the filesystem is mounted.

    Restore what the plugin owns (bridges, helper processes...). Runs in a worker thread.
    """


@hookspec
def lxfs_services(host: Host) -> list[Callable[[trio.TaskStatus[None]], Awaitable[None]]]:
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
def lxfs_shutdown(host: Host) -> None:
    """Called when the daemon stops (SIGTERM). Running instances are left running: only release
    what the daemon itself holds. Runs in a worker thread."""


# --- instance lifecycle (acting hooks; worker threads; the core holds the instance's lock) --

@hookspec
def lxfs_instance_pre_create(host: Host, instance: Instance) -> None:
    """Before an instance's root filesystem is created. Raise to refuse the creation."""


@hookspec
def lxfs_instance_post_create(host: Host, instance: Instance) -> None:
    """After an instance's root filesystem was created (from an image or a copy)."""


@hookspec
def lxfs_instance_pre_start(host: Host, instance: Instance) -> None:
    """Before an instance starts, with its expanded configuration. Allocate what it needs
    (id ranges, MAC addresses: ``host.set_volatile``), write the files the runtime will
    read, refresh helpers (dnsmasq); raise to refuse the start. The runtime's configuration
    is gathered after every ``pre_start`` ran."""


@hookspec
def lxfs_instance_post_start(host: Host, instance: Instance) -> None:
    """After an instance reached RUNNING."""


@hookspec
def lxfs_instance_pre_stop(host: Host, instance: Instance) -> None:
    """Before an instance is stopped (gracefully or killed)."""


@hookspec
def lxfs_instance_post_stop(host: Host, instance: Instance) -> None:
    """After an instance stopped (by the user or by itself, when the daemon notices)."""


@hookspec
def lxfs_instance_pre_delete(host: Host, instance: Instance) -> None:
    """Before an instance and its storage are deleted. Raise to refuse."""


@hookspec
def lxfs_instance_post_delete(host: Host, instance: Instance) -> None:
    """After an instance was deleted; release everything kept for it (``host.instance_dir``
    is removed by the core)."""


@hookspec(firstresult=True)
def lxfs_device_hotplug(host: Host, instance: Instance, name: str, old: dict[str, str],
                        new: dict[str, str]) -> bool | None:
    """A device of a running instance changed (``old``/``new``: its expanded definitions,
    ``{}`` when absent). Apply it live and return True, or return None to leave it for the
    next start (the user is told so). The first plugin returning a value wins."""


# --- queries -------------------------------------------------------------------------------

@hookspec(firstresult=True)
def lxfs_instance_root_ids(host: Host, instance: Instance) -> tuple[int, int] | None:
    """Return the host uid and gid that the instance's root (uid and gid 0 inside) maps to
    at its next start: ``(0, 0)`` for a privileged instance. The security plugin answers
    (from what ``pre_start`` allocated); the first plugin returning a value wins.

    Plugins that bind host paths into a container use it to open those paths to that
    container's root alone (``StorageDriver.grant_traversal``). Called from worker threads.
    """


@hookspec
def lxfs_mount_entries(host: Host) -> dict[str, Callable[[], Node | None]]:
    """Return top-level entries a plugin adds to the mount, e.g. ``{"networks": make_dir}``.

    Called once, when the mount's root is built; each value makes the node (``lxfs.nodes.Dir``,
    ``File``...) on every lookup. See ``lxfs/nodes.py`` for the building blocks (they take the
    ``Host``). Names must not clash with the core's.
    """


@hookspec
def lxfs_instance_entries(host: Host, instance: Instance
                          ) -> dict[str, Callable[[], Node | None]]:
    """Return entries a plugin adds to (or overrides in) ``instances/NAME/``, e.g. ``ipv4``.

    Called on every lookup in the instance's directory: keep it cheap.
    """


@hookspec
def lxfs_environment() -> dict[str, Any]:
    """Return facts to publish under ``environment/`` on the mount (one file per key)."""
