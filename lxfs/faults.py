"""Fault injection for crash-recovery tests: named points in every multi-step operation.

``LXFS_FAULT=POINT`` in the daemon's environment makes it kill itself with SIGKILL when it
reaches ``POINT`` (``LXFS_FAULT=POINT:N``: the N-th time). ``POINTS`` lists every point;
``tests/test_recovery_integration.py`` goes through all of them and checks that the next
start finishes or undoes each interrupted operation (``lxfsd --check`` finds nothing).
Without the variable a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

#: every point, by operation (documented in docs/reliability.md)
POINTS: tuple[str, ...] = (
    "image-import.after-inspect", "image-import.after-move", "image-import.after-record",
    "image-unpack.after-extract", "image-unpack.after-rename",
    "image-delete.after-record", "image-delete.after-volumes",
    "create.after-intent", "create.after-volume", "create.after-templates",
    "create.after-ready",
    "copy.after-intent", "copy.after-volume", "copy.after-ready",
    "snapshot.after-intent", "snapshot.after-volume", "snapshot.after-record",
    "snapshot-delete.after-intent", "snapshot-delete.after-record",
    "snapshot-delete.after-files",
    "snapshot-rename.after-files", "snapshot-rename.after-record",
    "restore.after-stop", "restore.after-files", "restore.after-record",
    "restore.after-start",
    "publish.after-intent", "publish.after-tarball", "publish.after-register",
    "move.after-transfer", "move.after-record", "move.after-source-delete",
    "rename.after-volume", "rename.after-runtime", "rename.after-record",
    "delete.after-intent", "delete.after-volume", "delete.after-record",
    "pool-create.after-intent", "pool-create.after-driver", "pool-create.after-record",
    "pool-delete.after-record", "pool-delete.after-driver",
    "volume-create.after-volume", "volume-copy.after-intent", "volume-delete.after-volume",
)

_wanted = os.environ.get("LXFS_FAULT", "")
_name, _, _count = _wanted.partition(":")
_remaining = int(_count) if _count.isdigit() else 1
_lock = threading.Lock()


def point(name: str) -> None:
    """A point where a crash is injected when ``LXFS_FAULT`` names it."""
    global _remaining
    if name != _name:
        return
    with _lock:
        _remaining -= 1
        if _remaining > 0:
            return
    os.kill(os.getpid(), signal.SIGKILL)
