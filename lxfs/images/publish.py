"""Publishing an instance or snapshot volume as a unified image tarball."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lxfs.images.build import Compression, build_unified_tarball
from lxfs.images.format import ImageError, ImageInfo, _parse_metadata, _read_no_symlinks


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        detail = "; ".join(err[-5:]) or f"exit status {proc.returncode}"
        raise ImageError(f"{what} failed: {detail}")


def publish_volume(
    volume: Path | str,
    out: Path | str,
    architecture: str,
    properties: Mapping[str, str],
    compression: Compression = "xz",
) -> ImageInfo:
    """Build a unified image tarball from an instance or snapshot volume (``metadata.yaml``,
    ``templates/``, ``rootfs/``) without copying the root filesystem: it is bind-mounted
    read-only into a staging directory while tar reads it.

    Returns what :func:`inspect_image` would say of it, known without reading it again: the
    fingerprint is hashed as the tarball is written and the metadata is ours. Its members
    are not checked here (tar wrote them from a directory tree); the unpack checks every
    member as it does for any image."""
    import time

    import yaml

    volume = Path(volume)
    templates: dict[str, Any] = {}
    try:
        templates = _parse_metadata(_read_no_symlinks(volume, ["metadata.yaml"]))["templates"]
    except (ImageError, OSError):
        templates = {}
    staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=Path(out).parent))
    rootfs = staging / "rootfs"
    mounted = False
    try:
        metadata = {
            "architecture": architecture,
            "creation_date": int(time.time()),
            "properties": dict(properties),
            "templates": templates,
        }
        text = yaml.safe_dump(metadata, sort_keys=True)
        md = _parse_metadata(text)  # what an import would read back: the same checks
        (staging / "metadata.yaml").write_text(text)
        if (volume / "templates").is_dir():
            _run(["cp", "-a", "--", str(volume / "templates"), str(staging / "templates")],
                 "copying templates")
        rootfs.mkdir()
        _run(["mount", "--bind", "-o", "ro", str(volume / "rootfs"), str(rootfs)],
             "bind-mounting the root filesystem")
        mounted = True
        _run(["mount", "-o", "remount,bind,ro", str(rootfs)], "making the bind read-only")
        fingerprint = build_unified_tarball(staging, out, compression)
        return ImageInfo(fingerprint=fingerprint, filename=Path(out).name,
                         size=os.stat(out).st_size, architecture=md["architecture"],
                         created_at=md["creation_date"], properties=md["properties"],
                         templates=md["templates"])
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(rootfs)], check=False, capture_output=True)
        if not os.path.ismount(rootfs):  # never delete through a bind still in place
            shutil.rmtree(staging, ignore_errors=True)
