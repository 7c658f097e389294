"""``lxfsd``: the daemon. Loads the plugins, opens the state, mounts the filesystem.

SIGTERM/SIGINT unmount cleanly and leave every container running. A stale mount left by a
crashed predecessor (ENOTCONN) is detached at start.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyfuse3
import trio

from lxfs import reaper
from lxfs.fs import LxfsOperations
from lxfs.plugins import plugin_manager
from lxfs.server import Server

log = logging.getLogger("lxfs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lxfsd", description="The lxfs daemon.")
    p.add_argument("--data-dir", type=Path,
                   default=Path(os.environ.get("LXFS_DIR", "/var/lib/lxfs")),
                   help="state directory (env LXFS_DIR, default /var/lib/lxfs)")
    p.add_argument("--mount", type=Path,
                   default=Path(os.environ.get("LXFS_MOUNT", "/lxfs")),
                   help="mount point (env LXFS_MOUNT, default /lxfs)")
    p.add_argument("--log-level", default=os.environ.get("LXFS_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--max-tasks", type=int, default=64,
                   help="concurrent filesystem requests")
    p.add_argument("--check", action="store_true",
                   help="compare records, volumes, mounts, cgroups and processes, print every "
                        "inconsistency and exit (1 if any); changes nothing")
    p.add_argument("--disable-plugin", action="append", metavar="NAME",
                   default=[n for n in os.environ.get("LXFS_DISABLE_PLUGINS", "").split(",")
                            if n.strip()],
                   help="do not load this plugin (its entry-point name: storage_zfs...); "
                        "repeatable (env LXFS_DISABLE_PLUGINS, comma-separated)")
    p.add_argument("--group", default=os.environ.get("LXFS_GROUP", "lxfs"),
                   help="group whose members may use the mount and the sockets (env "
                        "LXFS_GROUP, default lxfs; root alone when the group does not exist)")
    return p.parse_args(argv)


def access_gid(group: str) -> int:
    """The gid of the access group, 0 (root alone) when it does not exist."""
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        log.warning("group %s does not exist: only root may use lxfs (contrib/up.sh creates "
                    "it)", group)
        return 0


def setup_logging(data_dir: Path, level: str) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(level.upper())
    log_file = data_dir / "lxfsd.log"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    try:
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                         0o600))
        os.chmod(log_file, 0o600)  # it names instances, users' commands and errors
        handlers.append(logging.FileHandler(log_file))
    except OSError as exc:  # a read-only data directory: log to stderr only
        print(f"lxfsd: cannot write {log_file}: {exc.strerror}", file=sys.stderr)
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)


def clean_stale_mount(mount: Path) -> None:
    """Detach what a crashed daemon left on the mount point (it answers ENOTCONN); refuse
    to start if a live lxfsd serves it."""
    try:
        os.listdir(mount)
    except FileNotFoundError:
        mount.mkdir(parents=True, exist_ok=True)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTCONN, errno.ECONNABORTED):
            raise
        log.warning("detaching the stale mount at %s left by a stopped lxfsd", mount)
        subprocess.run(["fusermount3", "-u", "-z", str(mount)], check=False,
                       capture_output=True)
        if os.path.ismount(mount):
            subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)
        return
    if _is_lxfs_mount(mount):
        raise SystemExit(f"lxfsd: {mount} is already served by a running lxfsd")


def _is_lxfs_mount(mount: Path) -> bool:
    target = str(mount.resolve())
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == target and "fuse.lxfs" in line:
                return True
    return False


async def serve(args: argparse.Namespace) -> None:
    pm = plugin_manager(disabled=args.disable_plugin)
    server = Server(args.data_dir.resolve(), args.mount.resolve(), pm,
                    access_gid=access_gid(args.group))
    async with trio.open_nursery() as nursery:
        await server.open(nursery)
        ops = LxfsOperations(server)
        options = set(pyfuse3.default_options)
        options.discard("default_permissions")
        options |= {"fsname=lxfs", "subtype=lxfs", "allow_other", "default_permissions"}
        clean_stale_mount(args.mount)
        pyfuse3.init(ops, str(args.mount), options)
        try:
            (args.data_dir / "lxfsd.pid").write_text(f"{os.getpid()}\n")
        except OSError as exc:  # a full or read-only data directory: serve reads anyway
            log.error("cannot write %s: %s", args.data_dir / "lxfsd.pid", exc.strerror)
        log.info("lxfsd %s serving %s (data in %s)", server.environment()["server_version"],
                 args.mount, args.data_dir)
        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                nursery.start_soon(_stop_on_signal, signals, nursery)
                await pyfuse3.main(max_tasks=args.max_tasks)
        finally:
            with trio.CancelScope(shield=True):
                log.info("unmounting %s (containers keep running)", args.mount)
                pyfuse3.close(unmount=True)
                await server.close()
                with contextlib.suppress(OSError):
                    (args.data_dir / "lxfsd.pid").unlink(missing_ok=True)
            nursery.cancel_scope.cancel()


async def _stop_on_signal(signals: trio.abc.AsyncIterator[int],  # type: ignore[name-defined]
                          nursery: trio.Nursery) -> None:
    async for signum in signals:
        log.info("received %s", signal.Signals(signum).name)
        pyfuse3.terminate()
        return


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("lxfsd: must run as root (it mounts a filesystem and runs containers)")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # read-only: served read-only
        os.chmod(args.data_dir, 0o711)
    if args.check:
        raise SystemExit(check(args))
    setup_logging(args.data_dir, args.log_level)
    refuse_second_daemon(args.data_dir)
    clean_stale_mount(args.mount)
    args.mount.mkdir(parents=True, exist_ok=True)
    # before anything is repaired: no helper of a crashed predecessor may still be at work
    reaper.end_leftovers(args.data_dir.resolve())
    cgroup = reaper.contain(args.data_dir.resolve())
    trio.run(serve, args)
    reaper.release(cgroup)


def check(args: argparse.Namespace) -> int:
    """``lxfsd --check``."""
    from lxfs import doctor

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    server = Server(args.data_dir.resolve(), args.mount.resolve(),
                    plugin_manager(disabled=args.disable_plugin))
    return doctor.main(server)


def refuse_second_daemon(data_dir: Path) -> None:
    """Exit if a live lxfsd already uses ``data_dir`` (its pid file names it)."""
    try:
        pid = int((data_dir / "lxfsd.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if pid != os.getpid() and any(b"lxfsd" in part or part == b"lxfs.daemon"
                                  for part in cmdline[:3]):
        raise SystemExit(f"lxfsd: {data_dir} is already used by a running lxfsd (pid {pid})")


if __name__ == "__main__":
    main()
