"""Instance commands: launch/create, list, info, start/stop..., delete, rename, snapshots."""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from lxfs.cli import fast
from lxfs.cli.fast import (  # noqa: F401 - shared by the fast path and the commands
    parse_pairs,
    pid_namespace_counts,
    process_count,
)
from lxfs.cli.mount import (
    CLIError,
    Mount,
    list_dirs,
    parse_bool,
    read_devices,
    read_dir_values,
    read_lines,
    read_opt,
    strip_local_remote,
    write_raw,
)
from lxfs.cli.output import (
    FORMATS,
    emit,
    fmt_time,
    natural_key,
    render_yaml,
)

TYPE_CHECKING = False  # importing typing costs 2-4 ms of start-up
if TYPE_CHECKING:
    from typing import Any

STATUS_CODES = {
    "Running": 103, "Stopped": 102, "Frozen": 110, "Starting": 106, "Stopping": 107,
    "Freezing": 109, "Thawed": 111, "Error": 112, "Aborting": 108,
}


def out(text: str = "") -> None:
    """Print a line and flush (progress lines must show before slow operations)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# -- create / launch ---------------------------------------------------------------------------
def cmd_create(args: argparse.Namespace, start: bool = False) -> int:
    """``lxfs create|launch IMAGE [NAME]``."""
    mount = Mount()
    remote = None
    if ":" in args.image and not args.image.startswith("local:"):
        from lxfs.cli.image_servers import remote_source  # noqa: PLC0415

        remote = remote_source(args.image)  # REMOTE:IMAGE of an image server: pulled
    image = remote or strip_local_remote(args.image)
    if not image:
        raise CLIError("Image not found")
    from lxfs.cli.names import random_name, valid_instance_name  # noqa: PLC0415 - random: 2 ms

    configs = parse_pairs(args.config)
    generated = args.name is None
    if args.name is not None:
        name = args.name
        if not valid_instance_name(name):
            raise CLIError(f"Invalid instance name: {name!r} (1-63 letters, digits and '-', "
                           "starting with a letter, not ending with '-')")
    else:
        name = random_name(lambda n: os.path.lexists(mount.instances / n))
    if generated:
        out("Creating the instance")
        out(f"Instance name is: {name}")
    else:
        out(f"Creating {name}")
    inst = mount.instances / name
    mount.do(lambda: os.mkdir(inst), messages={
        errno.EEXIST: f"Instance {name!r} already exists",
        errno.EINVAL: f"Invalid instance name: {name!r}",
    })
    try:
        if args.no_profiles:
            mount.write(inst / "profiles", "", inst)
        elif args.profile:
            mount.write(inst / "profiles", "".join(p + "\n" for p in args.profile), inst,
                        messages={errno.ENOENT: "Profile not found"})
        for key, value in configs:
            if value == "":
                continue
            mount.write(inst / "config" / key, value, inst,
                        messages={errno.EINVAL: f"Invalid value for config key {key!r}"})
        if args.ephemeral:
            mount.write(inst / "ephemeral", "true", inst)
        if args.description:
            mount.write(inst / "description", args.description, inst)
        devices = parse_device_overrides(args.device)
        if args.storage:
            devices.setdefault("root", {}).update(pool=args.storage)
        for dev, options in devices.items():
            set_device(mount, inst, dev, options)
        def write_source() -> None:
            mount.write(inst / "source", image, inst, messages={
                errno.ENOENT: f"Image not found: {args.image}",
            })

        if remote:
            from lxfs.cli.image_servers import with_progress  # noqa: PLC0415

            with_progress(mount, remote, write_source)
        else:
            write_source()
    except (CLIError, KeyboardInterrupt):
        try:
            os.rmdir(inst)
        except OSError:
            pass
        raise
    if start:
        out(f"Starting {name}")
        try:
            set_state(mount, name, "start")
        except CLIError as exc:
            raise CLIError(f"{exc.message}\nTry `lxfs info --show-log {name}` for more info"
                           ) from exc
    return 0


def parse_device_overrides(items: list[str] | None) -> dict[str, dict[str, str]]:
    """``-d root,size=1GiB`` options: ``{device: {key: value}}``."""
    devices: dict[str, dict[str, str]] = {}
    for item in items or []:
        dev, _, rest = item.partition(",")
        if not dev or not rest:
            raise CLIError(f"Bad device override syntax, expecting <device>,<key>=<value>: {item}")
        devices.setdefault(dev, {}).update(parse_pairs(rest.split(",")))
    return devices


def set_device(mount: Mount, inst: Path, dev: str, options: dict[str, str]) -> None:
    """Give an instance its own device ``dev`` with ``options`` on top of what it inherits
    from its profiles (a root disk gets ``type=disk``, ``path=/`` and the inherited pool)."""
    if not dev or "/" in dev or dev in (".", ".."):
        raise CLIError(f"Invalid device name: {dev!r}")
    ddir = inst / "devices" / dev
    inherited = read_devices(inst / "expanded" / "devices").get(dev, {})
    if dev == "root" and not inherited:
        inherited = {"type": "disk", "path": "/"}
    if not inherited and "type" not in options:
        raise CLIError(f"Device {dev!r} is not inherited from a profile: give its type")
    values = {**inherited, **options}
    if not ddir.is_dir():
        mount.do(lambda: os.mkdir(ddir), inst)
    mount.write(ddir / "type", values.pop("type"), inst)
    for key, value in values.items():
        mount.write(ddir / key, value, inst, messages={
            errno.EINVAL: f"Invalid device option {key}={value}",
        })


# -- state changes -----------------------------------------------------------------------------
def read_state(mount: Mount, name: str) -> str:
    """The state of an instance (``RUNNING``, ``STOPPED``...)."""
    return fast.read_state(str(mount.root), name)


def set_state(mount: Mount, name: str, action: str) -> None:
    """Write ``action`` to ``instances/NAME/state`` and wait for the transition."""
    fast.set_state(str(mount.root), name, action)


def change_state(mount: Mount, name: str, command: str, force: bool = False,
                 timeout: int = -1) -> None:
    """One state command on one instance (``stop`` with ``--force``/``--timeout``: kill, or
    the graceful stop's seconds; -1 is the daemon's default)."""
    fast.change_state(str(mount.root), name, command, force, timeout)


def cmd_state(args: argparse.Namespace) -> int:
    """``lxfs start|stop|restart|freeze|pause|unfreeze NAME...|--all``."""
    mount = Mount()
    command = args.state_action
    force = getattr(args, "force", False)
    timeout = getattr(args, "timeout", -1)
    if timeout is None:
        timeout = -1
    if args.all:
        if args.names:
            raise CLIError("Both --all and instance name given")
        return state_all(mount, command, force, timeout)
    if not args.names:
        raise CLIError(f"Give the instances to {command}, or --all")
    failed = 0
    for name in args.names:
        try:
            change_state(mount, name, command, force, timeout)
        except CLIError as exc:
            if len(args.names) == 1:
                raise
            failed += 1
            sys.stderr.write(f"Error: {name}: {exc.message}\n")
    if failed:
        return 1
    return 0


def acted_on_by_all(command: str, state: str) -> bool:
    """Whether ``--all`` acts on an instance in ``state`` (as LXD's bulk state change: stop
    and restart what is not stopped, start what is; transient states count as running)."""
    if command == "start":
        return state == "STOPPED"
    if command in ("stop", "restart"):
        return state != "STOPPED"
    if command == "freeze":
        return state == "RUNNING"
    return state == "FROZEN"  # unfreeze


#: what ``--all`` wanted, when the daemon answers EBUSY because the instance is there already
#: (it stopped by itself, someone else started it...)
ALL_GOALS = {"start": "RUNNING", "stop": "STOPPED", "freeze": "FROZEN", "unfreeze": "RUNNING"}


def instance_states(mount: Mount) -> dict[str, str]:
    """Every instance's state by name (one read of ``instances/.list`` where the daemon has
    it); instances that vanish meanwhile are left out."""
    listing = read_listing(mount)
    if listing is not None:
        return {name: row["state"] for name, row in listing.items()}
    states = {}
    for name in instance_names(mount):
        state = read_opt(mount.instances / name / "state").strip().upper()
        if state:
            states[name] = state
    return states


def stop_priority(mount: Mount, name: str) -> int:
    """The instance's ``boot.stop.priority`` (0 when unset)."""
    value = read_opt(mount.instances / name / "expanded" / "config" / "boot.stop.priority")
    try:
        return int(value.strip() or 0)
    except ValueError:
        return 0


