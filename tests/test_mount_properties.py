"""Property-based tests of the mount: generated values and names written to every writable
file and directory kind of a real daemon, against a model of what must be accepted.

The model is derived from the specs (docs/filesystem.md and the declared keys), not from the
validators: booleans are true/false/1/0/yes/no/on/off, integers plain decimal within their
range, sizes LXD's units below 2**63, every value one line unless its key is multi-line;
names follow ``lxfs.names``. Properties, after every write:

- the daemon lives (its process, and ``environment/server_pid`` answers);
- an accepted write reads back as written; a refused one leaves the old value;
- a refusal has the model's errno (EINVAL bad value or name, EEXIST, ENOENT, EBUSY) and a
  one-line message in its scope's ``error`` file.

Deterministic (``derandomize``) and bounded: about two minutes. The figures (values tried,
accepted, refused, wrongly accepted) are printed at the end and written to
``mount_properties_summary.txt`` under pytest's base temporary directory.
"""

from __future__ import annotations

import errno
import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lxfs.config_schema import Schema
from lxfs.names import check_name
from lxfs.plugins import plugin_manager

pytestmark = pytest.mark.integration

PROFILE = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                   suppress_health_check=list(HealthCheck))
Model = Callable[[str], bool]

# --- the tally ------------------------------------------------------------------------------

TALLY: Counter[str] = Counter()
#: count the wrong answers instead of failing at the first (to measure a build before a fix)
COUNT_ONLY = os.environ.get("LXFS_PROPERTIES_COUNT_ONLY") == "1"
WRONG: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def summary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    figures = {"tried": TALLY["tried"], "accepted": TALLY["accepted"],
               "refused": TALLY["refused"], "wrongly_accepted": TALLY["wrongly_accepted"],
               "wrongly_refused": TALLY["wrongly_refused"], "wrong_errno": TALLY["wrong_errno"],
               "by_kind": {k[5:]: v for k, v in sorted(TALLY.items()) if k.startswith("kind:")},
               "wrong": WRONG[:20]}
    text = json.dumps(figures, indent=1, ensure_ascii=True)
    (tmp_path_factory.getbasetemp() / "mount_properties_summary.txt").write_text(text + "\n")
    print(f"\nmount properties: {text}")


# --- the model ------------------------------------------------------------------------------

BOOLS = ("true", "false", "1", "0", "yes", "no", "on", "off")
MAX_INT = 2**63 - 1
MAX_SECONDS = 2**31 - 1
UNITS = {"": 1, "B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15,
         "EB": 10**18, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50,
         "EiB": 2**60, "KB": 10**3, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
CPUS = os.cpu_count() or 1
KNOWN_SYSCALLS = ("kexec_load", "open_by_handle_at", "reboot", "mount", "ptrace", "read")
UNKNOWN_SYSCALLS = ("nosuchcall", "not_a_syscall_x")


def one_line(value: str) -> bool:
    """No control or format characters (a tab is white space)."""
    return not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")
                   for c in value.replace("\t", " "))


def is_bool(value: str) -> bool:
    return value.lower() in BOOLS


def integer(lo: int, hi: int = MAX_INT) -> Model:
    return lambda v: bool(re.fullmatch(r"-?[0-9]+", v)) and lo <= int(v) <= hi


def size_bytes(value: str) -> int | None:
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?) ?([A-Za-z]*)", value.strip())
    if not m or m.group(2) not in UNITS:
        return None
    n = int(Fraction(m.group(1)) * UNITS[m.group(2)])
    return n if n <= MAX_INT else None


def is_memory(value: str) -> bool:
    if value.endswith("%"):
        return bool(re.fullmatch(r"[0-9]+(\.[0-9]+)?", value[:-1])) and \
            0 < float(value[:-1]) <= 100
    n = size_bytes(value)
    return n is not None and n >= 4 * 2**20


