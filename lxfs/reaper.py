"""Helper processes never outlive the daemon unnoticed.

The daemon runs in a cgroup of its own, named after its data directory (``lxfsd.<id>``: in the
``pids`` hierarchy on cgroup v1, under the daemon's own cgroup on v2), and every process it
forks (``cp``, ``tar``, ``rm``, helpers of plugins) starts there. LXC's monitors and the
containers move to cgroups of their own at once, so what remains there is the daemon and its
helpers. At start, before anything is repaired, the next daemon ends whatever an earlier one
left running there (SIGKILL, then it waits until the cgroup is empty): a restart never races a
``cp`` of the previous daemon. A clean exit removes the cgroup.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
from pathlib import Path

from lxfs.api import CGROUP_ROOT, cgroup_layout

log = logging.getLogger("lxfs.reaper")
#: v1 hierarchies to track the daemon in, the first mounted one is used (pids or freezer
#: limit nothing by being there; memory or cpu would change the daemon's accounting)
V1_HIERARCHIES = ("pids", "freezer")


def daemon_cgroup(data_dir: Path) -> Path | None:
    """The cgroup directory of the daemon of ``data_dir`` (None: no usable hierarchy)."""
    name = "lxfsd." + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    if cgroup_layout() == "v2":
        own = _own_v2_cgroup()
        return CGROUP_ROOT / own.lstrip("/") / name if own is not None else None
    for hierarchy in V1_HIERARCHIES:
        if (CGROUP_ROOT / hierarchy / "cgroup.procs").exists():
            return CGROUP_ROOT / hierarchy / name
    return None


def _own_v2_cgroup() -> str | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                path = line[3:]
                # the daemon may already be in its own cgroup (a second contain() call)
                return str(Path(path).parent) if Path(path).name.startswith("lxfsd.") \
                    else path
    except OSError:
        return None
    return None


def _procs(cgroup: Path) -> list[int]:
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def end_leftovers(data_dir: Path, timeout: float = 30.0) -> int:
    """Kill what an earlier daemon of ``data_dir`` left in its cgroup and wait for it to
    end; return how many processes there were. The calling process itself is spared."""
    cgroup = daemon_cgroup(data_dir)
    if cgroup is None or not cgroup.is_dir():
        return 0
    me = os.getpid()
    found = [pid for pid in _procs(cgroup) if pid != me]
    for pid in found:
        _describe_and_kill(pid)
    deadline = time.monotonic() + timeout
    while any(pid != me for pid in _procs(cgroup)) and time.monotonic() < deadline:
        for pid in _procs(cgroup):
            if pid != me:
                _describe_and_kill(pid, quiet=True)
        time.sleep(0.02)
    left = [pid for pid in _procs(cgroup) if pid != me]
    if left:
        log.error("helper processes %s of an earlier lxfsd did not end within %.0fs",
                  left, timeout)
    return len(found)


def _describe_and_kill(pid: int, quiet: bool = False) -> None:
    if not quiet:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            cmdline = b"?"
        log.warning("ending process %d left by an earlier lxfsd: %s", pid,
                    cmdline.decode(errors="replace").strip()[:200])
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def release(cgroup: Path | None) -> None:
    """At a clean exit: move the calling process (the daemon) back to the parent cgroup and
    remove its own, unless a helper is still in it (the next start ends that one)."""
    if cgroup is None:
        return
    try:
        (cgroup.parent / "cgroup.procs").write_text(f"{os.getpid()}\n")
        cgroup.rmdir()
    except OSError as exc:
        log.info("cgroup %s kept: %s", cgroup, exc.strerror)


def contain(data_dir: Path) -> Path | None:
    """Move the calling process (the daemon) into its cgroup, made if needed; what it forks
    from then on starts there. Returns the cgroup, or None where there is none to use."""
    cgroup = daemon_cgroup(data_dir)
    if cgroup is None:
        log.warning("no cgroup hierarchy to track helper processes in")
        return None
    try:
        cgroup.mkdir(exist_ok=True)
        (cgroup / "cgroup.procs").write_text(f"{os.getpid()}\n")
    except OSError as exc:
        log.warning("cannot track helper processes in %s: %s", cgroup, exc)
        return None
    return cgroup
