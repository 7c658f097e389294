"""``python -m bench``: the benchmark of issue 6 (see docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path

from bench.common import CACHE, REPO, BenchError, machine_facts, run, table
from bench.daemon import BenchDaemon
from bench.suite import Options, Suite, fs_micro, monitor_pss
from bench.systems import LxfsCli, LxfsMount, LxfsRest, System

SECTIONS = ("dir", "btrfs", "images", "scale", "rate", "leaks", "migrate", "projects")
#: sections --quick leaves out unless named in --only
NAMED_ONLY = ("migrate", "projects")
PROJECTS_STEPS = "10,100,500,1000"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: one iteration, lxfs only, small N, no Debian")
    p.add_argument("--runs", type=int, default=5, help="timed runs per operation (5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (1)")
    p.add_argument("--no-debian", action="store_true", help="skip the Debian image")
    p.add_argument("--scale", action="store_true",
                   help="list/RSS growth up to N=300 (lxfs: 1000) instead of 100")
    p.add_argument("--scale-steps", help="comma-separated N for the growth section")
    p.add_argument("--launch-rate", type=int, default=128, metavar="N",
                   help="containers for the launch rate (128; 0 skips)")
    p.add_argument("--cycles", type=int, default=50, metavar="K",
                   help="create/start/stop/delete cycles of the leak check (50; 0 skips)")
    p.add_argument("--lxd-cycles", type=int, metavar="K",
                   help="cycles of the leak check for LXD (default: --cycles; LXD takes about "
                   "1 s per cycle)")
    p.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)} "
                   "(--quick leaves migrate and projects out unless named)")
    p.add_argument("--migrate-pools", default="btrfs,dir", metavar="KINDS",
                   help="pool kinds of the moves between hosts (btrfs,dir)")
    p.add_argument("--projects-steps", default=PROJECTS_STEPS, metavar="N,...",
                   help="instances in all at each step of the projects section "
                   "(10,100,500,1000; --quick: 4,40)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    p.add_argument("--rest", action="store_true",
                   help="also drive lxfs through its REST bridge with the real lxc client "
                        "(system lxfs-rest)")
    p.add_argument("--vs-lxd", action="store_true",
                   help="also run Debian's LXD 5.0.2, isolated in a network namespace")
    p.add_argument("--log-level", default="warning", help="lxfsd's log level (warning)")
    return p.parse_args(argv)


def cached_image(recipe: str, filename: str) -> Path:
    """An image tarball from CACHE, built with contrib/images/RECIPE.sh when missing."""
    path = CACHE / filename
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"building {filename} into {CACHE} (once)", file=sys.stderr)
        run(["bash", str(REPO / "contrib" / "images" / f"{recipe}.sh"), str(CACHE)],
            timeout=1200)
    if not path.is_file():
        raise BenchError(f"{recipe}.sh did not produce {path}")
    return path


def options(args: argparse.Namespace) -> Options:
    opts = Options(runs=args.runs, warmup=args.warmup, launch_rate=args.launch_rate,
                   cycles=args.cycles, lxd_cycles=args.lxd_cycles)
    if args.scale_steps:
        opts.scale = [int(x) for x in args.scale_steps.split(",")]
    elif args.scale:
        opts.scale = [0, 20, 100, 300, 1000]
    if args.quick:
        opts.runs, opts.warmup, opts.batch, opts.quick = 1, 0, 3, True
        opts.scale = opts.scale if args.scale_steps else [0, 4]
        opts.launch_rate = min(args.launch_rate, 4)
        opts.cycles = min(args.cycles, 2)
        opts.lxd_cycles = None
    return opts


def setup_lxfs(stack: ExitStack, args: argparse.Namespace,
               images: dict[str, Path]) -> tuple[BenchDaemon, LxfsCli, LxfsMount]:
    """Start lxfsd, create the btrfs pool (and a profile on it, for the mount's launches)
    through the mount, import the images."""
    daemon = BenchDaemon(log_level=args.log_level)
    stack.callback(daemon.teardown)
    daemon.start()
    daemon.create_pool("bt", "btrfs", "2GiB")
    os.mkdir(daemon.path("profiles", "on-bt"))
    os.mkdir(daemon.path("profiles", "on-bt", "devices", "root"))
    for key, value in (("type", "disk"), ("path", "/"), ("pool", "bt")):
        daemon.write("profiles", "on-bt", "devices", "root", key, value)
    pools = {"dir": "default", "btrfs": "bt"}
    cli = LxfsCli(daemon, pools)
    mount = LxfsMount(daemon, pools, {"bt": "on-bt"})
    for alias, path in images.items():
        cli.image_import(path, alias)
    return daemon, cli, mount


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("python -m bench: must run as root", file=sys.stderr)
        return 2
    if args.quick and args.vs_lxd:
        print("--quick is lxfs only", file=sys.stderr)
        return 2
    opts = options(args)
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    if args.quick and not args.only:
        only -= set(NAMED_ONLY)
    unknown = only - set(SECTIONS)
    if unknown:
        print(f"unknown sections: {','.join(sorted(unknown))}", file=sys.stderr)
        return 2
    facts = machine_facts()
    print(f"machine: {facts}", file=sys.stderr)
    with ExitStack() as stack:
        images = {"busybox": cached_image("busybox", "busybox.tar.xz")}
        opts.busybox = images["busybox"]
        if not (args.quick or args.no_debian):
            opts.debian = images["debian"] = cached_image("debian", "debian-bookworm.tar.xz")
        systems: list[System] = []
        reference = "lxd" if args.vs_lxd else None
        lxd: System | None = None
        if only - {"migrate"}:  # the moves between hosts start hosts of their own
            daemon, cli, mount = setup_lxfs(stack, args, images)
            systems += [cli, mount]
            if args.rest:
                systems.append(LxfsRest(daemon, cli.pools))
            if args.vs_lxd:
                from bench.lxd import start_isolated_lxd

                lxd = start_isolated_lxd(stack, images)
                systems.append(lxd)
        suite = Suite(systems, opts, reference)
        stack.callback(suite.close)
        daemon_systems: list[System] = systems[:1] + ([lxd] if lxd else [])
        if daemon_systems:
            suite.record("memory", "daemon RSS, fresh (images imported)", "MB",
                         {s.name: s.daemon_rss() for s in daemon_systems})
        try:
            for kind in ("dir", "btrfs"):
                if kind in only:
                    suite.log(f"== {kind} pool")
                    suite.lifecycle(kind, systems)
            if "images" in only:
                suite.log("== images")
                suite.images(systems)
            if "scale" in only:
                suite.log("== scale")

                def micro() -> None:
                    names = sorted(n for n in os.listdir(daemon.path("instances"))
                                   if not n.startswith("."))
                    fs_micro(suite, daemon.mount, names[0])

                suite.scale([mount] + ([lxd] if lxd else []), systems, micro, monitor_pss)
            if "rate" in only:
                suite.log("== launch rate")
                suite.launch_rate([mount] + ([lxd] if lxd else []))
            if "leaks" in only:
                suite.log("== leaks")
                suite.leaks([mount] + ([lxd] if lxd else []))
            if "migrate" in only:
                from bench.migrate import migrate

                suite.log("== moves between hosts")
                migrate(suite, stack, opts.debian or images["busybox"],
                        args.migrate_pools.split(","), args.vs_lxd, args.rest, args.log_level)
            if "projects" in only:
                from bench.projects import projects

                suite.log("== projects")
                steps = [int(x) for x in args.projects_steps.split(",")]
                if args.quick and args.projects_steps == PROJECTS_STEPS:
                    steps = [4, 40]
                projects(suite, daemon, steps, in_p0=2 if args.quick else 10)
        finally:
            facts["load_at_end"] = os.getloadavg()
            names = [s.name for s in systems] + ["lxfs-cli", "lxfs-rest", "lxd", "tmpfs"]
            names = list(dict.fromkeys(names))
            names = [n for n in names if any(n in r.samples for r in suite.rows)]
            print(table(suite.rows, names, reference))
            print(f"\nload average at start {facts['load_at_start']}, "
                  f"at end {facts['load_at_end']}")
            if args.json:
                args.json.write_text(json.dumps({
                    "machine": facts, "options": vars(opts) | {
                        "debian": str(opts.debian), "busybox": str(opts.busybox)},
                    "systems": names, "reference": reference,
                    "rows": [r.to_json() for r in suite.rows],
                    "daemon_systems": [s.name for s in daemon_systems],
                }, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
