"""The AppArmor plugin: the profile text, the names, loading through apparmor_parser (faked on
PATH), ``raw.apparmor`` refused where it cannot be enforced; the real loading where the kernel
has AppArmor (this one has not: that test skips, saying so)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from lxfs_plugins import apparmor as aa

from lxfs.config_schema import INSTANCE_KEYS, Schema
from lxfs.errors import InvalidArgument, LxfsError, OperationFailed
from lxfs.model import Instance
from lxfs.plugins import plugin_manager

DATA = Path("/var/lib/lxfs")
NO_KERNEL_APPARMOR = "this kernel has no AppArmor (securityfs has no apparmor directory)"


# --- names --------------------------------------------------------------------------------------


def test_names_carry_the_data_directory() -> None:
    assert aa.profile_name("c1", DATA) == "lxfs-c1_</var/lib/lxfs>"
    assert aa.namespace_name("c1", DATA) == "lxfs-c1_<var-lib-lxfs>"
    assert aa.profile_filename("c1") == "lxfs-c1"
    assert aa.lxc_profile("c1", DATA, stacking=False) == "lxfs-c1_</var/lib/lxfs>"
    assert aa.lxc_profile("c1", DATA, stacking=True) == \
        "lxfs-c1_</var/lib/lxfs>//&:lxfs-c1_<var-lib-lxfs>:"


def test_names_too_long_or_unquotable_are_hashed() -> None:
    long_dir = Path("/" + "d" * 250)
    name = aa.profile_name("c1", long_dir)
    assert name == "lxfs-" + hashlib.sha256(f"c1_<{long_dir}>".encode()).hexdigest()
    assert len(name) < aa.MAX_NAME
    assert aa.namespace_name("c1", long_dir) == "lxfs-" + hashlib.sha256(
        f"c1_<{'d' * 250}>".encode()).hexdigest()
    # just below the limit: kept as it is
    fits = Path("/" + "d" * (aa.MAX_NAME - len("lxfs-c1_</>") - 1))
    assert aa.profile_name("c1", fits) == f"lxfs-c1_<{fits}>"
    for odd in ('/srv/my "lxfs"', "/srv/with space", "/srv/back\\slash"):
        assert re.fullmatch(r"lxfs-[0-9a-f]{64}", aa.profile_name("c1", Path(odd))), odd


def test_securityfs_name_is_the_kernels_mangling() -> None:
    assert aa.securityfs_name("lxfs-c1_</var/lib/lxfs>") == "lxfs-c1_.var.lib.lxfs"
    assert aa.securityfs_name("/usr/bin/x y") == "usr.bin.x_y"


# --- globs --------------------------------------------------------------------------------------


def glob_regex(glob: str) -> re.Pattern[str]:
    """AppArmor's glob syntax, as far as the profile uses it, as a regular expression."""
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("{,/**}", i):
            out.append("(?:/.*)?")
            i += 6
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob.startswith("[^", i):
            end = glob.index("]", i)
            out.append(f"[^{re.escape(glob[i + 2:end])}/]")
            i = end + 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out))


def matched(globs: list[str], path: str) -> bool:
    return any(glob_regex(g).fullmatch(path) for g in globs)


def test_globs_outside_spell_out_the_exceptions() -> None:
    assert aa.globs_outside("/x/", {"ab": None}) == [
        "/x/[^a]*{,/**}", "/x/a[^b]*{,/**}", "/x/ab?*{,/**}"]
    assert aa.globs_outside("/x/", {"a*": None}) == ["/x/[^a]*{,/**}", "/x/a*/**"]


@pytest.mark.parametrize("path,denied", [
    ("/proc/sys/kernel/hostname", False), ("/proc/sys/kernel/domainname", False),
    ("/proc/sys/kernel/shmmax", False), ("/proc/sys/kernel/msgmnb", False),
    ("/proc/sys/kernel/sem", False), ("/proc/sys/net/ipv4/ip_forward", False),
    ("/proc/sys/net", False), ("/proc/sys/kernel", False),
    ("/proc/sys/kernel/hostnamex", True), ("/proc/sys/kernel/core_pattern", True),
    ("/proc/sys/kernel/modprobe", True), ("/proc/sys/kernel/sysrq", True),
    ("/proc/sys/kernel/shmmax/x", True), ("/proc/sys/vm/drop_caches", True),
    ("/proc/sys/fs/binfmt_misc/register", True), ("/proc/sys/kernelx", True),
    ("/proc/sys/netx/y", True),
])
def test_proc_sys_writes(path: str, denied: bool) -> None:
    assert matched(aa.globs_outside("/proc/sys/", aa.PROC_SYS_WRITABLE), path) is denied


