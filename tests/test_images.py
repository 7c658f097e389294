"""Tests for lxfs.images: detect, inspect, unpack, templates, deterministic builds, recipes."""

from __future__ import annotations

import hashlib
import io
import os
import pty
import shutil
import signal
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

import lxfs.images.format as images_format
from lxfs.images import (
    ImageError,
    ImageInfo,
    build_unified_tarball,
    classify_upload,
    inspect_image,
    normalize_architecture,
    render_template_text,
    render_templates,
    unpack_image,
)

REPO = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
# What these tests need is installed by contrib/install-deps.sh: a missing piece is a failure,
# never a skip.
needs_root = pytest.mark.usefixtures("_require_root")
needs_squashfs = pytest.mark.usefixtures("_require_squashfs")


@pytest.fixture
def _require_root() -> None:
    if not IS_ROOT:
        pytest.fail("needs root (chown, mknod): run the suite as root (contrib/test.sh)")


@pytest.fixture
def _require_squashfs() -> None:
    if shutil.which("mksquashfs") is None or shutil.which("unsquashfs") is None:
        pytest.fail("needs squashfs-tools (installed by contrib/install-deps.sh)")

METADATA = """\
architecture: amd64
creation_date: 1700000000
expiry_date: 1800000000
properties:
  os: testos
  release: 1.10
  description: "Test image: tiny"
templates:
  /etc/hostname:
    when: [create, copy]
    template: hostname.tpl
  /etc/motd:
    when:
      - start
    template: motd.tpl
    properties:
      greeting: Hello
  /etc/firstboot:
    when: [create, start]
    create_only: true
    template: firstboot.tpl
"""


