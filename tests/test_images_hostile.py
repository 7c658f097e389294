"""Hostile images are refused (or contained) without touching the host.

As LXD, an import hashes the image and reads its metadata.yaml only; its content is checked
at unpack (the first launch, or the image volume's unpack), which refuses a hostile image
with the reason. Every hostile image is built here with tarfile (or mksquashfs) and aims at a
canary directory the test makes under /var/tmp. Each goes through the unit API
(``inspect_image`` accepts it unless its metadata cannot be read, ``unpack_image`` refuses
it) and the main ones through a real daemon (a copy into ``MOUNT/images/`` and a launch
through the mount; ``lxfs image import`` and ``lxfs launch``). After each: the canary is
unchanged (same entries, contents, modes, link counts), and nothing half-made is left (no
image volume, no instance volume, no temporary directory, no upload), and the image can be
deleted. A legitimate image with absolute symlinks, hard links between its own files, a
setuid file, a FIFO, a sparse file and a device node still imports, unpacks and launches.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_rest_instances_integration import api, wait
from test_storage_integration import loop_guard, make_btrfs_pool  # noqa: F401 - a fixture

from lxfs.images import (
    ImageError,
    build_unified_tarball,
    classify_upload,
    inspect_image,
    render_template_text,
    render_templates,
    unpack_image,
    unpack_image_low_priority,
)

REPO = Path(__file__).resolve().parent.parent
UP = "../" * 24  # enough ".." to reach "/" from anywhere in a test directory
METADATA = b"architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  os: hostile\n"

# --------------------------------------------------------------------------------------------
# Building tarballs


Member = tuple[tarfile.TarInfo, bytes | None]


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None,
           **attrs: Any) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = 1700000000
    info.mode = attrs.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
    for key, value in attrs.items():
        setattr(info, key, value)
    if data is not None:
        info.size = len(data)
    return info, data


def reg(name: str, data: bytes = b"x\n", **attrs: Any) -> Member:
    return member(name, tarfile.REGTYPE, data, **attrs)


def dir_(name: str, **attrs: Any) -> Member:
    return member(name, tarfile.DIRTYPE, **attrs)


def sym(name: str, target: str) -> Member:
    return member(name, tarfile.SYMTYPE, linkname=target, mode=0o777)


def hard(name: str, target: str) -> Member:
    return member(name, tarfile.LNKTYPE, linkname=target)


def device(name: str, kind: bytes, major: int, minor: int) -> Member:
    return member(name, kind, devmajor=major, devminor=minor, mode=0o666)


def fifo(name: str) -> Member:
    return member(name, tarfile.FIFOTYPE)


def base_members(metadata: bytes = METADATA) -> list[Member]:
    """The start of a well-formed unified image."""
    return [reg("metadata.yaml", metadata), dir_("templates"), dir_("rootfs"),
            dir_("rootfs/etc"), reg("rootfs/etc/hostname", b"image\n")]


def write_tar(path: Path, members: list[Member], compression: str = "",
              pax_headers: dict[str, str] | None = None) -> Path:
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                      pax_headers=pax_headers) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


# --------------------------------------------------------------------------------------------
# The canary and leftovers


class Canary:
    """A directory under /var/tmp that hostile images aim at: ``target`` (a file) and
    ``dir/`` (a directory). :meth:`check` fails if anything in it changed."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="lxfs-canary-", dir="/var/tmp"))
        (self.path / "target").write_text("canary\n")
        (self.path / "dir").mkdir()
        self.before = self.snapshot()

    @property
    def target(self) -> str:
        return str(self.path / "target")

    @property
    def dir(self) -> str:
        return str(self.path / "dir")

    def snapshot(self) -> dict[str, tuple[Any, ...]]:
        state: dict[str, tuple[Any, ...]] = {}
        for top, dirs, files in os.walk(self.path):
            for name in [".", *dirs, *files]:
                p = os.path.join(top, name)
                st = os.lstat(p)
                content: Any = None
                if stat.S_ISREG(st.st_mode):
                    content = hashlib.sha256(Path(p).read_bytes()).hexdigest()
                elif stat.S_ISLNK(st.st_mode):
                    content = os.readlink(p)
                state[os.path.relpath(p, self.path)] = (
                    st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink, st.st_ino,
                    st.st_mtime_ns, content)
        return state

    def check(self) -> None:
        assert self.snapshot() == self.before, "the canary directory changed"


@pytest.fixture
def canary() -> Iterator[Canary]:
    c = Canary()
    try:
        yield c
        c.check()
    finally:
        shutil.rmtree(c.path, ignore_errors=True)


def tree(path: Path) -> set[str]:
    """Every path below ``path`` (relative), not following symlinks."""
    found = set()
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(top, name), path))
    return found


def device_nodes(path: Path) -> list[str]:
    """Character and block devices on disk below ``path`` (not crossing mounts)."""
    dev = os.lstat(path).st_dev
    found = []
    for top, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if os.lstat(os.path.join(top, d)).st_dev == dev]
        for name in dirs + files:
            mode = os.lstat(os.path.join(top, name)).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                found.append(os.path.join(top, name))
    return found