@pytest.mark.parametrize("path,denied,denied_stacking", [
    ("/sys/fs/cgroup/memory/x/memory.limit_in_bytes", False, False),
    ("/sys/fs/bpf/prog", False, False), ("/sys/class/net/eth0/mtu", False, False),
    ("/sys/devices/virtual/net/lo/mtu", False, False),
    ("/sys/kernel/security/apparmor/.load", True, False),
    ("/sys/kernel/security/integrity", True, True), ("/sys/kernel/mm/ksm/run", True, True),
    ("/sys/class/block/vda/x", True, True), ("/sys/devices/system/cpu/cpu1/online", True, True),
    ("/sys/power/state", True, True), ("/sys/firmware/acpi/x", True, True),
    ("/sys/fs/ext4/x", True, True), ("/sys/module/x/parameters/y", True, True),
])
def test_sys_writes(path: str, denied: bool, denied_stacking: bool) -> None:
    assert matched(aa.globs_outside("/sys/", aa.SYS_WRITABLE), path) is denied
    assert matched(aa.globs_outside("/sys/", aa.SYS_WRITABLE_STACKING), path) is denied_stacking


@pytest.mark.parametrize("path,allowed", [
    ("/home/x", True), ("/srv", True), ("/dev/null", True), ("/dev/pts/0", True),
    ("/dev/.lxcfoo", True), ("/procx", True), ("/sysroot/x", True), ("/var/lib/x", True),
    ("/proc", False), ("/proc/1/ns", False), ("/sys/fs/cgroup", False),
    ("/dev/.lxc", False), ("/dev/.lxc/proc/sysrq-trigger", False),
])
def test_bind_rules_leave_out_proc_sys_and_lxc_helpers(path: str, allowed: bool) -> None:
    assert matched(aa.globs_outside("/", aa.BIND_PROTECTED), path) is allowed
    rbind = matched(aa.globs_outside("/", aa.RBIND_PROTECTED), path)
    assert rbind is (allowed and not path.startswith("/dev/"))


# --- the profile --------------------------------------------------------------------------------


def render(**kwargs: object) -> str:
    options: dict = {"privileged": False, "nesting": False, "raw": "",
                     "features": aa.Features()}
    options.update(kwargs)
    return aa.render_profile(aa.profile_name("c1", DATA), aa.namespace_name("c1", DATA),
                             **options)


