#!/bin/bash
# Build a BusyBox system container image in LXD's unified format from Debian's busybox-static.
#
#   contrib/images/busybox.sh OUTDIR
#
# Writes OUTDIR/busybox.tar.xz and prints its path on the last line of stdout (the fingerprint
# goes to stderr). Re-runnable and reproducible: the same /bin/busybox gives the same tarball
# and fingerprint. creation_date is $SOURCE_DATE_EPOCH when set, else the mtime dpkg gave
# /bin/busybox (the package's build time); every file is stored as 0:0 with that mtime.
#
# Needs: busybox-static (/bin/busybox), tar, xz, python3 with PyYAML (the repo's .venv is used
# when present, or $PYTHON).
#
# Halt signal, measured with Debian 12's busybox 1.35.0 running this image's init as PID 1 of a
# PID namespace (unshare, and lxc-start/lxc-stop): SIGPWR (LXC's and LXD's default halt signal)
# and SIGUSR1 both halt, SIGUSR2 powers off: each runs the ::shutdown: action, sends SIGTERM then
# SIGKILL to every other process (busybox sleeps 1 s after each, so a clean stop takes about
# 2 s) and exits, LXC seeing init "ended on signal Interrupt" (a halt). SIGTERM means reboot
# (init ends on SIGHUP, which LXC turns into a restart) and SIGINT runs ::ctrlaltdel: (reboot):
# never use those to stop it. The default works, so the image sets no lxfs.halt_signal.
# With lxc-start -d the init's stdio is /dev/null and busybox skips the console shell; under
# a real console (lxc console) it runs.
set -euo pipefail

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[ $# -eq 1 ] || usage
OUTDIR=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BUSYBOX=${BUSYBOX:-/bin/busybox}
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export LC_ALL=C
umask 022

[ -x "$BUSYBOX" ] || { echo "error: $BUSYBOX not found (apt-get install busybox-static)" >&2; exit 1; }
APPLETS=$("$BUSYBOX" --list-full)
case $'\n'$APPLETS$'\n' in
*$'\n'sbin/init$'\n'*) ;;
*) echo "error: $BUSYBOX has no init applet" >&2; exit 1 ;;
esac
# (no "| head" on a live pipe here: with pipefail its SIGPIPE would end the script)
BANNER=$("$BUSYBOX" 2>&1 || true)
VERSION=$(sed -n '1s/^BusyBox v\([0-9][0-9.]*\).*/\1/p' <<<"$BANNER")
[ -n "$VERSION" ] || { echo "error: cannot read the busybox version" >&2; exit 1; }
EPOCH=${SOURCE_DATE_EPOCH:-$(stat -c %Y "$BUSYBOX")}
ARCH=$(uname -m)

mkdir -p "$OUTDIR"
OUT=$(cd "$OUTDIR" && pwd)/busybox.tar.xz
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lxfs-busybox.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
R=$WORK/rootfs

mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,root,tmp,dev,proc,sys,run,var/log,mnt}
mkdir -p "$R"/usr/share/udhcpc "$WORK/templates"
chmod 0700 "$R/root"
chmod 1777 "$R/tmp"
chmod 0555 "$R/proc" "$R/sys"
cp "$BUSYBOX" "$R/bin/busybox"
chmod 0755 "$R/bin/busybox"
ln -s ../run "$R/var/run"

# One symlink per applet, where busybox itself says it belongs.
while read -r applet; do
    case $applet in bin/busybox | linuxrc | "") continue ;; esac
    mkdir -p "$R/$(dirname "$applet")"
    ln -sf /bin/busybox "$R/$applet"
done <<<"$APPLETS"
[ -L "$R/sbin/init" ] || ln -s /bin/busybox "$R/sbin/init"

cat >"$R/etc/inittab" <<'EOF'
# BusyBox init (lxfs image). LXC has mounted /proc, /sys and /dev already.
# Halt: SIGPWR or SIGUSR1; poweroff: SIGUSR2; SIGTERM reboots.
::sysinit:/etc/init.d/rcS
# A root shell on the container console (lxc console), started again when it exits.
::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/init.d/rcK
EOF

cat >"$R/etc/init.d/rcS" <<'EOF'
#!/bin/sh
# Boot: hostname, loopback and DHCP on eth0 when the container has one.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run 2>/dev/null
[ -s /etc/hostname ] && hostname -F /etc/hostname
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    udhcpc -b -i eth0 -x hostname:"$(hostname)" -s /usr/share/udhcpc/default.script
fi
exit 0
EOF

cat >"$R/etc/init.d/rcK" <<'EOF'
#!/bin/sh
# Shutdown: stop DHCP, then unmount what can be. Never remount read-only: in a privileged
# container that would change the host's filesystem.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
killall -q udhcpc
sync
umount -a 2>/dev/null
exit 0
EOF

cat >"$R/usr/share/udhcpc/default.script" <<'EOF'
#!/bin/sh
# udhcpc event script (lxfs busybox image): configures $interface with busybox ip.
# udhcpc exports ip, mask (prefix length), broadcast, router, dns, domain, mtu.
RESOLV_CONF=/etc/resolv.conf
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    ;;
bound | renew)
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    if ! ip -4 addr show dev "$interface" | grep -q "inet $ip/$mask "; then
        ip -4 addr flush dev "$interface"
        ip -4 addr add "$ip/$mask" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    fi
    if [ -n "$router" ]; then
        while ip -4 route del default dev "$interface" 2>/dev/null; do :; done
        for gw in $router; do
            ip -4 route add default via "$gw" dev "$interface" && break
        done
    fi
    if [ -n "$dns" ]; then
        {
            [ -n "$domain" ] && echo "search $domain"
            for ns in $dns; do echo "nameserver $ns"; done
        } >"$RESOLV_CONF"
    fi
    ;;
leasefail | nak) ;;
esac
exit 0
EOF
chmod 0755 "$R/etc/init.d/rcS" "$R/etc/init.d/rcK" "$R/usr/share/udhcpc/default.script"

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$R/etc/passwd"
printf 'root:*:0:0:99999:7:::\nnobody:*:0:0:99999:7:::\n' >"$R/etc/shadow"
chmod 0600 "$R/etc/shadow"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"
printf '/bin/sh\n/bin/ash\n' >"$R/etc/shells"
echo busybox >"$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$R/etc/hosts"
: >"$R/etc/resolv.conf"
ln -s /proc/self/mounts "$R/etc/mtab"
cat >"$R/etc/profile" <<'EOF'
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
export PS1='\h:\w\$ '
EOF
cat >"$R/etc/os-release" <<EOF
NAME=BusyBox
ID=busybox
VERSION_ID=$VERSION
PRETTY_NAME="BusyBox $VERSION (lxfs)"
EOF

echo '{{ container.name }}' >"$WORK/templates/hostname.tpl"
cat >"$WORK/templates/hosts.tpl" <<'EOF'
127.0.0.1	localhost
127.0.1.1	{{ container.name }}
::1	localhost ip6-localhost ip6-loopback
EOF

cat >"$WORK/metadata.yaml" <<EOF
architecture: $ARCH
creation_date: $EPOCH
properties:
  architecture: $ARCH
  description: BusyBox $VERSION (lxfs)
  os: busybox
  release: "$VERSION"
  variant: default
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

# Same mtime everywhere, whatever the clock says (tar also clamps to creation_date).
find "$WORK" -exec touch -h -d "@$EPOCH" {} +

FP=$("$PYTHON" -m lxfs.images build --root-owner "$WORK" "$OUT")
echo "fingerprint: $FP" >&2
echo "$OUT"
