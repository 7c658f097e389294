"""Seccomp against real containers: LXD's default policy, deny lists, and the interception
of mknod, setxattr and sysinfo by the daemon's notify proxy (also while it is down).

The system calls are made by a small static C program (``probe``) compiled on the host with
gcc at the start of the session and copied into each container: it prints ``ok N`` or
``errno N`` for one call, so that every test checks the exact errno.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PROBE_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <grp.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

static int report(long r) {
    if (r < 0) printf("errno %d\n", errno); else printf("ok %ld\n", r);
    return 0;
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "kexec_load")) return report(syscall(SYS_kexec_load, 0, 0, 0, 0));
    if (!strcmp(cmd, "open_by_handle_at")) {
        struct { struct file_handle fh; unsigned char bytes[8]; } h = {{8, 1}, {0}};
        return report(syscall(SYS_open_by_handle_at, AT_FDCWD, &h, O_RDONLY));
    }
    if (!strcmp(cmd, "init_module")) return report(syscall(SYS_init_module, NULL, 0, ""));
    if (!strcmp(cmd, "finit_module")) return report(syscall(SYS_finit_module, -1, "", 0));
    if (!strcmp(cmd, "delete_module")) return report(syscall(SYS_delete_module, "nope", 0));
    if (!strcmp(cmd, "umount_force")) return report(umount2(argv[2], MNT_FORCE));
    if (!strcmp(cmd, "keyctl")) return report(syscall(SYS_keyctl, 0, 0, 0, 0, 0));
    if (!strcmp(cmd, "add_key")) return report(syscall(SYS_add_key, "user", "x", "", 0, 0));
    if (!strcmp(cmd, "listener")) {
        struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
        struct sock_fprog prog = {1, &allow};
        return report(syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                              SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog));
    }
    if (!strcmp(cmd, "setxattr"))
        return report(setxattr(argv[2], argv[3], argv[4], strlen(argv[4]), 0));
    if (!strcmp(cmd, "mknodat")) {  /* mknodat DIR NAME MAJOR MINOR */
        int dirfd = open(argv[2], O_PATH | O_DIRECTORY);
        if (dirfd < 0) return report(-1);
        return report(mknodat(dirfd, argv[3], S_IFCHR | 0666,
                              makedev(atoi(argv[4]), atoi(argv[5]))));
    }
    if (!strcmp(cmd, "asuser")) {  /* asuser UID GID mknod|none CMD...: with CAP_MKNOD or none */
        int keep = !strcmp(argv[4], "mknod");
        struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct caps[2] = {{0}};
        caps[0].effective = caps[0].permitted = caps[0].inheritable = 1u << CAP_MKNOD;
        if (setgroups(0, NULL) || setresgid(atoi(argv[3]), atoi(argv[3]), atoi(argv[3])) ||
            (keep && prctl(PR_SET_KEEPCAPS, 1)) ||
            setresuid(atoi(argv[2]), atoi(argv[2]), atoi(argv[2])) ||
            (keep && (syscall(SYS_capset, &hdr, caps) ||
                      prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_MKNOD, 0, 0))))
            return report(-1);
        execvp(argv[5], argv + 5);
        return report(-1);
    }
    if (!strcmp(cmd, "sysinfo")) {
        struct sysinfo si;
        if (sysinfo(&si) < 0) return report(-1);
        printf("total %llu free %llu procs %u uptime %ld swap %llu\n",
               (unsigned long long)si.totalram * si.mem_unit,
               (unsigned long long)si.freeram * si.mem_unit, si.procs, si.uptime,
               (unsigned long long)si.totalswap * si.mem_unit);
        return 0;
    }
    fprintf(stderr, "unknown command %s\n", cmd);
    return 2;
}
"""

# The daemon-down test drives a process of the container's own tree (a child of its init),
# not an attached one: see the agent in test_daemon_down_enosys_then_reconnect.
AGENT = """#!/bin/sh
# Runs each line written to /tmp/agent.in; output and status go to /tmp/agent.out.
rm -f /tmp/agent.in; mkfifo /tmp/agent.in
while true; do
    read -r cmd < /tmp/agent.in || continue
    sh -c "$cmd" > /tmp/agent.tmp 2>&1; echo "rc=$?" >> /tmp/agent.tmp
    mv /tmp/agent.tmp /tmp/agent.out
done
"""

