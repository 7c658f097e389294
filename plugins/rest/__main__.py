"""``python -m lxfs_plugins.rest [PATH]``: write the OpenAPI document of the REST bridge
(every endpoint module loaded) to PATH, or stdout."""

from __future__ import annotations

import json
import sys

from . import _load_endpoints, openapi


def main() -> int:
    _load_endpoints()
    text = json.dumps(openapi.document(), indent=1, sort_keys=True) + "\n"
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