def is_cpu(value: str) -> bool:
    if re.fullmatch(r"[0-9]+", value):
        return 1 <= int(value) <= CPUS
    if not re.fullmatch(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*", value):
        return False
    for part in value.split(","):
        lo, _, hi = part.partition("-")
        if int(hi or lo) < int(lo) or int(hi or lo) >= CPUS:
            return False
    return True


def is_allowance(value: str) -> bool:
    m = re.fullmatch(r"([0-9]+)%", value)
    if m:
        return 0 < int(m[1]) <= 100
    m = re.fullmatch(r"([0-9]+)ms/([0-9]+)ms", value)
    return bool(m) and 1 <= int(m[1]) <= ((1 << 44) - 1) // 1000 and 1 <= int(m[2]) <= 1000


def is_modules(value: str) -> bool:
    return all(re.fullmatch(r"[A-Za-z0-9_-]+", n.strip()) for n in value.split(","))


def is_raw_idmap(value: str) -> bool:
    for line in value.splitlines():
        line = line.strip()
        m = re.fullmatch(r"(uid|gid|both)\s+([0-9]+)(?:-([0-9]+))?\s+([0-9]+)(?:-([0-9]+))?",
                         line)
        if line and not m:
            return False
        if m:
            count = int(m[3] or m[2]) - int(m[2]) + 1
            if count < 1 or count != int(m[5] or m[4]) - int(m[4]) + 1:
                return False
    return True


def is_raw_lxc(value: str) -> bool:
    for line in value.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, _ = line.partition("=")
        if not sep or not key.strip().startswith("lxc.") or \
                key.strip() in ("lxc.rootfs.path", "lxc.logfile", "lxc.log.file"):
            return False
    return True


def is_seccomp(value: str) -> bool:
    return bool(value.strip()) and value.strip().splitlines()[0].strip() in ("1", "2")


def is_syscalls(value: str) -> bool:
    for line in value.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rule = re.fullmatch(r"([A-Za-z0-9_]+)\s+errno\s+([0-9]+)", line)
        if rule and not 0 < int(rule[2]) < 4096:
            return False
        for name in [rule[1]] if rule else line.split():
            if name not in KNOWN_SYSCALLS:
                return False
    return True


def _net_prio() -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(" - cgroup " in line and "net_prio" in line.split(" - ")[1].split()[2]
                   .split(",") for line in f)


NET_PRIO = _net_prio()
APPARMOR = os.path.isdir("/sys/kernel/security/apparmor")

#: every declared instance key (or family): its model and whether values may span lines
KEY_MODELS: dict[str, tuple[Model, bool]] = {
    "boot.autostart": (is_bool, False),
    "boot.autostart.delay": (integer(0, MAX_SECONDS), False),
    "boot.autostart.priority": (integer(0), False),
    "boot.stop.priority": (integer(0), False),
    "boot.host_shutdown_timeout": (integer(0, MAX_SECONDS), False),
    "environment.*": (lambda v: True, False),
    "user.*": (lambda v: True, True),
    "image.*": (lambda v: True, False),
    "volatile.*": (lambda v: False, False),
    "limits.memory": (is_memory, False),
    "limits.processes": (integer(1, 4 * 1024 * 1024), False),
    "limits.cpu": (is_cpu, False),
    "limits.cpu.allowance": (is_allowance, False),
    "limits.memory.swap": (is_bool, False),
    "limits.disk.priority": (integer(0, 10), False),
    "limits.network.priority": (lambda v: integer(0, 10)(v) and (NET_PRIO or int(v) == 0),
                                False),
    "raw.lxc": (is_raw_lxc, True),
    "security.privileged": (is_bool, False),
    "security.nesting": (is_bool, False),
    "security.idmap.isolated": (is_bool, False),
    "security.idmap.size": (integer(65536, 2**31), False),
    "raw.idmap": (is_raw_idmap, True),
    "linux.kernel_modules": (is_modules, False),
    "raw.seccomp": (is_seccomp, True),
    "security.syscalls.deny_default": (is_bool, False),
    "security.syscalls.deny_compat": (is_bool, False),
    "security.syscalls.deny": (is_syscalls, True),
    "security.syscalls.allow": (is_syscalls, True),
    "security.syscalls.intercept.mknod": (is_bool, False),
    "security.syscalls.intercept.setxattr": (is_bool, False),
    "security.syscalls.intercept.sysinfo": (is_bool, False),
    "raw.apparmor": (lambda v: not v.strip(), True),
}


def declared_keys() -> list[str]:
    schema = Schema(k for keys in plugin_manager().hook.lxfs_config_keys() for k in keys)
    return [spec.name for spec in schema.instance_keys]


def key_accepts(family: str, key: str, value: str) -> bool:
    model, multiline = KEY_MODELS[family]
    key_ok = one_line(key) and "=" not in key and not any(c.isspace() for c in key)
    return key_ok and "\0" not in value and (multiline or one_line(value)) and model(value)


# --- strategies -----------------------------------------------------------------------------

NASTY = ["\n", "\r", "\x1b", "\0", "\u202e", "\u2028", " ", "\t", "٣", "_", "+", "-", "=",
         "/", ".", ":", "#", "lxc.x = y"]


def mutated(base: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A value, or the value with something nasty inserted."""
    def insert(pair: tuple[str, int, str]) -> str:
        value, at, what = pair
        at = at % (len(value) + 1)
        return value[:at] + what + value[at:]

    return st.one_of(base, st.tuples(base, st.integers(0, 40), st.sampled_from(NASTY))
                     .map(insert))


def ints(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.one_of(st.integers(lo - 3, min(hi + 3, lo + 1000)),
                     st.integers(hi - 3, hi + 3), st.integers(-(2**70), 2**70)).map(str)


SIZES = st.tuples(st.integers(0, 2**20), st.sampled_from([*UNITS, "X", "mib", "Ki"]),
                  st.sampled_from(["", " ", ".5"])).map(lambda t: f"{t[0]}{t[2]}{t[1]}")
HUGE_SIZES = st.tuples(st.integers(1, 2**70), st.sampled_from(["EiB", "EB", "", "TiB"])) \
    .map(lambda t: f"{t[0]}{t[1]}")
TEXT = st.text(max_size=30)

VALUES: dict[str, st.SearchStrategy[str]] = {
    "bool": st.tuples(st.sampled_from([*BOOLS, "maybe", "2", "", "tru"]), st.booleans())
    .map(lambda t: t[0].upper() if t[1] else t[0]),
    "memory": st.one_of(SIZES, HUGE_SIZES,
                        st.integers(-5, 120).map(lambda n: f"{n}%"), st.just("nan%")),
    "cpu": st.one_of(st.integers(0, CPUS + 1).map(str),
                     st.tuples(st.integers(0, CPUS), st.integers(0, CPUS))
                     .map(lambda t: f"{t[0]}-{t[1]}"),
                     st.lists(st.integers(0, CPUS), min_size=1, max_size=3)
                     .map(lambda xs: ",".join(map(str, xs)))),
    "allowance": st.one_of(st.integers(-1, 101).map(lambda n: f"{n}%"),
                           st.tuples(st.integers(0, 3000), st.integers(0, 1200))
                           .map(lambda t: f"{t[0]}ms/{t[1]}ms")),
    "modules": st.lists(st.sampled_from(["loop", "nf_tables", "a-b", "x y", ""]), min_size=1,
                        max_size=3).map(",".join),
    "idmap": st.lists(st.tuples(st.sampled_from(["uid", "gid", "both", "all"]),
                                st.integers(0, 2000), st.integers(0, 3))
                      .map(lambda t: f"{t[0]} {t[1]}-{t[1] + t[2]} {t[1]}-{t[1] + 3}"),
                      max_size=3).map("\n".join),
    "lxc": st.lists(st.sampled_from(["lxc.cgroup.pids.max = 10", "# c", "", "lxc.log.file = x",
                                     "foo = 1", "lxc.rootfs.path = dir:/"]), max_size=3)
    .map("\n".join),
    "seccomp": st.sampled_from(["2\nkexec_load errno 1", "1", "3\n", "", "2", "x\n2"]),
    "syscalls": st.lists(st.one_of(st.sampled_from([*KNOWN_SYSCALLS, *UNKNOWN_SYSCALLS, "a-b"]),
                                   st.tuples(st.sampled_from(KNOWN_SYSCALLS),
                                             st.integers(-1, 5000))
                                   .map(lambda t: f"{t[0]} errno {t[1]}")),
                         min_size=1, max_size=3).map("\n".join),
}


def kind_of(family: str) -> str:
    model = KEY_MODELS[family][0]
    for kind, test in (("bool", is_bool), ("memory", is_memory), ("cpu", is_cpu),
                       ("allowance", is_allowance), ("modules", is_modules),
                       ("idmap", is_raw_idmap), ("lxc", is_raw_lxc), ("seccomp", is_seccomp),
                       ("syscalls", is_syscalls)):
        if model is test:
            return kind
    return "int" if family.startswith(("boot.", "limits.", "security.idmap.size")) else "text"


RANGES = {"boot.autostart.delay": (0, MAX_SECONDS), "boot.autostart.priority": (0, MAX_INT),
          "boot.stop.priority": (0, MAX_INT), "boot.host_shutdown_timeout": (0, MAX_SECONDS),
          "limits.processes": (1, 4 * 1024 * 1024), "limits.disk.priority": (0, 10),
          "limits.network.priority": (0, 10), "security.idmap.size": (65536, 2**31)}


def value_strategy(family: str) -> st.SearchStrategy[str]:
    kind = kind_of(family)
    if kind == "int":
        lo, hi = RANGES[family]
        return mutated(ints(lo, hi))
    if kind == "text":
        return mutated(TEXT)
    return mutated(VALUES[kind])


def key_strategy(families: list[str]) -> st.SearchStrategy[tuple[str, str]]:
    """(family, key): a declared key, or a family's member with a generated suffix."""
    suffixes = st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,10}", fullmatch=True),
                         mutated(st.just("NAME")))
    return st.sampled_from(families).flatmap(
        lambda f: st.tuples(st.just(f), suffixes.map(lambda s: f[:-1] + s)) if f.endswith(".*")
        else st.just((f, f)))


