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

Command line (used by the recipes in ``contrib/images``)::

    python -m lxfs.images build SRC_DIR OUT [--compression xz|gzip|bzip2|zstd|none] [--root-owner]
    python -m lxfs.images inspect IMAGE [ROOTFS]
    python -m lxfs.images classify FILE
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import dataclasses
import errno
import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Required, TypedDict

import yaml

log = logging.getLogger(__name__)

UploadKind = Literal["unified", "metadata", "squashfs"]
Compression = Literal["xz", "gzip", "bzip2", "zstd", "none"]

_CHUNK = 1 << 20
# tarfile's stream buffer: each header read copies what is left of it, so keep it small.
_TAR_BUFSIZE = 64 << 10
_MAX_METADATA = 16 << 20
_TOP_LEVEL = ("metadata.yaml", "rootfs", "templates")
# Environment variables that change what the compressors write: dropped for determinism.
_COMPRESSOR_ENV = (
    "XZ_OPT",
    "XZ_DEFAULTS",
    "GZIP",
    "BZIP",
    "BZIP2",
    "ZSTD_CLEVEL",
    "ZSTD_NBTHREADS",
)

# LXD's architecture aliases (deb, rpm and kernel names) -> the kernel name LXD reports.
_ARCH_ALIASES: dict[str, str] = {
    "amd64": "x86_64",
    "x86_64": "x86_64",
    "x64": "x86_64",
    "arm64": "aarch64",
    "aarch64": "aarch64",
    "i386": "i686",
    "i486": "i686",
    "i586": "i686",
    "i686": "i686",
    "x86": "i686",
    "armhf": "armv7l",
    "armel": "armv7l",
    "arm": "armv7l",
    "armhfp": "armv7l",
    "armv7": "armv7l",
    "armv7l": "armv7l",
    "armv7a": "armv7l",
    "armv6l": "armv6l",
    "ppc64el": "ppc64le",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "powerpc": "ppc",
    "ppc": "ppc",
    "s390x": "s390x",
    "mips": "mips",
    "mips64": "mips64",
    "mips64el": "mips64",
    "riscv64": "riscv64",
    "loong64": "loongarch64",
    "loongarch64": "loongarch64",
}


class ImageError(ValueError):
    """The file is not a usable LXD image (the message says why)."""


@dataclass
class ImageInfo:
    """What :func:`inspect_image` learns about an image.

    ``filename`` is the base name of the (metadata) file; callers that know the upload's real
    name may replace it with :func:`dataclasses.replace`.
    """

    fingerprint: str
    filename: str
    size: int
    architecture: str
    created_at: int
    properties: dict[str, str] = field(default_factory=dict)
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    expiry_date: int = 0
    split: bool = False
    type: str = "container"


def normalize_architecture(name: str) -> str:
    """Map an LXD/deb/rpm architecture name to the kernel name (amd64 -> x86_64).

    Unknown names are returned lowercased, unchanged otherwise.
    """
    key = name.strip().lower()
    return _ARCH_ALIASES.get(key, key)


# ---------------------------------------------------------------------------------------------
# Content sniffing and streaming


def _sniff(path: Path) -> str | None:
    """Return "squashfs", "gzip", "xz", "lzma", "bzip2", "zstd", "tar" or None from magic bytes."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] == b"hsqs":
        return "squashfs"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:3] == b"BZh":
        return "bzip2"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:3] == b"\x5d\x00\x00":
        return "lzma"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


# Decompressors run as subprocesses: xz decompresses multi-block files on all CPUs, and zstd has
# no module in the standard library. gzip and bzip2 are as fast in-process.
_STREAM_COMMANDS = {
    "xz": ["xz", "-T0", "-dcq", "--"],
    "zstd": ["zstd", "-dcq", "--"],
}


@contextlib.contextmanager
def _tar_stream(
    path: Path, fmt: str, sink: IO[bytes] | None = None
) -> Iterator[tuple[tarfile.TarFile, _TarFilter, Callable[[], None]]]:
    """Open ``path`` (a possibly compressed tarball) as a forward-only tarfile stream.

    Everything tarfile reads goes through a :class:`_TarFilter` (which passes accepted members
    on to ``sink`` when given). Yields the tarfile, the filter and a function to call after
    reading to the end: it checks that the decompressor saw no error (in-process
    decompressors raise while reading instead).
    """
    with contextlib.ExitStack() as stack:
        raw: IO[bytes]
        proc: subprocess.Popen[bytes] | None = None
        if fmt in _STREAM_COMMANDS:
            proc = subprocess.Popen(
                [*_STREAM_COMMANDS[fmt], str(path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert proc.stdout is not None
            raw = proc.stdout
            stack.callback(_reap, proc)
        else:
            f = stack.enter_context(open(path, "rb"))
            if fmt == "gzip":
                raw = stack.enter_context(gzip.GzipFile(fileobj=f, mode="rb"))
            elif fmt == "lzma":
                raw = stack.enter_context(lzma.LZMAFile(f, mode="rb"))
            elif fmt == "bzip2":
                raw = stack.enter_context(bz2.BZ2File(f, mode="rb"))
            else:
                raw = f

        def verify() -> None:
            if proc is None:
                return
            while raw.read(_CHUNK):
                pass
            if proc.wait() != 0:
                raise ImageError(f"not an LXD image: corrupt {fmt} data")

        flt = _TarFilter(raw, sink)
        tf = stack.enter_context(
            tarfile.open(fileobj=flt, mode="r|", bufsize=_TAR_BUFSIZE)  # type: ignore[call-overload]
        )
        yield tf, flt, verify


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdout is not None:
        proc.stdout.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait()


# Errors a corrupt or non-tar stream can raise while being read.
_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    OSError,
    EOFError,
    lzma.LZMAError,
    zlib.error,
    ValueError,
    UnicodeError,
)


# ---------------------------------------------------------------------------------------------
# Member rules: what an image tarball may contain (checked before GNU tar sees a member)

_MAX_MEMBERS = 2_000_000
_MAX_HEADER = 8 << 20  # bytes of tar headers (pax, GNU long names) for one member
_SHOWN_NAMES = 10  # names listed in a log line about skipped members
# Global pax keywords tarfile and GNU tar apply differently: refused.
_GLOBAL_PAX_REFUSED = ("path", "linkpath", "size", "GNU.sparse.")
_MEMBER_TYPES = (*tarfile.REGULAR_TYPES, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                 tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE)
_TYPE_NAMES = {tarfile.DIRTYPE: "directory", tarfile.SYMTYPE: "symlink",
               tarfile.LNKTYPE: "hard link", tarfile.FIFOTYPE: "FIFO",
               tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device"}

Layout = Literal["image", "metadata", "rootfs"]


def _show(name: str) -> str:
    """A member name as a message shows it: control characters escaped, at most 200 chars."""
    shown = name if name.isprintable() else repr(name)[1:-1]
    return shown if len(shown) <= 200 else shown[:200] + "..."


class _Shown:
    """A name shown by :func:`_show` when formatted (only error messages pay for it)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return _show(self.name)