# --------------------------------------------------------------------------------------------
# The hostile images


@dataclasses.dataclass
class Case:
    """A hostile image: ``build(canary)`` returns its members, ``message`` is what the
    refusal says (a regex), ``daemon`` whether the daemon tests use it too, ``at_import``
    whether the import refuses it already (its metadata.yaml cannot be read: the unpack
    refuses the others)."""

    name: str
    build: Callable[[Canary], list[Member]]
    message: str
    daemon: bool = True
    pax_headers: dict[str, str] | None = None
    at_import: bool = False


def _metadata_twice(c: Canary) -> list[Member]:
    return [*base_members(), reg("metadata.yaml", b"architecture: [" + b"x" * 100)]


CASES = [
    Case("dotdot", lambda c: [*base_members(), reg(f"rootfs/{UP}{c.dir[1:]}/pwned")],
         r"member rootfs/(\.\./)+.*/pwned escapes the image"),
    Case("dotdot-in-metadata-area", lambda c: [*base_members(), reg(f"templates/{UP}x")],
         r"escapes the image", daemon=False),
    Case("absolute", lambda c: [*base_members(), reg(f"{c.dir}/pwned")],
         r"member /var/tmp/lxfs-canary-\w+/dir/pwned is an absolute path"),
    Case("absolute-in-rootfs-dir", lambda c: [*base_members(), reg("/rootfs/etc/x")],
         r"is an absolute path", daemon=False),
    Case("symlink-then-write",
         lambda c: [*base_members(), sym("rootfs/evil", c.dir), reg("rootfs/evil/pwned")],
         r"member rootfs/evil/pwned would be written through the symlink rootfs/evil"),
    Case("relative-symlink-then-write",
         lambda c: [*base_members(), sym("rootfs/up", f"{UP}{c.dir[1:]}"),
                    dir_("rootfs/up/sub"), reg("rootfs/up/sub/pwned")],
         r"through the symlink rootfs/up"),
    Case("symlink-in-parent-then-write",
         lambda c: [*base_members(), sym("rootfs/etc/cron.d", c.dir),
                    reg("rootfs/./etc//cron.d/pwned")],
         r"through the symlink rootfs/etc/cron.d", daemon=False),
    Case("directory-replaces-symlink",
         lambda c: [*base_members(), sym("rootfs/evil", c.dir), dir_("rootfs/evil"),
                    reg("rootfs/evil/pwned")],
         r"member rootfs/evil replaces the symlink stored before it"),
    Case("file-replaces-symlink",
         lambda c: [*base_members(), sym("rootfs/evil", c.target), reg("rootfs/evil")],
         r"replaces the symlink", daemon=False),
    Case("hardlink-absolute",
         lambda c: [*base_members(), hard("rootfs/h", c.target)],
         r"hard link rootfs/h points to /var/tmp/lxfs-canary-\w+/target is an absolute path"),
    Case("hardlink-dotdot",
         lambda c: [*base_members(), hard("rootfs/h", f"{UP}{c.target[1:]}")],
         r"hard link rootfs/h points to (\.\./)+.* escapes the image"),
    Case("hardlink-not-in-image",
         lambda c: [*base_members(), hard("rootfs/h", "rootfs/etc/shadow")],
         r"hard link rootfs/h points to rootfs/etc/shadow, which is not a file stored before"),
    Case("hardlink-to-later-member",
         lambda c: [*base_members(), hard("rootfs/h", "rootfs/later"), reg("rootfs/later")],
         r"not a file stored before it", daemon=False),
    Case("hardlink-to-directory",
         lambda c: [*base_members(), hard("rootfs/h", "rootfs/etc")],
         r"not a file stored before it", daemon=False),
    Case("hardlink-to-symlink-then-write",
         lambda c: [*base_members(), sym("rootfs/s", c.dir), hard("rootfs/h", "rootfs/s"),
                    reg("rootfs/h/pwned")],
         r"member rootfs/h/pwned would be written through the symlink rootfs/h"),
    Case("rootfs-is-symlink",
         lambda c: [reg("metadata.yaml", METADATA), sym("rootfs", c.dir), reg("rootfs/pwned")],
         r"rootfs is not a directory"),
    Case("templates-is-symlink",
         lambda c: [*base_members()[:1], sym("templates", c.dir), dir_("rootfs")],
         r"templates is not a directory"),
    Case("metadata-is-symlink",
         lambda c: [sym("metadata.yaml", c.target), dir_("rootfs")],
         r"metadata.yaml is not a regular file", daemon=False, at_import=True),
    Case("metadata-twice", _metadata_twice, r"metadata.yaml is stored twice"),
    Case("nul-in-name",
         lambda c: [*base_members(), reg(f"rootfs/a\0/{UP}{c.dir[1:]}/pwned")],
         r"contains a NUL byte", daemon=False),
    Case("global-pax-path", lambda c: base_members(), r"a global pax header sets path",
         daemon=False, pax_headers={"path": "rootfs/etc/passwd"}, at_import=True),
    Case("fifo-with-data",
         lambda c: [*base_members(), member("rootfs/p", tarfile.FIFOTYPE, b"\0" * 1024)],
         r"member rootfs/p is a FIFO that carries data", daemon=False),
    Case("unsupported-type",
         lambda c: [*base_members(), member("rootfs/d", b"D", b"")],
         r"member rootfs/d has an unsupported type 'D'", daemon=False),
    Case("huge-pax-header",
         lambda c: [*base_members(),
                    member("rootfs/x", tarfile.REGTYPE, b"",
                           pax_headers={"SCHILY.xattr.user.big": "x" * (9 << 20)})],
         r"a tar header is larger than 8 MiB", daemon=False),
    Case("billion-laughs",
         lambda c: [reg("metadata.yaml", billion_laughs()), dir_("rootfs")],
         r"invalid metadata.yaml: more than 100000 nodes", at_import=True),
]


