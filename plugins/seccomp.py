"""Seccomp: LXD 5.0's system call policy for every container, and system call interception.

The policy is generated at each start from the instance's expanded config, the way LXD 5.0.2
does (``lxd/seccomp/seccomp.go``), and written to ``LXC_PATH/NAME/seccomp``:

- ``2`` / ``denylist`` / ``[all]``, then LXD's default denylist unless
  ``security.syscalls.deny_default=false``: ``reject_force_umount`` (umount2 with MNT_FORCE
  fails with EACCES) and ``kexec_load``, ``open_by_handle_at``, ``init_module``,
  ``finit_module``, ``delete_module`` failing with ENOSYS (38);
- with ``security.syscalls.allow``: an allowlist of those names instead (everything else kills
  the caller), exclusive with the deny keys;
- with interception (``security.syscalls.intercept.*``, unprivileged containers only): rules
  that keep the container from installing a seccomp listener or a tracer of its own (EINVAL),
  then ``notify`` rules for mknod/mknodat (char and block devices), setxattr (1-byte values)
  and sysinfo, answered by the daemon's proxy (``seccomp_proxy.py``);
- ``security.syscalls.deny_compat``: LXD's section for the instance's architecture naming the
  kernel's ``compat_sys_*`` entry points (x86_64, aarch64 and ppc64 hosts). As in LXD, this
  changes nothing with liblxc 5.0 and libseccomp 2.5: those are not system call names, and
  LXC skips them ("undefined on host native arch" in the instance's log);
- ``security.syscalls.deny``: the names given (LXC's default action for a bare name in a
  denylist kills the caller; ``NAME errno N`` makes it fail with errno N instead). LXD
  appends them to the last section; after a compat section that would bind the native arch
  only, so an ``[all]`` line comes first there.

``raw.seccomp`` replaces all of it. ``security.syscalls.deny_default=false`` with nothing else
set means no policy at all, as in LXD.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from lxfs_plugins.seccomp_notify import kernel_notif_sizes
from lxfs_plugins.seccomp_proxy import SeccompProxy, socket_path

from lxfs import hookimpl
from lxfs.api import Host
from lxfs.config_schema import KeySpec, check_bool, is_true
from lxfs.errors import InvalidArgument, NotSupported, OperationFailed
from lxfs.model import Instance

HEADER = "2\n"


def check_seccomp(value: str) -> None:
    first = value.strip().splitlines()[0].strip() if value.strip() else ""
    if first not in ("1", "2"):
        raise InvalidArgument("raw.seccomp must be an LXC seccomp policy starting with its "
                              "version line (2)")


DEFAULT_POLICY = """\
reject_force_umount  # comment this to allow umount -f;  not recommended
[all]
kexec_load errno 38
open_by_handle_at errno 38
init_module errno 38
finit_module errno 38
delete_module errno 38
"""

#: 8 is SECCOMP_FILTER_FLAG_NEW_LISTENER, 2146435072 SECCOMP_RET_TRACE: the container may not
#: take over the supervision of its own system calls
NOTIFY_DISALLOW = """\
seccomp errno 22 [1,2146435072,SCMP_CMP_MASKED_EQ,2146435072]
seccomp errno 22 [1,8,SCMP_CMP_MASKED_EQ,8]
"""

#: S_IFCHR (8192) and S_IFBLK (24576) under the S_IFMT mask (61440)
NOTIFY_MKNOD = """\
mknod notify [1,8192,SCMP_CMP_MASKED_EQ,61440]
mknod notify [1,24576,SCMP_CMP_MASKED_EQ,61440]
mknodat notify [2,8192,SCMP_CMP_MASKED_EQ,61440]
mknodat notify [2,24576,SCMP_CMP_MASKED_EQ,61440]
"""

#: only 1-byte values (trusted.overlay.opaque = y) reach the proxy
NOTIFY_SETXATTR = "setxattr notify [3,1,SCMP_CMP_EQ]\n"

NOTIFY_SYSINFO = "sysinfo notify\n"

INTERCEPT_RULES = {
    "security.syscalls.intercept.mknod": NOTIFY_MKNOD,
    "security.syscalls.intercept.setxattr": NOTIFY_SETXATTR,
    "security.syscalls.intercept.sysinfo": NOTIFY_SYSINFO,
}

COMPAT_SYSCALLS = """\
compat_sys_rt_sigaction stub_x32_rt_sigreturn compat_sys_ioctl compat_sys_readv
compat_sys_writev compat_sys_recvfrom compat_sys_sendmsg compat_sys_recvmsg stub_x32_execve
compat_sys_ptrace compat_sys_rt_sigpending compat_sys_rt_sigtimedwait
compat_sys_rt_sigqueueinfo compat_sys_sigaltstack compat_sys_timer_create compat_sys_mq_notify
compat_sys_kexec_load compat_sys_waitid compat_sys_set_robust_list compat_sys_get_robust_list
compat_sys_vmsplice compat_sys_move_pages compat_sys_preadv64 compat_sys_pwritev64
compat_sys_rt_tgsigqueueinfo compat_sys_recvmmsg compat_sys_sendmmsg
compat_sys_process_vm_readv compat_sys_process_vm_writev compat_sys_setsockopt
compat_sys_getsockopt compat_sys_io_setup compat_sys_io_submit stub_x32_execveat
""".split()

#: hosts where LXD accepts security.syscalls.deny_compat
COMPAT_HOSTS = ("x86_64", "aarch64", "ppc64")
#: an instance's architecture -> LXC's name for its policy section
COMPAT_SECTIONS = {"x86_64": "x86_64", "aarch64": "arm64", "ppc64": "ppc64"}

_NAME = re.compile(r"[A-Za-z0-9_]+")
_ERRNO_RULE = re.compile(r"([A-Za-z0-9_]+)\s+errno\s+(\d+)")


# --- keys ----------------------------------------------------------------------------------


@functools.cache
def _resolve_name() -> Callable[[bytes], int] | None:
    """libseccomp's name lookup (the library liblxc uses), if it can be loaded."""
    name = ctypes.util.find_library("seccomp")
    if name is None:
        return None
    try:
        resolve = ctypes.CDLL(name).seccomp_syscall_resolve_name
    except (OSError, AttributeError):
        return None
    resolve.argtypes = [ctypes.c_char_p]
    resolve.restype = ctypes.c_int
    return resolve


