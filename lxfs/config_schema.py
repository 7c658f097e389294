"""The single declaration of configuration keys: type, default, validation, when it applies.

The mount, the CLI and the REST bridge all validate through ``validate_instance_key`` /
``validate_server_key``; plugins add keys with the ``lxfs_config_keys`` hook.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lxfs.errors import InvalidArgument
from lxfs.names import check_line, forbidden_character

Validator = Callable[[str], None]

#: the largest integer a value may hold: what the kernel's and LXC's 64-bit signed fields take
MAX_INT = 2**63 - 1
#: the longest timeout in seconds (a graceful stop's, an autostart delay: 68 years)
MAX_SECONDS = 2**31 - 1


@dataclass(frozen=True)
class KeySpec:
    """One configuration key (or a family: ``name`` ending with ``.*``)."""

    name: str
    validate: Validator = field(default=lambda v: None, compare=False)
    default: str = ""
    #: ``live``: applied to a running instance at once; ``start``: at the next start.
    applies: str = "start"
    #: Users may not set it (``volatile.*``).
    readonly: bool = False
    description: str = ""
    #: Low-level (as LXD's ``raw.*``): refused by a project's
    #: ``restricted.containers.lowlevel`` unless it is ``allow``.
    lowlevel: bool = False
    #: A secret (``core.trust_password``): stored hashed (``hash_secret``), never shown; its
    #: file on the mount is write-only.
    secret: bool = False
    #: Values may span lines (``raw.lxc``, ``user.*``). Every other value reaches a config
    #: file as one line: a newline or another control character in it is refused.
    multiline: bool = False

    def matches(self, key: str) -> bool:
        if self.name.endswith(".*"):
            prefix = self.name[:-1]
            return key.startswith(prefix) and len(key) > len(prefix)
        return key == self.name


# --- value parsers --------------------------------------------------------------------------

_UNITS = {
    "": 1, "B": 1,
    "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15, "EB": 10**18,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50, "EiB": 2**60,
    # LXD also accepts these short forms
    "KB": 10**3, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40,
}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?) ?([A-Za-z]*)")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_size(value: str) -> int:
    """Parse ``512MiB``, ``1GB``, ``1048576`` into bytes (LXD's units: kB=1000, KiB=1024),
    at most ``MAX_INT``: the kernel would wrap a larger number around."""
    from fractions import Fraction

    m = _SIZE.fullmatch(value.strip())
    if not m or m.group(2) not in _UNITS:
        raise InvalidArgument(f"invalid size {value!r} (examples: 512MiB, 1GiB, 500MB)")
    size = int(Fraction(m.group(1)) * _UNITS[m.group(2)])
    if size > MAX_INT:
        raise InvalidArgument(f"size {value!r} is too large (at most 8EiB)")
    return size


def check_bool(value: str) -> None:
    if value.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise InvalidArgument(f"invalid boolean {value!r} (use true or false)")


def is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes", "on")


_INT = re.compile(r"-?[0-9]+")


def check_int(minimum: int = 0, maximum: int = MAX_INT) -> Validator:
    """An integer in decimal ASCII digits (no sign but ``-``, no ``_``, no white space)
    between ``minimum`` and ``maximum``."""

    def check(value: str) -> None:
        if not _INT.fullmatch(value):
            raise InvalidArgument(f"invalid integer {value!r}")
        if int(value) < minimum:
            raise InvalidArgument(f"{value} is below the minimum {minimum}")
        if int(value) > maximum:
            raise InvalidArgument(f"{value} is above the maximum {maximum}")

    return check


def check_memory(value: str) -> None:
    if value.endswith("%"):
        if not _DECIMAL.fullmatch(value[:-1]):
            raise InvalidArgument(f"invalid percentage {value!r}")
        pct = float(value[:-1])
        if not 0 < pct <= 100:
            raise InvalidArgument(f"percentage {value!r} must be in (0, 100]")
        return
    if parse_size(value) < 4 * 2**20:
        raise InvalidArgument(f"memory limit {value!r} is too small (minimum 4MiB)")


def memory_bytes(value: str, host_total: int | None = None) -> int:
    """Bytes for a validated ``limits.memory`` value (percentages of the host's memory)."""
    if value.endswith("%"):
        if host_total is None:
            host_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return int(host_total * float(value[:-1]) / 100)
    return parse_size(value)


_CPU_SET = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*")


def parse_cpu_set(value: str) -> list[int]:
    """``0-2,5`` → [0, 1, 2, 5]."""
    cpus: list[int] = []
    for part in value.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return sorted(set(cpus))


def check_cpu(value: str) -> None:
    """``limits.cpu``: a count (``2``) or a set (``0-1``, ``0,2``, ``1-1``; a range goes
    upwards)."""
    if value.isascii() and value.isdigit():
        if int(value) < 1:
            raise InvalidArgument("limits.cpu must be at least 1")
        if int(value) > (os.cpu_count() or 1):
            raise InvalidArgument(
                f"limits.cpu {value} is more than the host's {os.cpu_count()} CPUs")
        return
    if not _CPU_SET.fullmatch(value):
        raise InvalidArgument(f"invalid CPU set {value!r} (examples: 2, 0-1, 0,2)")
    for part in value.split(","):
        lo, _, hi = part.partition("-")
        if hi and int(hi) < int(lo):
            raise InvalidArgument(f"invalid CPU range {part!r} in {value!r} (low-high)")
    host = os.cpu_count() or 1
    bad = [c for c in parse_cpu_set(value) if c >= host]
    if bad:
        raise InvalidArgument(f"CPU {bad[0]} does not exist (the host has CPUs 0-{host - 1})")


def cpu_set(value: str) -> str:
    """The cpuset string for a validated ``limits.cpu`` value."""
    if value.isascii() and value.isdigit():
        n = int(value)
        return "0" if n == 1 else f"0-{n - 1}"
    return value


def check_seconds(value: str) -> None:
    check_int(0, MAX_SECONDS)(value)


def check_range(lo: int, hi: int) -> Validator:
    return check_int(lo, hi)


_ALLOWANCE = re.compile(r"([0-9]+)%|([0-9]+)ms/([0-9]+)ms")
#: the kernel's bounds of a CFS period and quota (cpu.cfs_period_us, cpu.cfs_quota_us), in ms
_CFS_PERIOD_MAX_MS = 1000
_CFS_QUOTA_MAX_MS = ((1 << 44) - 1) // 1000


def check_allowance(value: str) -> None:
    """``limits.cpu.allowance``: ``50%`` (a share under contention) or ``25ms/100ms``
    (a hard quota per period)."""
    m = _ALLOWANCE.fullmatch(value)
    if not m:
        raise InvalidArgument(f"invalid CPU allowance {value!r} (examples: 50%, 25ms/100ms)")
    if m.group(1) is not None and not 0 < int(m.group(1)) <= 100:
        raise InvalidArgument(f"CPU allowance {value!r} must be in (0%, 100%]")
    if m.group(2) is not None and (int(m.group(2)) < 1 or int(m.group(3)) < 1):
        raise InvalidArgument(f"CPU allowance {value!r}: both times must be at least 1ms")
    if m.group(2) is not None and (int(m.group(3)) > _CFS_PERIOD_MAX_MS or
                                   int(m.group(2)) > _CFS_QUOTA_MAX_MS):
        raise InvalidArgument(f"CPU allowance {value!r}: the period is at most "
                              f"{_CFS_PERIOD_MAX_MS}ms, the quota at most "
                              f"{_CFS_QUOTA_MAX_MS}ms")


_IDMAP_LINE = re.compile(r"^(uid|gid|both)\s+([0-9]+)(?:-([0-9]+))?\s+([0-9]+)(?:-([0-9]+))?$")


def parse_raw_idmap(value: str) -> list[tuple[str, int, int, int]]:
    """``raw.idmap`` lines (``both 1000 1000``, ``uid 50-60 500-510``) → (kind, host, inside,
    count) entries with kind ``u`` or ``g``."""
    entries: list[tuple[str, int, int, int]] = []
    for number, line in enumerate(value.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        m = _IDMAP_LINE.match(line)
        if not m:
            raise InvalidArgument(f"raw.idmap line {number}: expected 'uid|gid|both HOST "
                                  f"CONTAINER' (ranges as A-B), got {line!r}")
        kind, h1, h2, c1, c2 = m.groups()
        count = int(h2 or h1) - int(h1) + 1
        if count != int(c2 or c1) - int(c1) + 1 or count < 1:
            raise InvalidArgument(f"raw.idmap line {number}: ranges of different sizes")
        for k in ("u", "g") if kind == "both" else (kind[0],):
            entries.append((k, int(h1), int(c1), count))
    return entries


def check_raw_idmap(value: str) -> None:
    parse_raw_idmap(value)


def check_modules(value: str) -> None:
    for name in value.split(","):
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name.strip()):
            raise InvalidArgument(f"invalid kernel module name {name.strip()!r}")


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_listen_address(value: str) -> None:
    """``core.https_address``: an IP address or host name with an optional port (``[::]:8443``,
    ``0.0.0.0:8443``, ``:8443``, ``10.0.0.1``, ``::``, ``lxfs.example:8443``), as LXD takes."""
    import ipaddress

    bad = InvalidArgument(f"invalid listen address {value!r} (examples: [::]:8443, "
                          "0.0.0.0:8443, :8443, 10.0.0.1)")
    host, port = value, ""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise bad
        port = rest[1:] if rest else ""
        if rest and not port:
            raise bad
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
    elif value.count(":") > 1:  # a bare IPv6 address
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise bad from None
        return
    else:
        host, sep, port = value.partition(":")
        if sep and not port:
            raise bad
        if host:
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label)
                                              for label in host.split(".")):
                    raise bad from None
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise InvalidArgument(f"invalid port in {value!r} (1-65535)")
    if not host and not port:
        raise bad


