"""The seccomp plugin without containers: policy text for every key combination, the keys'
validation, the notify proxy's message ABI and handlers (with fakes), the proxy's socket, and
the helper that makes device nodes (that one needs root)."""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from lxfs_plugins import seccomp, seccomp_notify, seccomp_proxy
from lxfs_plugins.seccomp_notify import (
    AUDIT_ARCH_AARCH64,
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    KNOWN_SIZES,
    SECCOMP_USER_NOTIF_FLAG_CONTINUE,
    X32_SYSCALL_BIT,
    MalformedMessage,
    Sizes,
    SysInfo,
    build_message,
    decode_dev,
    parse_answer,
    parse_message,
)

from lxfs.config_schema import Schema
from lxfs.errors import InvalidArgument, LxfsError
from lxfs.model import Instance

LXD_DEFAULT = """2
denylist
[all]
reject_force_umount  # comment this to allow umount -f;  not recommended
[all]
kexec_load errno 38
open_by_handle_at errno 38
init_module errno 38
finit_module errno 38
delete_module errno 38
"""
DISALLOW = ("seccomp errno 22 [1,2146435072,SCMP_CMP_MASKED_EQ,2146435072]\n"
            "seccomp errno 22 [1,8,SCMP_CMP_MASKED_EQ,8]\n")
MKNOD = ("mknod notify [1,8192,SCMP_CMP_MASKED_EQ,61440]\n"
         "mknod notify [1,24576,SCMP_CMP_MASKED_EQ,61440]\n"
         "mknodat notify [2,8192,SCMP_CMP_MASKED_EQ,61440]\n"
         "mknodat notify [2,24576,SCMP_CMP_MASKED_EQ,61440]\n")
SETXATTR = "setxattr notify [3,1,SCMP_CMP_EQ]\n"
SYSINFO = "sysinfo notify\n"


def policy(config: dict[str, str], arch: str = "x86_64") -> str | None:
    return seccomp.policy_text(config, arch, seccomp.needs_intercept(config))


@pytest.fixture(autouse=True)
def not_in_userns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp, "in_user_namespace", lambda: False)


# --- the policy -------------------------------------------------------------------------------


def test_default_policy_is_lxds():
    assert policy({}) == LXD_DEFAULT
    assert policy({"security.syscalls.deny_default": "true"}) == LXD_DEFAULT


def test_deny_default_false_alone_means_no_policy():
    assert policy({"security.syscalls.deny_default": "false"}) is None
    assert policy({"security.syscalls.deny_default": "0"}) is None
    assert policy({"security.syscalls.deny_default": "false",
                   "security.syscalls.deny": "keyctl"}) == "2\ndenylist\n[all]\nkeyctl\n"


@pytest.mark.parametrize("keys,rules", [
    (["mknod"], MKNOD),
    (["setxattr"], SETXATTR),
    (["sysinfo"], SYSINFO),
    (["mknod", "setxattr", "sysinfo"], MKNOD + SETXATTR + SYSINFO),
    (["sysinfo", "mknod"], MKNOD + SYSINFO),
])
def test_interception_rules(keys, rules):
    config = {f"security.syscalls.intercept.{k}": "true" for k in keys}
    assert policy(config) == LXD_DEFAULT + DISALLOW + rules
    config["security.syscalls.deny_default"] = "false"
    assert policy(config) == "2\ndenylist\n[all]\n" + DISALLOW + rules


def test_no_interception_when_off_privileged_or_nested(monkeypatch):
    assert policy({"security.syscalls.intercept.mknod": "false"}) == LXD_DEFAULT
    privileged = {"security.syscalls.intercept.mknod": "true", "security.privileged": "true"}
    assert not seccomp.needs_intercept(privileged)
    assert policy(privileged) == LXD_DEFAULT
    monkeypatch.setattr(seccomp, "in_user_namespace", lambda: True)
    assert not seccomp.needs_intercept({"security.syscalls.intercept.mknod": "true"})


def test_deny_list_after_default_and_interception():
    config = {"security.syscalls.deny": "keyctl add_key\n\n# a comment\nmount errno 1\n",
              "security.syscalls.intercept.sysinfo": "1"}
    assert policy(config) == LXD_DEFAULT + DISALLOW + SYSINFO + \
        "keyctl\nadd_key\nmount errno 1\n"


