"""Access to the lxfs mount: plain file operations with LXD-style error reporting."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from lxfs.cli.base import (  # CLIError and NoMount: the commands import them from here
    CLIError,
    NoMount,  # noqa: F401
    check_mount,
    current_project,
    daemon_error,
    instance_dir,
    instances_root,
    list_dirs,
    mount_point,
    read_dir_values,
    read_opt,
    read_text,  # noqa: F401 - the commands import these from here
    write_raw,  # noqa: F401
)

TYPE_CHECKING = False  # importing typing costs 2-4 ms of start-up
if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T")

FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")


def mount_root() -> Path:
    """The configured mount point (env ``LXFS_MOUNT`` or ``/lxfs``)."""
    return Path(mount_point())


def read_lines(path: Path | str) -> list[str]:
    """Read a list file (one item per line); a missing file is an empty list."""
    return [line for line in read_opt(path).split("\n") if line]


def read_devices(directory: Path) -> dict[str, dict[str, str]]:
    """Read a ``devices/`` tree as ``{DEV: {key: value}}``."""
    out: dict[str, dict[str, str]] = {}
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return out
    for entry in entries:
        if entry.is_dir():
            out[entry.name] = read_dir_values(Path(entry.path))
    return out


def parse_bool(value: str) -> bool:
    """Parse an lxfs boolean (``true``/``false``; also 1/yes/on)."""
    return value.strip().lower() in ("true", "1", "yes", "on")


class Mount:
    """The root of an lxfs mount."""

    def __init__(self, root: Path | None = None, check: bool = True) -> None:
        self.root = root if root is not None else mount_root()
        if check:
            self.check()

    def check(self) -> None:
        """Fail with one clear line unless an lxfs daemon answers at the mount point."""
        check_mount(str(self.root))

    # -- paths -------------------------------------------------------------------------------
    @property
    def instances(self) -> Path:
        """``instances/`` of the current project (``--project``)."""
        return Path(instances_root(str(self.root)))

    @property
    def images(self) -> Path:
        """``images/`` of the current project (``--project``); aliases are shared."""
        project = current_project()
        return self.root / "projects" / project / "images" if project else \
            self.root / "images"

    @property
    def aliases(self) -> Path:
        return self.root / "images" / "aliases"

    @property
    def profiles(self) -> Path:
        """``profiles/`` of the current project (``--project``)."""
        project = current_project()
        return self.root / "projects" / project / "profiles" if project else \
            self.root / "profiles"

    def instance(self, name: str, must_exist: bool = True) -> Path:
        """Path of ``instances/NAME``; ``Instance not found`` when it does not exist."""
        if must_exist:
            return Path(instance_dir(str(self.root), name))
        if not name or "/" in name or name in (".", ".."):
            raise CLIError(f"Invalid instance name: {name!r}")
        return self.instances / name

    def profile(self, name: str) -> Path:
        """Path of ``profiles/NAME``; ``Profile not found`` when it does not exist."""
        path = self.profiles / name
        if "/" in name or not path.is_dir():
            raise CLIError("Profile not found")
        return path

    # -- errors ------------------------------------------------------------------------------
    def unset(self, path: Path, scope: Path | None = None, fallback: str = "") -> None:
        """Remove a key file (not being set is fine); a refusal becomes a CLIError with the
        daemon's reason (``error_message``)."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CLIError(self.error_message(exc, scope, fallback)) from exc

    def error_message(self, exc: OSError, scope: Path | None = None, fallback: str = "") -> str:
        """Message for a failed operation: the ``error`` file of ``scope`` (an instance
        directory) or of the root when there is no scope, else ``fallback`` or the errno's text."""
        return daemon_error(str(self.root), exc, None if scope is None else str(scope), fallback)

    def do(self, fn: Callable[[], T], scope: Path | None = None, fallback: str = "",
           messages: dict[int, str] | None = None) -> T:
        """Run a mount operation; turn an OSError into a CLIError with the daemon's message.

        ``messages`` maps errnos to messages used when no ``error`` file explains the failure.
        """
        try:
            return fn()
        except OSError as exc:
            fb = (messages or {}).get(exc.errno or 0, fallback)
            raise CLIError(self.error_message(exc, scope, fb)) from exc

    def write(self, path: Path, value: str, scope: Path | None = None, fallback: str = "",
              messages: dict[int, str] | None = None) -> None:
        """Write a value file, reporting the daemon's error."""
        self.do(lambda: write_raw(path, value), scope, fallback, messages)

    def env(self, key: str, default: str = "") -> str:
        """A value from ``environment/``."""
        return read_opt(self.root / "environment" / key, default)

    # -- images ------------------------------------------------------------------------------
    def image_fingerprints(self) -> list[str]:
        """Fingerprints of all images (directories named by a sha256)."""
        return sorted(n for n in list_dirs(self.images) if FINGERPRINT_RE.match(n))

    def resolve_image(self, ref: str) -> str:
        """Fingerprint for an alias, a fingerprint or a unique fingerprint prefix."""
        ref = strip_local_remote(ref)
        if not ref:
            raise CLIError("Image not found")
        if "/" not in ref and ref not in (".", ".."):
            alias = self.aliases / ref
            if os.path.islink(alias):
                try:
                    target = os.readlink(alias)
                except OSError:
                    target = ""
                fp = os.path.basename(target.rstrip("/"))
                if FINGERPRINT_RE.match(fp):
                    return fp
                raise CLIError(f"Image alias {ref!r} points to no image")
        ref = ref.lower()
        if FINGERPRINT_RE.match(ref) and (self.images / ref).is_dir():
            return ref
        if re.fullmatch(r"[0-9a-f]+", ref):
            matches = [fp for fp in self.image_fingerprints() if fp.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise CLIError(f"Image fingerprint prefix {ref!r} matches several images")
        raise CLIError("Image not found")


def strip_local_remote(ref: str) -> str:
    """Drop a ``local:`` prefix; refuse any other remote."""
    if ":" in ref:
        remote, rest = ref.split(":", 1)
        if remote == "local":
            return rest
        raise CLIError(f"`{remote}:` is another server, which this command does not reach "
                       "(see `lxfs remote list`; `lxfs image list|copy` and `lxfs launch` "
                       "do)")
    return ref


def iter_chunks(f, size: int = 1 << 20) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
    """Read a binary file object in chunks of ``size`` bytes (1 MiB)."""
    while True:
        chunk = f.read(size)
        if not chunk:
            return
        yield chunk
