"""``python -m lxfs.cli``."""

from lxfs.cli import main

main()
