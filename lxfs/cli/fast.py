"""The common ``lxfs`` commands in their plain forms, on ``os`` alone: start-up is most of
what a short command costs, and argparse, pathlib and re are 15 ms of it.

``parse`` reads an argument vector the way the full parser (argparse, ``lxfs.cli.parser``)
does, for the forms written out below; anything else (another option, ``--help``, a
``REMOTE:`` name, ``--project``...) is None, and the full parser runs.
``tests/test_cli_fastpath.py`` checks that both agree on every vector ``parse`` accepts.
``run`` then acts through the mount exactly as the full command does (same requests, same
messages); a case it leaves to the full command raises ``NotHandled`` before any change.
"""

from __future__ import annotations

import errno
import os
import sys

from lxfs.cli.base import (
    CLIError,
    check_mount,
    daemon_error,
    instance_dir,
    instances_root,
    list_dirs,
    mount_point,
    read_dir_values,
    read_opt,
    write_raw,
)

TYPE_CHECKING = False  # importing typing costs 2-4 ms of start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Args = dict[str, Any]

#: command word -> the action written to ``state`` (``pause`` is ``freeze``)
STATE_ACTIONS = {"start": "start", "stop": "stop", "restart": "restart", "freeze": "freeze",
                 "pause": "freeze", "unfreeze": "unfreeze"}
#: the words ``parse`` may accept (for the others it is not imported)
WORDS = frozenset((*STATE_ACTIONS, "delete", "rm", "snapshot", "restore", "config", "launch",
                   "create", "copy", "cp", "list", "ls", "file", "info", "publish", "image"))
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


class NotHandled(Exception):
    """This case is the full command's (raised before anything changed)."""


# -- parsing -----------------------------------------------------------------------------------
def _options(tokens: list[str], flags: dict[str, str], valued: dict[str, str]
             ) -> tuple[dict[str, Any], list[str]] | None:
    """Split ``tokens`` into options and one contiguous run of positionals, as argparse does
    for these forms. ``flags``/``valued``: option string -> dest (store_true / a value; a
    dest ending in ``[]`` appends). None for anything else: an unknown or abbreviated option,
    ``--``, a value that looks like an option, positionals split by an option (argparse takes
    the first run only)."""
    found: dict[str, Any] = {}
    positionals: list[str] = []
    run_ended = False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("-") or token == "-":  # "-": stdin or stdout, a positional
            if run_ended:
                return None
            positionals.append(token)
            continue
        if positionals:
            run_ended = True
        if token in flags:
            found[flags[token]] = True
            continue
        option, eq, value = token.partition("=")
        if option not in valued or (eq and not option.startswith("--")):
            return None
        if not eq:
            if i >= len(tokens) or (tokens[i].startswith("-") and not _negative(tokens[i])):
                return None
            value = tokens[i]
            i += 1
        dest = valued[option]
        if dest.endswith("[]"):
            found.setdefault(dest[:-2], []).append(value)
        else:
            found[dest] = value
    return found, positionals


def _negative(token: str) -> bool:
    """Does argparse take ``token`` for a negative number (a value, not an option)?"""
    return token[:1] == "-" and token[1:].isascii() and token[1:].isdigit()


def _int(text: str) -> int | None:
    """An integer option's value as ``int()`` reads it, for plain decimal numbers."""
    digits = text[1:] if text[:1] in ("-", "+") else text
    return int(text) if digits.isascii() and digits.isdigit() else None


def valid_instance_name(name: str) -> bool:
    """``lxfs.cli.names.valid_instance_name`` without ``re`` (1-63 letters, digits and
    ``-``, starting with a letter, not ending with ``-``)."""
    return (0 < len(name) <= 63 and name[0].isascii() and name[0].isalpha()
            and NAME_CHARS.issuperset(name) and not name.endswith("-"))


