"""Image servers: the daemon's clients of the two protocols LXD pulls images with, and the
image cache's background task.

- ``simplestreams``: ``streams/v1/index.json`` → the products file (``images.json``) →
  the product and version for an alias (``debian/12``: the host's architecture;
  ``debian/12/arm64``: that one) or a fingerprint; unified images (``lxd_combined.tar.gz``)
  and split ones (``lxd.tar.xz`` with ``squashfs`` or ``root.tar.xz``); each file's size
  and sha256 checked as it arrives.
- ``lxd``: ``GET /1.0/images/aliases/NAME``, ``/1.0/images/FP`` and
  ``/1.0/images/FP/export`` (a unified file, or a split image as multipart/form-data),
  anonymously: public images, or a private one with the secret its owner made
  (``?secret=``).

HTTP is the standard library's ``http.client`` run in worker threads (one blocking call per
trip: connect, the head, each 1 MiB of a body), with a socket timeout so that a server that
stalls fails the pull within ``timeout`` seconds. HTTPS checks the server's certificate
against the system's CAs (``SSL_CERT_FILE`` too), or, when the source gives one (as
``lxc`` sends the certificate it keeps for a remote), requires exactly that certificate.
Nothing of it is imported before the first pull.

The cache task (``lxfs_services``) deletes cached images unused for
``images.remote_cache_expiry`` days and refreshes ``auto_update`` images every
``images.auto_update_interval`` hours. ``LXFS_TEST_HOUR_SECONDS`` (a test knob) sets the
length of an hour for both (a day is 24 of them).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit

import trio

from lxfs import hookimpl
from lxfs.errors import InvalidArgument, LxfsError, NotFound, OperationFailed
from lxfs.image_servers import (
    ImageServer,
    Progress,
    RemoteImage,
    normalize_architecture,
    products_images,
)

if TYPE_CHECKING:
    import http.client

    from lxfs.api import Host

log = logging.getLogger("lxfs.images")

CHUNK = 1 << 20
MAX_DOCUMENT = 64 << 20  # the largest JSON document read from a server
MAX_REDIRECTS = 5


class DownloadError(OperationFailed):
    """A server unreachable, stalled, answering an error, or a file that fails its check."""


# --- HTTP (blocking: worker threads only) --------------------------------------------------

def _tls_context(certificate: str) -> Any:
    import ssl  # noqa: PLC0415 - only for a pull over HTTPS

    if not certificate:
        return ssl.create_default_context()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the pinned certificate is the check
    context.verify_mode = ssl.CERT_NONE
    return context


def _pinned_der(certificate: str) -> bytes:
    import ssl  # noqa: PLC0415

    try:
        return ssl.PEM_cert_to_DER_cert(certificate.strip() + "\n")
    except ValueError as exc:
        raise InvalidArgument(f"the image server's certificate is not a PEM certificate: "
                              f"{exc}") from None


def _open(url: str, certificate: str, timeout: float, method: str = "GET"
          ) -> http.client.HTTPResponse:
    """GET (or HEAD) ``url``, following redirects: the response, its status 200; or
    DownloadError (NotFound for a 404)."""
    import http.client  # noqa: PLC0415

    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument(f"{url}: not an http(s) URL")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            if parts.scheme == "https":
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    parts.hostname, parts.port, timeout=timeout,
                    context=_tls_context(certificate))
            else:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
            conn.connect()
            if certificate and parts.scheme == "https":  # checked before a byte is sent
                sock: Any = conn.sock
                if sock.getpeercert(binary_form=True) != _pinned_der(certificate):
                    conn.close()
                    raise DownloadError(f"{parts.netloc}: the server's certificate is not the "
                                        "one given for it")
            conn.request(method, path, headers={"User-Agent": "lxfs"})
            response = conn.getresponse()
        except TimeoutError:
            raise DownloadError(f"{parts.netloc}: no answer within {timeout:.0f} s (the "
                                "server stalls)") from None
        except OSError as exc:
            raise DownloadError(f"cannot reach image server {parts.netloc}: "
                                f"{getattr(exc, 'reason', None) or exc.strerror or exc}"
                                ) from None
        except http.client.HTTPException as exc:
            raise DownloadError(f"{parts.netloc}: bad HTTP answer: {exc!r}") from None
        if response.status in (301, 302, 303, 307, 308) and response.getheader("location"):
            url = urljoin(url, response.getheader("location") or "")
            response.close()
            conn.close()
            continue
        if response.status != 200:
            reason = response.reason
            try:
                body = response.read(4096)
                reason = json.loads(body).get("error") or reason
            except (OSError, ValueError, AttributeError, http.client.HTTPException):
                pass
            conn.close()
            error = NotFound if response.status == 404 else DownloadError
            raise error(f"{url}: {response.status} {reason}")
        return response
    raise DownloadError(f"{url}: too many redirects")


def _read(response: http.client.HTTPResponse, size: int, url: str, timeout: float) -> bytes:
    try:
        return response.read1(size)
    except TimeoutError:
        raise DownloadError(f"{url}: the server stalled (nothing for {timeout:.0f} s)"
                            ) from None
    except OSError as exc:
        raise DownloadError(f"{url}: download cut: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - http.client's IncompleteRead and the like
        raise DownloadError(f"{url}: download cut: {exc!r}") from None


class Http:
    """GETs from one server, each blocking step in a worker thread; no file larger than
    ``max_size`` (0: no limit)."""

    def __init__(self, certificate: str, timeout: float, max_size: int = 0) -> None:
        self.certificate = certificate
        self.timeout = timeout
        self.max_size = max_size

    async def json(self, url: str) -> Any:
        response = await trio.to_thread.run_sync(_open, url, self.certificate, self.timeout)
        try:
            data = bytearray()
            while chunk := await trio.to_thread.run_sync(_read, response, CHUNK, url,
                                                         self.timeout):
                data += chunk
                if len(data) > MAX_DOCUMENT:
                    raise DownloadError(f"{url}: larger than {MAX_DOCUMENT} bytes")
        finally:
            response.close()
        try:
            return json.loads(data)
        except ValueError as exc:
            raise DownloadError(f"{url}: not JSON ({exc})") from None

    async def file(self, url: str, dest: Path, stage: str, progress: Progress,
                   size: int = 0, sha256: str = "") -> dict[str, str]:
        """Download ``url`` into ``dest``; check ``size`` and ``sha256`` when given. Returns
        the response's headers."""
        if self.max_size and size > self.max_size:
            raise DownloadError(f"{url}: {size} bytes, more than images.max_unpacked_size "
                                f"({self.max_size})")
        response = await trio.to_thread.run_sync(_open, url, self.certificate, self.timeout)
        total = size or int(response.getheader("content-length") or 0)
        digest = hashlib.sha256()
        done, last = 0, 0.0
        try:
            with open(dest, "wb") as out:
                while chunk := await trio.to_thread.run_sync(_read, response, CHUNK, url,
                                                             self.timeout):
                    digest.update(chunk)
                    await trio.to_thread.run_sync(out.write, chunk)
                    done += len(chunk)
                    if size and done > size:
                        raise DownloadError(f"{url}: larger than the {size} bytes announced")
                    if self.max_size and done > self.max_size:
                        raise DownloadError(f"{url}: larger than images.max_unpacked_size "
                                            f"({self.max_size} bytes)")
                    if time.monotonic() - last > 0.5:
                        last = time.monotonic()
                        progress(stage, done, total)
            headers = {k.lower(): v for k, v in response.getheaders()}
        finally:
            response.close()
        progress(stage, done, total)
        if (size and done != size) or (not size and total and done != total):
            raise DownloadError(f"{url}: truncated download ({done} of {size or total} bytes)")
        if sha256 and digest.hexdigest() != sha256.lower():
            raise DownloadError(f"{url}: sha256 mismatch (got {digest.hexdigest()}, the server "
                                f"announced {sha256})")
        return headers


