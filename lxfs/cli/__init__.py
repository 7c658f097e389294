"""The ``lxfs`` command line client: LXD's ``lxc`` vocabulary over the lxfs mount."""

from __future__ import annotations

import os
import sys

import lxfs
from lxfs.cli.base import CLIError, NoMount

TYPE_CHECKING = False  # the common path imports neither typing nor argparse
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

# Top-level command (and alias) -> the module of lxfs.cli that registers it. Only the named
# command's module is imported and its parser built: start-up is most of what a short command
# costs (tests/test_cli_unit.py checks this table against the full parser).
COMMAND_MODULES = {
    **dict.fromkeys(("launch", "create", "list", "ls", "info", "start", "stop", "restart",
                     "freeze", "pause", "unfreeze", "delete", "rm", "snapshot", "restore",
                     "move", "mv", "rename"), "instances"),
    "exec": "exec",
    "config": "config",
    "profile": "profiles",
    **dict.fromkeys(("copy", "cp", "publish"), "copying"),
    **dict.fromkeys(("export", "import"), "backups"),
    "console": "console",
    "file": "files",
    "image": "images",
    "storage": "storage",
    "network": "network",
    "init": "init",
    "remote": "remotes",
    "project": "projects",
}
MODULE_ORDER = ("instances", "exec", "config", "profiles", "copying", "backups", "console",
                "files", "images", "storage", "network", "init", "remotes", "projects")


def cmd_version(_args: argparse.Namespace) -> int:
    """``lxfs version``: client and server versions."""
    from lxfs.cli.mount import Mount  # noqa: PLC0415

    print(f"Client version: {lxfs.__version__}")
    try:
        mount = Mount()
        server = mount.env("server_version") or "unknown"
    except NoMount:
        server = "unreachable"
    print(f"Server version: {server}")
    return 0


def os_error_message(exc: OSError) -> str:
    """A failed system call in words: the daemon gone (its mount answers ENOTCONN), or the
    errno's text and the file."""
    import errno  # noqa: PLC0415 - the error path only

    if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
        from lxfs.cli.base import mount_point  # noqa: PLC0415

        return (f"the lxfs daemon at {mount_point()} stopped answering ({exc.strerror}): "
                "restart lxfsd")
    where = f": {os.fsdecode(exc.filename)!r}" if exc.filename is not None else ""
    return f"{exc.strerror or exc}{where}"


def _silence_stdout() -> None:
    """After EPIPE on stdout (``lxfs list | head``), drop further output quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser: every command's, or only the one ``argv`` names (when known)."""
    from lxfs.cli.parser import build_parser as build  # noqa: PLC0415

    return build(argv)


#: the commands of ``lxfs.cli.fast`` (kept here: the other commands do not import it)
FAST_WORDS = frozenset(("start", "stop", "restart", "freeze", "pause", "unfreeze", "delete",
                        "rm", "snapshot", "restore", "config", "launch", "create", "copy", "cp",
                        "list", "ls", "file", "info", "publish", "image"))


def _run(args_list: list[str], local_only: bool = False) -> int:
    fast_path = not os.environ.get("LXFS_NO_FAST_PATH")  # set: argparse for every command
    fast_path = fast_path and not _project_switched()  # the fast path knows no projects
    if (fast_path and args_list[:1] and args_list[0] in FAST_WORDS
            and (local_only or not _default_remote_elsewhere())):
        from lxfs.cli import fast  # noqa: PLC0415 - no argparse, pathlib or re

        code = fast.run(args_list)
        if code is not None:
            return code
    if fast_path and args_list[:1] == ["exec"]:  # exec's own parser: no argparse when it can
        from lxfs.cli import exec as exec_  # noqa: PLC0415

        parsed = exec_.parse_fast(args_list[1:])
        if parsed is not None and (local_only or (":" not in parsed.name
                                                  and not _default_remote_elsewhere())):
            return exec_.run(parsed)  # type: ignore[arg-type]
    complete_sys_path()
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    from lxfs.cli.parser import command_word  # noqa: PLC0415 - imported by build_parser

    word = command_word(args_list)
    if word != "remote" and not local_only and _may_name_remote(args_list):
        from lxfs.cli.remote_commands import dispatch  # noqa: PLC0415

        code = dispatch(args, word or "")
        if code is not None:
            return code
    return int(func(args) or 0)


def complete_sys_path() -> None:
    """Run ``site`` (the .pth files of site-packages...) when Python started without it: the
    launcher that contrib/install-deps.sh writes runs ``python -S`` (2-4 ms less) with the
    package and site-packages on sys.path, which is all the fast paths need (exec: python-lxc);
    the other commands get the usual start."""
    if sys.flags.no_site and "site" not in sys.modules:
        import site  # noqa: PLC0415

        site.main()


def _may_name_remote(argv: list[str]) -> bool:
    """May ``argv`` name a remote: a ``WORD:`` argument before ``--``, or a default remote
    other than ``local``? (Cheap: the common commands run with neither.)"""
    for arg in argv:
        if arg == "--":
            break
        if ":" in arg and not arg.startswith("-"):
            return True
    return _default_remote_elsewhere()


def _project_switched() -> bool:
    """Has ``lxfs project switch`` made another project current? A plain read of
    ``config.yml`` (``project:`` of a remote, ``lxfs.cli.projects``)."""
    conf = os.environ.get("LXFS_CONF") or os.path.expanduser("~/.config/lxfs")
    try:
        with open(os.path.join(conf, "config.yml"), encoding="utf-8") as f:
            return "project:" in f.read()
    except OSError:
        return False


def _default_remote_elsewhere() -> bool:
    """Is the user's default remote another server? Read without YAML or pathlib."""
    conf = os.environ.get("LXFS_CONF") or os.path.expanduser("~/.config/lxfs")
    try:
        with open(os.path.join(conf, "config.yml"), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("default-remote:"):
            return line.partition(":")[2].strip().strip("'\"") not in ("", "local")
    return False


def main(argv: Sequence[str] | None = None, local_only: bool = False) -> int:
    """Run the CLI; returns the exit status (and exits with it when run as a script).
    ``local_only``: names are this host's, whatever the user's remotes say (the daemon's own
    ``lxfs exec`` helpers)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _run(args_list, local_only)
    except NoMount as exc:
        sys.stderr.write(exc.message + "\n")
        code = exc.code
    except CLIError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"Error: {exc.message}\n")
        code = exc.code
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        code = 130
    except BrokenPipeError:
        _silence_stdout()
        code = 141
    except SystemExit as exc:  # --help, --version
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except OSError as exc:  # the daemon died mid-command, a file vanished...: one line
        sys.stdout.flush()
        sys.stderr.write(f"Error: {os_error_message(exc)}\n")
        code = 1
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        if os.environ.get("LXFS_DEBUG"):
            raise
        sys.stdout.flush()
        sys.stderr.write(f"Error: internal error: {type(exc).__name__}: {exc} "
                         "(LXFS_DEBUG=1 shows the traceback)\n")
        code = 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        code = code or 141
    if argv is None:
        sys.exit(code)
    return int(code or 0)


__all__ = ["main", "build_parser"]
