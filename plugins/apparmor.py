"""AppArmor: a profile of its own for each container, on hosts whose kernel has AppArmor.

As LXD does, lxfs generates one profile per instance: the base rules every container gets,
more for unprivileged and nesting containers, and the instance's ``raw.apparmor`` appended.
Its name carries the data directory (``lxfs-NAME_<DATA_DIR>``), so that daemons with different
data directories never share a profile. The file is written (atomically, and only when it
changed, so that the parser's binary cache stays valid) to
``DATA_DIR/security/apparmor/profiles/lxfs-NAME`` and loaded with ``apparmor_parser -rWL``
before the container starts; it is unloaded (``-RWL``) when the container stops and removed
when the instance is deleted. Where the kernel can stack profiles, the container is confined by
its profile stacked with a policy namespace of its own (``lxfs-NAME_<data-dir>``), in which an
unprivileged container may load profiles for what runs inside it.

On a host without AppArmor (like the kernel lxfs is developed on) containers run unconfined;
``raw.apparmor`` is then refused when it is set, and an instance that already holds it (an
older record) is refused at start, instead of its rules being silently ignored.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from lxfs import hookimpl
from lxfs.api import Host, cgroup_layout
from lxfs.config_schema import KeySpec, is_true
from lxfs.errors import InvalidArgument, LxfsError, OperationFailed
from lxfs.model import Instance

log = logging.getLogger("lxfs.apparmor")

SECURITYFS = Path("/sys/kernel/security")
PROC_SELF = Path("/proc/self")
PREFIX = "lxfs-"
#: AppArmor's longest profile name
MAX_NAME = 253
#: the first apparmor_parser that understands ``unix`` rules
UNIX_RULES_SINCE = (2, 10, 95)

NO_APPARMOR = "this host's kernel has no AppArmor; the rules could not be enforced"
NO_PARSER = ("apparmor_parser is not installed (Debian: apt-get install apparmor); the rules "
             "could not be loaded")
NO_ADMIN = ("lxfsd cannot load AppArmor profiles here (it is confined itself, or lacks "
            "CAP_MAC_ADMIN); the rules could not be enforced")


# --- what the host offers -----------------------------------------------------------------------


@dataclass(frozen=True)
class HostAppArmor:
    """What the host's AppArmor offers, as LXD reads it."""

    #: the kernel has AppArmor (securityfs has an ``apparmor`` directory)
    kernel: bool
    #: path of ``apparmor_parser``, None when it is not installed
    parser: str | None = None
    #: profiles can be stacked (kernel domain version 1.2+), and lxfsd is not in a stack itself
    stacking: bool = False
    #: lxfsd may load profiles (CAP_MAC_ADMIN; in a user namespace only under stacking)
    admin: bool = True
    #: lxfsd's own label when it is confined ("" when unconfined)
    confined: str = ""

    @property
    def enabled(self) -> bool:
        """Containers are confined at all (the kernel has AppArmor and the parser is there)."""
        return self.kernel and self.parser is not None

    @property
    def per_instance(self) -> bool:
        """Each container gets its own generated profile (else lxfsd's own label, as LXD)."""
        return self.enabled and self.admin and not self.confined

    def describe(self) -> str:
        if not self.kernel:
            return "absent (not in this kernel)"
        if self.parser is None:
            return "in the kernel, but apparmor_parser is missing: containers run unconfined"
        if not self.per_instance:
            label = self.confined or "unconfined"
            return f"enabled, containers share lxfsd's own profile ({label})"
        return "enabled, a profile per instance" + (" (stacked)" if self.stacking else "")

    def refusal(self) -> str | None:
        """Why ``raw.apparmor`` cannot be enforced here (None when it can)."""
        if not self.kernel:
            return NO_APPARMOR
        if self.parser is None:
            return NO_PARSER
        if not self.per_instance:
            return NO_ADMIN
        return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def detect() -> HostAppArmor:
    """Read what the host offers (a handful of small files: cheap enough for every call)."""
    apparmor, proc_self = SECURITYFS / "apparmor", PROC_SELF
    if not apparmor.is_dir():
        return HostAppArmor(kernel=False)
    domain = apparmor / "features" / "domain"
    version = re.match(r"(\d+)(?:\.(\d+))?", _read(domain / "version").strip())
    can_stack = _read(domain / "stack") == "yes\n" and version is not None and \
        (int(version.group(1)), int(version.group(2) or 0)) >= (1, 2)
    stacked = _read(apparmor / ".ns_stacked") == "yes\n"
    status = _read(proc_self / "status")
    cap_eff = re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M)
    mac_admin = cap_eff is not None and bool(int(cap_eff.group(1), 16) >> 33 & 1)
    in_userns = _read(proc_self / "uid_map").split() != ["0", "0", "4294967295"]
    label = (_read(proc_self / "attr" / "apparmor" / "current")
             or _read(proc_self / "attr" / "current")).strip().removesuffix(" (enforce)")
    return HostAppArmor(
        kernel=True,
        parser=shutil.which("apparmor_parser"),
        stacking=can_stack and not stacked,
        admin=mac_admin and (not in_userns or stacked),
        confined="" if label in ("", "unconfined") else label,
    )