def _rejected(why: str) -> ImageError:
    return ImageError(f"image rejected: {why}")


class _TarFilter:
    """The file object tarfile reads: it holds the bytes of each member until the member is
    judged (:meth:`decide`), then passes them to ``sink`` (GNU tar's stdin) or drops them.

    GNU tar therefore never sees a header the rules refused, nor anything after the last
    header tarfile understood. Bytes held undecided are capped (a pax header cannot grow
    memory without bound).
    """

    def __init__(self, raw: IO[bytes], sink: IO[bytes] | None) -> None:
        self.raw, self.sink = raw, sink
        self.held = bytearray()
        self.held_at = 0  # stream offset of held[0]
        self.until = 0  # bytes before this offset are decided ...
        self.passing = False  # ... and passed on (True) or dropped

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if data:
            self.held += data
            self._settle()
            if len(self.held) > _MAX_HEADER + 2 * _TAR_BUFSIZE:
                raise _rejected(f"a tar header is larger than {_MAX_HEADER >> 20} MiB")
        return data

    def _settle(self) -> None:
        n = min(self.until - self.held_at, len(self.held))
        if n <= 0:
            return
        if self.passing and self.sink is not None:
            with memoryview(self.held) as view:
                self.sink.write(view[:n])
        del self.held[:n]
        self.held_at += n

    def decide(self, member: tarfile.TarInfo, end: int, keep: bool) -> None:
        """Pass on (``keep``) or drop ``member``: its headers and data up to ``end``. Bytes
        between the previous member and this one (global pax headers) are passed on."""
        self.until, self.passing = member.offset, True
        self._settle()
        self.until, self.passing = end, keep
        self._settle()

    def finish(self, end: int) -> None:
        """Check that tarfile stopped at an end-of-archive block (or the end of the data),
        not at a header it could not read, and end GNU tar's archive."""
        block = bytes(self.held[end - self.held_at : end - self.held_at + tarfile.BLOCKSIZE])
        if block.strip(b"\0"):
            raise ImageError(f"not an LXD image: corrupt tarball (bad tar header at byte {end})")
        if self.sink is not None:
            self.sink.write(b"\0" * (2 * tarfile.BLOCKSIZE))


def _members(tf: tarfile.TarFile, flt: _TarFilter) -> Iterator[tarfile.TarInfo]:
    """The members of a stream-mode tarfile, with the stream-wide checks. The caller must
    ``flt.decide()`` each member before asking for the next one."""
    count = 0
    while (member := tf.next()) is not None:
        tf.members.clear()  # stream mode would keep every TarInfo: memory grows with members
        count += 1
        if count > _MAX_MEMBERS:
            raise _rejected(f"more than {_MAX_MEMBERS} members")
        for key in tf.pax_headers:
            if key.startswith(_GLOBAL_PAX_REFUSED):
                raise _rejected(f"a global pax header sets {_show(key)}")
        yield member
    flt.finish(tf.offset)