HOST_MEMORY = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@pytest.fixture(scope="session")
def probe_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The probe, compiled once (static: the busybox image has no libc)."""
    work = tmp_path_factory.mktemp("seccomp-probe")
    source = work / "probe.c"
    source.write_text(PROBE_SOURCE)
    binary = work / "probe"
    result = subprocess.run(["gcc", "-static", "-O1", "-o", str(binary), str(source)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"gcc could not build the probe:\n{result.stderr}", pytrace=False)
    return binary


def launch(d, name: str, probe: Path, *config: str, files: dict[str, str] | None = None) -> None:
    """Create NAME from busybox with ``KEY=VALUE`` config, add the probe (and ``files``)
    to its root filesystem, start it."""
    args = [a for kv in config for a in ("-c", kv)]
    d.cli("create", "busybox", name, *args)
    rootfs = d.path("instances", name, "rootfs")
    (rootfs / "bin" / "probe").write_bytes(probe.read_bytes())
    os.chmod(rootfs / "bin" / "probe", 0o755)
    for path, text in (files or {}).items():
        (rootfs / path.lstrip("/")).write_text(text)
        os.chmod(rootfs / path.lstrip("/"), 0o755)
    d.cli("start", name)


def run(d, name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return d.cli("exec", name, "--", *cmd, check=check)


def probe(d, name: str, *args: str) -> str:
    return run(d, name, "probe", *args).stdout.strip()


def err(value: int) -> str:
    return f"errno {value}"


def disk_rootfs(d, name: str) -> Path:
    """The instance's root filesystem on disk (from its LXC config)."""
    for line in (d.lxc_path / name / "config").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "lxc.rootfs.path":
            return Path(value.strip().removeprefix("dir:"))
    raise AssertionError(f"no lxc.rootfs.path in {name}'s config")


# --- the policy -------------------------------------------------------------------------------


def test_default_policy_denies_what_lxd_denies(daemon_with_busybox, probe_binary):
    d = daemon_with_busybox
    launch(d, "p1", probe_binary)
    # (open_by_handle_at tells the policy from the kernel: without it, EPERM; this kernel
    # has no kexec and no modules, which give ENOSYS either way)
    for call in ("kexec_load", "open_by_handle_at", "init_module", "finit_module",
                 "delete_module"):
        assert probe(d, "p1", call) == err(errno.ENOSYS), call
    # reject_force_umount: umount2(MNT_FORCE) gets EACCES before the kernel looks at it
    assert probe(d, "p1", "umount_force", "/proc") == err(errno.EACCES)
    policy = (d.data_dir / "instance-data" / "p1" / "seccomp" / "policy").read_text()
    assert policy.startswith("2\ndenylist\n[all]\nreject_force_umount")
    # without interception nothing is notified and no proxy is configured
    assert "notify" not in policy
    assert "seccomp.notify" not in (d.lxc_path / "p1" / "config").read_text()
    assert probe(d, "p1", "listener").startswith("ok")


def test_deny_default_false_leaves_the_kernel_to_decide(daemon_with_busybox, probe_binary):
    d = daemon_with_busybox
    launch(d, "p2", probe_binary, "security.syscalls.deny_default=false")
    # no policy at all (LXD's rule): the kernel refuses these itself, with EPERM
    assert not (d.data_dir / "instance-data" / "p2" / "seccomp" / "policy").exists()
    assert "lxc.seccomp.profile" not in (d.lxc_path / "p2" / "config").read_text()
    # (kexec and modules are not in this kernel: ENOSYS from the kernel itself there)
    assert probe(d, "p2", "open_by_handle_at") == err(errno.EPERM)
    assert probe(d, "p2", "umount_force", "/proc") != err(errno.EACCES)