def billion_laughs(levels: int = 9) -> bytes:
    lines = ["architecture: x86_64", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append(f"properties: {{os: *a{levels - 1}}}")
    return ("\n".join(lines) + "\n").encode()


def build_case(case: Case, c: Canary, directory: Path, compression: str = "gz") -> Path:
    path = directory / (f"{case.name}.tar" + (f".{compression}" if compression else ""))
    return write_tar(path, case.build(c), compression, case.pax_headers)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_hostile_tarball_refused(case: Case, canary: Canary, tmp_path: Path) -> None:
    image = build_case(case, canary, tmp_path)
    if case.at_import:
        with pytest.raises(ImageError, match=case.message):
            inspect_image(image)
    else:  # as LXD: the import reads the metadata, the unpack meets the content
        assert inspect_image(image).fingerprint == hashlib.sha256(image.read_bytes()).hexdigest()
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    started = time.monotonic()
    with pytest.raises(ImageError, match=case.message):
        unpack_image(image, None, volumes / "img")
    assert time.monotonic() - started < 10
    assert list(volumes.iterdir()) == []  # no volume, no temporary directory
    in_place = tmp_path / "subvolume"  # an empty directory (a btrfs subvolume) stays empty
    in_place.mkdir()
    with pytest.raises(ImageError, match=case.message):
        unpack_image(image, None, in_place)
    assert list(in_place.iterdir()) == []
    canary.check()


def test_hostile_names_are_shown_safely(tmp_path: Path) -> None:
    """A control character in a member name is escaped in the message (one error line)."""
    image = write_tar(tmp_path / "ctl.tar", [*base_members(), reg("/etc/\nx\x1b[2J")])
    with pytest.raises(ImageError) as exc:
        unpack_image(image, None, tmp_path / "vol")
    assert "\n" not in str(exc.value) and "\x1b" not in str(exc.value)
    assert "/etc/\\nx\\x1b[2J is an absolute path" in str(exc.value)


def test_hostile_member_after_corrupt_header(canary: Canary, tmp_path: Path) -> None:
    """A header tarfile cannot read, then more members: tarfile would stop there while
    GNU tar skips to the next header. The whole image is refused."""
    good = write_tar(tmp_path / "good.tar", base_members()).read_bytes()
    evil = write_tar(tmp_path / "evil.tar", [sym("rootfs/evil", canary.dir),
                                             reg("rootfs/evil/pwned")]).read_bytes()
    body = good.rstrip(b"\0")
    body += b"\0" * (-len(body) % 512)
    image = tmp_path / "spliced.tar"
    image.write_bytes(body + b"not a tar header".ljust(512, b"!") + evil)
    inspect_image(image)  # its metadata and rootfs/ come first: the import stops there
    with pytest.raises(ImageError, match="corrupt tarball"):
        unpack_image(image, None, tmp_path / "vol")
    assert not (tmp_path / "vol").exists()


def test_classify_still_says_unified(canary: Canary, tmp_path: Path) -> None:
    """A hostile unified image is recognised as one and imports (a few KB read: its
    metadata); the unpack then reports why it is refused."""
    case = next(c for c in CASES if c.name == "symlink-then-write")
    image = build_case(case, canary, tmp_path, "xz")
    assert classify_upload(image) == "unified"
    assert inspect_image(image).properties == {"os": "hostile"}
    with pytest.raises(ImageError, match=case.message):
        unpack_image(image, None, tmp_path / "vol")


def test_split_rootfs_tarball_rules(canary: Canary, tmp_path: Path) -> None:
    """A split image's rootfs tarball follows the same rules (its names are rootfs-relative)."""
    meta = write_tar(tmp_path / "meta.tar", [reg("metadata.yaml", METADATA)])
    rootfs = write_tar(tmp_path / "rootfs.tar.gz", [dir_("."), sym("./evil", canary.dir),
                                                    reg("./evil/pwned")], "gz")
    assert inspect_image(meta, rootfs).split  # the import reads the metadata tarball only
    with pytest.raises(ImageError, match="through the symlink evil"):
        unpack_image(meta, rootfs, tmp_path / "vol")
    dotdot = write_tar(tmp_path / "dotdot.tar", [reg(f"{UP}{canary.dir[1:]}/pwned")])
    with pytest.raises(ImageError, match="escapes the image"):
        unpack_image(meta, dotdot, tmp_path / "vol")
    not_dir = write_tar(tmp_path / "notdir.tar", [sym(".", canary.dir)])
    with pytest.raises(ImageError, match="root of the rootfs tarball is not a directory"):
        unpack_image(meta, not_dir, tmp_path / "vol")
    with_rootfs = write_tar(tmp_path / "meta2.tar", [reg("metadata.yaml", METADATA),
                                                     dir_("rootfs")])
    with pytest.raises(ImageError, match="must not contain rootfs/"):
        unpack_image(with_rootfs, rootfs, tmp_path / "vol")
    assert not (tmp_path / "vol").exists()


# --------------------------------------------------------------------------------------------
# Device nodes: skipped, never on disk


def test_device_nodes_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = write_tar(tmp_path / "dev.tar.gz", [
        *base_members(), dir_("rootfs/dev"),
        device("rootfs/dev/sda", tarfile.BLKTYPE, 8, 0),
        device("rootfs/dev/mem", tarfile.CHRTYPE, 1, 1),
        hard("rootfs/etc/mem-link", "rootfs/dev/mem"),
        device("templates/kmsg", tarfile.CHRTYPE, 1, 11),
        fifo("rootfs/dev/initctl"),
    ], "gz")
    inspect_image(image)  # devices are not a reason to refuse an image
    dest = tmp_path / "vol"
    with caplog.at_level(logging.WARNING, logger="lxfs.images"):
        unpack_image(image, None, dest)
    assert device_nodes(dest) == []
    assert not os.path.lexists(dest / "rootfs/etc/mem-link")
    assert stat.S_ISFIFO(os.lstat(dest / "rootfs/dev/initctl").st_mode)
    logged = caplog.text
    for name in ("rootfs/dev/sda", "rootfs/dev/mem", "rootfs/etc/mem-link", "templates/kmsg"):
        assert name in logged
    assert "4 device nodes (and hard links to them) skipped" in logged


def make_squashfs(src: Path, out: Path, *extra: str) -> Path:
    subprocess.run(["mksquashfs", str(src), str(out), "-noappend", "-quiet", "-no-progress",
                    *extra], check=True, stdout=subprocess.DEVNULL)
    return out


def test_squashfs_device_nodes_are_skipped(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin/su").write_text("#!/bin/sh\n")
    (src / "bin/su").chmod(0o4755)
    rootfs = make_squashfs(src, tmp_path / "rootfs.squashfs",
                           "-p", "dev d 755 0 0", "-p", "dev/sda b 666 0 0 8 0",
                           "-p", "dev/mem c 666 0 0 1 1")
    meta = write_tar(tmp_path / "meta.tar", [reg("metadata.yaml", METADATA)])
    inspect_image(meta, rootfs)
    dest = tmp_path / "vol"
    with caplog.at_level(logging.WARNING, logger="lxfs.images"):
        unpack_image(meta, rootfs, dest)
    assert device_nodes(dest) == []
    assert stat.S_IMODE((dest / "rootfs/bin/su").stat().st_mode) == 0o4755
    assert (dest / "rootfs/dev").is_dir()
    assert "2 device nodes skipped: dev/mem, dev/sda" in caplog.text


def patched_squashfs(tmp_path: Path, canary: Canary, how: str) -> Path:
    """A squashfs whose directory entries say what mksquashfs never writes: a directory named
    ".." (how="dotdot"), or two entries "evil" (a symlink to the canary, then a directory
    holding "pwned", how="duplicate"). Built uncompressed, then patched in place."""
    src = tmp_path / f"sq-{how}"
    src.mkdir()
    if how == "dotdot":
        (src / "qq").mkdir()
        (src / "qq/pwned").write_text("evil\n")
        old, new = b"qq", b".."
    else:
        os.symlink(canary.dir, src / "evil")
        (src / "evim").mkdir()
        (src / "evim/pwned").write_text("evil\n")
        old, new = b"evim", b"evil"
    image = make_squashfs(src, tmp_path / f"{how}.squashfs", "-noI", "-noD", "-noF", "-noX",
                          "-no-xattrs", "-all-time", "1700000000", "-mkfs-time", "1700000000")
    data = image.read_bytes()
    assert data.count(old) == 1
    image.write_bytes(data.replace(old, new))
    return image


@pytest.mark.parametrize("how", ["dotdot", "duplicate"])
def test_hostile_squashfs_refused(how: str, canary: Canary, tmp_path: Path) -> None:
    rootfs = patched_squashfs(tmp_path, canary, how)
    meta = write_tar(tmp_path / "meta.tar", [reg("metadata.yaml", METADATA)])
    refusal = "rootfs is not a valid squashfs: .*(invalid characters|duplicate names)"
    inspect_image(meta, rootfs)  # the import only sniffs the rootfs file
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    with pytest.raises(ImageError, match=refusal):  # unsquashfs lists it before extracting
        unpack_image(meta, rootfs, volumes / "vol")
    assert list(volumes.iterdir()) == []
    canary.check()


# --------------------------------------------------------------------------------------------
# metadata.yaml bombs: refused quickly, in bounded memory

BOMB_SCRIPT = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from lxfs.images import ImageError
from lxfs.images.format import _parse_metadata
out = {}
for name, text in json.load(sys.stdin).items():
    started = time.monotonic()
    try:
        _parse_metadata(text.encode())
        result = "accepted"
    except ImageError as e:
        result = str(e)
    out[name] = [result, time.monotonic() - started]
print(json.dumps(out))
"""


def yaml_bombs() -> dict[str, str]:
    deep = "architecture: x86_64\nproperties: " + "[" * 100_000 + "]" * 100_000 + "\n"
    deep_block = "architecture: x86_64\n" + "".join(
        " " * i + f"k{i}:\n" for i in range(200)) + " " * 200 + "v\n"
    wide = "architecture: x86_64\nproperties:\n" + "".join(
        f"  k{i}: v\n" for i in range(200_000))
    many_aliases = ("architecture: x86_64\nx: &x a\nproperties:\n"
                    + "".join(f"  k{i}: *x\n" for i in range(2000)))
    templates = ("architecture: x86_64\nt: &t {when: [create], template: a.tpl, properties: "
                 "{" + ", ".join(f"p{i}: v" for i in range(500)) + "}}\ntemplates:\n"
                 + "".join(f"  /etc/f{i}: *t\n" for i in range(500)))
    big = "architecture: x86_64\ndescription: " + "x" * (17 << 20) + "\n"
    return {"laughs": billion_laughs().decode(), "deep": deep, "deep_block": deep_block,
            "wide": wide, "many_aliases": many_aliases, "templates": templates, "big": big}


def test_metadata_bombs_refused_quickly_in_bounded_memory() -> None:
    """Each bomb is parsed in a process limited to 1 GiB of address space."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", BOMB_SCRIPT], input=json.dumps(yaml_bombs()),
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    expected = {
        "laughs": "more than 100000 nodes",
        "deep": "nested deeper than 32|exceeded maximum nesting depth",  # libyaml's own
        "deep_block": "nested deeper than 32",
        "wide": "more than 100000 nodes",
        "many_aliases": "more than 1000 aliases",
        "templates": "more than 100000 nodes",
        "big": "larger than 16 MiB",
    }
    for name, (message, seconds) in results.items():
        assert re.search(expected[name], message), (name, message)
        assert seconds < 3, (name, seconds)


def test_metadata_size_cap_on_every_path(tmp_path: Path) -> None:
    """A 17 MiB metadata.yaml is refused by the scan, by unpack's re-read and by the
    templates' reader."""
    big = b"architecture: x86_64\ndescription: " + b"x" * (17 << 20) + b"\n"
    image = write_tar(tmp_path / "big.tar", [reg("metadata.yaml", big), dir_("rootfs")])
    with pytest.raises(ImageError, match="larger than 16 MiB"):
        inspect_image(image)
    with pytest.raises(ImageError, match="larger than 16 MiB"):
        unpack_image(image, None, tmp_path / "vol")
    vol = tmp_path / "vol2"
    (vol / "rootfs").mkdir(parents=True)
    (vol / "metadata.yaml").write_bytes(big)
    with pytest.raises(ImageError, match="larger than 16 MiB"):
        render_templates(vol, "create", {"name": "c1"})


# --------------------------------------------------------------------------------------------
# Templates stay inside


def test_template_targets_and_names_stay_inside(canary: Canary, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    (vol / "rootfs/etc").mkdir(parents=True)
    (vol / "templates").mkdir()
    (vol / "templates/t.tpl").write_text("{{ container.name }}\n")
    os.symlink(canary.dir, vol / "rootfs/etc/evil")
    escape = f"/{UP}{canary.dir[1:]}/by-dotdot"
    (vol / "metadata.yaml").write_text(
        "architecture: x86_64\ntemplates:\n"
        f"  {escape}:\n    when: [create]\n    template: t.tpl\n"
        "  /etc/evil/by-symlink:\n    when: [create]\n    template: t.tpl\n")
    render_templates(vol, "create", {"name": "c1"})
    assert (vol / "rootfs" / canary.dir[1:] / "by-dotdot").read_text() == "c1\n"
    assert (vol / "rootfs" / canary.dir[1:] / "by-symlink").read_text() == "c1\n"
    canary.check()
    for bad in ("../../x", "/abs.tpl", "a/../../b", "a\0b"):
        (vol / "metadata.yaml").write_text(
            'architecture: x86_64\ntemplates:\n  /etc/x:\n    when: [create]\n'
            f'    template: "{bad.replace(chr(0), chr(92) + "0")}"\n')
        with pytest.raises(ImageError, match="bad template file name"):
            render_templates(vol, "create", {"name": "c1"})


def test_template_expressions_cannot_exhaust_the_daemon() -> None:
    started = time.monotonic()
    out = render_template_text('{{ 1|stringformat:"%999999999d" }}', {})
    assert out == '{{ 1|stringformat:"%999999999d" }}'  # refused: kept verbatim
    assert render_template_text('{{ 1|stringformat:"%*d" }}', {}).startswith("{{")
    deep = "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}"
    assert render_template_text(deep, {}) == deep
    assert time.monotonic() - started < 2


# --------------------------------------------------------------------------------------------
# A legitimate image keeps what it should


def legit_extras() -> list[Member]:
    return [
        dir_("rootfs/opt"),
        sym("rootfs/opt/abs-sh", "/bin/busybox"),
        sym("rootfs/opt/up", "../bin/busybox"),
        sym("rootfs/opt/dangling", "/nonexistent/dir"),
        reg("rootfs/opt/suid", b"#!/bin/sh\necho suid\n", mode=0o4755),
        dir_("rootfs/opt/sgid-dir", mode=0o2775),
        hard("rootfs/opt/suid-hard", "rootfs/opt/suid"),
        hard("rootfs/opt/abs-sh-hard", "rootfs/opt/abs-sh"),
        fifo("rootfs/opt/fifo"),
        reg("rootfs/opt/owned", b"x\n", uid=1234, gid=5678),
        device("rootfs/opt/sda", tarfile.BLKTYPE, 8, 0),
        hard("rootfs/opt/sda-hard", "rootfs/opt/sda"),
        reg("extra/ignored", b"not part of an image\n"),
    ]


def check_legit(rootfs: Path) -> None:
    opt = rootfs / "opt"
    assert os.readlink(opt / "abs-sh") == "/bin/busybox"
    assert os.readlink(opt / "up") == "../bin/busybox"
    assert os.readlink(opt / "dangling") == "/nonexistent/dir"
    suid = os.lstat(opt / "suid")
    assert stat.S_IMODE(suid.st_mode) == 0o4755 and suid.st_nlink == 2
    assert os.lstat(opt / "suid-hard").st_ino == suid.st_ino
    assert os.lstat(opt / "abs-sh-hard").st_ino == os.lstat(opt / "abs-sh").st_ino
    assert stat.S_IMODE(os.lstat(opt / "sgid-dir").st_mode) == 0o2775
    assert stat.S_ISFIFO(os.lstat(opt / "fifo").st_mode)
    owned = os.lstat(opt / "owned")
    assert (owned.st_uid, owned.st_gid) == (1234, 5678)
    assert not os.path.lexists(opt / "sda") and not os.path.lexists(opt / "sda-hard")


def test_legit_image_unpacks(tmp_path: Path) -> None:
    image = write_tar(tmp_path / "legit.tar.xz", [dir_("."), *base_members(), dir_("rootfs/bin"),
                                                  reg("rootfs/bin/busybox", mode=0o755),
                                                  *legit_extras()], "xz")
    assert classify_upload(image) == "unified"
    inspect_image(image)
    dest = tmp_path / "vol"
    unpack_image(image, None, dest)
    check_legit(dest / "rootfs")
    assert sorted(os.listdir(dest)) == ["metadata.yaml", "rootfs", "templates"]
    assert device_nodes(dest) == []


def test_xattrs_through_the_user_namespace(tmp_path: Path) -> None:
    """File capabilities and user.* xattrs are kept; trusted.* (e.g. overlayfs' own
    trusted.overlay.*) cannot be set from the user namespace the unpack runs in."""
    src = tmp_path / "src"
    (src / "rootfs/bin").mkdir(parents=True)
    (src / "metadata.yaml").write_bytes(METADATA)
    ping = src / "rootfs/bin/ping"
    ping.write_bytes(b"\x7fELF not really\n")
    ping.chmod(0o755)
    subprocess.run(["setcap", "cap_net_raw+ep", str(ping)], check=True)
    os.setxattr(ping, "user.note", b"kept")
    os.setxattr(ping, "trusted.overlay.redirect", b"/elsewhere")
    image = tmp_path / "caps.tar.gz"
    build_unified_tarball(src, image, "gzip")
    dest = tmp_path / "vol"
    unpack_image(image, None, dest)
    out = dest / "rootfs/bin/ping"
    assert os.getxattr(out, "security.capability") == os.getxattr(ping, "security.capability")
    assert os.getxattr(out, "user.note") == b"kept"
    assert "trusted.overlay.redirect" not in os.listxattr(out)


@pytest.mark.parametrize("tar_format", ["gnu", "posix"])
def test_sparse_files_unpack_intact(tar_format: str, tmp_path: Path) -> None:
    """GNU tar's sparse members (old GNU 'S' headers, pax 1.0 maps) pass the filter intact."""
    src = tmp_path / "src"
    (src / "rootfs").mkdir(parents=True)
    (src / "metadata.yaml").write_bytes(METADATA)
    sparse = src / "rootfs/sparse"
    with open(sparse, "wb") as f:
        f.seek(3 << 20)
        f.write(b"middle")
        f.seek(9 << 20)
        f.write(b"end")
    (src / "rootfs/after").write_text("after the sparse file\n")
    image = tmp_path / f"sparse-{tar_format}.tar.gz"
    subprocess.run(["tar", "-czf", str(image), f"--format={tar_format}", "--sparse", "-C",
                    str(src), "metadata.yaml", "rootfs"], check=True)
    inspect_image(image)
    dest = tmp_path / "vol"
    unpack_image(image, None, dest)
    assert (dest / "rootfs/sparse").read_bytes() == sparse.read_bytes()
    assert (dest / "rootfs/after").read_text() == "after the sparse file\n"


# --------------------------------------------------------------------------------------------
# Through a real daemon


LEFTOVER_EXEMPT = ("lxfsd.log", "lxfs.db", "lxfs.db-wal", "lxfs.db-shm", "lxfs.db-journal")


def data_paths(d: Any) -> set[str]:
    return {p for p in tree(d.data_dir) if os.path.basename(p) not in LEFTOVER_EXEMPT}


def upload_errno(d: Any, src: Path, name: str) -> int:
    """Copy ``src`` into MOUNT/images/NAME like ``cp``; the errno it failed with (0: none)."""
    try:
        shutil.copyfile(src, d.path("images", name))
    except OSError as e:
        return e.errno or -1
    return 0


def fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def launch_errno(d: Any, name: str, ref: str) -> tuple[int, str]:
    """``mkdir instances/NAME`` and write ``ref`` to its ``source`` (a launch through the
    mount): the errno the write failed with (0: none) and the instance's ``error`` file.
    The instance's directory is removed again."""
    os.mkdir(d.path("instances", name))
    try:
        d.write("instances", name, "source", ref)
    except OSError as e:
        return e.errno or -1, d.read("instances", name, "error")
    finally:
        os.rmdir(d.path("instances", name))
    return 0, ""


def test_daemon_imports_hostile_uploads_and_refuses_to_unpack_them(
        loop_guard: list[Path], lxfs_daemon: Any, canary: Canary,  # noqa: F811
        tmp_path: Path) -> None:
    """Through the mount, each hostile image imports (a copy into ``images/``: its metadata
    is all the import reads) unless its metadata.yaml cannot be read; its first unpack is
    refused with the reason: on the dir pool straight into the instance's volume (through
    the mount: EINVAL and the ``error`` file), on a btrfs pool into the image's subvolume
    (``lxfs create -s``). Neither leaves a volume, the instance, nor anything outside; the
    image is deleted as any other."""
    d = lxfs_daemon
    loop_guard.append(d.base)
    make_btrfs_pool(d)
    images_before = sorted(os.listdir(d.path("images")))
    paths_before = data_paths(d)
    for case in (c for c in CASES if c.daemon):
        image = build_case(case, canary, tmp_path, "xz")
        if case.at_import:
            assert upload_errno(d, image, image.name) == errno.EINVAL, case.name
            error = d.read("error")
            assert error.startswith(f"{image.name}: "), (case.name, error)
            assert re.search(case.message, error), (case.name, error)
        else:
            assert upload_errno(d, image, image.name) == 0, (case.name, d.read("error"))
            fp = fingerprint(image)
            code, error = launch_errno(d, "h1", fp)
            assert code == errno.EINVAL, case.name
            assert error.startswith(f"image {fp[:12]}: "), (case.name, error)
            assert re.search(case.message, error), (case.name, error)
            result = d.cli("create", fp, "h2", "-s", "bt", check=False, timeout=120)
            assert result.returncode != 0, (case.name, result)
            assert re.search(case.message, result.stderr), (case.name, result.stderr)
            assert d.instance_names() == [], case.name
            d.cli("image", "delete", fp)
        assert sorted(os.listdir(d.path("images"))) == images_before, case.name
        assert data_paths(d) == paths_before, (case.name, data_paths(d) - paths_before)
        canary.check()
    assert "image rejected" in d.log_path.read_text()


def test_cli_and_rest_report_the_refusal(lxfs_daemon: Any, canary: Canary,
                                         tmp_path: Path) -> None:
    """``lxfs image import`` then ``lxfs launch``, and the same through the REST API: the
    import succeeds (but for an unreadable metadata.yaml), the launch fails with the reason
    and leaves no instance; the image is deleted as any other."""
    d = lxfs_daemon
    paths_before = data_paths(d)
    for name in ("absolute", "hardlink-absolute", "billion-laughs"):
        case = next(c for c in CASES if c.name == name)
        image = build_case(case, canary, tmp_path, "gz")
        alias = f"evil-{name}"
        result = d.cli("image", "import", image, "--alias", alias, check=False)
        if case.at_import:
            assert result.returncode != 0, result
            assert re.search(case.message, result.stderr), (name, result.stderr)
            assert alias not in os.listdir(d.path("images", "aliases"))
            continue
        assert result.returncode == 0, result
        result = d.cli("launch", alias, "e1", check=False, timeout=120)
        assert result.returncode != 0, result
        assert re.search(case.message, result.stderr), (name, result.stderr)
        assert "internal error" not in result.stderr
        assert d.instance_names() == []
        d.cli("image", "delete", alias)
    meta = write_tar(tmp_path / "meta.tar.gz", [reg("metadata.yaml", METADATA)], "gz")
    for how in ("dotdot", "duplicate"):
        rootfs = patched_squashfs(tmp_path, canary, how)
        d.cli("image", "import", meta, rootfs, "--alias", f"evil-{how}")
        result = d.cli("launch", f"evil-{how}", "e1", check=False, timeout=120)
        assert result.returncode != 0 and "is not a valid squashfs" in result.stderr, result
        assert d.instance_names() == []
        d.cli("image", "delete", f"evil-{how}")
    case = next(c for c in CASES if c.name == "symlink-then-write")
    image = build_case(case, canary, tmp_path, "xz")
    status, doc, _ = api(d, "POST", "/1.0/images", image.read_bytes())
    assert wait(d, doc)["status"] == "Success"
    status, doc, _ = api(d, "POST", "/1.0/instances", {
        "name": "r1", "source": {"type": "image", "fingerprint": fingerprint(image)}})
    op = wait(d, doc)
    assert op["status"] == "Failure" and re.search(case.message, op["err"]), op
    assert d.instance_names() == []
    status, doc, _ = api(d, "DELETE", f"/1.0/images/{fingerprint(image)}")
    assert wait(d, doc)["status"] == "Success"
    assert data_paths(d) == paths_before, data_paths(d) - paths_before
    canary.check()


def test_low_priority_unpack_keeps_the_rules(canary: Canary, tmp_path: Path) -> None:
    """The image volume's unpack after a first launch (``python -m lxfs.images unpack``, in
    a process of its own) refuses as the unpack does, with the limit it is given."""
    case = next(c for c in CASES if c.name == "symlink-then-write")
    image = build_case(case, canary, tmp_path, "xz")
    with pytest.raises(ImageError, match=case.message):
        unpack_image_low_priority(image, None, tmp_path / "vol")
    big = write_tar(tmp_path / "big.tar.gz", [*base_members(),
                                              reg("rootfs/zero", b"\0" * (2 << 20))], "gz")
    with pytest.raises(ImageError, match="images.max_unpacked_size"):
        unpack_image_low_priority(big, None, tmp_path / "vol", 1 << 20)
    assert list(tmp_path.glob("vol*")) == [] and list(tmp_path.glob(".vol*")) == []
    unpack_image_low_priority(big, None, tmp_path / "vol", 4 << 20)
    assert (tmp_path / "vol/rootfs/zero").stat().st_size == 2 << 20
    canary.check()


def test_unpack_failure_at_launch_is_reported(lxfs_daemon: Any, tmp_path: Path) -> None:
    """A squashfs that lists fine but whose data is corrupt imports, then fails to unpack at
    launch: the user gets the unpack error, and the pool keeps no half-made volume."""
    d = lxfs_daemon
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_text("hello world line\n" * 200_000)
    rootfs = make_squashfs(src, tmp_path / "corrupt.squashfs")
    data = bytearray(rootfs.read_bytes())
    for i in range(200, 260):  # inside the first (compressed) data block
        data[i] ^= 0x55
    rootfs.write_bytes(bytes(data))
    meta = write_tar(tmp_path / "meta.tar.gz", [reg("metadata.yaml", METADATA)], "gz")
    d.cli("image", "import", meta, rootfs, "--alias", "corrupt")
    paths_before = data_paths(d)
    result = d.cli("launch", "corrupt", "c1", check=False, timeout=120)
    assert result.returncode != 0
    assert re.search(r"image \w{12}: unpacking \S+ failed: .*uncompress", result.stderr), result
    assert "internal error" not in result.stderr
    left = {p for p in data_paths(d) - paths_before if "/c1" not in f"/{p}"}
    assert left == set(), left


def legit_from_busybox(busybox_image: Path, out: Path) -> Path:
    """The busybox image plus the legitimate oddities of :func:`legit_extras`."""
    members: list[Member] = []
    with tarfile.open(busybox_image, "r:*") as tf:
        for info in tf:
            f = tf.extractfile(info) if info.isreg() else None
            members.append((info, f.read() if f is not None else None))
    names = {info.name.rstrip("/") for info, _ in members}
    if "rootfs/bin" not in names:
        members.append(dir_("rootfs/bin"))
    members += legit_extras()
    return write_tar(out, members, "gz")


def test_legit_image_imports_and_launches(lxfs_daemon: Any, busybox_image: Path,
                                          tmp_path: Path) -> None:
    d = lxfs_daemon
    image = legit_from_busybox(busybox_image, tmp_path / "legit.tar.gz")
    d.cli("image", "import", image, "--alias", "legit", timeout=120)
    d.cli("launch", "legit", "l1", timeout=120)
    assert d.read("instances", "l1", "state") == "RUNNING"
    script = ('stat -c "%a %h %F" /opt/suid; readlink /opt/abs-sh; test -p /opt/fifo && '
              'echo fifo; test -e /opt/sda || echo no-sda; /opt/suid')
    out = d.cli("exec", "l1", "--", "sh", "-c", script).stdout.split("\n")
    assert out[:5] == ["4755 2 regular file", "/bin/busybox", "fifo", "no-sda", "suid"], out
    assert device_nodes(d.data_dir) == []
    assert "device nodes (and hard links to them) skipped: rootfs/opt/sda" in (
        d.log_path.read_text())
