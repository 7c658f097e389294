"""The systems under test, all with one vocabulary: lxfs through its CLI, lxfs through direct
file operations on its mount, and (``--vs-lxd``) LXD through its ``lxc`` client."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

from bench.common import BenchError, cat, rss_mb, run
from bench.daemon import BenchDaemon, venv_command


class System:
    """One way of driving a container manager. ``pools`` maps a kind (``dir``, ``btrfs``) to
    the pool name on this system; methods not offered raise NotImplementedError."""

    name = "?"

    def __init__(self, pools: dict[str, str]) -> None:
        self.pools = pools

    @property
    def daemon_pid(self) -> int:
        raise NotImplementedError

    def daemon_rss(self) -> float:
        return rss_mb(self.daemon_pid)

    def launch(self, image: str, name: str, pool: str) -> None:
        raise NotImplementedError

    def start(self, name: str) -> None:
        raise NotImplementedError

    def stop(self, name: str, force: bool) -> None:
        raise NotImplementedError

    def restart(self, name: str) -> None:
        raise NotImplementedError

    def exec(self, name: str, *command: str, stdin: bytes | None = None) -> None:
        raise NotImplementedError

    def snapshot(self, name: str, snap: str) -> None:
        raise NotImplementedError

    def restore(self, name: str, snap: str) -> None:
        raise NotImplementedError

    def copy(self, source: str, target: str) -> None:
        raise NotImplementedError

    def delete(self, name: str, force: bool = False) -> None:
        """Delete an instance (or ``NAME/SNAP``)."""
        raise NotImplementedError

    def publish(self, name: str, alias: str) -> None:
        raise NotImplementedError

    def list(self) -> None:
        raise NotImplementedError

    def list_files(self) -> None:
        """The listing through one file per instance (lxfs's mount only)."""
        raise NotImplementedError

    def image_import(self, path: Path, alias: str) -> None:
        raise NotImplementedError

    def image_export(self, alias: str, target: Path) -> None:
        raise NotImplementedError

    def image_delete(self, alias: str) -> None:
        raise NotImplementedError

    def has_image(self, alias: str) -> bool:
        raise NotImplementedError

    def init_pid(self, name: str) -> int:
        raise NotImplementedError


class CliSystem(System):
    """A manager driven through an LXD-style client (``lxfs`` or ``lxc``)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str],
                 pools: dict[str, str], pid_fn: object) -> None:
        super().__init__(pools)
        self.name = name
        self.command = command
        self.env = env
        self._pid_fn = pid_fn

    @property
    def daemon_pid(self) -> int:
        return self._pid_fn()  # type: ignore[operator,no-any-return]

    def cli(self, *args: str, stdin: bytes | None = None, check: bool = True) -> str:
        """Run the client; its stdout."""
        result = run([*self.command, *args], env=self.env, input=stdin, check=check)
        return result.stdout.decode(errors="replace")

    def launch(self, image: str, name: str, pool: str) -> None:
        self.cli("launch", image, name, "-s", pool)

    def start(self, name: str) -> None:
        self.cli("start", name)

    def stop(self, name: str, force: bool) -> None:
        self.cli("stop", name, *(["--force"] if force else []))

    def restart(self, name: str) -> None:
        self.cli("restart", name)

    def exec(self, name: str, *command: str, stdin: bytes | None = None) -> None:
        self.cli("exec", name, "--", *command, stdin=stdin)

    def snapshot(self, name: str, snap: str) -> None:
        self.cli("snapshot", name, snap)

    def restore(self, name: str, snap: str) -> None:
        self.cli("restore", name, snap)

    def copy(self, source: str, target: str) -> None:
        self.cli("copy", source, target)

    def delete(self, name: str, force: bool = False) -> None:
        self.cli("delete", name, *(["--force"] if force else []))

    def publish(self, name: str, alias: str) -> None:
        self.cli("publish", name, "--alias", alias)

    def list(self) -> None:
        self.cli("list")

    def image_import(self, path: Path, alias: str) -> None:
        self.cli("image", "import", str(path), "--alias", alias)

    def image_export(self, alias: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        self.cli("image", "export", alias, str(target) + "/")

    def image_delete(self, alias: str) -> None:
        self.cli("image", "delete", alias)

    def has_image(self, alias: str) -> bool:
        return alias in self.cli("image", "alias", "list", "-f", "csv")


class LxfsCli(CliSystem):
    """lxfs through the ``lxfs`` command."""

    def __init__(self, daemon: BenchDaemon, pools: dict[str, str]) -> None:
        super().__init__("lxfs-cli", venv_command("lxfs", "lxfs.cli"), daemon.env, pools,
                         lambda: daemon.pid)
        self.daemon = daemon

    def init_pid(self, name: str) -> int:
        return int(self.daemon.read("instances", name, "pid"))


class LxfsRest(CliSystem):
    """lxfs through its REST bridge, driven by the real ``lxc`` client (Debian's
    lxd-client) on ``DATA_DIR/unix.socket``: the same client as for LXD."""

    def __init__(self, daemon: BenchDaemon, pools: dict[str, str]) -> None:
        env = dict(daemon.env, LXD_DIR=str(daemon.data_dir))
        super().__init__("lxfs-rest", [require("lxc")], env, pools, lambda: daemon.pid)
        self.daemon = daemon

    def init_pid(self, name: str) -> int:
        return int(self.daemon.read("instances", name, "pid"))


class LxfsMount(System):
    """lxfs through direct file operations on its mount (what a script or program does)."""

    name = "lxfs-mount"

    def __init__(self, daemon: BenchDaemon, pools: dict[str, str],
                 profiles: dict[str, str]) -> None:
        super().__init__(pools)
        self.d = daemon
        self.profiles = profiles  # pool name -> profile whose root disk is on it

    @property
    def daemon_pid(self) -> int:
        return self.d.pid

    def launch(self, image: str, name: str, pool: str) -> None:
        os.mkdir(self.d.path("instances", name))
        if pool in self.profiles:
            self.d.write("instances", name, "profiles", self.profiles[pool])
        self.d.write("instances", name, "source", image)
        self.d.write("instances", name, "state", "start")

    def start(self, name: str) -> None:
        self.d.write("instances", name, "state", "start")

    def stop(self, name: str, force: bool) -> None:
        self.d.write("instances", name, "state", "kill" if force else "stop")

    def restart(self, name: str) -> None:
        self.d.write("instances", name, "state", "restart")

    def snapshot(self, name: str, snap: str) -> None:
        os.mkdir(self.d.path("instances", name, "snapshots", snap))

    def restore(self, name: str, snap: str) -> None:
        self.d.write("instances", name, "restore", snap)

    def copy(self, source: str, target: str) -> None:
        os.mkdir(self.d.path("instances", target))
        self.d.write("instances", target, "source", f"instances/{source}")

    def delete(self, name: str, force: bool = False) -> None:
        if "/" in name:
            inst, snap = name.split("/", 1)
            os.rmdir(self.d.path("instances", inst, "snapshots", snap))
            return
        if force:
            try:
                self.d.write("instances", name, "state", "kill")
            except OSError as exc:
                if exc.errno != errno.EBUSY:  # EBUSY: it was not running
                    raise
        os.rmdir(self.d.path("instances", name))

    def publish(self, name: str, alias: str) -> None:
        self.d.write("instances", name, "publish", f"alias={alias}")

    def list(self) -> None:
        """``cat instances/.list``: every instance's state, type, snapshots and addresses in
        one read (what ``lxfs list`` reads)."""
        cat(self.d.path("instances", ".list"))

    def list_files(self) -> None:
        """``ls instances/`` and ``cat`` of each state: the per-file way."""
        base = self.d.path("instances")
        for entry in os.listdir(base):
            if entry.startswith("."):
                continue
            try:
                cat(base / entry / "state")
            except FileNotFoundError:
                pass

    def image_import(self, path: Path, alias: str) -> None:
        # what a user types: cp (its writes sized by the upload's st_blksize; Python's
        # copyfile would splice 64 KiB at a time), then the alias to the new image's directory
        images = self.d.path("images")
        before = set(os.listdir(images))
        subprocess.run(["cp", str(path), str(images)], check=True)
        fingerprint, = (name for name in set(os.listdir(images)) - before
                        if len(name) == 64)
        os.symlink(fingerprint, self.d.path("images", "aliases", alias))

    def image_export(self, alias: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.d.path("images", "aliases", alias, "export"), target / "export")

    def image_delete(self, alias: str) -> None:
        fingerprint = os.readlink(self.d.path("images", "aliases", alias)).rsplit("/", 1)[-1]
        os.rmdir(self.d.path("images", fingerprint))

    def has_image(self, alias: str) -> bool:
        return os.path.lexists(self.d.path("images", "aliases", alias))

    def init_pid(self, name: str) -> int:
        return int(self.d.read("instances", name, "pid"))


def require(tool: str) -> str:
    """The path of ``tool`` or BenchError."""
    found = shutil.which(tool)
    if found is None:
        raise BenchError(f"{tool} not found on PATH")
    return found
