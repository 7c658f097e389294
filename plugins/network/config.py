"""Pure logic of managed networks: key validation, defaults, subnet choice, dnsmasq arguments,
the nftables ruleset. Nothing here touches the kernel, so all of it is unit-tested."""

from __future__ import annotations

import ipaddress
import os
import random
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from lxfs.config_schema import check_bool, check_int, is_true
from lxfs.devices import DeviceType
from lxfs.errors import InvalidArgument

IPv4Net = ipaddress.IPv4Network
IPv6Net = ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

#: interface names: what the kernel accepts (1-15 characters, no '/', ':' or white space),
#: restricted to what an nft table name can carry after '-' became '_'
_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]{0,14}$")
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
#: environment of lxfsd: where ``auto`` looks for a free /24 (tests: 10.251.0.0/16)
AUTO_SUBNETS_ENV = "LXFS_NETWORK_AUTO_SUBNETS"
#: environment of lxfsd: the default of ipv4.nat/ipv6.nat for new networks (LXD: true)
NAT_DEFAULT_ENV = "LXFS_NETWORK_NAT_DEFAULT"


def validate_name(name: str) -> None:
    """A network name is its bridge's interface name."""
    if not _NAME.fullmatch(name) or name in ("lo", "all", "default"):
        raise InvalidArgument(
            f"invalid network name {name!r}: 1-15 letters, digits, '_', '.' or '-', starting "
            "with a letter")


def _cidr_or(keywords: tuple[str, ...], version: int) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value in keywords:
            return
        try:
            iface = ipaddress.ip_interface(value)
        except ValueError:
            example = "10.0.3.1/24" if version == 4 else "fd42::1/64"
            raise InvalidArgument(f"invalid address {value!r} (CIDR like {example}, or "
                                  f"{', '.join(keywords)})") from None
        if iface.version != version or "/" not in value:
            raise InvalidArgument(f"{value!r} is not an IPv{version} address in CIDR notation")
        if iface.ip == iface.network.network_address and iface.network.prefixlen < (
                31 if version == 4 else 127):
            raise InvalidArgument(f"{value}: the bridge needs a host address, not the network's")

    return check


def _check_ranges(value: str) -> None:
    for part in value.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a, b = ipaddress.IPv4Address(lo.strip()), ipaddress.IPv4Address(hi.strip())
        except ValueError:
            raise InvalidArgument(f"invalid DHCP range {part!r} (FIRST-LAST,...)") from None
        if not sep or a > b:
            raise InvalidArgument(f"invalid DHCP range {part!r} (FIRST-LAST,...)")


def _check_mac(value: str) -> None:
    if not _MAC.fullmatch(value.lower()) or int(value[:2], 16) & 1:
        raise InvalidArgument(f"invalid unicast MAC address {value!r}")


def _check_domain(value: str) -> None:
    if not re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9.-]{0,61}[a-zA-Z0-9])?", value):
        raise InvalidArgument(f"invalid DNS domain {value!r}")


def _check_mtu(value: str) -> None:
    check_int(68)(value)
    if int(value) > 65535:
        raise InvalidArgument("bridge.mtu must be at most 65535")


def _check_raw(value: str) -> None:
    for line in value.splitlines():
        opt = line.strip().split("=", 1)[0].strip()
        if opt in ("interface", "except-interface", "listen-address", "bind-dynamic",
                   "conf-file", "conf-dir", "pid-file", "user", "group", "dhcp-leasefile"):
            raise InvalidArgument(f"raw.dnsmasq: {opt} is managed by lxfs")


KEYS: dict[str, Callable[[str], None]] = {
    "ipv4.address": _cidr_or(("auto", "none"), 4),
    "ipv4.nat": check_bool,
    "ipv4.routing": check_bool,
    "ipv4.dhcp": check_bool,
    "ipv4.dhcp.ranges": _check_ranges,
    "ipv6.address": _cidr_or(("auto", "none"), 6),
    "ipv6.nat": check_bool,
    "ipv6.routing": check_bool,
    "ipv6.dhcp": check_bool,
    "dns.domain": _check_domain,
    "bridge.mtu": _check_mtu,
    "bridge.hwaddr": _check_mac,
    "raw.dnsmasq": _check_raw,
}