def stacking_available() -> bool:
    """Containers get a policy namespace of their own (stacked profiles)."""
    aa = detect()
    return aa.per_instance and aa.stacking


@functools.lru_cache(maxsize=8)
def parser_version(parser: str) -> tuple[int, ...]:
    """``apparmor_parser --version`` as numbers ((0,) when it cannot be read)."""
    try:
        out = subprocess.run([parser, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return (0,)
    m = re.search(r"(\d+(?:\.\d+)*)\s*$", out.splitlines()[0] if out else "")
    return tuple(int(p) for p in m.group(1).split(".")) if m else (0,)


# --- names --------------------------------------------------------------------------------------

_QUOTABLE = re.compile(r"[^\s\"\\\x00]*")


def _bounded(name: str) -> str:
    """``lxfs-NAME``, the name replaced by its sha256 when AppArmor could not take it (too long,
    or characters a quoted profile name cannot hold), as LXD does for long names."""
    if len(PREFIX) + len(name) >= MAX_NAME or not _QUOTABLE.fullmatch(name):
        name = hashlib.sha256(name.encode()).hexdigest()
    return PREFIX + name


def profile_name(instance: str, data_dir: Path) -> str:
    """The instance's profile: ``lxfs-NAME_<DATA_DIR>``."""
    return _bounded(f"{instance}_<{data_dir}>")


def namespace_name(instance: str, data_dir: Path) -> str:
    """The instance's policy namespace: like its profile, with the data directory's slashes
    (not allowed in namespace names) turned into dashes."""
    return _bounded(f"{instance}_<{str(data_dir).strip('/').replace('/', '-')}>")


def profile_filename(instance: str) -> str:
    """The profile's file under ``DATA_DIR/security/apparmor/profiles``."""
    return _bounded(instance)


def lxc_profile(instance: str, data_dir: Path, stacking: bool) -> str:
    """The ``lxc.apparmor.profile`` value: the profile, stacked with the instance's own
    namespace where the kernel can stack."""
    name = profile_name(instance, data_dir)
    if stacking:
        return f"{name}//&:{namespace_name(instance, data_dir)}:"
    return name


def securityfs_name(name: str) -> str:
    """How the kernel names a loaded profile under ``apparmor/policy/profiles`` (before its
    ``.N`` suffix): slashes become dots, spaces underscores, other punctuation is dropped."""
    out = []
    for ch in name.lstrip("/."):
        if ch == "/":
            out.append(".")
        elif ch.isspace():
            out.append("_")
        elif ch.isascii() and (ch.isalnum() or ch in "._-"):
            out.append(ch)
    return "".join(out)


# --- the profile --------------------------------------------------------------------------------

#: A set of paths under a directory: names (a trailing ``*`` takes every name that starts so)
#: mapped to what is taken under them, None for everything.
PathTree = dict[str, "PathTree | None"]


def globs_outside(base: str, tree: PathTree) -> list[str]:
    """AppArmor globs that together match every path under ``base`` (a directory ending in
    ``/``) except those of ``tree``. AppArmor has no "except", so each level is spelled out
    character by character: ``/sys/[^cdf]*``, then ``/sys/c[^l]*``, and so on down each name
    of the tree. A glob covers the path and everything under it (``{,/**}``)."""
    names = {name.removesuffix("*"): (name.endswith("*"), sub) for name, sub in tree.items()}
    globs: list[str] = []

    def visit(prefix: str) -> None:
        entry = names.get(prefix)
        if entry is not None and entry[0]:
            globs.append(f"{base}{prefix}*/**")  # names starting so: only what is under them
            return
        following = sorted({n[len(prefix)] for n in names
                            if n.startswith(prefix) and len(n) > len(prefix)})
        if following:
            # a name of the tree that is also the start of another must keep its own subtree
            stop = "/" if entry is not None else ""
            globs.append(f"{base}{prefix}[^{''.join(following)}{stop}]*{{,/**}}")
        elif entry is not None:
            globs.append(f"{base}{prefix}?*{{,/**}}")
        if entry is not None and entry[1] is not None:
            globs.extend(globs_outside(f"{base}{prefix}/", entry[1]))
        for ch in following:
            visit(prefix + ch)

    visit("")
    return globs


#: what a container may write under /proc/sys: the knobs its own namespaces own
PROC_SYS_WRITABLE: PathTree = {
    "kernel": {"shm*": None, "msg*": None, "sem*": None, "hostname": None, "domainname": None},
    "net": None,
}
#: what a container may write under /sys: its cgroups, bpf, its network devices
SYS_WRITABLE: PathTree = {
    "fs": {"cgroup": None, "bpf": None},
    "class": {"net": None},
    "devices": {"virtual": {"net": None}},
}
#: with stacking, the container also manages its own AppArmor namespace
SYS_WRITABLE_STACKING: PathTree = {**SYS_WRITABLE, "kernel": {"security": {"apparmor": None}}}
#: what bind and remount rules never apply to: the kernel's views and LXC's helper mounts
BIND_PROTECTED: PathTree = {"proc": None, "sys": None, "dev": {".lxc": None}}
#: an rbind of /dev would take /dev/.lxc along
RBIND_PROTECTED: PathTree = {"proc": None, "sys": None, "dev": None}

_NOSUID_NOEXEC_NODEV = [list(c) for n in range(4) for c in combinations(
    ("nosuid", "noexec", "nodev"), n)]
#: flags a read-only bind remount may carry (what init systems and LXC ask for)
REMOUNT_FLAGS = _NOSUID_NOEXEC_NODEV + [["noatime"], ["nosuid", "noexec", "strictatime"]]
#: unprivileged containers: also noatime with any of the others
UNPRIVILEGED_REMOUNT_FLAGS = (_NOSUID_NOEXEC_NODEV + [["noatime", *f] for f in
                                                      _NOSUID_NOEXEC_NODEV]
                              + [["nosuid", "noexec", "strictatime"]])
PROPAGATIONS = ("slave", "rslave", "shared", "rshared", "private", "rprivate", "unbindable",
                "runbindable")
#: special filesystems a container may mount at their usual place, never reading them
HIDDEN_FILESYSTEMS = (("binfmt_misc", "/proc/sys/fs/binfmt_misc/"),
                      ("configfs", "/sys/kernel/config/"),
                      ("debugfs", "/sys/kernel/debug/"),
                      ("efivarfs", "/sys/firmware/efi/efivars/"),
                      ("tracefs", "/sys/kernel/tracing/"))
#: filesystems a container may mount anywhere
FREE_FILESYSTEMS = ("fuse", "fuse.*", "hugetlbfs", "mqueue", "ramfs", "tmpfs")


@dataclass(frozen=True)
class Features:
    """What the host's AppArmor and cgroups let the profile say."""

    unix: bool = True  # the parser knows unix socket rules
    cgroup_ns: bool = True  # containers have a cgroup namespace (may mount cgroupfs)
    cgroup2: bool = False  # the host has a cgroup2 tree (unified or hybrid)
    stacking: bool = False  # the container gets its own policy namespace


def host_features(aa: HostAppArmor) -> Features:
    return Features(
        unix=aa.parser is not None and parser_version(aa.parser) >= UNIX_RULES_SINCE,
        cgroup_ns=Path("/proc/self/ns/cgroup").exists(),
        cgroup2=cgroup_layout() in ("v2", "hybrid"),
        stacking=aa.stacking,
    )


def _rule(text: str) -> str:
    return f"  {text},"


def render_profile(name: str, namespace: str, *, privileged: bool, nesting: bool, raw: str,
                   features: Features) -> str:
    """The text of an instance's profile."""
    out = ["#include <tunables/global>",
           "# Generated by lxfs at each start of the instance: edits are overwritten.",
           f'profile "{name}" flags=(attach_disconnected,mediate_deleted) {{',
           "  ### Base: what every container may do"]
    out += [_rule(r) for r in ("capability", "dbus", "file", "network", "umount")]
    out += ["", "  # a read-only remount of / (asked at shutdown) is refused without a log line",
            _rule("deny mount options=(ro,remount) -> /"),
            _rule("deny mount options=(ro,remount,silent) -> /"),
            "", "  # signals and ptrace within the container",
            _rule("signal (receive)"), _rule("signal peer=@{profile_name}"),
            _rule("ptrace (readby)"), _rule("ptrace (tracedby)"),
            _rule("ptrace peer=@{profile_name}"),
            "", "  # special filesystems: mountable where they belong, their content out of reach"]
    for fstype, where in HIDDEN_FILESYSTEMS:
        out += [_rule(f"mount fstype={fstype} -> {where}"), _rule(f"deny {where}{{,**}} rwklx")]
    out += ["", "  # filesystems of the container's own"]
    out += [_rule(f"mount fstype={fstype}") for fstype in FREE_FILESYSTEMS]
    out += [_rule("mount fstype=fusectl -> /sys/fs/fuse/connections/"),
            "", "  # proc, sysfs, securityfs and cgroups at their place (writes limited below)",
            _rule("mount fstype=proc -> /proc/"),
            _rule("mount fstype=sysfs -> /sys/"),
            _rule("mount fstype=securityfs -> /sys/kernel/security/"),
            _rule("mount options=(rw,nosuid,nodev,noexec,remount) -> /sys/"),
            _rule("mount options=(ro,nosuid,nodev,noexec,remount,strictatime) -> /sys/fs/cgroup/"),
            _rule("mount options=(rw,nosuid,nodev,remount) -> /run/"),
            _rule("deny /proc/bus/** wklx"), _rule("deny /proc/kcore rwklx"),
            _rule("deny /proc/sysrq-trigger rwklx"), _rule("deny /proc/acpi/** rwklx"),
            "", "  # mount propagation of /"]
    out += [_rule(f"mount options=(rw,{p}) -> /") for p in PROPAGATIONS]
    out += ["", "  # read-only bind remounts, binds and moves of anything but /proc, /sys and "
            "/dev/.lxc"]
    protected = globs_outside("/", BIND_PROTECTED)
    for flags in REMOUNT_FLAGS:
        options = ",".join(["ro", "remount", "bind", *flags])
        out += [_rule(f"mount options=({options}) {glob}") for glob in protected]
    out += [_rule(f"mount options=(rw,bind) {glob}") for glob in protected]
    out += [_rule(f"mount options=(rw,rbind) {glob}")
            for glob in globs_outside("/", RBIND_PROTECTED)]
    out += [_rule(f"mount options=(rw,move) {glob}") for glob in protected]
    out += ["", "  # /proc/sys: writes only to what the container's namespaces own"]
    out += [_rule(f"deny {glob} wklx") for glob in globs_outside("/proc/sys/", PROC_SYS_WRITABLE)]
    out += ["", "  # /sys: writes only to cgroups, bpf and network devices"]
    writable = SYS_WRITABLE_STACKING if features.stacking else SYS_WRITABLE
    out += [_rule(f"deny {glob} wklx") for glob in globs_outside("/sys/", writable)]

    if features.unix:
        out += ["", "  ### unix sockets: received from anywhere, used freely inside",
                _rule("unix (receive)"), _rule("unix peer=(label=@{profile_name})")]
    if features.cgroup_ns:
        out += ["", "  ### cgroup namespace: the container mounts its own cgroup trees",
                _rule("mount fstype=cgroup -> /sys/fs/cgroup/**")]
        if features.cgroup2:
            out.append(_rule("mount fstype=cgroup2 -> /sys/fs/cgroup/**"))
    if features.stacking:
        out += ["", "  ### stacking: the container's own policy namespace, where it may load "
                "profiles",
                _rule(f'change_profile -> ":{namespace}:*"'),
                _rule(f'change_profile -> ":{namespace}://*"')]
    if nesting:
        out += ["", "  ### security.nesting: containers inside",
                _rule("pivot_root"), _rule("ptrace"), _rule("signal"),
                "  # the unmasked proc and sysfs (/dev/.lxc) are there for mounting, not reading",
                _rule("deny /dev/.lxc/proc/** rw"), _rule("deny /dev/.lxc/sys/** rw"),
                "  # an inner LXC mounts proc and sysfs in its rootfs mount point",
                _rule("mount fstype=proc -> /usr/lib/*/lxc/**"),
                _rule("mount fstype=sysfs -> /usr/lib/*/lxc/**"),
                "  # and then remounts parts of them with flag sets no rule can name one by one",
                _rule("mount")]
        if not features.stacking:
            out += ["  # without stacking, containers inside are confined by this same profile",
                    _rule(f'change_profile -> "{name}"')]
    if not privileged:
        out += ["", "  ### unprivileged: the user namespace already confines mounts",
                _rule("pivot_root")]
        out += [_rule(f"mount options=(rw,{p}) -> **") for p in PROPAGATIONS]
        out += [_rule(f"mount options=(rw,{kind}) {src} -> /**")
                for kind in ("bind", "rbind") for src in ("/", "/**")]
        out += [_rule(f"mount options=({','.join(['ro', 'remount', 'bind', *flags])})")
                for flags in UNPRIVILEGED_REMOUNT_FLAGS]
        out += [_rule("mount options=(ro,remount,nosuid,noexec,strictatime)"),
                _rule("mount options=(ro,remount) /"), _rule("mount options=(ro,remount) /**")]
    raw_lines = raw.strip("\n").splitlines()
    if raw_lines:
        out += ["", "  ### raw.apparmor"] + [f"  {line}" if line.strip() else ""
                                            for line in raw_lines]
    out.append("}")
    return "\n".join(out) + "\n"


# --- files and the kernel -----------------------------------------------------------------------


class ProfileStore:
    """The instances' profiles on disk and in the kernel, through ``apparmor_parser``."""

    def __init__(self, data_dir: Path, aa: HostAppArmor) -> None:
        self.data_dir = data_dir
        self.aa = aa
        self.securityfs = SECURITYFS
        self.base = data_dir / "security" / "apparmor"
        self.profiles = self.base / "profiles"
        self.cache = self.base / "cache"

    def path(self, instance: str) -> Path:
        return self.profiles / profile_filename(instance)

    def generate(self, instance: Instance) -> Path:
        """Write the instance's profile (only when its text changed: the parser's cache is
        keyed on the file's mtime)."""
        config = instance.expanded_config
        text = render_profile(
            profile_name(instance.name, self.data_dir),
            namespace_name(instance.name, self.data_dir),
            privileged=is_true(config.get("security.privileged")),
            nesting=is_true(config.get("security.nesting")),
            raw=config.get("raw.apparmor", ""),
            features=host_features(self.aa),
        )
        self.base.parent.mkdir(mode=0o711, exist_ok=True)  # DATA_DIR/security: shared
        for d in (self.base, self.profiles, self.cache):
            d.mkdir(mode=0o700, exist_ok=True)
        path = self.path(instance.name)
        if _read(path) != text:
            tmp = path.with_name(f".{path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        return path

    def load(self, instance: Instance) -> None:
        """Generate the profile, make the namespace (stacking) and load it into the kernel."""
        path = self.generate(instance)
        if self.aa.stacking:
            ns = self.securityfs / "apparmor/policy/namespaces" / namespace_name(
                instance.name, self.data_dir)
            try:
                ns.mkdir(mode=0o755, exist_ok=True)
            except OSError as exc:
                raise OperationFailed(f"cannot create the AppArmor namespace of "
                                      f"{instance.name}: {exc.strerror}") from None
        self._parser("r", path, f"AppArmor refused the profile of {instance.name}")

    def loaded(self, instance: str) -> bool:
        """The kernel has the instance's profile."""
        wanted = securityfs_name(profile_name(instance, self.data_dir))
        try:
            entries = os.listdir(self.securityfs / "apparmor/policy/profiles")
        except OSError:
            return False
        return any(entry.rpartition(".")[0] == wanted for entry in entries)

    def unload(self, instance: str) -> None:
        """Remove the profile (and namespace) from the kernel; the file stays."""
        if self.aa.stacking:
            ns = self.securityfs / "apparmor/policy/namespaces" / namespace_name(
                instance, self.data_dir)
            try:
                ns.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove the AppArmor namespace of %s: %s", instance,
                            exc.strerror)
        path = self.path(instance)
        if path.exists() and self.loaded(instance):
            self._parser("R", path, f"AppArmor could not unload the profile of {instance}")

    def delete(self, instance: str) -> None:
        """Unload the profile, then remove its file and cached binary."""
        if self.aa.per_instance:
            self.unload(instance)
        name = profile_filename(instance)
        self.path(instance).unlink(missing_ok=True)
        if self.cache.is_dir():
            for cached in self.cache.glob(f"**/{name}"):  # per-feature-set subdirectories
                cached.unlink(missing_ok=True)

    def _parser(self, command: str, path: Path, failure: str) -> None:
        assert self.aa.parser is not None
        args = [self.aa.parser, f"-{command}WL", str(self.cache), str(path)]
        try:
            proc = subprocess.run(args, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=120)
        except subprocess.TimeoutExpired:
            raise OperationFailed(f"{failure}: apparmor_parser did not finish in 120 s") from None
        if proc.returncode != 0:
            detail = (proc.stderr.strip() or proc.stdout.strip() or
                      f"exit status {proc.returncode}").splitlines()[-3:]
            raise OperationFailed(f"{failure}: {' / '.join(detail)}")


def _store(host: Host, aa: HostAppArmor | None = None) -> ProfileStore:
    return ProfileStore(host.data_dir.resolve(), aa or detect())


# --- hooks --------------------------------------------------------------------------------------


def check_raw_apparmor(value: str) -> None:
    """Refuse rules that this host could not enforce (checked when the key is set)."""
    if not value.strip():
        return
    refusal = detect().refusal()
    if refusal:
        raise InvalidArgument(refusal)


@hookimpl
def lxfs_config_keys() -> list[KeySpec]:
    return [KeySpec("raw.apparmor", check_raw_apparmor, "", "start",
                    description="AppArmor rules appended to the instance's profile (refused on "
                                "hosts without AppArmor)", lowlevel=True, multiline=True)]


@hookimpl
def lxfs_lxc_config(host: Host, instance: Instance) -> list[str]:
    aa = detect()
    if not aa.enabled:
        return ["lxc.apparmor.profile = unconfined"]
    if not aa.per_instance:
        return [f"lxc.apparmor.profile = {aa.confined or 'unconfined'}"]
    return [f"lxc.apparmor.profile = "
            f"{lxc_profile(instance.name, host.data_dir.resolve(), aa.stacking)}"]


@hookimpl
def lxfs_instance_pre_start(host: Host, instance: Instance) -> None:
    """Load the instance's profile; refuse to start what holds rules this host cannot
    enforce (records from before the key was checked)."""
    aa = detect()
    if instance.expanded_config.get("raw.apparmor", "").strip():
        refusal = aa.refusal()
        if refusal:
            raise LxfsError(f"raw.apparmor: {refusal}")
    if aa.per_instance:
        _store(host, aa).load(instance)


@hookimpl
def lxfs_instance_post_stop(host: Host, instance: Instance) -> None:
    """Free the kernel's memory, as LXD does; the next start loads the profile again."""
    aa = detect()
    if aa.per_instance:
        try:
            _store(host, aa).unload(instance.name)
        except LxfsError as exc:
            log.warning("%s", exc)


@hookimpl
def lxfs_instance_post_delete(host: Host, instance: Instance) -> None:
    _store(host).delete(instance.name)


@hookimpl
def lxfs_startup(host: Host) -> None:
    """Remove the profiles of instances that no longer exist (renamed or deleted while a
    profile could not be removed)."""
    store = _store(host)
    if not store.profiles.is_dir():
        return
    kept = {profile_filename(name) for name in host.instances()}
    for path in store.profiles.iterdir():
        if path.name.startswith(PREFIX) and path.name not in kept:
            log.info("removing the AppArmor profile %s (no such instance)", path.name)
            store.delete(path.name.removeprefix(PREFIX))


@hookimpl
def lxfs_environment() -> dict[str, str]:
    return {"apparmor": detect().describe()}
