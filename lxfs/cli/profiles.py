"""``profile`` commands: profiles under ``profiles/NAME/`` and the ``profiles`` list of
instances."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from lxfs.cli import editing
from lxfs.cli.config import add_device_parsers
from lxfs.cli.editing import Target
from lxfs.cli.instances import parse_pairs
from lxfs.cli.mount import (
    CLIError,
    Mount,
    list_dirs,
    read_devices,
    read_dir_values,
    read_lines,
    read_opt,
)
from lxfs.cli.output import FORMATS, emit, natural_key, render_yaml

TYPE_CHECKING = False  # importing typing costs 2-4 ms of start-up
if TYPE_CHECKING:
    from typing import Any


def profile_object(pdir: Path) -> dict[str, Any]:
    """A profile shaped like LXD's ``/1.0/profiles/NAME``."""
    return {
        "config": read_dir_values(pdir / "config"),
        "description": read_opt(pdir / "description"),
        "devices": read_devices(pdir / "devices"),
        "name": pdir.name,
        "used_by": [f"/1.0/instances/{n}" for n in read_lines(pdir / "used_by")],
    }


def profile_target(mount: Mount, name: str) -> Target:
    return Target(mount, mount.profile(name), "profile")


def key_value_args(values: list[str]) -> list[tuple[str, str]]:
    """``KEY VALUE`` or ``KEY=VALUE...``."""
    if len(values) == 2 and "=" not in values[0]:
        return [(values[0], values[1])]
    return parse_pairs(values)


