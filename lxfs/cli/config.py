"""``config`` commands: server and instance keys, devices, ``edit``."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from lxfs.cli import editing
from lxfs.cli.instances import parse_pairs
from lxfs.cli.mount import (
    CLIError,
    Mount,
    list_dirs,
    parse_bool,
    read_devices,
    read_dir_values,
    read_lines,
    read_opt,
)
from lxfs.cli.output import natural_key, render_yaml

TYPE_CHECKING = False  # importing typing costs 2-4 ms of start-up
if TYPE_CHECKING:
    from typing import Any


def _key_path(base: Path, key: str) -> Path:
    if not key or "/" in key or key in (".", ".."):
        raise CLIError(f"Invalid config key: {key!r}")
    return base / key


def _targets(mount: Mount, instance: str | None) -> tuple[Path, Path | None]:
    """``(config dir, error scope)`` of an instance, or of the server when ``instance`` is
    None."""
    if instance is None:
        return mount.root / "config", None
    inst = mount.instance(instance)
    return inst / "config", inst


def set_key(mount: Mount, instance: str | None, key: str, value: str) -> None:
    """Set (or, for an empty value, unset) one config key."""
    base, scope = _targets(mount, instance)
    path = _key_path(base, key)
    if value == "":
        unset_key(mount, instance, key)
        return
    mount.write(path, value, scope, messages={
        errno.EINVAL: f"Invalid config: unknown key or bad value for {key!r}",
        errno.EACCES: f"Config key {key!r} is read-only",
        errno.EPERM: f"Config key {key!r} is read-only",
    })


def unset_key(mount: Mount, instance: str | None, key: str) -> None:
    """Remove one config key (not being set is fine)."""
    base, scope = _targets(mount, instance)
    mount.unset(_key_path(base, key), scope, f"Cannot unset {key!r}")


def cmd_get(args: argparse.Namespace) -> int:
    """``lxfs config get [NAME] KEY``."""
    mount = Mount()
    if len(args.args) == 1:
        instance, key = None, args.args[0]
    elif len(args.args) == 2:
        instance, key = args.args
    else:
        raise CLIError("Usage: lxfs config get [NAME] KEY")
    base, scope = _targets(mount, instance)
    path = _key_path(base, key)
    value = mount.do(lambda: read_opt(path), scope)
    sys.stdout.write(value + "\n")
    return 0


def parse_set_args(mount: Mount, args: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """Split ``config set`` arguments like lxc does: ``KEY VALUE`` / ``KEY=VALUE...`` for the
    server, ``NAME KEY VALUE`` / ``NAME KEY=VALUE...`` for an instance."""
    if not args:
        raise CLIError("Usage: lxfs config set [NAME] KEY VALUE | [NAME] KEY=VALUE...")
    if "=" in args[0]:
        return None, parse_pairs(args)
    if len(args) == 1:
        raise CLIError("Usage: lxfs config set [NAME] KEY VALUE | [NAME] KEY=VALUE...")
    if len(args) == 2:
        if "=" not in args[1]:
            return None, [(args[0], args[1])]
        # ``NAME KEY=VALUE`` unless NAME is no instance and looks like a key with a value
        if not (mount.instances / args[0]).is_dir() and "." in args[0]:
            return None, [(args[0], args[1])]
        return args[0], parse_pairs(args[1:])
    if len(args) == 3 and "=" not in args[1]:
        return args[0], [(args[1], args[2])]
    return args[0], parse_pairs(args[1:])


def cmd_set(args: argparse.Namespace) -> int:
    """``lxfs config set [NAME] KEY VALUE`` or ``[NAME] KEY=VALUE...``."""
    mount = Mount()
    instance, pairs = parse_set_args(mount, args.args)
    if instance is not None:
        mount.instance(instance)
    for key, value in pairs:
        set_key(mount, instance, key, value)
    return 0


def cmd_unset(args: argparse.Namespace) -> int:
    """``lxfs config unset [NAME] KEY``."""
    mount = Mount()
    if len(args.args) == 1:
        unset_key(mount, None, args.args[0])
    elif len(args.args) == 2:
        mount.instance(args.args[0])
        unset_key(mount, args.args[0], args.args[1])
    else:
        raise CLIError("Usage: lxfs config unset [NAME] KEY")
    return 0


def instance_config(inst: Path, expanded: bool) -> dict[str, Any]:
    """The YAML document of ``lxc config show`` for one instance."""
    base = inst / "expanded" if expanded else inst
    return {
        "architecture": read_opt(inst / "architecture"),
        "config": read_dir_values(base / "config"),
        "devices": read_devices(base / "devices"),
        "ephemeral": parse_bool(read_opt(inst / "ephemeral", "false")),
        "profiles": read_lines(inst / "profiles"),
        "stateful": False,
        "description": read_opt(inst / "description"),
    }


def cmd_show(args: argparse.Namespace) -> int:
    """``lxfs config show [NAME] [--expanded]``."""
    mount = Mount()
    if args.name is None:
        data: dict[str, Any] = {"config": read_dir_values(mount.root / "config")}
    else:
        data = instance_config(mount.instance(args.name), args.expanded)
    sys.stdout.write(render_yaml(data))
    return 0


# -- devices -----------------------------------------------------------------------------------
def _device_dir(inst: Path, dev: str) -> Path:
    if not dev or "/" in dev or dev in (".", ".."):
        raise CLIError(f"Invalid device name: {dev!r}")
    return inst / "devices" / dev


def add_device(mount: Mount, inst: Path, dev: str, kind: str, pairs: list[tuple[str, str]]
               ) -> None:
    """mkdir ``devices/DEV``, write ``type`` first, then the other keys (rolled back on
    failure)."""
    ddir = _device_dir(inst, dev)
    if ddir.exists():
        raise CLIError("The device already exists")
    mount.do(lambda: os.mkdir(ddir), inst, messages={errno.EEXIST: "The device already exists"})
    try:
        mount.write(ddir / "type", kind, inst,
                    messages={errno.EINVAL: f"Invalid device type: {kind!r}"})
        for key, value in pairs:
            if key == "type":
                continue
            if "/" in key or key in ("", ".", ".."):
                raise CLIError(f"Invalid device key: {key!r}")
            mount.write(ddir / key, value, inst,
                        messages={errno.EINVAL: f"Invalid device option {key}={value}"})
    except BaseException:
        _remove_tree(ddir)
        raise


def override_device(mount: Mount, inst: Path, dev: str, pairs: list[tuple[str, str]]) -> None:
    """Give the instance its own copy of device ``dev`` inherited from a profile, with
    ``pairs`` changed: one write of ``DEV KEY=VALUE...`` to ``instances/NAME/override``, which
    the daemon does in one step (on a refusal nothing is left behind)."""
    import shlex

    ddir = _device_dir(inst, dev)
    if ddir.is_dir():
        raise CLIError("The device already exists")
    if not (inst / "expanded" / "devices" / dev).is_dir():
        raise CLIError("The profile device doesn't exist")
    for key, _value in pairs:
        if "/" in key or key in ("", ".", ".."):
            raise CLIError(f"Invalid device key: {key!r}")
    request = " ".join(shlex.quote(word) for word in (dev, *(f"{k}={v}" for k, v in pairs)))
    mount.write(inst / "override", request, inst, messages={
        errno.EINVAL: f"Invalid device options for {dev}",
        errno.EEXIST: "The device already exists",
        errno.ENOENT: "The profile device doesn't exist",
    })


def print_notice(inst: Path) -> None:
    """Show what the daemon said about a change it accepted (``applies at next start``,
    a size not enforced...): the instance's ``error`` file after a success."""
    notice = read_opt(inst / "error").strip()
    if notice:
        print(notice, file=sys.stderr)