def priority_groups(priorities: dict[str, int]) -> list[list[str]]:
    """Names grouped by priority, the highest first; each group in name order."""
    groups: dict[int, list[str]] = {}
    for name in sorted(priorities, key=natural_key):
        groups.setdefault(priorities[name], []).append(name)
    return [groups[p] for p in sorted(groups, reverse=True)]


def run_together(names: list[str], action: Callable[[str], None]) -> dict[str, str]:
    """Run ``action`` on every name, at most as many at once as the host has CPUs (as LXD's
    shutdown of all instances; it also leaves the daemon room for other requests). Returns the
    error message of each name that failed."""
    errors: dict[str, str] = {}

    def run(name: str) -> None:
        try:
            action(name)
        except CLIError as exc:
            errors[name] = exc.message

    workers = min(len(names), os.cpu_count() or 1)
    if workers <= 1:
        for name in names:
            run(name)
        return errors
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415 - only for --all

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lxfs-all")
    try:
        for future in [pool.submit(run, name) for name in names]:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return errors


def state_all(mount: Mount, command: str, force: bool, timeout: int) -> int:
    """``--all``: the command on every instance it applies to. ``stop`` goes by
    ``boot.stop.priority``: the highest first, those of equal priority together, each group
    once the one before it has stopped; the other commands act on all of them together."""
    targets = [name for name, state in instance_states(mount).items()
               if acted_on_by_all(command, state)]
    if command == "stop":
        groups = priority_groups({name: stop_priority(mount, name) for name in targets})
    else:
        groups = [sorted(targets, key=natural_key)] if targets else []
    goal = ALL_GOALS.get(command)

    def act(name: str) -> None:
        try:
            change_state(mount, name, command, force, timeout)
        except CLIError as exc:
            busy = isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.EBUSY
            if not (busy and goal and read_opt(mount.instances / name / "state").strip()
                    .upper() == goal):
                raise

    failed: dict[str, str] = {}
    for group in groups:
        failed.update(run_together(group, act))
    for name, message in failed.items():
        sys.stderr.write(f"Error: {name}: {message}\n")
    return 1 if failed else 0


