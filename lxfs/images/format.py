"""What an LXD image is and whether one is acceptable: sniffing, tar streams, member rules,
metadata.yaml, classify and inspect.

An upload's content is sniffed from its magic bytes; tarballs are read forward-only through
:class:`_TarFilter`, which holds each member's bytes until :class:`_MemberPolicy` has judged it
(``unpack`` passes the accepted bytes on to GNU tar). ``metadata.yaml`` is parsed within bounds
(no YAML bombs) into normalised fields. :func:`classify_upload` tells what an upload is and
:func:`inspect_image` reads its metadata and computes the fingerprint, as LXD does at import:
they read a tarball only as far as ``metadata.yaml`` and the first ``rootfs/`` member. The
member rules and ``images.max_unpacked_size`` are applied to every member at unpack
(:mod:`lxfs.images.unpack`); a squashfs rootfs is listed by unsquashfs (>= 4.5.1) there too.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import hashlib
import logging
import lzma
import os
import re
import stat
import subprocess
import tarfile
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import yaml

from lxfs.names import forbidden_character

log = logging.getLogger(__name__)

UploadKind = Literal["unified", "metadata", "squashfs"]

_CHUNK = 1 << 20
# tarfile's stream buffer: each header read copies what is left of it, so keep it small.
_TAR_BUFSIZE = 64 << 10
_MAX_METADATA = 16 << 20
_TOP_LEVEL = ("metadata.yaml", "rootfs", "templates")
_TAR_FORMATS = ("gzip", "xz", "lzma", "bzip2", "zstd", "tar")

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


class ImageTooLarge(ImageError):
    """The image's files add up to more than the limit it was unpacked with."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"image rejected: its files add up to more than {limit} bytes "
                         "unpacked (the limit is the server's images.max_unpacked_size)")
        self.limit = limit


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


#: the 32-bit architectures a 64-bit kernel also runs (LXD's personalities)
_PERSONALITIES: dict[str, tuple[str, ...]] = {
    "x86_64": ("i686",),
    "aarch64": ("armv7l",),
    "ppc64": ("ppc",),
}


