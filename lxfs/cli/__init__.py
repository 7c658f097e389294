"""The ``lxfs`` command line client: LXD's ``lxc`` vocabulary over the lxfs mount."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

import lxfs
from lxfs.cli.mount import CLIError, Mount, NoMount

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
    "console": "console",
    "file": "files",
    "image": "images",
    "storage": "storage",
    "network": "network",
    "init": "init",
}
MODULE_ORDER = ("instances", "exec", "config", "profiles", "copying", "console", "files",
                "images", "storage", "network", "init")


def cmd_version(_args: argparse.Namespace) -> int:
    """``lxfs version``: client and server versions."""
    print(f"Client version: {lxfs.__version__}")
    try:
        mount = Mount()
        server = mount.env("server_version") or "unknown"
    except NoMount:
        server = "unreachable"
    print(f"Server version: {server}")
    return 0


def _columns() -> int:
    """The terminal's width, as ``shutil.get_terminal_size`` finds it (without importing
    shutil: argparse would, for every parser it builds, 5 ms of start-up)."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _columns() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``Error:`` line (exit status 1, like lxc)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CLIError(f"{message} (see `{self.prog} --help`)")


def _silence_stdout() -> None:
    """After EPIPE on stdout (``lxfs list | head``), drop further output quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def command_word(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (the first word that is not an option)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
        if arg == "--":
            return None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser: every command's, or only the one ``argv`` names (when known)."""
    parser = _Parser(prog="lxfs", description="Manage system containers through the lxfs "
                     "filesystem (LXD's lxc commands).")
    parser.add_argument("--version", action="version", version=lxfs.__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    word = None if argv is None else command_word(argv)
    if word in COMMAND_MODULES:
        modules: Sequence[str] = (COMMAND_MODULES[word],)
    elif word == "version" or (word is None and argv and "--version" in argv):
        modules = ()
    else:  # help, or an unknown command: the usage message lists them all
        modules = MODULE_ORDER
    for module in modules:
        importlib.import_module(f"lxfs.cli.{module}").register(sub)
    p = sub.add_parser("version", help="Show client and server versions")
    p.set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (and exits with it when run as a script)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    try:
        args = parser.parse_args(args_list)
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help()
            code = 0
        else:
            code = func(args)
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
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        code = code or 141
    if argv is None:
        sys.exit(code)
    return int(code or 0)


__all__ = ["main", "build_parser"]