def _join(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")


# --- simplestreams -------------------------------------------------------------------------

class SimpleStreams(ImageServer):
    protocol = "simplestreams"

    async def _images(self) -> list[dict[str, Any]]:
        http = Http(self.source.certificate, self.timeout, self.max_size)
        index = await http.json(_join(self.source.server, "streams/v1/index.json"))
        found = []
        for entry in (index.get("index") or {}).values() if isinstance(index, dict) else []:
            if isinstance(entry, dict) and entry.get("datatype") == "image-downloads" \
                    and entry.get("products") and entry.get("path"):
                products = await http.json(_join(self.source.server, entry["path"]))
                if isinstance(products, dict):
                    found += products_images(products)
        return found

    async def resolve(self, ref: str, architectures: list[str]) -> RemoteImage:
        candidates = await self._images()
        matches = []
        for c in candidates:
            if ref in c["aliases"] and c["architecture"] in architectures:
                matches.append(c)
            elif any(ref in (f"{a}/{c['arch_name']}", f"{a}/{c['architecture']}")
                     for a in c["aliases"]):
                matches.append(c)
        if not matches and len(ref) >= 1 and all(ch in "0123456789abcdef" for ch in ref):
            matches = [c for c in candidates if c["fingerprint"].startswith(ref)]
            if len({c["fingerprint"] for c in matches}) > 1:
                raise InvalidArgument(f"fingerprint prefix {ref!r} is ambiguous on "
                                      f"{self.source.server}")
        if not matches:
            raise NotFound(f"image {ref!r} not found on {self.source.server} (simplestreams)")
        # the host's own architecture first, then the newest serial, then squashfs first
        order = {a: n for n, a in enumerate(architectures)}
        best = min(matches, key=lambda c: (order.get(c["architecture"], len(order)),
                                           _desc(c["serial"]), c["rank"]))
        return RemoteImage(fingerprint=best["fingerprint"], architecture=best["architecture"],
                           properties=best["properties"], aliases=best["aliases"],
                           filename=best["filename"], files=best["files"])

    async def download(self, image: RemoteImage, directory: Path, progress: Progress
                       ) -> tuple[Path, Path | None]:
        http = Http(self.source.certificate, self.timeout, self.max_size)
        paths: list[Path] = []
        for kind, path, size, sha256 in image.files:  # type: ignore[misc]
            dest = directory / ("metadata" if kind == "meta" else "rootfs")
            await http.file(_join(self.source.server, path), dest,
                            "metadata" if kind == "meta" else "rootfs", progress, size, sha256)
            paths.append(dest)
        return paths[0], (paths[1] if len(paths) > 1 else None)


def _desc(serial: str) -> tuple[int, ...]:
    """A key sorting serials newest first."""
    return tuple(-ord(ch) for ch in serial)


# --- the LXD protocol ----------------------------------------------------------------------

class Lxd(ImageServer):
    protocol = "lxd"

    def _url(self, path: str) -> str:
        url = _join(self.source.server, path)
        return url + (f"?secret={quote(self.source.secret)}" if self.source.secret else "")

    async def resolve(self, ref: str, architectures: list[str]) -> RemoteImage:
        http = Http(self.source.certificate, self.timeout, self.max_size)
        fingerprint = ref
        try:
            alias = await http.json(_join(self.source.server,
                                          f"1.0/images/aliases/{quote(ref, safe='')}"))
            fingerprint = str((alias.get("metadata") or {}).get("target") or ref)
        except NotFound:
            pass
        try:
            doc = await http.json(self._url(f"1.0/images/{quote(fingerprint, safe='')}"))
        except NotFound:
            raise NotFound(f"image {ref!r} not found on {self.source.server} (or it is "
                           "private: a secret is needed)") from None
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        if not isinstance(meta, dict) or not meta.get("fingerprint"):
            raise DownloadError(f"{self.source.server}: not an LXD image document")
        return RemoteImage(fingerprint=str(meta["fingerprint"]).lower(),
                           architecture=normalize_architecture(str(meta.get("architecture"))),
                           properties=dict(meta.get("properties") or {}),
                           aliases=[a.get("name", "") for a in meta.get("aliases") or []],
                           public=bool(meta.get("public")),
                           filename=str(meta.get("filename") or ""),
                           files=[int(meta.get("size") or 0)])

    async def download(self, image: RemoteImage, directory: Path, progress: Progress
                       ) -> tuple[Path, Path | None]:
        http = Http(self.source.certificate, self.timeout, self.max_size)
        body = directory / "export"
        headers = await http.file(self._url(f"1.0/images/{image.fingerprint}/export"), body,
                                  "metadata", progress)
        ctype = headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return body, None
        meta, rootfs = await trio.to_thread.run_sync(_split_parts, body, ctype, directory)
        return meta, rootfs


def _split_parts(body: Path, ctype: str, directory: Path) -> tuple[Path, Path]:
    """A split export (multipart/form-data: ``metadata``, ``rootfs``) as two files."""
    from multipart import (  # noqa: PLC0415
        MultipartError,
        MultipartSegment,
        PushMultipartParser,
        parse_options_header,
    )

    boundary = parse_options_header(ctype)[1].get("boundary", "")
    paths = {"metadata": directory / "metadata", "rootfs": directory / "rootfs"}
    out = None
    try:
        with open(body, "rb") as f:
            parser = PushMultipartParser(boundary, max_segment_count=4)
            while chunk := f.read(CHUNK):
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        if out:
                            out.close()
                        if event.name not in paths:
                            raise DownloadError(f"unexpected part {event.name!r} in a split "
                                                "image export")
                        out = open(paths[event.name], "wb")  # noqa: SIM115
                    elif event is not None and out is not None:
                        out.write(event)
            parser.close()
    except MultipartError as exc:
        raise DownloadError(f"invalid split image export: {exc}") from None
    finally:
        if out:
            out.close()
        body.unlink(missing_ok=True)
    if not all(p.exists() for p in paths.values()):
        raise DownloadError("a split image export without both metadata and rootfs")
    return paths["metadata"], paths["rootfs"]


class Url(ImageServer):
    """``source.type=url`` (LXD's direct download): a HEAD of the URL answers
    ``LXD-Image-Hash`` (the fingerprint) and ``LXD-Image-URL`` (the image file, a unified
    tarball or a split image's multipart export)."""

    protocol = "url"

    async def resolve(self, ref: str, architectures: list[str]) -> RemoteImage:
        response = await trio.to_thread.run_sync(_open, self.source.server,
                                                 self.source.certificate, self.timeout, "HEAD")
        response.close()
        fingerprint = (response.getheader("lxd-image-hash") or "").strip().lower()
        location = (response.getheader("lxd-image-url") or "").strip()
        if not fingerprint or not location:
            raise DownloadError(f"{self.source.server}: no LXD-Image-Hash and LXD-Image-URL "
                                "headers: not an LXD image URL")
        location = urljoin(self.source.server, location)
        return RemoteImage(fingerprint=fingerprint, filename=location.rsplit("/", 1)[-1],
                           files=[location])

    async def download(self, image: RemoteImage, directory: Path, progress: Progress
                       ) -> tuple[Path, Path | None]:
        http = Http(self.source.certificate, self.timeout, self.max_size)
        body = directory / "download"
        headers = await http.file(str(image.files[0]), body, "metadata", progress)
        ctype = headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return body, None
        return await trio.to_thread.run_sync(_split_parts, body, ctype, directory)


@hookimpl
def lxfs_image_servers() -> list[type[ImageServer]]:
    return [SimpleStreams, Lxd, Url]


# --- the cache's background task -----------------------------------------------------------

def hour_seconds() -> float:
    return float(os.environ.get("LXFS_TEST_HOUR_SECONDS") or 3600)


@hookimpl
def lxfs_services(host: Host) -> list[Any]:
    return [functools.partial(maintain_cache, host)]


async def maintain_cache(host: Host, task_status: trio.TaskStatus[None] =
                         trio.TASK_STATUS_IGNORED) -> None:
    """Expire unused cached images and refresh auto-update ones, for as long as the
    daemon runs; a failure is logged and tried again at the next round."""
    ops = host.operations
    hour = hour_seconds()
    last_update = trio.current_time()
    task_status.started()
    while True:
        await trio.sleep(min(hour / 2, 300))
        try:
            expiry = ops.image_setting("images.remote_cache_expiry")
            if expiry:
                await ops.expire_cached_images(expiry * 24 * hour)
            interval = ops.image_setting("images.auto_update_interval")
            if interval and trio.current_time() - last_update >= interval * hour:
                last_update = trio.current_time()
                await ops.refresh_images()
        except (LxfsError, OSError) as exc:
            log.error("image cache maintenance: %s", exc)
