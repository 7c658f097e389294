"""An lxfsd of the benchmark's own: temporary data dir and mount, torn down completely."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import CACHE, BenchError, detach_loops_under, mounts_under, run

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def venv_command(script: str, module: str) -> list[str]:
    """The console script next to sys.executable, else ``python -m module``."""
    candidate = Path(sys.executable).parent / script
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return [str(candidate)]
    return [sys.executable, "-m", module]


class BenchDaemon:
    """``lxfsd --data-dir BASE/data --mount BASE/mnt`` with BASE under /var/tmp (mode 0711,
    so that unprivileged containers can traverse it); ``netns``: a network namespace
    (``ip netns``) to run it in."""

    def __init__(self, log_level: str = "warning", netns: str | None = None) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="lxfs-bench-", dir="/var/tmp")).resolve()
        self.base.chmod(0o711)
        self.data_dir = self.base / "data"
        self.mount = self.base / "mnt"
        self.data_dir.mkdir(mode=0o711)
        self.data_dir.chmod(0o711)
        self.mount.mkdir()
        self.log_level = log_level
        self.netns = netns
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.env = dict(os.environ, LXFS_MOUNT=str(self.mount), LXFS_DIR=str(self.data_dir),
                        PYTHONPYCACHEPREFIX=str(CACHE / "pycache"))
        # A CLI that recompiles its modules at every call is not what users run: bytecode is
        # cached (outside the repository).
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)

    def start(self) -> BenchDaemon:
        """Start lxfsd and wait until MOUNT/environment/server_pid answers."""
        cmd = [*(["nsenter", f"--net=/run/netns/{self.netns}", "--"] if self.netns else []),
               *venv_command("lxfsd", "lxfs.daemon"), "--data-dir", str(self.data_dir),
               "--mount", str(self.mount), "--log-level", self.log_level]
        with open(self.base / "lxfsd.stderr", "ab") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         env=self.env, cwd=self.base, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"lxfsd exited with {self.proc.returncode}: {self.log_tail()}")
            if str(self.mount) in mounts_under(self.mount):
                try:
                    text = (self.mount / "environment" / "server_pid").read_text().strip()
                except OSError:
                    text = ""
                if text.isdigit():
                    self.pid = int(text)
                    return self
            time.sleep(0.05)
        raise BenchError(f"lxfsd not ready after {READY_TIMEOUT:.0f}s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.base / "lxfsd.stderr").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def path(self, *parts: str) -> Path:
        return self.mount.joinpath(*parts)

    def write(self, *parts_and_value: str) -> None:
        """``write("instances", "c1", "state", "start")``: ``echo start > .../state``."""
        *parts, value = parts_and_value
        with open(self.path(*parts), "w") as f:
            f.write(value + "\n")

    def read(self, *parts: str) -> str:
        return self.path(*parts).read_text().rstrip("\n")

    def create_pool(self, name: str, driver: str, size: str = "2GiB") -> None:
        """The mount flow: mkdir, optional size, then the driver."""
        os.mkdir(self.path("storage-pools", name))
        if driver == "btrfs":
            self.write("storage-pools", name, "config", "size", size)
        self.write("storage-pools", name, "driver", driver)

    # -- teardown ----------------------------------------------------------------------------

    def remove_instances(self, parallel: int = 4) -> None:
        """Kill and delete every instance through the mount (errors ignored)."""
        try:
            names = [n for n in os.listdir(self.path("instances")) if not n.startswith(".")]
        except OSError:
            return

        def remove(name: str) -> None:
            try:
                self.write("instances", name, "state", "kill")
            except OSError:
                pass
            try:
                os.rmdir(self.path("instances", name))
            except OSError:
                pass

        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(remove, names))

    def teardown(self) -> None:
        """Delete instances, images and pools, stop the daemon, detach what is left (mounts,
        loop devices, containers) and remove the directory. Never raises."""
        alive = self.proc is not None and self.proc.poll() is None
        if alive:
            self.remove_instances()
            for sub in ("images", "storage-pools"):
                try:
                    entries = os.listdir(self.path(sub))
                except OSError:
                    entries = []
                for entry in entries:
                    if entry in ("aliases", "default"):
                        continue
                    try:
                        os.rmdir(self.path(sub, entry))
                    except OSError:
                        pass
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        lxc_path = self.data_dir / "containers"
        if lxc_path.is_dir():
            listed = run(["lxc-ls", "-1", "-P", str(lxc_path), "--running"], check=False)
            for name in listed.stdout.decode().split():
                run(["lxc-stop", "-k", "-P", str(lxc_path), "-n", name], check=False)
        if str(self.mount) in mounts_under(self.mount):
            run(["fusermount3", "-u", "-z", str(self.mount)], check=False)
        for _ in range(5):
            points = mounts_under(self.base)
            if not points:
                break
            for point in points:
                run(["umount", "-l", point], check=False)
        detach_loops_under(self.base)
        if mounts_under(self.base):
            print(f"warning: not removing {self.base}: still mounted", file=sys.stderr)
            return
        shutil.rmtree(self.base, ignore_errors=True)