def test_deny_compat_section_per_architecture():
    config = {"security.syscalls.deny_compat": "true", "security.syscalls.deny": "keyctl"}
    text = policy(config)
    assert text.startswith(LXD_DEFAULT + "[x86_64]\ncompat_sys_rt_sigaction errno 38\n")
    assert text.count(" errno 38\n") == 5 + 34
    assert "stub_x32_execveat errno 38\n[all]\nkeyctl\n" in text
    assert "[arm64]\ncompat_sys_ioctl" not in text
    assert "[arm64]\n" in policy(config, "aarch64")
    assert "[ppc64]\n" in policy(config, "ppc64")
    # an architecture LXC has no section for (LXD would write one LXC refuses): none
    assert policy(config, "riscv64") == LXD_DEFAULT + "keyctl\n"
    assert policy({"security.syscalls.deny_compat": "false"}) == LXD_DEFAULT


def test_allowlist():
    config = {"security.syscalls.allow": "read write\nexit_group\nkeyctl errno 1"}
    assert policy(config) == "2\nallowlist\n[all]\nread\nwrite\nexit_group\nkeyctl errno 1\n"
    config["security.syscalls.intercept.mknod"] = "true"
    assert policy(config) == "2\nallowlist\n[all]\nread\nwrite\nexit_group\n" \
        "keyctl errno 1\n" + DISALLOW + MKNOD
    # deny_default=false is compatible with an allowlist (and changes nothing)
    config["security.syscalls.deny_default"] = "false"
    seccomp.check_combination(config)
    assert policy(config).startswith("2\nallowlist\n")


def test_raw_seccomp_replaces_everything():
    raw = "2\ndenylist\n[all]\nkeyctl errno 1"
    assert policy({"raw.seccomp": raw}) == raw + "\n"
    assert policy({"raw.seccomp": raw, "security.syscalls.intercept.mknod": "true",
                   "security.syscalls.deny_default": "false"}) == raw + "\n"


@pytest.mark.parametrize("config,words", [
    ({"raw.seccomp": "2\n", "security.syscalls.allow": "read"},
     "raw.seccomp is exclusive with security.syscalls.allow"),
    ({"raw.seccomp": "2\n", "security.syscalls.deny": "keyctl"},
     "raw.seccomp is exclusive with security.syscalls.deny"),
    ({"raw.seccomp": "2\n", "security.syscalls.deny_default": "true"},
     "security.syscalls.deny_default=true"),
    ({"raw.seccomp": "2\n", "security.syscalls.deny_compat": "true"},
     "security.syscalls.deny_compat=true"),
    ({"security.syscalls.allow": "read", "security.syscalls.deny": "keyctl"},
     "security.syscalls.allow is exclusive with security.syscalls.deny"),
    ({"security.syscalls.allow": "read", "security.syscalls.deny_default": "yes"},
     "security.syscalls.allow is exclusive with security.syscalls.deny_default=true"),
    ({"security.syscalls.allow": "read", "security.syscalls.deny_compat": "true"},
     "security.syscalls.allow is exclusive with security.syscalls.deny_compat=true"),
])
def test_exclusive_keys(config, words):
    with pytest.raises(InvalidArgument) as exc:
        seccomp.check_combination(config)
    assert words in exc.value.message


@pytest.mark.parametrize("config", [
    {"raw.seccomp": "2\n", "security.syscalls.deny_default": "false"},
    {"raw.seccomp": "2\n", "security.syscalls.deny_compat": "false"},
    {"raw.seccomp": "2\n", "security.syscalls.intercept.mknod": "true"},
    {"security.syscalls.allow": "read", "security.syscalls.deny_compat": "false"},
    {"security.syscalls.deny": "keyctl", "security.syscalls.deny_compat": "true"},
])
def test_compatible_keys(config):
    seccomp.check_combination(config)


# --- keys -------------------------------------------------------------------------------------


def schema() -> Schema:
    return Schema(seccomp.lxfs_config_keys())