def rules(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_default_profile() -> None:
    text = render()
    assert text.startswith("#include <tunables/global>\n")
    assert 'profile "lxfs-c1_</var/lib/lxfs>" flags=(attach_disconnected,mediate_deleted) {' \
        in text
    assert text.endswith("\n}\n") and text.count("{\n") == 1
    r = rules(text)
    for rule in ("capability,", "file,", "network,", "umount,", "dbus,",
                 "deny /proc/sysrq-trigger rwklx,", "deny /proc/kcore rwklx,",
                 "deny /sys/kernel/debug/{,**} rwklx,",
                 "mount fstype=proc -> /proc/,", "mount fstype=sysfs -> /sys/,",
                 "deny /proc/sys/[^kn]*{,/**} wklx,", "deny /sys/[^cdf]*{,/**} wklx,",
                 "mount options=(rw,bind) /[^dps]*{,/**},",
                 "mount options=(ro,remount,bind,nosuid,noexec,nodev) /dev/[^.]*{,/**},",
                 "unix (receive),", "mount fstype=cgroup -> /sys/fs/cgroup/**,",
                 "pivot_root,", "mount options=(rw,bind) /** -> /**,"):
        assert rule in r, rule
    assert "### unprivileged" in text and "### security.nesting" not in text
    assert "change_profile" not in text and "### raw.apparmor" not in text
    assert "mount," not in r  # no blanket mount rule without nesting
    # every rule line ends with a comma (the parser needs them)
    body = r[r.index('profile "lxfs-c1_</var/lib/lxfs>" flags=(attach_disconnected,'
                     'mediate_deleted) {') + 1:-1]
    assert all(line.endswith(",") for line in body)


def test_privileged_profile_has_no_unprivileged_mount_rules() -> None:
    text = render(privileged=True)
    assert "### unprivileged" not in text
    assert "mount options=(rw,bind) /** -> /**," not in rules(text)
    assert "pivot_root," not in rules(text)
    assert "mount options=(rw,bind) /[^dps]*{,/**}," in rules(text)  # base rules stay


def test_nesting_profile() -> None:
    text = render(nesting=True)
    r = rules(text)
    for rule in ("mount,", "ptrace,", "signal,", "deny /dev/.lxc/proc/** rw,",
                 "deny /dev/.lxc/sys/** rw,", "mount fstype=proc -> /usr/lib/*/lxc/**,",
                 'change_profile -> "lxfs-c1_</var/lib/lxfs>",'):
        assert rule in r, rule
    stacked = rules(render(nesting=True, features=aa.Features(stacking=True)))
    assert 'change_profile -> "lxfs-c1_</var/lib/lxfs>",' not in stacked
    assert 'change_profile -> ":lxfs-c1_<var-lib-lxfs>:*",' in stacked
    assert 'change_profile -> ":lxfs-c1_<var-lib-lxfs>://*",' in stacked
    assert "deny /sys/kernel/security/apparmor?*{,/**} wklx," in stacked
    assert "deny /sys/[^cdfk]*{,/**} wklx," in stacked


def test_features_switch_rules() -> None:
    bare = rules(render(features=aa.Features(unix=False, cgroup_ns=False)))
    assert not any(r.startswith("unix") for r in bare)
    assert not any("fstype=cgroup" in r for r in bare)
    v2 = rules(render(features=aa.Features(cgroup2=True)))
    assert "mount fstype=cgroup2 -> /sys/fs/cgroup/**," in v2


def test_raw_apparmor_is_appended_last() -> None:
    text = render(nesting=True, raw="deny /srv/secret rw,\n\n  capability sys_admin,\n")
    lines = text.splitlines()
    assert lines[-5:] == ["  ### raw.apparmor", "  deny /srv/secret rw,", "",
                          "    capability sys_admin,", "}"]
    assert text.index("### raw.apparmor") > text.index("### unprivileged") > \
        text.index("### security.nesting")


# --- the host -----------------------------------------------------------------------------------


def fake_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, kernel: bool = True,
              stack: bool = True, mac_admin: bool = True, label: str = "unconfined",
              userns: bool = False) -> Path:
    """A fake securityfs and /proc/self for ``detect``; returns the securityfs."""
    securityfs, proc = tmp_path / "securityfs", tmp_path / "proc-self"
    (proc / "attr").mkdir(parents=True)
    securityfs.mkdir()
    if kernel:
        domain = securityfs / "apparmor" / "features" / "domain"
        domain.mkdir(parents=True)
        (domain / "stack").write_text("yes\n" if stack else "no\n")
        (domain / "version").write_text("1.2\n")
        (securityfs / "apparmor" / "policy" / "profiles").mkdir(parents=True)
        (securityfs / "apparmor" / "policy" / "namespaces").mkdir(parents=True)
    caps = (1 << 41) - 1 if mac_admin else ((1 << 41) - 1) & ~(1 << 33)
    (proc / "status").write_text(f"Name:\tlxfsd\nCapEff:\t{caps:016x}\n")
    (proc / "uid_map").write_text("         0    1000000      65536\n" if userns
                                  else "         0          0 4294967295\n")
    (proc / "attr" / "current").write_text(label + "\n")
    monkeypatch.setattr(aa, "SECURITYFS", securityfs)
    monkeypatch.setattr(aa, "PROC_SELF", proc)
    return securityfs


