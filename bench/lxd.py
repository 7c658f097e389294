"""``--vs-lxd``: Debian's LXD 5.0.2, isolated, as the reference system.

LXD runs with its own ``LXD_DIR`` under a temporary directory, inside a network namespace made
here (it cannot reach any address outside this machine), with the host's cgroup hierarchies
mounted again inside (``ip netns exec`` gives it a fresh /sys). It gets a ``dir`` and a
``btrfs`` pool, a bridge with NAT off in 10.251.0.0/16 (no container uses it: lxfs's containers
have no nic either), and the same images. Everything is removed at the end, even on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.common import BenchError, detach_loops_under, mounts_under, run
from bench.systems import CliSystem

POOLS = """\
storage_pools:
- name: dir
  driver: dir
- name: bt
  driver: btrfs
  config:
    size: {size}
"""
BRIDGE = """\
networks:
- name: {bridge}
  type: bridge
  config:
    ipv4.address: 10.251.{subnet}.1/24
    ipv4.nat: "false"
    ipv6.address: none
"""
PROFILE = """\
profiles:
- name: default
  devices:
    root:
      type: disk
      path: /
      pool: dir
"""


def cgroup_mounts() -> list[tuple[str, str, str]]:
    """The host's cgroup mounts under /sys/fs/cgroup: (fstype, options, mount point)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = left.split()[4]
            fstype, _source, super_opts = right.split()[:3]
            if fstype in ("cgroup", "cgroup2") and point.startswith("/sys/fs/cgroup/"):
                opts = ",".join(o for o in super_opts.split(",") if o not in ("rw", "ro"))
                found.append((fstype, opts, point))
    return found


def start_script(lxd_dir: Path) -> str:
    """Shell run inside the namespace: lo up, cgroups mounted again, then exec lxd."""
    lines = ["set -e", "ip link set lo up", "mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup"]
    for fstype, opts, point in cgroup_mounts():
        lines.append(f"mkdir -p {point}")
        option = f"-o {opts} " if opts else ""
        lines.append(f"mount -t {fstype} {option}{fstype} {point}")
    lines.append(f"exec lxd --group root --logfile {lxd_dir}/lxd.log")
    return "\n".join(lines)


def ensure_installed() -> None:
    if shutil.which("lxd") and shutil.which("lxc"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "install", "-y", "--no-install-recommends", "lxd", "lxd-client"], env=env,
        timeout=900)
    # The package may start its own system daemon: this benchmark never uses it.


class Lxd(CliSystem):
    """An isolated LXD driven through ``lxc``."""

    def __init__(self, env: dict[str, str], pid: int) -> None:
        super().__init__("lxd", ["lxc"], env, {"dir": "dir", "btrfs": "bt"}, lambda: pid)

    def init_pid(self, name: str) -> int:
        state = json.loads(self.cli("query", f"/1.0/instances/{name}/state"))
        return int(state["pid"])

    def has_image(self, alias: str) -> bool:
        return any(line.split(",")[0] == alias
                   for line in self.cli("image", "alias", "list", "-f", "csv").splitlines())


def start_isolated_lxd(stack: ExitStack, images: dict[str, Path], netns: str | None = None,
                       pool_size: str = "2GiB") -> Lxd:
    """Start LXD isolated, register its teardown on ``stack``, import ``images``. Without
    ``netns`` it runs in a namespace of its own with only ``lo`` (and gets a bridge of its
    own); with one (a host of ``bench.hosts.HostNetwork``, which owns it) it gets no bridge."""
    ensure_installed()
    base = Path(tempfile.mkdtemp(prefix="lxfs-bench-lxd-", dir="/var/tmp")).resolve()
    base.chmod(0o711)
    lxd_dir = base / "lxd"
    lxd_dir.mkdir(mode=0o711)
    own_netns = netns is None
    netns = netns or f"lxfsbench{os.getpid()}"
    env = dict(os.environ, LXD_DIR=str(lxd_dir), LXD_CONF=str(base / "conf"))
    procs: list[subprocess.Popen[bytes]] = []
    stack.callback(teardown, base, netns, env, procs, own_netns)
    if own_netns:
        run(["ip", "netns", "add", netns])
    with open(base / "lxd.stderr", "wb") as err:
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", netns, "sh", "-c", start_script(lxd_dir)],
            env=env, stdout=err, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True))
    try:
        run(["lxd", "waitready", "--timeout", "60"], env=env, timeout=70)
    except BenchError as exc:
        raise BenchError(f"{exc}\n{(base / 'lxd.stderr').read_text(errors='replace')}") from exc
    preseed = POOLS.format(size=pool_size)
    if own_netns:
        preseed += BRIDGE.format(bridge=f"lxfsb{os.getpid() % 100000}",
                                 subnet=200 + os.getpid() % 50)
    run(["lxd", "init", "--preseed"], env=env, input=(preseed + PROFILE).encode())
    lxd = Lxd(env, procs[0].pid)
    for alias, path in images.items():
        lxd.cli("image", "import", str(path), "--alias", alias)
    return lxd


def teardown(base: Path, netns: str, env: dict[str, str],
             procs: list[subprocess.Popen[bytes]], own_netns: bool = True) -> None:
    """Delete instances, stop LXD, and remove its namespace (when it made it), mounts,
    loops and files."""
    proc = procs[0] if procs else None
    if proc is not None and proc.poll() is None:
        listed = run(["lxc", "list", "-f", "csv", "-c", "n"], env=env, check=False, timeout=60)
        for name in listed.stdout.decode().split():
            run(["lxc", "delete", "--force", name], env=env, check=False, timeout=60)
        run(["lxd", "shutdown", "--timeout", "30"], env=env, check=False, timeout=40)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lxc_path = base / "lxd" / "containers"
    if lxc_path.is_dir():
        listed = run(["lxc-ls", "-1", "-P", str(lxc_path), "--running"], check=False)
        for name in listed.stdout.decode().split():
            run(["lxc-stop", "-k", "-P", str(lxc_path), "-n", name], check=False)
    # Processes LXD left in the namespace (dnsmasq, forkdns): end them by PID.
    pids = run(["ip", "netns", "pids", netns], check=False).stdout.decode().split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    time.sleep(0.5)
    if own_netns:
        run(["ip", "netns", "del", netns], check=False)
    for _ in range(5):
        points = mounts_under(base)
        if not points:
            break
        for point in points:
            run(["umount", "-l", point], check=False)
    detach_loops_under(base)
    if not mounts_under(base):
        shutil.rmtree(base, ignore_errors=True)
