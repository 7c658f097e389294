"""The foundation against the real kernel: FUSE mount, liblxc containers, the CLI.

Each test gets its own lxfsd (data dir + mount) from the fixtures in conftest.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def launch_by_hand(d, name: str = "b1", image: str = "busybox") -> None:
    """The acceptance's shell-only launch: mkdir, source, start."""
    os.mkdir(d.path("instances", name))
    d.write("instances", name, "source", image)
    d.write("instances", name, "state", "start")


def write_errno(path: Path, value: str) -> int:
    """Write like ``echo value > path`` and return the errno (0 on success)."""
    try:
        with open(path, "w") as f:
            f.write(value + "\n")
    except OSError as exc:
        return exc.errno
    return 0


def host_cgroups(d) -> list[str]:
    """Every cgroup directory this daemon's containers may have left on the host."""
    import lxfs_plugins.runtime_lxc as rt

    prefix = rt.cgroup_prefix(d.data_dir)
    found = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        for name in (prefix, f"{prefix}.monitor"):
            found += [str(p) for p in hierarchy.glob(name) if p.is_dir()]
    return found


def test_mount_layout(lxfs_daemon):
    d = lxfs_daemon
    names = set(os.listdir(d.mount))
    assert {"instances", "images", "profiles", "config", "storage-pools", "events",
            "environment", "error"} <= names
    assert int(d.read("environment", "server_pid")) == d.proc.pid
    assert d.read("environment", "lxc_path") == str(d.data_dir.resolve() / "containers")
    assert os.listdir(d.path("profiles")) == ["default"]
    assert d.read("profiles", "default", "devices", "root", "pool") == "default"
    assert d.read("storage-pools", "default", "driver") == "dir"
    # text files end with a newline
    assert d.path("profiles", "default", "devices", "root", "type").read_text() == "disk\n"


def test_shell_launch_and_state_machine(daemon_with_busybox):
    d = daemon_with_busybox
    launch_by_hand(d)
    assert d.read("instances", "b1", "state") == "RUNNING"
    pid = int(d.read("instances", "b1", "pid"))
    assert Path(f"/proc/{pid}").exists()
    # the container's monitor is a small lxc-start, not a fork of the daemon
    monitor = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert monitor != d.proc.pid
    status = Path(f"/proc/{monitor}/status").read_text()
    rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS"))
                 .split()[1])
    assert rss_kb < 20_000, f"monitor RSS {rss_kb} kB"
    assert d.read("instances", "b1", "rootfs", "etc", "hostname") == "b1"  # template applied
    fp = d.read("instances", "b1", "source")
    assert len(fp) == 64 and d.path("images", fp).is_dir()
    d.write("instances", "b1", "state", "freeze")
    assert d.read("instances", "b1", "state") == "FROZEN"
    d.write("instances", "b1", "state", "unfreeze")
    d.write("instances", "b1", "state", "restart")
    assert d.read("instances", "b1", "state") == "RUNNING"
    assert int(d.read("instances", "b1", "pid")) != pid
    d.write("instances", "b1", "state", "stop")  # graceful
    assert d.read("instances", "b1", "state") == "STOPPED"
    assert d.read("instances", "b1", "pid") == "0"
    assert write_errno(d.path("instances", "b1", "state"), "stop") == errno.EBUSY
    assert "already stopped" in d.read("instances", "b1", "error")
    assert "lxc-start" in d.read("instances", "b1", "log") or d.read("instances", "b1", "log")


def test_exec_through_cli(daemon_with_busybox):
    d = daemon_with_busybox
    d.cli("launch", "busybox", "b1")
    uid_map = d.cli("exec", "b1", "--", "cat", "/proc/self/uid_map").stdout.split()
    assert uid_map[:2] != ["0", "0"], f"identity map: {uid_map}"
    assert d.cli("exec", "b1", "--", "sh", "-c", "exit 7", check=False).returncode == 7
    # the default seccomp denylist is in force for attached processes too
    status = d.cli("exec", "b1", "--", "cat", "/proc/self/status").stdout
    assert "Seccomp:\t2" in status
    assert d.cli("exec", "b1", "--", "cat", input="hi\n").stdout == "hi\n"
    d.write("instances", "b1", "config", "environment.FOO", "bar")
    assert d.cli("exec", "b1", "--", "sh", "-c", "echo $FOO").stdout == "bar\n"


