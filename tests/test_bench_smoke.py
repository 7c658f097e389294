"""Smoke test of the benchmark (``python -m bench --quick``), so that it never rots.

It checks that every section runs and produces figures, never how fast they are: the targets
of issue 6 belong to the benchmark (docs/benchmarks.md), not to timed assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, integration_problems

pytestmark = pytest.mark.integration


def run_quick(tmp_path: Path, *options: str
              ) -> tuple[subprocess.CompletedProcess[str], dict[tuple[str, str], Any]]:
    """``python -m bench --quick OPTIONS...``: its result and rows by (section, name), none
    of which may hold an error."""
    problems = integration_problems()
    if problems:
        pytest.fail("cannot run the benchmark here:\n  - " + "\n  - ".join(problems),
                    pytrace=False)
    out = tmp_path / "bench.json"
    env = dict(os.environ, LXFS_BENCH_CACHE=str(tmp_path / "cache"))
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *options, "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=170,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    rows = {(r["section"], r["name"]): r for r in json.loads(out.read_text())["rows"]}
    errors = [f"{k}: {r['error']}" for k, r in rows.items() if r["error"]]
    assert not errors, "\n".join(errors) + "\n" + result.stderr
    return result, rows


def test_bench_quick(tmp_path: Path) -> None:
    before = _leftovers()
    result, rows = run_quick(tmp_path)
    for key in [("dir", "launch busybox"), ("btrfs", "snapshot (running)"),
                ("btrfs", "exec true"), ("scale", "list, N=4 running"),
                ("fs", "open+read+close instances/X/state"), ("rate", "launch 4 busybox, "
                f"parallel {os.cpu_count()}"), ("leaks", "fd growth over 2 cycles")]:
        assert key in rows, f"no row {key}: {sorted(rows)}"
        assert rows[key]["samples"], f"{key} has no figures"
    assert "lxfs-mount" in rows[("dir", "start")]["samples"]
    assert "| dir | launch busybox |" in result.stdout
    left = _leftovers() - before
    assert not left, f"the benchmark left these behind: {sorted(left)}"


def test_bench_migrate_quick(tmp_path: Path) -> None:
    """The moves between hosts (``--only migrate --quick``: two lxfs hosts in network
    namespaces, one move between their btrfs pools): figures, and nothing left behind."""
    problems = integration_problems()
    if problems:
        pytest.fail("cannot run the benchmark here:\n  - " + "\n  - ".join(problems),
                    pytrace=False)
    before = _leftovers()
    out = tmp_path / "bench.json"
    env = dict(os.environ, LXFS_BENCH_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "--quick", "--only", "migrate", "--migrate-pools",
         "btrfs", "--json", str(out)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=170)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    rows = {(r["section"], r["name"]): r for r in json.loads(out.read_text())["rows"]}
    move = rows[("migrate", "move 200 MB, stopped, btrfs -> btrfs")]
    assert not move["error"], move["error"] + "\n" + result.stderr
    assert len(move["samples"]["lxfs-cli"]) == 1
    assert rows[("migrate", "instance size (btrfs)")]["samples"]["lxfs-cli"][0] >= 199
    left = _leftovers() - before
    assert not left, f"the benchmark left these behind: {sorted(left)}"
    # its hosts' namespaces and bridge (bench.hosts.HostNetwork's names, by its pid)
    tag = f"{proc.pid % 10000}0"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=False).stdout
    assert not [n for n in netns.split() if n.endswith(f"-{tag}")], netns
    bridge = subprocess.run(["ip", "link", "show", f"lxfsmh{tag}"[:15]], capture_output=True,
                            check=False)
    assert bridge.returncode != 0, "the hosts' bridge is left"


def test_bench_projects_quick(tmp_path: Path) -> None:
    """Listing one project while the others grow (``--only projects --quick``: N=4, 40
    instance records over ten projects): every operation has figures, nothing is left."""
    before = _leftovers()
    _result, rows = run_quick(tmp_path, "--only", "projects")
    for name, system in [("ls projects/p0/instances", "lxfs-mount"),
                         ("cat projects/p0/instances/c1/state", "lxfs-mount"),
                         ("lxfs list --project p0", "lxfs-cli"),
                         ("lxfs list --all-projects", "lxfs-cli"),
                         ("GET /1.0/instances?project=p0&recursion=1", "lxfs-rest")]:
        for n in (4, 40):
            assert rows[("projects", f"{name}, N={n}")]["samples"][system], (name, n)
        assert ("projects", f"{name}: N=40 / N=4") in rows
    left = _leftovers() - before
    assert not left, f"the benchmark left these behind: {sorted(left)}"


def _leftovers() -> set[str]:
    """Benchmark directories, mounts and loop devices that exist now."""
    found = {str(p) for p in Path("/var/tmp").glob("lxfs-bench-*")}
    found |= {str(p) for p in Path("/dev/shm").glob("lxfs-bench-*")}
    with open("/proc/self/mountinfo") as f:
        found |= {line.split()[4] for line in f if "/lxfs-bench-" in line}
    loops = subprocess.run(["losetup", "--noheadings", "--list", "--output", "BACK-FILE"],
                           capture_output=True, text=True, check=False).stdout
    found |= {line.strip() for line in loops.splitlines() if "/lxfs-bench-" in line}
    return found
