"""``lxfsd --check``: compare what lxfs records with what is on disk, in the kernel and among
processes, and report every inconsistency (exit status 1 when there is one).

It changes nothing (it only mounts pools that are not mounted, as the daemon would), and it
can run beside a running daemon: then operations in progress are reported as such, and the
daemon's own helpers (dnsmasq...) are not counted as leftovers. Run it after a recovery, and in
CI (``tests/test_recovery_integration.py`` runs it after every fault it injects).
"""

from __future__ import annotations

import os
from pathlib import Path

from lxfs import reaper
from lxfs.server import Server
from lxfs.storage import LAYOUT_DIRS, DirectoryLayout


def daemon_running(data_dir: Path) -> bool:
    try:
        pid = int((data_dir / "lxfsd.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def inconsistencies(server: Server) -> list[str]:
    """Every inconsistency found, as sentences."""
    server.load(first_start=False)
    found: list[str] = []
    running = daemon_running(server.data_dir)
    for _op_id, kind, target, _data in server.db.journal_pending():
        found.append(f"operation {kind} of {target} is {'in progress' if running else 'unfinished'}"
                     " (in the journal)")
    found += _instances(server)
    found += _images(server)
    for pool in server.pools.values():
        found += [f"pool {pool.pool.name}: {what}" for what in _pool_leftovers(pool)]
    known = set(server.instances)
    if server.instance_data_dir.is_dir():
        for entry in sorted(server.instance_data_dir.iterdir()):
            if entry.name not in known:
                found.append(f"instance data {entry} belongs to no instance")
    found += server.runtime.check(list(server.instances.values()))
    if not running:
        cgroup = reaper.daemon_cgroup(server.data_dir)
        if cgroup is not None and cgroup.is_dir():
            procs = (cgroup / "cgroup.procs").read_text().split()
            found += [f"process {pid} of a stopped lxfsd is still running" for pid in procs]
        uploads = server.uploads_dir
        if uploads.is_dir() and any(uploads.iterdir()):
            found.append(f"{uploads} holds leftovers of a stopped daemon")
    found += _stray_mounts(server)
    return found


def _instances(server: Server) -> list[str]:
    found = []
    for name, inst in sorted(server.instances.items()):
        if inst.storage_state not in ("", "ready"):
            found.append(f"instance {name} is stuck in state {inst.storage_state!r}")
        pool = server.pools.get(inst.root_pool())
        if inst.storage_state != "ready":
            continue
        if pool is None:
            found.append(f"instance {name}: its pool {inst.root_pool()!r} is not available")
            continue
        if not pool.volume_exists("container", name):
            found.append(f"instance {name} has no volume in pool {pool.pool.name}")
            continue
        stored = set(pool.list_snapshots("container", name))
        for snap in sorted(set(inst.snapshots) - stored):
            found.append(f"snapshot {name}/{snap} has a record and no files")
        for snap in sorted(stored - set(inst.snapshots)):
            found.append(f"snapshot {name}/{snap} has files and no record")
    for pool in server.pools.values():
        for vol in pool.list_volumes("container"):
            inst = server.instances.get(vol)
            if inst is None or inst.storage_state != "ready" or \
                    inst.root_pool() != pool.pool.name:
                found.append(f"pool {pool.pool.name}: volume {vol} belongs to no instance")
    return found


def _images(server: Server) -> list[str]:
    found = []
    for fp, image in sorted(server.images.items()):
        if not (server.images_dir / fp).is_file():
            found.append(f"image {fp[:12]} has no file")
        if image.split and not (server.images_dir / f"{fp}.rootfs").is_file():
            found.append(f"image {fp[:12]} has no rootfs file")
    if server.images_dir.is_dir():
        for path in sorted(server.images_dir.iterdir()):
            if path.name.split(".")[0] not in server.images:
                found.append(f"image file {path.name} belongs to no image")
    for pool in server.pools.values():
        for fp in pool.list_volumes("image"):
            if fp not in server.images:
                found.append(f"pool {pool.pool.name}: image volume {fp[:12]} belongs to no "
                             "image")
    for alias, (fp, _desc) in sorted(server.aliases.items()):
        if fp not in server.images:
            found.append(f"alias {alias} names a missing image {fp[:12]}")
    return found


def _pool_leftovers(pool: object) -> list[str]:
    """Hidden entries (every one is an operation's leftover: no user name starts with a
    dot, and the driver's own, ``keeps_hidden``, are not) in a directory-layout pool."""
    if not isinstance(pool, DirectoryLayout):
        return []
    found = []
    for sub in LAYOUT_DIRS:
        base = pool.root / sub
        if not base.is_dir():
            continue
        places = [base]
        if sub.endswith("-snapshots"):
            places += [d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")]
        found += [f"leftover {leftover.relative_to(pool.root)}"
                  for place in places for leftover in sorted(place.glob(".*"))
                  if not pool.keeps_hidden(leftover)]
    return found


def _stray_mounts(server: Server) -> list[str]:
    """Mounts under the data directory that are no pool's."""
    root = str(server.data_dir)
    pools = {str(p.root) for p in server.pools.values() if isinstance(p, DirectoryLayout)}
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if (point == root or point.startswith(root + "/")) and point not in pools:
                found.append(f"stray mount at {point}")
    return found


def main(server: Server) -> int:
    """Print what was found; 0 when nothing, 1 otherwise."""
    found = inconsistencies(server)
    for what in found:
        print(what)
    print(f"lxfs check of {server.data_dir}: "
          + (f"{len(found)} inconsistencies" if found else "no inconsistency found"))
    return 1 if found else 0