def parse(argv: list[str]) -> Args | None:
    """argparse's namespace for ``argv`` (as a dict, without ``func``) when it is a form that
    ``run`` handles; None otherwise."""
    if not argv or argv[0] not in WORDS or any(":" in arg for arg in argv):
        return None
    word, tokens = argv[0], argv[1:]
    args: Args = {"command": word}
    if word in STATE_ACTIONS:
        stop_like = word in ("stop", "restart")
        parsed = _options(tokens, {"-f": "force", "--force": "force"} if stop_like else {},
                          {"--timeout": "timeout[]"} if stop_like else {})
        if parsed is None:
            return None
        options, names = parsed
        args["names"] = names
        if stop_like:
            args["force"] = options.get("force", False)
            timeouts = [_int(value) for value in options.get("timeout", ["-1"])]
            if None in timeouts:  # argparse converts (and refuses) each one
                return None
            args["timeout"] = timeouts[-1]
        args["all"] = False
        args["state_action"] = STATE_ACTIONS[word]
        return args
    if word in ("delete", "rm"):
        parsed = _options(tokens, {"-f": "force", "--force": "force"}, {})
        if parsed is None or not parsed[1]:
            return None
        args["names"] = parsed[1]
        args["force"] = parsed[0].get("force", False)
        return args
    if word in ("snapshot", "restore"):
        if not 1 <= len(tokens) <= 2 or any(t.startswith("-") for t in tokens):
            return None
        if word == "restore" and len(tokens) != 2:
            return None
        args["name"] = tokens[0]
        args["snapshot"] = tokens[1] if len(tokens) == 2 else None
        return args
    if word == "config":
        if (len(tokens) < 2 or tokens[0] not in ("get", "set")
                or any(t.startswith("-") for t in tokens[1:])):
            return None
        args["config_command"] = tokens[0]
        args["args"] = tokens[1:]
        return args
    if word in ("launch", "create"):
        parsed = _options(
            tokens,
            {"-e": "ephemeral", "--ephemeral": "ephemeral", "--no-profiles": "no_profiles"},
            {"-c": "config[]", "--config": "config[]", "-p": "profile[]", "--profile": "profile[]",
             "-s": "storage", "--storage": "storage", "--description": "description"})
        if parsed is None or len(parsed[1]) != 2 or not valid_instance_name(parsed[1][1]):
            return None  # a generated name (the words list, random) is the full command's
        options, (image, name) = parsed
        args.update(image=image, name=name, config=options.get("config"),
                    profile=options.get("profile"),
                    no_profiles=options.get("no_profiles", False),
                    ephemeral=options.get("ephemeral", False),
                    description=options.get("description"), storage=options.get("storage"),
                    device=None)
        return args
    if word in ("copy", "cp"):
        if len(tokens) != 2 or any(t.startswith("-") for t in tokens):
            return None
        if not valid_instance_name(tokens[1]):
            return None
        args.update(source=tokens[0], target=tokens[1], instance_only=False, config=None,
                    profile=None, no_profiles=False, ephemeral=False, mode="pull",
                    storage=None, refresh=False, stateless=False, stateful=False)
        return args
    if word == "file" and tokens[:1] in (["push"], ["pull"]):
        push = tokens[0] == "push"
        parsed = _options(tokens[1:], {"-r": "recursive", "--recursive": "recursive",
                                       "-p": "create_dirs", "--create-dirs": "create_dirs"},
                          {"--uid": "uid[]", "--gid": "gid[]", "--mode": "mode"} if push else {})
        if parsed is None or len(parsed[1]) < 2:
            return None
        options, positionals = parsed
        args.update(file_command=tokens[0], sources=positionals[:-1], target=positionals[-1],
                    recursive=options.get("recursive", False),
                    create_dirs=options.get("create_dirs", False))
        if push:
            for owner in ("uid", "gid"):
                values = [_int(value) for value in options.get(owner, ["-1"])]
                if None in values:
                    return None
                args[owner] = values[-1] if owner in options else None
            args["mode"] = options.get("mode")
        return args
    if word == "info":
        parsed = _options(tokens, {"--show-log": "show_log"}, {})
        if parsed is None or len(parsed[1]) != 1:
            return None  # without a name: the server's, as YAML
        args.update(name=parsed[1][0], show_log=parsed[0].get("show_log", False))
        return args
    if word in ("list", "ls") and not tokens:
        args.update(filters=[], format="table", columns="ns46tS")
        return args
    if word == "publish":
        return _parse_publish(tokens, args)
    if word == "image" and tokens[:1] == ["import"]:
        parsed = _options(tokens[1:], {"--public": "public", "--reuse": "reuse"},
                          {"--alias": "alias[]"})
        if parsed is None or not 1 <= len(parsed[1]) <= 2:
            return None
        options, files = parsed
        args.update(image_command="import", file=files[0],
                    rootfs=files[1] if len(files) == 2 else None, alias=options.get("alias"),
                    public=options.get("public", False), reuse=options.get("reuse", False))
        return args
    return None


PUBLISH_FLAGS = {"--public": "public", "-f": "force", "--force": "force"}
PUBLISH_VALUED = {"--alias": "alias", "--compression": "compression"}