def _remove_tree(ddir: Path) -> None:
    try:
        os.rmdir(ddir)
        return
    except OSError:
        pass
    try:
        for entry in os.scandir(ddir):
            try:
                os.unlink(entry.path)
            except OSError:
                pass
        os.rmdir(ddir)
    except OSError:
        pass


def cmd_device(args: argparse.Namespace) -> int:
    """``lxfs config device add|override|remove|list|show|get|set|unset NAME ...``."""
    mount = Mount()
    inst = mount.instance(args.name)
    action = args.device_action
    if action == "add":
        add_device(mount, inst, args.device, args.type, parse_pairs(args.options))
        print(f"Device {args.device} added to {args.name}")
    elif action == "override":
        override_device(mount, inst, args.device, parse_pairs(args.options))
        print_notice(inst)
        print(f"Device {args.device} overridden for {args.name}")
    elif action == "remove":
        for dev in args.devices:
            ddir = _device_dir(inst, dev)
            if not ddir.is_dir():
                if (inst / "expanded" / "devices" / dev).is_dir():
                    raise CLIError("Device from profile(s) cannot be removed from individual "
                                   "instance. Override device or modify profile instead")
                raise CLIError(f"Device doesn't exist: {dev}")
            mount.do(lambda d=ddir: os.rmdir(d), inst)
            print(f"Device {dev} removed from {args.name}")
    elif action == "list":
        for dev in sorted(list_dirs(inst / "devices"), key=natural_key):
            print(dev)
    elif action == "show":
        sys.stdout.write(render_yaml(read_devices(inst / "devices")))
    elif action == "get":
        ddir = _device_dir(inst, args.device)
        if not ddir.is_dir():
            ddir = inst / "expanded" / "devices" / args.device
            if not ddir.is_dir():
                raise CLIError(f"Device doesn't exist: {args.device}")
        print(read_opt(_key_path(ddir, args.key)))
    elif action == "set":
        ddir = _device_dir(inst, args.device)
        pairs = (parse_pairs(args.values) if "=" in args.values[0] or len(args.values) != 2
                 else [(args.values[0], args.values[1])])
        if not ddir.is_dir():  # inherited from a profile: the instance gets its own copy
            if not (inst / "expanded" / "devices" / args.device).is_dir():
                raise CLIError(f"Device doesn't exist: {args.device}")
            override_device(mount, inst, args.device, pairs)
            print_notice(inst)
            return 0
        for key, value in pairs:
            path = _key_path(ddir, key)
            if value == "":
                mount.do(lambda p=path: os.unlink(p) if p.exists() else None, inst)
            else:
                mount.write(path, value, inst,
                            messages={errno.EINVAL: f"Invalid device option {key}={value}"})
        print_notice(inst)
    elif action == "unset":
        ddir = _device_dir(inst, args.device)
        if not ddir.is_dir():
            raise CLIError(f"Device doesn't exist: {args.device}")
        mount.unset(_key_path(ddir, args.key), inst)
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    """``lxfs config edit NAME``: the YAML of ``config show`` in $EDITOR (or from stdin)."""
    mount = Mount()
    target = editing.Target(mount, mount.instance(args.name), "instance")
    return editing.edit(target, instance_config(target.path, False), editing.INSTANCE_HEADER)