#: ``images.max_unpacked_size`` by default: five times the largest common container image
DEFAULT_MAX_UNPACKED = "2GiB"


def check_unpacked_size(value: str) -> None:
    if parse_size(value) < 2**20:
        raise InvalidArgument(f"{value!r} is too small (at least 1MiB)")


def check_key_name(key: str) -> None:
    """Key names are printable, without white space or ``=`` (``environment.NAME`` becomes
    ``NAME=VALUE`` in LXC's config)."""
    bad = forbidden_character(key)
    if bad is not None:
        raise InvalidArgument(f"invalid key name {key!r}: it holds the control or format "
                              f"character U+{ord(bad):04X}")
    if "=" in key or any(c.isspace() for c in key):
        raise InvalidArgument(f"invalid key name {key!r}: no '=' and no white space")


def check_value(spec: KeySpec, key: str, value: str) -> None:
    """The rules every value follows, whatever its key: no NUL byte, and one line unless
    the key is ``multiline``."""
    if "\0" in value:
        raise InvalidArgument(f"{key}: value contains a NUL byte")
    if not spec.multiline:
        check_line(key, value)


# --- the keys -------------------------------------------------------------------------------

#: the core's own keys (every other key is declared by the plugin that owns it)
INSTANCE_KEYS: list[KeySpec] = [
    KeySpec("boot.autostart.delay", check_seconds, "0", "live",
            description="seconds to wait after starting this instance at daemon start"),
    KeySpec("boot.autostart.priority", check_int(0), "0", "live",
            description="higher starts first at daemon start"),
    KeySpec("boot.stop.priority", check_int(0), "0", "live",
            description="order of `lxfs stop --all`: higher stops first, equal priorities "
                        "together (the daemon itself never stops instances)"),
    KeySpec("environment.*", description="environment variables for exec and init (one "
                                          "line each)"),
    KeySpec("user.*", description="free-form user data", multiline=True),
    KeySpec("boot.autostart", check_bool, "false", "live",
            description="start the instance when the daemon starts"),
    KeySpec("boot.host_shutdown_timeout", check_seconds, "30", "live",
            description="seconds a graceful stop waits before killing", lowlevel=True),
    KeySpec("image.*", description="properties copied from the image at creation"),
    KeySpec("volatile.*", readonly=True, description="managed by lxfs"),
]

