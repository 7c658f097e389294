#!/usr/bin/env bash
# Install everything lxfs needs on a Debian 12 host, idempotently:
#   - Debian packages (apt-get update is skipped when all are already installed),
#   - a subordinate uid/gid range for root in /etc/subuid and /etc/subgid,
#   - a virtualenv at $REPO/.venv with lxfs installed editable ('.[test]'), in setuptools'
#     strict mode: a tree of links under build/ on a plain .pth, not an import hook that every
#     Python start (each `lxfs` command) would pay 10 ms for; adding or removing a module
#     reinstalls (the stamp below lists them),
#   - the venv's lxfs command replaced by a launcher that starts faster than pip's wrapper,
#     and every module of the package compiled to bytecode (see "the lxfs command" below),
#   - /usr/local/bin/lxfs and /usr/local/bin/lxfsd pointing into that venv.
# Run as root, from anywhere: `sudo bash contrib/install-deps.sh`.
#
# Environment:
#   LXFS_PYTHON=/path/to/python3   interpreter of the venv (default: Debian's /usr/bin/python3
#                                  if it is 3.11 or newer, else python3 on PATH); a venv on
#                                  another interpreter is made again
#   LXFS_FORCE_PIP=1               run the pip install even if nothing changed
#   LXFS_SKIP_LINKS=1              leave /usr/local/bin alone (e.g. for a second checkout)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
STAMP="$VENV/.lxfs-deps-stamp"

# Debian packages. Keep in sync with README.md ("Quick start").
PACKAGES=(
    lxc lxc-dev uidmap busybox-static debootstrap dnsmasq-base
    fuse3 libfuse3-dev pkg-config gcc python3-venv python3-dev
    btrfs-progs libbtrfsutil-dev squashfs-tools
    nftables python3-nftables iputils-ping iproute2
    xz-utils zstd tar gzip bzip2 git ca-certificates util-linux procps
    lxd-client socat
)
# the shell tools the mount is tested with (tests/test_mount_shell_tools_integration.py)
PACKAGES+=(rsync ed vim nano diffutils findutils)
# rsync and socat also carry migrations between hosts (plugins/rest/migration/: LXD's rsync
# transport); no criu: live migration is refused (docs/rest.md, "Migration between hosts")
# apparmor_parser: loads the containers' profiles where the kernel has AppArmor, and compiles
# them in the tests everywhere (it needs no kernel support for that).
PACKAGES+=(apparmor)

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (try: sudo bash $0)"

# Serialise concurrent runs (apt, the venv and /usr/local/bin are shared).
LOCKFILE=/run/lock/lxfs-install-deps.lock
[[ -d /run/lock ]] || LOCKFILE=/tmp/lxfs-install-deps.lock
exec {lock_fd}>"$LOCKFILE"
if ! flock -w 600 "$lock_fd"; then
    die "another install-deps.sh holds $LOCKFILE for more than 10 minutes"
fi

# --- Debian packages -------------------------------------------------------------------------
missing_packages() {
    local p status
    for p in "${PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)"
        [[ $status == ii* ]] || printf '%s\n' "$p"
    done
}

