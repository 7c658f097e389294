"""security.nesting: an unprivileged LXC container starts inside an instance that has it, and
the same attempt fails (the inner proc mount is refused) in an instance that has not.

The outer instance is the busybox image with the host's /usr bound read-only, so that the
host's ``lxc-start`` and its libraries run inside (Debian 12 is merged-/usr: /lib and /lib64 are
links into /usr). Inside, the outer container's root builds a busybox rootfs owned by the inner
container's root and starts it with ``lxc.idmap`` inside its own 65536 ids.
"""

from __future__ import annotations

import pytest

INNER_IDS = 10000  # inner root is the outer container's uid 10000

#: Run as root inside the outer container. The host's newuidmap (from /usr) runs there as the
#: container's root and reads the container's /etc/subuid. /var/lib/nest, not /root (0700):
#: the inner root must be able to reach its rootfs.
NEST_SCRIPT = rf"""
set -u
[ -e /lib ] || ln -s usr/lib /lib
[ -e /lib64 ] || ln -s usr/lib64 /lib64
echo root:{INNER_IDS}:{INNER_IDS} > /etc/subuid
echo root:{INNER_IDS}:{INNER_IDS} > /etc/subgid
D=/var/lib/nest
R=$D/inner/rootfs
rm -rf $D
mkdir -p $R/bin $R/proc $R/sys $R/dev $R/tmp
cp /bin/busybox $R/bin/busybox
ln -s busybox $R/bin/sh
cat > $R/init <<'INIT'
cat /proc/self/uid_map > /tmp/marker
grep -q '^proc /proc proc' /proc/mounts && echo proc-mounted >> /tmp/marker
INIT
chown -R {INNER_IDS}:{INNER_IDS} $R
chmod 755 $D $D/inner
cat > $D/inner/config <<CONFIG
lxc.uts.name = inner
lxc.rootfs.path = dir:$R
lxc.idmap = u 0 {INNER_IDS} {INNER_IDS}
lxc.idmap = g 0 {INNER_IDS} {INNER_IDS}
lxc.init.cmd = /bin/sh /init
lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed
lxc.autodev = 1
lxc.net.0.type = empty
lxc.log.file = $D/inner.log
lxc.log.level = debug
CONFIG
mkdir -p /run/lock
timeout 60 lxc-start -F -n inner -P $D -f $D/inner/config </dev/null >/dev/null 2>&1
echo "exit=$?"
cat $R/tmp/marker 2>/dev/null || true
"""


def launch_outer(d, name: str, nesting: bool, privileged: bool) -> None:
    d.cli("create", "busybox", name,
          "-c", f"security.nesting={str(nesting).lower()}",
          "-c", f"security.privileged={str(privileged).lower()}")
    d.cli("config", "device", "add", name, "hostusr", "disk", "source=/usr", "path=/usr",
          "readonly=true")
    d.cli("start", name)


def run_nested(d, name: str) -> tuple[int, str]:
    """Start the inner container; (lxc-start's exit status, the marker its init wrote)."""
    out = d.cli("exec", name, "--", "sh", "-c", NEST_SCRIPT, timeout=120).stdout
    first, _, marker = out.partition("\n")
    assert first.startswith("exit="), out
    return int(first.removeprefix("exit=")), marker


def inner_log(d, name: str) -> str:
    return d.cli("exec", name, "--", "cat", "/var/lib/nest/inner.log").stdout


@pytest.mark.parametrize("privileged", [False, True], ids=["unprivileged", "privileged"])
def test_nested_container_starts_with_nesting(daemon_with_busybox, privileged: bool) -> None:
    d = daemon_with_busybox
    launch_outer(d, "outer", nesting=True, privileged=privileged)
    try:
        config = (d.lxc_path / "outer" / "config").read_text()
        assert "lxc.mount.entry = proc dev/.lxc/proc proc create=dir,optional 0 0" in config
        assert ("lxc.mount.auto = proc:mixed sys:mixed" if privileged
                else "lxc.mount.auto = proc:rw sys:rw") in config
        status, marker = run_nested(d, "outer")
        assert status == 0, inner_log(d, "outer")
        # the inner init ran in its own user namespace, with its own proc
        assert marker.split() == ["0", str(INNER_IDS), str(INNER_IDS), "proc-mounted"], marker
    finally:
        d.cli("delete", "--force", "outer")


@pytest.mark.parametrize("privileged", [False, True], ids=["unprivileged", "privileged"])
def test_nested_container_fails_without_nesting(daemon_with_busybox, privileged: bool) -> None:
    d = daemon_with_busybox
    launch_outer(d, "flat", nesting=False, privileged=privileged)
    try:
        assert "dev/.lxc/proc" not in (d.lxc_path / "flat" / "config").read_text()
        status, marker = run_nested(d, "flat")
        assert status != 0 and marker == ""
        # the kernel refuses a new proc mount to a user namespace that sees no fully visible
        # proc (the container's /proc has LXC's overmounts)
        errors = [line for line in inner_log(d, "flat").splitlines() if " ERROR " in line]
        assert any('Operation not permitted - Failed to mount "proc"' in line
                   for line in errors), "\n".join(errors)
    finally:
        d.cli("delete", "--force", "flat")