def test_bad_input_gets_errno_and_daemon_survives(daemon_with_busybox):
    d = daemon_with_busybox
    inst = d.path("instances")
    for bad in ("1abc", "a_b", "x" * 64, "ends-"):
        with pytest.raises(OSError) as exc:
            os.mkdir(inst / bad)
        assert exc.value.errno == errno.EINVAL, bad
    assert "invalid instance name" in d.read("error")
    os.mkdir(inst / "b1")
    with pytest.raises(OSError) as exc:
        os.mkdir(inst / "b1")
    assert exc.value.errno == errno.EEXIST
    # no root filesystem yet
    assert write_errno(inst / "b1" / "state", "start") == errno.ENOENT
    assert "source" in d.read("instances", "b1", "error")
    assert write_errno(inst / "b1" / "source", "no-such-image") == errno.ENOENT
    assert "not found" in d.read("instances", "b1", "error")
    d.write("instances", "b1", "source", "busybox")
    assert write_errno(inst / "b1" / "source", "busybox") == errno.EEXIST
    d.write("instances", "b1", "state", "start")
    assert write_errno(inst / "b1" / "state", "bogus") == errno.EINVAL
    assert "unknown action" in d.read("instances", "b1", "error")
    assert write_errno(inst / "b1" / "config" / "no.such.key", "1") == errno.EINVAL
    assert write_errno(inst / "b1" / "config" / "limits.memory", "lots") == errno.EINVAL
    assert "limits.memory" in d.read("instances", "b1", "error")
    assert write_errno(inst / "b1" / "config" / "security.privileged", "maybe") == errno.EINVAL
    assert write_errno(inst / "b1" / "config" / "volatile.x", "1") == errno.EINVAL
    assert write_errno(inst / "b1" / "pid", "1") == errno.EACCES
    assert write_errno(d.path("images", "junk.tar"), "not an image") == errno.EINVAL
    assert "not an LXD image" in d.read("error")
    with pytest.raises(OSError) as exc:
        os.rmdir(inst / "b1")
    assert exc.value.errno == errno.EBUSY
    assert not (inst / "b1" / "config" / "limits.memory").exists()  # old value kept
    # still serving, same daemon
    assert d.running
    assert d.read("instances", "b1", "state") == "RUNNING"


def test_config_keys_applied_to_container(daemon_with_busybox):
    d = daemon_with_busybox
    os.mkdir(d.path("instances", "c1"))
    d.write("instances", "c1", "config", "limits.memory", "64MiB")
    d.write("instances", "c1", "config", "limits.processes", "50")
    d.write("instances", "c1", "config", "user.note", "hello world")
    d.write("instances", "c1", "source", "busybox")
    d.write("instances", "c1", "state", "start")
    limit = d.cli("exec", "c1", "--", "cat",
                  "/sys/fs/cgroup/memory/memory.limit_in_bytes").stdout.strip()
    assert int(limit) == 64 * 2**20
    pids = d.cli("exec", "c1", "--", "cat", "/sys/fs/cgroup/pids/pids.max").stdout.strip()
    assert pids == "50"
    assert sorted(os.listdir(d.path("instances", "c1", "config"))) == [
        "image.description", "image.os", "image.release", "limits.memory", "limits.processes",
        "user.note"] or "user.note" in os.listdir(d.path("instances", "c1", "config"))
    os.unlink(d.path("instances", "c1", "config", "user.note"))
    assert not d.path("instances", "c1", "config", "user.note").exists()
    assert d.read("instances", "c1", "expanded", "devices", "root", "path") == "/"


