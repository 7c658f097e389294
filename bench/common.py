"""Shared helpers: timing, statistics, process memory, mounts, the result table."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LXFS_BENCH_CACHE", "/var/cache/lxfs-bench"))


class BenchError(RuntimeError):
    """A benchmark step failed (its message says which and why)."""


def run(cmd: list[str], env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 300, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a command, capturing output; raise BenchError with its stderr on failure."""
    try:
        result = subprocess.run(cmd, env=env, capture_output=True, timeout=timeout, input=input,
                                stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(cmd)}: no answer in {timeout:.0f}s") from exc
    if check and result.returncode != 0:
        err = (result.stderr or result.stdout).decode(errors="replace").strip()
        raise BenchError(f"{' '.join(cmd)} exited with {result.returncode}: {err[-500:]}")
    return result


def cat(path: Path | str) -> None:
    """open, read to the end, close: what ``cat`` does (no isatty ioctl, unlike Python's
    buffered ``open``, which costs a FUSE round trip more)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, 1 << 16):
            pass
    finally:
        os.close(fd)


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` takes (monotonic clock)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass
class Row:
    """One measured quantity: samples per system, plus the pairwise ratios lxfs/other."""

    section: str
    name: str
    unit: str = "s"
    samples: dict[str, list[float]] = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)
    error: str = ""
    note: str = ""

    def add(self, system: str, value: float) -> None:
        self.samples.setdefault(system, []).append(value)

    def summary(self, system: str) -> dict[str, float] | None:
        values = self.samples.get(system)
        if not values:
            return None
        return {"min": min(values), "median": statistics.median(values), "max": max(values),
                "n": len(values)}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = {s: self.summary(s) for s in self.samples}
        data["ratio_median"] = {s: statistics.median(v) for s, v in self.ratios.items() if v}
        return data


def fmt(value: float, unit: str) -> str:
    """A value in its unit, compact (seconds shown in ms below 1 s)."""
    if unit == "s":
        return f"{value * 1000:.1f}ms" if value < 1 else f"{value:.2f}s"
    if unit in ("MB", "MB/ctr", "ms"):
        return f"{value:.1f}"
    if unit in ("us", "/s"):
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    return f"{value:g}"


def table(rows: list[Row], systems: list[str], reference: str | None = None) -> str:
    """A Markdown table: min / median / max per system (one value when there is one sample)
    and, with a reference system, the median of the pairwise ratios system/reference."""
    ratio_keys = [s for s in systems if reference and s != reference
                  and any(s in r.ratios for r in rows)]
    head = ["section", "operation", "unit"] + [f"{s} min / med / max" for s in systems]
    head += [f"{s} / {reference}" for s in ratio_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.section, row.name, row.unit]
        for system in systems:
            s = row.summary(system)
            if s is None:
                cells.append("—")
            elif s["n"] == 1:
                cells.append(fmt(s["median"], row.unit))
            else:
                cells.append(" / ".join(fmt(s[k], row.unit) for k in ("min", "median", "max")))
        for system in ratio_keys:
            values = row.ratios.get(system)
            cells.append(f"{statistics.median(values):.2f}" if values else "")
        if row.error:
            cells[1] += f" (error: {row.error[:100]})"
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


# -- processes --------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pss_mb(pid: int) -> float:
    """Proportional set size in MB (/proc/PID/smaps_rollup)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return one, five, fifteen


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first (reads /proc only)."""
    root = os.path.abspath(path).rstrip("/")
    found = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5:
                continue
            point = fields[4].encode().decode("unicode_escape")
            if point == root or point.startswith(root + "/"):
                found.add(point)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def detach_loops_under(path: Path) -> None:
    """Detach loop devices whose backing file lies under ``path``."""
    out = run(["losetup", "--noheadings", "--list", "--output", "NAME,BACK-FILE"], check=False)
    for line in out.stdout.decode().splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip().startswith(str(path).rstrip("/") + "/"):
            run(["losetup", "-d", parts[0]], check=False)


def machine_facts() -> dict[str, Any]:
    """nproc, kernel, memory, CPU model, load and date."""
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": os.uname().release,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "load_at_start": load_average(),
    }
