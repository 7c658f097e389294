"""Benchmarks of lxfs (issue 6): ``python -m bench --help``, docs/benchmarks.md."""