def test_deny_list_blocks_what_it_names(daemon_with_busybox, probe_binary):
    d = daemon_with_busybox
    launch(d, "p3", probe_binary, "security.syscalls.deny=keyctl errno 1\nadd_key",
           "security.syscalls.deny_compat=true")
    assert probe(d, "p3", "keyctl") == err(errno.EPERM)
    # a bare name: LXC's default action for a denylist rule kills the caller (SIGSYS)
    r = run(d, "p3", "sh", "-c", "probe add_key; echo status=$?")
    assert "status=159" in r.stdout, r.stdout + r.stderr
    # the default denylist is still there, the compat section too
    assert probe(d, "p3", "open_by_handle_at") == err(errno.ENOSYS)
    policy = (d.data_dir / "instance-data" / "p3" / "seccomp" / "policy").read_text()
    assert "[x86_64]\ncompat_sys_rt_sigaction errno 38\n" in policy or \
        os.uname().machine != "x86_64"
    assert policy.endswith("[all]\nkeyctl errno 1\nadd_key\n")
    # a running instance keeps its policy until the next start; the new one applies then
    d.write("instances", "p3", "config", "security.syscalls.deny", "keyctl errno 13")
    assert probe(d, "p3", "keyctl") == err(errno.EPERM)
    d.cli("restart", "p3")
    assert probe(d, "p3", "keyctl") == err(errno.EACCES)


def test_invalid_and_exclusive_keys(daemon_with_busybox, probe_binary):
    d = daemon_with_busybox
    launch(d, "p4", probe_binary)
    config = d.path("instances", "p4", "config")
    for key, value in (("security.syscalls.deny", "mk-nod"),
                       ("security.syscalls.deny", "no_such_syscall_xyz"),
                       ("security.syscalls.allow", "read;write"),
                       ("security.syscalls.intercept.mknod", "maybe"),
                       ("security.syscalls.deny_default", "perhaps")):
        with pytest.raises(OSError) as exc:
            d.write("instances", "p4", "config", key, value)
        assert exc.value.errno == errno.EINVAL
        assert key in d.read("instances", "p4", "error")
        assert not (config / key).exists()
    # allow together with deny: each is valid alone, the start refuses the pair
    d.cli("stop", "p4", "--force")
    d.write("instances", "p4", "config", "security.syscalls.allow", "read write")
    d.write("instances", "p4", "config", "security.syscalls.deny", "keyctl")
    with pytest.raises(OSError):
        d.write("instances", "p4", "state", "start")
    error = d.read("instances", "p4", "error")
    assert "security.syscalls.allow is exclusive with security.syscalls.deny" in error
    assert d.read("instances", "p4", "state") == "STOPPED"
    os.unlink(config / "security.syscalls.allow")
    d.write("instances", "p4", "config", "raw.seccomp", "2\ndenylist\n[all]\nkeyctl errno 1\n")
    with pytest.raises(OSError):
        d.write("instances", "p4", "state", "start")
    assert "raw.seccomp is exclusive with security.syscalls.deny" in \
        d.read("instances", "p4", "error")
    os.unlink(config / "security.syscalls.deny")
    d.write("instances", "p4", "state", "start")
    assert probe(d, "p4", "keyctl") == err(errno.EPERM)
    # raw.seccomp replaces everything: LXD's default denylist is gone
    assert probe(d, "p4", "open_by_handle_at") == err(errno.EPERM)


# --- interception -----------------------------------------------------------------------------


