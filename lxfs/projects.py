"""Projects (LXD 5.0's): their keys (``features.*``, ``limits.*``, ``restricted*``), the
mapping between a project's names and the core's host-level keys, limits and restrictions.

The ``default`` project is the mount's top level; other projects live under
``projects/NAME/``. An instance ``c1`` of project ``p1`` is keyed ``p1_c1`` by the core (its
LXC name, cgroups, volume): instance names hold no ``_``, so the key splits back at its last
``_``. A project's own profile is keyed ``p1/NAME`` (no profile name holds ``/``).

Nothing is restricted unless ``restricted=true``; then each ``restricted.*`` key takes its
value, or LXD's default for that key: privileged containers, nesting, low-level keys
(``raw.*``...), syscall interception and unix devices are blocked, disks must come from a
pool and nics from a managed network.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable

from lxfs.config_schema import (
    KeySpec,
    check_bool,
    check_int,
    check_memory,
    is_true,
    memory_bytes,
    parse_size,
    validate_among,
)
from lxfs.errors import InvalidArgument, LxfsError, NotSupported
from lxfs.model import (  # noqa: F401 - the names' mapping, re-exported
    DEFAULT,
    DEFAULT_FEATURES,
    FEATURES,
    instance_key,
    profile_key,
    split_instance_key,
    split_profile_key,
)


def features(project: str, config: dict[str, str]) -> dict[str, str]:
    """A project's ``features.*`` values (fixed on for ``default``; an unset one is off,
    ``create_project`` writes them all)."""
    if project == DEFAULT:
        return dict(DEFAULT_FEATURES)
    return {key: config.get(key) or "false" for key in FEATURES}


def has_feature(project: str, config: dict[str, str], feature: str) -> bool:
    return is_true(features(project, config)[f"features.{feature}"])


class Forbidden(LxfsError):
    """Refused by the project's restrictions (EPERM on the mount, 403 on REST)."""

    errno = errno.EPERM
    status = 403


