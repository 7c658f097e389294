"""Replacing a file in one step (no imports beyond ``os``: the ``lxfs`` command uses it too)."""

from __future__ import annotations

import os


def write_atomic(path: os.PathLike[str] | str, data: bytes | str, mode: int = 0o644,
                 sync: bool = True) -> None:
    """Replace ``path`` with ``data``: written to a new file beside it (``mode``, never
    through a symlink), flushed to disk unless ``sync`` is false, then renamed over it.
    Readers see the old content or the new, never a part; on failure nothing is left."""
    path = os.fspath(path)
    data = data.encode() if isinstance(data, str) else data
    directory, name = os.path.split(path)
    staging = os.path.join(directory, f".{name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)  # what the umask took away
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staging, path)
    except BaseException:
        try:
            os.unlink(staging)
        except OSError:
            pass
        raise
