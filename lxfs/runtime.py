"""The runtime interface: what starts and stops instances of one type."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from lxfs.api import Host
    from lxfs.model import Instance


class Runtime(ABC):
    """Drives instances of one ``type``. All methods block: the core calls them in threads,
    one operation at a time per instance. Made once, with the ``Host`` (``lxfs.api``)."""

    type: ClassVar[str] = "container"
    #: the runtime's name, shown as ``environment/driver`` (``lxc``)
    name: ClassVar[str] = ""

    def __init__(self, host: Host) -> None:
        self.host = host

    def facts(self) -> dict[str, str]:
        """Facts for ``environment/`` (at least ``driver``: the runtime's name)."""
        return {"driver": self.name}

    @abstractmethod
    def state(self, instance: Instance) -> str:
        """``RUNNING``, ``STOPPED``, ``FROZEN``, or a transient state the runtime reports.
        Asked at daemon start-up (to reattach) and before each transition; reads of the
        ``state`` file are answered from the daemon's own record (see ``pid``)."""

    @abstractmethod
    def pid(self, instance: Instance) -> int:
        """The init process's PID on the host, 0 when not running. Asked right after a start:
        the daemon follows that process with a pidfd, and the instance is RUNNING for readers
        until it ends."""

    @abstractmethod
    def start(self, instance: Instance, rootfs: Path) -> None:
        """Start the instance from ``rootfs`` with its expanded configuration (every
        ``pre_start`` hook has run); return when it runs. The instance must not depend on
        the daemon: it keeps running if the daemon exits."""

    @abstractmethod
    def shutdown(self, instance: Instance, timeout: float) -> bool:
        """Ask the instance to stop; return whether it stopped within ``timeout`` seconds."""

    @abstractmethod
    def kill(self, instance: Instance) -> None:
        """Stop the instance at once."""

    @abstractmethod
    def freeze(self, instance: Instance) -> None: ...

    @abstractmethod
    def unfreeze(self, instance: Instance) -> None: ...

    @abstractmethod
    def cleanup(self, instance: Instance) -> None:
        """Remove what the runtime keeps for a stopped instance that is being deleted."""

    @abstractmethod
    def rename(self, instance: Instance, new_name: str) -> None:
        """Follow a rename of a stopped instance."""

    @abstractmethod
    def log(self, instance: Instance) -> str:
        """The runtime's log of the last start."""

    @abstractmethod
    def console_log(self, instance: Instance) -> str:
        """What the instance wrote to its console."""

    def usage(self, instance: Instance) -> dict[str, int]:
        """``processes``, ``memory``, ``memory_peak`` (bytes), ``cpu`` (ns) while running."""
        return {}

    def apply_limits(self, instance: Instance) -> None:
        """Apply the expanded config's limits to the running instance (live changes)."""

    def check(self, instances: list[Instance]) -> list[str]:
        """What the runtime keeps that matches no instance (``lxfsd --check``), as
        sentences: running containers, directories, cgroups of unknown or stopped ones."""
        return []

    def after_stop(self, instance: Instance) -> None:
        """Called once the instance is seen stopped (release cgroups...)."""
