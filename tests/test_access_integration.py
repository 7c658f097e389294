"""Who may touch what on the host: the mount, the data directory, the exec socket, secrets,
and the default project's restrictions. Run as root, switching to unprivileged users with
``setpriv`` (user ``nobody``, with or without the group ``lxfs``)."""

from __future__ import annotations

import grp
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import lxfs_cli_command

pytestmark = pytest.mark.integration

NOBODY = 65534


def lxfs_gid() -> int:
    try:
        return grp.getgrnam("lxfs").gr_gid
    except KeyError:
        pytest.fail("group lxfs does not exist (contrib/install-deps.sh creates it)",
                    pytrace=False)


def as_user(cmd: list[str], *, group: bool, env: dict[str, str] | None = None,
            input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``cmd`` as nobody, a member of group lxfs when ``group``."""
    groups = [f"--groups={lxfs_gid()}"] if group else ["--clear-groups"]
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", *groups, "--", *cmd],
        capture_output=True, text=True, env=env, input=input, timeout=timeout, cwd="/")


def sh(script: str, *, group: bool, env: dict[str, str] | None = None
       ) -> subprocess.CompletedProcess:
    return as_user(["/bin/sh", "-c", script], group=group, env=env)


def check_cli_reachable() -> None:
    """The group's tests run the lxfs command as nobody: its venv and checkout must be
    readable by other users (contrib/install-deps.sh builds the venv on /usr/bin/python3)."""
    probe = as_user([*lxfs_cli_command(), "--version"], group=True)
    if probe.returncode != 0:
        pytest.fail(f"the lxfs command cannot run as an unprivileged user (is the checkout "
                    f"readable by others?): {probe.stderr.strip()}", pytrace=False)


@pytest.fixture
def c1(daemon_with_busybox):
    d = daemon_with_busybox
    d.cli("launch", "busybox", "c1")
    return d


def test_host_users_reach_no_container_files(c1):
    d = c1
    # root inside plants a setuid-root shell and a file in its own root filesystem, and in a
    # custom volume bound into it
    d.cli("storage", "volume", "create", "default", "v1")
    d.cli("storage", "volume", "attach", "default", "v1", "c1", "/mnt/v1")
    d.cli("restart", "c1", "--force")
    d.cli("exec", "c1", "--", "sh", "-c",
          "cp /bin/busybox /suid; chmod 4755 /suid; echo secret > /tmp/f; "
          "cp /bin/busybox /mnt/v1/suid; chmod 4755 /mnt/v1/suid")
    # a privileged container makes a device node (/dev/mem's numbers, world-writable) in
    # its root filesystem: on disk it is a real host device node
    d.cli("launch", "busybox", "p1", "-c", "security.privileged=true")
    d.cli("exec", "p1", "--", "sh", "-c", "mknod /memnode c 1 1 && chmod 666 /memnode")
    d.cli("snapshot", "c1", "s0")
    rootfs_view = d.path("instances", "c1", "rootfs")
    pool = d.data_dir / "storage-pools" / "default"
    node = pool / "containers" / "p1" / "rootfs" / "memnode"
    assert node.is_char_device()
    on_disk = [pool / "containers" / "c1" / "rootfs" / "suid",
               pool / "custom" / "v1" / "suid", node,
               pool / "containers-snapshots" / "c1" / "s0" / "rootfs" / "suid",
               pool / "images"]
    assert (pool / "containers" / "c1" / "rootfs" / "suid").stat().st_mode & 0o4000
    for group in (False, True):
        # through the mount: nothing under rootfs/ (reads, writes, listing, running)
        for view in (rootfs_view, d.path("instances", "c1", "snapshots", "s0", "rootfs")):
            result = sh(f"cat {view}/tmp/f || echo x > {view}/tmp/by-nobody || "
                        f"ls {view} || {view}/suid -c id", group=group)
            assert "Permission denied" in result.stderr
            assert "uid=" not in result.stdout
        result = sh(f"head -c 16 {d.path('instances', 'p1', 'rootfs', 'memnode')} | od",
                    group=group)
        assert "Permission denied" in result.stderr
        # on disk: the pool's directories are closed, the setuid copies unreachable
        for path in on_disk:
            result = sh(f"ls {path} || cat {path} || {path} -c id", group=group)
            assert "Permission denied" in result.stderr, (path, result)
            assert "euid=0" not in result.stdout and "uid=0" not in result.stdout
    assert not (pool / "containers" / "c1" / "rootfs" / "tmp" / "by-nobody").exists()
    # the mount carries nosuid and nodev even for root
    options = next(line.split()[3] for line in open("/proc/mounts")
                   if line.split()[1] == str(d.mount))
    assert {"nosuid", "nodev"} <= set(options.split(","))
    # modes as LXD keeps them: pool directories root's alone, db and log too
    custom = (pool / "custom").stat()  # its ACL lets c1's root through: group bits = mask
    assert custom.st_mode & 0o707 == 0o700 and custom.st_uid == 0
    for path, mode in ((pool / "containers", 0o700), (pool / "images", 0o700),
                       (pool / "containers-snapshots", 0o700),
                       (d.data_dir / "images", 0o700), (d.data_dir / "lxfs.db", 0o600),
                       (d.data_dir / "lxfsd.log", 0o600),
                       (d.lxc_path / "c1" / "config", 0o600),
                       (d.lxc_path / "c1" / "lxc.log", 0o600)):
        assert path.stat().st_mode & 0o777 == mode, path


def test_others_get_eacces_everywhere(c1):
    d = c1
    for script in (f"ls {d.mount}", f"cat {d.mount}/instances/c1/state",
                   f"echo stop > {d.mount}/instances/c1/state",
                   f"mkdir {d.mount}/instances/x2", f"cat {d.mount}/events"):
        result = sh(script, group=False)
        assert result.returncode != 0 and "Permission denied" in result.stderr, script
    assert d.read("instances", "c1", "state") == "RUNNING"
    assert d.instance_names() == ["c1"]
    # and the exec socket refuses them
    check_cli_reachable()
    result = as_user([*lxfs_cli_command(), "exec", "c1", "--", "true"], group=False,
                     env=d.env)
    assert result.returncode != 0
    assert "permission denied" in result.stderr.lower()
    sock = d.data_dir / "exec.socket"
    assert sock.stat().st_mode & 0o777 == 0o660 and sock.stat().st_gid == lxfs_gid()


def test_group_members_drive_lxfs_but_not_its_files(c1):
    d = c1
    check_cli_reachable()
    cli = lxfs_cli_command()

    def member(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        result = as_user([*cli, *args], group=True, env=d.env, input=input)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    member("launch", "busybox", "g1")
    assert "g1" in member("list").stdout
    result = as_user([*cli, "exec", "g1", "--", "sh", "-c", "id -u; cat; exit 7"], group=True,
                     env=d.env, input="through the socket\n")
    assert result.returncode == 7
    assert result.stdout == "0\nthrough the socket\n"
    # the mount's files, as any shell user would drive them
    result = sh(f"cd {d.mount}/instances/g1 && echo stop > state && cat state && "
                f"echo 64MiB > config/limits.memory && cat config/limits.memory", group=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["STOPPED", "64MiB"]
    # but not the containers' files, their logs and consoles
    for name in ("rootfs", "log", "console"):
        result = sh(f"ls {d.mount}/instances/c1/{name} && cat {d.mount}/instances/c1/{name}",
                    group=True)
        assert "Permission denied" in result.stderr, name
    member("delete", "g1")
    assert d.instance_names() == ["c1"]


def test_trust_password_is_a_write_only_secret(lxfs_daemon):
    d = lxfs_daemon
    result = sh(f"echo s3cret > {d.mount}/config/core.trust_password", group=True)
    assert result.returncode == 0, result.stderr
    path = d.path("config", "core.trust_password")
    assert path.stat().st_mode & 0o777 == 0o220
    for reader in ("member", "root"):
        if reader == "member":
            result = sh(f"cat {path}", group=True)
            assert "Permission denied" in result.stderr
        else:
            with pytest.raises(PermissionError):
                path.read_text()
    assert "core.trust_password: 'true'" in d.cli("config", "show").stdout
    with sqlite3.connect(d.data_dir / "lxfs.db") as db:
        stored = db.execute("SELECT value FROM server_config WHERE key = "
                            "'core.trust_password'").fetchone()[0]
    assert "s3cret" not in stored and len(stored) == 192  # hex of salt + scrypt key


def test_project_restricts_privileged_and_nesting(daemon_with_busybox):
    d = daemon_with_busybox
    config = d.path("projects", "default", "config")
    # allowed while the project is not restricted
    d.cli("launch", "busybox", "p1", "-c", "security.privileged=true")
    pid = d.read("instances", "p1", "pid")
    assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["0", "0", "4294967295"]
    # a restriction that p1 breaks is refused, naming it
    with pytest.raises(PermissionError):
        (config / "restricted").write_text("true\n")
    assert "instance p1" in d.read("error") and "privileged" in d.read("error")
    (config / "restricted.containers.privilege").write_text("allow\n")
    (config / "restricted").write_text("true\n")
    d.cli("delete", "-f", "p1")
    (config / "restricted.containers.privilege").write_text("unprivileged\n")
    # now refused: as an instance key, as a profile key, at launch
    d.cli("launch", "busybox", "u1")
    for args in (("config", "set", "u1", "security.privileged", "true"),
                 ("config", "set", "u1", "security.nesting", "true"),
                 ("config", "set", "u1", "raw.lxc", "lxc.cap.drop ="),
                 ("profile", "set", "default", "security.privileged", "true"),
                 ("launch", "busybox", "p2", "-c", "security.privileged=true")):
        result = d.cli(*args, check=False)
        assert result.returncode != 0, args
        assert "forbidden" in result.stderr, (args, result.stderr)
    assert d.instance_names() == ["u1"]
    # a profile made before the restriction: the instance using it cannot start
    (config / "restricted").write_text("false\n")
    d.cli("profile", "create", "priv")
    d.cli("profile", "set", "priv", "security.privileged", "true")
    d.cli("create", "busybox", "p3", "-p", "default", "-p", "priv")
    with pytest.raises(PermissionError):
        (config / "restricted").write_text("true\n")
    d.cli("profile", "unset", "priv", "security.privileged")
    (config / "restricted").write_text("true\n")
    d.cli("start", "p3")
    uid_map = Path(f"/proc/{d.read('instances', 'p3', 'pid')}/uid_map").read_text().split()
    assert uid_map[1] != "0"


def test_lxfs_group_is_the_daemons_group(lxfs_daemon):
    d = lxfs_daemon
    st = os.stat(d.mount)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, lxfs_gid(), 0o770)
    st = os.stat(d.path("instances"))
    assert (st.st_gid, st.st_mode & 0o777) == (lxfs_gid(), 0o770)


def test_a_swapped_symlink_never_leads_root_out_of_the_container(c1):
    """The container swaps a directory the kernel has cached for a link to /etc: reads and
    writes through the mount still resolve inside its own files, never the host's."""
    d = c1
    host_hostname = Path("/etc/hostname").read_text() if Path("/etc/hostname").exists() else ""
    d.cli("exec", "c1", "--", "sh", "-c", "mkdir /d && echo inside > /d/hostname")
    view = d.path("instances", "c1", "rootfs", "d")
    assert (view / "hostname").read_text() == "inside\n"  # now in the kernel's caches
    d.cli("exec", "c1", "--", "sh", "-c", "rm -rf /d && ln -s /etc /d")
    for _ in range(3):
        try:
            text = (view / "hostname").read_text()
        except OSError:
            text = ""
        assert text != host_hostname or not host_hostname
        try:
            (view / "planted-by-host-write").write_text("x")
        except OSError:
            pass
        assert not Path("/etc/planted-by-host-write").exists()
