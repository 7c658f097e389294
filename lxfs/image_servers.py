"""The interface of image server drivers (``lxfs_image_servers``): how the daemon finds an
image on a remote server and downloads its files. Drivers are plugins' (``simplestreams``,
``lxd``); the core picks one by the protocol name a request gives, and does the rest itself
(staging, the fingerprint check, registering the image, the cache).

For plugins, this module also re-exports ``normalize_architecture`` and the simplestreams
documents of ``lxfs.images.streams`` (``documents``, ``describe_files``, ``StreamImage``,
``StreamFile``, ``image_dir``, ``products_images``): what a driver or a server of the format
needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from lxfs.images.format import normalize_architecture
from lxfs.images.streams import (
    StreamFile,
    StreamImage,
    describe_files,
    documents,
    image_dir,
    products_images,
)

if TYPE_CHECKING:
    from lxfs.api import Host

#: ``progress(stage, done, total)``: bytes of the file being downloaded (``metadata`` or
#: ``rootfs``) so far, and its size (0 when the server does not say)
Progress = Callable[[str, int, int], None]


def progress_text(stage: str, done: int, total: int, seconds: float) -> str:
    """A download's progress as LXD words it (``rootfs: 45% (1.20MB/s)``)."""
    rate = _human(done / max(seconds, 1e-3))
    if total:
        return f"{stage}: {done * 100 // total}% ({rate}/s)"
    return f"{stage}: {_human(done)} ({rate}/s)"


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f}B" if unit == "B" else f"{n:.2f}{unit}"
        n /= 1000
    return f"{n:.2f}TB"


@dataclass
class ImageSource:
    """Where an image comes from, as LXD's ``update_source``: the server's URL, its
    protocol, the alias (or fingerprint) asked for, the server's certificate (PEM; empty:
    the system's CAs decide), and a secret for a private image (never recorded)."""

    server: str
    protocol: str
    alias: str = ""
    certificate: str = ""
    secret: str = ""

    def record(self) -> dict[str, str]:
        return {"server": self.server, "protocol": self.protocol, "alias": self.alias,
                "certificate": self.certificate}


@dataclass
class RemoteImage:
    """An image found on a server: its fingerprint, architecture (kernel name), properties,
    the server's aliases for it, and what the driver needs to download it (``files``:
    anything the driver likes, e.g. paths and sha256s)."""

    fingerprint: str
    architecture: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    public: bool = True
    filename: str = ""
    files: list[object] = field(default_factory=list)


class ImageServer:
    """A client of one image server protocol, made for one source per pull.

    Subclasses set ``protocol`` (the name users give: ``--protocol simplestreams``) and
    implement both coroutines. They run on the event loop: blocking I/O goes to worker
    threads (``trio.to_thread``), every network wait ends within ``timeout`` seconds with an
    ``lxfs.errors.LxfsError`` saying what stalled, and no download grows past ``max_size``
    bytes (the server's ``images.max_unpacked_size``: no image file is larger than what it
    unpacks to). Errors (unreachable server, no
    such image, a bad checksum) are ``LxfsError``s whose message is shown to the user.
    """

    protocol: ClassVar[str] = ""

    def __init__(self, host: Host, source: ImageSource, timeout: float,
                 max_size: int = 0) -> None:
        self.host = host
        self.source = source
        self.timeout = timeout
        self.max_size = max_size  # 0: no limit

    async def resolve(self, ref: str, architectures: list[str]) -> RemoteImage:
        """The image ``ref`` names on the server: an alias (``debian/12``), an alias with
        an architecture (``debian/12/arm64``) or a fingerprint (or a unique prefix). For
        an alias, the newest image of the first of ``architectures`` (the host's, kernel
        names) that the server has."""
        raise NotImplementedError

    async def download(self, image: RemoteImage, directory: Path, progress: Progress
                       ) -> tuple[Path, Path | None]:
        """Download the image's files into ``directory`` (the core's staging directory,
        removed whatever happens) and return the metadata (or unified) file and the
        rootfs file (None for a unified image). Check what the server publishes of each
        file (size, sha256); the core checks the fingerprint of the whole."""
        raise NotImplementedError


__all__ = ["ImageServer", "ImageSource", "Progress", "RemoteImage", "StreamFile", "StreamImage",
           "describe_files", "documents", "image_dir", "normalize_architecture",
           "products_images", "progress_text"]
