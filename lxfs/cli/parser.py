"""The ``lxfs`` command's argument parser (argparse): built for the named command only."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

import lxfs
from lxfs.cli import COMMAND_MODULES, MODULE_ORDER, cmd_version
from lxfs.cli.base import CLIError

TYPE_CHECKING = False  # importing typing costs 2-4 ms of start-up
if TYPE_CHECKING:
    from typing import Any


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


class _Unused:
    """Stands for the parser of a command not named on the command line: every call (and
    attribute set) is accepted and ignored, so a module's ``register`` needs no changes."""

    def __getattr__(self, name: str) -> Callable[..., _Unused]:
        return self._ignore

    def __setattr__(self, name: str, value: object) -> None:
        pass

    def _ignore(self, *args: object, **kwargs: object) -> _Unused:
        return self


class _OnlyCommand:
    """The subparsers of the top-level parser, building only the parser of ``word`` (a module
    registers up to 18 commands: building them all is most of a short command's start)."""

    def __init__(self, sub: argparse._SubParsersAction, word: str) -> None:  # type: ignore[type-arg]
        self.sub = sub
        self.word = word

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser | _Unused:
        if name == self.word or self.word in kwargs.get("aliases", ()):
            return self.sub.add_parser(name, **kwargs)
        return _Unused()


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser: every command's, or only the one ``argv`` names (when known)."""
    parser = _Parser(prog="lxfs", description="Manage system containers through the lxfs "
                     "filesystem (LXD's lxc commands).")
    parser.add_argument("--version", action="version", version=lxfs.__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    word = None if argv is None else command_word(argv)
    target: Any = sub
    if word in COMMAND_MODULES:
        modules: Sequence[str] = (COMMAND_MODULES[word],)
        target = _OnlyCommand(sub, word)
    elif word == "version" or (word is None and argv and "--version" in argv):
        modules = ()
    else:  # help, or an unknown command: the usage message lists them all
        modules = MODULE_ORDER
    for module in modules:
        importlib.import_module(f"lxfs.cli.{module}").register(target)
    p = sub.add_parser("version", help="Show client and server versions")
    p.set_defaults(func=cmd_version)
    if modules:  # every command takes --project; the current one applies without
        from lxfs.cli.projects import add_project_options, apply_stored_project  # noqa: PLC0415

        for command in set(sub.choices.values()):
            add_project_options(command)
        apply_stored_project()
    return parser