# -- delete / rename ---------------------------------------------------------------------------
def cmd_delete(args: argparse.Namespace) -> int:
    """``lxfs delete NAME[/SNAP]... [--force]``."""
    mount = Mount()
    for target in args.names:
        if "/" in target:
            name, snap = target.split("/", 1)
            inst = mount.instance(name)
            snap_dir = inst / "snapshots" / snap
            if not snap or "/" in snap or not snap_dir.is_dir():
                raise CLIError("Snapshot not found")
            mount.do(lambda d=snap_dir: os.rmdir(d), inst)
            continue
        inst = mount.instance(target)
        state = read_state(mount, target)
        if state not in ("STOPPED", ""):
            if not args.force:
                raise CLIError("The instance is currently running, stop it first or pass --force")
            set_state(mount, target, "kill")
        mount.do(lambda d=inst: os.rmdir(d), inst, messages={
            errno.EBUSY: "The instance is currently running, stop it first or pass --force",
        })
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    """``lxfs move|rename OLD NEW`` (also ``NAME/SNAP NAME/NEWSNAP``)."""
    mount = Mount()
    old, new = (strip_local_remote(args.old), strip_local_remote(args.new))
    if "/" in old or "/" in new:
        name, snap = old.split("/", 1) if "/" in old else (old, "")
        new_name, new_snap = new.split("/", 1) if "/" in new else (name, new)
        if not snap or new_name != name:
            raise CLIError("Snapshots can only be renamed within their instance")
        inst = mount.instance(name)
        if not (inst / "snapshots" / snap).is_dir():
            raise CLIError("Snapshot not found")
        mount.do(lambda: os.rename(inst / "snapshots" / snap, inst / "snapshots" / new_snap),
                 inst)
        return 0
    inst = mount.instance(old)
    pool = getattr(args, "storage", None)
    if pool:
        mount.do(lambda: write_raw(inst / "pool", pool), inst, messages={
            errno.EBUSY: "Moving a running instance to another pool is not allowed: stop it"})
        if new == old:
            return 0
    from lxfs.cli.names import valid_instance_name  # noqa: PLC0415

    if not valid_instance_name(new):
        raise CLIError(f"Invalid instance name: {new!r}")
    target = mount.instances
    if getattr(args, "target_project", None):
        from lxfs.cli.base import instances_root  # noqa: PLC0415

        target = Path(instances_root(str(mount.root), args.target_project))
        if not target.is_dir():
            raise CLIError(f"Project not found: {args.target_project}")
    if os.path.lexists(target / new):
        raise CLIError(f"Instance {new!r} already exists")
    mount.do(lambda: os.rename(inst, target / new), inst, messages={
        errno.EBUSY: "Renaming of running instance not allowed",
        errno.EEXIST: f"Instance {new!r} already exists",
    })
    return 0