def _publish_words(tokens: list[str], until_positional: bool) -> tuple[Args, int] | None:
    """The options of ``publish`` in ``tokens`` (``alias`` a list, the others as argparse
    stores them) and the index where reading stopped: at the first positional when
    ``until_positional`` (the source), else at the end, collecting ``KEY=VALUE`` positionals
    in ``properties`` (the part after the source, which ``copying.merge_publish_args``
    parses intermixed). None for anything else: an unknown or abbreviated option, a value
    that starts with ``-``, ``--``, a positional without ``=``."""
    found: Args = {"alias": [], "properties": []}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("-"):
            if until_positional:
                return (found, i) if token else None
            if "=" not in token:
                return None
            found["properties"].append(token)
            i += 1
            continue
        i += 1
        if token in PUBLISH_FLAGS:
            found[PUBLISH_FLAGS[token]] = True
            continue
        option, eq, value = token.partition("=")
        if option not in PUBLISH_VALUED:
            return None
        if not eq:
            if i >= len(tokens) or tokens[i].startswith("-"):
                return None
            value = tokens[i]
            i += 1
        if option == "--alias":
            found["alias"].append(value)
        else:
            found["compression"] = value
    return (None if until_positional else (found, i))


def _parse_publish(tokens: list[str], args: Args) -> Args | None:
    """``publish [OPTIONS] SOURCE [OPTIONS | KEY=VALUE]...``: argparse's namespace, the part
    after the source in ``rest`` (argparse.REMAINDER)."""
    before = _publish_words(tokens, until_positional=True)
    if before is None or _publish_words(tokens[before[1] + 1:], False) is None:
        return None
    options, at = before
    args.update(source=tokens[at], rest=tokens[at + 1:], alias=options["alias"] or None,
                public=options.get("public", False), force=options.get("force", False),
                compression=options.get("compression"))
    return args


# -- acting on the mount -----------------------------------------------------------------------
def out(text: str = "") -> None:
    """Print a line and flush (progress lines must show before slow operations)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def do(fn: Callable[[], Any], scope: str | None = None, fallback: str = "",
       messages: dict[int, str] | None = None) -> Any:
    """``Mount.do``: run a mount operation; an OSError becomes a CLIError with the daemon's
    message."""
    try:
        return fn()
    except OSError as exc:
        fb = (messages or {}).get(exc.errno or 0, fallback)
        raise CLIError(daemon_error(mount_point(), exc, scope, fb)) from exc


def write(path: str, value: str, scope: str | None = None,
          messages: dict[int, str] | None = None) -> None:
    """``Mount.write``: write a value file, reporting the daemon's error."""
    do(lambda: write_raw(path, value), scope, "", messages)


def parse_pairs(items: list[str] | None, what: str = "key=value pair") -> list[tuple[str, str]]:
    """``instances.parse_pairs``: ``k=v`` arguments."""
    pairs = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"Bad {what}: {item}")
        pairs.append((key, value))
    return pairs


BUSY_MESSAGES = {
    "start": "The instance is already running",
    "stop": "The instance is already stopped",
    "kill": "The instance is already stopped",
    "restart": "The instance isn't running",
    "freeze": "The instance isn't running",
    "unfreeze": "The instance isn't frozen",
}


def read_state(root: str, name: str) -> str:
    inst = instance_dir(root, name)
    return do(lambda: read_opt(os.path.join(inst, "state")), inst).strip().upper()


def set_state(root: str, name: str, action: str) -> None:
    """Write ``action`` to ``instances/NAME/state`` (the daemon answers once it is done)."""
    inst = instance_dir(root, name)
    try:
        write(os.path.join(inst, "state"), action, inst, messages={
            errno.EBUSY: BUSY_MESSAGES.get(action, "The instance is busy"),
            errno.ENOENT: "The instance has no root filesystem",
            errno.EINVAL: f"Invalid state action: {action}",
        })
    except CLIError as exc:
        if not os.path.isdir(inst):
            raise CLIError("Instance not found") from exc
        raise


def change_state(root: str, name: str, command: str, force: bool, timeout: int) -> None:
    """``instances.change_state``: one state command on one instance."""
    timed = timeout >= 0
    if command == "stop":
        if force:
            set_state(root, name, "kill")
        elif timed:
            set_state(root, name, f"stop {max(0, timeout)}")
        else:
            set_state(root, name, "stop")
    elif command == "restart" and (force or timed):
        if read_state(root, name) != "STOPPED":
            set_state(root, name, "kill" if force else f"stop {max(0, timeout)}")
        set_state(root, name, "start")
    else:
        set_state(root, name, command)


def run_state(root: str, args: Args) -> int:
    command, names = args["state_action"], args["names"]
    if not names:
        raise CLIError(f"Give the instances to {command}, or --all")
    failed = 0
    for name in names:
        try:
            change_state(root, name, command, args.get("force", False), args.get("timeout", -1))
        except CLIError as exc:
            if len(names) == 1:
                raise
            failed += 1
            sys.stderr.write(f"Error: {name}: {exc.message}\n")
    return 1 if failed else 0


