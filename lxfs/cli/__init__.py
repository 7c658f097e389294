"""The ``lxfs`` command line client: LXD's ``lxc`` vocabulary over the lxfs mount."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import lxfs
from lxfs.cli import config, copying, files, images, instances, profiles, storage
from lxfs.cli import console as console_
from lxfs.cli import exec as exec_
from lxfs.cli import init as init_
from lxfs.cli import network as network_
from lxfs.cli.mount import CLIError, Mount, NoMount


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


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``Error:`` line (exit status 1, like lxc)."""

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


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = _Parser(prog="lxfs", description="Manage system containers through the lxfs "
                     "filesystem (LXD's lxc commands).")
    parser.add_argument("--version", action="version", version=lxfs.__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    instances.register(sub)
    exec_.register(sub)
    config.register(sub)
    profiles.register(sub)
    copying.register(sub)
    console_.register(sub)
    files.register(sub)
    images.register(sub)
    storage.register(sub)
    network_.register(sub)
    init_.register(sub)
    p = sub.add_parser("version", help="Show client and server versions")
    p.set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (and exits with it when run as a script)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
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