SERVER_KEYS: list[KeySpec] = [
    KeySpec("core.https_address", check_listen_address,
            description="address:port the REST API listens on ([::]:8443, 10.0.0.1, :8443)"),
    KeySpec("core.trust_password", description="password a new client gives to be trusted",
            secret=True),
    KeySpec("images.auto_update_interval", check_int(0), "6",
            description="hours between refreshes of auto_update images (0: never)"),
    KeySpec("images.auto_update_cached", check_bool, "true",
            description="images pulled for an instance get auto_update"),
    KeySpec("images.remote_cache_expiry", check_int(0), "10",
            description="days after which a cached image unused is deleted"),
    KeySpec("images.max_unpacked_size", check_unpacked_size, DEFAULT_MAX_UNPACKED,
            description="the largest root filesystem an image may unpack to (the sum of "
                        "its files' sizes); larger images are refused at unpack"),
    KeySpec("user.*", multiline=True),
]


class Schema:
    """The keys in force: the core's plus those plugins declared."""

    def __init__(self, extra_instance_keys: Iterable[KeySpec] = ()) -> None:
        self.instance_keys = list(INSTANCE_KEYS)
        names = {spec.name for spec in self.instance_keys}
        for spec in extra_instance_keys:
            if spec.name in names:
                raise ValueError(f"configuration key {spec.name!r} is declared twice")
            names.add(spec.name)
            self.instance_keys.append(spec)
        self.server_keys = list(SERVER_KEYS)

    def instance_spec(self, key: str) -> KeySpec | None:
        return next((s for s in self.instance_keys if s.matches(key)), None)

    def validate_instance_key(self, key: str, value: str, *, internal: bool = False) -> None:
        """Raise ``InvalidArgument`` naming the key if it is unknown or the value is bad."""
        spec = self.instance_spec(key)
        if spec is None:
            raise InvalidArgument(f"unknown configuration key {key!r}")
        if spec.readonly and not internal:
            raise InvalidArgument(f"{key} is managed by lxfs and cannot be set")
        check_key_name(key)
        check_value(spec, key, value)
        try:
            spec.validate(value)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{key}: {exc.message}") from None

    def server_spec(self, key: str) -> KeySpec | None:
        return next((s for s in self.server_keys if s.matches(key)), None)

    def validate_server_key(self, key: str, value: str) -> None:
        validate_among(self.server_keys, key, value, "server configuration key")