def test_mknod_interception(daemon_with_busybox, probe_binary):
    d = daemon_with_busybox
    launch(d, "plain", probe_binary)
    r = run(d, "plain", "mknod", "/tmp/null", "c", "1", "3", check=False)
    assert r.returncode != 0 and "Operation not permitted" in r.stderr

    launch(d, "m1", probe_binary, "security.syscalls.intercept.mknod=true")
    policy = (d.data_dir / "instance-data" / "m1" / "seccomp" / "policy").read_text()
    assert "mknodat notify [2,8192,SCMP_CMP_MASKED_EQ,61440]" in policy
    assert "seccomp errno 22 [1,8,SCMP_CMP_MASKED_EQ,8]" in policy
    config = (d.lxc_path / "m1" / "config").read_text()
    assert f"lxc.seccomp.notify.proxy = unix:{d.data_dir / 'seccomp.socket'}" in config
    assert (os.stat(d.data_dir / "seccomp.socket").st_mode & 0o777) == 0o600

    run(d, "m1", "mknod", "/tmp/null", "c", "1", "3")
    assert run(d, "m1", "ls", "-ln", "/tmp/null").stdout.split()[:6] == \
        ["crw-r--r--", "1", "0", "0", "1,", "3"]
    run(d, "m1", "sh", "-c", "echo discarded > /tmp/null")
    assert run(d, "m1", "cat", "/tmp/null").stdout == ""
    # owned by the caller, with its umask; through the idmapped mount, root's files on disk
    run(d, "m1", "sh", "-c", "umask 077 && mknod /tmp/zero c 1 5")
    assert run(d, "m1", "stat", "-c", "%a %u %g %t:%T", "/tmp/zero").stdout.split() == \
        ["600", "0", "0", "1:5"]
    assert run(d, "m1", "head", "-c", "3", "/tmp/zero").stdout == "\0\0\0"
    on_disk = disk_rootfs(d, "m1") / "tmp" / "zero"
    assert (on_disk.stat().st_uid, on_disk.stat().st_gid) == (0, 0)
    # a user's node is the user's; its own permissions on the directory apply
    run(d, "m1", "sh", "-c", "mkdir -m 755 /tmp/rootonly /tmp/users && chown 1000 /tmp/users")
    run(d, "m1", "probe", "asuser", "1000", "1000", "mknod", "mknod", "/tmp/users/u", "c", "1",
        "7")
    assert run(d, "m1", "stat", "-c", "%u %g", "/tmp/users/u").stdout.split() == \
        ["1000", "1000"]
    r = run(d, "m1", "probe", "asuser", "1000", "1000", "mknod", "mknod", "/tmp/rootonly/u",
            "c", "1", "7", check=False)
    assert "mknod: /tmp/rootonly/u: Permission denied" in r.stderr
    # a caller without CAP_MKNOD, a device not on LXD's list, a block device: EPERM
    r = run(d, "m1", "probe", "asuser", "1000", "1000", "none", "mknod", "/tmp/users/v", "c",
            "1", "3", check=False)
    assert "mknod: /tmp/users/v: Operation not permitted" in r.stderr
    # root of a user namespace it made itself is not root of the container
    r = run(d, "m1", "unshare", "-U", "-r", "mknod", "/tmp/users/w", "c", "1", "3",
            check=False)
    assert "mknod: /tmp/users/w: Operation not permitted" in r.stderr
    for kind, major, minor in (("c", "1", "1"), ("c", "4", "1"), ("b", "7", "0")):
        r = run(d, "m1", "mknod", f"/tmp/dev{major}{minor}", kind, major, minor, check=False)
        assert r.returncode != 0 and "Operation not permitted" in r.stderr, (kind, major)
    # relative paths, a dirfd (mknodat), and errors the kernel would give
    run(d, "m1", "sh", "-c", "mkdir -p /tmp/sub && cd /tmp/sub && mknod rel c 1 9")
    assert probe(d, "m1", "mknodat", "/tmp/sub", "at", "1", "8") == "ok 0"
    assert run(d, "m1", "ls", "/tmp/sub").stdout.split() == ["at", "rel"]
    assert probe(d, "m1", "mknodat", "/tmp/sub", "at", "1", "8") == err(errno.EEXIST)
    assert probe(d, "m1", "mknodat", "/tmp", "nodir/x", "1", "8") == err(errno.ENOENT)


def test_mknod_never_leaves_the_container_root(daemon_with_busybox, probe_binary):
    d = daemon_with_busybox
    launch(d, "m2", probe_binary, "security.syscalls.intercept.mknod=true")
    marker = f"lxfs-seccomp-escape-{os.getpid()}"
    # absolute and climbing symlinks resolve inside the container, like for the caller
    run(d, "m2", "ln", "-s", "/", "/tmp/rootlink")
    run(d, "m2", "ln", "-s", "../../../../../../../../..", "/tmp/uplink")
    run(d, "m2", "mknod", f"/tmp/rootlink/{marker}-a", "c", "1", "3")
    run(d, "m2", "mknod", f"/tmp/uplink/{marker}-b", "c", "1", "3")
    run(d, "m2", "sh", "-c", f"cd /tmp && mknod ../../../../{marker}-c c 1 3")
    rootfs = disk_rootfs(d, "m2")
    for suffix in "abc":
        assert (rootfs / f"{marker}-{suffix}").exists()
        assert not Path("/", f"{marker}-{suffix}").exists()