# -- snapshots ---------------------------------------------------------------------------------
def cmd_snapshot(args: argparse.Namespace) -> int:
    """``lxfs snapshot NAME [SNAP]``: default name ``snapN`` with the first free N."""
    mount = Mount()
    inst = mount.instance(args.name)
    snap = args.snapshot
    if snap is None:
        taken = set(list_dirs(inst / "snapshots"))
        n = 0
        while f"snap{n}" in taken:
            n += 1
        snap = f"snap{n}"
    elif "/" in snap or snap in ("", ".", ".."):
        raise CLIError(f"Invalid snapshot name: {snap!r}")
    mount.do(lambda: os.mkdir(inst / "snapshots" / snap), inst, messages={
        errno.EEXIST: f"Snapshot {snap!r} already exists",
    })
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """``lxfs restore NAME SNAP``."""
    mount = Mount()
    inst = mount.instance(args.name)
    mount.write(inst / "restore", args.snapshot, inst,
                messages={errno.ENOENT: "Snapshot not found"})
    return 0


# -- reading instances -------------------------------------------------------------------------
def status_of(state: str) -> tuple[str, int]:
    """LXD's ``status`` and ``status_code`` for an lxfs state."""
    status = state.strip().capitalize() or "Error"
    return status, STATUS_CODES.get(status, 112)


def instance_object(inst: Path) -> dict[str, Any] | None:
    """One entry shaped like LXD's ``/1.0/instances?recursion=1`` (None if it vanished)."""
    state = read_opt(inst / "state")
    if not state and not inst.is_dir():
        return None
    status, code = status_of(state)
    return {
        "architecture": read_opt(inst / "architecture"),
        "config": read_dir_values(inst / "config"),
        "devices": read_devices(inst / "devices"),
        "ephemeral": parse_bool(read_opt(inst / "ephemeral", "false")),
        "profiles": read_lines(inst / "profiles"),
        "stateful": False,
        "description": read_opt(inst / "description"),
        "created_at": read_opt(inst / "created_at"),
        "expanded_config": read_dir_values(inst / "expanded" / "config"),
        "expanded_devices": read_devices(inst / "expanded" / "devices"),
        "name": inst.name,
        "status": status,
        "status_code": code,
        "last_used_at": read_opt(inst / "last_used_at"),
        "location": "none",
        "type": read_opt(inst / "type", "container") or "container",
        "project": "default",
    }