def validate_key(key: str, value: str) -> None:
    """Raise ``InvalidArgument`` naming the key for an unknown key or a bad value."""
    check = KEYS.get(key)
    if check is None and not key.startswith("user."):
        raise InvalidArgument(f"unknown network configuration key {key!r} "
                              f"(one of {', '.join(KEYS)}, user.*)")
    if "\n" in value and key != "raw.dnsmasq":
        raise InvalidArgument(f"{key}: one line only")
    if check:
        try:
            check(value)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{key}: {exc.message}") from None


def validate_config(config: dict[str, str]) -> None:
    for key, value in config.items():
        validate_key(key, value)
    v4 = ipv4_interface(config)
    ranges = config.get("ipv4.dhcp.ranges")
    if ranges and v4:
        for lo, hi in parse_ranges(ranges):
            if lo not in v4.network or hi not in v4.network:
                raise InvalidArgument(f"ipv4.dhcp.ranges: {lo}-{hi} is outside {v4.network}")


def defaults(env: dict[str, str] | None = None) -> dict[str, str]:
    """The config of ``mkdir networks/NAME`` (LXD's: auto addresses, NAT on; the daemon's
    environment can turn NAT off by default, as tests do)."""
    env = os.environ if env is None else env
    nat = "false" if env.get(NAT_DEFAULT_ENV, "true").lower() in ("false", "0", "no") else "true"
    return {"ipv4.address": "auto", "ipv4.nat": nat, "ipv6.address": "auto", "ipv6.nat": nat}


def ipv4_interface(config: dict[str, str]) -> ipaddress.IPv4Interface | None:
    value = config.get("ipv4.address", "none")
    return None if value in ("none", "auto", "") else ipaddress.IPv4Interface(value)


def ipv6_interface(config: dict[str, str]) -> ipaddress.IPv6Interface | None:
    value = config.get("ipv6.address", "none")
    return None if value in ("none", "auto", "") else ipaddress.IPv6Interface(value)


def parse_ranges(value: str) -> list[tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]]:
    out = []
    for part in value.split(","):
        lo, _, hi = part.strip().partition("-")
        out.append((ipaddress.IPv4Address(lo.strip()), ipaddress.IPv4Address(hi.strip())))
    return out


# --- auto addresses ---------------------------------------------------------------------------


def used_networks(routes: Iterable[tuple[str, int]],
                  addresses: Iterable[tuple[str, int]]) -> list[ipaddress.IPv4Network]:
    """The IPv4 networks the host already reaches: its routes (but the default route) and the
    networks of its addresses."""
    used = []
    for dst, plen in list(routes) + list(addresses):
        if not dst or plen == 0:
            continue
        try:
            used.append(ipaddress.IPv4Network(f"{dst}/{plen}", strict=False))
        except ValueError:
            continue
    return used


def pick_ipv4_subnet(used: Iterable[ipaddress.IPv4Network], pool: str | None = None,
                     rng: random.Random | None = None) -> ipaddress.IPv4Interface:
    """An unused /24 inside ``pool`` (default: LXD's choice among 10.0.0.0/8), as the bridge's
    address ``.1/24``. Raises ``InvalidArgument`` when every /24 is taken."""
    rng = rng or random.Random()
    used = [n for n in used if n.version == 4]
    space = ipaddress.IPv4Network(pool or os.environ.get(AUTO_SUBNETS_ENV) or "10.0.0.0/8")
    if space.prefixlen > 24:
        raise InvalidArgument(f"{space} is too small for a /24")
    count = 1 << (24 - space.prefixlen)
    base = int(space.network_address)
    candidates = rng.sample(range(count), min(count, 4096))
    for i in candidates:
        net = ipaddress.IPv4Network((base + (i << 8), 24))
        if not any(net.overlaps(u) for u in used):
            return ipaddress.IPv4Interface(f"{net.network_address + 1}/24")
    raise InvalidArgument(f"no unused /24 left in {space} (check the host's routes)")


