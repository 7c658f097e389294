"""Shell tools on a live mount (issue 18): each gives what it gives on a local filesystem
holding the same values, or a documented refusal.

True sizes (tar, rsync, cmp), times that move with the values (stat, find -newer), the
atomic-replace idiom of editors and ``sed -i`` (scratch files renamed over keys), truncation,
``rm -r`` of an instance, ``tail -f`` of a growing file, Python's file APIs. The mount runs
with the kernel's attribute and entry caches on (the daemon's defaults).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

TOOLS = ("tar", "rsync", "sed", "ed", "vim", "nano", "find", "diff", "cmp", "grep", "stat",
         "truncate", "tail", "cp")


@pytest.fixture
def shell(daemon_with_busybox):
    """A daemon with instance ``c1`` (busybox, running) holding config keys and a device of
    its own. Fails (never skips) when a tool is missing: contrib/install-deps.sh installs
    them."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"missing tools (run contrib/install-deps.sh): {missing}"
    d = daemon_with_busybox
    d.cli("launch", "busybox", "c1")
    d.write("instances", "c1", "config", "limits.memory", "64MiB")
    d.write("instances", "c1", "config", "user.note", "first line\nsecond line")
    d.write("instances", "c1", "description", "a test instance")
    os.mkdir(d.path("instances", "c1", "devices", "data"))
    d.write("instances", "c1", "devices", "data", "type", "disk")
    d.write("instances", "c1", "devices", "data", "source", "/srv")
    d.write("instances", "c1", "devices", "data", "path", "/mnt/data")
    return d


def run(*cmd: str | Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                            timeout=60, **kw)
    if check and result.returncode:
        raise AssertionError(f"{cmd} exited {result.returncode}: {result.stderr}")
    return result


def values(top: Path) -> dict[str, bytes]:
    """Every regular file under ``top`` (relative path -> content)."""
    found = {}
    for dirpath, _, names in os.walk(top):
        for name in names:
            path = Path(dirpath, name)
            found[str(path.relative_to(top))] = path.read_bytes()
    return found


def config_tree(inst: Path) -> dict[str, bytes]:
    tree = {}
    for part in ("config", "devices"):
        tree |= {f"{part}/{k}": v for k, v in values(inst / part).items()}
    tree["profiles"] = (inst / "profiles").read_bytes()
    return {k: v for k, v in tree.items() if "volatile." not in k}


# --- sizes, tar, copies ---------------------------------------------------------------------


def test_sizes_are_what_a_read_returns(shell):
    d = shell
    inst = d.path("instances", "c1")
    for rel in ["state", "status", "pid", "description", "profiles", "config/limits.memory",
                "config/user.note", "devices/data/path", "created_at", "log", "error"]:
        path = inst / rel
        data = path.read_bytes()
        assert os.stat(path).st_size == len(data), rel
        assert os.stat(path).st_size > 0 or rel == "error", rel
    for path in (d.path("config"), d.path("profiles", "default", "devices", "root")):
        for name in os.listdir(path):
            if (path / name).is_file():
                assert os.stat(path / name).st_size == len((path / name).read_bytes())
    # a stream has no length: size 0, like procfs
    assert os.stat(d.path("events")).st_size == 0
    # a write changes the size the next stat sees at once
    d.write("instances", "c1", "config", "limits.memory", "128MiB")
    assert os.stat(inst / "config" / "limits.memory").st_size == len("128MiB\n")
    # ls -l in a directory of values
    out = run("ls", "-l", inst / "config").stdout
    assert " 7 " in next(line for line in out.splitlines() if "limits.memory" in line)


def test_tar_recipe_recreates_the_configuration(shell, tmp_path):
    d = shell
    src = d.path("instances", "c1")
    archive = tmp_path / "c1-config.tar"
    # the recipe of docs/filesystem.md
    run("tar", "-C", src, "--exclude=volatile.*", "-cf", archive, "config", "devices",
        "profiles")
    listing = run("tar", "-tvf", archive).stdout
    assert "config/limits.memory" in listing and "devices/data/type" in listing
    # extracted on a local filesystem: byte for byte what the mount reads
    local = tmp_path / "local"
    local.mkdir()
    run("tar", "-C", local, "-xf", archive)
    assert config_tree(local) == config_tree(src)
    assert (local / "config" / "user.note").read_text() == "first line\nsecond line\n"
    run("diff", "-r", "--exclude=volatile.*", local / "config", src / "config")
    run("cmp", local / "devices" / "data" / "source", src / "devices" / "data" / "source")
    # into a new instance's directory: the same configuration
    os.mkdir(d.path("instances", "c2"))
    run("tar", "-C", d.path("instances", "c2"), "--overwrite", "-xf", archive)
    assert config_tree(d.path("instances", "c2")) == config_tree(src)
    assert d.read("instances", "c2", "devices", "data", "path") == "/mnt/data"


