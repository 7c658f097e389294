"""What every ``lxfs`` command needs, on ``os`` alone: the CLI's errors, the mount point and
value files. ``lxfs exec`` runs on this module only (no argparse, re or pathlib: start-up is
most of a short command's time); ``lxfs.cli.mount`` builds the rest on it."""

from __future__ import annotations

import errno
import os

DEFAULT_MOUNT = "/lxfs"


class CLIError(Exception):
    """An expected failure: printed as ``Error: MESSAGE`` and exit status 1."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class NoMount(CLIError):
    """No lxfs daemon answers at the mount point (printed without the ``Error:`` prefix)."""


def mount_point() -> str:
    """The configured mount point (env ``LXFS_MOUNT`` or ``/lxfs``)."""
    return os.environ.get("LXFS_MOUNT") or DEFAULT_MOUNT


def check_mount(root: str) -> None:
    """Fail with one clear line unless an lxfs daemon answers at ``root``."""
    try:
        os.stat(os.path.join(root, "environment", "server_pid"))
    except FileNotFoundError as exc:
        raise NoMount(
            f"lxfs: no lxfs daemon mounted at {root} (start lxfsd, or set LXFS_MOUNT)"
        ) from exc
    except PermissionError as exc:
        raise NoMount(
            f"lxfs: permission denied on {root}: lxfs is for root and members of group lxfs "
            "(usermod -aG lxfs USER, then log in again)"
        ) from exc
    except OSError as exc:
        raise NoMount(
            f"lxfs: the lxfs daemon at {root} is not answering ({exc.strerror}); "
            "restart lxfsd"
        ) from exc


def write_raw(path: str | os.PathLike[str], value: str) -> None:
    """Write ``value`` in a single write() on a truncated file; errors of close() surface too."""
    data = value.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise
    os.close(fd)


def daemon_error(root: str, exc: OSError, scope: str | None = None, fallback: str = "") -> str:
    """Message for a failed operation on the mount: the ``error`` file of ``scope`` (an
    instance directory) or of ``root`` when there is no scope, else ``fallback`` or the
    errno's text."""
    try:
        text = read_text(os.path.join(root if scope is None else scope, "error")).strip()
    except OSError:
        text = ""
    if text:
        return "; ".join(line.strip() for line in text.splitlines() if line.strip())
    if exc.errno == errno.ENOTCONN:
        return f"the lxfs daemon is not answering ({exc.strerror})"
    return fallback or exc.strerror or str(exc)


def read_text(path: str | os.PathLike[str]) -> str:
    """Read a value file, dropping one trailing newline."""
    with open(path, encoding="utf-8", errors="replace") as f:
        data = f.read()
    return data[:-1] if data.endswith("\n") else data


def read_opt(path: str | os.PathLike[str], default: str = "") -> str:
    """Read a value file, or ``default`` when it does not exist."""
    try:
        return read_text(path)
    except (FileNotFoundError, NotADirectoryError):
        return default


#: the project the command works in ("": the default one, the mount's top level), set by
#: ``--project`` or the current project (``lxfs.cli.projects``)
_project = [""]


def set_project(name: str) -> None:
    _project[0] = "" if name == "default" else name


def current_project() -> str:
    return _project[0]


def instances_root(root: str, project: str | None = None) -> str:
    """``ROOT/instances``, or ``ROOT/projects/PROJECT/instances`` in another project."""
    project = _project[0] if project is None else project
    if project in ("", "default"):
        return os.path.join(root, "instances")
    return os.path.join(root, "projects", project, "instances")


def host_name(name: str) -> str:
    """The host-level name (LXC's) of instance ``name`` of the current project."""
    return f"{_project[0]}_{name}" if _project[0] else name


def read_dir_values(directory: str | os.PathLike[str]) -> dict[str, str]:
    """Read every file of a directory as ``{name: value}`` (sorted; missing dir -> empty)."""
    out: dict[str, str] = {}
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return out
    for entry in entries:
        try:
            if entry.is_file():
                out[entry.name] = read_text(entry.path)
        except (FileNotFoundError, IsADirectoryError):
            continue
        except PermissionError:
            if entry.stat().st_mode & 0o444 == 0:
                out[entry.name] = "true"  # a secret: set, never shown (as LXD shows it)
    return out


def list_dirs(directory: str | os.PathLike[str]) -> list[str]:
    """Names of the subdirectories of ``directory`` (missing -> empty)."""
    try:
        return [e.name for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def instance_dir(root: str, name: str) -> str:
    """``ROOT/instances/NAME`` (in the current project); ``Instance not found`` when it
    does not exist."""
    if not name or "/" in name or name in (".", ".."):
        raise CLIError(f"Invalid instance name: {name!r}")
    path = os.path.join(instances_root(root), name)
    if not os.path.isdir(path):
        raise CLIError("Instance not found")
    return path
