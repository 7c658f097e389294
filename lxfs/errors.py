"""Errors that carry both an errno (for the mount) and a message (for people)."""

from __future__ import annotations

import errno


class LxfsError(Exception):
    """An error meant for the user: ``message`` is shown, ``errno`` is what the mount returns."""

    errno: int = errno.EIO
    status: int = 500

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if err is not None:
            self.errno = err

    def __str__(self) -> str:
        return self.message


class InvalidArgument(LxfsError):
    errno = errno.EINVAL
    status = 400


class NotFound(LxfsError):
    errno = errno.ENOENT
    status = 404


class AlreadyExists(LxfsError):
    errno = errno.EEXIST
    status = 409


class Busy(LxfsError):
    errno = errno.EBUSY
    status = 400


class PermissionDenied(LxfsError):
    errno = errno.EACCES
    status = 403


class OperationFailed(LxfsError):
    errno = errno.EIO
    status = 500


class NotSupported(LxfsError):
    errno = errno.EOPNOTSUPP
    status = 501