def test_privileged_has_identity_map(daemon_with_busybox):
    d = daemon_with_busybox
    os.mkdir(d.path("instances", "p1"))
    d.write("instances", "p1", "config", "security.privileged", "true")
    d.write("instances", "p1", "source", "busybox")
    d.write("instances", "p1", "state", "start")
    uid_map = d.cli("exec", "p1", "--", "cat", "/proc/self/uid_map").stdout.split()
    assert uid_map[:2] == ["0", "0"]


def test_snapshot_restore_and_file_copy(daemon_with_busybox):
    d = daemon_with_busybox
    launch_by_hand(d)
    rootfs = d.path("instances", "b1", "rootfs")
    os.mkdir(d.path("instances", "b1", "snapshots", "s0"))
    assert os.listdir(d.path("instances", "b1", "snapshots")) == ["s0"]
    (rootfs / "root" / "marker").write_text("changed\n")
    assert d.cli("exec", "b1", "--", "cat", "/root/marker").stdout == "changed\n"
    assert not (d.path("instances", "b1", "snapshots", "s0", "rootfs", "root", "marker")
                .exists())
    d.write("instances", "b1", "restore", "s0")
    assert not (rootfs / "root" / "marker").exists()
    assert d.read("instances", "b1", "state") == "RUNNING"  # restarted after restore
    subprocess.run(["cp", "/etc/hostname", str(rootfs / "root" / "x")], check=True)
    assert d.cli("exec", "b1", "--", "cat", "/root/x").stdout == Path("/etc/hostname").read_text()
    # a file created inside shows the container's uid on the mount
    d.cli("exec", "b1", "--", "sh", "-c", "echo in > /tmp/in; chown 1000:1000 /tmp/in")
    st = (rootfs / "tmp" / "in").stat()
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert write_errno(d.path("instances", "b1", "restore"), "nope") == errno.ENOENT
    os.rmdir(d.path("instances", "b1", "snapshots", "s0"))
    assert os.listdir(d.path("instances", "b1", "snapshots")) == []
    # snapshots are read-only
    os.mkdir(d.path("instances", "b1", "snapshots", "s1"))
    with pytest.raises(OSError) as exc:
        (d.path("instances", "b1", "snapshots", "s1", "rootfs", "new")).write_text("x")
    assert exc.value.errno == errno.EROFS


def test_daemon_kill9_keeps_containers(daemon_with_busybox):
    d = daemon_with_busybox
    launch_by_hand(d)
    pid = int(d.read("instances", "b1", "pid"))
    d.kill9()
    with pytest.raises(OSError):
        os.listdir(d.mount)  # ENOTCONN until the daemon comes back
    assert Path(f"/proc/{pid}").exists()
    d.restart()
    assert d.read("instances", "b1", "state") == "RUNNING"
    assert int(d.read("instances", "b1", "pid")) == pid
    # and the reattached container is still managed
    d.write("instances", "b1", "state", "kill")
    assert d.read("instances", "b1", "state") == "STOPPED"


