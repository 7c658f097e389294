#!/usr/bin/env bash
# Install what lxfs needs, lint, and run the test suite (unit and integration tests; the
# integration tests drive the real kernel and need root).
#   sudo bash contrib/test.sh [PYTEST ARGS...]
# e.g. `sudo bash contrib/test.sh -k snapshot -x` or `sudo bash contrib/test.sh tests/test_x.py`.
# Exit code: pytest's (exit 5, "no tests collected", is a failure too); if pytest passes but
# ruff found problems, 1.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_BIN="$REPO/.venv/bin"

bash "$REPO/contrib/install-deps.sh"
cd "$REPO"

# Machine facts, for CI logs.
{
    echo "== machine"
    echo "kernel:  $(uname -srm)"
    echo "os:      $(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null)"
    echo "lxc:     $(lxc-start --version 2>/dev/null || echo 'not found')"
    echo "python:  $("$VENV_BIN/python" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
    echo "fuse:    $(fusermount3 --version 2>&1 | head -n 1) ($([[ -c /dev/fuse ]] && echo /dev/fuse present || echo /dev/fuse MISSING))"
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
        echo "cgroups: v2 (unified)"
    else
        echo "cgroups: v1 ($(find /sys/fs/cgroup -mindepth 1 -maxdepth 1 -printf '%f ' 2>/dev/null))"
    fi
    echo "user:    $(id -un) (uid $EUID); cpus: $(nproc); subuid root: $(grep -E '^(root|0):' /etc/subuid 2>/dev/null | head -n 1 || echo none)"
    echo "ruff:    $("$VENV_BIN/ruff" --version)"
}

echo "== ruff check ."
ruff_rc=0
"$VENV_BIN/ruff" check . || ruff_rc=$?

# Default to the whole tests/ directory unless the arguments name paths themselves.
paths_given=0
for arg in "$@"; do
    if [[ $arg != -* && -e ${arg%%::*} ]]; then
        paths_given=1
    fi
done
args=(-v)
((paths_given)) || args+=(tests)

echo "== python -m pytest ${args[*]} $*"
pytest_rc=0
"$VENV_BIN/python" -m pytest "${args[@]}" "$@" || pytest_rc=$?

if ((pytest_rc == 5)); then
    echo "test.sh: FAILED: pytest collected no tests (there must be tests)" >&2
elif ((pytest_rc != 0)); then
    echo "test.sh: FAILED: pytest exited with $pytest_rc" >&2
fi
if ((ruff_rc != 0)); then
    echo "test.sh: FAILED: ruff check found problems (exit $ruff_rc)" >&2
    ((pytest_rc != 0)) || exit 1
fi
exit "$pytest_rc"