def fs_name(text: str) -> bool:
    """What the kernel lets reach the daemon as one path component."""
    return bool(text) and "/" not in text and "\0" not in text and text not in (".", "..") \
        and len(text.encode()) <= 255


NAMES = st.one_of(st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_.:-]{0,70}", fullmatch=True),
                  mutated(st.sampled_from(["c1", "web", "a-b", "x.y", "snap0", "-x", "1a"])),
                  st.text(min_size=1, max_size=70)).filter(fs_name)


# --- the checks -----------------------------------------------------------------------------


class Mount:
    """The daemon under test and the checks every write goes through."""

    def __init__(self, daemon: Any) -> None:
        self.d = daemon
        self.pid = daemon.read("environment", "server_pid")

    def path(self, *parts: str) -> Path:
        return self.d.path(*parts)

    def alive(self) -> None:
        assert self.d.proc.poll() is None, "the daemon died"
        assert self.d.read("environment", "server_pid") == self.pid

    def read(self, path: Path) -> str | None:
        try:
            return path.read_bytes().decode()  # no newline translation (a "\r" stays)
        except FileNotFoundError:
            return None

    def write(self, path: Path, value: str) -> int:
        """One open(O_TRUNC), one write, close: 0 or the errno."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            return exc.errno or 0
        try:
            os.write(fd, value.encode())
        except OSError as exc:
            os.close(fd)
            return exc.errno or 0
        try:
            os.close(fd)
        except OSError as exc:
            return exc.errno or 0
        return 0

    def call(self, fn: Callable[[], object]) -> int:
        try:
            fn()
        except OSError as exc:
            return exc.errno or 0
        return 0

    def judge(self, kind: str, what: str, got: int, want: int, error_file: Path) -> None:
        """Count and check one write: ``want`` is the model's errno (0: accepted)."""
        TALLY["tried"] += 1
        TALLY[f"kind:{kind}"] += 1
        TALLY["accepted" if got == 0 else "refused"] += 1
        if got != want:
            label = ("wrongly_accepted" if got == 0 else "wrongly_refused" if want == 0
                     else "wrong_errno")
            TALLY[label] += 1
            WRONG.append(f"{kind}: {what}: got {errno.errorcode.get(got, got)}, "
                         f"want {errno.errorcode.get(want, want)}")
        self.alive()
        if COUNT_ONLY:
            return
        assert got == want, WRONG[-1]
        if got and not (got == errno.EEXIST and kind.startswith(("mkdir", "alias"))):
            # (an existing name is refused by the kernel: the daemon never hears of it)
            message = error_file.read_text()
            assert message.strip(), f"{kind}: {what}: no message in {error_file}"
            assert "\n" not in message.rstrip("\n"), f"{kind}: {what}: {message!r}"