def pick_ipv6_subnet(rng: random.Random | None = None) -> ipaddress.IPv6Interface:
    """A random ULA /64 (fd42:xxxx:xxxx:xxxx::1/64), as LXD does."""
    rng = rng or random.Random()
    words = [rng.randrange(1 << 16) for _ in range(3)]
    return ipaddress.IPv6Interface("fd42:{:x}:{:x}:{:x}::1/64".format(*words))


def resolve_auto(config: dict[str, str], used: Iterable[ipaddress.IPv4Network]
                 ) -> dict[str, str]:
    """The config with ``auto`` addresses replaced by chosen ones (stored so, like LXD)."""
    out = dict(config)
    if out.get("ipv4.address") == "auto":
        out["ipv4.address"] = str(pick_ipv4_subnet(used))
    if out.get("ipv6.address") == "auto":
        out["ipv6.address"] = str(pick_ipv6_subnet())
    return out


# --- dnsmasq ----------------------------------------------------------------------------------


def dhcp_ranges(config: dict[str, str]) -> list[str]:
    """``FIRST,LAST`` pairs for dnsmasq: the configured ranges, or the subnet from .2 to the
    last host address."""
    v4 = ipv4_interface(config)
    if v4 is None or not is_true(config.get("ipv4.dhcp", "true")):
        return []
    if config.get("ipv4.dhcp.ranges"):
        return [f"{lo},{hi}" for lo, hi in parse_ranges(config["ipv4.dhcp.ranges"])]
    net = v4.network
    first, last = net.network_address + 2, net.broadcast_address - 1
    if first > last:
        return []
    return [f"{first},{last}"]


def dnsmasq_args(name: str, config: dict[str, str], state_dir: Path) -> list[str]:
    """The dnsmasq command line for one network: bound to its bridge only, no upstream
    resolvers, no ping before offering, files under ``state_dir``."""
    args = [
        "dnsmasq", "--keep-in-foreground", "--strict-order", "--bind-interfaces",
        "--except-interface=lo", f"--interface={name}", "--no-ping", "--no-resolv",
        "--no-hosts", "--dhcp-no-override", "--dhcp-authoritative",
        f"--pid-file={state_dir / 'dnsmasq.pid'}",
        f"--dhcp-leasefile={state_dir / 'dnsmasq.leases'}",
        f"--dhcp-hostsfile={state_dir / 'dnsmasq.hosts'}",
        f"--conf-file={state_dir / 'dnsmasq.raw'}",
        "--user=nobody", "--group=nogroup", "--quiet-dhcp6", "--quiet-ra",
    ]
    v4, v6 = ipv4_interface(config), ipv6_interface(config)
    if v4:
        args.append(f"--listen-address={v4.ip}")
        for r in dhcp_ranges(config):
            args.append(f"--dhcp-range={r},1h")
    if v6:
        args.append(f"--listen-address={v6.ip}")
        args.append("--enable-ra")
        mode = "ra-stateless,ra-names" if is_true(config.get("ipv6.dhcp", "true")) else "ra-only"
        args.append(f"--dhcp-range=::,constructor:{name},{mode},64,1h")
    domain = config.get("dns.domain", "lxfs")
    args += [f"--domain={domain}", f"--local=/{domain}/"]
    if config.get("bridge.mtu"):
        args.append(f"--dhcp-option-force=26,{config['bridge.mtu']}")
    return args


def hosts_file(entries: Iterable[tuple[str, str, str]]) -> str:
    """``dhcp-hostsfile`` content from ``(mac, ipv4 or "", hostname)``: static leases."""
    out = []
    for mac, ip, host in sorted(entries):
        out.append(",".join(x for x in (mac, ip, host) if x))
    return "".join(f"{line}\n" for line in out)