def fake_parser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, fail: str = "",
                version: str = "3.0.8") -> Path:
    """An ``apparmor_parser`` first on PATH that logs its arguments (one call a line)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "parser-calls"
    script = bindir / "apparmor_parser"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = --version ]; then echo "AppArmor parser version {version}"; exit 0; fi\n'
        f'echo "$@" >> {calls}\n'
        + (f'echo "{fail}" >&2; exit 1\n' if fail else "exit 0\n"))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    aa.parser_version.cache_clear()
    return calls


def test_detect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_host(tmp_path / "a", monkeypatch, kernel=False)
    host = aa.detect()
    assert not host.kernel and not host.enabled and host.refusal() == aa.NO_APPARMOR
    assert host.describe() == "absent (not in this kernel)"

    fake_host(tmp_path / "b", monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    host = aa.detect()
    assert host.kernel and host.parser is None and host.refusal() == aa.NO_PARSER

    fake_parser(tmp_path / "b", monkeypatch)
    host = aa.detect()
    assert host.per_instance and host.stacking and host.refusal() is None

    fake_host(tmp_path / "c", monkeypatch, stack=False, label="lxfsd (enforce)")
    host = aa.detect()
    assert host.confined == "lxfsd" and not host.per_instance and not host.stacking
    assert host.refusal() == aa.NO_ADMIN

    fake_host(tmp_path / "d", monkeypatch, mac_admin=False)
    assert not aa.detect().admin
    fake_host(tmp_path / "e", monkeypatch, userns=True, stack=False)
    assert not aa.detect().admin  # in a user namespace without a stack of its own


# --- loading ------------------------------------------------------------------------------------


def make_instance(name: str = "c1", **config: str) -> Instance:
    inst = Instance(name=name, architecture="x86_64", created_at="", ephemeral=False,
                    description="", config=dict(config), profiles=["default"])
    inst.expanded_config = dict(config)
    inst.expanded_devices = {}
    return inst


def fake_server(tmp_path: Path, *names: str) -> SimpleNamespace:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    found = {n: make_instance(n) for n in names}
    return SimpleNamespace(data_dir=data, instances=lambda: dict(found))


def test_load_unload_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    securityfs = fake_host(tmp_path, monkeypatch)
    calls = fake_parser(tmp_path, monkeypatch)
    server = fake_server(tmp_path, "c1")
    inst = make_instance("c1", **{"security.nesting": "true", "raw.apparmor": "deny /x rw,"})
    data = server.data_dir.resolve()
    store = aa.ProfileStore(data, aa.detect())
    profile, cache = store.path("c1"), store.cache

    assert aa.lxfs_lxc_config(host=server, instance=inst) == [
        f"lxc.apparmor.profile = {aa.lxc_profile('c1', data, stacking=True)}"]
    aa.lxfs_instance_pre_start(host=server, instance=inst)
    assert profile == data / "security/apparmor/profiles/lxfs-c1"
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    assert profile.read_text() == aa.render_profile(
        aa.profile_name("c1", data), aa.namespace_name("c1", data), privileged=False,
        nesting=True, raw="deny /x rw,", features=aa.host_features(aa.detect()))
    assert calls.read_text().splitlines() == [f"-rWL {cache} {profile}"]
    namespace = securityfs / "apparmor/policy/namespaces" / aa.namespace_name("c1", data)
    assert namespace.is_dir()

    # an unchanged profile is not rewritten: the parser's cache is keyed on its mtime
    os.utime(profile, (1, 1))
    aa.lxfs_instance_pre_start(host=server, instance=inst)
    assert profile.stat().st_mtime == 1
    inst.expanded_config["raw.apparmor"] = "deny /y rw,"
    aa.lxfs_instance_pre_start(host=server, instance=inst)
    assert profile.stat().st_mtime != 1 and "deny /y rw," in profile.read_text()

    # stop: the namespace goes; the profile is unloaded only if the kernel has it
    aa.lxfs_instance_post_stop(host=server, instance=inst)
    assert not namespace.exists()
    assert len(calls.read_text().splitlines()) == 3
    loaded = securityfs / "apparmor/policy/profiles" / (
        aa.securityfs_name(aa.profile_name("c1", data)) + ".7")
    loaded.mkdir()
    aa.lxfs_instance_post_stop(host=server, instance=inst)
    assert calls.read_text().splitlines()[-1] == f"-RWL {cache} {profile}"

    # delete: unloaded, file and cached binary removed
    (cache / "abc123.0").mkdir(parents=True)
    (cache / "abc123.0" / "lxfs-c1").write_bytes(b"binary")
    (cache / "abc123.0" / "lxfs-c10").write_bytes(b"another instance's")
    aa.lxfs_instance_post_delete(host=server, instance=inst)
    assert calls.read_text().splitlines()[-1] == f"-RWL {cache} {profile}"
    assert not profile.exists() and not (cache / "abc123.0" / "lxfs-c1").exists()
    assert (cache / "abc123.0" / "lxfs-c10").exists()


def test_without_stacking_the_profile_is_used_alone(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    securityfs = fake_host(tmp_path, monkeypatch, stack=False)
    fake_parser(tmp_path, monkeypatch)
    server = fake_server(tmp_path, "c1")
    inst = make_instance("c1")
    assert aa.lxfs_lxc_config(host=server, instance=inst) == [
        f"lxc.apparmor.profile = lxfs-c1_<{server.data_dir.resolve()}>"]
    aa.lxfs_instance_pre_start(host=server, instance=inst)
    assert os.listdir(securityfs / "apparmor/policy/namespaces") == []


def test_parser_failure_refuses_the_start(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake_host(tmp_path, monkeypatch)
    fake_parser(tmp_path, monkeypatch, fail="AppArmor parser error at line 9: syntax error")
    server = fake_server(tmp_path, "c1")
    with pytest.raises(OperationFailed) as exc:
        aa.lxfs_instance_pre_start(host=server, instance=make_instance("c1"))
    assert exc.value.message == ("AppArmor refused the profile of c1: AppArmor parser error "
                                 "at line 9: syntax error")


def test_old_parser_gets_no_unix_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_host(tmp_path, monkeypatch)
    fake_parser(tmp_path, monkeypatch, version="2.10.2")
    assert not aa.host_features(aa.detect()).unix
    aa.parser_version.cache_clear()


def test_startup_removes_profiles_of_gone_instances(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fake_host(tmp_path, monkeypatch, kernel=False)
    server = fake_server(tmp_path, "kept")
    profiles = server.data_dir / "security/apparmor/profiles"
    profiles.mkdir(parents=True)
    for name in ("lxfs-kept", "lxfs-gone", ".lxfs-kept.tmp"):
        (profiles / name).write_text("x")
    aa.lxfs_startup(host=server)
    assert sorted(os.listdir(profiles)) == [".lxfs-kept.tmp", "lxfs-kept"]


# --- raw.apparmor on a host without AppArmor ----------------------------------------------------


def test_raw_apparmor_is_the_plugins_key() -> None:
    assert not any(spec.name == "raw.apparmor" for spec in INSTANCE_KEYS)
    pm = plugin_manager()
    schema = Schema(k for keys in pm.hook.lxfs_config_keys() for k in keys)
    spec = schema.instance_spec("raw.apparmor")
    assert spec is not None and spec.validate is aa.check_raw_apparmor
    assert spec.applies == "start"


def test_raw_apparmor_refused_without_apparmor(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fake_host(tmp_path, monkeypatch, kernel=False)
    schema = Schema(aa.lxfs_config_keys())
    with pytest.raises(InvalidArgument) as exc:
        schema.validate_instance_key("raw.apparmor", "deny /srv rw,")
    assert exc.value.message == ("raw.apparmor: this host's kernel has no AppArmor; the rules "
                                 "could not be enforced")
    schema.validate_instance_key("raw.apparmor", "  \n")  # nothing to enforce
    server = fake_server(tmp_path, "c1")
    assert aa.lxfs_lxc_config(host=server, instance=make_instance("c1")) == [
        "lxc.apparmor.profile = unconfined"]
    aa.lxfs_instance_pre_start(host=server, instance=make_instance("c1"))
    assert not (server.data_dir / "security").exists()
    # a record from before the check: refused at start, with the same words
    with pytest.raises(LxfsError) as exc:
        aa.lxfs_instance_pre_start(host=server,
                                   instance=make_instance("c1", **{"raw.apparmor": "x,"}))
    assert exc.value.message == ("raw.apparmor: this host's kernel has no AppArmor; the rules "
                                 "could not be enforced")


def test_raw_apparmor_refused_without_parser(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fake_host(tmp_path, monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(InvalidArgument) as exc:
        aa.check_raw_apparmor("deny /srv rw,")
    assert "apparmor_parser is not installed" in exc.value.message
    server = fake_server(tmp_path, "c1")
    assert aa.lxfs_lxc_config(host=server, instance=make_instance("c1")) == [
        "lxc.apparmor.profile = unconfined"]


def test_old_record_with_raw_apparmor_still_loads(daemon_with_busybox) -> None:
    """An instance and a profile holding raw.apparmor (records from before the key was
    checked) do not keep the daemon from starting; the instance is refused at start."""
    d = daemon_with_busybox
    if Path("/sys/kernel/security/apparmor").is_dir():
        pytest.skip("this host has AppArmor: the rules would be enforced")
    refusal = "raw.apparmor: this host's kernel has no AppArmor; the rules could not be enforced"
    d.cli("create", "busybox", "old")
    result = d.cli("config", "set", "old", "raw.apparmor=deny /srv rw,", check=False)
    assert result.returncode != 0 and refusal in result.stderr
    assert d.read("instances", "old", "error") == refusal
    with pytest.raises(OSError) as exc:
        d.write("profiles", "default", "config", "raw.apparmor", "deny /srv rw,")
    assert exc.value.errno == errno.EINVAL
    d.stop()
    with sqlite3.connect(d.data_dir / "lxfs.db") as db:
        for table, name in (("instances", "old"), ("profiles", "default")):
            (data,) = db.execute(f"SELECT data FROM {table} WHERE name = ?", (name,)).fetchone()
            record = json.loads(data)
            record["config"]["raw.apparmor"] = "deny /srv rw,"
            db.execute(f"UPDATE {table} SET data = ? WHERE name = ?",
                       (json.dumps(record), name))
    db.close()
    d.start()
    assert d.read("instances", "old", "config", "raw.apparmor") == "deny /srv rw,"
    assert d.read("profiles", "default", "config", "raw.apparmor") == "deny /srv rw,"
    result = d.cli("start", "old", check=False)
    assert result.returncode != 0 and refusal in result.stderr
    assert d.read("instances", "old", "state") == "STOPPED"
    os.unlink(d.path("instances", "old", "config", "raw.apparmor"))
    os.unlink(d.path("profiles", "default", "config", "raw.apparmor"))
    d.cli("start", "old")
    assert d.read("instances", "old", "state") == "RUNNING"
    assert d.read("environment", "apparmor") == "absent (not in this kernel)"


# --- the real parser and kernel -----------------------------------------------------------------


def test_profiles_compile_with_apparmor_parser(tmp_path: Path) -> None:
    """The real parser compiles every variant (it needs no kernel support for that)."""
    parser = shutil.which("apparmor_parser")
    if parser is None:
        pytest.fail("apparmor_parser not found: apt-get install apparmor (it compiles "
                    "profiles without kernel support)", pytrace=False)
    for privileged in (False, True):
        for nesting in (False, True):
            for stacking in (False, True):
                path = tmp_path / f"p-{privileged}-{nesting}-{stacking}"
                path.write_text(render(privileged=privileged, nesting=nesting,
                                       raw="deny /srv/secret rw,",
                                       features=aa.Features(stacking=stacking, cgroup2=True)))
                proc = subprocess.run([parser, "-QKS", str(path)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
                assert proc.returncode == 0, f"{path.name}: {proc.stderr}"
    broken = tmp_path / "broken"
    broken.write_text(render(raw="not a rule"))
    assert subprocess.run([parser, "-QKS", str(broken)], capture_output=True).returncode != 0


def test_real_loading(tmp_path: Path) -> None:
    """Load, find and unload a profile in the real kernel."""
    if not (aa.SECURITYFS / "apparmor").is_dir():
        pytest.skip(NO_KERNEL_APPARMOR)
    host = aa.detect()
    assert host.per_instance, host.describe()
    data = tmp_path / "data"
    data.mkdir()
    store = aa.ProfileStore(data, host)
    inst = make_instance("aatest", **{"raw.apparmor": "deny /srv/lxfs-test rw,"})
    try:
        store.load(inst)
        assert store.loaded("aatest")
        store.unload("aatest")
        assert not store.loaded("aatest")
    finally:
        store.delete("aatest")
    assert not store.path("aatest").exists()
