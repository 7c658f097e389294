#!/usr/bin/env bash
# Stop lxfsd: SIGTERM to the PID in its pid file, then wait. The daemon unmounts its filesystem
# and leaves containers running (they do not depend on the mount).
#   sudo bash contrib/down.sh [--force]
# --force: if lxfsd has not exited after the timeout, SIGKILL it and detach the mount.
#
# Environment: LXFS_DIR (default /var/lib/lxfs), LXFS_MOUNT (default /lxfs),
# LXFS_DOWN_TIMEOUT (seconds to wait, default 60).
set -euo pipefail

MOUNT="${LXFS_MOUNT:-/lxfs}"
DATA_DIR="${LXFS_DIR:-/var/lib/lxfs}"
TIMEOUT="${LXFS_DOWN_TIMEOUT:-60}"
UNIT=lxfsd.service
FORCE=0

for arg in "$@"; do
    case $arg in
        --force) FORCE=1 ;;
        -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
        *) printf 'down: unknown argument: %s\n' "$arg" >&2; exit 2 ;;
    esac
done

log() { printf 'down: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (try: sudo bash $0)"

# Read from /proc (never stat the mount point: a hung daemon would hang us).
mounted() {
    awk -v m="$MOUNT" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

is_lxfsd() { # is_lxfsd PID
    [[ $1 =~ ^[0-9]+$ ]] || return 1
    { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null | grep -qE '(^|/)lxfsd( |$)|-m lxfs\.daemon( |$)'
}

detach_mount() {
    if mounted; then
        log "detaching $MOUNT"
        fusermount3 -u -z "$MOUNT" 2>/dev/null || umount -l "$MOUNT" || true
    fi
}

# Under systemd, let the unit manager stop its own service (KillMode=process: only lxfsd).
if [[ -d /run/systemd/system ]] && systemctl is-active --quiet "$UNIT" 2>/dev/null; then
    log "stopping $UNIT"
    systemctl stop "$UNIT"
    detach_mount
    printf 'lxfsd stopped; containers keep running\n'
    exit 0
fi

pid="$(cat "$DATA_DIR/lxfsd.pid" 2>/dev/null || true)"
if ! is_lxfsd "$pid"; then
    # No usable pid file: ask the mount itself (bounded, in case the daemon hangs).
    pid="$(timeout -k 1 5 cat "$MOUNT/environment/server_pid" 2>/dev/null || true)"
    pid="${pid//[[:space:]]/}"
fi
if ! is_lxfsd "$pid"; then
    log "lxfsd is not running"
    detach_mount # a stale mount left by a crash answers ENOTCONN
    exit 0
fi

log "sending SIGTERM to lxfsd (pid $pid)"
kill -TERM "$pid"
deadline=$((SECONDS + TIMEOUT))
while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
        if ((FORCE)); then
            log "lxfsd still running after ${TIMEOUT}s: sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            detach_mount
            break
        fi
        die "lxfsd (pid $pid) still running after ${TIMEOUT}s; see $DATA_DIR/lxfsd.log" \
            "(rerun with --force to kill it)"
    fi
    sleep 0.2
done

if mounted; then
    log "warning: lxfsd exited but $MOUNT is still mounted"
    detach_mount
fi
printf 'lxfsd stopped; containers keep running\n'
