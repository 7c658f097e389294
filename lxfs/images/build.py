"""Building images: deterministic unified tarballs, and the command line
``python -m lxfs.images`` (build, inspect, classify) that the recipes in ``contrib/images``
call to pack the busybox and debian images they assemble.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

from lxfs.images.format import (
    _TOP_LEVEL,
    ImageError,
    _parse_metadata,
    classify_upload,
    inspect_image,
)

Compression = Literal["xz", "gzip", "bzip2", "zstd", "none"]

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
    """``python -m lxfs.images build|inspect|classify ...`` (see the package docstring)."""
    from lxfs import images  # the package: its docstring's first line describes the tool

    parser = argparse.ArgumentParser(
        prog="python -m lxfs.images", description=images.__doc__.split("\n")[0]
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