# -- registration ------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``config``."""
    config = sub.add_parser("config", help="Manage instance and server configuration")
    csub = config.add_subparsers(dest="config_command", metavar="COMMAND")
    csub.required = True

    p = csub.add_parser("get", help="Get a config key: [NAME] KEY")
    p.add_argument("args", metavar="[NAME] KEY", nargs="+")
    p.set_defaults(func=cmd_get)

    p = csub.add_parser("set", help="Set config keys: [NAME] KEY VALUE | [NAME] KEY=VALUE...")
    p.add_argument("args", metavar="ARG", nargs="+")
    p.set_defaults(func=cmd_set)

    p = csub.add_parser("unset", help="Unset a config key: [NAME] KEY")
    p.add_argument("args", metavar="[NAME] KEY", nargs="+")
    p.set_defaults(func=cmd_unset)

    p = csub.add_parser("show", help="Show instance or server configuration")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("-e", "--expanded", action="store_true", help="show the expanded config")
    p.set_defaults(func=cmd_show)

    p = csub.add_parser("edit", help="Edit instance configuration as YAML ($EDITOR, or stdin "
                        "if piped)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_edit)

    add_device_parsers(csub, "instance", "NAME").set_defaults(func=cmd_device)

    from lxfs.cli.trust import register_trust  # noqa: PLC0415

    register_trust(csub)


def add_device_parsers(sub: argparse._SubParsersAction, owner: str,  # type: ignore[type-arg]
                       metavar: str) -> argparse.ArgumentParser:
    """The ``device add|remove|list|show|get|set|unset`` subcommands, for instances
    (``config device``, which also has ``override``) and profiles (``profile device``);
    returns the ``device`` parser."""
    device = sub.add_parser("device", help=f"Manage {owner} devices")
    dsub = device.add_subparsers(dest="device_action", metavar="COMMAND")
    dsub.required = True
    forms = [
        ("add", [], f"Add a device: {metavar} DEVICE TYPE [KEY=VALUE...]",
         [("device", "DEVICE", None), ("type", "TYPE", None), ("options", "KEY=VALUE", "*")]),
        ("override", [], "Copy a device inherited from a profile into the instance, with "
         "keys changed: NAME DEVICE [KEY=VALUE...] (e.g. root size=20GiB)",
         [("device", "DEVICE", None), ("options", "KEY=VALUE", "*")]),
        ("remove", ["rm"], f"Remove devices: {metavar} DEVICE...",
         [("devices", "DEVICE", "+")]),
        ("list", ["ls"], f"List an {owner}'s devices" if owner[0] in "aeiou"
         else f"List a {owner}'s devices", []),
        ("show", [], f"Show the {owner}'s devices", []),
        ("get", [], f"Get a device option: {metavar} DEVICE KEY",
         [("device", "DEVICE", None), ("key", "KEY", None)]),
        ("set", [], f"Set device options: {metavar} DEVICE KEY VALUE | KEY=VALUE...",
         [("device", "DEVICE", None), ("values", "ARG", "+")]),
        ("unset", [], f"Unset a device option: {metavar} DEVICE KEY",
         [("device", "DEVICE", None), ("key", "KEY", None)]),
    ]
    for action, aliases, helptext, arguments in forms:
        if action == "override" and owner != "instance":
            continue  # profiles inherit nothing (as LXD: no ``profile device override``)
        p = dsub.add_parser(action, aliases=aliases, help=helptext)
        p.add_argument("name", metavar=metavar)
        for dest, meta, nargs in arguments:
            p.add_argument(dest, metavar=meta, nargs=nargs)
        p.set_defaults(device_action=action)
    return device