# -- profiles ----------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    """``lxfs profile list``."""
    mount = Mount()
    rows, data = [], []
    for name in sorted(list_dirs(mount.profiles), key=natural_key):
        pdir = mount.profiles / name
        rows.append([name, read_opt(pdir / "description"),
                     str(len(read_lines(pdir / "used_by")))])
        if args.format in ("json", "yaml"):
            data.append(profile_object(pdir))
    emit(args.format, ["NAME", "DESCRIPTION", "USED BY"], rows, data)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``lxfs profile show NAME``."""
    mount = Mount()
    sys.stdout.write(render_yaml(profile_object(mount.profile(args.name))))
    return 0


def make_profile(mount: Mount, name: str) -> Target:
    """mkdir ``profiles/NAME``."""
    editing.check_name(name, "profile name")
    path = mount.profiles / name
    mount.do(lambda: os.mkdir(path), messages={
        errno.EEXIST: f"Profile {name!r} already exists",
        errno.EINVAL: f"Invalid profile name: {name!r}",
    })
    return Target(mount, path, "profile")


def fill_or_remove(target: Target, document: dict[str, Any]) -> None:
    """Give a new profile its content; delete it again if that fails."""
    try:
        editing.update(target, document)
    except (CLIError, KeyboardInterrupt):
        try:
            os.rmdir(target.path)
        except OSError:
            pass
        raise


def cmd_create(args: argparse.Namespace) -> int:
    """``lxfs profile create NAME [--description D]`` (YAML from stdin when it is no
    terminal, like ``lxc profile create NAME < profile.yaml``)."""
    mount = Mount()
    text = ""
    if not editing.stdin_is_terminal():
        try:
            text = sys.stdin.read()
        except (OSError, ValueError):
            text = ""
    document = editing.parse_document(text, "profile") if text.strip() else None
    if document is not None and args.description is not None:
        document["description"] = args.description
    target = make_profile(mount, args.name)
    if document is not None:
        fill_or_remove(target, document)
    elif args.description:
        fill_or_remove(target, {"config": {}, "devices": {}, "description": args.description})
    print(f"Profile {args.name} created")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """``lxfs profile delete NAME...``."""
    mount = Mount()
    for name in args.names:
        path = mount.profile(name)
        mount.do(lambda p=path: os.rmdir(p), messages={
            errno.EBUSY: "Profile is currently in use",
        })
        print(f"Profile {name} deleted")
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    """``lxfs profile copy SRC DST [--refresh]``: mkdir DST, then its description, config
    and devices (``--refresh`` updates an existing DST)."""
    mount = Mount()
    document = editing.current_document(profile_target(mount, args.source))
    if args.refresh and (mount.profiles / args.target).is_dir():
        editing.update(profile_target(mount, args.target), document)
        return 0
    fill_or_remove(make_profile(mount, args.target), document)
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    """``lxfs profile rename OLD NEW``: ``mv profiles/OLD profiles/NEW``."""
    mount = Mount()
    old = mount.profile(args.old)
    editing.check_name(args.new, "profile name")
    new = mount.profiles / args.new
    if os.path.lexists(new):
        raise CLIError(f"Profile {args.new!r} already exists")
    mount.do(lambda: os.rename(old, new), messages={
        errno.EEXIST: f"Profile {args.new!r} already exists",
        errno.EINVAL: f"Invalid profile name: {args.new!r}",
    })
    print(f"Profile {args.old} renamed to {args.new}")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    """``lxfs profile edit NAME``: YAML in $EDITOR (or from stdin)."""
    mount = Mount()
    target = profile_target(mount, args.name)
    return editing.edit(target, profile_object(target.path), editing.PROFILE_HEADER)


def cmd_get(args: argparse.Namespace) -> int:
    """``lxfs profile get NAME KEY``."""
    mount = Mount()
    path = mount.profile(args.name) / "config" / editing.check_name(args.key, "config key")
    print(mount.do(lambda: read_opt(path)))
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    """``lxfs profile set NAME KEY VALUE`` or ``NAME KEY=VALUE...``."""
    target = profile_target(Mount(), args.name)
    for key, value in key_value_args(args.values):
        editing.set_config(target, key, value)
    return 0


def cmd_unset(args: argparse.Namespace) -> int:
    """``lxfs profile unset NAME KEY``."""
    editing.unset_config(profile_target(Mount(), args.name), args.key)
    return 0


# -- devices -----------------------------------------------------------------------------------
def own_device(target: Target, dev: str) -> Path:
    ddir = editing.device_dir(target, dev)
    if not ddir.is_dir():
        raise CLIError(f"Device doesn't exist: {dev}")
    return ddir


def cmd_device(args: argparse.Namespace) -> int:
    """``lxfs profile device add|remove|list|show|get|set|unset PROFILE ...``."""
    target = profile_target(Mount(), args.name)
    action = args.device_action
    if action == "add":
        values = dict(parse_pairs(args.options))
        values["type"] = args.type
        editing.add_device(target, args.device, values)
        print(f"Device {args.device} added to {args.name}")
    elif action == "remove":
        for dev in args.devices:
            editing.remove_device(target, dev)
            print(f"Device {dev} removed from {args.name}")
    elif action == "list":
        for dev in sorted(list_dirs(target.path / "devices"), key=natural_key):
            print(dev)
    elif action == "show":
        sys.stdout.write(render_yaml(read_devices(target.path / "devices")))
    elif action == "get":
        ddir = own_device(target, args.device)
        print(read_opt(ddir / editing.check_name(args.key, "device key")))
    elif action == "set":
        own_device(target, args.device)
        for key, value in key_value_args(args.values):
            editing.set_device_key(target, args.device, key, value)
    elif action == "unset":
        own_device(target, args.device)
        editing.unset_device_key(target, args.device, args.key)
    return 0


# -- instances' profile lists ------------------------------------------------------------------
def write_profiles(mount: Mount, name: str, profiles: list[str]) -> None:
    """Replace ``instances/NAME/profiles``."""
    inst = mount.instance(name)
    mount.write(inst / "profiles", "".join(p + "\n" for p in profiles), inst,
                messages={errno.ENOENT: "Profile not found"})


def cmd_assign(args: argparse.Namespace) -> int:
    """``lxfs profile assign INSTANCE p1,p2``: replaces the instance's profiles."""
    mount = Mount()
    profiles = [p for p in args.profiles.split(",") if p]
    for profile in profiles:
        mount.profile(profile)
    write_profiles(mount, args.instance, profiles)
    print(f"Profiles {args.profiles or '(none)'} applied to {args.instance}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    """``lxfs profile add INSTANCE PROFILE``: appends to the instance's profiles."""
    mount = Mount()
    current = read_lines(mount.instance(args.instance) / "profiles")
    mount.profile(args.profile)
    if args.profile in current:
        raise CLIError(f"Profile {args.profile} is already applied to {args.instance}")
    write_profiles(mount, args.instance, [*current, args.profile])
    print(f"Profile {args.profile} added to {args.instance}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    """``lxfs profile remove INSTANCE PROFILE``."""
    mount = Mount()
    current = read_lines(mount.instance(args.instance) / "profiles")
    if args.profile not in current:
        raise CLIError(f"Profile {args.profile} isn't currently applied to {args.instance}")
    write_profiles(mount, args.instance, [p for p in current if p != args.profile])
    print(f"Profile {args.profile} removed from {args.instance}")
    return 0


# -- registration ------------------------------------------------------------------------------
def _register_devices(psub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    add_device_parsers(psub, "profile", "PROFILE").set_defaults(func=cmd_device)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``profile``."""
    profile = sub.add_parser("profile", help="Manage profiles")
    psub = profile.add_subparsers(dest="profile_command", metavar="COMMAND")
    psub.required = True

    p = psub.add_parser("list", aliases=["ls"], help="List profiles")
    p.add_argument("-f", "--format", choices=FORMATS, default="table")
    p.set_defaults(func=cmd_list)
    p = psub.add_parser("show", help="Show a profile")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_show)
    p = psub.add_parser("create", help="Create a profile (YAML from stdin if piped)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--description", help="profile description")
    p.set_defaults(func=cmd_create)
    p = psub.add_parser("delete", aliases=["rm"], help="Delete profiles")
    p.add_argument("names", metavar="NAME", nargs="+")
    p.set_defaults(func=cmd_delete)
    p = psub.add_parser("copy", aliases=["cp"], help="Copy a profile")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--refresh", action="store_true", help="update the target if it exists")
    p.set_defaults(func=cmd_copy)
    p = psub.add_parser("rename", aliases=["mv"], help="Rename a profile")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    p.set_defaults(func=cmd_rename)
    p = psub.add_parser("edit", help="Edit a profile as YAML ($EDITOR, or stdin if piped)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_edit)
    p = psub.add_parser("get", help="Get a profile's config key: NAME KEY")
    p.add_argument("name", metavar="NAME")
    p.add_argument("key", metavar="KEY")
    p.set_defaults(func=cmd_get)
    p = psub.add_parser("set", help="Set profile config keys: NAME KEY VALUE | KEY=VALUE...")
    p.add_argument("name", metavar="NAME")
    p.add_argument("values", metavar="ARG", nargs="+")
    p.set_defaults(func=cmd_set)
    p = psub.add_parser("unset", help="Unset a profile config key: NAME KEY")
    p.add_argument("name", metavar="NAME")
    p.add_argument("key", metavar="KEY")
    p.set_defaults(func=cmd_unset)
    _register_devices(psub)
    p = psub.add_parser("assign", aliases=["apply"],
                        help="Replace an instance's profiles: INSTANCE p1,p2,...")
    p.add_argument("instance", metavar="INSTANCE")
    p.add_argument("profiles", metavar="PROFILES")
    p.set_defaults(func=cmd_assign)
    p = psub.add_parser("add", help="Add a profile to an instance: INSTANCE PROFILE")
    p.add_argument("instance", metavar="INSTANCE")
    p.add_argument("profile", metavar="PROFILE")
    p.set_defaults(func=cmd_add)
    p = psub.add_parser("remove", help="Remove a profile from an instance: INSTANCE PROFILE")
    p.add_argument("instance", metavar="INSTANCE")
    p.add_argument("profile", metavar="PROFILE")
    p.set_defaults(func=cmd_remove)