class Row:
    """Lazily read fields of one instance (only the files a listing needs)."""

    def __init__(self, inst: Path, ctx: dict[str, Any],
                 known: dict[str, Any] | None = None) -> None:
        self.inst = inst
        self.name = inst.name
        self.ctx = ctx
        self._cache: dict[str, Any] = dict(known or {})

    def get(self, key: str) -> Any:
        if key not in self._cache:
            self._cache[key] = self._read(key)
        return self._cache[key]

    def _read(self, key: str) -> Any:
        inst = self.inst
        if key == "state":
            return read_opt(inst / "state").strip().upper()
        if key == "ephemeral":
            return parse_bool(read_opt(inst / "ephemeral", "false"))
        if key == "snapshots":
            return len(list_dirs(inst / "snapshots"))
        if key == "expanded_config":
            return read_dir_values(inst / "expanded" / "config")
        if key == "pid":
            try:
                return int(read_opt(inst / "pid", "0") or 0)
            except ValueError:
                return 0
        if key in ("ipv4", "ipv6"):
            return read_lines(inst / key)
        if key == "profiles":
            return read_lines(inst / "profiles")
        return read_opt(inst / key)


def _processes(row: Row) -> str:
    if row.get("state") != "RUNNING":
        return ""
    counts = row.ctx.setdefault("pidns", None)
    if counts is None:
        counts = row.ctx["pidns"] = pid_namespace_counts()
    n = process_count(row.get("pid"), counts)
    return "" if n is None else str(n)


def _type_cell(row: Row) -> str:
    kind = (row.get("type") or "container").upper()
    return f"{kind} (EPHEMERAL)" if row.get("ephemeral") else kind


COLUMNS: dict[str, tuple[str, Callable[[Row], str]]] = {
    "n": ("NAME", lambda r: r.name),
    "s": ("STATE", lambda r: r.get("state")),
    "4": ("IPV4", lambda r: "\n".join(r.get("ipv4"))),
    "6": ("IPV6", lambda r: "\n".join(r.get("ipv6"))),
    "t": ("TYPE", _type_cell),
    "S": ("SNAPSHOTS", lambda r: str(r.get("snapshots"))),
    "a": ("ARCHITECTURE", lambda r: r.get("architecture")),
    "c": ("CREATED AT", lambda r: fmt_time(r.get("created_at"))),
    "l": ("LAST USED AT", lambda r: fmt_time(r.get("last_used_at"))),
    "d": ("DESCRIPTION", lambda r: r.get("description")),
    "p": ("PID", lambda r: str(r.get("pid")) if r.get("pid") else ""),
    "P": ("PROFILES", lambda r: "\n".join(r.get("profiles"))),
    "N": ("PROCESSES", _processes),
    "e": ("PROJECT", lambda r: "default"),
    "L": ("LOCATION", lambda r: "none"),
    "b": ("STORAGE POOL",
          lambda r: read_opt(r.inst / "expanded" / "devices" / "root" / "pool")),
}


def parse_columns(spec: str) -> list[tuple[str, Callable[[Row], str]]]:
    """``-c`` like lxc: letters (``ns46tS``) and comma separated config keys
    (``image.os[:HEADER]``)."""
    columns: list[tuple[str, Callable[[Row], str]]] = []
    for token in spec.split(","):
        if not token:
            continue
        if "." in token:
            key, _, header = token.partition(":")
            columns.append((header or key.upper(),
                            lambda r, k=key: r.get("expanded_config").get(k, "")))
            continue
        for letter in token:
            if letter not in COLUMNS:
                raise CLIError(f"Invalid column: {letter!r}")
            columns.append(COLUMNS[letter])
    if not columns:
        raise CLIError("No columns selected")
    return columns


def _match(row: Row, flt: str) -> bool:
    key, sep, value = flt.partition("=")
    if not sep:
        if row.name.startswith(flt):
            return True
        try:
            return re.fullmatch(flt, row.name) is not None
        except re.error:
            return False
    lkey = key.lower()
    if lkey in ("status", "state"):
        return row.get("state").lower() == value.lower()
    if lkey == "name":
        try:
            return re.fullmatch(value, row.name) is not None or row.name == value
        except re.error:
            return row.name == value
    if lkey == "type":
        return value.lower() in ("container", (row.get("type") or "container").lower())
    if lkey == "ephemeral":
        return row.get("ephemeral") == parse_bool(value)
    if lkey in ("architecture", "description", "location"):
        return row.get(lkey) == value
    config = row.get("expanded_config")
    if key in config:
        return config[key] == value
    return config.get("user." + key) == value


