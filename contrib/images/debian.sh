#!/bin/bash
# Build a minimal Debian system container image (LXD unified format) with debootstrap.
#
#   contrib/images/debian.sh OUTDIR [SUITE]        (SUITE defaults to bookworm)
#
# Writes OUTDIR/debian-SUITE.tar.xz and prints its path on the last line of stdout (the
# fingerprint goes to stderr). Needs root, debootstrap, tar, xz and python3 with PyYAML (the
# repo's .venv is used when present, or $PYTHON). Takes about a minute and 200 MB of space.
#
# The mirror is the host's own Debian archive as apt is configured (apt-get indextargets, so
# /etc/apt/sources.list and sources.list.d are both honoured), or $DEBIAN_MIRROR. Extra
# packages: DEBIAN_INCLUDE=pkg1,pkg2 (e.g. iproute2,isc-dhcp-client). creation_date is
# $SOURCE_DATE_EPOCH when set, else now.
#
# minbase has no init: /sbin/init is a small sh script (below). It sets the hostname, brings
# lo up when iproute2 is there (and runs dhclient on eth0 when installed), runs an executable
# /etc/rc.local, then reaps orphans. SIGPWR (LXC's default halt signal), SIGTERM, SIGINT,
# SIGUSR1 and SIGUSR2 all stop it: the other processes get SIGTERM, then SIGKILL after 10 s,
# and init exits 0.
set -euo pipefail

usage() { echo "usage: $0 OUTDIR [SUITE]" >&2; exit 2; }
case $# in 1 | 2) ;; *) usage ;; esac
OUTDIR=$1
SUITE=${2:-bookworm}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export LC_ALL=C
umask 022

[ "$(id -u)" -eq 0 ] || { echo "error: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "error: apt-get install debootstrap" >&2; exit 1; }
case $SUITE in *[!a-z0-9.-]* | "") echo "error: bad suite name: $SUITE" >&2; exit 2 ;; esac

find_mirror() {
    # The main Debian archive apt uses: origin Debian, a suite without -security/-updates.
    local targets fmt
    # shellcheck disable=SC2016 # $(...) here is apt's field syntax, not the shell's
    fmt='$(REPO_URI) $(RELEASE) $(ORIGIN)'
    targets=$(apt-get indextargets --format "$fmt" 'Identifier: Packages' 2>/dev/null || true)
    # Origin comes from the downloaded Release files; without them, the host's own codename.
    local codename
    codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null || true)
    awk -v c="$codename" '
        $3 == "Debian" && $2 !~ /-/ && !found { found = $1 }
        c != "" && $2 == c && !fallback { fallback = $1 }
        END { if (found) print found; else if (fallback) print fallback }' <<<"$targets"
}
MIRROR=${DEBIAN_MIRROR:-$(find_mirror)}
[ -n "$MIRROR" ] || {
    echo "error: no Debian mirror in apt's sources; set DEBIAN_MIRROR" >&2
    exit 1
}

EPOCH=${SOURCE_DATE_EPOCH:-$(date +%s)}
ARCH=$(uname -m)
mkdir -p "$OUTDIR"
OUT=$(cd "$OUTDIR" && pwd)/debian-$SUITE.tar.xz
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/lxfs-debian.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
R=$WORK/rootfs
mkdir -p "$WORK/templates"

echo "debootstrap $SUITE from $MIRROR" >&2
debootstrap --variant=minbase ${DEBIAN_INCLUDE:+--include="$DEBIAN_INCLUDE"} \
    "$SUITE" "$R" "$MIRROR" >&2

# Nothing of the build host stays behind.
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/var/log/bootstrap.log
: >"$R/etc/resolv.conf"
[ -e "$R/etc/machine-id" ] && : >"$R/etc/machine-id"
echo debian >"$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$R/etc/hosts"

rm -f "$R/sbin/init"
cat >"$R/sbin/init" <<'EOF'
#!/bin/sh
# lxfs minimal init for a Debian minbase container. LXC has mounted /proc, /sys and /dev.
# Stops on SIGPWR, SIGTERM, SIGINT, SIGUSR1 or SIGUSR2: SIGTERM to every other process,
# SIGKILL after 10 s, exit 0. Meanwhile it only reaps orphaned processes.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 022

if [ -s /etc/hostname ] && command -v hostname >/dev/null 2>&1; then
    read -r name </etc/hostname && [ -n "$name" ] && hostname "$name"
fi
if command -v ip >/dev/null 2>&1; then
    ip link set lo up
fi
if [ -e /sys/class/net/eth0 ] && command -v dhclient >/dev/null 2>&1; then
    dhclient -nw eth0
fi
[ -x /etc/rc.local ] && /etc/rc.local </dev/null &

others_alive() {
    # Builtins only: a subshell would count itself.
    for d in /proc/[0-9]*; do
        [ "${d#/proc/}" = "$$" ] && continue
        state=
        {
            while IFS= read -r line; do
                case $line in State:*) state=${line#State:}; break ;; esac
            done <"$d/status"
        } 2>/dev/null
        case $state in *Z* | *X* | "") ;; *) return 0 ;; esac
    done
    return 1
}

stopping=
sleeper=
shutdown() {
    [ -n "$stopping" ] && return
    stopping=1
    [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null
    kill -s TERM -- -1 2>/dev/null
    i=0
    while [ $i -lt 100 ] && others_alive; do
        sleep 0.1
        i=$((i + 1))
    done
    kill -s KILL -- -1 2>/dev/null
    exit 0
}
trap shutdown PWR TERM INT USR1 USR2

# "wait" reaps every child, orphans included, and returns at once when a trapped signal comes.
while :; do
    sleep 3600 &
    sleeper=$!
    wait "$sleeper"
done
EOF
chmod 0755 "$R/sbin/init"

echo '{{ container.name }}' >"$WORK/templates/hostname.tpl"
cat >"$WORK/templates/hosts.tpl" <<'EOF'
127.0.0.1	localhost
127.0.1.1	{{ container.name }}
::1	localhost ip6-localhost ip6-loopback
EOF

VERSION=$(cat "$R/etc/debian_version" 2>/dev/null || echo "$SUITE")
cat >"$WORK/metadata.yaml" <<EOF
architecture: $ARCH
creation_date: $EPOCH
properties:
  architecture: $ARCH
  description: Debian $SUITE minbase ($VERSION, lxfs)
  os: debian
  release: $SUITE
  variant: minbase
templates:
  /etc/hostname:
    when: [create, copy]
    create_only: false
    template: hostname.tpl
    properties: {}
  /etc/hosts:
    when: [create, copy]
    create_only: false
    template: hosts.tpl
    properties: {}
EOF

FP=$("$PYTHON" -m lxfs.images build "$WORK" "$OUT")
echo "fingerprint: $FP" >&2
echo "$OUT"
