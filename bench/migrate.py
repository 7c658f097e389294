"""``--only migrate``: moving a stopped instance of about 200 MB between two hosts (issue 15).

Two lxfs hosts and (``--vs-lxd``) two LXD 5.0.2 hosts, each daemon in a network namespace
of its own joined to the others by a veth pair on one bridge (``bench.hosts.HostNetwork``,
the tests' hosts), each with a btrfs loop pool, listening on HTTPS with a trust password.
One client configuration per client, made for the run, names both hosts of each pair as
remotes, so that every move is the command a user types between two remote servers:
``lxfs move host1:c host2:c`` and ``lxc move lxd1:c lxd2:c`` (and with ``--rest``, the real
``lxc`` between the two lxfs hosts: ``lxc move lxfs1:c lxfs2:c``). Each system has an
instance of its own made from the same image and topped up with the same random data to
``TARGET_MB``; iterations alternate the systems and the direction (host1 to host2, then
back), so every iteration's ratio compares moves in the same direction.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

from bench.common import BenchError, Row, run
from bench.daemon import BenchDaemon, venv_command
from bench.hosts import HostNetwork
from bench.lxd import Lxd, start_isolated_lxd
from bench.suite import Suite
from bench.systems import CliSystem, require

#: the size of each moved instance (rootfs, apparent bytes), in MB (MiB) as elsewhere here
TARGET_MB = 200
PASSWORD = "lxfs bench"
PORT = 8443
#: pools: lxfs's and LXD's names for each kind
LXFS_POOLS = {"btrfs": "bt", "dir": "default"}
LXD_POOLS = {"btrfs": "bt", "dir": "dir"}
POOL_SIZE = "3GiB"


def cpu_seconds(pid: int) -> float:
    """User and system time of a process and of its children it has waited for."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class Mover(CliSystem):
    """A client that moves instances between two remotes: ``COMMAND move A:NAME B:NAME``.
    ``cpu`` collects, per move, the CPU time of both hosts' daemons (with the processes they
    ran: ``btrfs send``/``receive``, rsync) and of the client: the work of a move, which the
    load of a shared machine does not change."""

    def __init__(self, name: str, command: list[str], env: dict[str, str],
                 remotes: tuple[str, str], pools: dict[str, str], pids: tuple[int, int],
                 prefix: str) -> None:
        super().__init__(name, command, env, pools, lambda: pids[0])
        self.remotes = remotes
        self.pids = pids
        self.prefix = prefix  # of its instances' names (lxfs-cli's and lxfs-rest's share hosts)
        self.cpu: list[float] = []

    def instance(self, kind: str) -> str:
        return f"{self.prefix}{kind}"

    def move_between(self, kind: str, forward: bool) -> None:
        a, b = self.remotes if forward else self.remotes[::-1]
        name = self.instance(kind)
        before = sum(map(cpu_seconds, self.pids)), os.times()
        self.cli("move", f"{a}:{name}", f"{b}:{name}")
        after = sum(map(cpu_seconds, self.pids)), os.times()
        client = (after[1].children_user + after[1].children_system) - \
            (before[1].children_user + before[1].children_system)
        self.cpu.append(after[0] - before[0] + client)

    def exists(self, remote: str, kind: str) -> bool:
        result = run([*self.command, "info", f"{remote}:{self.instance(kind)}"], env=self.env,
                     check=False)
        return result.returncode == 0


def wait_listening(address: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, PORT), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"{address}:{PORT} never answered") from None
            time.sleep(0.1)


def rootfs_bytes(path: Path) -> int:
    """Apparent size of a tree (``du -sb``)."""
    return int(run(["du", "-sb", str(path)], timeout=600).stdout.split()[0])