def test_instances_list_file_and_state_from_memory(daemon_with_busybox):
    """``instances/.list`` holds every instance in one read; ``state`` follows an init that
    dies behind the daemon's back, and a frozen instance stays FROZEN across a restart."""
    d = daemon_with_busybox
    launch_by_hand(d, "b1")
    os.mkdir(d.path("instances", "b2"))
    d.write("instances", "b2", "source", "busybox")
    os.mkdir(d.path("instances", "b1", "snapshots", "s0"))
    assert ".list" in os.listdir(d.path("instances"))
    # a dot file: the shell's globs (and ls) show only the instances
    assert subprocess.run(["sh", "-c", "echo *"], cwd=d.path("instances"), check=True,
                          capture_output=True, text=True).stdout == "b1 b2\n"
    table = [line.split("\t") for line in d.read("instances", ".list").splitlines()]
    assert table[0] == ["NAME", "STATE", "PID", "TYPE", "EPHEMERAL", "SNAPSHOTS", "IPV4", "IPV6"]
    pid = int(d.read("instances", "b1", "pid"))
    assert table[1:] == [["b1", "RUNNING", str(pid), "container", "false", "1", "", ""],
                         ["b2", "STOPPED", "0", "container", "false", "0", "", ""]]
    assert write_errno(d.path("instances", ".list"), "x") == errno.EACCES
    # the CLI lists from it
    out = d.cli("list", "-f", "csv", "-c", "nsS").stdout
    assert out == "b1,RUNNING,1\nb2,STOPPED,0\n"
    # frozen, then a daemon restart: asked from liblxc again
    d.write("instances", "b1", "state", "freeze")
    d.restart()
    assert d.read("instances", "b1", "state") == "FROZEN"
    d.write("instances", "b1", "state", "unfreeze")
    assert d.read("instances", "b1", "state") == "RUNNING"
    # init killed from outside: the pidfd notices, no query needed
    os.kill(pid, 9)
    deadline = time.monotonic() + 10
    while d.read("instances", "b1", "state") != "STOPPED" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.read("instances", "b1", "state") == "STOPPED"
    assert d.read("instances", "b1", "pid") == "0"
    d.write("instances", "b1", "state", "start")
    assert d.read("instances", "b1", "state") == "RUNNING"


def test_lifecycles_leave_no_open_files_in_the_daemon(daemon_with_busybox):
    """create/start/stop/delete cycles do not grow the daemon's open fds (each replaced
    liblxc Container, and the lxc.log it holds, is released at once)."""
    d = daemon_with_busybox

    def cycle(i: int) -> None:
        launch_by_hand(d, f"f{i}")
        d.write("instances", f"f{i}", "state", "kill")
        d.write("instances", f"f{i}", "state", "start")
        d.write("instances", f"f{i}", "state", "kill")
        os.rmdir(d.path("instances", f"f{i}"))

    def open_fds() -> int:
        return len(os.listdir(f"/proc/{d.proc.pid}/fd"))

    for i in range(3):
        cycle(i)
    before = open_fds()
    for i in range(3, 15):
        cycle(i)
    assert open_fds() <= before + 2, sorted(
        os.readlink(f"/proc/{d.proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{d.proc.pid}/fd"))


def test_sigterm_unmounts_and_leaves_containers_running(daemon_with_busybox):
    d = daemon_with_busybox
    launch_by_hand(d)
    pid = int(d.read("instances", "b1", "pid"))
    assert d.stop() == 0
    assert not os.path.ismount(d.mount)
    assert Path(f"/proc/{pid}").exists()
    d.start()
    assert int(d.read("instances", "b1", "pid")) == pid


def test_stop_force_and_delete_leave_no_trace(daemon_with_busybox):
    d = daemon_with_busybox
    d.cli("launch", "busybox", "b1")
    d.cli("snapshot", "b1", "s0")
    assert host_cgroups(d)
    d.cli("stop", "--force", "b1")
    d.cli("delete", "b1")
    assert "b1" not in os.listdir(d.path("instances"))
    pool = d.data_dir / "storage-pools" / "default"
    assert os.listdir(pool / "containers") == []
    assert os.listdir(pool / "containers-snapshots") == []
    assert not (d.data_dir / "containers" / "b1").exists()
    assert host_cgroups(d) == []
    with sqlite3.connect(d.data_dir / "lxfs.db") as db:
        assert db.execute("SELECT count(*) FROM instances").fetchone() == (0,)


def test_rename_with_mv(daemon_with_busybox):
    d = daemon_with_busybox
    launch_by_hand(d, "a1")
    with pytest.raises(OSError) as exc:
        os.rename(d.path("instances", "a1"), d.path("instances", "a2"))
    assert exc.value.errno == errno.EBUSY
    d.write("instances", "a1", "state", "kill")
    os.rename(d.path("instances", "a1"), d.path("instances", "a2"))
    assert d.instance_names() == ["a2"]
    d.write("instances", "a2", "state", "start")
    assert d.read("instances", "a2", "state") == "RUNNING"


