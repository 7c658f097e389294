"""Projects' restrictions: what a project lets its instances and profiles use (LXD 5.0's
``restricted`` and ``restricted.*`` keys).

Only the ``default`` project exists for now (the mount's top level); its ``config/`` holds
these keys under ``projects/default/``. Nothing is restricted unless ``restricted=true``; then
each ``restricted.*`` key takes its value, or LXD's default for that key: privileged
containers, nesting, low-level keys (``raw.*``...), syscall interception and unix devices are
blocked, disks must come from a pool and nics from a managed network.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable

from lxfs.config_schema import KeySpec, check_bool, is_true, validate_among
from lxfs.errors import InvalidArgument, LxfsError


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

PROJECT_KEYS: list[KeySpec] = [
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