def shown(value: str) -> str:
    """A value as the mount reads it back (a trailing newline is added)."""
    return value if value.endswith("\n") or value == "" else value + "\n"


def check_key_write(m: Mount, kind: str, directory: Path, key: str, value: str,
                    accepts: bool, error_file: Path,
                    empty_want: Callable[[str | None], int] = lambda old: 0) -> None:
    """Write ``config``-style ``directory/key``; check errno and what reads back. An empty
    value (after its trailing newline) unsets the key: ``empty_want(old)`` is the errno."""
    value = value or "\n"  # an empty write() sends nothing: write the newline
    old = m.read(directory / key)
    stored = value.removesuffix("\n")
    want = empty_want(old) if stored == "" else 0 if accepts else errno.EINVAL
    got = m.write(directory / key, value)
    m.judge(kind, f"{key}={value!r}", got, want, error_file)
    after = m.read(directory / key)
    if COUNT_ONLY:
        return
    if got == 0:
        assert after == (None if stored == "" else shown(stored)), (key, value, after)
    else:
        assert after == old, (key, value, old, after)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def m(daemon_with_busybox: Any) -> Mount:
    d = daemon_with_busybox
    d.cli("launch", "busybox", "cfg")  # running: live limits are applied as keys change
    d.cli("create", "busybox", "p1")
    os.mkdir(d.path("profiles", "pp"))
    os.mkdir(d.path("storage-pools", "pend"))
    return Mount(d)