def test_setxattr_interception(daemon_with_busybox, probe_binary):
    d = daemon_with_busybox
    launch(d, "x0", probe_binary)
    run(d, "x0", "mkdir", "/tmp/upper")
    assert probe(d, "x0", "setxattr", "/tmp/upper", "trusted.overlay.opaque", "y") == \
        err(errno.EPERM)

    launch(d, "x1", probe_binary, "security.syscalls.intercept.setxattr=true")
    run(d, "x1", "sh", "-c", "mkdir /tmp/upper && ln -s /tmp/upper /tmp/link")
    assert probe(d, "x1", "setxattr", "/tmp/link", "trusted.overlay.opaque", "y") == "ok 0"
    assert os.getxattr(disk_rootfs(d, "x1") / "tmp" / "upper", "trusted.overlay.opaque") == \
        b"y"
    # other names and values go to the kernel as usual
    assert probe(d, "x1", "setxattr", "/tmp/upper", "trusted.overlay.opaque", "n") == \
        err(errno.EPERM)
    assert probe(d, "x1", "setxattr", "/tmp/upper", "trusted.other", "y") == err(errno.EPERM)
    assert probe(d, "x1", "setxattr", "/tmp/upper", "user.lxfs", "y") == "ok 0"
    # only for a caller with CAP_SYS_ADMIN in its namespace
    run(d, "x1", "mkdir", "/tmp/mine")
    run(d, "x1", "chown", "1000", "/tmp/mine")
    r = run(d, "x1", "probe", "asuser", "1000", "1000", "none", "probe", "setxattr",
            "/tmp/mine", "trusted.overlay.opaque", "y")
    assert r.stdout.strip() == err(errno.EPERM)
    r = run(d, "x1", "unshare", "-U", "-r", "probe", "setxattr", "/tmp/mine",
            "trusted.overlay.opaque", "y")
    assert r.stdout.strip() == err(errno.EPERM)
    assert probe(d, "x1", "setxattr", "/tmp/none", "trusted.overlay.opaque", "y") == \
        err(errno.ENOENT)


def free_total(d, name: str) -> int:
    """The total of busybox free's Mem: line (KiB). Its other columns can run into each other:
    it takes the page cache from /proc/meminfo, the host's, which can exceed a limit."""
    header, mem = run(d, name, "free").stdout.splitlines()[:2]
    return int(mem[len("Mem:"):header.index("total") + len("total")])


def test_sysinfo_interception(daemon_with_busybox, probe_binary):
    d = daemon_with_busybox
    launch(d, "s0", probe_binary, "limits.memory=256MiB")
    assert free_total(d, "s0") * 1024 > HOST_MEMORY * 0.9  # the host's memory

    launch(d, "s1", probe_binary, "limits.memory=256MiB",
           "security.syscalls.intercept.sysinfo=true")
    assert free_total(d, "s1") == 256 * 1024
    fields = probe(d, "s1", "sysinfo").split()
    info = dict(zip(fields[::2], map(int, fields[1::2]), strict=True))
    assert info["total"] == 256 * 2**20
    assert 0 < info["free"] < 256 * 2**20
    assert 1 <= info["procs"] < 50  # init, its shell, the probe: not the host's hundreds
    assert 0 <= info["uptime"] < 120
    # limits.memory changes live, and so does what sysinfo says
    d.write("instances", "s1", "config", "limits.memory", "128MiB")
    assert free_total(d, "s1") == 128 * 1024
    # no limit: the host's memory, the container's uptime and tasks
    os.unlink(d.path("instances", "s1", "config", "limits.memory"))
    fields = probe(d, "s1", "sysinfo").split()
    info = dict(zip(fields[::2], map(int, fields[1::2]), strict=True))
    assert info["total"] > HOST_MEMORY * 0.9 and info["procs"] < 50