@pytest.mark.parametrize("key,value", [
    ("security.syscalls.deny", "keyctl"), ("security.syscalls.deny", "keyctl add_key\nmount"),
    ("security.syscalls.deny", "mount errno 1\n# comment\n"),
    ("security.syscalls.allow", "read\nwrite exit_group"),
    ("security.syscalls.deny_default", "false"), ("security.syscalls.intercept.mknod", "1"),
    ("security.syscalls.intercept.setxattr", "true"),
    ("security.syscalls.intercept.sysinfo", "off"),
    ("raw.seccomp", "2\ndenylist\n[all]\nkeyctl errno 1\n"),
])
def test_valid_keys(key, value):
    schema().validate_instance_key(key, value)


@pytest.mark.parametrize("key,value,words", [
    ("security.syscalls.deny", "mk-nod", "invalid system call name 'mk-nod'"),
    ("security.syscalls.deny", "keyctl;reboot", "invalid system call name"),
    ("security.syscalls.deny", "no_such_call_xyz", "unknown system call 'no_such_call_xyz'"),
    ("security.syscalls.deny", "mount errno 0", "errno 0 out of range"),
    ("security.syscalls.deny", "mount errno", "unknown system call 'errno'"),
    ("security.syscalls.allow", "read write(", "invalid system call name 'write('"),
    ("security.syscalls.deny_default", "maybe", "invalid boolean"),
    ("security.syscalls.deny_compat", "maybe", "invalid boolean"),
    ("security.syscalls.intercept.mknod", "2", "invalid boolean"),
    ("raw.seccomp", "denylist\n", "version line"),
    ("security.syscalls.intercept.mount", "true", "unknown configuration key"),
])
def test_invalid_keys_name_the_key(key, value, words):
    with pytest.raises(InvalidArgument) as exc:
        schema().validate_instance_key(key, value)
    assert words in exc.value.message
    assert key in exc.value.message


def test_deny_compat_only_where_lxd_allows_it(monkeypatch):
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "riscv64")
    with pytest.raises(InvalidArgument) as exc:
        schema().validate_instance_key("security.syscalls.deny_compat", "true")
    assert "not supported on this architecture (riscv64" in exc.value.message
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "aarch64")
    schema().validate_instance_key("security.syscalls.deny_compat", "true")


def test_every_key_is_documented():
    for spec in seccomp.lxfs_config_keys():
        assert spec.description and spec.applies == "start"


# --- the LXC configuration ------------------------------------------------------------------


def fake_server(tmp_path: Path) -> SimpleNamespace:
    def instance_dir(instance: Instance, plugin: str) -> Path:
        path = tmp_path / "instance-data" / instance.name / plugin
        path.mkdir(parents=True, exist_ok=True)
        return path

    return SimpleNamespace(data_dir=tmp_path, instance_dir=instance_dir)


def instance(name: str, **config: str) -> Instance:
    inst = Instance(name=name, architecture="x86_64")
    inst.expanded_config = {k.replace("__", "."): v for k, v in config.items()}
    return inst


def test_lxc_config_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(seccomp, "notify_supported", lambda: True)
    server = fake_server(tmp_path)
    policy_file = server.instance_dir(instance("c1"), "seccomp") / "policy"
    assert seccomp.lxfs_lxc_config(server, instance("c1")) == \
        [f"lxc.seccomp.profile = {policy_file}"]
    assert policy_file.read_text() == LXD_DEFAULT
    assert stat.S_IMODE(policy_file.stat().st_mode) == 0o600
    with pytest.raises(LxfsError) as exc:
        seccomp.lxfs_lxc_config(server, instance(
            "c1", security__syscalls__intercept__mknod="true"))
    assert "seccomp proxy is not listening" in exc.value.message
    (tmp_path / "seccomp.socket").touch()
    lines = seccomp.lxfs_lxc_config(server, instance(
        "c1", security__syscalls__intercept__mknod="true"))
    assert lines == [f"lxc.seccomp.profile = {policy_file}",
                     f"lxc.seccomp.notify.proxy = unix:{tmp_path / 'seccomp.socket'}",
                     "lxc.seccomp.notify.cookie = c1"]
    assert MKNOD in policy_file.read_text()
    assert seccomp.lxfs_lxc_config(server, instance(
        "c1", security__syscalls__deny_default="false")) == []
    assert not policy_file.exists()
    with pytest.raises(InvalidArgument):
        seccomp.lxfs_lxc_config(server, instance(
            "c1", security__syscalls__allow="read", security__syscalls__deny="keyctl"))