def validate_among(specs: Iterable[KeySpec], key: str, value: str, what: str) -> None:
    """Validate ``key=value`` against the first spec matching ``key``; the error names the
    key (``unknown WHAT 'KEY'`` when none matches)."""
    spec = next((s for s in specs if s.matches(key)), None)
    if spec is None:
        raise InvalidArgument(f"unknown {what} {key!r}")
    check_key_name(key)
    check_value(spec, key, value)
    try:
        spec.validate(value)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{key}: {exc.message}") from None


# --- secrets --------------------------------------------------------------------------------

_SCRYPT = {"n": 1 << 14, "r": 8, "p": 1, "dklen": 64}


def hash_secret(value: str) -> str:
    """A secret as it is stored: hex of a random 32-byte salt and scrypt's 64-byte key (LXD
    stores ``core.trust_password`` the same way)."""
    import hashlib

    salt = os.urandom(32)
    return (salt + hashlib.scrypt(value.encode(), salt=salt, **_SCRYPT)).hex()


def verify_secret(stored: str, candidate: str) -> bool:
    """Whether ``candidate`` is the secret ``stored`` was made from (constant time)."""
    import hashlib
    import hmac

    try:
        raw = bytes.fromhex(stored)
    except ValueError:
        return False
    salt, key = raw[:32], raw[32:]
    if len(salt) != 32 or len(key) != _SCRYPT["dklen"]:
        return False
    return hmac.compare_digest(key, hashlib.scrypt(candidate.encode(), salt=salt, **_SCRYPT))