def host_architectures(machine: str | None = None) -> list[str]:
    """The architectures this host runs containers of: its own, then its 32-bit ones."""
    import platform

    own = normalize_architecture(machine or platform.machine())
    return [own, *_PERSONALITIES.get(own, ())]


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
    path: Path, fmt: str, sink: IO[bytes] | None = None, short: bool = False
) -> Iterator[tuple[tarfile.TarFile, _TarFilter, Callable[[], None]]]:
    """Open ``path`` (a possibly compressed tarball) as a forward-only tarfile stream.

    Everything tarfile reads goes through a :class:`_TarFilter` (which passes accepted members
    on to ``sink`` when given). Yields the tarfile, the filter and a function to call after
    reading to the end: it checks that the decompressor saw no error (in-process
    decompressors raise while reading instead). ``short``: the caller reads a few members
    only (an import's scan), so xz is decompressed in process rather than by a command
    started for it.
    """
    with contextlib.ExitStack() as stack:
        raw: IO[bytes]
        proc: subprocess.Popen[bytes] | None = None
        f = stack.enter_context(open(path, "rb"))
        if fmt in _STREAM_COMMANDS and not (short and fmt == "xz"):
            # the tool reads our open file: its offset is ours
            proc = subprocess.Popen(
                _STREAM_COMMANDS[fmt],
                stdin=f,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert proc.stdout is not None
            raw = proc.stdout
            stack.callback(_reap, proc)
        else:
            if fmt == "gzip":
                raw = stack.enter_context(gzip.GzipFile(fileobj=f, mode="rb"))
            elif fmt in ("lzma", "xz"):
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
        flt.source_fd = f.fileno()
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
        #: the compressed file (how far it was read: the unpack's progress)
        self.source_fd = -1
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
    """What one pass over the beginning of a tarball learned."""

    meta: bytes | None  # metadata.yaml's bytes
    has_rootfs: bool
    problem: str | None  # the first rule a member seen broke (unpack refuses the image)
    meta_problem: str | None  # why a member named metadata.yaml was not kept


_scan_lock = threading.Lock()
_scan_cache: OrderedDict[tuple[Any, ...], _Scan] = OrderedDict()


def _scan_tarball(path: Path, fmt: str, layout: Layout = "image") -> _Scan:
    """Read the tarball's members until ``metadata.yaml`` and a ``rootfs/`` member are both
    seen (to the end when either is missing: a split image's metadata tarball is small),
    keeping metadata.yaml. An image written metadata first (as LXD and
    :func:`build_unified_tarball` write them) costs a few kilobytes of decompression.

    The members seen go through the member rules so that ``has_rootfs`` and ``meta`` mean
    what the unpack will find, but a broken rule is only noted in ``problem``: the unpack,
    which reads every member, refuses the image. The last few results are cached by file
    identity (device, inode, size, mtime, ctime): classify_upload() then inspect_image() on
    the same file read it once.
    """
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, layout)
    with _scan_lock:
        cached = _scan_cache.get(key)
        if cached is not None:
            _scan_cache.move_to_end(key)
            return cached
    meta: bytes | None = None
    problem: str | None = None
    meta_problem: str | None = None
    policy = _MemberPolicy(layout)
    with _tar_stream(path, fmt, short=True) as (tf, flt, verify):
        for member in _members(tf, flt):
            if meta is not None and policy.has_rootfs:
                break
            keep = False
            is_meta = [p for p in member.name.split("/") if p not in ("", ".")] == [
                "metadata.yaml"]
            try:
                keep = policy.check(member)
            except ImageError as e:
                problem = problem or str(e)
                if is_meta:
                    meta_problem = meta_problem or str(e)
            flt.decide(member, tf.offset, keep)
            if keep and meta is None and _member_path(member.name, "member") == "metadata.yaml":
                extracted = tf.extractfile(member)
                meta = extracted.read() if extracted is not None else b""
        else:
            verify()
    result = _Scan(meta, policy.has_rootfs, problem, meta_problem)
    with _scan_lock:
        _scan_cache[key] = result
        while len(_scan_cache) > 16:
            _scan_cache.popitem(last=False)
    return result