def test_interception_needs_kernel_support(tmp_path, monkeypatch):
    monkeypatch.setattr(seccomp, "notify_supported", lambda: False)
    with pytest.raises(LxfsError) as exc:
        seccomp.lxfs_lxc_config(fake_server(tmp_path), instance(
            "c1", security__syscalls__intercept__sysinfo="true"))
    assert "seccomp user notification" in exc.value.message
    assert seccomp.lxfs_services(fake_server(tmp_path)) == []


# --- the message ABI --------------------------------------------------------------------------


def test_message_round_trip():
    data = build_message(id=42, pid=1234, nr=259, arch=AUDIT_ARCH_X86_64,
                         args=(2**32 - 100, 0x7FFD0000, 0o20666, 0x103), monitor_pid=7,
                         init_pid=8, cookie=b"c1")
    assert len(data) == 32 + 80 + 24 + 2
    n = parse_message(data, KNOWN_SIZES)
    assert (n.id, n.pid, n.nr, n.monitor_pid, n.init_pid, n.cookie) == \
        (42, 1234, 259, 7, 8, b"c1")
    assert n.syscall == "mknodat" and not n.is_32bit
    assert seccomp_notify.as_int32(n.args[0]) == seccomp_notify.AT_FDCWD
    answer = n.answer(errno.EPERM)
    assert len(answer) == 32 + 80 + 24  # never the cookie: liblxc wants exactly this
    assert answer[:112] == data[:112]
    assert parse_answer(answer) == (42, 0, -errno.EPERM, 0)
    assert parse_answer(n.answer()) == (42, 0, 0, 0)
    assert parse_answer(n.answer_continue()) == (42, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)


def test_larger_kernel_structs_are_echoed():
    sizes = Sizes(88, 32, 64)
    data = build_message(id=1, pid=2, nr=99, arch=AUDIT_ARCH_X86_64, sizes=sizes)
    n = parse_message(data, sizes)
    assert n.syscall == "sysinfo"
    answer = n.answer(errno.EFAULT)
    assert len(answer) == 32 + 88 + 32
    assert parse_answer(answer, sizes) == (1, 0, -errno.EFAULT, 0)


@pytest.mark.parametrize("mangle,words", [
    (lambda m: m[:20], "shorter than its header"),
    (lambda m: b"\1" + m[1:], "reserved field"),
    (lambda m: m + b"x", "expected 136"),
    (lambda m: m[:-1], "expected 136"),
    (lambda m: m[:16] + struct.pack("=HHH", 40, 24, 64) + m[22:], "smaller than seccomp's"),
])
def test_malformed_messages(mangle, words):
    data = build_message(id=1, pid=2, nr=99, arch=AUDIT_ARCH_X86_64)
    with pytest.raises(MalformedMessage) as exc:
        parse_message(mangle(data))
    assert words in str(exc.value)


def test_sizes_must_match_the_kernels():
    data = build_message(id=1, pid=2, nr=99, arch=AUDIT_ARCH_X86_64, sizes=Sizes(88, 24, 64))
    with pytest.raises(MalformedMessage):
        parse_message(data, KNOWN_SIZES)


def test_kernel_sizes_are_known():
    assert seccomp_notify.kernel_notif_sizes() == KNOWN_SIZES


@pytest.mark.parametrize("arch,nr,name", [
    (AUDIT_ARCH_X86_64, 133, "mknod"), (AUDIT_ARCH_X86_64, 188, "setxattr"),
    (AUDIT_ARCH_X86_64, 259 | X32_SYSCALL_BIT, "mknodat"), (AUDIT_ARCH_I386, 116, "sysinfo"),
    (AUDIT_ARCH_I386, 297, "mknodat"), (AUDIT_ARCH_AARCH64, 33, "mknodat"),
    (AUDIT_ARCH_AARCH64, 179, "sysinfo"), (AUDIT_ARCH_X86_64, 0, None),
    (AUDIT_ARCH_AARCH64, 133, None),
])
def test_syscall_table(arch, nr, name):
    assert seccomp_notify.SYSCALLS.get((arch, nr)) == name


