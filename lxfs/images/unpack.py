"""Unpacking an image into a volume: ``metadata.yaml``, ``templates/`` and ``rootfs/``.

This is where an image's content is checked (the import reads only its metadata, as LXD's
does): tarball members reach GNU tar only once the member rules of :mod:`lxfs.images.format`
have accepted them and while their sizes add up to no more than the server's
``images.max_unpacked_size``; a squashfs rootfs is listed by unsquashfs first (names it would
not extract safely, sizes), then extracted by it. Both tools run in an
identity-mapped user namespace (:func:`_contained`), so no device node of an image lands on the
host. Everything is unpacked beside (or inside) the destination and renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from lxfs.faults import point
from lxfs.images.format import (
    _MAX_METADATA,
    _SHOWN_NAMES,
    _STREAM_ERRORS,
    _TOP_LEVEL,
    ImageError,
    ImageTooLarge,
    Layout,
    _check_squashfs,
    _check_unsquashfs,
    _MemberPolicy,
    _members,
    _parse_metadata,
    _read_no_symlinks,
    _show,
    _sniff,
    _tar_stream,
    _tool_env,
)

log = logging.getLogger(__name__)


# The exit status of the contained command, printed by the shell that runs it.
_STATUS_WRAPPER = '"$@" >/dev/null; echo "$?"'
_UNSQUASHFS_DEVICE = re.compile(r"create_inode: failed to create (?:character|block) device (.*), "
                                r"because ")
_UNSQUASHFS_XATTR = re.compile(r"write_xattr: failed to write xattr (?:trusted|security)\.")


def _identity_idmap() -> list[str]:
    """lxc-usernsexec options mapping every uid and gid we have to itself."""
    options: list[str] = []
    for kind in ("uid", "gid"):
        with open(f"/proc/self/{kind}_map") as f:
            for line in f:
                first, _, count = line.split()
                options += ["-m", f"{kind[0]}:{first}:{first}:{count}"]
    return options


def _contained(cmd: list[str]) -> list[str]:
    """``cmd`` as image content is unpacked with it.

    As root: in a new user namespace mapping every uid and gid to itself, so owners, modes,
    setuid bits and file capabilities come out as stored, while the kernel refuses device
    nodes and the privileged xattrs (``trusted.*``, ``security.*`` but file capabilities).
    A shell prints the command's exit status on stdout (lxc-usernsexec reports a child
    killed by a signal as a success).
    """
    wrapped = ["sh", "-c", _STATUS_WRAPPER, "sh", *cmd]
    if os.geteuid() != 0:
        return wrapped
    return ["lxc-usernsexec", *_identity_idmap(), "--", *wrapped]


def _wait_contained(proc: subprocess.Popen[bytes], err: IO[bytes]) -> tuple[int, list[str]]:
    """Wait for a :func:`_contained` command: its exit status and stderr lines (-1 when it
    did not report one: killed, or the user namespace could not be made)."""
    assert proc.stdout is not None
    out = proc.stdout.read().split()
    proc.stdout.close()
    proc.wait()
    err.seek(0)
    lines = err.read().decode(errors="replace").strip().splitlines()
    status = int(out[-1]) if out and out[-1].isdigit() else -1
    return status, lines


def _failure(what: str, status: int, lines: list[str]) -> ImageError:
    detail = "; ".join(lines[-5:]) or ("killed" if status < 0 else f"exit status {status}")
    return ImageError(f"{what} failed: {detail}")


class _Budget:
    """What the image's regular files may still add up to (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, size: int) -> None:
        self.used += size
        if self.limit is not None and self.used > self.limit:
            raise ImageTooLarge(self.limit)


