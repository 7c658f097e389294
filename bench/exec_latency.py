"""``python -m bench.exec_latency``: the latency of ``exec c1 -- true``, the way docs/benchmarks.md
("exec through an agent") measures it: ``lxfs exec`` through the instance's exec agent, ``lxfs
exec`` attaching every time (``LXFS_EXEC_AGENT=off``, what it did before the agent), the
``lxc-attach`` binary, and with ``--vs-lxd`` Debian's ``lxc exec`` against an isolated LXD.

Calls alternate between the ways (A B C A B C ...), back to back and then with a gap between
calls (the cgroup v1 attach is dearer after a pause, docs/benchmarks.md, finding 2). Each call
is timed from spawn to reaped exit; medians are printed with the load average. Then, inside
one process (no interpreter start): the agent's request to reaped exit against liblxc's
attach to reaped exit, what each mechanism itself costs. Last, the CPU time of a call (the
client and what it waited for, with the daemon's and the agent's time over a batch of calls
of one way): the work of an exec, which the load of a shared machine does not change.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import time
from contextlib import ExitStack

from bench.common import CACHE, BenchError, run
from bench.daemon import BenchDaemon, venv_command
from bench.migrate import cpu_seconds


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from spawn to reaped exit (output to /dev/null; a failure raises)."""
    return spawned(argv, env)[0]