def sha256(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def make_src(base: Path) -> Path:
    """A small image source dir: metadata.yaml, templates/ and a rootfs with varied files."""
    src = base / "src"
    r = src / "rootfs"
    for d in ("etc", "bin", "tmp", "home/user", "dev"):
        (r / d).mkdir(parents=True, exist_ok=True)
    (src / "templates").mkdir()
    (src / "metadata.yaml").write_text(METADATA)
    (src / "templates/hostname.tpl").write_text("{{ container.name }}\n")
    (src / "templates/motd.tpl").write_text(
        "{{ properties.greeting }} from {{ instance.name }}"
        '{% if config_get("user.motd", "") != "" %}: {{ config_get("user.motd", "") }}'
        "{% endif %}\n"
    )
    (src / "templates/firstboot.tpl").write_text("first boot of {{ container.name }}\n")
    (r / "etc/hostname").write_text("template\n")
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (r / "bin/tool").write_bytes(b"\x7fELF fake binary")
    (r / "bin/tool").chmod(0o4755)
    (r / "tmp").chmod(0o1777)
    (r / "home/user/secret").write_text("s3cret\n")
    (r / "home/user/secret").chmod(0o600)
    os.symlink("/bin/tool", r / "bin/link")
    os.symlink("../etc/passwd", r / "bin/rel")
    os.link(r / "bin/tool", r / "bin/hard")
    if IS_ROOT:
        os.chown(r / "home/user", 1000, 1000)
        os.chown(r / "home/user/secret", 1000, 1001)
        os.mknod(r / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    try:
        os.setxattr(r / "etc/passwd", "user.lxfs", b"kept")
    except OSError:
        pass
    return src


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_src(tmp_path)


@pytest.fixture
def unified(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "image.tar.xz"
    build_unified_tarball(src, out)
    return out


def make_split(src: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A split image: metadata tarball (gzip) and a squashfs of the rootfs."""
    meta = tmp_path / "meta.tar.gz"
    with tarfile.open(meta, "w:gz") as tf:
        tf.add(src / "metadata.yaml", "metadata.yaml")
        tf.add(src / "templates", "templates")
    rootfs = tmp_path / "rootfs.squashfs"
    subprocess.run(
        ["mksquashfs", str(src / "rootfs"), str(rootfs), "-noappend", "-quiet", "-no-progress"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return meta, rootfs


def add_bytes(tf: tarfile.TarFile, name: str, data: bytes, **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data))


# --- classify -------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["xz", "gzip", "bzip2", "zstd", "none"])
def test_classify_unified_any_compression(src: Path, tmp_path: Path, compression: str) -> None:
    out = tmp_path / f"img.{compression}"
    build_unified_tarball(src, out, compression)  # type: ignore[arg-type]
    assert classify_upload(out) == "unified"
    assert inspect_image(out).fingerprint == sha256(out)


@needs_squashfs
def test_classify_split_parts(src: Path, tmp_path: Path) -> None:
    meta, rootfs = make_split(src, tmp_path)
    assert classify_upload(meta) == "metadata"
    assert classify_upload(rootfs) == "squashfs"


def test_classify_not_images(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    text = tmp_path / "text"
    text.write_text("hello\n" * 100)
    gz = tmp_path / "junk.gz"
    subprocess.run(["gzip", "-kn", str(text)], check=True)
    (tmp_path / "text.gz").rename(gz)
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tf:
        add_bytes(tf, "rootfs/etc/x", b"x")
    for p in (empty, text, gz, plain, tmp_path / "missing"):
        assert classify_upload(p) is None, p


def test_classify_stops_early(src: Path, tmp_path: Path) -> None:
    """metadata.yaml and rootfs/ come first: a truncated tail is never read."""
    (src / "rootfs/big").write_bytes(os.urandom(2 << 20))
    out = tmp_path / "img.tar.gz"
    build_unified_tarball(src, out, "gzip")
    data = out.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    assert classify_upload(cut) == "unified"
    with pytest.raises(ImageError):
        unpack_image(cut, None, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_unpack_rejects_corrupt_compression(tmp_path: Path) -> None:
    """A complete tar inside an xz stream followed by garbage: the import's short read (in
    process) stops at the tar's end, the unpack's xz fails on the rest."""
    img = tmp_path / "meta.tar.xz"
    with tarfile.open(img, "w:xz") as tf:
        add_bytes(tf, "metadata.yaml", b"architecture: x86_64\n")
    good = img.read_bytes()
    assert classify_upload(img) == "metadata"
    bad = tmp_path / "bad.tar.xz"
    bad.write_bytes(good + b"garbage" * 10)
    assert classify_upload(bad) == "metadata"
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tf:
        add_bytes(tf, "./etc/hostname", b"x\n")
    inspect_image(bad, rootfs)
    with pytest.raises(ImageError, match="corrupt xz"):
        unpack_image(bad, rootfs, tmp_path / "vol")
    assert not (tmp_path / "vol").exists()


def test_metadata_last_is_read_once(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """classify then inspect of an image storing metadata.yaml last share one scan."""
    img = tmp_path / "last.tar.xz"
    subprocess.run(
        ["tar", "--xz", "-cf", str(img), "-C", str(src), "rootfs", "templates", "metadata.yaml"],
        check=True,
    )
    assert classify_upload(img) == "unified"
    calls: list[object] = []
    real = images_format._tar_stream
    monkeypatch.setattr(images_format, "_tar_stream",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    assert inspect_image(img).fingerprint == sha256(img)
    assert calls == []
    os.utime(img)  # changed file: scanned again
    assert classify_upload(img) == "unified"


def test_classify_then_inspect_read_the_head_once(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload's classify reads the tarball as far as metadata.yaml and rootfs/, and
    inspect reuses that scan (as LXD, the import never reads the rest); a tail that cannot
    be read still imports, and the unpack tells why."""
    (src / "rootfs/big").write_bytes(os.urandom(4 << 20))
    img = tmp_path / "img.tar.gz"
    build_unified_tarball(src, img, "gzip")
    calls: list[object] = []
    real = images_format._tar_stream
    monkeypatch.setattr(images_format, "_tar_stream",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    opened = images_format.gzip.GzipFile
    reads: list[int] = []

    class Counting(opened):  # type: ignore[misc, valid-type]
        def read(self, size: int = -1) -> bytes:
            data = super().read(size)
            reads.append(len(data))
            return data

    monkeypatch.setattr(images_format.gzip, "GzipFile", Counting)
    assert classify_upload(img) == "unified"
    assert inspect_image(img).fingerprint == sha256(img)
    assert len(calls) == 1
    assert sum(reads) < 1 << 20  # not the 4 MiB file
    monkeypatch.setattr(images_format.gzip, "GzipFile", opened)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
    assert classify_upload(cut) == "unified"
    assert inspect_image(cut).fingerprint == sha256(cut)
    with pytest.raises(ImageError, match="cannot read the gzip tarball"):
        unpack_image(cut, None, tmp_path / "vol")
    assert not (tmp_path / "vol").exists()


# --- inspect --------------------------------------------------------------------------------


def test_inspect_unified(unified: Path) -> None:
    info = inspect_image(unified)
    assert isinstance(info, ImageInfo)
    assert info.fingerprint == sha256(unified)
    assert info.filename == "image.tar.xz"
    assert info.size == unified.stat().st_size
    assert info.architecture == "x86_64"
    assert info.created_at == 1700000000
    assert info.expiry_date == 1800000000
    assert info.properties == {
        "os": "testos",
        "release": "1.10",
        "description": "Test image: tiny",
    }
    assert info.templates["/etc/hostname"] == {
        "when": ["create", "copy"],
        "template": "hostname.tpl",
        "create_only": False,
        "properties": {},
    }
    assert info.templates["/etc/motd"]["properties"] == {"greeting": "Hello"}
    assert info.templates["/etc/firstboot"]["create_only"] is True
    assert info.split is False
    assert info.type == "container"


@needs_squashfs
def test_inspect_split(src: Path, tmp_path: Path) -> None:
    meta, rootfs = make_split(src, tmp_path)
    info = inspect_image(meta, rootfs)
    assert info.fingerprint == sha256(meta, rootfs)
    assert info.size == meta.stat().st_size + rootfs.stat().st_size
    assert info.split is True
    assert info.filename == "meta.tar.gz"
    assert info.properties["os"] == "testos"


def test_architecture_names() -> None:
    assert normalize_architecture("amd64") == "x86_64"
    assert normalize_architecture("arm64") == "aarch64"
    assert normalize_architecture("x86_64") == "x86_64"
    assert normalize_architecture("ppc64el") == "ppc64le"


@needs_squashfs
def test_inspect_errors(src: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    with pytest.raises(ImageError, match="not an LXD image: neither a tarball nor a squashfs"):
        inspect_image(text)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        inspect_image(empty)
    nometa = tmp_path / "nometa.tar"
    with tarfile.open(nometa, "w") as tf:
        add_bytes(tf, "rootfs/etc/x", b"x")
    with pytest.raises(ImageError, match="not an LXD image: no metadata.yaml in tarball"):
        inspect_image(nometa)
    meta, rootfs = make_split(src, tmp_path)
    with pytest.raises(ImageError, match="split image.*rootfs"):
        inspect_image(meta)
    with pytest.raises(ImageError, match="split image's rootfs"):
        inspect_image(rootfs)
    with pytest.raises(ImageError, match="rootfs file is neither"):
        inspect_image(meta, text)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("architecture: [\n", "invalid metadata.yaml"),
        ("- a\n- b\n", "not a mapping"),
        ("creation_date: 1\n", "no architecture"),
        ("architecture: x86_64\ncreation_date: soon\n", "creation_date is not an integer"),
        (
            "architecture: x86_64\ntemplates:\n  /etc/x:\n    when: [create]\n"
            "    template: ../../etc/shadow\n",
            "bad template file name",
        ),
        ("architecture: x86_64\nproperties:\n  os: [a, b]\n", "properties.os must be a string"),
    ],
)
def test_inspect_bad_metadata(tmp_path: Path, yaml_text: str, message: str) -> None:
    img = tmp_path / "bad.tar"
    with tarfile.open(img, "w") as tf:
        add_bytes(tf, "metadata.yaml", yaml_text.encode())
        add_bytes(tf, "rootfs/x", b"x")
    with pytest.raises(ImageError, match=message):
        inspect_image(img)


def test_inspect_dot_slash_names_and_metadata_last(tmp_path: Path) -> None:
    """Members named ./metadata.yaml, stored after the rootfs (as some tools write them)."""
    img = tmp_path / "odd.tar.gz"
    with tarfile.open(img, "w:gz") as tf:
        add_bytes(tf, "./rootfs/etc/hostname", b"x\n")
        add_bytes(tf, "./metadata.yaml", b"architecture: arm64\ncreation_date: 5\n")
    assert classify_upload(img) == "unified"
    info = inspect_image(img)
    assert (info.architecture, info.created_at) == ("aarch64", 5)
    dest = tmp_path / "vol"
    unpack_image(img, None, dest)
    assert (dest / "rootfs/etc/hostname").read_text() == "x\n"


# --- unpack ---------------------------------------------------------------------------------


def check_unpacked(dest: Path, src: Path) -> None:
    r = dest / "rootfs"
    assert (dest / "metadata.yaml").read_text() == METADATA
    assert (dest / "templates/hostname.tpl").is_file()
    assert (r / "etc/hostname").read_text() == "template\n"
    assert stat.S_IMODE((r / "bin/tool").stat().st_mode) == 0o4755
    assert stat.S_IMODE((r / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((r / "home/user/secret").stat().st_mode) == 0o600
    assert os.readlink(r / "bin/link") == "/bin/tool"
    assert os.readlink(r / "bin/rel") == "../etc/passwd"
    assert (r / "bin/hard").stat().st_ino == (r / "bin/tool").stat().st_ino
    if IS_ROOT:
        st = (r / "home/user/secret").stat()
        assert (st.st_uid, st.st_gid) == (1000, 1001)
        assert (r / "home/user").stat().st_uid == 1000
        assert not os.path.lexists(r / "dev/null")  # device nodes are skipped
    try:
        expected = os.getxattr(src / "rootfs/etc/passwd", "user.lxfs")
    except OSError:
        expected = None
    if expected is not None:
        assert os.getxattr(r / "etc/passwd", "user.lxfs") == expected


def no_leftovers(parent: Path, keep: set[str]) -> None:
    assert {p.name for p in parent.iterdir()} <= keep


def test_unpack_unified(src: Path, unified: Path, tmp_path: Path) -> None:
    dest = tmp_path / "volumes" / "img"
    dest.parent.mkdir()
    unpack_image(unified, None, dest)
    check_unpacked(dest, src)
    assert sorted(p.name for p in dest.iterdir()) == ["metadata.yaml", "rootfs", "templates"]
    no_leftovers(dest.parent, {"img"})


def test_unpack_reports_its_progress(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                     ) -> None:
    """``progress(done, total)``: bytes of the image's files read, rising, ending at the
    total (xz and zstd are fed from our open file, whose offset is the progress)."""
    import lxfs.images.unpack as unpack_module

    monkeypatch.setattr(unpack_module.time, "monotonic", iter(range(0, 10**6, 1)).__next__)
    (src / "rootfs" / "big").write_bytes(os.urandom(3 << 20))  # incompressible: many reads
    for compression in ("xz", "zstd", "gzip"):
        image = tmp_path / f"image.{compression}"
        build_unified_tarball(src, image, compression=compression)
        seen: list[tuple[int, int]] = []
        unpack_image(image, None, tmp_path / f"dest-{compression}",
                     lambda done, total, seen=seen: seen.append((done, total)))
        size = image.stat().st_size
        assert seen[-1] == (size, size), compression
        assert len(seen) > 2 and all(total == size for _, total in seen), compression
        assert [d for d, _ in seen] == sorted(d for d, _ in seen), compression


def test_unpack_into_empty_dir_and_refuse_non_empty(
    src: Path, unified: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "vol"
    dest.mkdir(mode=0o700)
    unpack_image(unified, None, dest)
    check_unpacked(dest, src)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert sorted(p.name for p in dest.iterdir()) == ["metadata.yaml", "rootfs", "templates"]
    with pytest.raises(FileExistsError):
        unpack_image(unified, None, dest)


@needs_squashfs
def test_unpack_split_squashfs(src: Path, tmp_path: Path) -> None:
    meta, rootfs = make_split(src, tmp_path)
    dest = tmp_path / "vol"
    unpack_image(meta, rootfs, dest)
    check_unpacked(dest, src)


def test_unpack_split_tarball_rootfs(src: Path, tmp_path: Path) -> None:
    meta = tmp_path / "meta.tar"
    subprocess.run(
        ["tar", "-cf", str(meta), "-C", str(src), "metadata.yaml", "templates"], check=True
    )
    rootfs = tmp_path / "rootfs.tar.zst"
    subprocess.run(
        [
            "tar",
            "--zstd",
            "--xattrs",
            "--numeric-owner",
            "-cf",
            str(rootfs),
            "-C",
            str(src / "rootfs"),
            ".",
        ],
        check=True,
    )
    assert classify_upload(meta) == "metadata"
    assert inspect_image(meta, rootfs).fingerprint == sha256(meta, rootfs)
    dest = tmp_path / "vol"
    unpack_image(meta, rootfs, dest)
    check_unpacked(dest, src)


def test_unpack_low_priority_runs_the_same_unpack(unified: Path, tmp_path: Path) -> None:
    """unpack_image_low_priority (python -m lxfs.images unpack, niced) unpacks as
    unpack_image does, and reports a refusal as an ImageError with the unpack's reason."""
    from lxfs.images import unpack_image_low_priority

    unpack_image_low_priority(unified, None, tmp_path / "idle")
    unpack_image(unified, None, tmp_path / "direct")
    for rel in ("metadata.yaml", "rootfs/etc/hostname", "templates/hostname.tpl"):
        assert (tmp_path / "idle" / rel).read_bytes() == (tmp_path / "direct" / rel).read_bytes()
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tf:
        tf.addfile(tarfile.TarInfo("metadata.yaml"), io.BytesIO(b""))
    with pytest.raises(ImageError, match="no rootfs"):
        unpack_image_low_priority(bad, None, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_unpack_failure_leaves_nothing(tmp_path: Path) -> None:
    parent = tmp_path / "volumes"
    parent.mkdir()
    img = tmp_path / "nometa.tar"
    with tarfile.open(img, "w") as tf:
        add_bytes(tf, "rootfs/etc/x", b"x")
    with pytest.raises(ImageError, match="no metadata.yaml"):
        unpack_image(img, None, parent / "vol")
    metaonly = tmp_path / "meta.tar"
    with tarfile.open(metaonly, "w") as tf:
        add_bytes(tf, "metadata.yaml", b"architecture: x86_64\n")
    with pytest.raises(ImageError, match="no rootfs/"):
        unpack_image(metaonly, None, parent / "vol")
    assert list(parent.iterdir()) == []


def test_unpack_refuses_escapes(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    meta = b"architecture: x86_64\n"
    dotdot = tmp_path / "dotdot.tar"
    with tarfile.open(dotdot, "w") as tf:
        add_bytes(tf, "metadata.yaml", meta)
        add_bytes(tf, "rootfs/../../outside/evil", b"evil")
    with pytest.raises(ImageError, match="unpacking"):
        unpack_image(dotdot, None, tmp_path / "v1")
    absolute = tmp_path / "abs.tar"
    with tarfile.open(absolute, "w") as tf:
        add_bytes(tf, "metadata.yaml", meta)
        add_bytes(tf, str(outside / "abs-evil"), b"evil")
        add_bytes(tf, "rootfs/ok", b"ok")
    with pytest.raises(ImageError, match="absolute"):
        unpack_image(absolute, None, tmp_path / "v2")
    viasymlink = tmp_path / "link.tar"
    with tarfile.open(viasymlink, "w") as tf:
        add_bytes(tf, "metadata.yaml", meta)
        add_bytes(tf, "rootfs/esc", b"", type=tarfile.SYMTYPE, linkname=str(outside))
        add_bytes(tf, "rootfs/esc/pwned", b"evil")
    with pytest.raises(ImageError):
        unpack_image(viasymlink, None, tmp_path / "v3")
    assert list(outside.iterdir()) == []
    assert not any((tmp_path / v).exists() for v in ("v1", "v2", "v3"))


# --- templates ------------------------------------------------------------------------------


def test_render_templates_triggers(unified: Path, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    unpack_image(unified, None, vol)
    r = vol / "rootfs"
    (r / "etc/hostname").chmod(0o640)
    render_templates(vol, "create", {"name": "c1"})
    assert (r / "etc/hostname").read_text() == "c1\n"
    assert stat.S_IMODE((r / "etc/hostname").stat().st_mode) == 0o640  # kept
    assert (r / "etc/firstboot").read_text() == "first boot of c1\n"
    assert stat.S_IMODE((r / "etc/firstboot").stat().st_mode) == 0o644
    assert not (r / "etc/motd").exists()
    render_templates(vol, "start", {"name": "c2", "config": {"user.motd": "be nice\n"}})
    assert (r / "etc/motd").read_text() == "Hello from c2: be nice\n"
    assert (r / "etc/firstboot").read_text() == "first boot of c1\n"  # create_only
    assert (r / "etc/hostname").read_text() == "c1\n"  # not a start template
    render_templates(vol, "start", {"name": "c3"})
    assert (r / "etc/motd").read_text() == "Hello from c3\n"
    render_templates(vol, "copy", {"name": "c4"})
    assert (r / "etc/hostname").read_text() == "c4\n"
    assert not [p for p in (r / "etc").iterdir() if p.name.startswith(".")]


@needs_root
def test_render_templates_owner_and_confinement(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    (vol / "templates").mkdir(parents=True)
    (vol / "rootfs").mkdir()
    os.chown(vol / "rootfs", 100000, 100000)
    (vol / "metadata.yaml").write_text(
        "architecture: x86_64\ntemplates:\n"
        "  /etc/new/dir/file:\n    when: [create]\n    template: t.tpl\n"
        "  /escape/file:\n    when: [create]\n    template: t.tpl\n"
        "  /up/../../../abs-escape:\n    when: [create]\n    template: t.tpl\n"
        "  /etc/linked:\n    when: [create]\n    template: t.tpl\n"
    )
    (vol / "templates/t.tpl").write_text("{{ container.name }}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("host file\n")
    os.symlink(str(outside), vol / "rootfs/escape")  # absolute link: resolved in the rootfs
    (vol / "rootfs/up").mkdir()
    (vol / "rootfs/etc").mkdir()
    os.symlink(str(outside / "victim"), vol / "rootfs/etc/linked")
    render_templates(vol, "create", {"name": "c1"})
    r = vol / "rootfs"
    f = r / "etc/new/dir/file"
    assert f.read_text() == "c1"
    assert (f.stat().st_uid, f.stat().st_gid) == (100000, 100000)
    assert (r / "etc/new").stat().st_uid == 100000
    assert (r / str(outside).lstrip("/") / "file").read_text() == "c1"
    assert (r / "abs-escape").read_text() == "c1"
    assert not (r / "etc/linked").is_symlink() and (r / "etc/linked").read_text() == "c1"
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "host file\n"
    assert not (tmp_path / "abs-escape").exists()


def test_render_templates_refuse_symlinked_templates(tmp_path: Path) -> None:
    """templates/ entries that are symlinks (to host files) are never read."""
    secret = tmp_path / "host-secret"
    secret.write_text("host secret\n")
    vol = tmp_path / "vol"
    (vol / "rootfs").mkdir(parents=True)
    (vol / "templates").mkdir()
    os.symlink(secret, vol / "templates/leak.tpl")
    (vol / "metadata.yaml").write_text(
        "architecture: x86_64\ntemplates:\n  /leak:\n    when: [create]\n    template: leak.tpl\n"
    )
    with pytest.raises(ImageError, match="not a regular file"):
        render_templates(vol, "create", {"name": "c"})
    assert not (vol / "rootfs/leak").exists()
    img = tmp_path / "img.tar"
    with tarfile.open(img, "w") as tf:
        add_bytes(tf, "metadata.yaml", b"architecture: x86_64\n")
        add_bytes(tf, "templates", b"", type=tarfile.SYMTYPE, linkname=str(tmp_path))
        add_bytes(tf, "rootfs/x", b"x")
    with pytest.raises(ImageError, match="templates is not a directory"):
        unpack_image(img, None, tmp_path / "v")
    assert not (tmp_path / "v").exists()


def test_render_template_missing_file(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    (vol / "rootfs").mkdir(parents=True)
    (vol / "metadata.yaml").write_text(
        "architecture: x86_64\ntemplates:\n  /x:\n    when: [start]\n    template: gone.tpl\n"
    )
    render_templates(vol, "create", {"name": "c"})  # not triggered: fine
    with pytest.raises(ImageError, match="gone.tpl"):
        render_templates(vol, "start", {"name": "c"})


CTX = {
    "container": {"name": "web1", "privileged": False},
    "instance": {"name": "web1"},
    "properties": {"default": "#cloud-config\n{}", "mode": "dhcp"},
    "config": {"user.a": "A", "limits.cpu": "2"},
    "config_get": lambda k, d=None: {"user.a": "A", "limits.cpu": "2"}.get(k, d),
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ container.name }}", "web1"),
        ("{{container.name}}-{{ instance.name }}", "web1-web1"),
        ("{{ properties.mode }}", "dhcp"),
        ("[{{ properties.missing }}]", "[]"),
        ('{{ config_get("user.a", "x") }}/{{ config_get("user.b", "x") }}', "A/x"),
        ('{{ config_get("user.b", properties.mode) }}', "dhcp"),
        ('{{ config["limits.cpu"] }}', "2"),
        ('{{ properties.missing|default:"dflt" }}|{{ container.name|upper }}', "dflt|WEB1"),
        ("{{ container.privileged }}", "False"),
        ('{% if properties.mode == "dhcp" %}D{% else %}S{% endif %}', "D"),
        ('{% if properties.mode != "dhcp" %}D{% elif container.name %}N{% endif %}', "N"),
        ('{% if not config_get("user.b", "") %}none{% endif %}', "none"),
        ('{% if config_get("user.a", "") == "" and true %}x{% else %}y{% endif %}', "y"),
        ("{% if 1 < 2 or x %}{% if false %}a{% else %}b{% endif %}{% endif %}", "b"),
        ('{% if "web" in container.name %}yes{% endif %}', "yes"),
        ("a {# note #}b", "a b"),
        ("a\n  {%- if true -%}\n  b\n  {%- endif %}\n", "ab\n"),
        ("{% for x in y %}{{ x }}{% endfor %}", "{% for x in y %}{% endfor %}"),
        ("{{ container.name $ }}", "{{ container.name $ }}"),
        (
            "{% if container.name ?? 1 %}a{% else %}b{% endif %}c",
            "{% if container.name ?? 1 %}a{% else %}b{% endif %}c",
        ),
        ("{% autoescape off %}<&>{% endautoescape %}", "<&>"),
    ],
)
def test_template_language(template: str, expected: str) -> None:
    assert render_template_text(template, CTX) == expected


def test_template_unclosed_if() -> None:
    with pytest.raises(ImageError, match="endif"):
        render_template_text("{% if true %}x", CTX)


# --- build ----------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["xz", "gzip", "zstd"])
def test_build_is_deterministic(src: Path, tmp_path: Path, compression: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    build_unified_tarball(src, a, compression)  # type: ignore[arg-type]
    for p in (src / "rootfs/etc/hostname", src / "rootfs/bin"):
        os.utime(p, (time.time() + 5, time.time() + 5))  # newer than creation_date: clamped
    (src / "rootfs/etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    build_unified_tarball(src, b, compression)  # type: ignore[arg-type]
    assert sha256(a) == sha256(b)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("compression", ["xz", "gzip", "zstd", "bzip2", "none"])
def test_build_returns_the_fingerprint(src: Path, tmp_path: Path, compression: str) -> None:
    """The sha256 is hashed as the tarball is written: it is the file's, for every
    compression, and inspect (which reads the file) agrees."""
    out = tmp_path / "img"
    fingerprint = build_unified_tarball(src, out, compression)  # type: ignore[arg-type]
    assert fingerprint == sha256(out) == inspect_image(out).fingerprint


@pytest.mark.parametrize("size", [0, 1, 100_000, (256 << 10) * 3, (256 << 10) * 5 + 12345])
def test_parallel_gzip_is_gzip_whatever_the_threads(size: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process parallel gzip writes one gzip member that gzip and Python read back,
    and the same bytes with 1 or 4 threads (blocks do not depend on the thread count)."""
    import gzip

    from lxfs.images import build

    data = (os.urandom(size // 3) + b"lxfs image " * (size // 11))[:size]
    outputs = []
    for cpus in (1, 4):
        monkeypatch.setattr(os, "cpu_count", lambda c=cpus: c)
        chunks: list[bytes] = []
        build._parallel_gzip(io.BytesIO(data), chunks.append)
        outputs.append(b"".join(chunks))
    assert outputs[0] == outputs[1]
    assert gzip.decompress(outputs[0]) == data
    proc = subprocess.run(["gzip", "-dc"], input=outputs[0], capture_output=True, check=True)
    assert proc.stdout == data


def test_write_digest_stands_for_a_second_pass(unified: Path, tmp_path: Path) -> None:
    """A file hashed as it was written gets the fingerprint a full read gives; a write out of
    order, or a change after the writer closed it, sends inspect back to reading it."""
    from lxfs.images import WriteDigest

    data = unified.read_bytes()
    third = len(data) // 3
    cases = {"in-order": [0, third, 2 * third], "out-of-order": [0, 2 * third, third]}
    for name, cuts in cases.items():
        copy = tmp_path / name
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT, 0o600)
        digest = WriteDigest()
        bounds = sorted(cuts) + [len(data)]
        pieces = {start: data[start:bounds[bounds.index(start) + 1]] for start in cuts}
        for start in cuts:
            digest.pwrite(fd, pieces[start], start)
        os.close(fd)
        assert digest.usable == (name == "in-order")
        digest.remember(copy)
        remembered = images_format._identity(os.stat(copy)) in images_format._digests
        assert remembered == digest.usable
        assert inspect_image(copy).fingerprint == sha256(unified)
    stale = tmp_path / "stale"
    shutil.copyfile(tmp_path / "in-order", stale)
    fd = os.open(stale, os.O_WRONLY)
    digest = WriteDigest()
    digest.pwrite(fd, data[:12], 0)  # the same bytes, but only the first 12 hashed
    os.close(fd)
    digest.remember(stale)  # covers 12 bytes of a longer file: not remembered
    assert inspect_image(stale).fingerprint == sha256(unified)


def test_remembered_digest_is_used_and_forgotten_on_change(unified: Path,
                                                          tmp_path: Path) -> None:
    """While the file is unchanged its remembered digest is the fingerprint (no read); any
    change (size, mtime) makes inspect hash the file again."""
    from lxfs.images import WriteDigest

    copy = tmp_path / "img"
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT, 0o600)
    digest = WriteDigest()
    digest.pwrite(fd, unified.read_bytes(), 0)
    os.close(fd)
    digest.remember(copy)
    assert images_format._sha256_files(copy) == sha256(unified)
    st = os.stat(copy)
    key = images_format._identity(st)
    images_format._digests[key] = "0" * 64  # what only the remembered digest could say
    assert images_format._sha256_files(copy) == "0" * 64
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert images_format._sha256_files(copy) == sha256(unified)
    del images_format._digests[key]


@needs_root
def test_publish_volume_says_what_inspect_says(unified: Path, tmp_path: Path) -> None:
    """publish_volume returns the image's record without reading the tarball again: the same
    fingerprint, metadata and size as inspect_image reads from it."""

    from lxfs.images import publish_volume

    volume = tmp_path / "volume"
    unpack_image(unified, None, volume)
    outputs = tmp_path / "out"
    outputs.mkdir()
    for compression in ("gzip", "xz", "none"):
        out = outputs / f"published-{compression}"
        info = publish_volume(volume, out, "amd64", {"os": "testos", "note": " spaced "},
                              compression)  # type: ignore[arg-type]
        inspected = inspect_image(out)
        assert inspected == info
        assert info.properties == {"os": "testos", "note": "spaced"}
        assert info.templates and info.architecture == "x86_64"
    with pytest.raises(ImageError, match="property name"):
        publish_volume(volume, outputs / "bad", "amd64", {"a/b": "x"})
    assert sorted(p.name for p in outputs.iterdir()) == [  # no staging left behind
        "published-gzip", "published-none", "published-xz"]


def test_build_layout_and_root_owner(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "img.tar"
    build_unified_tarball(src, out, "none", root_owner=True)
    with tarfile.open(out) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names[0] == "metadata.yaml" and names[1] == "rootfs"
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert {(m.uid, m.gid) for m in members} == {(0, 0)}
    assert {m.mtime for m in members} == {1700000000}


def test_build_rejects_incomplete(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    with pytest.raises(ImageError, match="no metadata.yaml"):
        build_unified_tarball(tmp_path / "s", tmp_path / "o")
    (tmp_path / "s/metadata.yaml").write_text("architecture: x86_64\n")
    with pytest.raises(ImageError, match="no rootfs/"):
        build_unified_tarball(tmp_path / "s", tmp_path / "o")


# --- recipes --------------------------------------------------------------------------------


def run_recipe(script: str, *args: str, timeout: int = 120) -> Path:
    proc = subprocess.run(
        ["bash", str(REPO / "contrib/images" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


def test_busybox_recipe_reproducible(tmp_path: Path) -> None:
    first = run_recipe("busybox.sh", str(tmp_path / "one"))
    second = run_recipe("busybox.sh", str(tmp_path / "two"))
    assert first == tmp_path / "one/busybox.tar.xz"
    assert sha256(first) == sha256(second)
    info = inspect_image(first)
    assert info.fingerprint == sha256(first)
    assert info.properties["os"] == "busybox"
    assert info.properties["description"].startswith("BusyBox ")
    assert info.architecture == os.uname().machine
    assert info.templates["/etc/hostname"]["when"] == ["create", "copy"]
    vol = tmp_path / "vol"
    unpack_image(first, None, vol)
    r = vol / "rootfs"
    assert os.readlink(r / "sbin/init") == "/bin/busybox"
    assert os.readlink(r / "bin/sh") == "/bin/busybox"
    assert stat.S_IMODE((r / "tmp").stat().st_mode) == 0o1777
    assert list((r / "dev").iterdir()) == []
    assert "udhcpc" in (r / "etc/init.d/rcS").read_text()
    assert os.access(r / "usr/share/udhcpc/default.script", os.X_OK)
    render_templates(vol, "create", {"name": "bb1"})
    assert (r / "etc/hostname").read_text() == "bb1\n"
    assert "127.0.1.1\tbb1" in (r / "etc/hosts").read_text()


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGPWR, signal.SIGUSR1])
def test_busybox_init_halts(tmp_path: Path, sig: signal.Signals) -> None:
    """The image's init, PID 1 of a PID namespace as under LXC, halts on SIGPWR and SIGUSR1."""
    image = run_recipe("busybox.sh", str(tmp_path / "out"))
    vol = tmp_path / "vol"
    unpack_image(image, None, vol)
    r = vol / "rootfs"
    script = (
        f"mount -t proc proc {r}/proc && mount -t tmpfs tmpfs {r}/dev && "
        f"mknod -m 666 {r}/dev/null c 1 3 && exec chroot {r} /sbin/init"
    )
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount", "--kill-child", "sh", "-c", script],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        deadline = time.monotonic() + 5
        while not children.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.05)
        init_pid = int(children.read_text().split()[0])
        time.sleep(0.5)  # let sysinit run
        os.kill(init_pid, sig)
        status = proc.wait(timeout=10)
        # A halt in a PID namespace ends its init with SIGINT (a reboot would be SIGHUP).
        assert status == -signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


@pytest.mark.integration
def test_debian_recipe(tmp_path: Path, debian_image: Path) -> None:
    image = debian_image
    assert image.name == "debian-bookworm.tar.xz"
    info = inspect_image(image)
    assert info.properties["os"] == "debian" and info.properties["release"] == "bookworm"
    vol = tmp_path / "vol"
    unpack_image(image, None, vol)
    init = vol / "rootfs/sbin/init"
    assert init.read_text().startswith("#!/bin/sh") and os.access(init, os.X_OK)
    assert (vol / "rootfs/etc/debian_version").exists()
    render_templates(vol, "create", {"name": "deb1"})
    assert (vol / "rootfs/etc/hostname").read_text() == "deb1\n"
