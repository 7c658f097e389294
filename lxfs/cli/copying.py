"""``lxfs copy`` (an instance or snapshot into a new instance) and ``lxfs publish`` (an
instance or snapshot into an image), both through control writes on the mount."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

from lxfs.cli.editing import check_name
from lxfs.cli.instances import parse_pairs
from lxfs.cli.mount import CLIError, Mount, read_lines, read_opt, strip_local_remote
from lxfs.cli.names import valid_instance_name


def split_source(mount: Mount, ref: str) -> tuple[Path, str]:
    """``NAME[/SNAP]`` -> ``(instances/NAME, SNAP or "")``, both checked to exist."""
    name, _, snap = strip_local_remote(ref).partition("/")
    inst = mount.instance(name)
    if snap and ("/" in snap or not (inst / "snapshots" / snap).is_dir()):
        raise CLIError("Snapshot not found")
    return inst, snap


def cmd_copy(args: argparse.Namespace) -> int:
    """``lxfs copy SRC[/SNAP] DST``: mkdir ``instances/DST``, apply the options, then write
    ``instances/SRC[/snapshots/SNAP]`` to its ``source`` (removed again on failure)."""
    mount = Mount()
    src, snap = split_source(mount, args.source)
    ref = f"instances/{src.name}" + (f"/snapshots/{snap}" if snap else "")
    instances = mount.instances
    if getattr(args, "target_project", None):  # into another project: name the source's
        from lxfs.cli.base import current_project, instances_root  # noqa: PLC0415

        ref = f"projects/{current_project() or 'default'}/{ref}"
        instances = Path(instances_root(str(mount.root), args.target_project))
        if not instances.is_dir():
            raise CLIError(f"Project not found: {args.target_project}")
    if args.instance_only and not snap:
        ref += " --instance-only"
    name = strip_local_remote(args.target)
    if not valid_instance_name(name):
        raise CLIError(f"Invalid instance name: {name!r} (1-63 letters, digits and '-', "
                       "starting with a letter, not ending with '-')")
    configs = parse_pairs(args.config)
    profiles = [] if args.no_profiles else args.profile
    inst = instances / name
    mount.do(lambda: os.mkdir(inst), messages={
        errno.EEXIST: f"Instance {name!r} already exists",
        errno.EINVAL: f"Invalid instance name: {name!r}",
    })
    try:
        if profiles is not None:
            set_profiles(mount, inst, profiles)
        for key, value in configs:
            if value != "":
                mount.write(inst / "config" / check_name(key, "config key"), value, inst,
                            messages={errno.EINVAL: f"Invalid value for config key {key!r}"})
        if args.ephemeral:
            mount.write(inst / "ephemeral", "true", inst)
        mount.write(inst / "source", ref, inst, messages={
            errno.ENOENT: "Instance not found",
            errno.EEXIST: f"Instance {name!r} already exists",
        })
        # the copy brings the source's profiles unless this instance has its own list
        if profiles is not None and read_lines(inst / "profiles") != profiles:
            set_profiles(mount, inst, profiles)
    except (CLIError, KeyboardInterrupt):
        try:
            os.rmdir(inst)
        except OSError:
            pass
        raise
    return 0


def set_profiles(mount: Mount, inst: Path, profiles: list[str]) -> None:
    mount.write(inst / "profiles", "".join(p + "\n" for p in profiles), inst,
                messages={errno.ENOENT: "Profile not found"})


def publish_request(args: argparse.Namespace) -> str:
    """The line written to ``publish``: ``alias=A public=true force=true compression=C
    KEY=VALUE...``."""
    tokens = [f"alias={a}" for a in args.alias or []]
    if args.public:
        tokens.append("public=true")
    if args.force:
        tokens.append("force=true")
    if args.compression:
        tokens.append(f"compression={args.compression}")
    for item in args.properties:
        if item.endswith(":") and "=" not in item:
            strip_local_remote(item)  # the target remote: only local: is reachable
            continue
        key, value = parse_pairs([item])[0]
        tokens.append(f"{key}={value}")
    for token in tokens:
        if any(c.isspace() for c in token):
            raise CLIError(f"Values with spaces are not supported by publish: {token!r}")
    return " ".join(tokens)


class _OptionParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise CLIError(f"{message} (see `lxfs publish --help`)")


def _publish_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alias", action="append", metavar="ALIAS", help="alias of the new image")
    p.add_argument("--public", action="store_true", help="make the image public")
    p.add_argument("-f", "--force", action="store_true", help="publish a running instance")
    p.add_argument("--compression", metavar="xz|gzip|none",
                   help="compression of the image tarball (default xz)")


def merge_publish_args(args: argparse.Namespace) -> None:
    """Options given after the source (``publish u1 --alias A k=v``) come in ``rest``:
    parse them intermixed with the properties, and merge them in ``args``."""
    inner = _OptionParser(prog="lxfs publish", add_help=False)
    _publish_options(inner)
    inner.add_argument("properties", nargs="*")
    more = inner.parse_intermixed_args(args.rest)
    args.alias = (args.alias or []) + (more.alias or [])
    args.public = args.public or more.public
    args.force = args.force or more.force
    args.compression = more.compression or args.compression
    args.properties = more.properties


def cmd_publish(args: argparse.Namespace) -> int:
    """``lxfs publish NAME[/SNAP] [--alias A]... [--public] [--force] [KEY=VALUE...]``."""
    merge_publish_args(args)
    mount = Mount()
    inst, snap = split_source(mount, args.source)
    path = (inst / "snapshots" / snap if snap else inst) / "publish"
    request = publish_request(args)
    mount.write(path, request, inst, messages={
        errno.EBUSY: "The instance is currently running, stop it first or pass --force",
        errno.EEXIST: "Image alias already exists",
        errno.ENOENT: "The instance has no root filesystem",
    })
    fingerprint = mount.do(lambda: read_opt(path), inst).strip()
    print(f"Instance published with fingerprint: {fingerprint}")
    return 0


def add_migration_options(p: argparse.ArgumentParser, move: bool = False) -> None:
    """The options of a copy or move between servers (``lxfs/cli/migrate.py``)."""
    p.add_argument("--mode", choices=("pull", "push", "relay"), default="pull",
                   help="transfer mode between servers (default: pull; relay: through "
                   "this client)")
    if not move:
        p.add_argument("-s", "--storage", metavar="POOL",
                       help="storage pool of the new instance (on the target)")
        p.add_argument("--refresh", action="store_true",
                       help="update an earlier copy: send only what changed")
    else:
        p.add_argument("--instance-only", action="store_true",
                       help="move the instance without its snapshots")
    p.add_argument("--stateless", action="store_true",
                   help="a running instance: stop it, transfer it, start it on the target")
    p.add_argument("--stateful", action="store_true",
                   help="live migration (refused: lxfs does not drive CRIU)")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``copy`` and ``publish``."""
    p = sub.add_parser("copy", aliases=["cp"], help="Copy instances and snapshots")
    p.add_argument("source", metavar="SOURCE[/SNAPSHOT]")
    p.add_argument("target", metavar="DESTINATION")
    p.add_argument("--instance-only", action="store_true",
                   help="copy the instance without its snapshots")
    p.add_argument("-c", "--config", action="append", metavar="KEY=VALUE",
                   help="config key/value to apply to the new instance")
    p.add_argument("-p", "--profile", action="append", metavar="PROFILE",
                   help="profile to apply to the new instance (replaces the source's)")
    p.add_argument("--no-profiles", action="store_true", help="create without any profile")
    p.add_argument("-e", "--ephemeral", action="store_true", help="ephemeral copy")
    p.add_argument("--target-project", metavar="PROJECT",
                   help="copy into this project (the source is in --project's)")
    add_migration_options(p)
    p.set_defaults(func=cmd_copy)

    p = sub.add_parser("publish", help="Publish instances and snapshots as images")
    p.add_argument("source", metavar="INSTANCE[/SNAPSHOT]")
    p.add_argument("rest", metavar="KEY=VALUE", nargs=argparse.REMAINDER,
                   help="image properties (public=true makes the image public)")
    _publish_options(p)
    p.set_defaults(func=cmd_publish)