def test_decode_dev():
    assert decode_dev(os.makedev(1, 3)) == (1, 3)
    assert decode_dev(os.makedev(5, 1)) == (5, 1)
    assert decode_dev(os.makedev(259, 70000)) == (259, 70000)
    assert decode_dev(0) == (0, 0)


def test_sysinfo_layouts():
    info = SysInfo(uptime=3600, loads=(1, 2, 3), totalram=256 * 2**20, freeram=200 * 2**20,
                   sharedram=0, bufferram=0, totalswap=0, freeswap=0, procs=5)
    packed = info.pack()
    assert len(packed) == 112
    assert SysInfo.unpack(packed) == info
    big = SysInfo(uptime=10, loads=(0, 0, 0), totalram=64 * 2**30, freeram=2**30,
                  sharedram=0, bufferram=0, totalswap=0, freeswap=0, procs=70000)
    compat = struct.unpack("=i3I6IHHIII8x", big.pack(compat_32bit=True))
    total, free, procs, unit = compat[4], compat[5], compat[10], compat[14]
    assert len(big.pack(compat_32bit=True)) == 64
    assert total * unit == 64 * 2**30 and free * unit == 2**30 and total < 2**32
    assert procs == 0xFFFF


def test_parse_status():
    caller = seccomp_proxy.parse_status(
        "Name:\tsh\nUmask:\t0027\nUid:\t1001000\t1001000\t1001000\t1001001\n"
        "Gid:\t1000010\t1000010\t1000010\t1000011\nGroups:\t1000010 1000020 \n"
        "CapEff:\t0000000008000000\n")
    assert caller == seccomp_proxy.Caller(1001001, 1000011, (1000010, 1000020), 0o027,
                                          1 << seccomp_proxy.CAP_MKNOD)
    assert caller.can(seccomp_proxy.CAP_MKNOD) and not caller.can(seccomp_proxy.CAP_SYS_ADMIN)
    with pytest.raises(OSError):
        seccomp_proxy.parse_status("Name:\tgone\n")