def test_ephemeral_instance_deleted_on_stop(daemon_with_busybox):
    d = daemon_with_busybox
    os.mkdir(d.path("instances", "e1"))
    d.write("instances", "e1", "ephemeral", "true")
    d.write("instances", "e1", "source", "busybox")
    d.write("instances", "e1", "state", "start")
    d.write("instances", "e1", "state", "kill")
    assert "e1" not in os.listdir(d.path("instances"))
    # stopping from inside (poweroff) is noticed too
    d.cli("launch", "busybox", "e2", "-e")
    d.cli("exec", "e2", "--", "kill", "-9", "-1", check=False)
    d.cli("exec", "e2", "--", "poweroff", "-f", check=False)
    for _ in range(100):
        if "e2" not in os.listdir(d.path("instances")):
            break
        time.sleep(0.1)
    assert "e2" not in os.listdir(d.path("instances"))


def test_images_upload_export_and_aliases(lxfs_daemon, busybox_image):
    d = lxfs_daemon
    fp = hashlib.sha256(busybox_image.read_bytes()).hexdigest()
    subprocess.run(["cp", str(busybox_image), str(d.path("images"))], check=True)
    assert fp in os.listdir(d.path("images"))
    assert busybox_image.name not in os.listdir(d.path("images"))
    export = d.path("images", fp, "export")
    assert hashlib.sha256(export.read_bytes()).hexdigest() == fp
    assert d.read("images", fp, "fingerprint") == fp
    assert d.read("images", fp, "properties", "os") == "busybox"
    os.symlink(fp[:12], d.path("images", "aliases", "bb"))
    assert os.readlink(d.path("images", "aliases", "bb")) == f"../{fp}"
    assert d.read("images", "aliases", "bb", "fingerprint") == fp
    assert d.read("images", fp, "aliases") == "bb"
    with pytest.raises(OSError) as exc:
        os.symlink("nothing", d.path("images", "aliases", "x"))
    assert exc.value.errno == errno.ENOENT
    os.unlink(d.path("images", "aliases", "bb"))
    assert os.listdir(d.path("images", "aliases")) == []
    os.rmdir(d.path("images", fp))
    assert sorted(os.listdir(d.path("images"))) == ["aliases", "pull", "pulling"]


def test_events_stream(daemon_with_busybox):
    d = daemon_with_busybox
    lines: list[dict] = []
    proc = subprocess.Popen(["cat", str(d.path("events"))], stdout=subprocess.PIPE, text=True)

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(json.loads(line))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    # make sure the reader is subscribed: create probe instances until one is seen
    for i in range(100):
        os.mkdir(d.path("instances", f"probe{i}"))
        os.rmdir(d.path("instances", f"probe{i}"))
        time.sleep(0.05)
        if lines:
            break
    launch_by_hand(d)
    d.write("instances", "b1", "state", "kill")
    for _ in range(50):
        if any(e["metadata"]["action"] == "instance-stopped" for e in lines):
            break
        time.sleep(0.1)
    proc.terminate()
    assert proc.wait(timeout=5) is not None  # a reader blocked in read() can be stopped
    actions = [e["metadata"]["action"] for e in lines if e["type"] == "lifecycle"
               and e["metadata"]["source"] == "/1.0/instances/b1"]
    assert actions[:3] == ["instance-created", "instance-started", "instance-stopped"]


def test_long_operation_does_not_block_other_files(daemon_with_busybox):
    d = daemon_with_busybox
    os.mkdir(d.path("instances", "slow"))
    # an init that ignores the halt signal: the graceful stop waits for its timeout (4 s)
    d.write("instances", "slow", "config", "raw.lxc", "lxc.signal.halt = SIGURG")
    d.write("instances", "slow", "config", "boot.host_shutdown_timeout", "4")
    d.write("instances", "slow", "source", "busybox")
    d.write("instances", "slow", "state", "start")
    launch_by_hand(d, "other")
    # reads elsewhere go on while that stop runs
    stopper = threading.Thread(target=d.write, args=("instances", "slow", "state", "stop"))
    stopper.start()
    for _ in range(100):
        if d.read("instances", "slow", "state") == "STOPPING":
            break
        time.sleep(0.01)
    assert d.read("instances", "other", "state") == "RUNNING"
    assert d.instance_names() == ["other", "slow"]
    saw_stopping_while_busy = stopper.is_alive()
    stopper.join(60)
    assert saw_stopping_while_busy
    assert d.read("instances", "slow", "state") == "STOPPED"