def known_syscall(name: str) -> bool:
    """Whether libseccomp knows the name on some architecture (true when it cannot say)."""
    resolve = _resolve_name()
    return resolve is None or resolve(name.encode()) != -1


def syscall_rules(value: str) -> list[str]:
    """Policy lines for a ``security.syscalls.allow``/``deny`` value: names separated by
    spaces or newlines, or lines ``NAME errno N``; ``#`` starts a comment line."""
    rules: list[str] = []
    for line in value.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rule = _ERRNO_RULE.fullmatch(line)
        if rule:
            if not 0 < int(rule[2]) < 4096:
                raise InvalidArgument(f"errno {rule[2]} out of range (1-4095) in {line!r}")
            names, suffix = [rule[1]], f" errno {int(rule[2])}"
        else:
            names, suffix = line.split(), ""
        for name in names:
            if not _NAME.fullmatch(name):
                raise InvalidArgument(
                    f"invalid system call name {name!r} (letters, digits and _ only; names "
                    "separated by spaces or newlines, or a line 'NAME errno N')")
            if not known_syscall(name):
                raise InvalidArgument(f"unknown system call {name!r}")
            rules.append(name + suffix)
    return rules


def check_syscall_list(value: str) -> None:
    syscall_rules(value)


def check_deny_compat(value: str) -> None:
    check_bool(value)
    if platform.machine() not in COMPAT_HOSTS:
        raise InvalidArgument(f"not supported on this architecture ({platform.machine()}; "
                              f"only on {', '.join(COMPAT_HOSTS)})")


@hookimpl
def lxfs_config_keys() -> list[KeySpec]:
    return [
        KeySpec("raw.seccomp", check_seccomp, "", "start",
                description="an LXC seccomp policy replacing the generated one",
                lowlevel=True, multiline=True),
        KeySpec("security.syscalls.deny_default", check_bool, "true", "start",
                description="LXD's default denylist (kexec_load, open_by_handle_at, "
                            "init/finit/delete_module fail with ENOSYS; no umount -f)"),
        KeySpec("security.syscalls.deny_compat", check_deny_compat, "false", "start",
                description="LXD's section naming the compat_sys_* entry points "
                            "(x86_64, aarch64, ppc64 hosts; libseccomp knows none of them, "
                            "so it denies nothing, as in LXD)"),
        KeySpec("security.syscalls.deny", check_syscall_list, "", "start",
                description="system calls to deny, by name (separated by spaces or "
                            "newlines; a bare name kills the caller, 'NAME errno N' fails "
                            "with errno N)", multiline=True),
        KeySpec("security.syscalls.allow", check_syscall_list, "", "start",
                description="an allowlist: only these system calls are allowed (exclusive "
                            "with security.syscalls.deny*)", multiline=True),
        KeySpec("security.syscalls.intercept.mknod", check_bool, "false", "start",
                description="let the daemon create the safe character devices (null, zero, "
                            "full, random, urandom, tty, console, whiteout) for mknod"),
        KeySpec("security.syscalls.intercept.setxattr", check_bool, "false", "start",
                description="let the daemon set trusted.overlay.opaque=y for setxattr"),
        KeySpec("security.syscalls.intercept.sysinfo", check_bool, "false", "start",
                description="answer sysinfo with the container's uptime, memory limit and "
                            "usage, swap and task count"),
    ]


# --- the policy ----------------------------------------------------------------------------