FAMILIES = declared_keys()


def test_every_declared_key_has_a_model() -> None:
    assert sorted(FAMILIES) == sorted(KEY_MODELS)


# --- the properties -------------------------------------------------------------------------


@settings(PROFILE, max_examples=300)
@given(data=st.data())
def test_instance_and_profile_config(m: Mount, data: st.DataObject) -> None:
    family, key = data.draw(key_strategy(FAMILIES))
    if family == "raw.apparmor" and APPARMOR:
        return
    if not fs_name(key):
        return
    value = data.draw(value_strategy(family))
    accepts = key_accepts(family, key, value.removesuffix("\n"))
    check_key_write(m, "instance-config", m.path("instances", "cfg", "config"), key, value,
                    accepts and family != "volatile.*", m.path("instances", "cfg", "error"),
                    lambda old: errno.EINVAL if family == "volatile.*" else
                    0 if old is not None else errno.ENOENT)
    check_key_write(m, "profile-config", m.path("profiles", "pp", "config"), key, value,
                    accepts and family != "volatile.*", m.path("error"))


UNKNOWN_KEYS = st.one_of(st.sampled_from(["limits.memroy", "security.foo", "raw", "x"]),
                         st.text(min_size=1, max_size=20)).filter(fs_name)


@settings(PROFILE, max_examples=40)
@given(key=UNKNOWN_KEYS, value=TEXT)
def test_unknown_keys_are_refused(m: Mount, key: str, value: str) -> None:
    if any(key == f or (f.endswith(".*") and key.startswith(f[:-1]) and len(key) > len(f) - 1)
           for f in FAMILIES):
        return
    for directory, error_file in ((m.path("instances", "cfg", "config"),
                                   m.path("instances", "cfg", "error")),
                                  (m.path("profiles", "pp", "config"), m.path("error"))):
        got = m.write(directory / key, value)
        m.judge("unknown-key", key, got, errno.EINVAL, error_file)
        assert m.read(directory / key) is None


def _path_like(v: str) -> bool:
    """Paths: any one line (checked by the caller)."""
    return True


#: device keys per type and their models (from docs/filesystem.md, LXD's device options)