def test_interrupted_creation_is_rolled_back(daemon_with_busybox):
    d = daemon_with_busybox
    launch_by_hand(d, "ok1")
    os.mkdir(d.path("instances", "half"))
    d.stop()
    pool = d.data_dir / "storage-pools" / "default"
    # what a crash in the middle of an unpack leaves: a record marked creating, a partial
    # volume, and an orphan volume without any record
    with sqlite3.connect(d.data_dir / "lxfs.db") as db:
        (data,) = db.execute("SELECT data FROM instances WHERE name='half'").fetchone()
        rec = json.loads(data)
        rec.update(storage_state="creating", source="0" * 64)
        db.execute("UPDATE instances SET data=? WHERE name='half'", (json.dumps(rec),))
    (pool / "containers" / "half" / "rootfs").mkdir(parents=True)
    (pool / "containers" / "orphan" / "rootfs").mkdir(parents=True)
    d.start()
    assert sorted(os.listdir(pool / "containers")) == ["ok1"]
    # the interrupted creation is gone as a whole (a launch can be run again)
    assert d.instance_names() == ["ok1"]
    os.mkdir(d.path("instances", "half"))
    d.write("instances", "half", "source", "busybox")
    d.write("instances", "half", "state", "start")
    assert d.read("instances", "half", "state") == "RUNNING"
    assert d.read("instances", "ok1", "state") == "RUNNING"


def test_autostart_on_daemon_start(daemon_with_busybox):
    d = daemon_with_busybox
    launch_by_hand(d, "auto")
    d.write("instances", "auto", "config", "boot.autostart", "true")
    d.stop()
    subprocess.run(["lxc-stop", "-k", "-P", str(d.lxc_path), "-n", "auto"], check=True)
    d.start()
    for _ in range(100):
        if d.read("instances", "auto", "state") == "RUNNING":
            break
        time.sleep(0.05)
    assert d.read("instances", "auto", "state") == "RUNNING"


def test_debian_image_build_and_launch(lxfs_daemon):
    """`lxfs image build debian` (debootstrap from the Debian mirror), then a real launch."""
    d = lxfs_daemon
    d.cli("image", "build", "debian", "--alias", "debian", timeout=1200)
    d.cli("launch", "debian", "d1")
    assert d.read("instances", "d1", "state") == "RUNNING"
    assert d.cli("exec", "d1", "--", "cat", "/etc/debian_version").stdout.strip()
    assert d.cli("exec", "d1", "--", "sh", "-c", "id -u; hostname").stdout.split() == ["0", "d1"]
    d.cli("stop", "d1")  # graceful: the image's init stops on the halt signal
    assert d.read("instances", "d1", "state") == "STOPPED"


def test_rootfs_symlinks_never_lead_to_the_host(daemon_with_busybox):
    """A link planted inside a container resolves inside that container's files."""
    d = daemon_with_busybox
    launch_by_hand(d, "c1")
    victim = Path(f"/tmp/lxfs-victim-{os.getpid()}")  # /tmp exists inside the container too
    victim.write_text("host file\n")
    try:
        _check_links(d, victim)
    finally:
        victim.unlink()


