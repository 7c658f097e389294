"""``--only projects``: listing one project while the others grow (issue 16, acceptance 6).

Ten projects ``p0`` ... ``p9`` made by ``mkdir projects/pK``. ``p0`` holds a fixed number of
instances (``c1`` ...); the other nine are filled until the server holds N instances in
all. The instances are records only (``mkdir projects/pK/instances/cI``, no ``source``):
what is measured is the listing, which reads records and states, not root filesystems.
At each N it times (``--runs`` samples of a command, 20 times as many of the
sub-millisecond operations), for ``p0``: ``ls`` and ``cat .list`` of ``projects/p0/instances/``,
``cat`` of ``projects/p0/instances/c1/state`` (mount), ``lxfs list --project p0`` (CLI),
``GET /1.0/instances?project=p0&recursion=1`` on the REST bridge's unix socket and, when
Debian's client is installed, ``lxc list --project p0``; and ``lxfs list --all-projects``,
which grows with N as it should. A last row gives, per operation on ``p0``, the median at
the largest N over the median at the smallest: flat is about 1.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import statistics
from collections.abc import Callable
from typing import Any

from bench.common import Row, cat, run, timed
from bench.daemon import BenchDaemon, venv_command
from bench.suite import Suite

PROJECTS = 10
SECTION = "projects"
#: samples of a sub-millisecond operation per sample of a command
FAST_RUNS = 20


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket (the REST bridge's ``DATA_DIR/unix.socket``)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class ProjectsBench:
    """The projects, their instances and the timed listings of the section."""

    def __init__(self, suite: Suite, daemon: BenchDaemon, steps: list[int], in_p0: int) -> None:
        self.suite, self.d = suite, daemon
        self.steps = sorted(set(steps))
        self.in_p0 = in_p0
        self.projects = [f"p{k}" for k in range(PROJECTS)]
        self.made: dict[str, list[str]] = {p: [] for p in self.projects}
        self.lxfs = venv_command("lxfs", "lxfs.cli")
        self.lxc = shutil.which("lxc")
        self.socket = str(daemon.data_dir / "unix.socket")

    # -- the instances -----------------------------------------------------------------------

    def make(self, project: str, count: int) -> None:
        """Up to ``count`` instance records in ``project``."""
        have = self.made[project]
        todo = [f"c{i}" for i in range(len(have) + 1, count + 1)]
        base = self.d.path("projects", project, "instances")
        self.suite.bulk(lambda name: os.mkdir(base / name), todo, self.suite.opts.parallel)
        have += todo

    def fill(self, total: int) -> None:
        """``p0`` at ``in_p0``, the rest of ``total`` spread evenly over the other nine."""
        self.make("p0", self.in_p0)
        rest = max(total - self.in_p0, 0)
        others = self.projects[1:]
        for k, project in enumerate(others):
            self.make(project, rest // len(others) + (1 if k < rest % len(others) else 0))

    def teardown(self) -> None:
        """Every instance record and project made (errors ignored)."""
        for project in self.projects:
            base = self.d.path("projects", project, "instances")
            self.suite.bulk(lambda name, b=base: _quiet(lambda: os.rmdir(b / name)),
                            self.made[project], self.suite.opts.parallel)
            _quiet(lambda p=project: os.rmdir(self.d.path("projects", p)))

    # -- the operations ----------------------------------------------------------------------

    def rest_get(self, path: str) -> None:
        conn = UnixHTTPConnection(self.socket)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
        finally:
            conn.close()

    def operations(self) -> list[tuple[str, str, Callable[[], Any]]]:
        """(system, operation, action) of one step."""
        instances = self.d.path("projects", "p0", "instances")
        env = dict(self.d.env)
        ops: list[tuple[str, str, Callable[[], Any]]] = [
            ("lxfs-mount", "ls projects/p0/instances", lambda: os.listdir(instances)),
            ("lxfs-mount", "cat projects/p0/instances/.list", lambda: cat(instances / ".list")),
            ("lxfs-mount", "cat projects/p0/instances/c1/state",
             lambda: cat(instances / "c1" / "state")),
            ("lxfs-cli", "lxfs list --project p0",
             lambda: run([*self.lxfs, "list", "--project", "p0"], env=env)),
            ("lxfs-cli", "lxfs list --all-projects",
             lambda: run([*self.lxfs, "list", "--all-projects"], env=env)),
            ("lxfs-rest", "GET /1.0/instances?project=p0&recursion=1",
             lambda: self.rest_get("/1.0/instances?project=p0&recursion=1")),
        ]
        if self.lxc:
            lxc_env = dict(env, LXD_DIR=str(self.d.data_dir))
            lxc = self.lxc
            ops.append(("lxfs-rest", "lxc list --project p0",
                        lambda: run([lxc, "list", "--project", "p0", "-f", "csv"], env=lxc_env)))
        return ops

    def run(self) -> None:
        for project in self.projects:
            os.mkdir(self.d.path("projects", project))
        runs = max(self.suite.opts.runs, 1)
        medians: dict[tuple[str, str], dict[int, float]] = {}
        for n in self.steps:
            self.suite.log(f"  filling to N={n} ({self.in_p0} in p0)")
            seconds = timed(lambda n=n: self.fill(n))
            total = sum(len(v) for v in self.made.values())
            self.suite.log(f"    {total} instance records, made in {seconds:.1f}s")
            for system, name, action in self.operations():
                row = Row(SECTION, f"{name}, N={total}")
                # sub-millisecond operations (the mount, one GET) get more samples
                samples = runs * FAST_RUNS if system == "lxfs-mount" or \
                    name.startswith("GET") else runs
                try:
                    for i in range(samples + 1):  # the first one warms up
                        elapsed = timed(action)
                        if i:
                            row.add(system, elapsed)
                except Exception as exc:
                    row.error = f"{system}: {exc}"
                    self.suite.log(f"  ! {name} at N={total}: {exc}")
                self.suite.add(row)
                s = row.summary(system)
                if s is not None:
                    medians.setdefault((system, name), {})[total] = s["median"]
        for (system, name), by_n in medians.items():
            if len(by_n) < 2:
                continue
            low, high = min(by_n), max(by_n)
            self.suite.record(SECTION, f"{name}: N={high} / N={low}", "x",
                              {system: by_n[high] / by_n[low]})
        slope = {s: _slope(by_n) * 1000 * 100 for (s, name), by_n in medians.items()
                 if name == "lxfs list --all-projects" and len(by_n) > 1}
        if slope:
            self.suite.record(SECTION, "lxfs list --all-projects slope (ms per 100)", "ms",
                              slope)


def _slope(points: dict[int, float]) -> float:
    """Least-squares slope of value over N."""
    xs = list(points)
    mx, my = statistics.fmean(xs), statistics.fmean(points.values())
    den = sum((x - mx) ** 2 for x in xs) or 1
    return sum((x - mx) * (y - my) for x, y in points.items()) / den


def _quiet(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except OSError:
        pass


def projects(suite: Suite, daemon: BenchDaemon, steps: list[int], in_p0: int) -> None:
    """The section: ``steps`` are the server's total instances at each step."""
    bench = ProjectsBench(suite, daemon, steps, in_p0)
    try:
        bench.run()
    finally:
        bench.teardown()