DEVICE_KEYS: dict[str, dict[str, tuple[Model, st.SearchStrategy[str]]]] = {
    "disk": {
        "path": (_path_like, st.from_regex(r"/[a-z]{1,8}(/[a-z]{1,8})?", fullmatch=True)),
        "source": (_path_like, st.from_regex(r"/[a-z]{1,8}", fullmatch=True)),
        "readonly": (is_bool, VALUES["bool"]), "shift": (is_bool, VALUES["bool"]),
        "required": (is_bool, VALUES["bool"]), "recursive": (is_bool, VALUES["bool"]),
        "propagation": (lambda v: v in ("private", "shared", "slave", "unbindable", "rprivate",
                                        "rshared", "rslave", "runbindable"),
                        st.sampled_from(["rslave", "shared", "sideways", "RSLAVE"])),
        "size": (lambda v: size_bytes(v.strip()) is not None, st.one_of(SIZES, HUGE_SIZES)),
        "limits.read": (lambda v: (bool(re.fullmatch(r"[0-9]+iops", v)) and
                                   integer(1)(v[:-4])) or
                        (not v.endswith("iops") and size_bytes(v) is not None),
                        st.one_of(SIZES, st.integers(-1, 2**64).map(lambda n: f"{n}iops"))),
    },
    "unix-char": {
        "path": (_path_like, st.from_regex(r"/dev/[a-z]{1,8}", fullmatch=True)),
        "major": (integer(0, 4095), ints(0, 4095)), "minor": (integer(0, 2**20 - 1),
                                                              ints(0, 2**20 - 1)),
        "uid": (integer(0, 2**32 - 2), ints(0, 2**32 - 2)),
        "mode": (lambda v: bool(re.fullmatch(r"[0-7]{1,4}", v)),
                 st.sampled_from(["0660", "666", "0999", "rw", "07777", "077777"])),
        "required": (is_bool, VALUES["bool"]),
    },
    "nic": {
        "name": (lambda v: bool(re.fullmatch(r"[a-zA-Z0-9_.-]{1,15}", v)) and
                 v not in (".", ".."),
                 st.sampled_from(["eth0", "eth1", "a" * 16, "e/0", "e 0", "."])),
        "hwaddr": (lambda v: bool(re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", v.lower()))
                   and not int(v[:2], 16) & 1,
                   st.sampled_from(["00:16:3e:00:00:01", "01:16:3e:00:00:01", "00:16:3e",
                                    "00:16:3E:AA:bb:01"])),
        "mtu": (integer(68, 65535), ints(68, 65535)),
        "ipv4.address": (lambda v: bool(re.fullmatch(r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|"
                                                     r"[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|"
                                                     r"1[0-9]{2}|[1-9]?[0-9])){3}", v)),
                         st.sampled_from(["10.0.0.2", "10.0.0.256", "10.0.0", "::1"])),
        "nictype": (lambda v: v in ("bridged", "macvlan", "p2p"),
                    st.sampled_from(["bridged", "macvlan", "p2p", "phys", "sriov"])),
    },
}


@settings(PROFILE, max_examples=250)
@given(data=st.data())
def test_device_keys(m: Mount, data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from(sorted(DEVICE_KEYS)))
    key = data.draw(st.sampled_from(sorted(DEVICE_KEYS[dtype])))
    model, values = DEVICE_KEYS[dtype][key]
    value = data.draw(mutated(values))
    owner, error_file = data.draw(st.sampled_from([
        (m.path("instances", "p1"), m.path("instances", "p1", "error")),
        (m.path("profiles", "pp"), m.path("error"))]))
    device = owner / "devices" / "dev"
    os.mkdir(device)
    try:
        assert m.write(device / "type", dtype) == 0
        stored = value.removesuffix("\n")
        accepts = stored == "" or ("\0" not in stored and one_line(stored) and model(stored))
        check_key_write(m, f"device-{dtype}", device, key, value, accepts, error_file)
    finally:
        os.rmdir(device)


#: server keys and their models
def is_listen_address(v: str) -> bool:
    import ipaddress

    m = re.fullmatch(r"\[([^\]]*)\](?::([0-9]+))?|([^:\[\]]*)(?::([0-9]+))?|([0-9a-fA-F:.]+)", v)
    if not m or not v:
        return False
    if m[5] is not None and v.count(":") > 1:
        try:
            ipaddress.IPv6Address(v)
            return True
        except ValueError:
            return False
    host, port = (m[1], m[2]) if m[1] is not None else (m[3], m[4])
    if port is not None and not 1 <= int(port) <= 65535:
        return False
    if m[1] is not None:
        try:
            ipaddress.IPv6Address(host)
            return True
        except ValueError:
            return False
    if not host:
        return port is not None
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        return len(host) <= 253 and all(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                                                     r"[A-Za-z0-9])?", p) for p in host.split("."))


SERVER_KEYS: dict[str, tuple[Model, st.SearchStrategy[str]]] = {
    "core.https_address": (is_listen_address, st.one_of(
        st.tuples(st.sampled_from(["", "0.0.0.0", "[::]", "::", "10.0.0.1", "host.example",
                                   "-x", "[::1", "a..b", "300.1.1.1", "[10.0.0.1]"]),
                  st.sampled_from(["", ":8443", ":0", ":65536", ":", ":x"]))
        .map("".join), TEXT)),
    "images.auto_update_interval": (integer(0), ints(0, MAX_INT)),
    "images.remote_cache_expiry": (integer(0), ints(0, MAX_INT)),
    "images.max_unpacked_size": (lambda v: (size_bytes(v) or 0) >= 2**20,
                                 st.one_of(SIZES, HUGE_SIZES)),
    "user.note": (lambda v: True, TEXT),
}
PROJECT_KEYS: dict[str, tuple[Model, st.SearchStrategy[str]]] = {
    "restricted.containers.nesting": (lambda v: v in ("block", "allow"),
                                      st.sampled_from(["block", "allow", "Allow", "x"])),
    "restricted.containers.privilege": (
        lambda v: v in ("unprivileged", "isolated", "allow"),
        st.sampled_from(["unprivileged", "isolated", "allow", "deny"])),
    "restricted.devices.disk": (lambda v: v in ("block", "managed", "allow"),
                                st.sampled_from(["block", "managed", "allow", ""])),
    "restricted.devices.disk.paths": (
        lambda v: all(not p.strip() or p.strip().startswith("/") for p in v.split(",")),
        st.lists(st.sampled_from(["/srv", "srv", " /a", ""]), max_size=3).map(",".join)),
    "restricted": (lambda v: v.lower() in ("false", "0", "no", "off"),  # true: see below
                   st.sampled_from(["false", "0", "off", "maybe", "2"])),
}
POOL_KEYS = ("source", "size", "zfs.pool_name")