class MigrateBench:
    """The hosts, clients and instances of the section; everything it makes is torn down by
    the ``ExitStack`` it is given (daemons first, then the network)."""

    def __init__(self, suite: Suite, stack: ExitStack, image: Path, kinds: list[str],
                 vs_lxd: bool, rest: bool, log_level: str) -> None:
        self.suite, self.stack, self.image, self.kinds = suite, stack, image, kinds
        self.vs_lxd, self.rest, self.log_level = vs_lxd, rest, log_level
        self.conf = suite.scratch / "migrate-clients"
        self.conf.mkdir()
        self.movers: list[Mover] = []
        self.fill = self.conf / "fill.bin"

    def log(self, text: str) -> None:
        self.suite.log(text)

    def setup(self) -> None:
        network = HostNetwork(0)
        self.stack.callback(network.teardown)  # registered first: runs after the daemons'
        lxfs_hosts = self._lxfs_hosts(network)
        lxfs_env = dict(lxfs_hosts[0][0].env, LXFS_CONF=str(self.conf / "lxfs"))
        lxfs_cmd = venv_command("lxfs", "lxfs.cli")
        pids = (lxfs_hosts[0][0].pid, lxfs_hosts[1][0].pid)
        for i, (_daemon, address) in enumerate(lxfs_hosts, 1):
            run([*lxfs_cmd, "remote", "add", f"host{i}", f"https://{address}:{PORT}",
                 "--accept-certificate", "--password", PASSWORD], env=lxfs_env)
        lxfs = Mover("lxfs-cli", lxfs_cmd, lxfs_env, ("host1", "host2"), LXFS_POOLS,
                     pids, "mc")
        self.movers.append(lxfs)
        lxc_env = dict(os.environ, LXD_CONF=str(self.conf / "lxc"))
        lxc = [require("lxc")] if (self.rest or self.vs_lxd) else []
        if self.rest:
            for i, (_daemon, address) in enumerate(lxfs_hosts, 1):
                run([*lxc, "remote", "add", f"lxfs{i}", f"https://{address}:{PORT}",
                     "--accept-certificate", "--password", PASSWORD], env=lxc_env)
            self.movers.append(Mover("lxfs-rest", lxc, lxc_env, ("lxfs1", "lxfs2"),
                                     LXFS_POOLS, pids, "mr"))
        lxd_source = None
        if self.vs_lxd:
            lxds = []
            for i in (1, 2):
                netns, address = network.add(f"d{i}")
                images = {"debian": self.image} if i == 1 else {}
                self.log(f"  starting LXD host {i} at {address}")
                lxd = start_isolated_lxd(self.stack, images, netns=netns, pool_size=POOL_SIZE)
                lxd.cli("config", "set", "core.https_address", f"{address}:{PORT}")
                lxd.cli("config", "set", "core.trust_password", PASSWORD)
                wait_listening(address)
                run([*lxc, "remote", "add", f"lxd{i}", f"https://{address}:{PORT}",
                     "--accept-certificate", "--password", PASSWORD], env=lxc_env)
                lxds.append(lxd)
            lxd_source = lxds[0]
            self.movers.append(Mover("lxd", lxc, lxc_env, ("lxd1", "lxd2"), LXD_POOLS,
                                     (lxds[0].daemon_pid, lxds[1].daemon_pid), "mv"))
        self._instances(lxfs_hosts[0][0], lxd_source)

    def _lxfs_hosts(self, network: HostNetwork) -> list[tuple[BenchDaemon, str]]:
        hosts = []
        for i in (1, 2):
            netns, address = network.add(f"m{i}")
            daemon = BenchDaemon(log_level=self.log_level, netns=netns)
            self.stack.callback(daemon.teardown)
            self.log(f"  starting lxfs host {i} at {address}")
            daemon.start()
            daemon.create_pool(LXFS_POOLS["btrfs"], "btrfs", POOL_SIZE)
            daemon.write("config", "core.trust_password", PASSWORD)
            daemon.write("config", "core.https_address", f"{address}:{PORT}")
            wait_listening(address)
            hosts.append((daemon, address))
        run([*venv_command("lxfs", "lxfs.cli"), "image", "import", str(self.image),
             "--alias", "debian"], env=hosts[0][0].env, timeout=600)
        return hosts

    def _instances(self, lxfs_source: BenchDaemon, lxd: Lxd | None) -> None:
        """One instance per mover and kind on its first host, topped up to TARGET_MB."""
        cli = venv_command("lxfs", "lxfs.cli")
        for kind in self.kinds:
            sizes = {}
            for mover in self.movers:
                name = mover.instance(kind)
                if mover.name.startswith("lxfs"):
                    run([*cli, "create", "debian", name, "-s", LXFS_POOLS[kind]],
                        env=lxfs_source.env, timeout=600)
                    rootfs = lxfs_source.path("instances", name, "rootfs")
                else:
                    assert lxd is not None
                    lxd.cli("init", "debian", name, "-s", LXD_POOLS[kind])
                    lxd_dir = Path(lxd.env["LXD_DIR"])
                    # LXD mounts its pools in its own mount namespace: reach them through
                    # its root
                    rootfs = Path(f"/proc/{lxd.daemon_pid}/root") / lxd_dir.relative_to("/") \
                        / "storage-pools" / LXD_POOLS[kind] / "containers" / name / "rootfs"
                if not self.fill.exists():
                    base = rootfs_bytes(rootfs)
                    missing = max(0, TARGET_MB * 2**20 - base)
                    self.log(f"  the image's rootfs is {base / 2**20:.1f} MB: "
                             f"{missing / 2**20:.1f} MB of random data added to each instance")
                    with open(self.fill, "wb") as f:
                        for _ in range(missing // 2**20):
                            f.write(os.urandom(2**20))
                        f.write(os.urandom(missing % 2**20))
                shutil.copyfile(self.fill, rootfs / "root" / "fill.bin")
                sizes[mover.name] = rootfs_bytes(rootfs) / 2**20
                self.log(f"  {mover.name}: {name} on {mover.remotes[0]}, "
                         f"{sizes[mover.name]:.1f} MB")
            self.suite.record("migrate", f"instance size ({kind})", "MB", sizes)
        subprocess.run(["sync"], check=False)

    def measure(self, kind: str) -> None:
        """Moves host1 -> host2 and back, alternately on each system."""
        def direction(system: object, i: int) -> bool:
            return i % 2 == 0  # even iterations forward, odd ones back

        row = self.suite.measure(
            "migrate", f"move {TARGET_MB} MB, stopped, {kind} -> {kind}",
            lambda s, forward: s.move_between(kind, forward), direction, None,
            list(self.movers))
        self._cpu_row(kind)
        iterations = self.suite.opts.warmup + self.suite.opts.runs
        where = 0 if iterations % 2 == 0 else 1  # host1 after an even number of moves
        for mover in self.movers:
            if row.error.startswith(f"{mover.name}:"):
                continue  # dropped midway: it is where the failure left it
            if not mover.exists(mover.remotes[where], kind):
                row.error = f"{mover.name}: {mover.instance(kind)} is not on " \
                            f"{mover.remotes[where]} after the moves"
                self.log(f"  ! {row.error}")


    def _cpu_row(self, kind: str) -> None:
        """CPU time per move (the timed ones), with per-iteration ratios to LXD's."""
        row = Row("migrate", f"CPU time per move ({kind}): both daemons + client", "s")
        warmup = self.suite.opts.warmup
        cpu = {m.name: m.cpu[warmup:] for m in self.movers}
        for mover in self.movers:
            for value in cpu[mover.name]:
                row.add(mover.name, value)
            mover.cpu.clear()
        reference = cpu.get(self.suite.reference or "", [])
        for name, values in cpu.items():
            if name != self.suite.reference and reference:
                row.ratios[name] = [v / r for v, r in zip(values, reference, strict=False)
                                    if r > 0]
        self.suite.add(row)


def migrate(suite: Suite, stack: ExitStack, image: Path, kinds: list[str], vs_lxd: bool,
            rest: bool, log_level: str) -> None:
    """The section: set up, then one row per pool kind."""
    bench = MigrateBench(suite, stack, image, kinds, vs_lxd, rest, log_level)
    bench.setup()
    for kind in kinds:
        bench.measure(kind)
