"""Publishing an instance or snapshot volume as a unified image tarball."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lxfs.images.build import Compression, build_unified_tarball
from lxfs.images.format import ImageError, ImageInfo, _parse_metadata, _read_no_symlinks


def publish_volume(
    volume: Path | str,
    out: Path | str,
    architecture: str,
    properties: Mapping[str, str],
    compression: Compression = "xz",
) -> ImageInfo:
    """Build a unified image tarball from an instance or snapshot volume (``metadata.yaml``,
    ``templates/``, ``rootfs/``): tar reads ``rootfs/`` and ``templates/`` where they are,
    and the new ``metadata.yaml`` from a staging directory.

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
        fingerprint = build_unified_tarball(staging, out, compression, trees=volume)
        return ImageInfo(fingerprint=fingerprint, filename=Path(out).name,
                         size=os.stat(out).st_size, architecture=md["architecture"],
                         created_at=md["creation_date"], properties=md["properties"],
                         templates=md["templates"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