@settings(PROFILE, max_examples=250)
@given(data=st.data())
def test_server_project_and_pool_config(m: Mount, data: st.DataObject) -> None:
    where = data.draw(st.sampled_from(["server", "project", "pending-pool", "pool"]))
    if where in ("server", "project"):
        table = SERVER_KEYS if where == "server" else PROJECT_KEYS
        key = data.draw(st.sampled_from(sorted(table)))
        model, values = table[key]
        value = data.draw(mutated(values))
        stored = value.removesuffix("\n")
        multiline = key.startswith("user.")  # user.* keys may span lines, as instances'
        accepts = "\0" not in stored and (multiline or one_line(stored)) and model(stored)
        directory = m.path("config") if where == "server" else \
            m.path("projects", "default", "config")
        check_key_write(m, f"{where}-config", directory, key, value, accepts or stored == "",
                        m.path("error"))
        if key == "images.max_unpacked_size":
            m.call(lambda: os.unlink(directory / key))
        return
    key = data.draw(st.sampled_from(POOL_KEYS))
    value = data.draw(mutated(TEXT))
    stored = value.removesuffix("\n")
    if where == "pending-pool":  # any single-line value: the driver checks it at creation
        accepts = "\0" not in stored and one_line(stored)
        check_key_write(m, "pending-pool-config", m.path("storage-pools", "pend", "config"),
                        key, value, accepts or stored == "", m.path("error"))
    else:  # a created dir pool: its keys are fixed
        directory = m.path("storage-pools", "default", "config")
        value = value or "\n"
        stored = value.removesuffix("\n")
        old = m.read(directory / key)
        same = shown(stored) == old if old is not None else stored == ""
        got = m.write(directory / key, value)
        want = 0 if same else errno.EINVAL
        m.judge("pool-config", f"{key}={value!r}", got, want, m.path("error"))
        assert m.read(directory / key) == old


MKDIR_KINDS = {
    "instance": (("instances",), "instance", "error"),
    "profile": (("profiles",), "profile", "error"),
    "pool": (("storage-pools",), "pool", "error"),
    "volume": (("storage-pools", "default", "volumes", "custom"), "volume", "error"),
    "snapshot": (("instances", "p1", "snapshots"), "snapshot", "instances/p1/error"),
    "device": (("instances", "p1", "devices"), "device", "instances/p1/error"),
}


@settings(PROFILE, max_examples=300)
@given(kind=st.sampled_from(sorted(MKDIR_KINDS)), name=NAMES)
def test_mkdir_names(m: Mount, kind: str, name: str) -> None:
    parent_parts, name_kind, error = MKDIR_KINDS[kind]
    parent = m.path(*parent_parts)
    existing = set(os.listdir(parent))
    try:
        check_name(name_kind, name)
        valid = True
    except Exception:  # noqa: BLE001 - the model says no
        valid = False
    want = errno.EEXIST if name in existing else 0 if valid else errno.EINVAL
    if kind == "instance" and name == ".list":
        want = errno.EEXIST
    got = m.call(lambda: os.mkdir(parent / name))
    m.judge(f"mkdir-{kind}", repr(name), got, want, m.path(*error.split("/")))
    if got == 0:
        assert name in os.listdir(parent)
        assert m.call(lambda: os.rmdir(parent / name)) == 0
    assert set(os.listdir(parent)) == existing


@settings(PROFILE, max_examples=120)
@given(alias=NAMES, target=st.one_of(st.just("FP"), st.just("PREFIX"), TEXT.filter(fs_name)))
def test_alias_symlinks(m: Mount, alias: str, target: str) -> None:
    aliases = m.path("images", "aliases")
    fp = os.path.basename(os.readlink(aliases / "busybox"))
    link = {"FP": fp, "PREFIX": fp[:8]}.get(target, target)
    existing = set(os.listdir(aliases))
    try:
        check_name("alias", alias)
        valid = alias != "aliases"
    except Exception:  # noqa: BLE001 - the model says no
        valid = False
    stripped = link.strip().rstrip("/").rsplit("/", 1)[-1].strip().removeprefix("local:")
    resolves = stripped in ("busybox", fp) or (bool(re.fullmatch(r"[0-9a-f]{1,63}", stripped))
                                              and fp.startswith(stripped))
    want = (errno.EEXIST if alias in existing else errno.EINVAL if not valid
            else 0 if resolves else errno.ENOENT)
    got = m.call(lambda: os.symlink(link, aliases / alias))
    m.judge("alias", f"{alias!r} -> {link!r}", got, want, m.path("error"))
    if got == 0:
        assert os.readlink(aliases / alias) == f"../{fp}"
        os.unlink(aliases / alias)
    assert set(os.listdir(aliases)) == existing