def _check_links(d, victim: Path) -> None:
    d.cli("exec", "c1", "--", "ln", "-s", str(victim), "/root/abs")
    d.cli("exec", "c1", "--", "ln", "-s", "../../../../../../../../.." + str(victim),
          "/root/rel")
    rootfs = d.path("instances", "c1", "rootfs")
    assert os.readlink(rootfs / "root" / "abs") == f"{rootfs}{victim}"
    assert os.readlink(rootfs / "root" / "rel") == f"{rootfs}{victim}"
    assert os.readlink(rootfs / "bin" / "sh") in (f"{rootfs}/bin/busybox", "busybox") or \
        os.readlink(rootfs / "bin" / "sh").startswith(str(rootfs))
    # dangling inside the container: cp refuses to write through it
    assert subprocess.run(["cp", "/etc/hostname", str(rootfs / "root" / "abs")]).returncode
    assert victim.read_text() == "host file\n"
    d.cli("exec", "c1", "--", "touch", str(victim))
    for link in ("abs", "rel"):
        subprocess.run(["cp", "/etc/hostname", str(rootfs / "root" / link)], check=True)
    assert victim.read_text() == "host file\n"
    # the writes landed inside the container, where its links point
    assert d.cli("exec", "c1", "--", "cat", str(victim)).stdout == \
        Path("/etc/hostname").read_text()
    # and the container still sees its links unchanged
    assert d.cli("exec", "c1", "--", "readlink", "/root/abs").stdout.strip() == str(victim)


def test_snapshot_rename_and_stop_timeout(daemon_with_busybox):
    d = daemon_with_busybox
    os.mkdir(d.path("instances", "c1"))
    d.write("instances", "c1", "config", "raw.lxc", "lxc.signal.halt = SIGURG")
    d.write("instances", "c1", "source", "busybox")
    d.write("instances", "c1", "state", "start")
    os.mkdir(d.path("instances", "c1", "snapshots", "a"))
    os.rename(d.path("instances", "c1", "snapshots", "a"),
              d.path("instances", "c1", "snapshots", "b"))
    assert os.listdir(d.path("instances", "c1", "snapshots")) == ["b"]
    # the init ignores the halt signal: `stop 1` kills it after one second
    d.write("instances", "c1", "state", "stop 1")
    assert d.read("instances", "c1", "state") == "STOPPED"
    assert write_errno(d.path("instances", "c1", "state"), "stop soon") == errno.EINVAL


def test_split_image_upload_and_server_config(lxfs_daemon, busybox_image, tmp_path):
    """The split form (metadata tarball + squashfs rootfs) imports through cp, in either order,
    and launches; server keys live in config/."""
    d = lxfs_daemon
    src = tmp_path / "src"
    src.mkdir()
    subprocess.run(["tar", "-xJf", str(busybox_image), "-C", str(src)], check=True)
    meta = tmp_path / "meta.tar.gz"
    subprocess.run(["tar", "-czf", str(meta), "-C", str(src), "metadata.yaml", "templates"],
                   check=True)
    squash = tmp_path / "rootfs.squashfs"
    subprocess.run(["mksquashfs", str(src / "rootfs"), str(squash), "-noappend", "-quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    fp = hashlib.sha256(meta.read_bytes() + squash.read_bytes()).hexdigest()
    subprocess.run(["cp", str(squash), str(d.path("images"))], check=True)
    assert "rootfs.squashfs" in os.listdir(d.path("images"))  # pending its other half
    subprocess.run(["cp", str(meta), str(d.path("images"))], check=True)
    assert sorted(os.listdir(d.path("images"))) == sorted([fp, "aliases", "pull", "pulling"])
    assert hashlib.sha256(d.path("images", fp, "export").read_bytes()).hexdigest() == \
        hashlib.sha256(meta.read_bytes()).hexdigest()
    assert d.path("images", fp, "export.rootfs").stat().st_size == squash.stat().st_size
    os.symlink(fp, d.path("images", "aliases", "split"))
    launch_by_hand(d, "s1", "split")
    assert d.read("instances", "s1", "state") == "RUNNING"
    # server configuration
    d.write("config", "core.https_address", "127.0.0.1:8443")
    assert d.read("config", "core.https_address") == "127.0.0.1:8443"
    assert write_errno(d.path("config", "core.bogus"), "1") == errno.EINVAL
    os.unlink(d.path("config", "core.https_address"))
    assert os.listdir(d.path("config")) == []