def test_read_string(tmp_path):
    path = tmp_path / "mem"
    path.write_bytes(b"/tmp/null\0junk" + b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert seccomp_proxy.read_string(fd, 0, 4096) == b"/tmp/null"
        assert seccomp_proxy.read_string(fd, 5, 4096) == b"null"
        with pytest.raises(OSError) as exc:
            seccomp_proxy.read_string(fd, 10, 50)
        assert exc.value.errno == errno.ENAMETOOLONG
        with pytest.raises(OSError) as exc:
            seccomp_proxy.read_string(fd, 10, 4096)  # the end of the memory, no NUL
        assert exc.value.errno == errno.EFAULT
        with pytest.raises(OSError) as exc:
            seccomp_proxy.read_string(fd, 2**64 - 1, 16)
        assert exc.value.errno == errno.EFAULT
    finally:
        os.close(fd)


# --- sysinfo from a cgroup tree -------------------------------------------------------------

HOST = SysInfo(uptime=10**6, loads=(65536, 32768, 0), totalram=16 * 2**30, freeram=8 * 2**30,
               sharedram=2**20, bufferram=2**25, totalswap=2**30, freeswap=2**30, procs=400)


def cgroup_tree(root: Path, files: dict[str, str]) -> None:
    for name, value in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(value + "\n")


@pytest.fixture
def fake_cgroups(tmp_path, monkeypatch):
    monkeypatch.setattr(seccomp_proxy, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(seccomp_proxy, "cgroup_paths",
                        lambda pid: {"memory": "/lxfs.x/c1", "pids": "/lxfs.x/c1",
                                     "": "/lxfs.x/c1"})
    return tmp_path


def test_container_sysinfo_v1(fake_cgroups, monkeypatch):
    monkeypatch.setattr(seccomp_proxy, "cgroup_layout", lambda: "hybrid")
    unlimited = str(2**63 - 4096)
    cgroup_tree(fake_cgroups, {
        "memory/memory.limit_in_bytes": unlimited,
        "memory/lxfs.x/memory.limit_in_bytes": str(2**30),  # a parent's limit is lower
        "memory/lxfs.x/c1/memory.limit_in_bytes": str(2 * 2**30),
        "memory/lxfs.x/c1/memory.usage_in_bytes": str(300 * 2**20),
        "memory/lxfs.x/c1/memory.memsw.limit_in_bytes": str(2**30 + 2**28),
        "memory/lxfs.x/c1/memory.memsw.usage_in_bytes": str(300 * 2**20 + 2**20),
        "memory/lxfs.x/c1/memory.stat": "cache 100\nshmem 5\ntotal_shmem 4096\n",
        "pids/lxfs.x/c1/pids.current": "7",
    })
    info = seccomp_proxy.container_sysinfo(os.getpid(), HOST)
    assert info.totalram == 2**30
    assert info.freeram == 2**30 - 300 * 2**20
    assert (info.totalswap, info.freeswap) == (2**28, 2**28 - 2**20)
    assert (info.sharedram, info.bufferram, info.procs) == (4096, 0, 7)
    assert info.loads == HOST.loads
    assert 0 <= info.uptime < HOST.uptime  # since our own start


def test_container_sysinfo_unlimited_is_the_hosts_memory(fake_cgroups, monkeypatch):
    monkeypatch.setattr(seccomp_proxy, "cgroup_layout", lambda: "v2")
    cgroup_tree(fake_cgroups, {"lxfs.x/c1/memory.max": "max",
                               "lxfs.x/c1/memory.current": str(2**20),
                               "lxfs.x/c1/pids.current": "3"})
    info = seccomp_proxy.container_sysinfo(os.getpid(), HOST)
    assert (info.totalram, info.freeram, info.totalswap) == \
        (HOST.totalram, HOST.freeram, HOST.totalswap)
    assert info.procs == 3


def test_container_sysinfo_v2(fake_cgroups, monkeypatch):
    monkeypatch.setattr(seccomp_proxy, "cgroup_layout", lambda: "v2")
    cgroup_tree(fake_cgroups, {"lxfs.x/c1/memory.max": str(512 * 2**20),
                               "lxfs.x/c1/memory.current": str(100 * 2**20),
                               "lxfs.x/c1/memory.swap.max": "0",
                               "lxfs.x/c1/memory.stat": "anon 1\nshmem 2048\n",
                               "lxfs.x/c1/pids.current": "12"})
    info = seccomp_proxy.container_sysinfo(os.getpid(), HOST)
    assert (info.totalram, info.freeram, info.sharedram) == (512 * 2**20, 412 * 2**20, 2048)
    assert (info.totalswap, info.freeswap, info.procs) == (0, 0, 12)


def test_cgroup_paths_of_this_process():
    paths = seccomp_proxy.cgroup_paths(os.getpid())
    assert paths and all(p.startswith("/") for p in paths.values())


# --- the proxy with a fake server -----------------------------------------------------------


class FakeServer:
    """What the proxy asks of the host (``lxfs.api.Host``): instances and their init pids."""

    def __init__(self, data_dir: Path, pids: dict[str, int]):
        self.data_dir = data_dir
        self._instances = {name: Instance(name=name) for name in pids}
        self._pids = pids

    def instances(self) -> dict[str, Instance]:
        return dict(self._instances)

    def instance(self, name: str) -> Instance | None:
        return self._instances.get(name)

    def instance_pid(self, instance: Instance) -> int:
        return self._pids[instance.name]


def mknod_message(cookie: bytes = b"c1", init_pid: int = 100, dev: tuple[int, int] = (1, 1),
                  mode: int = stat.S_IFCHR | 0o666) -> bytes:
    return build_message(id=9, pid=4321, nr=133, arch=AUDIT_ARCH_X86_64,
                         args=(0x1000, mode, os.makedev(*dev)), init_pid=init_pid,
                         cookie=cookie)


def proxy(tmp_path: Path, **pids: int) -> seccomp_proxy.SeccompProxy:
    return seccomp_proxy.SeccompProxy(FakeServer(tmp_path, pids or {"c1": 100}))


async def test_disallowed_devices_get_eperm(tmp_path):
    p = proxy(tmp_path)
    for dev, mode in (((1, 1), stat.S_IFCHR), ((4, 1), stat.S_IFCHR), ((7, 0), stat.S_IFBLK),
                      ((1, 3), stat.S_IFBLK)):
        answer = await p.answer(mknod_message(dev=dev, mode=mode | 0o600), [-1, -1, -1])
        assert parse_answer(answer) == (9, 0, -errno.EPERM, 0), dev


async def test_instance_lookup(tmp_path):
    # the cookie names it and the init pid matches; a wrong cookie is found by its pid
    p = seccomp_proxy.SeccompProxy(FakeServer(tmp_path, {"c1": 100, "c2": 200}))
    assert (await p._instance_of(parse_message(mknod_message()))).name == "c1"
    found = await p._instance_of(parse_message(mknod_message(cookie=b"zz", init_pid=200)))
    assert found.name == "c2"
    assert await p._instance_of(parse_message(mknod_message(cookie=b"c1", init_pid=999))) \
        is None
    # while it starts (or the daemon starts), its pid is not known yet: the cookie names it
    p = seccomp_proxy.SeccompProxy(FakeServer(tmp_path, {"c1": 0, "c2": 200}))
    assert (await p._instance_of(parse_message(mknod_message(init_pid=555)))).name == "c1"
    assert await p._instance_of(parse_message(mknod_message(cookie=b"c3", init_pid=555))) \
        is None


async def test_unknown_container_or_syscall(tmp_path):
    p = proxy(tmp_path)
    answer = await p.answer(mknod_message(cookie=b"other", init_pid=5), [-1, -1, -1])
    assert parse_answer(answer) == (9, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)
    message = build_message(id=3, pid=1, nr=0, arch=AUDIT_ARCH_X86_64, init_pid=100,
                            cookie=b"c1")
    assert parse_answer(await p.answer(message, [-1, -1, -1])) == (3, 0, -errno.ENOSYS, 0)


async def test_malformed_message_gets_an_empty_answer(tmp_path, caplog):
    p = proxy(tmp_path)
    assert await p.answer(b"garbage", [-1, -1, -1]) == b""
    assert await p.answer(mknod_message(), [-1]) == b""
    assert "malformed message" in caplog.text


async def test_failing_handler_falls_back(tmp_path, monkeypatch):
    p = proxy(tmp_path)

    async def broken(request, instance):
        raise RuntimeError("bug")

    async def failing(request, instance):
        raise OSError(errno.EFAULT, "bad address")

    p.handlers["mknod"] = broken
    p.handlers["sysinfo"] = broken
    assert parse_answer(await p.answer(mknod_message(), [-1, -1, -1]))[2] == -errno.EPERM
    sysinfo = build_message(id=5, pid=1, nr=99, arch=AUDIT_ARCH_X86_64, init_pid=100,
                            cookie=b"c1")
    assert parse_answer(await p.answer(sysinfo, [-1, -1, -1])) == \
        (5, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)
    p.handlers["mknod"] = failing
    assert parse_answer(await p.answer(mknod_message(), [-1, -1, -1]))[2] == -errno.EFAULT


async def test_slow_handler_is_cut_short(tmp_path, monkeypatch, autojump_clock):
    p = proxy(tmp_path)

    async def slow(request, instance):
        await trio.sleep(3600)

    p.handlers["mknod"] = slow
    answer = await p.answer(mknod_message(), [-1, -1, -1])
    assert parse_answer(answer)[2] == -errno.EPERM


async def test_a_proxy_that_cannot_listen_lets_the_daemon_run(tmp_path, caplog):
    p = proxy(tmp_path)
    p.path = tmp_path / ("x" * 120)
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
    assert "seccomp notify proxy not started" in caplog.text
    assert "too long for a unix socket" in caplog.text


async def test_the_socket(tmp_path):
    """A monitor's view: connect, send messages with their three fds, read the answers."""
    p = proxy(tmp_path)
    open_fds = len(os.listdir("/proc/self/fd"))
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        path = tmp_path / "seccomp.socket"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        client = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        await client.connect(str(path))
        fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(3)]
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("3i", *fds))]
        try:
            await client.sendmsg([mknod_message()], rights)
            assert parse_answer(await client.recv(4096))[2] == -errno.EPERM
            await client.sendmsg([b"nonsense"], rights)
            assert await client.recv(4096) == b""
            await client.sendmsg([mknod_message(dev=(7, 7))], rights)
            assert parse_answer(await client.recv(4096))[2] == -errno.EPERM
            # a monitor that goes away before its answer does not hurt the next one
            quitter = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            await quitter.connect(str(path))
            await quitter.sendmsg([mknod_message()], rights)
            quitter.close()
            await client.sendmsg([mknod_message(dev=(1, 1))], rights)
            assert parse_answer(await client.recv(4096))[2] == -errno.EPERM
        finally:
            for fd in fds:
                os.close(fd)
            client.close()
        nursery.cancel_scope.cancel()
    assert not path.exists()
    # the proxy closed every fd it received, and its sockets
    assert len(os.listdir("/proc/self/fd")) <= open_fds


