"""Image servers in the ``lxfs`` command: launching from and copying out of a remote of
protocol ``simplestreams`` or ``lxd`` (the daemon pulls: the mount's remote references), and
``lxfs image export-streams DIR`` (this host's public images as a static simplestreams
tree that any web server can serve)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from lxfs.cli.mount import CLIError, Mount, parse_bool, read_dir_values, read_lines, read_opt

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def remote_reference(remote: Any, image: str) -> str:
    """The mount's one-line remote reference (``PROTOCOL URL IMAGE [certificate=B64]``)
    of ``image`` on ``remote`` (the certificate: the one kept for the remote, if any)."""
    from lxfs.cli.remotes import server_cert_path  # noqa: PLC0415

    words = [remote.protocol, remote.addr, image]
    if remote.protocol == "lxd" and not remote.public:
        from lxfs.cli.remote_commands import private_image_secret  # noqa: PLC0415

        fingerprint, secret = private_image_secret(remote, image)
        if secret:  # a private image: the daemon downloads it by fingerprint with a secret
            words[2] = fingerprint
            words.append(f"secret={secret}")
    cert = server_cert_path(remote.name)
    if cert is not None:
        body = "".join(line.strip() for line in cert.read_text().splitlines()
                       if line.strip() and not line.startswith("-----"))
        words.append(f"certificate={body}")
    return " ".join(words)


def remote_source(ref: str) -> str | None:
    """``REMOTE:IMAGE`` of an image server remote as a remote reference; None for anything
    else (a local image, ``local:IMAGE``)."""
    if ":" not in ref or ref.startswith("local:"):
        return None
    from lxfs.cli.remotes import load_config, split_remote  # noqa: PLC0415

    config = load_config()
    name, image = split_remote(ref, config)
    remote = config.remotes.get(name)
    if remote is None or remote.is_local:
        return None
    if not image:
        raise CLIError(f"no image named on remote {name}:")
    return remote_reference(remote, image)


def pull_remote_image(remote: Any, image: str, aliases: list[str], public: bool = False,
                      auto_update: bool = False) -> str:
    """Bring ``image`` of an image server (``remote``: an lxd or simplestreams remote) into
    this host's image store (the daemon downloads it: ``images/pull``); its fingerprint."""
    mount = Mount()
    line = remote_reference(remote, image)
    line += "".join(f" alias={a}" for a in aliases)
    line += " public=true" * public + " auto_update=true" * auto_update
    # its errors: the top-level error file
    with_progress(mount, line, lambda: mount.write(mount.images / "pull", line))
    return read_opt(mount.images / "pull").strip()


def with_progress(mount: Mount, reference: str, action: Callable[[], None]) -> None:
    """Run ``action`` (a write that makes the daemon pull ``reference``) in a thread and,
    on a terminal, show the download's progress as ``lxc`` does (``Retrieving image:
    rootfs: 45% (1.20MB/s)``, from the mount's ``images/pulling``)."""
    import threading  # noqa: PLC0415

    failed: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            failed.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    tty, shown = sys.stderr.isatty(), ""
    prefix = " ".join(reference.split()[1:3]) + ": "  # SERVER IMAGE, as the daemon keys it
    while worker.is_alive():
        worker.join(0.3)
        found = [line[len(prefix):] for line in read_lines(mount.images / "pulling")
                 if line.startswith(prefix)] if tty else []
        if found and found[-1] != shown:
            shown = found[-1]
            sys.stderr.write(f"\rRetrieving image: {shown}\033[K")
            sys.stderr.flush()
    if shown:
        sys.stderr.write("\r\033[K")
    if failed:
        raise failed[0]


# -- export-streams ---------------------------------------------------------------------------

def cmd_export_streams(args: argparse.Namespace) -> int:
    """Write the host's public images as a simplestreams tree in DIR."""
    from lxfs.images.streams import (  # noqa: PLC0415
        INDEX_PATH,
        PRODUCTS_PATH,
        StreamImage,
        describe_files,
        documents,
        image_dir,
    )

    mount = Mount()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    images = []
    for fp in mount.image_fingerprints():
        d = mount.images / fp
        if not parse_bool(read_opt(d / "public", "false")):
            continue
        meta, rootfs = d / "export", d / "export.rootfs"
        split = rootfs.exists()
        files = describe_files(meta, rootfs if split else None)
        where = root / image_dir(fp)
        where.mkdir(parents=True, exist_ok=True)
        for described, src in zip(files, (meta, rootfs), strict=False):
            dest = where / described.name
            if not (dest.exists() and dest.stat().st_size == described.size):
                _copy(src, dest)
        created = read_opt(d / "created_at")
        images.append(StreamImage(
            fingerprint=fp, architecture=read_opt(d / "architecture"),
            created_at=_parse_time(created), properties=read_dir_values(d / "properties"),
            aliases=read_lines(d / "aliases"), files=files))
        print(f"{fp[:12]}: {', '.join(f.name for f in files)}")
    index, products = documents(images)
    keep = {image_dir(i.fingerprint) for i in images}
    images_root = root / "images"
    if images_root.is_dir():  # images no longer public or deleted since the last export
        for entry in images_root.iterdir():
            if f"images/{entry.name}" not in keep:
                shutil.rmtree(entry, ignore_errors=True)
    for path, document in ((PRODUCTS_PATH, products), (INDEX_PATH, index)):
        _write_atomic(root / path, json.dumps(document, indent=1) + "\n")
    print(f"{len(images)} public image(s) in {root}/streams/v1/index.json")
    return 0


def _parse_time(text: str) -> float:
    import calendar  # noqa: PLC0415
    import time  # noqa: PLC0415

    try:
        return float(calendar.timegm(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return 0.0


def _copy(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CLIError(f"{exc.filename or dest}: {exc.strerror or exc}") from exc


def _write_atomic(path: Path, text: str) -> None:
    from lxfs.atomic import write_atomic  # noqa: PLC0415

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text, 0o644, sync=False)


def register(isub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``image export-streams`` to ``image``'s subcommands."""
    p = isub.add_parser("export-streams", help="Write the public images as a simplestreams "
                        "tree (streams/v1/...) that any web server can serve")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_export_streams)