def _member_path(name: str, what: str) -> str:
    """Normalise a member name ("./a//b/" -> "a/b"), refusing ones that leave the image."""
    if "\0" in name:
        raise _rejected(f"{what} {_show(name)} contains a NUL byte")
    if name.startswith("/"):
        raise _rejected(f"{what} {_show(name)} is an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise _rejected(f"{what} {_show(name)} escapes the image (it contains ..)")
    return "/".join(p for p in parts if p not in ("", "."))


class _MemberPolicy:
    """The rules for the members of an image tarball, in archive order.

    ``layout`` is "image" (a unified tarball: ``metadata.yaml``, ``templates/``,
    ``rootfs/``), "metadata" (a split image's metadata tarball: no ``rootfs/``) or "rootfs"
    (a split image's rootfs tarball: everything is the root filesystem).

    - Names and hard link targets must be relative and free of ``..`` (and NUL bytes).
    - No member may be written through a symlink stored earlier (``rootfs/x -> /etc`` then
      ``rootfs/x/passwd``), nor replace an earlier symlink (GNU tar would defer or keep it).
      A hard link to a symlink is a symlink too.
    - A hard link must name a non-directory stored earlier in the same archive.
    - Only regular files, directories, symlinks, hard links, FIFOs and devices; only regular
      files carry data (tarfile and GNU tar would disagree on where the next header starts).
    - Character and block devices are left out (see :func:`unpack_image`); so are hard links
      to them and, in an image tarball, members outside the three top-level names.
    - ``metadata.yaml`` is one regular file of at most 16 MiB; ``rootfs`` and ``templates``
      are directories.

    :meth:`check` returns whether the member is extracted, or raises :class:`ImageError`.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.symlinks: set[str] = set()
        self.files: set[str] = set()  # non-directories stored so far: hard link targets
        self.left_out: set[str] = set()
        self.devices: list[str] = []
        self.ignored: list[str] = []
        self.has_metadata = False
        self.has_rootfs = False

    def check(self, member: tarfile.TarInfo) -> bool:
        path = _member_path(member.name, "member")
        shown = _Shown(member.name)
        if member.type not in _MEMBER_TYPES:
            kind = member.type.decode("latin-1")
            raise _rejected(f"member {shown} has an unsupported type {kind!r}")
        if member.size and not member.isreg():
            kind = _TYPE_NAMES.get(member.type, "special file")
            raise _rejected(f"member {shown} is a {kind} that carries data")
        parts = path.split("/") if path else []
        if self.layout == "rootfs":
            if not parts and not member.isdir():
                raise _rejected("the root of the rootfs tarball is not a directory")
        elif not self._check_top_level(member, parts):
            self.left_out.add(path)
            if path:  # "./", the volume's own directory, goes unmentioned
                self.ignored.append(path)
            return False
        slash = path.find("/")
        while slash > 0:
            if path[:slash] in self.symlinks:
                raise _rejected(f"member {shown} would be written through the symlink "
                                f"{_show(path[:slash])}")
            slash = path.find("/", slash + 1)
        if path in self.symlinks:
            raise _rejected(f"member {shown} replaces the symlink stored before it")
        if member.ischr() or member.isblk():
            self.left_out.add(path)
            self.devices.append(path)
            return False
        if member.islnk():
            target = _member_path(member.linkname, f"hard link {shown} points to")
            if target in self.left_out:
                self.left_out.add(path)
                self.devices.append(path)
                return False
            if target == path or target not in self.files:
                raise _rejected(f"hard link {shown} points to {_show(member.linkname)}, which "
                                "is not a file stored before it in the image")
            if target in self.symlinks:
                self.symlinks.add(path)
        elif member.issym():
            if "\0" in member.linkname:
                raise _rejected(f"symlink {shown} contains a NUL byte")
            self.symlinks.add(path)
        self.left_out.discard(path)
        if member.isdir():
            self.files.discard(path)
        else:
            self.files.add(path)
        return True

    def _check_top_level(self, member: tarfile.TarInfo, parts: list[str]) -> bool:
        """Check a member of an image or metadata tarball; False if it is to be ignored."""
        top = parts[0] if parts else ""
        if top not in _TOP_LEVEL:
            return False
        if top == "rootfs":
            if self.layout == "metadata":
                raise ImageError("split image: the metadata tarball must not contain rootfs/")
            self.has_rootfs = True
        if len(parts) > 1:
            return True
        if top == "metadata.yaml":
            if not member.isreg():
                raise ImageError("invalid image: metadata.yaml is not a regular file")
            if self.has_metadata:
                raise _rejected("metadata.yaml is stored twice")
            if member.size > _MAX_METADATA:
                raise ImageError("invalid image: metadata.yaml is larger than 16 MiB")
            self.has_metadata = True
        elif not member.isdir():
            raise _rejected(f"{top} is not a directory")
        return True

    def log_left_out(self, what: str) -> None:
        """Log the members that were not extracted (devices, ignored top-level names)."""
        for names, why in ((self.devices, "device nodes (and hard links to them) skipped"),
                           (self.ignored, "members outside metadata.yaml, templates/ and "
                                          "rootfs/ ignored")):
            if names:
                more = f" and {len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES else ""
                log.warning("%s: %d %s: %s%s", what, len(names), why,
                            ", ".join(_show(n) for n in names[:_SHOWN_NAMES]), more)


# ---------------------------------------------------------------------------------------------
# Scanning (classify, inspect)


@dataclass
class _Scan:
    """What one pass over a tarball learned."""

    meta: bytes | None  # metadata.yaml's bytes
    has_rootfs: bool
    complete: bool  # read to the end (the member rules saw every member)
    problem: str | None  # the first rule a member broke


_scan_lock = threading.Lock()
_scan_cache: OrderedDict[tuple[Any, ...], _Scan] = OrderedDict()


def _scan_tarball(path: Path, fmt: str, layout: Layout = "image", full: bool = True) -> _Scan:
    """Read the tarball's members through the member rules, keeping metadata.yaml.

    Without ``full``, reading stops once metadata.yaml and a rootfs/ member are both seen.
    A broken rule does not stop the scan: it is reported in ``problem`` (classify ignores it,
    inspect raises it). The last few results are cached by file identity (device, inode,
    size, mtime, ctime), so classify_upload() then inspect_image() on the same file reads it
    once when the first scan went to the end (metadata.yaml stored last).
    """
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, layout)
    with _scan_lock:
        cached = _scan_cache.get(key)
        if cached is not None and (cached.complete or not full):
            _scan_cache.move_to_end(key)
            return cached
    meta: bytes | None = None
    problem: str | None = None
    policy = _MemberPolicy(layout)
    complete = False
    with _tar_stream(path, fmt) as (tf, flt, verify):
        for member in _members(tf, flt):
            if not full and meta is not None and policy.has_rootfs:
                break  # checked at the next member: a scan that saw the last one is complete
            keep = False
            try:
                keep = policy.check(member)
            except ImageError as e:
                problem = problem or str(e)
            flt.decide(member, tf.offset, keep)
            if keep and meta is None and _member_path(member.name, "member") == "metadata.yaml":
                extracted = tf.extractfile(member)
                meta = extracted.read() if extracted is not None else b""
        else:
            verify()
            complete = True
    result = _Scan(meta, policy.has_rootfs, complete, problem)
    with _scan_lock:
        _scan_cache[key] = result
        while len(_scan_cache) > 16:
            _scan_cache.popitem(last=False)
    return result


def classify_upload(path: Path | str) -> UploadKind | None:
    """Tell what an uploaded file is from its content, or None if it is no image part.

    "squashfs" (a split image's rootfs), "unified" (a tarball with metadata.yaml and rootfs/)
    or "metadata" (a tarball with metadata.yaml and no rootfs/). Compressed tarballs are
    streamed and reading stops once both entries are seen, so an image written metadata first
    (as LXD and :func:`build_unified_tarball` write them) costs a few kilobytes of decompression.
    Whether the image is acceptable is :func:`inspect_image`'s business.
    """
    path = Path(path)
    try:
        fmt = _sniff(path)
    except OSError:
        return None
    if fmt is None:
        return None
    if fmt == "squashfs":
        return "squashfs"
    try:
        scan = _scan_tarball(path, fmt, full=False)
    except ImageError:
        return None
    except _STREAM_ERRORS:
        return None
    if scan.meta is None:
        return None
    return "unified" if scan.has_rootfs else "metadata"


# ---------------------------------------------------------------------------------------------
# metadata.yaml


def _scalar(value: Any, what: str) -> str:
    if isinstance(value, (dict, list)):
        raise ImageError(f"invalid metadata.yaml: {what} must be a string")
    return "" if value is None else str(value)


def _as_int(value: Any, what: str) -> int:
    text = _scalar(value, what).strip()
    if text in ("", "~", "null"):
        return 0
    try:
        return int(text)
    except ValueError:
        raise ImageError(f"invalid metadata.yaml: {what} is not an integer: {text!r}") from None


def _as_bool(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "yes", "on", "y", "1")


def _string_map(value: Any, what: str) -> dict[str, str]:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise ImageError(f"invalid metadata.yaml: {what} must be a mapping")
    return {str(k): _scalar(v, f"{what}.{k}") for k, v in value.items()}


def _check_template_name(name: str) -> None:
    parts = name.split("/")
    if (not name or name.startswith("/") or "\0" in name
            or any(p in ("", ".", "..") for p in parts)):
        raise ImageError(f"invalid metadata.yaml: bad template file name {name!r}")


# metadata.yaml bounds: real files have a few dozen nodes, 4 levels deep and no aliases.
_YAML_MAX_NODES = 100_000  # counting each alias as the nodes it stands for
_YAML_MAX_ALIASES = 1_000
_YAML_MAX_DEPTH = 32
# libyaml's parser when PyYAML has it (a 16 MiB file takes seconds in pure Python).
_YamlLoader: Any = getattr(yaml, "CBaseLoader", yaml.BaseLoader)


def _check_yaml_shape(events: Iterator[yaml.Event]) -> None:
    """Refuse a YAML document that is too large once its aliases are expanded ("billion
    laughs"), has too many aliases or is nested too deeply, before anything builds it."""
    anchored: dict[str, int] = {}  # anchor -> nodes it stands for
    open_nodes: list[list[Any]] = []  # [anchor, nodes so far] per open collection
    nodes = aliases = 0
    for event in events:
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > _YAML_MAX_ALIASES:
                raise ImageError(f"invalid metadata.yaml: more than {_YAML_MAX_ALIASES} aliases")
            size = anchored.get(event.anchor or "", 1)
        elif isinstance(event, yaml.ScalarEvent):
            size = 1
            if event.anchor:
                anchored[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            open_nodes.append([event.anchor, 1])
            if len(open_nodes) > _YAML_MAX_DEPTH:
                raise ImageError(f"invalid metadata.yaml: nested deeper than {_YAML_MAX_DEPTH}")
            nodes += 1
            continue
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, size = open_nodes.pop()
            if anchor:
                anchored[anchor] = size
            if open_nodes:
                open_nodes[-1][1] += size
            continue
        else:
            continue
        nodes += size
        if open_nodes:
            open_nodes[-1][1] += size
        if nodes > _YAML_MAX_NODES:
            raise ImageError(f"invalid metadata.yaml: more than {_YAML_MAX_NODES} nodes "
                             "(aliases expanded)")


def _load_metadata_yaml(data: bytes | str) -> Any:
    """Load metadata.yaml with every scalar as text (as LXD does), within the bounds above."""
    if len(data) > _MAX_METADATA:
        raise ImageError("invalid image: metadata.yaml is larger than 16 MiB")
    try:
        _check_yaml_shape(yaml.parse(data, Loader=_YamlLoader))
        return yaml.load(data, Loader=_YamlLoader)
    except yaml.YAMLError as e:
        raise ImageError(f"invalid metadata.yaml: {' '.join(str(e).split())}") from None


def _parse_metadata(data: bytes | str) -> dict[str, Any]:
    """Parse metadata.yaml into normalised fields (all scalars read as text, as LXD does)."""
    doc = _load_metadata_yaml(data)
    if not isinstance(doc, dict):
        raise ImageError("invalid metadata.yaml: not a mapping")
    arch = _scalar(doc.get("architecture"), "architecture").strip()
    if not arch:
        raise ImageError("invalid metadata.yaml: no architecture")
    templates: dict[str, dict[str, Any]] = {}
    raw_templates = doc.get("templates") or {}
    if not isinstance(raw_templates, dict):
        raise ImageError("invalid metadata.yaml: templates must be a mapping")
    for target, spec in raw_templates.items():
        if not isinstance(target, str) or not target.strip("/") or "\0" in target:
            raise ImageError(f"invalid metadata.yaml: bad template target {target!r}")
        if not isinstance(spec, dict):
            raise ImageError(f"invalid metadata.yaml: template for {target} must be a mapping")
        when = spec.get("when") or []
        if isinstance(when, str):
            when = [when]
        if not isinstance(when, list):
            raise ImageError(f"invalid metadata.yaml: templates.{target}.when must be a list")
        name = _scalar(spec.get("template"), f"templates.{target}.template").strip()
        _check_template_name(name)
        templates[str(target)] = {
            "when": [_scalar(w, f"templates.{target}.when") for w in when],
            "template": name,
            "create_only": _as_bool(spec.get("create_only", "false")),
            "properties": _string_map(spec.get("properties"), f"templates.{target}.properties"),
        }
    return {
        "architecture": normalize_architecture(arch),
        "creation_date": _as_int(doc.get("creation_date"), "creation_date"),
        "expiry_date": _as_int(doc.get("expiry_date"), "expiry_date"),
        "properties": _string_map(doc.get("properties"), "properties"),
        "templates": templates,
    }


# ---------------------------------------------------------------------------------------------
# inspect


def _sha256_files(*paths: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
    return h.hexdigest()


def _checked_scan(path: Path, fmt: str, layout: Layout) -> _Scan:
    """Scan a whole tarball; raise the first member rule it breaks."""
    try:
        scan = _scan_tarball(path, fmt, layout)
    except _STREAM_ERRORS as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"not an LXD image: cannot read the {fmt} tarball: {e}") from None
    if scan.problem:
        raise ImageError(scan.problem)
    return scan


def inspect_image(path: Path | str, rootfs_path: Path | str | None = None) -> ImageInfo:
    """Read an image's metadata and compute its fingerprint as LXD does.

    ``path`` is a unified tarball, or (with ``rootfs_path``) a split image's metadata tarball.
    Every member is checked against the rules :func:`unpack_image` applies (a squashfs rootfs
    is listed by unsquashfs), so a hostile image is refused here, at import. Raises
    :class:`ImageError` when the files do not form an acceptable LXD container image.
    """
    path = Path(path)
    fmt = _sniff(path)
    if fmt is None:
        if path.stat().st_size == 0:
            raise ImageError("not an LXD image: the file is empty")
        raise ImageError("not an LXD image: neither a tarball nor a squashfs image")
    if fmt == "squashfs":
        raise ImageError(
            "not an LXD image on its own: this squashfs is a split image's rootfs; "
            "it needs its metadata tarball"
        )
    scan = _checked_scan(path, fmt, "image")
    if scan.meta is None:
        raise ImageError("not an LXD image: no metadata.yaml in tarball")
    files = [path]
    if rootfs_path is None:
        if not scan.has_rootfs:
            raise ImageError(
                "split image: this metadata tarball has no rootfs/; upload its rootfs file too"
            )
    else:
        rootfs_path = Path(rootfs_path)
        if scan.has_rootfs:
            raise ImageError("split image: the metadata tarball must not contain rootfs/")
        rootfs_fmt = _sniff(rootfs_path)
        if rootfs_fmt == "squashfs":
            _check_squashfs(rootfs_path)
        elif rootfs_fmt in _TAR_FORMATS:
            _checked_scan(rootfs_path, rootfs_fmt, "rootfs")
        else:
            raise ImageError("split image: the rootfs file is neither squashfs nor a tarball")
        files.append(rootfs_path)
    md = _parse_metadata(scan.meta)
    return ImageInfo(
        fingerprint=_sha256_files(*files),
        filename=path.name,
        size=sum(p.stat().st_size for p in files),
        architecture=md["architecture"],
        created_at=md["creation_date"],
        properties=md["properties"],
        templates=md["templates"],
        expiry_date=md["expiry_date"],
        split=rootfs_path is not None,
        type="container",
    )


# ---------------------------------------------------------------------------------------------
# unpack


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        detail = "; ".join(err[-5:]) or f"exit status {proc.returncode}"
        raise ImageError(f"{what} failed: {detail}")


_TAR_FORMATS = ("gzip", "xz", "lzma", "bzip2", "zstd", "tar")
# Environment variables that change what GNU tar does (TAR_OPTIONS can add any option).
_TOOL_ENV_DROPPED = ("TAR_OPTIONS", "POSIXLY_CORRECT", "TAPE")
# The exit status of the contained command, printed by the shell that runs it.
_STATUS_WRAPPER = '"$@" >/dev/null; echo "$?"'
# unsquashfs 4.5 refuses names holding "/" or "..", 4.5.1 duplicate names (CVE-2021-40153,
# CVE-2021-41072: writing outside the destination, directly or through a symlink).
_UNSQUASHFS_SAFE = (4, 5, 1)
_UNSQUASHFS_DEVICE = re.compile(r"create_inode: failed to create (?:character|block) device (.*), "
                                r"because ")
_UNSQUASHFS_XATTR = re.compile(r"write_xattr: failed to write xattr (?:trusted|security)\.")


def _tool_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _TOOL_ENV_DROPPED}
    env["LC_ALL"] = "C"
    return env


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


def _extract_tarball(archive: Path, fmt: str, dest: Path, layout: Layout) -> None:
    """Extract a tarball into ``dest``: GNU tar (contained, see :func:`_contained`) reads the
    archive from us, member by member, once :class:`_MemberPolicy` has accepted each one.

    GNU tar's options, on purpose: numeric owners, modes with setuid bits and xattrs as
    stored (containment is the storage directory's business); ``--delay-directory-restore``
    so directory modes are set after their content whatever the member order; no
    ``--keep-directory-symlink``, ``--absolute-names`` or ``--overwrite`` (its own refusal
    of ``..``, its stripping of "/" and its deferral of outward symlinks stay on as a
    second line); no ``--no-overwrite-dir`` either: ``dest`` is a fresh directory of ours,
    and only a rootfs tarball's "./" (the container's "/") may set its mode. TAR_OPTIONS
    is dropped from the environment.
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
                    flt.decide(member, tf.offset, policy.check(member))
                verify()
        except BrokenPipeError:  # tar gave up: its stderr says why
            raise _failure(what, *_wait_contained(proc, err)) from None
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


_unsquashfs_checked = False


def _check_unsquashfs() -> None:
    """Refuse to read untrusted squashfs images with an unsquashfs older than 4.5.1."""
    global _unsquashfs_checked
    if _unsquashfs_checked:
        return
    proc = subprocess.run(["unsquashfs", "-version"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=_tool_env())
    found = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", proc.stdout)
    version = tuple(int(n or 0) for n in found.groups()) if found else ()
    if version < _UNSQUASHFS_SAFE:
        shown = ".".join(map(str, version)) or "unknown"
        raise ImageError(f"cannot unpack squashfs images safely: unsquashfs {shown} is older "
                         "than 4.5.1")
    _unsquashfs_checked = True


def _check_squashfs(path: Path) -> None:
    """List a squashfs rootfs: unsquashfs refuses the names it would not extract safely."""
    _check_unsquashfs()
    proc = subprocess.run(["unsquashfs", "-no-progress", "-l", str(path)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=_tool_env())
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise _rejected(f"its rootfs is not a valid squashfs: {lines[0] if lines else ''}")


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


def unpack_image(path: Path | str, rootfs_path: Path | str | None, dest: Path | str) -> None:
    """Unpack an image into ``dest``: ``metadata.yaml``, ``templates/`` and ``rootfs/``.

    ``dest`` must not exist (it is created, mode 0711), or be an empty directory (for example a
    freshly made btrfs subvolume, kept with its mode). Everything is unpacked into a temporary
    directory first (beside ``dest``, or inside it when it exists) and renamed into place at
    the end, so a failure leaves nothing half-written. Raises :class:`ImageError` for bad
    images and :class:`FileExistsError` when ``dest`` is not empty.

    Image content is untrusted: tarball members are checked by :class:`_MemberPolicy` before
    GNU tar sees them, a squashfs is read by unsquashfs >= 4.5.1, and both tools run in an
    identity-mapped user namespace. Device nodes are skipped (with a log line naming them),
    as LXD does when it cannot create them: containers get their /dev from LXC, and no
    device node of an image lands on the host's disk. Members outside ``metadata.yaml``,
    ``templates/`` and ``rootfs/`` are ignored. Setuid files, FIFOs, absolute symlinks and
    hard links between the image's own files are kept.
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
    try:
        _extract_tarball(path, fmt, tmp, "image" if rootfs_path is None else "metadata")
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
                _extract_squashfs(rootfs_path, rootfs)
            else:
                rootfs.mkdir(mode=0o755)
                _extract_tarball(rootfs_path, rootfs_fmt, rootfs, "rootfs")
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
        if in_place:
            for name in sorted(os.listdir(tmp)):
                os.rename(tmp / name, dest / name)
                moved.append(dest / name)
            tmp.rmdir()
        else:
            os.chmod(tmp, 0o711)
            os.rename(tmp, dest)
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


# ---------------------------------------------------------------------------------------------
# templates


class TemplateContext(TypedDict, total=False):
    """The instance facts :func:`render_templates` exposes to templates.

    Only ``name`` is required. ``config`` is the instance's expanded configuration
    (``user.*``, ``limits.*``...), ``devices`` its expanded devices (name -> key -> value).
    """

    name: Required[str]
    architecture: str
    privileged: bool
    ephemeral: bool
    config: Mapping[str, str]
    devices: Mapping[str, Mapping[str, str]]


class _TemplateSyntaxError(Exception):
    pass


_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<num>\d+(?:\.\d+)?)
      | (?P<op>==|!=|<>|<=|>=|&&|\|\||[<>!().,:|\[\]])
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


def _tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if not m or m.end() == pos:
            raise _TemplateSyntaxError(f"cannot parse {expr[pos:]!r}")
        kind = m.lastgroup
        assert kind is not None
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


_UNDEFINED = None


def _to_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value != ""
    return bool(value)


def _unescape(literal: str) -> str:
    body = literal[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _string_format(fmt: str, value: Any) -> str:
    """``|stringformat``: one printf conversion, with a width/precision of at most 4 digits
    (a template must not make the daemon build gigabyte strings)."""
    if re.search(r"\d{5}", fmt):
        raise _TemplateSyntaxError(f"stringformat {fmt!r}: width too large")
    try:
        return fmt % (value,)
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise _TemplateSyntaxError(f"stringformat {fmt!r}: {e}") from None


_FILTERS: dict[str, Callable[..., Any]] = {
    "default": lambda v, d="": v if _truthy(v) else d,
    "lower": lambda v: _to_text(v).lower(),
    "upper": lambda v: _to_text(v).upper(),
    "capfirst": lambda v: _to_text(v)[:1].upper() + _to_text(v)[1:],
    "title": lambda v: _to_text(v).title(),
    "trim": lambda v: _to_text(v).strip(),
    "length": lambda v: len(v) if v is not None else 0,
    "safe": lambda v: v,
    "escape": lambda v: v,
    "stringformat": lambda v, fmt="%s": _string_format(_to_text(fmt), v),
}


class _Expr:
    """Recursive-descent evaluator for the pongo2 expression subset (see render_templates)."""

    def __init__(self, tokens: list[tuple[str, str]], ctx: Mapping[str, Any]) -> None:
        self.tokens, self.pos, self.ctx = tokens, 0, ctx

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise _TemplateSyntaxError(f"expected {value or 'more'}, got {tok}")
        self.pos += 1
        return tok

    def accept(self, *values: str) -> str | None:
        tok = self.peek()
        if tok is not None and tok[0] in ("op", "name") and tok[1] in values:
            self.pos += 1
            return tok[1]
        return None

    def evaluate(self) -> Any:
        value = self.or_expr()
        if self.peek() is not None:
            raise _TemplateSyntaxError(f"unexpected {self.peek()}")
        return value

    def or_expr(self) -> Any:
        value = self.and_expr()
        while self.accept("or", "||"):
            right = self.and_expr()
            value = value if _truthy(value) else right
        return value

    def and_expr(self) -> Any:
        value = self.not_expr()
        while self.accept("and", "&&"):
            right = self.not_expr()
            value = right if _truthy(value) else value
        return value

    def not_expr(self) -> Any:
        if self.accept("not", "!"):
            return not _truthy(self.not_expr())
        return self.comparison()

    def comparison(self) -> Any:
        left = self.filtered()
        op = self.accept("==", "!=", "<>", "<", ">", "<=", ">=", "in")
        if op is None:
            return left
        right = self.filtered()
        if op == "in":
            return right is not None and left in right
        if op in ("==", "!=", "<>"):
            equal = (
                _to_text(left) == _to_text(right)
                if type(left) is not type(right)
                else (left == right)
            )
            return equal if op == "==" else not equal
        try:
            a, b = float(left), float(right)
        except (TypeError, ValueError):
            a, b = _to_text(left), _to_text(right)  # type: ignore[assignment]
        return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]

    def filtered(self) -> Any:
        value = self.atom()
        while self.accept("|"):
            _, fname = self.take()
            if fname not in _FILTERS:
                raise _TemplateSyntaxError(f"unsupported filter {fname!r}")
            args = [self.atom()] if self.accept(":") else []
            value = _FILTERS[fname](value, *args)
        return value

    def atom(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            return _unescape(text)
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "op" and text == "(":
            value = self.or_expr()
            self.take(")")
            return value
        if kind != "name":
            raise _TemplateSyntaxError(f"unexpected {text!r}")
        if text in ("true", "True"):
            return True
        if text in ("false", "False"):
            return False
        if text in ("nil", "none", "None"):
            return None
        if self.accept("("):
            args: list[Any] = []
            if not self.accept(")"):
                args.append(self.or_expr())
                while self.accept(","):
                    args.append(self.or_expr())
                self.take(")")
            func = self.ctx.get(text)
            if not callable(func):
                raise _TemplateSyntaxError(f"unsupported function {text!r}")
            return func(*args)
        value = self.ctx.get(text, _UNDEFINED)
        while True:
            if self.accept("."):
                _, key = self.take()
                value = _lookup(value, key)
            elif self.accept("["):
                key = self.or_expr()
                self.take("]")
                value = _lookup(value, key)
            else:
                return value


def _lookup(value: Any, key: Any) -> Any:
    if isinstance(value, Mapping):
        return value.get(key if isinstance(key, str) else _to_text(key))
    if isinstance(value, (list, tuple, str)) and isinstance(key, int):
        return value[key] if -len(value) <= key < len(value) else None
    return None


def _eval(expr: str, ctx: Mapping[str, Any]) -> Any:
    try:
        return _Expr(_tokenize(expr), ctx).evaluate()
    except RecursionError:
        raise _TemplateSyntaxError("expression nested too deeply") from None


_TAG_RE = re.compile(r"\{\{(?P<var>.*?)\}\}|\{%(?P<tag>.*?)%\}|\{#.*?#\}", re.DOTALL)


def _lex_template(text: str) -> list[tuple[str, str, str]]:
    """Split a template into ("text", s, raw), ("var", expr, raw) and ("tag", body, raw)."""
    parts: list[tuple[str, str, str]] = []
    pos = 0
    trim_next = False
    for m in _TAG_RE.finditer(text):
        chunk = text[pos : m.start()]
        raw = m.group(0)
        inner = m.group("var") if m.group("var") is not None else m.group("tag")
        if inner is not None and inner.startswith("-"):
            chunk = chunk.rstrip()
        if trim_next:
            chunk = chunk.lstrip()
        parts.append(("text", chunk, chunk))
        trim_next = inner is not None and inner.endswith("-")
        if inner is not None:
            inner = inner.strip("-").strip()
            parts.append(("var" if m.group("var") is not None else "tag", inner, raw))
        pos = m.end()
    tail = text[pos:]
    parts.append(("text", tail.lstrip() if trim_next else tail, tail))
    return parts


def _render_parts(parts: list[tuple[str, str, str]], ctx: Mapping[str, Any], where: str) -> str:
    """Render lexed parts; if/elif/else/endif are evaluated, unknown syntax is kept verbatim."""
    out: list[str] = []
    # Each frame: [any branch taken so far, this branch active, parent active, verbatim if-block]
    stack: list[list[bool]] = []

    def active() -> bool:
        return not stack or stack[-1][1]

    for kind, body, raw in parts:
        if kind == "text":
            if active():
                out.append(body)
            continue
        if kind == "var":
            if not active():
                continue
            try:
                out.append(_to_text(_eval(body, ctx)))
            except _TemplateSyntaxError as e:
                log.warning("template %s: %s; kept verbatim: %s", where, e, raw)
                out.append(raw)
            continue
        word, _, rest = body.partition(" ")
        if word == "if":
            parent = active()
            try:
                cond = parent and _truthy(_eval(rest, ctx))
                stack.append([cond, cond, parent, False])
            except _TemplateSyntaxError as e:
                log.warning("template %s: %s; kept verbatim: %s", where, e, raw)
                stack.append([True, parent, parent, True])
                if parent:
                    out.append(raw)
        elif word in ("elif", "else") and stack:
            frame = stack[-1]
            if frame[3]:
                if frame[2]:
                    out.append(raw)
                continue
            if frame[0] or not frame[2]:
                frame[1] = False
            elif word == "else":
                frame[0] = frame[1] = True
            else:
                try:
                    cond = _truthy(_eval(rest, ctx))
                except _TemplateSyntaxError as e:
                    raise ImageError(f"template {where}: {e} in {raw}") from None
                frame[0] = frame[1] = cond
        elif word == "endif" and stack:
            frame = stack.pop()
            if frame[3] and frame[2]:
                out.append(raw)
        else:
            if word not in ("autoescape", "endautoescape"):
                log.warning("template %s: unsupported tag kept verbatim: %s", where, raw)
                if active():
                    out.append(raw)
    if stack:
        raise ImageError(f"template {where}: {{% if %}} without {{% endif %}}")
    return "".join(out)


def render_template_text(text: str, ctx: Mapping[str, Any], where: str = "<string>") -> str:
    """Render one template string with a ready pongo2-style context (see render_templates)."""
    return _render_parts(_lex_template(text), ctx, where)


def _template_context(
    context: TemplateContext, trigger: str, path: str, properties: Mapping[str, str]
) -> dict[str, Any]:
    config = dict(context.get("config") or {})
    instance = {
        "name": context["name"],
        "architecture": context.get("architecture", ""),
        "privileged": bool(context.get("privileged", False)),
        "ephemeral": bool(context.get("ephemeral", False)),
    }

    def config_get(key: Any, default: Any = None) -> Any:
        value = config.get(_to_text(key))
        return default if value is None else value.rstrip("\r\n")

    return {
        "trigger": trigger,
        "path": path,
        "container": instance,
        "instance": instance,
        "config": config,
        "devices": {k: dict(v) for k, v in (context.get("devices") or {}).items()},
        "properties": dict(properties),
        "config_get": config_get,
    }


def _open_dir_in_root(root: Path, parts: list[str], uid: int, gid: int) -> int:
    """Open the directory ``parts`` inside ``root`` as if ``root`` were "/" (chroot semantics).

    Symlinks are resolved against ``root`` (an absolute link restarts there, ``..`` stops at
    it), so a container's symlinks can never lead outside its rootfs. Missing directories are
    created (0755, owned uid:gid). Returns an fd the caller closes.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    stack = [os.open(root, flags)]
    pending = list(parts)
    hops = 0
    try:
        while pending:
            comp = pending.pop(0)
            if comp in ("", "."):
                continue
            if comp == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            cur = stack[-1]
            try:
                link = os.readlink(comp, dir_fd=cur)
            except FileNotFoundError:
                os.mkdir(comp, 0o755, dir_fd=cur)
                os.chown(comp, uid, gid, dir_fd=cur, follow_symlinks=False)
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: exists and is not a symlink
                    raise
            else:
                hops += 1
                if hops > 40:
                    raise OSError(errno.ELOOP, "too many symlinks", comp)
                if link.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                pending = link.split("/") + pending
                continue
            stack.append(os.open(comp, flags, dir_fd=cur))
        fd = stack.pop()
        return fd
    finally:
        for fd in stack:
            os.close(fd)


def _read_no_symlinks(base: Path, parts: list[str], limit: int = _MAX_METADATA) -> bytes:
    """Read ``base/parts...`` refusing symlinks on the way (ELOOP): an image's templates/ must
    not lead to host files. Files larger than ``limit`` bytes are refused too."""
    dflags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(base, dflags)
    try:
        for comp in parts[:-1]:
            nfd = os.open(comp, dflags, dir_fd=fd)
            os.close(fd)
            fd = nfd
        ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        with os.fdopen(ffd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise OSError(errno.EISDIR, "not a regular file", parts[-1])
            data = f.read(limit + 1)
            if len(data) > limit:
                raise ImageError(f"{'/'.join(parts)} is larger than {limit >> 20} MiB")
            return data
    finally:
        os.close(fd)


def _write_in_root(
    root: Path, target: str, content: bytes, create_only: bool, uid: int, gid: int
) -> bool:
    """Write ``content`` to ``target`` (a path inside the rootfs) by write-then-rename.

    Returns False when nothing was written (create_only and the file exists, or the target is
    a directory or a special file).
    """
    parts = [p for p in target.split("/") if p not in ("", ".")]
    if not parts or parts[-1] == "..":
        raise ImageError(f"template target {target!r} is not a file path")
    dfd = _open_dir_in_root(root, parts[:-1], uid, gid)
    name = parts[-1]
    try:
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            if create_only:
                return False
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                log.warning("template target %s is not a regular file; left alone", target)
                return False
        mode, owner = 0o644, (uid, gid)
        if st is not None and stat.S_ISREG(st.st_mode):
            mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
        tmp = f".{name}.lxfs-{secrets.token_hex(4)}"
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dfd,
        )
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
                os.fchown(f.fileno(), *owner)
                os.fchmod(f.fileno(), mode)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        return True
    finally:
        os.close(dfd)


def render_templates(volume_dir: Path | str, trigger: str, context: TemplateContext) -> None:
    """Apply the image templates of ``volume_dir`` whose ``when`` list contains ``trigger``.

    ``volume_dir`` holds ``metadata.yaml``, ``templates/`` and ``rootfs/`` (as written by
    :func:`unpack_image`). ``trigger`` is "create", "copy" or "start". ``context`` is a
    :class:`TemplateContext`, e.g. ``{"name": "c1", "config": {"user.foo": "bar"}}``.

    Each matching ``templates/NAME.tpl`` is rendered into ``rootfs/PATH`` through a temporary
    file and a rename. An existing file keeps its mode and owner; a new one gets 0644 and the
    owner of ``rootfs/`` itself (so shifted unprivileged rootfs stay consistent), and so do
    missing parent directories (0755). ``create_only`` templates never replace an existing
    path. Paths are resolved inside the rootfs as in a chroot: symlinks cannot lead out of it.

    Template language: the pongo2 subset LXD images use.

    - ``{{ expr }}`` prints a value; undefined values print as "".
    - Values: ``container.name``/``instance.name`` (also ``.architecture``, ``.privileged``,
      ``.ephemeral``), ``properties.KEY`` (the template's properties), ``config.KEY`` or
      ``config["key.with.dots"]``, ``devices.NAME.KEY``, ``trigger``, ``path``,
      ``config_get("key", "default")`` (the instance config value, trailing newlines removed,
      or the default), string/number literals, true/false/none.
    - Operators: ``==``, ``!=``, ``<``, ``>``, ``<=``, ``>=``, ``in``, ``and``/``&&``,
      ``or``/``||``, ``not``/``!``, parentheses; filters ``|default:"x"``, ``|lower``,
      ``|upper``, ``|capfirst``, ``|title``, ``|trim``, ``|length``, ``|safe``, ``|escape``
      (no HTML escaping at all: LXD renders with autoescape off).
    - Tags: ``{% if %}``/``{% elif %}``/``{% else %}``/``{% endif %}`` (nestable),
      ``{% autoescape %}`` (ignored), ``{# comments #}``, and ``{%-``/``-%}`` trimming.
    - Anything else (``{% for %}``, ``{% set %}``, an expression that cannot be parsed) is
      copied to the output verbatim and logged; an ``{% if %}`` whose condition cannot be
      parsed is kept with both branches. An unparseable ``{% elif %}`` condition or a missing
      ``{% endif %}`` raises :class:`ImageError`.
    """
    volume_dir = Path(volume_dir)
    md = _parse_metadata(_read_no_symlinks(volume_dir, ["metadata.yaml"]))
    rootfs = volume_dir / "rootfs"
    root_st = os.stat(rootfs, follow_symlinks=False)
    if not stat.S_ISDIR(root_st.st_mode):
        raise ImageError(f"{rootfs} is not a directory")
    for target in sorted(md["templates"]):
        spec = md["templates"][target]
        if trigger not in spec["when"]:
            continue
        try:
            data = _read_no_symlinks(volume_dir, ["templates", *spec["template"].split("/")])
        except FileNotFoundError:
            raise ImageError(f"template {spec['template']} for {target} is missing") from None
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
                raise
            raise ImageError(
                f"template {spec['template']} for {target} is not a regular file"
            ) from None
        text = data.decode("utf-8", errors="surrogateescape")
        ctx = _template_context(context, trigger, target, spec["properties"])
        rendered = render_template_text(text, ctx, spec["template"])
        _write_in_root(
            rootfs,
            target,
            rendered.encode("utf-8", errors="surrogateescape"),
            spec["create_only"],
            root_st.st_uid,
            root_st.st_gid,
        )


# ---------------------------------------------------------------------------------------------
# build


_COMPRESSORS: dict[str, list[str]] = {
    # Multi-threaded xz (-T0) writes the same blocks whatever the thread count (xz >= 5.4).
    "xz": ["xz", "-6", "-T0", "-c"],
    "gzip": ["gzip", "-n", "-6", "-c"],
    "bzip2": ["bzip2", "-9", "-c"],
    "zstd": ["zstd", "-q", "-12", "-T0", "-c", "--no-progress"],
}


def build_unified_tarball(
    src_dir: Path | str,
    out: Path | str,
    compression: Compression = "xz",
    *,
    root_owner: bool = False,
) -> None:
    """Pack ``src_dir`` (metadata.yaml, rootfs/, templates/) into a unified image tarball.

    The output is deterministic: names sorted, pax format without atime/ctime, mtimes clamped
    to metadata.yaml's ``creation_date``, numeric owners as on disk (all 0:0 with
    ``root_owner``), xattrs kept, and compressors run without name/time stamps and without
    environment overrides. The same inputs therefore give the same sha256. ``out`` is written
    through a temporary file beside it and renamed at the end.
    """
    src_dir, out = Path(src_dir), Path(out)
    meta = src_dir / "metadata.yaml"
    if not meta.is_file():
        raise ImageError(f"cannot build an image: no metadata.yaml in {src_dir}")
    if not (src_dir / "rootfs").is_dir():
        raise ImageError(f"cannot build an image: no rootfs/ in {src_dir}")
    if compression != "none" and compression not in _COMPRESSORS:
        raise ValueError(f"unknown compression {compression!r}")
    md = _parse_metadata(meta.read_bytes())
    members = [n for n in _TOP_LEVEL if os.path.lexists(src_dir / n)]
    tar_cmd = [
        "tar",
        "-c",
        "-f",
        "-",
        "-C",
        str(src_dir),
        "--format=posix",
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        "--sort=name",
        "--numeric-owner",
        f"--mtime=@{md['creation_date']}",
        "--clamp-mtime",
        "--xattrs",
        "--xattrs-include=*",
    ]
    if root_owner:
        tar_cmd += ["--owner=0", "--group=0"]
    tar_cmd += ["--", *members]
    env = {k: v for k, v in os.environ.items() if k not in _COMPRESSOR_ENV}
    env["LC_ALL"] = "C"
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as outf,
            tempfile.TemporaryFile() as tar_err,
            tempfile.TemporaryFile() as comp_err,
        ):
            if compression == "none":
                tar = subprocess.Popen(
                    tar_cmd, stdout=outf, stderr=tar_err, env=env, stdin=subprocess.DEVNULL
                )
                comp = None
            else:
                tar = subprocess.Popen(
                    tar_cmd,
                    stdout=subprocess.PIPE,
                    stderr=tar_err,
                    env=env,
                    stdin=subprocess.DEVNULL,
                )
                comp = subprocess.Popen(
                    _COMPRESSORS[compression],
                    stdin=tar.stdout,
                    stdout=outf,
                    stderr=comp_err,
                    env=env,
                )
                assert tar.stdout is not None
                tar.stdout.close()
            tar_rc = tar.wait()
            comp_rc = comp.wait() if comp is not None else 0
            for rc, errf, what in ((tar_rc, tar_err, "tar"), (comp_rc, comp_err, compression)):
                if rc != 0:
                    errf.seek(0)
                    lines = errf.read().decode(errors="replace").strip().splitlines()
                    raise ImageError(
                        f"building {out.name}: {what} failed: "
                        + ("; ".join(lines[-5:]) or f"exit status {rc}")
                    )
            outf.flush()
            os.fsync(outf.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


# ---------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    """``python -m lxfs.images build|inspect|classify ...`` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m lxfs.images", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_build = sub.add_parser("build", help="pack SRC_DIR into a deterministic unified tarball")
    p_build.add_argument("src", type=Path)
    p_build.add_argument("out", type=Path)
    p_build.add_argument("--compression", default="xz", choices=[*_COMPRESSORS, "none"])
    p_build.add_argument("--root-owner", action="store_true", help="store every file as 0:0")
    p_inspect = sub.add_parser("inspect", help="print an image's metadata as JSON")
    p_inspect.add_argument("image", type=Path)
    p_inspect.add_argument("rootfs", type=Path, nargs="?")
    p_classify = sub.add_parser("classify", help="print unified, metadata, squashfs or none")
    p_classify.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            build_unified_tarball(args.src, args.out, args.compression, root_owner=args.root_owner)
            print(inspect_image(args.out).fingerprint)
        elif args.cmd == "inspect":
            info = inspect_image(args.image, args.rootfs)
            print(json.dumps(dataclasses.asdict(info), indent=2, sort_keys=True))
        else:
            print(classify_upload(args.file) or "none")
    except (ImageError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def publish_volume(
    volume: Path | str,
    out: Path | str,
    architecture: str,
    properties: Mapping[str, str],
    compression: Compression = "xz",
) -> None:
    """Build a unified image tarball from an instance or snapshot volume (``metadata.yaml``,
    ``templates/``, ``rootfs/``) without copying the root filesystem: it is bind-mounted
    read-only into a staging directory while tar reads it."""
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
        (staging / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=True))
        if (volume / "templates").is_dir():
            _run(["cp", "-a", "--", str(volume / "templates"), str(staging / "templates")],
                 "copying templates")
        rootfs.mkdir()
        _run(["mount", "--bind", "-o", "ro", str(volume / "rootfs"), str(rootfs)],
             "bind-mounting the root filesystem")
        mounted = True
        _run(["mount", "-o", "remount,bind,ro", str(rootfs)], "making the bind read-only")
        build_unified_tarball(staging, out, compression)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(rootfs)], check=False, capture_output=True)
        if not os.path.ismount(rootfs):  # never delete through a bind still in place
            shutil.rmtree(staging, ignore_errors=True)