# --- the helper (root) ------------------------------------------------------------------------


def run_helper(*args: str | bytes, pass_fds: tuple[int, ...] = ()) -> int:
    return subprocess.run([sys.executable, "-I", "-S", str(seccomp_proxy.HELPER), *args],
                          pass_fds=pass_fds, capture_output=True).returncode


@pytest.fixture
def caller(tmp_path):
    """A child process whose cwd is tmp_path/work, and its /proc directory fd."""
    work = tmp_path / "work"
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    child = subprocess.Popen(["sleep", "60"], cwd=work)
    proc_fd = os.open(f"/proc/{child.pid}", os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield work, proc_fd
    finally:
        os.close(proc_fd)
        child.kill()
        child.wait()


@pytest.mark.integration  # root
def test_helper_makes_nodes_as_the_caller(caller):
    work, proc_fd = caller
    mode = str(stat.S_IFCHR | 0o666)
    common = [mode, "1", "3", "1234", "2345", "", "18"]
    assert run_helper("mknod", str(proc_fd), "cwd", "rel", *common, pass_fds=(proc_fd,)) == 0
    st = os.lstat(work / "rel")
    assert (stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev)) == \
        (True, 1, 3)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 2345, 0o644)
    # absolute paths start at the caller's root (here, the host's; fsuid 0 may traverse
    # pytest's private directories)
    assert run_helper("mknod", str(proc_fd), "cwd", os.fsencode(work / "abs"), mode, "1", "5",
                      "0", "0", "", "18", pass_fds=(proc_fd,)) == 0
    assert os.major(os.lstat(work / "abs").st_rdev) == 1
    assert run_helper("mknod", str(proc_fd), "cwd", "rel", *common,
                      pass_fds=(proc_fd,)) == errno.EEXIST
    # the caller's own permissions on the directory apply
    work.chmod(0o755)
    assert run_helper("mknod", str(proc_fd), "cwd", "denied", *common,
                      pass_fds=(proc_fd,)) == errno.EACCES
    assert run_helper("mknod", str(proc_fd), "7777", "x", *common,
                      pass_fds=(proc_fd,)) == errno.EBADF