def run_delete(root: str, args: Args) -> int:
    for target in args["names"]:
        if "/" in target:
            name, snap = target.split("/", 1)
            inst = instance_dir(root, name)
            snap_dir = os.path.join(inst, "snapshots", snap)
            if not snap or "/" in snap or not os.path.isdir(snap_dir):
                raise CLIError("Snapshot not found")
            do(lambda d=snap_dir: os.rmdir(d), inst)
            continue
        inst = instance_dir(root, target)
        if read_state(root, target) not in ("STOPPED", ""):
            if not args["force"]:
                raise CLIError("The instance is currently running, stop it first or pass --force")
            set_state(root, target, "kill")
        do(lambda d=inst: os.rmdir(d), inst, messages={
            errno.EBUSY: "The instance is currently running, stop it first or pass --force",
        })
    return 0


def run_snapshot(root: str, args: Args) -> int:
    inst = instance_dir(root, args["name"])
    snap = args["snapshot"]
    if snap is None:
        taken = set(list_dirs(os.path.join(inst, "snapshots")))
        n = 0
        while f"snap{n}" in taken:
            n += 1
        snap = f"snap{n}"
    elif "/" in snap or snap in ("", ".", ".."):
        raise CLIError(f"Invalid snapshot name: {snap!r}")
    do(lambda: os.mkdir(os.path.join(inst, "snapshots", snap)), inst, messages={
        errno.EEXIST: f"Snapshot {snap!r} already exists",
    })
    return 0


def run_restore(root: str, args: Args) -> int:
    inst = instance_dir(root, args["name"])
    write(os.path.join(inst, "restore"), args["snapshot"], inst,
          messages={errno.ENOENT: "Snapshot not found"})
    return 0


def _config_dir(root: str, instance: str | None) -> tuple[str, str | None]:
    if instance is None:
        return os.path.join(root, "config"), None
    inst = instance_dir(root, instance)
    return os.path.join(inst, "config"), inst


def _key_path(base: str, key: str) -> str:
    if not key or "/" in key or key in (".", ".."):
        raise CLIError(f"Invalid config key: {key!r}")
    return os.path.join(base, key)


def run_config(root: str, args: Args) -> int:
    """``config get [NAME] KEY`` and ``config set [NAME] KEY VALUE | [NAME] KEY=VALUE...``
    (``lxfs.cli.config``'s cmd_get and cmd_set)."""
    items = args["args"]
    if args["config_command"] == "get":
        if len(items) not in (1, 2):
            raise CLIError("Usage: lxfs config get [NAME] KEY")
        instance, key = (None, items[0]) if len(items) == 1 else items
        base, scope = _config_dir(root, instance)
        path = _key_path(base, key)
        sys.stdout.write(do(lambda: read_opt(path), scope) + "\n")
        return 0
    instance, pairs = _set_args(root, items)
    if instance is not None:
        instance_dir(root, instance)
    for key, value in pairs:
        base, scope = _config_dir(root, instance)
        path = _key_path(base, key)
        if value == "":
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise CLIError(daemon_error(root, exc, scope, f"Cannot unset {key!r}")) from exc
            continue
        write(path, value, scope, messages={
            errno.EINVAL: f"Invalid config: unknown key or bad value for {key!r}",
            errno.EACCES: f"Config key {key!r} is read-only",
            errno.EPERM: f"Config key {key!r} is read-only",
        })
    return 0