def test_nested_listener_refused_with_interception(daemon_with_busybox, probe_binary):
    d = daemon_with_busybox
    launch(d, "n1", probe_binary, "security.syscalls.intercept.sysinfo=true")
    assert probe(d, "n1", "listener") == err(errno.EINVAL)
    # a privileged container gets no interception (LXD's rule)
    launch(d, "n2", probe_binary, "security.privileged=true",
           "security.syscalls.intercept.mknod=true")
    assert "notify" not in (d.data_dir / "instance-data" / "n2" / "seccomp" / "policy").read_text()
    assert "seccomp.notify" not in (d.lxc_path / "n2" / "config").read_text()


def _agent(rootfs: Path, command: str, timeout: float = 20.0) -> tuple[str, float]:
    """Run ``command`` through the agent of the container's own process tree; return its
    output and how long it took."""
    out = rootfs / "tmp" / "agent.out"
    out.unlink(missing_ok=True)
    started = time.monotonic()
    fifo = os.open(rootfs / "tmp" / "agent.in", os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fifo, (command + "\n").encode())
    finally:
        os.close(fifo)
    while not out.exists():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"the agent did not answer {command!r} in {timeout:.0f}s")
        time.sleep(0.02)
    return out.read_text(), time.monotonic() - started


def _wait_for_agent(rootfs: Path) -> None:
    deadline = time.monotonic() + 20
    while not (rootfs / "tmp" / "agent.in").exists():
        assert time.monotonic() < deadline, "the agent did not start"
        time.sleep(0.05)
    time.sleep(0.2)  # until it waits in read


def _lxc_attach(d, name: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["lxc-attach", "-P", str(d.lxc_path), "-n", name, "--", *cmd],
                          capture_output=True, text=True, timeout=60)


def _lxc_state(d, name: str) -> str:
    r = subprocess.run(["lxc-info", "-P", str(d.lxc_path), "-n", name, "-s", "-H"],
                       capture_output=True, text=True, timeout=30)
    return r.stdout.strip()


def test_daemon_down_enosys_then_reconnect(daemon_with_busybox, probe_binary):
    d = daemon_with_busybox
    inittab = ("::sysinit:/etc/init.d/rcS\n::respawn:/bin/sh /agent.sh\n"
               "::shutdown:/etc/init.d/rcK\n")
    launch(d, "d1", probe_binary, "security.syscalls.intercept.mknod=true",
           files={"/agent.sh": AGENT, "/etc/inittab": inittab})
    rootfs = disk_rootfs(d, "d1")
    _wait_for_agent(rootfs)
    output, _ = _agent(rootfs, "mknod /tmp/a c 1 3")
    assert output == "rc=0\n"
    run(d, "d1", "mknod", "/tmp/b", "c", "1", "3")

    # a restart with no notification in between: the monitor's next send fails, it
    # reconnects to the new daemon and goes on
    d.restart()
    run(d, "d1", "mknod", "/tmp/c", "c", "1", "3")

    d.stop()
    assert not (d.data_dir / "seccomp.socket").exists()
    output, took = _agent(rootfs, "mknod /tmp/d c 1 3")
    assert "Function not implemented" in output and "rc=1" in output
    assert took < 5, f"an intercepted call took {took:.1f}s with the daemon down"
    r = _lxc_attach(d, "d1", "mknod", "/tmp/e", "c", "1", "3")
    assert "Function not implemented" in r.stderr
    assert _lxc_state(d, "d1") == "RUNNING"
    assert _lxc_attach(d, "d1", "echo", "alive").stdout == "alive\n"

    d.restart()
    assert d.read("instances", "d1", "state") == "RUNNING"
    # the container's own processes reach the new daemon at their next notification...
    output, _ = _agent(rootfs, "mknod /tmp/f c 1 3")
    assert output == "rc=0\n"
    # ...after which attached processes are supervised again
    run(d, "d1", "mknod", "/tmp/g", "c", "1", "3")
    names = run(d, "d1", "ls", "/tmp").stdout.split()
    assert {"a", "b", "c", "f", "g"} <= set(names) and not {"d", "e"} & set(names)
