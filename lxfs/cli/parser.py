"""The ``lxfs`` command's argument parser (argparse): built for the named command only."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

import lxfs
from lxfs.cli import COMMAND_MODULES, MODULE_ORDER, cmd_version
from lxfs.cli.base import CLIError


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
