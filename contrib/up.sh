#!/usr/bin/env bash
# Bring lxfs up on this host: install what it needs, start lxfsd (unless it already serves),
# wait until the mount answers, and build the busybox image once.
#   sudo bash contrib/up.sh
#
# Environment: LXFS_DIR (data directory, default /var/lib/lxfs), LXFS_MOUNT (default /lxfs),
# LXFS_UP_TIMEOUT (seconds to wait for the mount, default 30).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_BIN="$REPO/.venv/bin"
MOUNT="${LXFS_MOUNT:-/lxfs}"
DATA_DIR="${LXFS_DIR:-/var/lib/lxfs}"
LOG=/var/log/lxfsd.log
TIMEOUT="${LXFS_UP_TIMEOUT:-30}"
UNIT=lxfsd.service
UNIT_PATH=/etc/systemd/system/$UNIT
DROPIN=/etc/systemd/system/$UNIT.d/10-lxfs-paths.conf
export LXFS_MOUNT="$MOUNT" LXFS_DIR="$DATA_DIR"

log() { printf 'up: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (try: sudo bash $0)"

bash "$REPO/contrib/install-deps.sh"

# True when the mount answers (bounded: a hung daemon must not hang this script).
serving() {
    local pid
    pid="$(timeout -k 1 5 cat "$MOUNT/environment/server_pid" 2>/dev/null)" || return 1
    [[ -n $pid ]]
}

systemd_booted() { [[ -d /run/systemd/system ]]; }

# PID from the daemon's pid file, if that process is alive and is lxfsd.
running_pid() {
    local pid
    pid="$(cat "$DATA_DIR/lxfsd.pid" 2>/dev/null)" || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qE '(^|/)lxfsd( |$)|-m lxfs\.daemon( |$)' || return 1
    printf '%s\n' "$pid"
}

show_logs() {
    log "lxfsd did not come up; its log:"
    if systemd_booted; then
        journalctl -u "$UNIT" -n 40 --no-pager >&2 || true
    elif [[ -f $LOG ]]; then
        printf -- '--- %s (last 40 lines)\n' "$LOG" >&2
        tail -n 40 "$LOG" >&2
    fi
    if [[ -f $DATA_DIR/lxfsd.log ]]; then
        printf -- '--- %s (last 20 lines)\n' "$DATA_DIR/lxfsd.log" >&2
        tail -n 20 "$DATA_DIR/lxfsd.log" >&2
    fi
}

install_unit() {
    local reload=0
    if ! cmp -s "$REPO/contrib/lxfsd.service" "$UNIT_PATH"; then
        install -m 0644 "$REPO/contrib/lxfsd.service" "$UNIT_PATH"
        reload=1
    fi
    if [[ $DATA_DIR != /var/lib/lxfs || $MOUNT != /lxfs ]]; then
        local want
        want="$(printf '[Service]\nEnvironment="LXFS_DIR=%s" "LXFS_MOUNT=%s"\n' "$DATA_DIR" "$MOUNT")"
        if [[ "$(cat "$DROPIN" 2>/dev/null || true)" != "$want" ]]; then
            mkdir -p "$(dirname "$DROPIN")"
            printf '%s\n' "$want" >"$DROPIN"
            reload=1
        fi
    elif [[ -e $DROPIN ]]; then
        rm -f "$DROPIN"
        reload=1
    fi
    if ((reload)); then
        systemctl daemon-reload
    fi
    systemctl enable --quiet "$UNIT"
}

pid=""
if serving; then
    log "lxfsd already serves $MOUNT"
elif systemd_booted; then
    install_unit
    log "starting $UNIT"
    systemctl start "$UNIT" || { show_logs; exit 1; }
elif pid="$(running_pid)"; then
    log "lxfsd (pid $pid) is running but $MOUNT does not answer yet: waiting"
else
    mkdir -p "$(dirname "$LOG")"
    printf -- '--- %s up.sh: starting lxfsd --data-dir %s --mount %s\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$DATA_DIR" "$MOUNT" >>"$LOG"
    log "starting lxfsd (log: $LOG)"
    setsid nohup "$VENV_BIN/lxfsd" --data-dir "$DATA_DIR" --mount "$MOUNT" \
        >>"$LOG" 2>&1 </dev/null &
    pid=$!
fi

deadline=$((SECONDS + TIMEOUT))
until serving; do
    if systemd_booted; then
        state="$(systemctl is-active "$UNIT" 2>/dev/null || true)"
        if [[ $state != active && $state != activating && $state != reloading ]]; then
            show_logs
            die "$UNIT is $state"
        fi
    elif [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
        show_logs
        die "lxfsd exited before $MOUNT was ready"
    fi
    if ((SECONDS >= deadline)); then
        show_logs
        die "$MOUNT/environment/server_pid not readable after ${TIMEOUT}s (lxfsd left running;" \
            "stop it with: bash $REPO/contrib/down.sh)"
    fi
    sleep 0.2
done

# The default bridge, as `lxd init --auto` makes it (lxdbr0, a free private /24 with NAT):
# only on first setup, when no network exists yet. LXFS_INIT_BRIDGE_IPV4 chooses the subnet.
if [[ -d $MOUNT/networks && -z $(ls -A "$MOUNT/networks") ]]; then
    log "creating the default bridge (lxfs init --auto)"
    "$VENV_BIN/lxfs" init --auto || die "lxfs init --auto failed"
else
    log "networks exist: $(ls "$MOUNT/networks" 2>/dev/null | tr '\n' ' ')"
fi

alias_path="$MOUNT/images/aliases/busybox"
if [[ -L $alias_path || -e $alias_path ]]; then
    log "image alias busybox exists"
else
    log "building the busybox image (lxfs image build busybox --alias busybox)"
    "$VENV_BIN/lxfs" image build busybox --alias busybox \
        || die "building the busybox image failed"
fi

printf 'lxfs is ready at %s; try: lxfs launch busybox c1\n' "$MOUNT"
if [[ $MOUNT != /lxfs ]]; then
    printf '(first: export LXFS_MOUNT=%s)\n' "$MOUNT"
fi