def test_cp_diff_grep_and_python_file_apis(shell, tmp_path):
    d = shell
    config = d.path("instances", "c1", "config")
    run("cp", "-r", config, tmp_path / "cp")
    run("diff", "-r", tmp_path / "cp", config)
    grep = run("grep", "-r", "second line", d.path("instances", "c1", "config")).stdout
    assert grep.strip().endswith("user.note:second line")
    shutil.copytree(config, tmp_path / "copytree")
    assert values(tmp_path / "copytree") == values(config)
    with open(config / "limits.memory") as f:
        assert f.read() == "64MiB\n"
    assert (config / "user.note").read_text() == "first line\nsecond line\n"
    # cp into the mount (in place: O_TRUNC then write)
    (tmp_path / "mem").write_text("96MiB\n")
    run("cp", tmp_path / "mem", config / "limits.memory")
    assert d.read("instances", "c1", "config", "limits.memory") == "96MiB"


# --- times ----------------------------------------------------------------------------------


def test_mtimes_follow_changes_and_find_newer(shell, tmp_path):
    d = shell
    d.cli("launch", "busybox", "c2")
    d.cli("launch", "busybox", "c3")
    inst = d.path("instances")
    key = inst / "c1" / "config" / "limits.memory"
    before = os.stat(key).st_mtime_ns
    config_dir = os.stat(inst / "c1" / "config").st_mtime_ns
    stamp = tmp_path / "stamp"
    # the stamp's mtime comes from the kernel's coarse clock (a tick behind: up to 4 ms),
    # the mount's from the daemon's at each event: let the last launch's event be a tick old
    time.sleep(0.05)
    stamp.touch()
    time.sleep(1.1)
    # nothing changed since the stamp
    assert run("find", inst, "-maxdepth", "2", "-name", "state", "-newer", stamp).stdout == ""
    d.write("instances", "c2", "state", "stop")
    found = run("find", inst, "-name", "state", "-newer", stamp).stdout  # acceptance 3
    assert found.split() == [str(inst / "c2" / "state")]
    assert run("stat", "-c", "%Y", inst / "c2" / "state").stdout.strip() == str(
        int(os.stat(inst / "c2" / "state").st_mtime))
    # an instance stopping by itself: its init killed from the host
    stamp2 = tmp_path / "stamp2"
    stamp2.touch()
    time.sleep(1.1)
    os.kill(int(d.read("instances", "c3", "pid")), signal.SIGKILL)
    deadline = time.monotonic() + 20
    while d.read("instances", "c3", "state") != "STOPPED":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    found = run("find", inst, "-maxdepth", "2", "-name", "state", "-newer", stamp2).stdout
    assert found.split() == [str(inst / "c3" / "state")]
    # a value's mtime moves when it changes, a directory's when entries come and go
    assert os.stat(key).st_mtime_ns == before
    d.write("instances", "c1", "config", "limits.memory", "32MiB")
    assert os.stat(key).st_mtime_ns > before
    assert os.stat(key).st_ctime_ns == os.stat(key).st_mtime_ns
    d.write("instances", "c1", "config", "user.extra", "x")
    assert os.stat(inst / "c1" / "config").st_mtime_ns > config_dir
    listed = run("ls", "-t", inst / "c1" / "config").stdout.split()
    assert listed[0] == "user.extra"


# --- truncate -------------------------------------------------------------------------------


def test_truncate_and_o_trunc(shell):
    d = shell
    config = d.path("instances", "c1", "config")
    run("truncate", "-s", "0", config / "limits.memory")
    assert "limits.memory" not in os.listdir(config)
    d.write("instances", "c1", "config", "user.x", "abcdef")
    run("truncate", "-s", "3", config / "user.x")
    assert d.read("instances", "c1", "config", "user.x") == "abc"
    run("sh", "-c", f": > {config / 'user.x'}")
    assert "user.x" not in os.listdir(config)
    os.truncate(config / "user.note", 0)  # truncate(2) by path
    assert "user.note" not in os.listdir(config)
    # a value that is required: refused, nothing changes
    result = run("truncate", "-s", "0", d.path("instances", "c1", "state"), check=False)
    assert result.returncode != 0 and "Invalid argument" in result.stderr
    assert d.read("instances", "c1", "state") == "RUNNING"
    assert d.read("instances", "c1", "error")