def check_combination(config: Mapping[str, str]) -> None:
    """LXD's exclusions between the keys (a deny key counts when explicitly true)."""
    allow = bool(config.get("security.syscalls.allow"))
    deny = bool(config.get("security.syscalls.deny"))
    deny_default = is_true(config.get("security.syscalls.deny_default"))
    deny_compat = is_true(config.get("security.syscalls.deny_compat"))
    denying = [k for k, v in (("security.syscalls.deny", deny),
                              ("security.syscalls.deny_default=true", deny_default),
                              ("security.syscalls.deny_compat=true", deny_compat)) if v]
    if config.get("raw.seccomp") and (allow or denying):
        others = (["security.syscalls.allow"] if allow else []) + denying
        raise InvalidArgument(f"raw.seccomp is exclusive with {', '.join(others)}: it "
                              "replaces the whole policy")
    if allow and denying:
        raise InvalidArgument(f"security.syscalls.allow is exclusive with "
                              f"{', '.join(denying)}: an allowlist denies everything else")


@functools.cache
def in_user_namespace() -> bool:
    """Whether the daemon itself runs in a user namespace (a nested host handles it)."""
    try:
        return Path("/proc/self/uid_map").read_text().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def needs_intercept(config: Mapping[str, str]) -> bool:
    """LXD's rule: an intercept key is on, the container is unprivileged, and the daemon is
    not itself in a user namespace."""
    if is_true(config.get("security.privileged")) or in_user_namespace():
        return False
    return any(is_true(config.get(key)) for key in INTERCEPT_RULES)


def needs_policy(config: Mapping[str, str]) -> bool:
    """LXD writes no policy at all when every key is off (deny_default=false included)."""
    if any(config.get(k) for k in ("raw.seccomp", "security.syscalls.allow",
                                    "security.syscalls.deny")):
        return True
    if any(is_true(config.get(k)) for k in ("security.syscalls.deny_compat",
                                             *INTERCEPT_RULES)):
        return True
    return config.get("security.syscalls.deny_default") is None or \
        is_true(config.get("security.syscalls.deny_default"))


def policy_text(config: Mapping[str, str], architecture: str, intercept: bool) -> str | None:
    """The LXC seccomp policy for an instance's expanded config, or None for none."""
    if not needs_policy(config):
        return None
    raw = config.get("raw.seccomp", "")
    if raw:
        return raw.rstrip("\n") + "\n"
    allow = config.get("security.syscalls.allow", "")
    if allow:
        policy = HEADER + "allowlist\n[all]\n" + "".join(
            line + "\n" for line in syscall_rules(allow))
    else:
        policy = HEADER + "denylist\n[all]\n"
        deny_default = config.get("security.syscalls.deny_default")
        if deny_default is None or is_true(deny_default):
            policy += DEFAULT_POLICY
    if intercept:
        policy += NOTIFY_DISALLOW
        for key, rules in INTERCEPT_RULES.items():
            if is_true(config.get(key)):
                policy += rules
    if allow:
        return policy
    section = COMPAT_SECTIONS.get(architecture)
    compat = is_true(config.get("security.syscalls.deny_compat")) and section is not None
    if compat:
        policy += f"[{section}]\n" + "".join(f"{name} errno 38\n" for name in COMPAT_SYSCALLS)
    deny = config.get("security.syscalls.deny", "")
    if deny:
        # LXD appends these to whatever section came last: after the compat section they
        # would bind the native arch only, and 32-bit callers could still make the calls
        policy += ("[all]\n" if compat else "") + "".join(
            line + "\n" for line in syscall_rules(deny))
    return policy


@functools.cache
def notify_supported() -> bool:
    return kernel_notif_sizes() is not None


@hookimpl
def lxfs_lxc_config(host: Host, instance: Instance) -> list[str]:
    config = instance.expanded_config
    check_combination(config)
    intercept = needs_intercept(config)
    if intercept and not notify_supported():
        raise NotSupported("security.syscalls.intercept.*: this kernel has no seccomp user "
                           "notification")
    if intercept and not socket_path(host).exists():
        raise OperationFailed(f"security.syscalls.intercept.*: the daemon's seccomp proxy is "
                              f"not listening on {socket_path(host)} (see the daemon's log)")
    policy = policy_text(config, instance.architecture or platform.machine(), intercept)
    path = host.instance_dir(instance, "seccomp") / "policy"
    lines: list[str] = []
    if policy is None:
        path.unlink(missing_ok=True)
    else:
        path.parent.mkdir(mode=0o711, exist_ok=True)
        tmp = path.with_name(".seccomp.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as f:
            f.write(policy)
        os.replace(tmp, path)
        lines.append(f"lxc.seccomp.profile = {path}")
    if is_true(config.get("security.nesting")):
        # the inner LXC stacks its own policy on this one (as LXD sets it)
        lines.append("lxc.seccomp.allow_nesting = 1")
    if intercept:
        lines += [f"lxc.seccomp.notify.proxy = unix:{socket_path(host)}",
                  f"lxc.seccomp.notify.cookie = {instance.name}"]
    return lines


@hookimpl
def lxfs_services(host: Host) -> list[Callable[..., Awaitable[None]]]:
    """The notify proxy, listening before any instance starts (liblxc's monitor connects to
    it at start, and the start fails when nothing listens)."""
    if not notify_supported():
        return []
    return [SeccompProxy(host).serve]


@hookimpl
def lxfs_environment() -> dict[str, str]:
    return {"seccomp": "enabled",
            "seccomp_notify": "supported" if notify_supported() else "not supported"}