def parse_leases(text: str) -> list[dict[str, str]]:
    """dnsmasq's lease file (``EXPIRY MAC IP HOSTNAME CLIENTID``) as dictionaries."""
    leases = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[0] == "duid":
            continue
        leases.append({"expiry": parts[0], "hwaddr": parts[1].lower(), "address": parts[2],
                       "hostname": "" if parts[3] == "*" else parts[3]})
    return leases


# --- nftables ---------------------------------------------------------------------------------


def table_name(name: str) -> str:
    """The nft table lxfs owns for one bridge (bridge names are unique on the host)."""
    return "lxfs_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)


def nft_ruleset(name: str, config: dict[str, str]) -> str:
    """An ``nft -f`` script that replaces the network's table atomically (create if missing,
    delete, recreate: one transaction). Forwarding to and from the bridge is dropped unless
    ``ipvN.nat`` or ``ipvN.routing`` is true; NAT masquerades the subnet's outgoing traffic."""
    table = table_name(name)
    br = f'"{name}"'
    fwd: list[str] = []
    nat: list[str] = []
    v4, v6 = ipv4_interface(config), ipv6_interface(config)
    for proto, iface, key in (("ipv4", v4, "ipv4"), ("ipv6", v6, "ipv6")):
        family = "ip" if proto == "ipv4" else "ip6"
        allowed = is_true(config.get(f"{key}.nat")) or is_true(config.get(f"{key}.routing"))
        if iface is not None and allowed:
            fwd.append(f"iifname {br} meta nfproto {proto} accept")
            fwd.append(f"oifname {br} meta nfproto {proto} accept")
        else:
            # bridged traffic between the bridge's own ports goes through this hook too
            # when br_netfilter is on: only traffic leaving or entering the bridge is dropped
            fwd.append(f"iifname {br} oifname != {br} meta nfproto {proto} drop")
            fwd.append(f"oifname {br} iifname != {br} meta nfproto {proto} drop")
        if iface is not None and is_true(config.get(f"{key}.nat")):
            net = iface.network
            nat.append(f"{family} saddr {net} {family} daddr != {net} masquerade")
    lines = [
        f"table inet {table}", f"delete table inet {table}", f"table inet {table} {{",
        "  chain input {", "    type filter hook input priority filter; policy accept;",
        f"    iifname {br} udp dport {{ 53, 67, 547 }} accept",
        f"    iifname {br} tcp dport 53 accept", "  }",
        "  chain forward {", "    type filter hook forward priority filter; policy accept;",
        *(f"    {r}" for r in fwd), "  }",
    ]
    if nat:
        lines += ["  chain postrouting {",
                  "    type nat hook postrouting priority srcnat; policy accept;",
                  *(f"    {r}" for r in nat), "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def nft_delete(name: str) -> str:
    """An ``nft -f`` script that removes the table if it exists."""
    table = table_name(name)
    return f"table inet {table}\ndelete table inet {table}\n"


# --- nic devices ------------------------------------------------------------------------------


_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*(bit|kbit|Mbit|Gbit|Tbit)$", re.IGNORECASE)
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}


def parse_rate(value: str) -> int:
    """``10Mbit`` → bits per second (LXD's units for nic limits.ingress/egress/max)."""
    m = _RATE.match(value.strip())
    if not m:
        raise InvalidArgument(f"invalid rate {value!r} (examples: 100kbit, 10Mbit, 1Gbit)")
    bits = int(float(m.group(1)) * _RATE_UNITS[m.group(2).lower()])
    if bits < 8000:
        raise InvalidArgument(f"rate {value!r} is below 8kbit")
    return bits


NIC_KEYS = frozenset({
    "network", "nictype", "parent", "name", "hwaddr", "mtu", "host_name", "ipv4.address",
    "ipv6.address", "limits.ingress", "limits.egress", "limits.max", "vlan",
    "security.mac_filtering"})


NICTYPES = ("bridged", "macvlan", "p2p")


