"""LXD image format: detect, inspect, unpack, render templates and build images.

Every function here blocks (the daemon runs them in threads) and none imports the daemon.

An LXD container image is either

- *unified*: one tarball (plain, gzip, xz, lzma, bzip2 or zstd) holding ``metadata.yaml``,
  ``templates/`` and ``rootfs/``; its fingerprint is the sha256 of the tarball, or
- *split*: a metadata tarball (``metadata.yaml``, ``templates/``) plus a rootfs file (a squashfs
  image, or a tarball whose top level is the root directory); its fingerprint is the sha256 of
  the metadata file's bytes followed by the rootfs file's bytes.

``metadata.yaml`` carries ``architecture``, ``creation_date`` (unix time), ``expiry_date``,
``properties`` (string map) and ``templates``.

The modules, one job each (this package re-exports their public names):

- ``format``: sniffing, tar streams, the member rules, metadata.yaml, classify and inspect;
- ``unpack``: extracting an image into a volume (GNU tar, unsquashfs, in a user namespace);
- ``templates``: the pongo2 subset and rendering templates into a rootfs;
- ``build``: deterministic unified tarballs and the command line below;
- ``publish``: an instance or snapshot volume published as an image.

Command line (used by the recipes in ``contrib/images``)::

    python -m lxfs.images build SRC_DIR OUT [--compression xz|gzip|bzip2|zstd|none] [--root-owner]
    python -m lxfs.images inspect IMAGE [ROOTFS]
    python -m lxfs.images classify FILE
    python -m lxfs.images unpack IMAGE DEST [--rootfs ROOTFS] [--max-unpacked BYTES]
"""

from lxfs.images.build import Compression, build_unified_tarball, main
from lxfs.images.format import (
    ImageError,
    ImageInfo,
    ImageTooLarge,
    Layout,
    UploadKind,
    WriteDigest,
    classify_upload,
    host_architectures,
    inspect_image,
    normalize_architecture,
)
from lxfs.images.publish import publish_volume
from lxfs.images.templates import TemplateContext, render_template_text, render_templates
from lxfs.images.unpack import unpack_image, unpack_image_low_priority

__all__ = [
    "Compression",
    "ImageError",
    "ImageInfo",
    "ImageTooLarge",
    "Layout",
    "TemplateContext",
    "UploadKind",
    "WriteDigest",
    "build_unified_tarball",
    "classify_upload",
    "host_architectures",
    "inspect_image",
    "main",
    "normalize_architecture",
    "publish_volume",
    "render_template_text",
    "render_templates",
    "unpack_image",
    "unpack_image_low_priority",
]
