"""The records lxfs keeps: instances, snapshots, images, aliases, profiles."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

Devices = dict[str, dict[str, str]]

# --- projects' names: the core keys a project's instances and profiles by host-level names

DEFAULT = "default"

#: the features and their value in a new project when not given (LXD 5.0's); the default
#: project has them all on, fixed
FEATURES = {"features.images": "true", "features.profiles": "true",
            "features.storage.volumes": "true", "features.networks": "false"}
DEFAULT_FEATURES = dict.fromkeys(FEATURES, "true")


def instance_key(project: str, name: str) -> str:
    """The core's key (host-level name) of instance ``name`` of ``project``."""
    return name if project == DEFAULT else f"{project}_{name}"


def split_instance_key(key: str) -> tuple[str, str]:
    """(project, name) of a host-level instance key."""
    project, sep, name = key.rpartition("_")
    return (project, name) if sep else (DEFAULT, key)


def profile_key(project: str, name: str) -> str:
    """The core's key of profile ``name`` owned by ``project`` (its own profiles)."""
    return name if project == DEFAULT else f"{project}/{name}"


def split_profile_key(key: str) -> tuple[str, str]:
    project, sep, name = key.rpartition("/")
    return (project, name) if sep else (DEFAULT, key)


def now() -> float:
    return time.time()


def rfc3339(ts: float) -> str:
    """UTC time as LXD prints it (``2026-11-23T12:00:00Z``)."""
    if not ts:
        return "1970-01-01T00:00:00Z"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass
class Snapshot:
    name: str
    created_at: float
    config: dict[str, str] = field(default_factory=dict)
    devices: Devices = field(default_factory=dict)
    profiles: list[str] = field(default_factory=list)


@dataclass
class Instance:
    #: the core's key: the host-level name (``c1`` in ``default``, ``p1_c1`` in ``p1``: see
    #: ``lxfs.projects.instance_key``); ``local_name`` is what users of the project see
    name: str
    type: str = "container"
    architecture: str = ""
    created_at: float = 0.0
    last_used_at: float = 0.0
    ephemeral: bool = False
    description: str = ""
    config: dict[str, str] = field(default_factory=dict)
    devices: Devices = field(default_factory=dict)
    profiles: list[str] = field(default_factory=lambda: ["default"])
    #: fingerprint of the image the root filesystem was created from ("" before)
    source: str = ""
    #: "": record only; "creating": rootfs being made; "ready": rootfs exists
    storage_state: str = ""
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    project: str = "default"
    # filled by the server from profiles (not stored)
    expanded_config: dict[str, str] = field(default_factory=dict, repr=False)
    expanded_devices: Devices = field(default_factory=dict, repr=False)

    def to_record(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("expanded_config")
        data.pop("expanded_devices")
        data["snapshots"] = [asdict(s) for s in self.snapshots.values()]
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Instance:
        data = dict(data)
        snaps = data.pop("snapshots", [])
        inst = cls(**data)
        inst.snapshots = {s["name"]: Snapshot(**s) for s in snaps}
        return inst

    @property
    def local_name(self) -> str:
        """The name within its project."""
        return self.name if self.project == "default" else \
            self.name.removeprefix(f"{self.project}_")

    def root_pool(self) -> str:
        """The pool of the root disk (``path=/``) in the expanded devices."""
        for dev in self.expanded_devices.values():
            if dev.get("type") == "disk" and dev.get("path") == "/":
                return dev.get("pool", "")
        return ""


@dataclass
class Image:
    fingerprint: str
    filename: str = ""
    size: int = 0
    architecture: str = ""
    type: str = "container"
    created_at: float = 0.0
    uploaded_at: float = 0.0
    expires_at: float = 0.0
    public: bool = False
    auto_update: bool = False
    split: bool = False
    properties: dict[str, str] = field(default_factory=dict)
    templates: dict[str, Any] = field(default_factory=dict)
    #: pulled for an instance from an image server (expires when unused, as LXD's cache)
    cached: bool = False
    last_used_at: float = 0.0
    #: where it came from (``ImageSource.record()``: server, protocol, alias, certificate)
    update_source: dict[str, str] = field(default_factory=dict)
    #: the projects that hold it (``default``, or those with ``features.images=true``); one
    #: record and one set of files whatever their number
    projects: list[str] = field(default_factory=lambda: ["default"])

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Image:
        return cls(**data)


@dataclass
class Profile:
    #: the core's key: ``NAME`` in ``default``, ``PROJECT/NAME`` for a project's own
    name: str
    description: str = ""
    config: dict[str, str] = field(default_factory=dict)
    devices: Devices = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Profile:
        return cls(**data)


@dataclass
class Project:
    """A project's record: its ``features.*``, ``limits.*`` and ``restricted*`` keys."""

    name: str
    description: str = ""
    config: dict[str, str] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Project:
        return cls(**data)


#: a backup's compressions (LXD's ``compression_algorithm``)
COMPRESSIONS = ("gzip", "xz", "zstd", "bzip2", "none")
#: a backup that never expires (LXD's zero time)
NO_EXPIRY = "0001-01-01T00:00:00Z"


@dataclass
class Backup:
    """A backup's record (LXD's ``InstanceBackup``)."""

    name: str
    created_at: float
    expires_at: str = NO_EXPIRY  # RFC 3339, as given
    instance_only: bool = False
    optimized_storage: bool = False
    compression_algorithm: str = "gzip"