def classify_upload(path: Path | str) -> UploadKind | None:
    """Tell what an uploaded file is from its content, or None if it is no image part.

    "squashfs" (a split image's rootfs), "unified" (a tarball with metadata.yaml and rootfs/)
    or "metadata" (a tarball with metadata.yaml and no rootfs/). Tarballs are streamed only
    until both entries are seen (see :func:`_scan_tarball`, whose result
    :func:`inspect_image` then reuses). Whether the image's members are acceptable is the
    unpack's business.
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
        scan = _scan_tarball(path, fmt)
    except _STREAM_ERRORS:  # ImageError included: inspect tells what is wrong
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


def _properties(value: Any) -> dict[str, str]:
    """``properties``: each key becomes a file name on the mount (``images/FP/properties/KEY``)
    and each value a line of ``lxfs image list``; what neither can show is refused."""
    props = _string_map(value, "properties")
    for key, text in props.items():
        shown = _show(key)
        if not key or key in (".", "..") or "/" in key or len(key.encode()) > 255 or \
                forbidden_character(key) is not None or key != key.strip():
            raise ImageError(f"invalid metadata.yaml: property name {shown!r} cannot be a "
                             "file name (1-255 bytes, no '/', no control characters)")
        if forbidden_character(text.strip().replace("\t", " ")) is not None:
            raise ImageError(f"invalid metadata.yaml: property {shown} is not one line of text")
    return {key: text.strip() for key, text in props.items()}


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
        "properties": _properties(doc.get("properties")),
        "templates": templates,
    }


# ---------------------------------------------------------------------------------------------
# Reading an unpacked image's files


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


# ---------------------------------------------------------------------------------------------
# External tools (GNU tar, unsquashfs): their environment; a squashfs rootfs listed by unsquashfs

# Environment variables that change what GNU tar does (TAR_OPTIONS can add any option).
_TOOL_ENV_DROPPED = ("TAR_OPTIONS", "POSIXLY_CORRECT", "TAPE")
# unsquashfs 4.5 refuses names holding "/" or "..", 4.5.1 duplicate names (CVE-2021-40153,
# CVE-2021-41072: writing outside the destination, directly or through a symlink).
_UNSQUASHFS_SAFE = (4, 5, 1)


def _tool_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _TOOL_ENV_DROPPED}
    env["LC_ALL"] = "C"
    return env


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


def _check_squashfs(path: Path) -> int:
    """List a squashfs rootfs (before its unpack): unsquashfs refuses the names it would not
    extract safely. Returns the sizes of its regular files, added up."""
    _check_unsquashfs()
    proc = subprocess.run(["unsquashfs", "-no-progress", "-lln", str(path)],
                          stdin=subprocess.DEVNULL, capture_output=True, env=_tool_env())
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise _rejected(f"its rootfs is not a valid squashfs: {lines[0] if lines else ''}")
    total = 0
    for line in proc.stdout.split(b"\n"):
        fields = line.split(maxsplit=3)  # mode, uid/gid, size, the rest
        if line.startswith(b"-") and len(fields) == 4 and fields[2].isdigit():
            total += int(fields[2])
    return total


# ---------------------------------------------------------------------------------------------
# inspect


class WriteDigest:
    """The sha256 of a file hashed as it is written (an upload through the mount), so that
    its fingerprint needs no second pass over it. Only writes that continue where the last
    one ended are hashed; any other write (a seek, an overwrite, two at once landing out of
    order) leaves the digest unusable, and the file is then hashed when inspected."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._lock = threading.Lock()
        self.length = 0
        self.usable = True

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """``os.pwrite(fd, data, offset)``, hashing what it wrote (in the caller's thread)."""
        written = os.pwrite(fd, data, offset)
        with self._lock:
            if self.usable and offset == self.length:
                self._hash.update(memoryview(data)[:written])
                self.length += written
            else:
                self.usable = False
        return written

    def remember(self, path: Path | str) -> None:
        """Let :func:`inspect_image` take the digest as ``path``'s own, for as long as the
        file is unchanged (the writer has closed it). Nothing when the digest is unusable
        or does not cover the whole file."""
        st = os.stat(path)
        if not self.usable or st.st_size != self.length:
            return
        with _scan_lock:
            _digests[_identity(st)] = self._hash.hexdigest()
            while len(_digests) > 16:
                _digests.popitem(last=False)


_digests: OrderedDict[tuple[int, ...], str] = OrderedDict()


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """A file's identity while it is unchanged (device, inode, size, mtime, ctime)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _sha256_files(*paths: Path) -> str:
    """The fingerprint of an image's files: their bytes one after the other, hashed (taken
    from a :class:`WriteDigest` when one file's digest was remembered)."""
    if len(paths) == 1:
        with _scan_lock:
            known = _digests.get(_identity(os.stat(paths[0])))
        if known is not None:
            return known
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
    return h.hexdigest()


def inspect_image(path: Path | str, rootfs_path: Path | str | None = None) -> ImageInfo:
    """Read an image's metadata and compute its fingerprint, as LXD does at import.

    ``path`` is a unified tarball, or (with ``rootfs_path``) a split image's metadata tarball.
    The tarball is read as far as ``metadata.yaml`` and the first ``rootfs/`` member (see
    :func:`_scan_tarball`) and the rootfs file only sniffed: the member rules, the squashfs
    listing and ``images.max_unpacked_size`` are applied to every member at unpack
    (:func:`lxfs.images.unpack.unpack_image`), which refuses a hostile image before any of
    its files is in place. Raises :class:`ImageError` when the files are no LXD container
    image, or its metadata.yaml cannot be read.
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
    try:
        scan = _scan_tarball(path, fmt)
    except _STREAM_ERRORS as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"not an LXD image: cannot read the {fmt} tarball: {e}") from None
    if scan.meta is None:  # a rule that metadata.yaml broke says more than its absence
        raise ImageError(scan.meta_problem or "not an LXD image: no metadata.yaml in tarball")
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
        if _sniff(rootfs_path) not in ("squashfs", *_TAR_FORMATS):
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
