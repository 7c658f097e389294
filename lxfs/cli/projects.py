"""``lxfs project ...``: projects through ``projects/`` of the mount (create, list, show,
edit, delete, rename, get, set, unset, switch, info), and the project options every command
takes (``--project``; ``list --all-projects``; ``move --target-project``).

The current project (``lxfs project switch``) is kept with the remotes in ``config.yml``,
as ``lxc`` keeps it: ``project:`` of the ``local`` remote."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lxfs.cli import base, editing
from lxfs.cli.base import CLIError
from lxfs.cli.mount import Mount, list_dirs, read_dir_values, read_opt
from lxfs.cli.output import emit, render_yaml

TYPE_CHECKING = False  # importing typing costs 2-4 ms of start-up (every command imports this)
if TYPE_CHECKING:
    from typing import Any

DEFAULT = "default"
HEADER = """\
### This is a YAML representation of the project.
### Any line starting with a '#' will be ignored.
###
### A project consists of a set of features and a description.
###
### An example would look like:
### name: my-project
### features:
###   images: true
###   profiles: true
### description: My own project
###
### Note that the name is shown but cannot be changed
"""


# -- the current project -------------------------------------------------------------------

class ProjectAction(argparse.Action):
    """``--project NAME``: the command works in that project (set at parse time, so every
    path the command builds is the project's)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        base.set_project(str(values))
        _explicit[0] = str(values)


#: the project ``--project`` named ("" without): remote commands send it as ``?project=``
_explicit = [""]


def explicit_project() -> str:
    return _explicit[0]


def add_project_options(parser: argparse.ArgumentParser) -> None:
    """``--project`` on ``parser`` and every subcommand under it."""
    if not any("--project" in a.option_strings for a in parser._actions):
        parser.add_argument("--project", metavar="PROJECT", action=ProjectAction,
                            help="the project to work in (default: the current one)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                add_project_options(sub)


def stored_project() -> str:
    """The current project from ``config.yml`` ("" when none is set). A plain read: most
    configurations have no ``project:`` line and pay no YAML."""
    conf = os.environ.get("LXFS_CONF") or os.path.expanduser("~/.config/lxfs")
    try:
        with open(os.path.join(conf, "config.yml"), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return ""
    if "project:" not in text:
        return ""
    from lxfs.cli.remotes import load_config  # noqa: PLC0415

    return load_config().get("local").project


def apply_stored_project() -> None:
    """Work in the current project unless ``--project`` named one."""
    if not base.current_project():
        project = stored_project()
        if project and project != DEFAULT:
            base.set_project(project)


# -- helpers --------------------------------------------------------------------------------

def _root(mount: Mount) -> Path:
    return mount.root / "projects"


def _project(mount: Mount, name: str) -> Path:
    path = _root(mount) / editing.check_name(name, "project name")
    if not path.is_dir():
        raise CLIError(f"Project not found: {name}")
    return path


def _current(mount: Mount) -> str:
    return base.current_project() or stored_project() or DEFAULT


def _used_by(mount: Mount, name: str) -> list[str]:
    path = _project(mount, name)
    if name == DEFAULT:
        instances = list_dirs(mount.root / "instances")
        profiles = list_dirs(mount.root / "profiles")
        suffix = ""
    else:
        instances = list_dirs(path / "instances")
        own = read_opt(path / "config" / "features.profiles") == "true"
        profiles = list_dirs(path / "profiles") if own else []
        suffix = f"?project={name}"
    return [f"/1.0/instances/{n}{suffix}" for n in instances] + \
        [f"/1.0/profiles/{n}{suffix}" for n in profiles]


def project_object(mount: Mount, name: str) -> dict[str, Any]:
    path = _project(mount, name)
    return {"config": read_dir_values(path / "config"),
            "description": read_opt(path / "description"),
            "name": name, "used_by": _used_by(mount, name)}


def _target(mount: Mount, name: str) -> editing.Target:
    return editing.Target(mount, _project(mount, name), "project")


def _remote(ref: str) -> tuple[Any, str]:
    """(a REST client, the name) when ``ref`` names an LXD-protocol remote (``host1:p1``,
    ``host1:``); (None, the name) for this host's mount."""
    if ":" not in ref:
        return None, ref
    from lxfs.cli.remotes import LOCAL, load_config, split_remote  # noqa: PLC0415

    config = load_config()
    remote, name = split_remote(ref, config)
    if remote == LOCAL:
        return None, name
    from lxfs.cli.remote_commands import server_for  # noqa: PLC0415

    return server_for(config, remote), name


def _remote_project_url(name: str) -> str:
    from urllib.parse import quote  # noqa: PLC0415

    return f"/1.0/projects/{quote(editing.check_name(name, 'project name'), safe='')}"


# -- commands -------------------------------------------------------------------------------

def cmd_create(args: argparse.Namespace) -> int:
    """``lxfs project create NAME [-c KEY=VALUE...]``."""
    from lxfs.cli.instances import parse_pairs  # noqa: PLC0415

    server, name = _remote(args.name)
    if server is not None:
        server.request("POST", "/1.0/projects", {
            "name": editing.check_name(name, "project name"), "description": args.description,
            "config": dict(parse_pairs(args.config))})
        print(f"Project {name} created")
        return 0
    mount = Mount()
    path = _root(mount) / editing.check_name(name, "project name")
    mount.do(lambda: os.mkdir(path), fallback=f"Cannot create project {name}")
    try:
        for key, value in parse_pairs(args.config):
            editing.set_config(_target(mount, name), key, value)
        if args.description:
            mount.write(path / "description", args.description)
    except CLIError:
        mount.do(lambda: os.rmdir(path))
        raise
    print(f"Project {name} created")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``lxfs project list [REMOTE:]``."""
    remote = args.remote or ""
    server, _name = _remote(remote if not remote or remote.endswith(":") else f"{remote}:")
    if server is not None:
        objects = server.get("/1.0/projects?recursion=1") or []
        current = server.remote.project or DEFAULT
    else:
        mount = Mount()
        current = _current(mount)
        objects = [project_object(mount, name) for name in list_dirs(_root(mount))]
    rows = []
    for obj in sorted(objects, key=lambda o: o["name"]):
        name, config = obj["name"], obj.get("config") or {}

        def feature(key: str, obj_config: dict[str, str] = config, project: str = name) -> str:
            return "YES" if project == DEFAULT or obj_config.get(f"features.{key}") == "true" \
                else "NO"

        shown = f"{name} (current)" if name == current else name
        rows.append([shown, feature("images"), feature("profiles"), feature("storage.volumes"),
                     feature("networks"), obj.get("description", ""),
                     str(len(obj.get("used_by") or []))])
    emit(args.format, ["NAME", "IMAGES", "PROFILES", "STORAGE VOLUMES", "NETWORKS",
                       "DESCRIPTION", "USED BY"], rows, objects)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    server, name = _remote(args.name)
    if server is not None:
        print(render_yaml(server.get(_remote_project_url(name))), end="")
        return 0
    print(render_yaml(project_object(Mount(), name)), end="")
    return 0


def _apply(mount: Mount, name: str, text: str) -> None:
    config, description = editing.parse_config_document(text)
    target = _target(mount, name)
    old = read_dir_values(target.path / "config")
    for key, value in config.items():
        if old.get(key) != value:
            editing.set_config(target, key, value)
    for key in old:
        if key not in config:
            editing.unset_config(target, key)
    if description is not None:
        mount.write(target.path / "description", description)


def cmd_edit(args: argparse.Namespace) -> int:
    mount = Mount()
    obj = project_object(mount, args.name)
    obj.pop("used_by")
    return editing.edit_loop(HEADER + render_yaml(obj),
                             lambda text: _apply(mount, args.name, text))


def cmd_delete(args: argparse.Namespace) -> int:
    named = [_remote(ref) for ref in args.names]
    remote = [(server, name) for server, name in named if server is not None]
    if remote and len(remote) < len(named):
        raise CLIError("name projects of one server at a time")
    for server, name in remote:
        server.request("DELETE", _remote_project_url(name))
        print(f"Project {name} deleted")
    if remote:
        return 0
    mount = Mount()
    for name in (name for _server, name in named):
        path = _project(mount, name)
        mount.do(lambda path=path: os.rmdir(path), fallback=f"Cannot delete project {name}")
        print(f"Project {name} deleted")
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    mount = Mount()
    old = _project(mount, args.old)
    new = _root(mount) / editing.check_name(args.new, "project name")
    mount.do(lambda: os.rename(old, new), fallback=f"Cannot rename project {args.old}")
    print(f"Project {args.old} renamed to {args.new}")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    server, name = _remote(args.name)
    if server is not None:
        print((server.get(_remote_project_url(name)).get("config") or {}).get(args.key, ""))
        return 0
    mount = Mount()
    path = _project(mount, name) / "config" / editing.check_name(args.key, "config key")
    print(mount.do(lambda: read_opt(path)))
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    from lxfs.cli.profiles import key_value_args  # noqa: PLC0415

    server, name = _remote(args.name)
    if server is not None:
        server.request("PATCH", _remote_project_url(name),
                       {"config": dict(key_value_args(args.values))})
        return 0
    mount = Mount()
    for key, value in key_value_args(args.values):
        editing.set_config(_target(mount, name), key, value)
    return 0


def cmd_unset(args: argparse.Namespace) -> int:
    editing.unset_config(_target(Mount(), args.name), args.key)
    return 0


def cmd_switch(args: argparse.Namespace) -> int:
    """``lxfs project switch NAME``: the current project of ``local``."""
    from lxfs.cli.remotes import load_config  # noqa: PLC0415

    _project(Mount(), args.name)
    config = load_config()
    config.get("local").project = args.name
    config.save()
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``lxfs project info [REMOTE:]NAME``: usage against limits (``projects/NAME/state/``,
    a remote's ``/1.0/projects/NAME/state``)."""
    server, name = _remote(args.name)
    if server is not None:
        found = (server.get(_remote_project_url(name) + "/state") or {}).get("resources") or {}
        usage = {r: (int(v.get("usage", 0)), int(v.get("limit", -1))) for r, v in found.items()}
    else:
        state = read_dir_values(_project(Mount(), name) / "state")
        usage = {}
        for resource, value in state.items():
            used, limit = (value.split() + ["0", "-1"])[:2]
            usage[resource] = (int(used), int(limit))
    rows, data = [], {}
    for resource in sorted(usage):
        used, limit = usage[resource]
        rows.append([resource.upper(), "UNLIMITED" if limit == -1 else str(limit), str(used)])
        data[resource] = {"limit": limit, "usage": used}
    emit(args.format, ["RESOURCE", "LIMIT", "USAGE"], rows, data)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("project", help="Manage projects")
    psub = parser.add_subparsers(dest="project_command", metavar="COMMAND")
    p = psub.add_parser("create", help="Create a project: NAME [-c KEY=VALUE...]")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-c", "--config", action="append", metavar="KEY=VALUE")
    p.add_argument("--description", default="")
    p.set_defaults(func=cmd_create)
    p = psub.add_parser("list", aliases=["ls"], help="List projects: [REMOTE:]")
    p.add_argument("remote", metavar="REMOTE:", nargs="?", default="")
    p.add_argument("--format", "-f", default="table", choices=("table", "csv", "json", "yaml"))
    p.set_defaults(func=cmd_list)
    p = psub.add_parser("show", help="Show a project as YAML")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_show)
    p = psub.add_parser("edit", help="Edit a project as YAML ($EDITOR, or stdin if piped)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_edit)
    p = psub.add_parser("delete", aliases=["rm"], help="Delete empty projects")
    p.add_argument("names", metavar="NAME", nargs="+")
    p.set_defaults(func=cmd_delete)
    p = psub.add_parser("rename", aliases=["mv"], help="Rename an empty project")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    p.set_defaults(func=cmd_rename)
    p = psub.add_parser("get", help="Get a project's config key: NAME KEY")
    p.add_argument("name", metavar="NAME")
    p.add_argument("key", metavar="KEY")
    p.set_defaults(func=cmd_get)
    p = psub.add_parser("set", help="Set project config keys: NAME KEY VALUE | KEY=VALUE...")
    p.add_argument("name", metavar="NAME")
    p.add_argument("values", metavar="ARG", nargs="+")
    p.set_defaults(func=cmd_set)
    p = psub.add_parser("unset", help="Unset a project's config key: NAME KEY")
    p.add_argument("name", metavar="NAME")
    p.add_argument("key", metavar="KEY")
    p.set_defaults(func=cmd_unset)
    p = psub.add_parser("switch", help="Make a project the current one")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_switch)
    p = psub.add_parser("info", help="Show a project's usage against its limits")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--format", "-f", default="table", choices=("table", "csv", "json", "yaml"))
    p.set_defaults(func=cmd_info)