def spawned(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds from spawn to reaped exit, and the CPU seconds of the process (with what it
    waited for)."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        start = time.perf_counter()
        pid = os.posix_spawnp(argv[0], argv, env, file_actions=[
            (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1),
            (os.POSIX_SPAWN_DUP2, null, 2)])
        _, status, usage = os.wait4(pid, 0)
        elapsed = time.perf_counter() - start
    finally:
        os.close(null)
    if os.waitstatus_to_exitcode(status) != 0:
        raise BenchError(f"{' '.join(argv)} failed: {status}")
    return elapsed, usage.ru_utime + usage.ru_stime


def agent_pid(lxc_path: str) -> int:
    """The host pid of c1's exec agent (its socket's peer)."""
    from lxfs.cli.exec_agent import socket_path  # noqa: PLC0415

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(socket_path(lxc_path, "c1"))
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    finally:
        probe.close()
    return struct.unpack("3i", creds)[0]


def cpu_per_call(argv: list[str], env: dict[str, str], servers: list[int], runs: int
                 ) -> float:
    """Mean CPU seconds of a call: the client's, plus what ``servers`` spent over the batch."""
    before = sum(cpu_seconds(pid) for pid in servers)
    client = sum(spawned(argv, env)[1] for _ in range(runs))
    return (client + sum(cpu_seconds(pid) for pid in servers) - before) / runs


def in_process(lxc_path: str, runs: int, gap: float) -> dict[str, list[float]]:
    """``true`` through the agent and through liblxc's attach, from this process."""
    import _lxc  # noqa: PLC0415

    from lxfs.cli import exec as exec_  # noqa: PLC0415

    def spec() -> exec_.ChildSpec:
        return exec_.ChildSpec(argv=["true"], env={"PATH": exec_.DEFAULT_PATH}, cwd="/",
                               explicit_cwd=False, uid=0, use_pty=False)

    container = _lxc.Container("c1", lxc_path)
    null = os.open(os.devnull, os.O_RDWR)
    samples: dict[str, list[float]] = {"agent": [], "attach": []}
    saved = [os.dup(fd) for fd in (0, 1)]
    try:
        for fd in (0, 1):
            os.dup2(null, fd)
        for _ in range(runs):
            time.sleep(gap)
            start = time.perf_counter()
            code = exec_.run_through_agent(lxc_path, "c1", spec(), None, None, 0, 1)
            samples["agent"].append(time.perf_counter() - start)
            if code != 0:
                raise BenchError(f"exec through the agent: {code}")
            time.sleep(gap)
            start = time.perf_counter()
            pid = container.attach(exec_.attached_child, spec(), stdin=null, stdout=null,
                                   stderr=null, env_policy=_lxc.LXC_ATTACH_CLEAR_ENV)
            os.waitpid(pid, 0)
            samples["attach"].append(time.perf_counter() - start)
    finally:
        for fd, copy in zip((0, 1), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.exec_latency", description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between calls")
    parser.add_argument("--vs-lxd", action="store_true")
    args = parser.parse_args()
    image = CACHE / "busybox.tar.xz"
    if not image.is_file():
        raise SystemExit(f"{image} is missing (bash contrib/images/busybox.sh {CACHE})")
    with ExitStack() as stack:
        daemon = BenchDaemon()
        stack.callback(daemon.teardown)
        daemon.start()
        lxfs = venv_command("lxfs", "lxfs.cli")
        run([*lxfs, "image", "import", str(image), "--alias", "busybox"], env=daemon.env)
        run([*lxfs, "launch", "busybox", "c1"], env=daemon.env)
        lxc_path = daemon.read("environment", "lxc_path")
        ways: dict[str, tuple[list[str], dict[str, str]]] = {
            "lxfs exec (agent)": ([*lxfs, "exec", "c1", "--", "true"], daemon.env),
            "lxfs exec (attach)": ([*lxfs, "exec", "c1", "--", "true"],
                                   dict(daemon.env, LXFS_EXEC_AGENT="off")),
            "lxc-attach": (["lxc-attach", "-n", "c1", "-P", lxc_path, "--", "true"],
                           daemon.env),
        }
        servers: dict[str, list[int]] = {"lxfs exec (attach)": [daemon.pid],
                                         "lxc-attach": []}
        if args.vs_lxd:
            from bench.lxd import start_isolated_lxd  # noqa: PLC0415

            lxd = start_isolated_lxd(stack, {"busybox": image})
            lxd.launch("busybox", "c1", "dir")
            ways["lxc exec (LXD)"] = (["lxc", "exec", "c1", "--", "true"], lxd.env)
            servers["lxc exec (LXD)"] = [lxd.daemon_pid]
        print(f"load average before: {os.getloadavg()}")
        for label, gap in (("back to back", 0.0), (f"{args.gap * 1000:.0f} ms gaps", args.gap)):
            samples: dict[str, list[float]] = {way: [] for way in ways}
            for i in range(args.warmup + args.runs):
                for way, (argv, env) in ways.items():
                    if gap:
                        time.sleep(gap)
                    elapsed = timed(argv, env)
                    if i >= args.warmup:
                        samples[way].append(elapsed)
            print(f"\n{label} (median of {args.runs}, min-max, ms):")
            for way, values in samples.items():
                print(f"  {way:20} {statistics.median(values) * 1000:6.1f}  "
                      f"({min(values) * 1000:.1f}-{max(values) * 1000:.1f})")
        for label, gap in (("back to back", 0.0), (f"{args.gap * 1000:.0f} ms gaps", args.gap)):
            samples = in_process(lxc_path, args.runs, gap)
            print(f"\nin one process, {label} (median of {args.runs}, min-max, ms):")
            for way, values in samples.items():
                print(f"  {way:20} {statistics.median(values) * 1000:6.2f}  "
                      f"({min(values) * 1000:.2f}-{max(values) * 1000:.2f})")
        # the agent runs (the calls above started it): its pid, for its CPU time
        timed(*ways["lxfs exec (agent)"])
        servers["lxfs exec (agent)"] = [daemon.pid, agent_pid(lxc_path)]
        print(f"\nCPU time per call (mean of {args.runs} back to back, ms; the client with "
              "what it waited for, the daemon, the agent):")
        for way, (argv, env) in ways.items():
            cpu = cpu_per_call(argv, env, servers[way], args.runs)
            print(f"  {way:20} {cpu * 1000:6.1f}")
        print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