def _check_ipv4(value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise InvalidArgument(f"invalid IPv4 address {value!r}") from None


def _check_ipv6(value: str) -> None:
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        raise InvalidArgument(f"invalid IPv6 address {value!r}") from None


def _check_ifname(value: str) -> None:
    """An interface name as the kernel takes it (1-15 characters, no '/', ':' or space)."""
    if not re.fullmatch(r"[a-zA-Z0-9_.-]{1,15}", value) or value in (".", ".."):
        raise InvalidArgument(f"invalid interface name {value!r} (1-15 letters, digits, "
                              "'_', '.' or '-')")


def _check_nictype(value: str) -> None:
    if value not in NICTYPES:
        raise InvalidArgument(f"unknown nictype {value!r} (one of {', '.join(NICTYPES)})")


def _check_rate(value: str) -> None:
    parse_rate(value)


#: the checks of single nic values (the combination is checked once the device is complete)
NIC_VALUE_CHECKS: dict[str, Callable[[str], None]] = {
    "nictype": _check_nictype, "parent": _check_ifname, "name": _check_ifname,
    "host_name": _check_ifname, "hwaddr": _check_mac, "mtu": _check_mtu,
    "ipv4.address": _check_ipv4, "ipv6.address": _check_ipv6, "network": validate_name,
    "limits.ingress": _check_rate, "limits.egress": _check_rate, "limits.max": _check_rate,
    "vlan": check_int(0, 4094), "security.mac_filtering": check_bool,
}


def validate_nic(dev_name: str, device: dict[str, str], partial: bool) -> None:
    """Each value as it is written; the whole device once complete (at start)."""
    for key, check in NIC_VALUE_CHECKS.items():
        if device.get(key):
            try:
                check(device[key])
            except InvalidArgument as exc:
                raise InvalidArgument(f"device {dev_name}: {key}: {exc.message}") from None
    if not partial:
        check_nic(dev_name, device)


NIC = DeviceType("nic", NIC_KEYS, validate_nic, "a network interface (veth on a managed "
                 "network or a bridge, macvlan, p2p)")


def random_mac(rng: random.Random | None = None) -> str:
    """A MAC in LXD's 00:16:3e prefix."""
    rng = rng or random.SystemRandom()
    return "00:16:3e:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))


def check_nic(dev_name: str, device: dict[str, str]) -> None:
    """Validate a nic device's values (the keys themselves are checked by the core)."""
    nictype = device.get("nictype", "")
    if device.get("network") and nictype and nictype != "bridged":
        raise InvalidArgument(f"device {dev_name}: network= cannot be combined with "
                              f"nictype={nictype}")
    if not device.get("network"):
        if nictype not in ("bridged", "macvlan", "p2p"):
            raise InvalidArgument(f"device {dev_name}: give network=NAME, or nictype=bridged "
                                  "(or macvlan, p2p) with parent=")
        if nictype in ("bridged", "macvlan") and not device.get("parent"):
            raise InvalidArgument(f"device {dev_name}: nictype={nictype} needs parent=")
    if device.get("hwaddr"):
        _check_mac(device["hwaddr"])
    if device.get("mtu"):
        _check_mtu(device["mtu"])
    if device.get("ipv4.address"):
        try:
            ipaddress.IPv4Address(device["ipv4.address"])
        except ValueError:
            raise InvalidArgument(f"device {dev_name}: invalid ipv4.address "
                                  f"{device['ipv4.address']!r}") from None
    if device.get("host_name") and not re.fullmatch(r"[a-zA-Z0-9_.-]{1,15}",
                                                     device["host_name"]):
        raise InvalidArgument(f"device {dev_name}: invalid host_name {device['host_name']!r}")
    for key in ("limits.ingress", "limits.egress"):
        if device.get(key):
            try:
                parse_rate(device[key])
            except InvalidArgument as exc:
                raise InvalidArgument(f"device {dev_name}: {key}: {exc.message}") from None