ACTIONS = st.one_of(
    st.sampled_from(["start", "stop", "kill", "restart", "freeze", "unfreeze", "stop 0",
                     "stop 1", "stop --force", "force-stop", "START", " stop\n", "jump",
                     "stop 99999999999999999999", "stop -1", "stop ٣", "start\nstop",
                     "stop 2147483648"]),
    mutated(st.sampled_from(["start", "kill", "freeze", "unfreeze"])))
NEXT = {"start": "RUNNING", "stop": "STOPPED", "kill": "STOPPED", "restart": "RUNNING",
        "freeze": "FROZEN", "unfreeze": "RUNNING"}


def action_model(text: str, state: str) -> tuple[int, str]:
    """(errno, state after) of a state action (docs/filesystem.md: state)."""
    words = text.lower().split()
    if words in (["stop", "--force"], ["stop", "-f"], ["force-stop"]):
        words = ["kill"]
    if len(words) == 2 and words[0] == "stop" and re.fullmatch(r"[0-9]+", words[1]) and \
            int(words[1]) <= MAX_SECONDS:
        words = ["stop"]
    if len(words) != 1 or words[0] not in NEXT:
        return errno.EINVAL, state
    action = words[0]
    allowed = {"start": state == "STOPPED", "stop": state != "STOPPED",
               "kill": state != "STOPPED", "restart": state != "STOPPED",
               "freeze": state == "RUNNING", "unfreeze": state == "FROZEN"}[action]
    return (0, NEXT[action]) if allowed else (errno.EBUSY, state)


@settings(PROFILE, max_examples=60)
@given(action=ACTIONS)
def test_state_actions(m: Mount, action: str) -> None:
    assert m.write(m.path("instances", "cfg", "config", "boot.host_shutdown_timeout"), "2") == 0
    state_file = m.path("instances", "cfg", "state")
    before = m.read(state_file).strip()
    want, after = action_model(action, before)
    got = m.write(state_file, action)
    m.judge("state", repr(action), got, want, m.path("instances", "cfg", "error"))
    assert m.read(state_file).strip() == after


@settings(PROFILE, max_examples=30)
@given(name=st.one_of(st.sampled_from(["s0", " s0\n", "s1", "", "s0/x", "../s0"]),
                      mutated(st.just("s0"))))
def test_restore(m: Mount, name: str) -> None:
    snapshots = m.path("instances", "p1", "snapshots")
    if "s0" not in os.listdir(snapshots):
        os.mkdir(snapshots / "s0")
    name = name or "\n"
    want = 0 if name.strip() == "s0" else errno.ENOENT
    got = m.write(m.path("instances", "p1", "restore"), name)
    m.judge("restore", repr(name), got, want, m.path("instances", "p1", "error"))
    assert os.listdir(snapshots) == ["s0"]


@settings(PROFILE, max_examples=40)
@given(ref=st.one_of(st.sampled_from(["busybox", " busybox\n", "local:busybox", "FP", "PREFIX",
                                      "nosuch", "remote:busybox", "", "0" * 64]),
                     TEXT.filter(lambda t: not t.strip().startswith("instances/"))),
       created=st.booleans())
def test_source(m: Mount, ref: str, created: bool) -> None:
    fp = os.path.basename(os.readlink(m.path("images", "aliases", "busybox")))
    ref = {"FP": fp, "PREFIX": fp[:6], "": "\n"}.get(ref, ref)
    name = "p1" if created else "fresh"
    if not created and "fresh" not in os.listdir(m.path("instances")):
        os.mkdir(m.path("instances", "fresh"))
    stripped = ref.strip().removeprefix("local:")
    resolves = stripped in ("busybox", fp) or (bool(re.fullmatch(r"[0-9a-f]{1,63}", stripped))
                                              and fp.startswith(stripped))
    want = errno.EEXIST if created else 0 if resolves else errno.ENOENT
    got = m.write(m.path("instances", name, "source"), ref)
    m.judge("source", f"{name} <- {ref!r}", got, want, m.path("instances", name, "error"))
    if got == 0:
        assert m.read(m.path("instances", name, "source")) == f"{fp}\n"
        os.rmdir(m.path("instances", name))
    elif not created:
        assert m.read(m.path("instances", name, "source")) == "\n" or \
            m.read(m.path("instances", name, "source")) == ""
