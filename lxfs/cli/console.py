"""``lxfs console NAME``: the container's console through ``lxc-console``, or its log."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from lxfs.cli.mount import CLIError, Mount, read_opt

DETACH_HINT = "To detach from the console, press: <ctrl>+a q"


def console_command(lxc_path: str, name: str) -> list[str]:
    """The ``lxc-console`` command line attaching to the console (tty 0)."""
    tool = shutil.which("lxc-console")
    if tool is None:
        raise CLIError("lxc-console not found: install the LXC tools (contrib/install-deps.sh)")
    return [tool, "-P", lxc_path, "-n", name, "-t", "0"]


def cmd_console(args: argparse.Namespace) -> int:
    """``lxfs console NAME [--show-log]``."""
    mount = Mount()
    inst = mount.instance(args.name)
    if args.show_log:
        log = mount.do(lambda: read_opt(inst / "console"), inst)
        sys.stdout.write(f"\nConsole log:\n\n{log}\n")
        return 0
    if read_opt(inst / "state").strip().upper() != "RUNNING":
        raise CLIError("Instance is not running")
    lxc_path = mount.env("lxc_path")
    if not lxc_path:
        raise CLIError("The server does not publish environment/lxc_path")
    command = console_command(lxc_path, args.name)
    print(DETACH_HINT)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return 0  # pragma: no cover - execv does not return


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``console``."""
    p = sub.add_parser("console", help="Attach to instance consoles")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--show-log", action="store_true", help="retrieve the console log")
    p.set_defaults(func=cmd_console)