def _set_args(root: str, args: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """``config.parse_set_args``: which instance (None: the server) and which pairs."""
    usage = "Usage: lxfs config set [NAME] KEY VALUE | [NAME] KEY=VALUE..."
    if "=" in args[0]:
        return None, parse_pairs(args)
    if len(args) == 1:
        raise CLIError(usage)
    if len(args) == 2:
        if "=" not in args[1]:
            return None, [(args[0], args[1])]
        if not os.path.isdir(os.path.join(instances_root(root), args[0])) and "." in args[0]:
            return None, [(args[0], args[1])]
        return args[0], parse_pairs(args[1:])
    if len(args) == 3 and "=" not in args[1]:
        return args[0], [(args[1], args[2])]
    return args[0], parse_pairs(args[1:])


def _root_pool(inst: str, pool: str) -> None:
    """``instances.set_device`` for ``-s POOL``: the instance's own root disk on ``pool``, on
    top of the one its profiles give."""
    inherited = read_dir_values(os.path.join(inst, "expanded", "devices", "root"))
    if not inherited:
        inherited = {"type": "disk", "path": "/"}
    values = {**inherited, "pool": pool}
    ddir = os.path.join(inst, "devices", "root")
    if not os.path.isdir(ddir):
        do(lambda: os.mkdir(ddir), inst)
    write(os.path.join(ddir, "type"), values.pop("type"), inst)
    for key, value in values.items():
        write(os.path.join(ddir, key), value, inst, messages={
            errno.EINVAL: f"Invalid device option {key}={value}",
        })


def run_create(root: str, args: Args) -> int:
    """``launch|create IMAGE NAME`` (``instances.cmd_create`` for a local image)."""
    image, name = args["image"], args["name"]
    if not image:
        raise CLIError("Image not found")
    configs = parse_pairs(args["config"])
    out(f"Creating {name}")
    inst = os.path.join(instances_root(root), name)
    do(lambda: os.mkdir(inst), messages={
        errno.EEXIST: f"Instance {name!r} already exists",
        errno.EINVAL: f"Invalid instance name: {name!r}",
    })
    try:
        if args["no_profiles"]:
            write(os.path.join(inst, "profiles"), "", inst)
        elif args["profile"]:
            write(os.path.join(inst, "profiles"), "".join(p + "\n" for p in args["profile"]),
                  inst, messages={errno.ENOENT: "Profile not found"})
        for key, value in configs:
            if value != "":
                write(os.path.join(inst, "config", key), value, inst,
                      messages={errno.EINVAL: f"Invalid value for config key {key!r}"})
        if args["ephemeral"]:
            write(os.path.join(inst, "ephemeral"), "true", inst)
        if args["description"]:
            write(os.path.join(inst, "description"), args["description"], inst)
        if args["storage"]:
            _root_pool(inst, args["storage"])
        write(os.path.join(inst, "source"), image, inst, messages={
            errno.ENOENT: f"Image not found: {image}",
        })
    except (CLIError, KeyboardInterrupt):
        try:
            os.rmdir(inst)
        except OSError:
            pass
        raise
    if args["command"] == "launch":
        out(f"Starting {name}")
        try:
            set_state(root, name, "start")
        except CLIError as exc:
            raise CLIError(f"{exc.message}\nTry `lxfs info --show-log {name}` for more info"
                           ) from exc
    return 0


def publish_line(args: Args) -> str:
    """The line ``run_publish`` writes to ``publish`` (``copying.publish_request`` after
    ``copying.merge_publish_args``): ``alias=A... public=true force=true compression=C
    KEY=VALUE...``."""
    found = _publish_words(args["rest"], False)
    assert found is not None  # parse checked it
    more = found[0]
    tokens = [f"alias={a}" for a in (args["alias"] or []) + more["alias"]]
    if args["public"] or more.get("public"):
        tokens.append("public=true")
    if args["force"] or more.get("force"):
        tokens.append("force=true")
    compression = more.get("compression") or args["compression"]
    if compression:
        tokens.append(f"compression={compression}")
    tokens += [f"{key}={value}" for key, value in parse_pairs(more["properties"])]
    for token in tokens:
        if any(c.isspace() for c in token):
            raise CLIError(f"Values with spaces are not supported by publish: {token!r}")
    return " ".join(tokens)


def run_publish(root: str, args: Args) -> int:
    """``publish NAME[/SNAP] [--alias A]... [--public] [--force] [--compression C]
    [KEY=VALUE]...`` (``copying.cmd_publish``)."""
    name, _, snap = args["source"].partition("/")
    inst = instance_dir(root, name)
    if snap and ("/" in snap or not os.path.isdir(os.path.join(inst, "snapshots", snap))):
        raise CLIError("Snapshot not found")
    path = os.path.join(inst, "snapshots", snap, "publish") if snap else \
        os.path.join(inst, "publish")
    write(path, publish_line(args), inst, messages={
        errno.EBUSY: "The instance is currently running, stop it first or pass --force",
        errno.EEXIST: "Image alias already exists",
        errno.ENOENT: "The instance has no root filesystem",
    })
    fingerprint = do(lambda: read_opt(path), inst).strip()
    out(f"Instance published with fingerprint: {fingerprint}")
    return 0


# -- image import ------------------------------------------------------------------------------
CHUNK = 1 << 20


def is_fingerprint(name: str) -> bool:
    """Is ``name`` an image fingerprint (64 lowercase hex digits)?"""
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def upload(images: str, src: str, digest: Any) -> str:
    """Copy ``src`` into ``images`` (the daemon imports it at close()), hashing its bytes into
    ``digest`` as they are read; returns the upload path."""
    base = os.path.basename(src.rstrip("/")) or "image"
    if is_fingerprint(base) or base in ("aliases", ".", ".."):
        base = "upload-" + base
    dest = os.path.join(images, base)
    n = 1
    while os.path.lexists(dest):
        dest = os.path.join(images, f"{base}.{n}")
        n += 1
    try:
        f = open(src, "rb", buffering=0)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise CLIError(f"{src}: {exc.strerror or exc}") from exc
    with f:
        def copy() -> None:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                buf = bytearray(CHUNK)
                while size := f.readinto(buf):
                    view = memoryview(buf)[:size]
                    digest.update(view)
                    while view:
                        view = view[os.write(fd, view):]
            except BaseException:
                try:
                    os.close(fd)
                except OSError:
                    pass
                raise
            os.close(fd)  # the import happens here: its errors must be reported

        do(copy, None, messages={
            errno.EINVAL: f"{src} is not a valid image",
            errno.ENOSPC: "No space left on the server's storage",
        })
    return dest


def ensure_alias(aliases: str, alias: str, fp: str, reuse: bool) -> None:
    """Make ``ALIASES/ALIAS`` point at ``fp`` (re-point it when ``reuse``)."""
    if not alias or "/" in alias or alias in (".", ".."):
        raise CLIError(f"Invalid alias name: {alias!r}")
    path = os.path.join(aliases, alias)
    if os.path.lexists(path):
        try:
            current = os.path.basename(os.readlink(path).rstrip("/"))
        except OSError:
            current = ""
        if current == fp:
            return
        if not reuse:
            raise CLIError(f"Alias already exists: {alias}")
        do(lambda: os.unlink(path))
    do(lambda: os.symlink(fp, path), None,
       messages={errno.EEXIST: f"Alias already exists: {alias}"})


def import_image(images: str, aliases: str, meta: str, rootfs: str | None,
                 alias_names: list[str], public: bool = False, reuse: bool = False) -> str:
    """Import a unified or split image through ``images`` and set its aliases; returns its
    fingerprint. The files are hashed as they are copied (the fingerprint: the sha256 of
    their bytes in order), not read a second time; an image already there is uploaded
    again, and the daemon drops the copy (as LXD's client, which always uploads)."""
    import hashlib  # noqa: PLC0415 - 15 ms (OpenSSL): only import needs it

    try:
        present = set(os.listdir(images))
    except OSError:
        present = set()
    digest = hashlib.sha256()
    pending = upload(images, meta, digest)
    if rootfs:
        try:
            upload(images, rootfs, digest)
        except CLIError:
            if os.path.isfile(pending):
                try:
                    os.unlink(pending)
                except OSError:
                    pass
            raise
    fp = digest.hexdigest()
    image_dir = os.path.join(images, fp)
    if not os.path.isdir(image_dir):
        msg = daemon_error(mount_point(), OSError(errno.ENOENT, ""), None, "")
        raise CLIError(msg or f"Image import failed: the server did not register {fp}")
    if public:
        write(os.path.join(image_dir, "public"), "true")
    for alias in alias_names:
        ensure_alias(aliases, alias, fp, reuse)
    if fp in present:
        out(f"Image already imported with fingerprint: {fp}")
    else:
        out(f"Image imported with fingerprint: {fp}")
    return fp


def run_image_import(root: str, args: Args) -> int:
    """``image import FILE [ROOTFS] [--alias A]... [--public] [--reuse]``
    (``images.cmd_import``)."""
    files = [args["file"]] + ([args["rootfs"]] if args["rootfs"] else [])
    for path in files:
        if not os.path.isfile(path):
            raise CLIError(f"{path}: No such file")
    images = os.path.join(root, "images")
    import_image(images, os.path.join(images, "aliases"), args["file"], args["rootfs"],
                 args["alias"] or [], args["public"], args["reuse"])
    return 0


def run_copy(root: str, args: Args) -> int:
    """``copy SRC[/SNAP] DST`` (``copying.cmd_copy`` without options)."""
    source, _, snap = args["source"].partition("/")
    src = instance_dir(root, source)
    if snap and ("/" in snap or not os.path.isdir(os.path.join(src, "snapshots", snap))):
        raise CLIError("Snapshot not found")
    ref = f"instances/{source}" + (f"/snapshots/{snap}" if snap else "")
    name = args["target"]
    inst = os.path.join(instances_root(root), name)
    do(lambda: os.mkdir(inst), messages={
        errno.EEXIST: f"Instance {name!r} already exists",
        errno.EINVAL: f"Invalid instance name: {name!r}",
    })
    try:
        write(os.path.join(inst, "source"), ref, inst, messages={
            errno.ENOENT: "Instance not found",
            errno.EEXIST: f"Instance {name!r} already exists",
        })
    except (CLIError, KeyboardInterrupt):
        try:
            os.rmdir(inst)
        except OSError:
            pass
        raise
    return 0


def run_list(root: str, _args: Args) -> int:
    """``list``: the default table from one read of ``instances/.list``."""
    from lxfs.cli.output import natural_key, render_table  # noqa: PLC0415

    try:
        with open(os.path.join(instances_root(root), ".list"), encoding="utf-8") as f:
            rows = f.read().splitlines()
    except OSError:
        rows = []
    if not rows:
        raise NotHandled  # a daemon without .list: the full command reads each instance
    header = rows[0].split("\t")
    found: dict[str, list[str]] = {}
    for line in rows[1:]:
        cells = dict(zip(header, line.split("\t"), strict=False))
        name = cells.get("NAME", "")
        if not name:
            continue
        pid, snapshots = cells.get("PID") or "0", cells.get("SNAPSHOTS") or "0"
        if not (pid.isascii() and pid.isdigit() and snapshots.isascii()
                and snapshots.isdigit() and cells.get("STATE")):
            raise NotHandled  # what the full command reads file by file
        kind = (cells.get("TYPE") or "container").upper()
        ephemeral = cells.get("EPHEMERAL", "false").strip().lower() in ("true", "1", "yes", "on")
        found[name] = [
            name, cells["STATE"].upper(),
            "\n".join(a for a in cells.get("IPV4", "").split(", ") if a),
            "\n".join(a for a in cells.get("IPV6", "").split(", ") if a),
            f"{kind} (EPHEMERAL)" if ephemeral else kind,
            str(int(snapshots)),
        ]
    table = [found[name] for name in sorted(found, key=natural_key)]
    sys.stdout.write(render_table(["NAME", "STATE", "IPV4", "IPV6", "TYPE", "SNAPSHOTS"], table))
    return 0


def pid_namespace_counts() -> dict[str, int]:
    """Number of host processes per PID namespace (``readlink /proc/P/ns/pid``)."""
    counts: dict[str, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return counts
    for entry in entries:
        if entry.isdigit():
            try:
                ns = os.readlink(f"/proc/{entry}/ns/pid")
            except OSError:
                continue
            counts[ns] = counts.get(ns, 0) + 1
    return counts


def process_count(pid: int, counts: dict[str, int] | None = None) -> int | None:
    """Processes in the PID namespace of ``pid`` (the container's init), None if unknown."""
    if pid <= 0:
        return None
    try:
        ns = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    if ns == os.readlink("/proc/self/ns/pid"):
        return None
    return (counts if counts is not None else pid_namespace_counts()).get(ns)


DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def utc_minutes(text: str) -> str:
    """``output.fmt_time`` for the daemon's own format, ``2026-11-23T10:49:46Z`` (also with a
    fraction or ``+00:00``), without datetime and re: ``2026/11/23 10:49 UTC``; "" for none
    or a year up to 1970. Another form is datetime's (``output.fmt_time``)."""
    text = text.strip()
    if not text:
        return ""
    body = text[:-1] if text.endswith("Z") else text[:-6] if text.endswith("+00:00") else ""
    date, _, clock = body.partition("T")
    fields = date.split("-") + clock.partition(".")[0].split(":")
    fraction = clock.partition(".")[2]
    if (len(fields) != 6 or [len(f) for f in fields] != [4, 2, 2, 2, 2, 2]
            or not all(f.isascii() and f.isdigit() for f in fields)
            or (fraction and not (fraction.isascii() and fraction.isdigit()))):
        return _fmt_time(text)
    year, month, day, hour, minute, second = map(int, fields)
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not (1 <= month <= 12 and hour < 24 and minute < 60 and second < 60 and 1 <= day
            <= DAYS_IN_MONTH[month - 1] + (month == 2 and leap)):
        return _fmt_time(text)
    if year <= 1970:
        return ""
    return f"{fields[0]}/{fields[1]}/{fields[2]} {fields[3]}:{fields[4]} UTC"


def _fmt_time(text: str) -> str:
    from lxfs.cli.output import fmt_time  # noqa: PLC0415 - re and datetime: 7 ms

    return fmt_time(text)


def _lines(path: str) -> list[str]:
    return [line for line in read_opt(path).split("\n") if line]


def run_info(root: str, args: Args) -> int:
    """``info NAME [--show-log]``: an instance's state, resources and snapshots (also the
    full command's)."""
    from lxfs.cli.output import natural_key, render_table, size_iec  # noqa: PLC0415

    name = args["name"]
    inst = instance_dir(root, name)
    state = read_state(root, name)
    kind = read_opt(os.path.join(inst, "type"), "container") or "container"
    ephemeral = read_opt(os.path.join(inst, "ephemeral"), "false").strip().lower() in (
        "true", "1", "yes", "on")
    lines = [f"Name: {name}"]
    description = read_opt(os.path.join(inst, "description"))
    if description:
        lines.append(f"Description: {description}")
    lines += [
        f"Status: {state}",
        f"Type: {kind}{' (ephemeral)' if ephemeral else ''}",
        f"Architecture: {read_opt(os.path.join(inst, 'architecture'))}",
    ]
    try:
        pid = int(read_opt(os.path.join(inst, "pid"), "0") or 0)
    except ValueError:
        pid = 0
    if pid > 0:
        lines.append(f"PID: {pid}")
    lines.append(f"Created: {utc_minutes(read_opt(os.path.join(inst, 'created_at')))}")
    lines.append(f"Last Used: {utc_minutes(read_opt(os.path.join(inst, 'last_used_at')))}")
    usage: dict[str, int] = {}
    for key in ("processes", "memory", "memory_peak", "cpu", "disk"):
        try:
            usage[key] = int(read_opt(os.path.join(inst, "usage", key)).strip() or "0")
        except (OSError, ValueError):
            continue
    running = state == "RUNNING"
    count: int | None = usage.get("processes") if running else None
    if running and not count and pid > 0:
        count = process_count(pid)  # older daemons have no usage/
    resources = [f"  Processes: {count}"] if count else []
    if usage.get("disk"):
        resources += ["  Disk usage:", f"    root: {size_iec(usage['disk'])}"]
    if usage.get("cpu"):
        resources += ["  CPU usage:", f"    CPU usage (in seconds): {usage['cpu'] // 10**9}"]
    memory = [f"    {label}: {size_iec(usage[key])}"
              for key, label in (("memory", "Memory (current)"), ("memory_peak", "Memory (peak)"))
              if usage.get(key)]
    if memory:
        resources += ["  Memory usage:", *memory]
    ipv4, ipv6 = _lines(os.path.join(inst, "ipv4")), _lines(os.path.join(inst, "ipv6"))
    if ipv4 or ipv6:
        resources.append("  Network usage:")
        resources += [f"    IPv4: {a}" for a in ipv4] + [f"    IPv6: {a}" for a in ipv6]
    if resources:
        lines += ["", "Resources:"] + resources
    text = "\n".join(lines) + "\n"
    snapshots = os.path.join(inst, "snapshots")
    snaps = sorted(list_dirs(snapshots), key=natural_key)
    if snaps:
        table = [[snap, utc_minutes(read_opt(os.path.join(snapshots, snap, "created_at"))), "",
                  "NO"] for snap in snaps]
        text += "\nSnapshots:\n" + render_table(["NAME", "TAKEN AT", "EXPIRES AT", "STATEFUL"],
                                                table)
    if args["show_log"]:
        log = do(lambda: read_opt(os.path.join(inst, "log")), inst)
        text += "\nLog:\n\n" + log + ("\n" if log and not log.endswith("\n") else "")
    sys.stdout.write(text)
    return 0


class Namespace:
    """The arguments as attributes, for a command that takes argparse's namespace."""

    def __init__(self, values: Args) -> None:
        self.__dict__.update(values)


def run_file(_root: str, args: Args) -> int:
    """``file push|pull``: ``lxfs.cli.files`` itself (it needs neither argparse nor
    pathlib)."""
    from lxfs.cli import files  # noqa: PLC0415

    command = files.cmd_push if args["file_command"] == "push" else files.cmd_pull
    return command(Namespace(args))  # type: ignore[arg-type]


RUNNERS: dict[str, Callable[[str, Args], int]] = {
    **dict.fromkeys(STATE_ACTIONS, run_state),
    "delete": run_delete, "rm": run_delete,
    "snapshot": run_snapshot, "restore": run_restore,
    "config": run_config,
    "launch": run_create, "create": run_create,
    "copy": run_copy, "cp": run_copy,
    "list": run_list, "ls": run_list,
    "file": run_file,
    "info": run_info,
    "publish": run_publish,
    "image": run_image_import,
}


def run(argv: list[str]) -> int | None:
    """Run ``argv`` when it is a plain form of a common command; None: the full command's."""
    args = parse(argv)
    if args is None:
        return None
    root = mount_point()
    if args["command"] != "file":  # lxfs.cli.files checks the mount itself
        check_mount(root)
    try:
        return RUNNERS[args["command"]](root, args)
    except NotHandled:
        return None