@pytest.mark.integration  # root
def test_helper_refuses_nodev_filesystems(caller, tmp_path):
    work, proc_fd = caller
    nodev = tmp_path / "nodev"
    nodev.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "nodev", "tmpfs", str(nodev)], check=True)
    try:
        assert run_helper("mknod", str(proc_fd), "cwd", os.fsencode(nodev / "n"),
                          str(stat.S_IFCHR | 0o666), "1", "3", "0", "0", "", "18",
                          pass_fds=(proc_fd,)) == errno.EPERM
        assert not (nodev / "n").exists()
    finally:
        subprocess.run(["umount", str(nodev)], check=True)


@pytest.mark.integration  # root
def test_helper_sets_the_attribute_without_opening_the_target(caller):
    work, proc_fd = caller
    os.mkfifo(work / "fifo")  # opening it for reading would block
    os.mkdir(work / "dir")
    os.symlink("dir", work / "link")
    assert run_helper("setxattr", str(proc_fd), "cwd", "link", "user.lxfs", b"y".hex(), "0",
                      pass_fds=(proc_fd,)) == 0
    assert os.getxattr(work / "dir", "user.lxfs") == b"y"
    assert run_helper("setxattr", str(proc_fd), "cwd", "missing", "user.lxfs", "79", "0",
                      pass_fds=(proc_fd,)) == errno.ENOENT
    # a FIFO is never opened (that would block): the kernel's answer comes at once
    assert run_helper("setxattr", str(proc_fd), "cwd", "fifo", "user.lxfs", "79", "0",
                      pass_fds=(proc_fd,)) == errno.EPERM
    assert run_helper("bogus") == 254
