"""Simplestreams documents of a set of images, as LXD's image servers publish them.

A simplestreams image server is a static tree: ``streams/v1/index.json`` names the products
file (``streams/v1/images.json``), which lists *products* keyed ``os:release:variant:arch``,
each with *versions* (named by a serial ``YYYYMMDD_HH:MM``, the newest wins) whose *items* are
the image's files:

- a unified image: one item of ``ftype`` ``lxd_combined.tar.gz`` (its ``sha256`` is the
  image's fingerprint);
- a split image: the metadata tarball (``ftype`` ``lxd.tar.xz``) and the rootfs
  (``squashfs`` or ``root.tar.xz``); the metadata item carries the image's fingerprint
  (the sha256 of both files) as ``combined_squashfs_sha256`` or ``combined_rootxz_sha256``
  and ``combined_sha256``.

Every item has ``path`` (relative to the tree's root), ``size`` and ``sha256``. A product's
``aliases`` are comma-separated; clients add ``ALIAS/ARCH`` themselves.

:func:`documents` builds both documents from :class:`StreamImage` entries; the tree is those
two documents plus the files at the items' paths. Only :func:`describe_files` blocks (it
hashes the files); nothing here touches the daemon.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxfs.images.format import normalize_architecture

INDEX_PATH = "streams/v1/index.json"
PRODUCTS_PATH = "streams/v1/images.json"

#: kernel architecture names as simplestreams products name them (Debian's)
STREAM_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "i386", "armv7l": "armhf",
               "ppc64le": "ppc64el", "s390x": "s390x", "riscv64": "riscv64"}


@dataclass
class StreamFile:
    """One file of an image: its kind (``meta``, ``root``), the name it is published under,
    its size and sha256, and what the rootfs is (``squashfs`` or a tarball)."""

    kind: str
    name: str
    size: int
    sha256: str
    squashfs: bool = False


@dataclass
class StreamImage:
    fingerprint: str
    architecture: str
    created_at: float
    properties: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    files: list[StreamFile] = field(default_factory=list)


def image_dir(fingerprint: str) -> str:
    """Where an image's files live in the tree."""
    return f"images/{fingerprint}"


def serial(created_at: float) -> str:
    return time.strftime("%Y%m%d_%H:%M", time.gmtime(created_at or 0))


def product_key(image: StreamImage) -> tuple[str, str, str, str]:
    """``(os, release, variant, arch)``: from the image's properties; an image without
    ``os`` is its own product (named by its fingerprint)."""
    props = image.properties
    arch = STREAM_ARCH.get(image.architecture, image.architecture)
    os_name = props.get("os", "") or "lxfs"
    release = props.get("release", "") or (image.fingerprint[:12] if "os" not in props
                                          else "current")
    return os_name, release, props.get("variant", "") or "default", arch


