"""``python -m lxfs.images``: the command line of :func:`lxfs.images.build.main`."""

import sys

from lxfs.images.build import main

if __name__ == "__main__":
    sys.exit(main())
