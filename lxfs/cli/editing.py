"""Config and devices of an instance or a profile through the mount, and YAML editing
(``config edit``, ``profile edit``): the edited document is applied as a difference."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

from lxfs.cli.mount import (
    CLIError,
    Mount,
    parse_bool,
    read_devices,
    read_dir_values,
    read_lines,
    read_opt,
)
from lxfs.cli.output import render_yaml

TYPE_CHECKING = False  # importing typing costs 2-4 ms of start-up
if TYPE_CHECKING:
    from typing import Any

ERROR_PREFIX = "# Error: "

INSTANCE_HEADER = """\
### This is a YAML representation of the instance's configuration.
### Lines starting with '#' are ignored.
###
### For example:
### config:
###   limits.memory: 512MiB
### devices:
###   opt:
###     path: /opt
###     source: /srv/opt
###     type: disk
### ephemeral: false
### profiles:
### - default
### description: ''
###
### The architecture and the name cannot be changed here.
"""

PROFILE_HEADER = """\
### This is a YAML representation of the profile.
### Lines starting with '#' are ignored.
###
### A profile is a set of configuration keys and a set of devices, for example:
### config:
###   limits.memory: 64MiB
### description: Small instances
### devices:
###   root:
###     path: /
###     pool: default
###     type: disk
###
### The name and the list of instances using the profile cannot be changed here.
"""


class Target:
    """An instance (``instances/NAME``) or a profile (``profiles/NAME``): what has
    ``config/``, ``devices/`` and ``description``."""

    __slots__ = ("mount", "path", "kind")

    def __init__(self, mount: Mount, path: Path, kind: str) -> None:
        self.mount = mount
        self.path = path
        self.kind = kind  # "instance" or "profile"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def scope(self) -> Path | None:
        """Where the daemon explains a failure: the instance's ``error``, else the root's."""
        return self.path if self.kind == "instance" else None

    def write(self, path: Path, value: str, messages: dict[int, str] | None = None) -> None:
        self.mount.write(path, value, self.scope, messages=messages)

    def do(self, fn: Callable[[], Any], messages: dict[int, str] | None = None) -> Any:
        return self.mount.do(fn, self.scope, messages=messages)


def check_name(name: str, what: str) -> str:
    """Refuse names that are no single path component."""
    if not name or "/" in name or name in (".", ".."):
        raise CLIError(f"Invalid {what}: {name!r}")
    return name


# -- config keys -------------------------------------------------------------------------------
def set_config(target: Target, key: str, value: str) -> None:
    """Set one config key (an empty value unsets it)."""
    if value == "":
        unset_config(target, key)
        return
    target.write(target.path / "config" / check_name(key, "config key"), value, messages={
        errno.EINVAL: f"Invalid config: unknown key or bad value for {key!r}",
        errno.EACCES: f"Config key {key!r} is read-only",
        errno.EPERM: f"Config key {key!r} is read-only",
    })


def unset_config(target: Target, key: str) -> None:
    """Remove one config key (not being set is fine)."""
    target.mount.unset(target.path / "config" / check_name(key, "config key"), target.scope,
                       f"Cannot unset {key!r}")


# -- devices -----------------------------------------------------------------------------------
def device_dir(target: Target, dev: str) -> Path:
    return target.path / "devices" / check_name(dev, "device name")


def add_device(target: Target, dev: str, values: dict[str, str]) -> None:
    """mkdir ``devices/DEV``, write ``type`` first, then the other keys (rolled back on
    failure)."""
    ddir = device_dir(target, dev)
    kind = values.get("type", "")
    if not kind:
        raise CLIError(f"Missing device type for {dev!r}")
    if ddir.exists():
        raise CLIError("The device already exists")
    target.do(lambda: os.mkdir(ddir), messages={errno.EEXIST: "The device already exists"})
    try:
        target.write(ddir / "type", kind, messages={errno.EINVAL: f"Invalid device type: {kind!r}"})
        for key, value in values.items():
            if key != "type":
                set_device_key(target, dev, key, value)
    except BaseException:
        try:
            os.rmdir(ddir)
        except OSError:
            pass
        raise


def remove_device(target: Target, dev: str) -> None:
    """rmdir ``devices/DEV``."""
    ddir = device_dir(target, dev)
    if not ddir.is_dir():
        raise CLIError(f"Device doesn't exist: {dev}")
    target.do(lambda: os.rmdir(ddir))


def set_device_key(target: Target, dev: str, key: str, value: str) -> None:
    """Write one device key (an empty value unsets it)."""
    path = device_dir(target, dev) / check_name(key, "device key")
    if value == "":
        unset_device_key(target, dev, key)
        return
    target.write(path, value, messages={errno.EINVAL: f"Invalid device option {key}={value}"})


def unset_device_key(target: Target, dev: str, key: str) -> None:
    """Remove one device key (not being set is fine)."""
    target.mount.unset(device_dir(target, dev) / check_name(key, "device key"), target.scope)


# -- documents ---------------------------------------------------------------------------------
def _yaml_loader() -> Any:
    """A SafeLoader whose plain scalars stay text as written (``mode: 0660``, ``limits.cpu:
    2``, ``security.nesting: yes``): every value of a config or device is a string, as in
    LXD. yaml is imported here, not at start-up (15 ms the other commands do not pay)."""
    import yaml  # noqa: PLC0415

    class Loader(yaml.SafeLoader):
        yaml_implicit_resolvers = {
            first: [(tag, rx) for tag, rx in resolvers if tag == "tag:yaml.org,2002:null"]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }

    return Loader


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise CLIError(f"{where}: expected a string, got {type(value).__name__}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CLIError(f"{where}: expected a mapping")
    return {str(k): v for k, v in value.items()}


def parse_document(text: str, kind: str) -> dict[str, Any]:
    """Parse an edited YAML document into its normalized form (strings everywhere; a
    missing section is empty, as a PUT in LXD)."""
    import yaml  # noqa: PLC0415

    try:
        data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = ", ".join(p for p in (exc.context, exc.problem) if p)
        raise CLIError(f"YAML: {problem}{where}") from exc
    except yaml.YAMLError as exc:
        raise CLIError(f"YAML: {exc}") from exc
    data = _mapping(data, "document")
    config = {k: _text(v, f"config.{k}") for k, v in _mapping(data.get("config"), "config").items()}
    devices: dict[str, dict[str, str]] = {}
    for dev, options in _mapping(data.get("devices"), "devices").items():
        devices[dev] = {k: _text(v, f"devices.{dev}.{k}")
                        for k, v in _mapping(options, f"devices.{dev}").items()}
        devices[dev] = {k: v for k, v in devices[dev].items() if v != ""}
    doc: dict[str, Any] = {
        "config": {k: v for k, v in config.items() if v != ""},
        "devices": devices,
        "description": _text(data.get("description"), "description"),
    }
    if kind == "instance":
        profiles = data.get("profiles")
        if profiles is None:
            profiles = []
        if not isinstance(profiles, list):
            raise CLIError("profiles: expected a list")
        doc["profiles"] = [_text(p, "profiles") for p in profiles]
        ephemeral = _text(data.get("ephemeral"), "ephemeral").lower() or "false"
        if ephemeral not in ("true", "false"):
            raise CLIError("ephemeral: expected true or false")
        doc["ephemeral"] = ephemeral == "true"
    return doc


def apply_document(target: Target, old: dict[str, Any], new: dict[str, Any]) -> int:
    """Apply the difference between two normalized documents; returns the number of
    changes (0: nothing written)."""
    path = target.path
    changes = 0
    if new["description"] != old.get("description", ""):
        target.write(path / "description", new["description"])
        changes += 1
    if target.kind == "instance":
        if new["ephemeral"] != old.get("ephemeral", False):
            target.write(path / "ephemeral", "true" if new["ephemeral"] else "false")
            changes += 1
        if new["profiles"] != old.get("profiles", []):
            target.write(path / "profiles", "".join(p + "\n" for p in new["profiles"]),
                         messages={errno.ENOENT: "Profile not found"})
            changes += 1
    old_config: dict[str, str] = old.get("config", {})
    for key in old_config:
        if key not in new["config"]:
            unset_config(target, key)
            changes += 1
    for key, value in new["config"].items():
        if old_config.get(key) != value:
            set_config(target, key, value)
            changes += 1
    old_devices: dict[str, dict[str, str]] = old.get("devices", {})
    for dev, options in old_devices.items():
        if dev not in new["devices"] or new["devices"][dev].get("type") != options.get("type"):
            remove_device(target, dev)
            changes += 1
    for dev, options in new["devices"].items():
        before = old_devices.get(dev)
        if before is None or before.get("type") != options.get("type"):
            add_device(target, dev, options)
            changes += 1
            continue
        for key in before:
            if key not in options:
                unset_device_key(target, dev, key)
                changes += 1
        for key, value in options.items():
            if before.get(key) != value:
                set_device_key(target, dev, key, value)
                changes += 1
    return changes


def current_document(target: Target) -> dict[str, Any]:
    """The normalized document of what the mount holds now."""
    path = target.path
    doc: dict[str, Any] = {
        "config": read_dir_values(path / "config"),
        "devices": read_devices(path / "devices"),
        "description": read_opt(path / "description"),
    }
    if target.kind == "instance":
        doc["profiles"] = read_lines(path / "profiles")
        doc["ephemeral"] = parse_bool(read_opt(path / "ephemeral", "false"))
    return doc


def update(target: Target, new: dict[str, Any]) -> int:
    """Make the target match ``new``; on failure, put back what was there (best effort)."""
    old = current_document(target)
    try:
        return apply_document(target, old, new)
    except CLIError:
        try:
            apply_document(target, current_document(target), old)
        except CLIError:
            pass
        raise


# -- the editor --------------------------------------------------------------------------------
def editor_command() -> list[str]:
    """``$EDITOR``, else ``$VISUAL``, else ``vi`` (may carry arguments: ``code -w``)."""
    import shlex  # noqa: PLC0415

    editor = os.environ.get("EDITOR") or os.environ.get("VISUAL") or "vi"
    return shlex.split(editor)


def run_editor(text: str) -> str:
    """Let the user edit ``text`` in a temporary ``.yaml`` file; return the result."""
    import subprocess  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    fd, tmp = tempfile.mkstemp(prefix="lxfs_editor_", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        command = editor_command()
        try:
            status = subprocess.call([*command, tmp])
        except FileNotFoundError as exc:
            raise CLIError("No text editor found, please set the EDITOR environment "
                           "variable") from exc
        if status != 0:
            raise CLIError(f"The editor {command[0]!r} exited with status {status}")
        with open(tmp, encoding="utf-8") as f:
            return f.read()
    finally:
        os.unlink(tmp)


def with_error(text: str, message: str) -> str:
    """``text`` with ``message`` as comment lines on top (replacing an earlier error)."""
    lines = text.split("\n")
    while lines and (lines[0].startswith(ERROR_PREFIX) or lines[0].startswith("#   ")):
        lines.pop(0)
    msg = message.split("\n")
    top = [ERROR_PREFIX + msg[0]] + ["#   " + m for m in msg[1:]]
    return "\n".join(top + lines)


def stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def parse_config_document(text: str) -> tuple[dict[str, str], str | None]:
    """The ``config`` mapping and ``description`` (None when absent) of an edited YAML
    document (networks, storage pools)."""
    import yaml  # noqa: PLC0415

    try:
        new = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CLIError(f"invalid YAML: {exc}") from None
    if not isinstance(new, dict) or not isinstance(new.get("config") or {}, dict):
        raise CLIError("expected a mapping with a config mapping")
    config = {str(k): str(v) for k, v in (new.get("config") or {}).items()}
    description = str(new["description"] or "") if "description" in new else None
    return config, description


def edit_loop(initial: str, apply: Callable[[str], None]) -> int:
    """The editing dialogue of every ``edit`` command: YAML from stdin when it is not a
    terminal, else ``$EDITOR``, reopened with the error on top until ``apply`` accepts the
    text or the user gives up (ctrl+c), as LXD does."""
    if not stdin_is_terminal():
        try:
            text = sys.stdin.read()
        except (OSError, ValueError) as exc:
            raise CLIError(f"Cannot read the YAML from stdin: {exc}") from exc
        apply(text)
        return 0
    text = initial
    while True:
        text = run_editor(text)
        try:
            apply(text)
            return 0
        except CLIError as exc:
            sys.stderr.write(f"Config parsing error: {exc.message}\n")
            sys.stdout.write("Press enter to open the editor again or ctrl+c to abort change\n")
            sys.stdout.flush()
            if not sys.stdin.readline():
                raise
            text = with_error(text, exc.message)


def edit(target: Target, shown: dict[str, Any], header: str) -> int:
    """``config edit`` / ``profile edit``."""
    return edit_loop(header + render_yaml(shown),
                     lambda text: update(target, parse_document(text, target.kind)))