def instance_names(mount: Mount) -> list[str]:
    """Names of all instances, naturally sorted."""
    return sorted(list_dirs(mount.instances), key=natural_key)


def read_listing(mount: Mount) -> dict[str, dict[str, Any]] | None:
    """``instances/.list`` (every instance's state, pid, type, snapshots and addresses in
    one read) as Row fields by name; None when the server has no such file."""
    try:
        with open(mount.instances / ".list", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    rows = text.splitlines()
    if not rows:
        return None
    header = rows[0].split("\t")
    found: dict[str, dict[str, Any]] = {}
    for line in rows[1:]:
        cells = dict(zip(header, line.split("\t"), strict=False))
        name = cells.get("NAME", "")
        if not name:
            continue
        try:
            pid = int(cells.get("PID") or 0)
            snapshots = int(cells.get("SNAPSHOTS") or 0)
        except ValueError:
            return None
        found[name] = {
            "state": cells.get("STATE", "").upper(), "pid": pid,
            "type": cells.get("TYPE", ""), "snapshots": snapshots,
            "ephemeral": parse_bool(cells.get("EPHEMERAL", "false")),
            "ipv4": [a for a in cells.get("IPV4", "").split(", ") if a],
            "ipv6": [a for a in cells.get("IPV6", "").split(", ") if a],
        }
    return found


def _listed_rows(mount: Mount, filters: list[str]) -> list[Row]:
    """The current project's instances that match ``filters``."""
    ctx: dict[str, Any] = {}
    rows = []
    listing = read_listing(mount)
    names = instance_names(mount) if listing is None else sorted(listing, key=natural_key)
    for name in names:
        row = Row(mount.instances / name, ctx, None if listing is None else listing[name])
        if all(_match(row, f) for f in filters):
            rows.append(row)
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    """``lxfs list [FILTER...] [--format F] [-c COLUMNS] [--all-projects]``."""
    from lxfs.cli.base import current_project, set_project  # noqa: PLC0415

    mount = Mount()
    filters: list[str] = [strip_local_remote(f) if f.endswith(":") else f for f in args.filters]
    filters = [f for f in filters if f]
    projects = [current_project() or "default"]
    if getattr(args, "all_projects", False):
        projects = sorted(os.listdir(mount.root / "projects"))
    found: list[tuple[str, Row]] = []
    for project in projects:
        set_project(project)
        found += [(project, row) for row in _listed_rows(mount, filters)]
    if args.format in ("json", "yaml"):
        objects = [(p, instance_object(r.inst)) for p, r in found]
        emit(args.format, [], [], [{**o, "project": p} for p, o in objects if o is not None])
        return 0
    columns = parse_columns(args.columns)
    if getattr(args, "all_projects", False):
        columns = [("PROJECT", lambda r: ""), *columns]
    table = []
    for project, row in found:
        cells = [fn(row) for _h, fn in columns]
        if getattr(args, "all_projects", False):
            cells[0] = project
        if row.get("state") == "" and not row.inst.is_dir():
            continue  # deleted while listing
        table.append(cells)
    emit(args.format, [h for h, _fn in columns], table, None)
    return 0


# -- info --------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    """``lxfs info [NAME] [--show-log]`` (an instance's: ``lxfs.cli.fast.run_info``)."""
    mount = Mount()
    if args.name is None:
        return server_info(mount)
    return fast.run_info(str(mount.root), {"name": args.name, "show_log": args.show_log})


def server_info(mount: Mount) -> int:
    """``lxfs info`` without a name: the server's config and environment, as YAML."""
    env: dict[str, Any] = dict(read_dir_values(mount.root / "environment"))
    arch = env.get("architecture", "")
    environment: dict[str, Any] = {"architectures": [arch] if arch else []}
    for key, value in env.items():
        if key == "server_pid":
            try:
                environment[key] = int(value)
                continue
            except ValueError:
                pass
        if key == "storage_drivers":
            environment[key] = [v for v in value.replace(",", "\n").split("\n") if v.strip()]
            continue
        environment[key] = value
    environment.setdefault("server", "lxfs")
    environment.setdefault("driver", "lxc")
    data = {
        "config": read_dir_values(mount.root / "config"),
        "api_status": "stable",
        "api_version": "1.0",
        "auth": "trusted",
        "public": False,
        "environment": environment,
    }
    sys.stdout.write(render_yaml(data))
    return 0


# -- registration ------------------------------------------------------------------------------
def _create_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("-c", "--config", action="append", metavar="KEY=VALUE",
                   help="config key/value to apply to the new instance")
    p.add_argument("-p", "--profile", action="append", metavar="PROFILE",
                   help="profile to apply to the new instance (replaces `default`)")
    p.add_argument("--no-profiles", action="store_true", help="create without any profile")
    p.add_argument("-e", "--ephemeral", action="store_true", help="ephemeral instance")
    p.add_argument("--description", help="instance description")
    p.add_argument("-s", "--storage", metavar="POOL", help="storage pool of the root disk")
    p.add_argument("-d", "--device", action="append", metavar="DEVICE,KEY=VALUE",
                   help="override a device option (root,size=1GiB)")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the instance commands."""
    p = sub.add_parser("launch", help="Create and start instances from images")
    _create_options(p)
    p.set_defaults(func=lambda a: cmd_create(a, start=True))

    p = sub.add_parser("create", help="Create instances from images")
    _create_options(p)
    p.set_defaults(func=lambda a: cmd_create(a, start=False))

    p = sub.add_parser("list", aliases=["ls"], help="List instances")
    p.add_argument("filters", metavar="FILTER", nargs="*")
    p.add_argument("-f", "--format", choices=FORMATS, default="table")
    p.add_argument("-c", "--columns", default="ns46tS", help="columns (default ns46tS)")
    p.add_argument("--all-projects", action="store_true", help="instances of every project")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="Show instance or server information")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("--show-log", action="store_true", help="show the instance's last log")
    p.set_defaults(func=cmd_info)

    for command, help_text in (("start", "Start instances"), ("stop", "Stop instances"),
                               ("restart", "Restart instances"), ("freeze", "Freeze instances"),
                               ("pause", "Freeze instances"),
                               ("unfreeze", "Unfreeze instances")):
        p = sub.add_parser(command, help=help_text)
        p.add_argument("names", metavar="NAME", nargs="*")
        if command in ("stop", "restart"):
            p.add_argument("-f", "--force", action="store_true", help="force (kill)")
            p.add_argument("--timeout", type=int, default=-1,
                           help="seconds to wait before killing (-1: the server's default)")
        p.add_argument("--all", action="store_true",
                       help="every instance (stop: by boot.stop.priority, highest first)"
                       if command == "stop" else "every instance")
        action = "freeze" if command == "pause" else command
        p.set_defaults(func=cmd_state, state_action=action)

    p = sub.add_parser("delete", aliases=["rm"], help="Delete instances and snapshots")
    p.add_argument("names", metavar="NAME[/SNAPSHOT]", nargs="+")
    p.add_argument("-f", "--force", action="store_true", help="kill running instances first")
    p.set_defaults(func=cmd_delete)

    for command, aliases in (("move", ["mv"]), ("rename", [])):
        p = sub.add_parser(command, aliases=aliases, help="Rename instances or snapshots")
        p.add_argument("old", metavar="OLD")
        p.add_argument("new", metavar="NEW")
        if command == "move":
            from lxfs.cli.copying import add_migration_options  # noqa: PLC0415

            p.add_argument("-s", "--storage", metavar="POOL",
                           help="move the root volume (and snapshots) to this pool")
            p.add_argument("--target-project", metavar="PROJECT",
                           help="move the instance to this project (snapshots and config "
                           "kept; a rename of its volume, no copy)")
            add_migration_options(p, move=True)
        p.set_defaults(func=cmd_rename)

    p = sub.add_parser("snapshot", help="Create instance snapshots")
    p.add_argument("name", metavar="NAME")
    p.add_argument("snapshot", metavar="SNAPSHOT", nargs="?")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("restore", help="Restore instances from snapshots")
    p.add_argument("name", metavar="NAME")
    p.add_argument("snapshot", metavar="SNAPSHOT")
    p.set_defaults(func=cmd_restore)