def _extract_tarball(archive: Path, fmt: str, dest: Path, layout: Layout,
                     budget: _Budget | None = None,
                     read: Callable[[int], None] | None = None) -> None:
    """Extract a tarball into ``dest``: GNU tar (contained, see :func:`_contained`) reads the
    archive from us, member by member, once :class:`_MemberPolicy` has accepted each one.

    GNU tar's options, on purpose: numeric owners, modes with setuid bits and xattrs as
    stored (containment is the storage directory's business); ``--delay-directory-restore``
    so directory modes are set after their content whatever the member order; no
    ``--keep-directory-symlink``, ``--absolute-names`` or ``--overwrite`` (its own refusal
    of ``..``, its stripping of "/" and its deferral of outward symlinks stay on as a
    second line); no ``--no-overwrite-dir`` either: ``dest`` is a fresh directory of ours,
    and only a rootfs tarball's "./" (the container's "/") may set its mode. TAR_OPTIONS
    is dropped from the environment. Each regular member's size is spent from ``budget`` (if
    any: a backup has none) before GNU tar sees it (a decompression bomb costs no more than
    the limit). ``read(n)``
    hears how many bytes of the archive were read so far, between members.
    """
    cmd = ["tar", "-x", "-f", "-", "-C", str(dest), "--restrict", "--numeric-owner",
           "--xattrs", "--xattrs-include=*", "--delay-directory-restore"]
    if os.geteuid() == 0:
        cmd += ["--same-owner", "--same-permissions"]
    what = f"unpacking {archive.name}"
    policy = _MemberPolicy(layout)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(_contained(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err, env=_tool_env(), bufsize=0)
        assert proc.stdin is not None
        try:
            with proc.stdin, _tar_stream(archive, fmt, proc.stdin) as (tf, flt, verify):
                for member in _members(tf, flt):
                    if budget is not None and member.isreg():
                        budget.spend(member.size)
                    flt.decide(member, tf.offset, policy.check(member))
                    if read is not None:
                        read(os.lseek(flt.source_fd, 0, os.SEEK_CUR))
                verify()
        except BrokenPipeError:  # tar gave up: its stderr says why
            raise _failure(what, *_wait_contained(proc, err)) from None
        except ImageTooLarge:
            _wait_contained(proc, err)
            raise
        except ImageError as e:
            _wait_contained(proc, err)
            raise ImageError(f"{what}: {e}") from None
        except _STREAM_ERRORS as e:
            _wait_contained(proc, err)
            raise ImageError(f"{what}: cannot read the {fmt} tarball: {e}") from None
        except BaseException:
            _wait_contained(proc, err)
            raise
        status, lines = _wait_contained(proc, err)
        if status != 0:
            raise _failure(what, status, lines)
    policy.log_left_out(archive.name)


def _extract_squashfs(src: Path, dest: Path) -> None:
    """Extract a squashfs rootfs into ``dest`` with unsquashfs (contained, see
    :func:`_contained`: its device nodes fail to be made and are reported as skipped)."""
    _check_unsquashfs()
    cmd = ["unsquashfs", "-no-progress", "-quiet", "-ignore-errors", "-force", "-dest",
           str(dest), str(src)]
    what = f"unpacking {src.name}"
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(_contained(cmd), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err, env=_tool_env())
        status, lines = _wait_contained(proc, err)
    devices = [m.group(1) for line in lines if (m := _UNSQUASHFS_DEVICE.match(line))]
    xattrs = [line for line in lines if _UNSQUASHFS_XATTR.match(line)]
    others = [line for line in lines
              if not _UNSQUASHFS_DEVICE.match(line) and not _UNSQUASHFS_XATTR.match(line)]
    if status not in (0, 2) or (status == 2 and others):
        raise _failure(what, status, others or lines)
    prefix = f"{dest}/"
    names = [d[len(prefix):] if d.startswith(prefix) else d for d in devices]
    if names:
        more = f" and {len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES else ""
        log.warning("%s: %d device nodes skipped: %s%s", src.name, len(names),
                    ", ".join(_show(n) for n in names[:_SHOWN_NAMES]), more)
    for line in xattrs[:_SHOWN_NAMES]:
        log.warning("%s: %s", src.name, line)


def unpack_image(path: Path | str, rootfs_path: Path | str | None, dest: Path | str,
                 progress: Callable[[int, int], None] | None = None,
                 max_unpacked: int | None = None) -> None:
    """Unpack an image into ``dest``: ``metadata.yaml``, ``templates/`` and ``rootfs/``.

    ``dest`` must not exist (it is created, mode 0711), or be an empty directory (for example a
    freshly made btrfs subvolume, kept with its mode). Everything is unpacked into a temporary
    directory first (beside ``dest``, or inside it when it exists) and renamed into place at
    the end, so a failure leaves nothing half-written. Raises :class:`ImageError` for bad
    images and :class:`FileExistsError` when ``dest`` is not empty.

    Image content is untrusted, and this is where it is checked (an import reads only the
    metadata): tarball members are checked by :class:`_MemberPolicy` before GNU tar sees them,
    a squashfs is listed, then read, by unsquashfs >= 4.5.1, and both tools run in an
    identity-mapped user namespace. An image whose regular files add up to more than
    ``max_unpacked`` bytes raises :class:`ImageTooLarge` once the sum passes it. Device nodes
    are skipped (with a log line naming them), as LXD does when it cannot create them:
    containers get their /dev from LXC, and no device node of an image lands on the host's
    disk. Members outside ``metadata.yaml``, ``templates/`` and ``rootfs/`` are ignored.
    Setuid files, FIFOs, absolute symlinks and hard links between the image's own files are
    kept.

    ``progress(done, total)`` hears how much of the image's files was read (bytes), at most
    every quarter of a second and once at the end.
    """
    path, dest = Path(path), Path(dest)
    fmt = _sniff(path)
    if fmt is None or fmt == "squashfs":
        raise ImageError(f"not an LXD image: {path.name} is not a tarball")
    rootfs_fmt: str | None = None
    if rootfs_path is not None:
        rootfs_path = Path(rootfs_path)
        rootfs_fmt = _sniff(rootfs_path)
        if rootfs_fmt is None:
            raise ImageError("split image: the rootfs file is neither squashfs nor a tarball")
    in_place = dest.is_dir() and not dest.is_symlink()
    if in_place:
        if any(os.scandir(dest)):
            raise FileExistsError(errno.EEXIST, "destination is not empty", str(dest))
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest))
    elif os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, "destination exists", str(dest))
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.unpack-", dir=dest.parent))
    moved: list[Path] = []
    budget = _Budget(max_unpacked)
    sizes = [path.stat().st_size, Path(rootfs_path).stat().st_size if rootfs_path else 0]
    last = [0.0]

    def reader(base: int) -> Callable[[int], None]:
        def read(n: int) -> None:
            if progress is not None and time.monotonic() - last[0] >= 0.25:
                last[0] = time.monotonic()
                progress(base + n, sum(sizes))
        return read

    try:
        _extract_tarball(path, fmt, tmp, "image" if rootfs_path is None else "metadata",
                         budget, reader(0))
        rootfs = tmp / "rootfs"
        if rootfs_path is None:
            if not rootfs.is_dir() or rootfs.is_symlink():
                raise ImageError(
                    "not an LXD image: no rootfs/ in tarball (a split image needs its rootfs file)"
                )
        else:
            assert rootfs_fmt is not None
            if os.path.lexists(rootfs):
                raise ImageError("split image: the metadata tarball must not contain rootfs/")
            if rootfs_fmt == "squashfs":
                budget.spend(_check_squashfs(rootfs_path))
                _extract_squashfs(rootfs_path, rootfs)
            else:
                rootfs.mkdir(mode=0o755)
                _extract_tarball(rootfs_path, rootfs_fmt, rootfs, "rootfs", budget,
                                 reader(sizes[0]))
        meta = tmp / "metadata.yaml"
        if not meta.is_file() or meta.is_symlink():
            raise ImageError("not an LXD image: no metadata.yaml in tarball")
        _parse_metadata(_read_no_symlinks(tmp, ["metadata.yaml"], _MAX_METADATA))
        templates = tmp / "templates"
        if os.path.lexists(templates) and (templates.is_symlink() or not templates.is_dir()):
            raise ImageError("invalid image: templates is not a directory")
        for entry in os.scandir(tmp):
            if entry.name not in _TOP_LEVEL:
                _remove(Path(entry.path))
        if progress is not None:
            progress(sum(sizes), sum(sizes))
        point("image-unpack.after-extract")
        if in_place:
            for name in sorted(os.listdir(tmp)):
                os.rename(tmp / name, dest / name)
                moved.append(dest / name)
            tmp.rmdir()
        else:
            os.chmod(tmp, 0o711)
            os.rename(tmp, dest)
        point("image-unpack.after-rename")
    except BaseException:
        for p in moved:
            _remove(p)
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


#: a lower CPU priority than the daemon's work, but not the idle class: the next launches
#: want this volume, so it must not starve behind every busy process of a loaded host
_BACKGROUND = ("nice", "-n", "10")


def unpack_image_low_priority(path: Path | str, rootfs_path: Path | str | None,
                              dest: Path | str, max_unpacked: int | None = None) -> None:
    """:func:`unpack_image` in a process of its own at a lower priority (``python -m
    lxfs.images unpack``), with the same member rules and limit: the checks run outside the
    caller's process, so they hold no lock of its interpreter either. Raises
    :class:`ImageError` with the process's reason."""
    import sys

    cmd = [*_BACKGROUND, sys.executable, "-m", "lxfs.images", "unpack", str(path), str(dest)]
    if rootfs_path is not None:
        cmd.append(f"--rootfs={rootfs_path}")
    if max_unpacked is not None:
        cmd.append(f"--max-unpacked={max_unpacked}")
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        detail = lines[-1].removeprefix("error: ") if lines else f"exit {proc.returncode}"
        raise ImageError(detail)

