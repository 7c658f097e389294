"""lxfs: a system container manager whose API is a filesystem."""

from __future__ import annotations

__version__ = "0.1.0"

TYPE_CHECKING = False  # typing costs 2 ms of the lxfs command's start-up
if TYPE_CHECKING:
    from typing import Any

    import pluggy

    hookimpl: pluggy.HookimplMarker


def __getattr__(name: str) -> Any:
    """``lxfs.hookimpl``, made on first use: the ``lxfs`` command never imports pluggy."""
    if name == "hookimpl":
        import pluggy  # noqa: PLC0415

        marker = pluggy.HookimplMarker("lxfs")
        globals()["hookimpl"] = marker
        return marker
    raise AttributeError(f"module 'lxfs' has no attribute {name!r}")


__all__ = ["hookimpl", "__version__"]