def documents(images: list[StreamImage], updated: float | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(index.json, images.json)`` of the images."""
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(updated or time.time()))
    products: dict[str, dict[str, Any]] = {}
    for image in sorted(images, key=lambda i: i.created_at):
        os_name, release, variant, arch = product_key(image)
        key = f"{os_name}:{release}:{variant}:{arch}"
        product = products.setdefault(key, {
            "aliases": "", "arch": arch, "os": os_name, "release": release,
            "release_title": image.properties.get("release_title", release),
            "variant": variant, "versions": {}})
        names = [a for a in product["aliases"].split(",") if a]
        for alias in image.aliases:
            if alias not in names:
                names.append(alias)
        product["aliases"] = ",".join(names)
        if image.properties.get("description"):
            product["release_title"] = product["release_title"] or image.properties["description"]
        version = serial(image.created_at)
        while version in product["versions"]:  # two images in one minute: both kept
            version += "0"
        product["versions"][version] = {"items": _items(image)}
    index = {"format": "index:1.0", "updated": stamp, "index": {"images": {
        "datatype": "image-downloads", "path": PRODUCTS_PATH, "format": "products:1.0",
        "updated": stamp, "products": sorted(products)}}}
    return index, {"content_id": "images", "datatype": "image-downloads",
                   "format": "products:1.0", "updated": stamp, "products": products}


def _items(image: StreamImage) -> dict[str, dict[str, Any]]:
    where = image_dir(image.fingerprint)
    meta = next(f for f in image.files if f.kind == "meta")
    root = next((f for f in image.files if f.kind == "root"), None)
    item = {"path": f"{where}/{meta.name}", "size": meta.size, "sha256": meta.sha256}
    if root is None:
        return {"lxd_combined.tar.gz": {"ftype": "lxd_combined.tar.gz", **item}}
    rtype = "squashfs" if root.squashfs else "root.tar.xz"
    combined = ({"combined_squashfs_sha256": image.fingerprint} if root.squashfs else
                {"combined_rootxz_sha256": image.fingerprint,
                 "combined_sha256": image.fingerprint})
    return {"lxd.tar.xz": {"ftype": "lxd.tar.xz", **item, **combined},
            rtype: {"ftype": rtype, "path": f"{where}/{root.name}", "size": root.size,
                    "sha256": root.sha256}}


_EXTENSIONS = {"gzip": ".tar.gz", "xz": ".tar.xz", "bzip2": ".tar.bz2", "zstd": ".tar.zst",
               "lzma": ".tar.lzma", "tar": ".tar", "squashfs": ".squashfs"}


def describe_files(meta: Path, rootfs: Path | None) -> list[StreamFile]:
    """An image's files as the tree publishes them (hashed: this blocks)."""
    from lxfs.images.format import _sniff

    files = []
    for kind, path in (("meta", meta), ("root", rootfs)):
        if path is None:
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        what = _sniff(path) or "tar"
        stem = ("image" if rootfs is None else "lxd") if kind == "meta" else "rootfs"
        files.append(StreamFile(kind, stem + _EXTENSIONS.get(what, ".tar"),
                                path.stat().st_size, digest.hexdigest(), what == "squashfs"))
    return files


ROOT_TYPES = ("squashfs", "root.tar.xz")  # LXD's order of preference for containers


def products_images(products: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container image of a simplestreams products document (``images.json``), as
    LXD's client reads it: fingerprint, architecture (kernel name), the product's arch name,
    serial, aliases, properties and files (``(kind, path, size, sha256)``); ``rank``: 0 for
    a squashfs rootfs, 1 for root.tar.xz, 2 for a combined tarball (LXD's preference)."""
    found = []
    for key, product in (products.get("products") or {}).items():
        if not isinstance(product, dict):
            continue
        arch_name = str(product.get("arch", ""))
        aliases = [a.strip() for a in str(product.get("aliases") or "").split(",") if a.strip()]
        for serial, version in (product.get("versions") or {}).items():
            items = version.get("items") if isinstance(version, dict) else None
            if len(serial) < 8 or not serial[:8].isdigit() or not isinstance(items, dict):
                continue
            items = {k: v for k, v in items.items() if isinstance(v, dict) and v.get("path")}
            choices = []
            for item in items.values():
                ftype = item.get("ftype")
                if ftype == "lxd_combined.tar.gz" and item.get("sha256"):
                    choices.append((2, item["sha256"], [item]))
                elif ftype == "lxd.tar.xz":
                    for rank, rtype in enumerate(ROOT_TYPES):
                        root = next((i for i in items.values() if i.get("ftype") == rtype), None)
                        fp = item.get("combined_squashfs_sha256") if rtype == "squashfs" else \
                            item.get("combined_rootxz_sha256") or item.get("combined_sha256")
                        if root is not None and fp:
                            choices.append((rank, fp, [item, root]))
            for rank, fp, files in choices:
                found.append({
                    "fingerprint": str(fp).lower(), "rank": rank, "product": key,
                    "architecture": normalize_architecture(arch_name), "arch_name": arch_name,
                    "serial": serial, "aliases": aliases,
                    "filename": str(files[0]["path"]).rsplit("/", 1)[-1],
                    "properties": {k: str(product[k]) for k in ("os", "release", "variant")
                                   if product.get(k)} | {"serial": serial},
                    "files": [(("meta", "root")[n], str(f["path"]), int(f.get("size") or 0),
                               str(f.get("sha256") or "")) for n, f in enumerate(files)]})
    return found