# --- the atomic-replace idiom ---------------------------------------------------------------


def test_sed_in_place(shell):
    d = shell
    config = d.path("instances", "c1", "config")
    run("sed", "-i", "s/64/128/", config / "limits.memory")
    assert d.read("instances", "c1", "config", "limits.memory") == "128MiB"
    run("sed", "-i", "s/disk/none/;s/x/y/", d.path("instances", "c1", "devices", "data",
                                                    "path"))
    run("sed", "-i", "s/test/sed/", d.path("instances", "c1", "description"))
    assert d.read("instances", "c1", "description") == "a sed instance"
    run("sed", "-i", "s/^/x/", d.path("profiles", "default", "devices", "root", "pool"),
        check=False)  # no such pool: refused
    assert d.read("profiles", "default", "devices", "root", "pool") == "default"
    # a bad value: sed fails, the reason is in error, the value is unchanged
    result = run("sed", "-i", "s/128MiB/lots/", config / "limits.memory", check=False)
    assert result.returncode != 0 and "Invalid argument" in result.stderr
    assert d.read("instances", "c1", "config", "limits.memory") == "128MiB"
    assert "limits.memory" in d.read("instances", "c1", "error")
    assert not [n for n in os.listdir(config) if n.startswith("sed")]


def test_python_tempfile_replace_and_privacy(shell):
    d = shell
    config = d.path("instances", "c1", "config")
    fd, tmp = tempfile.mkstemp(dir=config)
    os.write(fd, b"256MiB\n")
    os.close(fd)
    # private: another process does not see it
    other = run(sys.executable, "-c", f"import os; print(os.listdir({str(config)!r}))")
    assert os.path.basename(tmp) not in other.stdout
    other = run(sys.executable, "-c", f"open({tmp!r}).read()", check=False)
    assert "FileNotFoundError" in other.stderr
    assert os.path.basename(tmp) in os.listdir(config)
    assert open(tmp).read() == "256MiB\n"
    os.replace(tmp, config / "limits.memory")
    assert d.read("instances", "c1", "config", "limits.memory") == "256MiB"
    assert not os.path.exists(tmp)
    # a new key by rename
    with tempfile.NamedTemporaryFile("w", dir=config, delete=False) as f:
        f.write("hello\n")
    os.replace(f.name, config / "user.new")
    assert d.read("instances", "c1", "config", "user.new") == "hello"
    # refused: the rename fails with the value's errno, the scratch file stays its creator's
    with tempfile.NamedTemporaryFile("w", dir=config, delete=False) as f:
        f.write("nonsense\n")
    with pytest.raises(OSError) as exc:
        os.replace(f.name, config / "limits.memory")
    assert exc.value.errno == errno.EINVAL
    assert "limits.memory" in d.read("instances", "c1", "error")
    os.unlink(f.name)
    assert os.path.basename(f.name) not in os.listdir(config)
    # left over: gone when its creator exits
    code = (f"import tempfile; fd, p = tempfile.mkstemp(dir={str(config)!r}); print(p)")
    left = run(sys.executable, "-c", code).stdout.strip()
    time.sleep(0.2)
    assert not os.path.exists(left)
    # a plain create of a name that is not a key is still refused (a typo is not hidden)
    with pytest.raises(OSError) as exc:
        open(config / "limits.memroy", "w").close()
    assert exc.value.errno == errno.EINVAL


def test_ed_vim_nano(shell):
    d = shell
    key = d.path("instances", "c1", "config", "limits.memory")
    run("sh", "-c", f"printf ',s/64/128/\\nw\\nq\\n' | ed -s {key}")
    assert d.read("instances", "c1", "config", "limits.memory") == "128MiB"
    run("vim", "-es", "-c", "%s/128/256/", "-c", "wq", key, stdin=subprocess.DEVNULL)
    assert d.read("instances", "c1", "config", "limits.memory") == "256MiB"
    # vim with its defaults (defaults.vim: nocompatible, backupcopy=auto)
    run("vim", "-u", "DEFAULTS", "-i", "NONE", "-es", "-c", "%s/256/512/", "-c", "wq", key,
        stdin=subprocess.DEVNULL)
    assert d.read("instances", "c1", "config", "limits.memory") == "512MiB"
    note = d.path("instances", "c1", "config", "user.note")
    run("vim", "-u", "DEFAULTS", "-i", "NONE", "-es", "-c", "$d", "-c", "wq", note,
        stdin=subprocess.DEVNULL)
    assert d.read("instances", "c1", "config", "user.note") == "first line"
    # ^K cuts the line, then type, ^O writes (Enter takes the name), ^X exits
    nano(key, [(b"limits.memory", b"\x0b1GiB\x0f"), (b"Write", b"\r"), (b"Wrote", b"\x18")])
    assert d.read("instances", "c1", "config", "limits.memory") == "1GiB"
    left = [n for n in os.listdir(key.parent) if not n.startswith(("limits", "user", "image",
                                                                    "volatile"))]
    assert left == []


