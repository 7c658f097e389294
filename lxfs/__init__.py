"""lxfs: a system container manager whose API is a filesystem."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("lxfs")

__all__ = ["hookimpl", "__version__"]