def _one_of(*choices: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value not in choices:
            raise InvalidArgument(f"must be one of {', '.join(choices)} (got {value!r})")

    return check


def _check_paths(value: str) -> None:
    for path in value.split(","):
        if path.strip() and not os.path.isabs(path.strip()):
            raise InvalidArgument(f"{path.strip()!r} is not an absolute path")


#: restriction keys and their value when ``restricted=true`` leaves them unset (LXD's)
DEFAULTS = {
    "restricted.containers.nesting": "block",
    "restricted.containers.privilege": "unprivileged",
    "restricted.containers.lowlevel": "block",
    "restricted.containers.interception": "block",
    "restricted.devices.unix-char": "block",
    "restricted.devices.unix-block": "block",
    "restricted.devices.disk": "managed",
    "restricted.devices.disk.paths": "",
    "restricted.devices.nic": "managed",
}

def _check_networks_feature(value: str) -> None:
    """``features.networks``: LXD 5.0 lets a project own only OVN networks (a bridge
    "does not support non-default projects"), and lxfs has no OVN: a project uses the
    default project's networks."""
    check_bool(value)
    if is_true(value):
        raise NotSupported("features.networks=true is not supported: in LXD 5.0 a project "
                           "can own only OVN networks, which lxfs does not have; keep "
                           "features.networks=false (the project uses the default project's "
                           "networks)")


def _check_memory_limit(value: str) -> None:
    if value.endswith("%"):
        raise InvalidArgument("a project's limits.memory is a size (e.g. 2GiB), not a "
                              "percentage")
    check_memory(value)


#: limits summed over a project's instances: key → (instance key it sums, unit)
LIMITS = {"limits.memory": "limits.memory", "limits.cpu": "limits.cpu",
          "limits.processes": "limits.processes", "limits.disk": "size"}

PROJECT_KEYS: list[KeySpec] = [
    *(KeySpec(key, check_bool, value, description=f"whether the project has its own "
              f"{key.removeprefix('features.')} (else it uses the default project's)")
      for key, value in FEATURES.items() if key != "features.networks"),
    KeySpec("features.networks", _check_networks_feature, "false",
            description="false only: the project uses the default project's networks (a "
                        "project of LXD 5.0 owns only OVN networks, which lxfs has not)"),
    KeySpec("limits.instances", check_int(0), description="most instances in the project"),
    KeySpec("limits.containers", check_int(0), description="most containers in the project"),
    KeySpec("limits.virtual-machines", check_int(0),
            description="most virtual machines in the project (lxfs runs none)"),
    KeySpec("limits.networks", check_int(0), description="most networks in the project"),
    KeySpec("limits.cpu", check_int(0),
            description="sum of the instances' limits.cpu (each must set it)"),
    KeySpec("limits.memory", _check_memory_limit,
            description="sum of the instances' limits.memory (each must set it)"),
    KeySpec("limits.processes", check_int(0),
            description="sum of the instances' limits.processes (each must set it)"),
    KeySpec("limits.disk", parse_size,
            description="sum of the instances' root disk sizes (each must set size)"),
    KeySpec("restricted", check_bool, "false",
            description="whether the restricted.* keys apply to the project"),
    KeySpec("restricted.containers.nesting", _one_of("block", "allow"), "block",
            description="whether security.nesting=true is allowed"),
    KeySpec("restricted.containers.privilege", _one_of("unprivileged", "isolated", "allow"),
            "unprivileged",
            description="unprivileged: no security.privileged; isolated: also "
                        "security.idmap.isolated=true required; allow: privileged allowed"),
    KeySpec("restricted.containers.lowlevel", _one_of("block", "allow"), "block",
            description="whether low-level keys (raw.*, linux.kernel_modules...: those "
                        "their plugin declares lowlevel) are allowed"),
    KeySpec("restricted.containers.interception", _one_of("block", "allow"), "block",
            description="whether security.syscalls.intercept.* keys are allowed"),
    KeySpec("restricted.devices.unix-char", _one_of("block", "allow"), "block",
            description="whether unix-char devices are allowed"),
    KeySpec("restricted.devices.unix-block", _one_of("block", "allow"), "block",
            description="whether unix-block devices are allowed"),
    KeySpec("restricted.devices.disk", _one_of("block", "managed", "allow"), "managed",
            description="block: no disks but the root; managed: only custom volumes of "
                        "pools; allow: host paths too (under restricted.devices.disk.paths)"),
    KeySpec("restricted.devices.disk.paths", _check_paths, "",
            description="comma-separated host paths under which disk sources may be "
                        "(with restricted.devices.disk=allow; empty: anywhere)"),
    KeySpec("restricted.devices.nic", _one_of("block", "managed", "allow"), "managed",
            description="block: no nics; managed: only nics on managed networks"),
]

INTERCEPT_PREFIX = "security.syscalls.intercept."


def validate_project_key(key: str, value: str) -> None:
    validate_among(PROJECT_KEYS, key, value, "project configuration key")


class Restrictions:
    """The restrictions of one project, from its config."""

    def __init__(self, project: str, config: dict[str, str],
                 lowlevel: Callable[[str], bool] = lambda key: False) -> None:
        """``lowlevel(key)``: whether a key is low-level (``KeySpec.lowlevel``, declared by
        the plugin that owns it)."""
        self.project = project
        self.lowlevel = lowlevel
        self.active = is_true(config.get("restricted"))
        self.values = {key: config.get(key) or default for key, default in DEFAULTS.items()}

    def _value(self, key: str) -> str:
        return self.values[key]

    def check_key(self, what: str, key: str, value: str) -> None:
        """Refuse one config key of an instance or profile (``what``: ``instance c1``)."""
        if not self.active:
            return
        where = f"on {what} of project {self.project!r}"
        if self.lowlevel(key) and self._value("restricted.containers.lowlevel") != "allow":
            raise Forbidden(f"use of low-level config {key!r} {where} is forbidden "
                            "(restricted.containers.lowlevel)")
        if key.startswith(INTERCEPT_PREFIX) and is_true(value) and \
                self._value("restricted.containers.interception") != "allow":
            raise Forbidden(f"container syscall interception ({key}) {where} is forbidden "
                            "(restricted.containers.interception)")
        if key == "security.nesting" and is_true(value) and \
                self._value("restricted.containers.nesting") != "allow":
            raise Forbidden(f"container nesting {where} is forbidden "
                            "(restricted.containers.nesting)")
        if key == "security.privileged" and is_true(value) and \
                self._value("restricted.containers.privilege") != "allow":
            raise Forbidden(f"privileged containers {where} are forbidden "
                            "(restricted.containers.privilege)")

    def check_config(self, what: str, config: dict[str, str], instance: bool) -> None:
        """Every key of a config; for an instance's expanded config, also what must be set
        (``security.idmap.isolated`` when privilege is ``isolated``)."""
        if not self.active:
            return
        for key, value in config.items():
            self.check_key(what, key, value)
        if instance and self._value("restricted.containers.privilege") == "isolated" and \
                not is_true(config.get("security.idmap.isolated")):
            raise Forbidden(f"non-isolated containers are forbidden in project "
                            f"{self.project!r}: set security.idmap.isolated=true "
                            "(restricted.containers.privilege=isolated)")

    def check_device(self, what: str, name: str, device: dict[str, str]) -> None:
        if not self.active:
            return
        kind = device.get("type", "")
        where = f"device {name} of {what} in project {self.project!r}"
        if kind in ("unix-char", "unix-block") and \
                self._value(f"restricted.devices.{kind}") != "allow":
            raise Forbidden(f"{kind} devices are forbidden: {where}")
        if kind == "nic":
            rule = self._value("restricted.devices.nic")
            if rule == "block":
                raise Forbidden(f"network devices are forbidden: {where}")
            if rule == "managed" and not device.get("network"):
                raise Forbidden(f"only nics on managed networks (network=...) are allowed: "
                                f"{where}")
        if kind == "disk" and not (device.get("path") == "/" and device.get("pool")):
            rule = self._value("restricted.devices.disk")
            if rule == "block":
                raise Forbidden(f"disk devices are forbidden: {where}")
            if rule == "managed" and not device.get("pool"):
                raise Forbidden(f"disks not backed by a storage pool are forbidden: {where}")
            paths = [p.strip() for p in self._value("restricted.devices.disk.paths").split(",")
                     if p.strip()]
            source = device.get("source", "")
            if rule == "allow" and paths and not device.get("pool") and not any(
                    os.path.normpath(source) == p.rstrip("/") or
                    os.path.normpath(source).startswith(p.rstrip("/") + "/") for p in paths):
                raise Forbidden(f"disk source {source!r} is outside "
                                f"restricted.devices.disk.paths: {where}")

    def check_devices(self, what: str, devices: dict[str, dict[str, str]]) -> None:
        for name, device in devices.items():
            self.check_device(what, name, device)

    def violations(self, entities: Iterable[tuple[str, dict[str, str],
                                                   dict[str, dict[str, str]], bool]]
                   ) -> list[str]:
        """What breaks these restrictions among (label, config, devices, is_instance)."""
        found = []
        for label, config, devices, instance in entities:
            try:
                self.check_config(label, config, instance)
                self.check_devices(label, devices)
            except Forbidden as exc:
                found.append(exc.message)
        return found


def _amount(limit: str, inst_value: str) -> int:
    if limit == "limits.memory":
        return memory_bytes(inst_value)
    if limit == "limits.disk":
        return parse_size(inst_value)
    if limit == "limits.cpu" and ("-" in inst_value or "," in inst_value):
        return len({c for part in inst_value.split(",") for c in _cpu_range(part)})
    return int(inst_value)


def _cpu_range(part: str) -> range:
    lo, _, hi = part.partition("-")
    return range(int(lo), int(hi or lo) + 1)


def _limit(limit: str, value: str) -> int:
    if limit == "limits.memory":
        return memory_bytes(value)
    if limit == "limits.disk":
        return parse_size(value)
    return int(value)


def _root_size(devices: dict[str, dict[str, str]]) -> str:
    for dev in devices.values():
        if dev.get("type") == "disk" and dev.get("path") == "/":
            return dev.get("size", "")
    return ""


def usage(config: dict[str, str],
          instances: Iterable[tuple[str, str, dict[str, str], dict[str, dict[str, str]]]]
          ) -> dict[str, tuple[int, int]]:
    """Usage against limits: resource → (usage, limit or -1), over the project's
    (name, type, expanded config, expanded devices). An instance that sets no value of a
    summed resource counts 0 here (``check_limits`` refuses it)."""
    found = list(instances)
    result = {"instances": (len(found), int(config.get("limits.instances") or -1)),
              "containers": (sum(1 for _, kind, _, _ in found if kind == "container"),
                             int(config.get("limits.containers") or -1)),
              "virtual-machines": (0, int(config.get("limits.virtual-machines") or -1))}
    for limit, source in LIMITS.items():
        total = 0
        for _, _, cfg, devices in found:
            value = _root_size(devices) if source == "size" else cfg.get(source, "")
            if value:
                total += _amount(limit, value)
        result[limit.removeprefix("limits.")] = (
            total, _limit(limit, config[limit]) if config.get(limit) else -1)
    return result


def check_limits(project: str, config: dict[str, str],
                 instances: Iterable[tuple[str, str, dict[str, str],
                                           dict[str, dict[str, str]]]],
                 required: Iterable[str] | None = None) -> None:
    """Refuse (``Forbidden``) when the project's instances as they would be (the new or
    changed one among them) exceed a limit, or one of them (of ``required``, the names
    held to it; None: all) sets no value for a summed limit (LXD's rule: each instance must
    say what it takes; a record the mount fills key by key is held to it at start)."""
    found = list(instances)
    held = None if required is None else set(required)
    for limit, source in LIMITS.items():
        if not config.get(limit):
            continue
        for name, _, cfg, devices in found:
            if held is not None and name not in held:
                continue
            value = _root_size(devices) if source == "size" else cfg.get(source, "")
            if not value:
                what = "a root disk size" if source == "size" else f"{source!r}"
                raise Forbidden(f"instance {name!r} in project {project!r} has no {what} "
                                f"(directly or through a profile), required by the "
                                f"project's {limit}={config[limit]}")
    for resource, (used, limit) in usage(config, found).items():
        if limit >= 0 and used > limit:
            raise Forbidden(f"project {project!r} would exceed its limits.{resource}="
                            f"{config[f'limits.{resource}']} (the instances would use "
                            f"{_shown(resource, used)})")


def _shown(resource: str, amount: int) -> str:
    if resource in ("memory", "disk"):
        for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if amount >= size and amount % size == 0:
                return f"{amount // size}{unit}"
        return f"{amount}B"
    return str(amount)
