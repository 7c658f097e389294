"""The measurements of issue 6, run alternately (A B A B ...) on every system."""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Row, cat, fd_count, pss_mb, timed
from bench.systems import System

Step = Callable[[System, int], Any]


@dataclass
class Options:
    """What to run (filled from the command line)."""

    runs: int = 5
    warmup: int = 1
    debian: Path | None = None
    busybox: Path | None = None
    scale: list[int] | None = None
    launch_rate: int = 128
    cycles: int = 20
    lxd_cycles: int | None = None  # None: as many as cycles
    parallel: int = os.cpu_count() or 2
    batch: int = 20  # sequential / parallel launches
    quick: bool = False  # slow operations (graceful stop, restart, publish) on one system


class Suite:
    """Runs measurements and collects Rows. ``reference`` is the system ratios are taken
    against (LXD with --vs-lxd); pairwise ratios are system/reference per iteration."""

    def __init__(self, systems: list[System], opts: Options, reference: str | None = None,
                 verbose: bool = True) -> None:
        self.systems = systems
        self.opts = opts
        self.reference = reference
        self.rows: list[Row] = []
        self.verbose = verbose
        self._counter = 0
        self.running: dict[tuple[str, str], bool] = {}
        self.scratch = Path(tempfile.mkdtemp(prefix="lxfs-bench-scratch-", dir="/var/tmp"))

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def unique(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def log(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr, flush=True)

    # -- the measuring loop ------------------------------------------------------------------

    def measure(self, section: str, name: str, action: Step, setup: Step | None = None,
                cleanup: Callable[[System, Any], None] | None = None,
                systems: list[System] | None = None, unit: str = "s",
                runs: int | None = None, warmup: int | None = None) -> Row:
        """Time ``action(system, ctx)`` where ``ctx = setup(system, i)``; ``cleanup(system,
        ctx)`` runs after each. Iterations alternate between systems. A system that fails or
        does not offer the operation is dropped from the row (the error is kept)."""
        row = Row(section, name, unit)
        systems = list(systems or self.systems)
        runs = self.opts.runs if runs is None else runs
        warmup = self.opts.warmup if warmup is None else warmup
        for i in range(warmup + runs):
            pair: dict[str, float] = {}
            for system in list(systems):
                ctx: Any = None
                try:
                    ctx = setup(system, i) if setup else None
                    elapsed = timed(lambda s=system, c=ctx: action(s, c))  # type: ignore[misc]
                except NotImplementedError:
                    systems.remove(system)
                    continue
                except Exception as exc:
                    row.error = f"{system.name}: {exc}"
                    self.log(f"  ! {section} {name} on {system.name}: {exc}")
                    systems.remove(system)
                    continue
                finally:
                    if cleanup is not None:
                        try:
                            cleanup(system, ctx)
                        except Exception as exc:
                            self.log(f"  ! cleanup of {name} on {system.name}: {exc}")
                if i >= warmup:
                    row.add(system.name, elapsed)
                    pair[system.name] = elapsed
            self._ratios(row, pair)
        self.add(row)
        return row

    def _ratios(self, row: Row, pair: dict[str, float]) -> None:
        if self.reference is None or self.reference not in pair or pair[self.reference] <= 0:
            return
        for system, value in pair.items():
            if system != self.reference:
                row.ratios.setdefault(system, []).append(value / pair[self.reference])

    def add(self, row: Row) -> None:
        self.rows.append(row)
        if self.verbose:
            parts = []
            for system in row.samples:
                s = row.summary(system)
                assert s is not None
                parts.append(f"{system} {s['median']:.4g}{row.unit}")
            self.log(f"  {row.section:10} {row.name:36} " + "  ".join(parts))

    def record(self, section: str, name: str, unit: str, values: dict[str, float]) -> None:
        """A single figure per system (memory, rates)."""
        row = Row(section, name, unit)
        for system, value in values.items():
            row.add(system, value)
        if self.reference in values and values[self.reference] > 0:
            for system, value in values.items():
                if system != self.reference:
                    row.ratios[system] = [value / values[self.reference]]
        self.add(row)

    # -- state helpers -----------------------------------------------------------------------

    def ensure(self, system: System, name: str, running: bool) -> None:
        key = (system.name, name)
        if self.running.get(key, True) != running:
            if running:
                system.start(name)
            else:
                system.stop(name, force=True)
        self.running[key] = running

    def bulk(self, fn: Callable[[str], None], names: list[str], parallel: int) -> None:
        with ThreadPoolExecutor(max(1, parallel)) as pool:
            for future in [pool.submit(fn, n) for n in names]:
                future.result()

    # -- the operations ----------------------------------------------------------------------

    def lifecycle(self, kind: str, systems: list[System]) -> None:
        """Per-pool operations on busybox (and Debian)."""
        sec = kind
        pool_of: Callable[[System], str] = lambda s: s.pools[kind]  # noqa: E731
        bases = {s.name: f"s{kind[:2]}{i}" for i, s in enumerate(systems)}
        ready = []
        for system in systems:
            try:
                system.launch("busybox", bases[system.name], pool_of(system))
                self.running[(system.name, bases[system.name])] = True
                ready.append(system)
            except Exception as exc:
                self.log(f"  ! cannot launch {bases[system.name]} on {system.name}: {exc}")
        systems = ready
        if not systems:
            return
        m = self.measure

        def b(s: System) -> str:
            return bases[s.name]


        def new(s: System, i: int) -> str:
            return self.unique("b")

        def gone(s: System, n: Any) -> None:
            if n:
                s.delete(n, force=True)

        m(sec, "launch busybox", lambda s, n: s.launch("busybox", n, pool_of(s)), new, gone,
          systems)
        m(sec, "start", lambda s, c: s.start(b(s)),
          lambda s, i: self.ensure(s, b(s), False), lambda s, c: self._set(s, b(s), True),
          systems)
        m(sec, "stop --force", lambda s, c: s.stop(b(s), True),
          lambda s, i: self.ensure(s, b(s), True), lambda s, c: self._set(s, b(s), False),
          systems)
        slow = systems[:1] if self.opts.quick else systems
        m(sec, "stop (graceful)", lambda s, c: s.stop(b(s), False),
          lambda s, i: self.ensure(s, b(s), True), lambda s, c: self._set(s, b(s), False),
          slow)
        m(sec, "restart (graceful)", lambda s, c: s.restart(b(s)),
          lambda s, i: self.ensure(s, b(s), True), None, slow)
        m(sec, "exec true", lambda s, c: s.exec(b(s), "true"),
          lambda s, i: self.ensure(s, b(s), True), None, systems)
        mb = os.urandom(1 << 20)
        m(sec, "exec, 1 MB stdin", lambda s, c: s.exec(b(s), "sh", "-c", "cat >/dev/null",
                                                       stdin=mb),
          lambda s, i: self.ensure(s, b(s), True), None, systems)

        def snap_setup(s: System, i: int) -> str:
            self.ensure(s, b(s), True)
            return self.unique("snap")

        m(sec, "snapshot (running)", lambda s, n: s.snapshot(b(s), n), snap_setup,
          lambda s, n: s.delete(f"{b(s)}/{n}") if n else None, systems)

        def restore_setup(s: System, i: int) -> None:
            self.ensure(s, b(s), True)
            if i == 0:
                s.snapshot(b(s), "r0")

        m(sec, "restore (running)", lambda s, c: s.restore(b(s), "r0"), restore_setup, None,
          systems)
        for s in systems:
            try:
                s.delete(f"{b(s)}/r0")
            except Exception as exc:
                self.log(f"  ! {exc}")

        def copy_setup(s: System, i: int) -> str:
            self.ensure(s, b(s), True)
            return self.unique("c")

        m(sec, "copy (running)", lambda s, n: s.copy(b(s), n), copy_setup, gone, systems)

        def launched(s: System, i: int) -> str:
            n = self.unique("d")
            s.launch("busybox", n, pool_of(s))
            return n

        m(sec, "delete --force (running)", lambda s, n: s.delete(n, force=True), launched,
          None, systems)

        def pub_setup(s: System, i: int) -> str:
            self.ensure(s, b(s), False)
            return self.unique("pub")

        m(sec, "publish (stopped)", lambda s, a: s.publish(b(s), a), pub_setup,
          lambda s, a: s.image_delete(a) if a else None, slow)

        batch = self.opts.batch

        def names(s: System, i: int) -> list[str]:
            return [self.unique("q") for _ in range(batch)]

        def drop(s: System, ns: Any) -> None:
            for n in ns or []:
                try:
                    s.delete(n, force=True)
                except Exception:
                    pass

        m(sec, f"{batch} sequential launches",
          lambda s, ns: [s.launch("busybox", n, pool_of(s)) for n in ns], names, drop, systems)
        m(sec, f"{batch} parallel launches",
          lambda s, ns: self.bulk(lambda n: s.launch("busybox", n, pool_of(s)), ns, batch),
          names, drop, systems)

        if self.opts.debian is not None:
            deb = self.opts.debian

            def cold(s: System, i: int) -> str:
                if s.has_image("debian"):
                    s.image_delete("debian")
                s.image_import(deb, "debian")
                return self.unique("deb")

            m(sec, "launch Debian, cold", lambda s, n: s.launch("debian", n, pool_of(s)), cold,
              gone, systems)
            m(sec, "launch Debian, warm", lambda s, n: s.launch("debian", n, pool_of(s)), new,
              gone, systems)
        for s in systems:
            try:
                s.delete(b(s), force=True)
            except Exception as exc:
                self.log(f"  ! {exc}")

    def _set(self, system: System, name: str, running: bool) -> None:
        self.running[(system.name, name)] = running

    def images(self, systems: list[System]) -> None:
        """Import and export of the Debian image (busybox without Debian); the image stays
        imported under its usual alias."""
        path = self.opts.debian or self.opts.busybox
        if path is None:
            return
        label = "Debian" if self.opts.debian else "busybox"
        alias = label.lower()

        def fresh(s: System, i: int) -> None:
            if s.has_image(alias):
                s.image_delete(alias)

        self.measure("images", f"image import ({label})", lambda s, c: s.image_import(path, alias),
                     fresh, None, systems)

        def target(s: System, i: int) -> Path:
            return self.scratch / self.unique("export")

        self.measure("images", f"image export ({label})", lambda s, t: s.image_export(alias, t),
                     target, lambda s, t: shutil.rmtree(t, ignore_errors=True), systems)

    def scale(self, creators: list[System], listers: list[System], fs_micro: Callable[[], None],
              pss: Callable[[System, list[str]], float | None]) -> None:
        """List latency, daemon RSS and per-container PSS at growing N (busybox, dir pool)."""
        steps = sorted(set(self.opts.scale or [0, 20, 100]))
        made: dict[str, list[str]] = {s.name: [] for s in creators}
        micro_done = False
        try:
            for n in steps:
                # LXD stops at 300 (issue 6), lxfs goes on.
                creators_n = [s for s in creators if n <= 300 or s.name.startswith("lxfs")]
                listers_n = [s for s in listers if n <= 300 or s.name.startswith("lxfs")]
                for s in creators_n:
                    todo = [self.unique("n") for _ in range(n - len(made[s.name]))]
                    self.log(f"  launching {len(todo)} on {s.name} (N={n})")
                    start = time.perf_counter()
                    self.bulk(lambda x, s=s: s.launch("busybox", x, s.pools["dir"]), todo,
                              self.opts.parallel)
                    made[s.name] += todo
                    if todo:
                        self.log(f"    {len(todo) / (time.perf_counter() - start):.1f}/s")
                time.sleep(1)
                self.record("scale", f"daemon RSS, N={n}", "MB",
                            {s.name: s.daemon_rss() for s in creators_n})
                if n:
                    values = {}
                    for s in creators_n:
                        v = pss(s, made[s.name])
                        if v is not None:
                            values[s.name] = v
                    self.record("scale", f"PSS per container (monitor), N={n}", "MB/ctr", values)
                runs = max(self.opts.runs, 1)
                self.measure("scale", f"list, N={n} running", lambda s, c: s.list(), None, None,
                             listers_n, runs=runs, warmup=1)
                self.measure("scale", f"ls + cat */state, N={n} running",
                             lambda s, c: s.list_files(), None, None, listers_n, runs=runs,
                             warmup=1)
                if not micro_done and n >= min(100, max(steps)) and n > 0:
                    fs_micro()
                    micro_done = True
            self._slopes(steps)
        finally:
            for s in creators:
                self.log(f"  deleting {len(made[s.name])} on {s.name}")
                self.bulk(lambda x, s=s: _quiet(lambda: s.delete(x, force=True)), made[s.name],
                          self.opts.parallel)

    def _slopes(self, steps: list[int]) -> None:
        """Least-squares slope of list latency (ms per 100 containers) and RSS (MB per
        container) over N."""
        if len(steps) < 2:
            return
        by_system: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for row in self.rows:
            if row.section != "scale":
                continue
            for what, prefix in (("list", "list, N="), ("rss", "daemon RSS, N=")):
                if row.name.startswith(prefix):
                    n = int(row.name[len(prefix):].split()[0])
                    for system in row.samples:
                        s = row.summary(system)
                        assert s is not None
                        by_system.setdefault((what, system), []).append((n, s["median"]))
        slopes: dict[str, dict[str, float]] = {"list": {}, "rss": {}}
        for (what, system), points in sorted(by_system.items()):
            if len(points) < 2:
                continue
            xs = [p[0] for p in points]
            mx, my = statistics.fmean(xs), statistics.fmean(p[1] for p in points)
            den = sum((x - mx) ** 2 for x in xs) or 1
            slopes[what][system] = sum((x - mx) * (y - my) for x, y in points) / den
        self.record("growth", "list slope (ms per 100 containers)", "ms",
                    {k: v * 1000 * 100 for k, v in slopes["list"].items()})
        self.record("growth", "daemon RSS slope (MB per container)", "MB", slopes["rss"])

    def launch_rate(self, systems: list[System]) -> None:
        """lxd-benchmark's unit: containers/s for N launches (create+start) with
        parallelism = CPUs, then for stopping and deleting them the same way."""
        count = self.opts.launch_rate
        if count <= 0:
            return
        launch: dict[str, float] = {}
        remove: dict[str, float] = {}
        for s in systems:
            names = [self.unique("r") for _ in range(count)]
            try:
                elapsed = timed(lambda s=s, names=names: self.bulk(
                    lambda x: s.launch("busybox", x, s.pools["dir"]), names, self.opts.parallel))
                launch[s.name] = count / elapsed

                def stop_delete(x: str, s: System = s) -> None:
                    s.stop(x, force=True)
                    s.delete(x)

                elapsed = timed(lambda s=s, names=names, fn=stop_delete: self.bulk(
                    fn, names, self.opts.parallel))
                remove[s.name] = count / elapsed
            except Exception as exc:
                self.log(f"  ! launch rate on {s.name}: {exc}")
                self.bulk(lambda x, s=s: _quiet(lambda: s.delete(x, force=True)), names,
                          self.opts.parallel)
        p = self.opts.parallel
        self.record("rate", f"launch {count} busybox, parallel {p}", "/s", launch)
        self.record("rate", f"stop+delete {count}, parallel {p}", "/s", remove)

    def leaks(self, systems: list[System]) -> None:
        """Daemon RSS and fd count before and after K create/start/stop/delete cycles (LXD:
        ``lxd_cycles`` when given)."""
        results: dict[int, dict[str, tuple[float, int, float, int]]] = {}
        for s in systems:
            k = self.opts.cycles
            if s.name == "lxd" and self.opts.lxd_cycles is not None:
                k = self.opts.lxd_cycles
            if k <= 0:
                continue

            def cycle(s: System = s) -> None:
                n = self.unique("k")
                s.launch("busybox", n, s.pools["dir"])
                s.stop(n, force=True)
                s.delete(n)

            for _ in range(min(5, k)):  # warm caches and pools first
                cycle()
            time.sleep(0.5)
            rss, fds = s.daemon_rss(), fd_count(s.daemon_pid)
            start = time.perf_counter()
            for _ in range(k):
                cycle()
            elapsed = time.perf_counter() - start
            time.sleep(1)
            results.setdefault(k, {})[s.name] = (rss, fds, s.daemon_rss(),
                                                 fd_count(s.daemon_pid))
            self.log(f"  {k} cycles on {s.name} in {elapsed:.1f}s")
        for k, by_system in sorted(results.items()):
            self.record("leaks", f"RSS before {k} cycles", "MB",
                        {n: v[0] for n, v in by_system.items()})
            self.record("leaks", f"RSS growth over {k} cycles", "MB",
                        {n: v[2] - v[0] for n, v in by_system.items()})
            self.record("leaks", f"fd growth over {k} cycles", "fds",
                        {n: v[3] - v[1] for n, v in by_system.items()})


def _quiet(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:
        pass


def monitor_pss(system: System, names: list[str], sample: int = 10) -> float | None:
    """Mean PSS (MB) of the LXC monitor (parent of the container's init) over a sample."""
    from bench.common import ppid

    values = []
    for name in names[:sample]:
        try:
            values.append(pss_mb(ppid(system.init_pid(name))))
        except (OSError, ValueError, NotImplementedError):
            continue
    return statistics.fmean(values) if values else None


def fs_micro(suite: Suite, mount: Path, instance: str, loops: int = 2000) -> None:
    """µs per stat, per open+read+close of instances/X/state and per ls of instances/,
    against the same layout on tmpfs (/dev/shm)."""
    shm = Path(tempfile.mkdtemp(prefix="lxfs-bench-", dir="/dev/shm"))
    try:
        count = len([e for e in os.listdir(mount / "instances") if not e.startswith(".")])
        for i in range(count):
            (shm / "instances" / f"x{i}").mkdir(parents=True)
            (shm / "instances" / f"x{i}" / "state").write_text("RUNNING\n")
        targets = {"lxfs-mount": (mount / "instances", mount / "instances" / instance / "state"),
                   "tmpfs": (shm / "instances", shm / "instances" / "x0" / "state")}

        def per_op(fn: Callable[[], Any], n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - start) / n * 1e6

        cases: list[tuple[str, Callable[[Path, Path], Callable[[], Any]], int]] = [
            ("stat instances/X/state", lambda d, f: lambda: os.stat(f), loops),
            ("open+read+close instances/X/state", lambda d, f: lambda: cat(f), loops // 2),
            (f"ls instances/ ({count} entries)", lambda d, f: lambda: os.listdir(d), loops // 10),
        ]
        for label, make, n in cases:
            row = Row("fs", label, "us")
            for _ in range(max(suite.opts.runs, 1)):
                for system, (d, f) in targets.items():
                    row.add(system, per_op(make(d, f), n))
            row.note = f"tmpfs: {shm}"
            suite.add(row)
    finally:
        shutil.rmtree(shm, ignore_errors=True)