def nano(path: Path, steps: list[tuple[bytes, bytes]]) -> None:
    """Run nano on a pty: for each step, wait until the screen shows the text, then type
    the keys; then wait for nano to exit."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm"
        os.execvp("nano", ["nano", "--ignorercfiles", str(path)])
    try:
        screen = b""
        for wait_for, keys in steps:
            deadline = time.monotonic() + 20
            while wait_for not in screen:
                assert time.monotonic() < deadline, f"nano never showed {wait_for!r}: {screen!r}"
                if select.select([fd], [], [], 0.2)[0]:
                    screen += os.read(fd, 65536)
            screen = b""
            os.write(fd, keys)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                with contextlib.suppress(OSError):
                    os.read(fd, 65536)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0
                return
        raise AssertionError("nano did not exit")
    finally:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


# --- rsync ----------------------------------------------------------------------------------


def test_rsync_both_ways(shell, tmp_path):
    d = shell
    config = d.path("instances", "c1", "config")
    backup = tmp_path / "backup"
    run("rsync", "-a", f"{config}/", backup)
    assert values(backup) == values(config)
    # back into the mount: changed values are applied through rsync's temporary files
    time.sleep(1.1)  # rsync's quick check compares sizes and mtimes in seconds
    (backup / "limits.memory").write_text("48MiB\n")
    (backup / "user.added").write_text("from rsync\n")
    run("rsync", "-a", f"{backup}/", config)
    assert d.read("instances", "c1", "config", "limits.memory") == "48MiB"
    assert d.read("instances", "c1", "config", "user.added") == "from rsync"
    assert not [n for n in os.listdir(config) if n.startswith(".")]
    # a profile's directory too
    profile = d.path("profiles", "default")
    run("rsync", "-a", f"{profile}/", tmp_path / "profile")
    (tmp_path / "profile" / "description").write_text("synced\n")
    run("rsync", "-a", f"{tmp_path / 'profile'}/description", profile)
    assert d.read("profiles", "default", "description") == "synced"
    # read-only files: refused (rsync says which), nothing else changes
    inst_copy = tmp_path / "inst"
    inst_copy.mkdir()
    (inst_copy / "status").write_text("Frozen\n")
    result = run("rsync", "-a", f"{inst_copy}/", d.path("instances", "c1"), check=False)
    assert result.returncode == 23 and "status" in result.stderr
    assert d.read("instances", "c1", "status") == "Running"


# --- rm -r ----------------------------------------------------------------------------------


def test_rm_r_of_an_instance_is_refused_whole(shell):
    d = shell
    inst = d.path("instances", "c1")
    result = run("rm", "-rf", inst, check=False)
    assert result.returncode != 0
    assert os.listdir(inst / "rootfs"), result.stderr
    # nothing was removed: no key unset, no file of the root filesystem deleted
    assert "c1" in d.instance_names()
    assert d.read("instances", "c1", "config", "limits.memory") == "64MiB"
    assert d.read("instances", "c1", "devices", "data", "type") == "disk"
    assert (inst / "rootfs" / "bin" / "busybox").exists()
    assert "rmdir" in d.read("instances", "c1", "error")
    # the refusal was that rm's alone: a plain rm of a key still unsets it
    os.unlink(inst / "config" / "user.note")
    assert "user.note" not in os.listdir(inst / "config")
    # rmdir deletes the instance (after the same checks: EBUSY while it runs)
    with pytest.raises(OSError) as exc:
        os.rmdir(inst)
    assert exc.value.errno == errno.EBUSY
    d.write("instances", "c1", "state", "kill")
    os.rmdir(inst)
    assert "c1" not in d.instance_names()
    # a profile's directory: the same
    profile = d.path("profiles", "p1")
    os.mkdir(profile)
    d.write("profiles", "p1", "config", "limits.memory", "1GiB")
    os.mkdir(profile / "devices" / "eth1")
    d.write("profiles", "p1", "devices", "eth1", "type", "none")
    assert run("rm", "-rf", profile, check=False).returncode != 0
    assert d.read("profiles", "p1", "config", "limits.memory") == "1GiB"
    assert os.listdir(profile / "devices") == ["eth1"]
    os.rmdir(profile)
    assert "p1" not in os.listdir(d.path("profiles"))


# --- tail -f --------------------------------------------------------------------------------


def test_tail_follows_a_growing_file(shell):
    d = shell
    console = d.path("instances", "c1", "console")
    tail = subprocess.Popen(["tail", "-f", "-s", "0.2", str(console)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        time.sleep(1)
        for i in range(3):
            d.cli("exec", "c1", "--", "sh", "-c", f"echo follow-me-{i} > /dev/console")
        seen = b""
        deadline = time.monotonic() + 20
        while b"follow-me-2" not in seen:
            assert time.monotonic() < deadline, f"tail showed {seen!r}"
            if select.select([tail.stdout], [], [], 0.5)[0]:
                seen += os.read(tail.stdout.fileno(), 65536)
        assert seen.count(b"follow-me-0") == 1
    finally:
        tail.kill()
        tail.wait()
    assert b"truncated" not in tail.stderr.read()


def test_a_change_in_the_daemon_reaches_a_cached_stat(shell):
    """The kernel caches attributes for a second: a state change the daemon makes by itself
    (an init that dies) drops them, so an immediate stat has the new mtime."""
    d = shell
    state = d.path("instances", "c1", "state")
    for _ in range(5):  # the stop must be seen within the cache's second to tell
        if d.read("instances", "c1", "state") != "RUNNING":
            d.write("instances", "c1", "state", "start")
        before = os.stat(state)
        cached_at = time.monotonic()
        killed_at = time.time_ns()
        os.kill(int(d.read("instances", "c1", "pid")), signal.SIGKILL)
        # waiting on another file: a read of state would drop its cached attributes itself
        while d.read("instances", "c1", "status") != "Stopped":
            time.sleep(0.02)
        time.sleep(0.1)  # the event follows the state by a thread trip or two
        after = os.stat(state)
        if time.monotonic() - cached_at < 0.9:
            assert after.st_mtime_ns >= killed_at > before.st_mtime_ns
            assert after.st_size == len(state.read_bytes())
            return
    pytest.fail("the stop was never seen within a second of the stat")


def test_tail_follows_the_log(shell):
    """The LXC log grows at a restart: ``tail -f`` shows the new lines (after the old)."""
    d = shell
    log = d.path("instances", "c1", "log")
    before = log.read_bytes()
    tail = subprocess.Popen(["tail", "-c", "+1", "-f", "-s", "0.2", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = b""
        deadline = time.monotonic() + 20
        while len(seen) < len(before):
            assert time.monotonic() < deadline, f"tail showed {seen!r}"
            if select.select([tail.stdout], [], [], 0.5)[0]:
                seen += os.read(tail.stdout.fileno(), 65536)
        d.write("instances", "c1", "state", "restart")
        grown = log.read_bytes()
        assert grown != before
        deadline = time.monotonic() + 20
        while not seen.endswith(grown[-64:]):
            assert time.monotonic() < deadline, f"tail showed {seen[-300:]!r}"
            if select.select([tail.stdout], [], [], 0.5)[0]:
                seen += os.read(tail.stdout.fileno(), 65536)
    finally:
        tail.kill()
        tail.wait()
    assert b"truncated" not in tail.stderr.read()


# --- units ----------------------------------------------------------------------------------


def test_value_times_date_changes_and_first_sights():
    from lxfs.fs import ValueTimes, _event_object

    times = ValueTimes()
    path = ("instances", "c1", "state")
    assert times.stamp(path, b"RUNNING\n") == times.start_ns  # unseen, object untouched
    assert times.stamp(path, b"RUNNING\n") == times.start_ns
    changed = times.stamp(path, b"STOPPED\n")
    assert changed > times.start_ns and times.known(path) == changed
    times.touch(("instances", "c2"))
    assert times.stamp(("instances", "c2", "state"), b"x") == times.touched[("instances", "c2")]
    times.touch(("config",))
    assert times.known(("config", "user.a")) == times.touched[("config",)]
    assert _event_object("/1.0/instances/c1/snapshots/s1") == ("instances", "c1")
    assert _event_object("/1.0/images/aliases/a") == ("images", "aliases")
    assert _event_object("/1.0") == ("config",)