mapfile -t missing < <(missing_packages)
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_opts=(-q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef
              -o Dpkg::Options::=--force-confold)
    apt-get "${apt_opts[@]}" update >/dev/null
    apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
    mapfile -t still_missing < <(missing_packages)
    ((${#still_missing[@]} == 0)) || die "packages not installed: ${still_missing[*]}"
else
    log "Debian packages: all present"
fi

# --- subordinate ids for root (LXD's default range) ------------------------------------------
for f in /etc/subuid /etc/subgid; do
    [[ -e $f ]] || install -m 0644 /dev/null "$f"
    if ! grep -qE '^(root|0):' "$f"; then
        # Make sure the last line is terminated before appending.
        if [[ -s $f && -n "$(tail -c 1 "$f")" ]]; then
            printf '\n' >>"$f"
        fi
        printf 'root:1000000:1000000000\n' >>"$f"
        log "added root:1000000:1000000000 to $f"
    fi
done

# --- the access group -------------------------------------------------------------------------
# Members of group lxfs drive the mount and the daemon's sockets, as members of LXD's group lxd
# do: they are root-equivalent (they can run privileged containers). Add users with
# `usermod -aG lxfs USER`.
if ! getent group lxfs >/dev/null; then
    groupadd --system lxfs
    log "created group lxfs"
fi

# --- FUSE ------------------------------------------------------------------------------------
if [[ ! -c /dev/fuse ]]; then
    log "warning: /dev/fuse is missing: lxfsd cannot mount (is the fuse module available?)"
fi

# --- Python virtualenv -----------------------------------------------------------------------
python_ok() { # python_ok PYTHON: true if it runs and is >= 3.11
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
}

pick_python() {
    local candidate
    # Debian's own interpreter first: every user can run it (members of group lxfs use the
    # lxfs command too; a pyenv build under /root is root's alone), and it starts faster.
    for candidate in "${LXFS_PYTHON:-}" /usr/bin/python3 python3; do
        [[ -n $candidate ]] || continue
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            # Resolve shims (pyenv) to the real interpreter.
            "$candidate" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    return 1
}

# Whether an unprivileged user can run the venv's interpreter (it may live under /root).
usable_by_others() {
    # (through sh: setpriv itself may still resolve the program as root)
    setpriv --reuid=65534 --regid=65534 --clear-groups /bin/sh -c '"$0" -c pass' "$1" \
        2>/dev/null
}

# The interpreter a venv was made with (its base, shims and symlinks resolved).
base_python() {
    realpath -e "$("$1" -c 'import sys; print(sys._base_executable)' 2>/dev/null)" 2>/dev/null
}

PY="$(pick_python)" || die "no Python 3.11+ found (install python3, or set LXFS_PYTHON)"
if [[ -x $VENV/bin/python ]] && python_ok "$VENV/bin/python" &&
    [[ "$(base_python "$VENV/bin/python")" == "$(realpath -e "$PY")" ]] &&
    { [[ -n ${LXFS_PYTHON:-} ]] || usable_by_others "$VENV/bin/python"; }; then
    log "reusing virtualenv $VENV"
else
    if [[ -e $VENV ]]; then
        log "virtualenv $VENV is broken, on another interpreter than $PY, or its python is" \
            "root's alone: recreating it"
        rm -rf "$VENV"
    fi
    log "creating virtualenv $VENV with $PY ($("$PY" --version 2>&1))"
    "$PY" -m venv "$VENV" || die "'$PY -m venv' failed (on Debian: apt-get install python3-venv)"
fi

VPY="$VENV/bin/python"
want_stamp="$( { sha256sum "$REPO/pyproject.toml"; "$VPY" -c 'import sys; print(sys.version)'
                 (cd "$REPO" && find lxfs plugins -type f ! -path '*/__pycache__/*' | sort); } \
    | sha256sum | cut -d' ' -f1)"

deps_ok() {
    [[ -f $STAMP && "$(cat "$STAMP")" == "$want_stamp" ]] || return 1
    [[ -x $VENV/bin/lxfs && -x $VENV/bin/lxfsd && -x $VENV/bin/ruff ]] || return 1
    # The editable install must still point at this checkout.
    # -I: do not put the current directory on sys.path (it may hold another checkout).
    (cd / && "$VPY" -I - "$REPO") <<'EOF' 2>/dev/null
import importlib.util, pathlib, sys
import cryptography, lxc, pluggy, pyfuse3, pyroute2, pytest, pytest_trio, trio, yaml  # noqa
spec = importlib.util.find_spec("lxfs")
repo = pathlib.Path(sys.argv[1]).resolve()
sys.exit(0 if spec and spec.origin and pathlib.Path(spec.origin).resolve().is_relative_to(repo)
         else 1)
EOF
}

if [[ ${LXFS_FORCE_PIP:-0} != 1 ]] && deps_ok; then
    log "Python packages: up to date"
else
    log "pip install -e '.[test]' (strict editable mode) into $VENV"
    rm -f "$STAMP"
    piplog="$VENV/.lxfs-pip-install.log"
    if ! (
        cd "$REPO"
        PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
            "$VPY" -m pip install --config-settings editable_mode=strict -e '.[test]'
    ) >"$piplog" 2>&1; then
        tail -n 60 "$piplog" >&2
        die "pip install -e '.[test]' failed (full output: $piplog)"
    fi
    printf '%s\n' "$want_stamp" >"$STAMP"
    if ! deps_ok; then
        rm -f "$STAMP"
        die "pip install finished but the venv is still incomplete"
    fi
fi

# --- the lxfs command ------------------------------------------------------------------------
# Start-up is most of what a short `lxfs` command costs. pip's wrapper imports re (5 ms) before
# lxfs; this launcher starts the venv's interpreter (Debian's: statically linked, faster than a
# shared-libpython build) without site (-S: the site module and the .pth files, 2-4 ms) and puts
# the directory that holds the lxfs package, then site-packages (python-lxc for exec), on
# sys.path itself. Commands past lxfs.cli's fast paths run site.main() first, then import
# installed packages as usual. pip install writes its wrapper
# again: this script then writes the launcher again.
{ read -r lxfs_dir && read -r plugins_dir; } < <(cd / && "$VPY" -I -c \
    'import lxfs, lxfs_plugins; print(lxfs.__path__[0], lxfs_plugins.__path__[0], sep="\n")') ||
    die "cannot import lxfs and lxfs_plugins with $VPY"
launcher="#!$VPY -S
\"\"\"The lxfs command: contrib/install-deps.sh wrote it (see there).\"\"\"
import sys

sys.path += $(cd / && "$VPY" -I -c 'import os, site, sys
print([os.path.dirname(sys.argv[1]), *filter(os.path.isdir, site.getsitepackages())])' \
    "$lxfs_dir")
from lxfs.cli import main

main()"
if [[ "$(cat "$VENV/bin/lxfs" 2>/dev/null)" != "$launcher" ]]; then
    printf '%s\n' "$launcher" >"$VENV/bin/lxfs.new"
    chmod 0755 "$VENV/bin/lxfs.new"
    mv -f "$VENV/bin/lxfs.new" "$VENV/bin/lxfs"
    log "wrote the lxfs launcher $VENV/bin/lxfs"
fi
# Bytecode of every module, where the venv imports them from (for an editable install, the
# tree of links under build/: the .pyc files go next to the links, not the sources), so that a
# user who cannot write there, or PYTHONDONTWRITEBYTECODE=1, compiles nothing at each command.
# (-I: PYTHONPYCACHEPREFIX, which the benchmark sets, would move them under its directory.)
if ! (cd / && "$VPY" -I -m compileall -q -j 0 \
        "$lxfs_dir" "$plugins_dir") >"$VENV/.lxfs-compileall.log" 2>&1; then
    tail -n 20 "$VENV/.lxfs-compileall.log" >&2
    die "compileall of $lxfs_dir and $plugins_dir failed (full output: $VENV/.lxfs-compileall.log)"
fi

# --- commands on PATH ------------------------------------------------------------------------
for cmd in lxfs lxfsd; do
    [[ ${LXFS_SKIP_LINKS:-0} != 1 ]] || break
    target="$VENV/bin/$cmd"
    link="/usr/local/bin/$cmd"
    if [[ "$(readlink "$link" 2>/dev/null || true)" != "$target" ]]; then
        ln -sfn "$target" "$link"
        log "linked $link -> $target"
    fi
done

log "done"
