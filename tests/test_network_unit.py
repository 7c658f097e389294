"""The network plugin's pure logic: key validation, subnet choice, dnsmasq arguments, nft."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest
from lxfs_plugins.network import config as cfg

from lxfs.errors import InvalidArgument


@pytest.mark.parametrize("key,value", [
    ("ipv4.address", "10.251.3.1/24"), ("ipv4.address", "auto"), ("ipv4.address", "none"),
    ("ipv6.address", "fd42::1/64"), ("ipv4.nat", "false"), ("ipv4.dhcp", "true"),
    ("ipv4.dhcp.ranges", "10.251.3.10-10.251.3.20,10.251.3.30-10.251.3.40"),
    ("dns.domain", "lxd"), ("bridge.mtu", "1400"), ("bridge.hwaddr", "00:16:3e:00:00:01"),
    ("raw.dnsmasq", "dhcp-option=6,10.251.3.1"), ("user.x", "anything"),
])
def test_valid_keys(key: str, value: str) -> None:
    cfg.validate_key(key, value)


@pytest.mark.parametrize("key,value,words", [
    ("ipv4.address", "10.251.3.1", "CIDR"), ("ipv4.address", "fd42::1/64", "IPv4"),
    ("ipv4.address", "10.251.3.0/24", "host address"), ("ipv6.address", "10.0.0.1/24", "IPv6"),
    ("ipv4.nat", "maybe", "boolean"), ("ipv4.dhcp.ranges", "10.0.0.9-10.0.0.1", "range"),
    ("bridge.mtu", "20", "minimum"), ("bridge.hwaddr", "01:00:00:00:00:01", "unicast"),
    ("raw.dnsmasq", "interface=eth0", "managed"), ("bogus.key", "1", "unknown"),
])
def test_invalid_keys(key: str, value: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        cfg.validate_key(key, value)
    assert key in exc.value.message and words in exc.value.message


def test_ranges_inside_subnet() -> None:
    cfg.validate_config({"ipv4.address": "10.251.3.1/24",
                         "ipv4.dhcp.ranges": "10.251.3.10-10.251.3.20"})
    with pytest.raises(InvalidArgument, match="outside"):
        cfg.validate_config({"ipv4.address": "10.251.3.1/24",
                             "ipv4.dhcp.ranges": "10.251.4.10-10.251.4.20"})


@pytest.mark.parametrize("name", ["lxdbr0", "br-test", "a"])
def test_names(name: str) -> None:
    cfg.validate_name(name)


@pytest.mark.parametrize("name", ["", "0br", "x" * 16, "a/b", "a b", "lo"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        cfg.validate_name(name)


def test_defaults_follow_environment() -> None:
    assert cfg.defaults({})["ipv4.nat"] == "true"
    d = cfg.defaults({cfg.NAT_DEFAULT_ENV: "false"})
    assert d == {"ipv4.address": "auto", "ipv4.nat": "false", "ipv6.address": "auto",
                 "ipv6.nat": "false"}


def test_auto_subnet_avoids_host_routes() -> None:
    # every /24 of 10.251.0.0/22 but 10.251.2.0/24 is reached by the host already
    routes = [("0.0.0.0", 0), ("10.251.0.0", 23), ("192.0.2.0", 24)]
    addrs = [("10.251.3.7", 24)]
    used = cfg.used_networks(routes, addrs)
    assert ipaddress.IPv4Network("0.0.0.0/0") not in used  # the default route is no subnet
    for seed in range(20):
        chosen = cfg.pick_ipv4_subnet(used, "10.251.0.0/22", random.Random(seed))
        assert str(chosen) == "10.251.2.1/24"
    used.append(ipaddress.IPv4Network("10.251.2.0/24"))
    with pytest.raises(InvalidArgument, match="no unused /24"):
        cfg.pick_ipv4_subnet(used, "10.251.0.0/22")


def test_auto_subnet_default_pool_and_ipv6() -> None:
    chosen = cfg.pick_ipv4_subnet([], "10.0.0.0/8", random.Random(1))
    assert chosen in ipaddress.IPv4Network("10.0.0.0/8") and chosen.network.prefixlen == 24
    assert str(chosen.ip).endswith(".1")
    v6 = cfg.pick_ipv6_subnet(random.Random(1))
    assert v6.network.prefixlen == 64 and str(v6).startswith("fd42:")
    resolved = cfg.resolve_auto({"ipv4.address": "auto", "ipv6.address": "none"}, [])
    assert resolved["ipv6.address"] == "none" and "/24" in resolved["ipv4.address"]


def test_dnsmasq_arguments(tmp_path: Path) -> None:
    args = cfg.dnsmasq_args("lxt0", {"ipv4.address": "10.251.3.1/24",
                                     "ipv6.address": "none", "dns.domain": "test"}, tmp_path)
    for required in ("--no-resolv", "--no-ping", "--bind-interfaces", "--interface=lxt0",
                     "--except-interface=lo", "--listen-address=10.251.3.1",
                     "--dhcp-range=10.251.3.2,10.251.3.254,1h", "--domain=test",
                     f"--pid-file={tmp_path / 'dnsmasq.pid'}",
                     f"--dhcp-leasefile={tmp_path / 'dnsmasq.leases'}",
                     f"--dhcp-hostsfile={tmp_path / 'dnsmasq.hosts'}",
                     f"--conf-file={tmp_path / 'dnsmasq.raw'}"):
        assert required in args
    assert not any(a.startswith("--enable-ra") for a in args)
    v6 = cfg.dnsmasq_args("lxt0", {"ipv4.address": "10.251.3.1/24", "ipv4.dhcp": "false",
                                   "ipv6.address": "fd42:1::1/64"}, tmp_path)
    assert not any(a.startswith("--dhcp-range=10.") for a in v6)
    assert "--enable-ra" in v6 and "--listen-address=fd42:1::1" in v6
    ranged = cfg.dnsmasq_args("lxt0", {"ipv4.address": "10.251.3.1/24",
                                       "ipv4.dhcp.ranges": "10.251.3.50-10.251.3.60"}, tmp_path)
    assert "--dhcp-range=10.251.3.50,10.251.3.60,1h" in ranged


def test_hosts_and_leases() -> None:
    assert cfg.hosts_file([("00:16:3e:00:00:02", "10.251.3.5", "c2"),
                           ("00:16:3e:00:00:01", "10.251.3.4", "c1")]) == (
        "00:16:3e:00:00:01,10.251.3.4,c1\n00:16:3e:00:00:02,10.251.3.5,c2\n")
    leases = cfg.parse_leases("1700000000 00:16:3E:AA:BB:CC 10.251.3.9 c1 01:00:16\n"
                              "1700000001 00:16:3e:aa:bb:cd 10.251.3.10 * *\nduid 00:01\n")
    assert leases == [
        {"expiry": "1700000000", "hwaddr": "00:16:3e:aa:bb:cc", "address": "10.251.3.9",
         "hostname": "c1"},
        {"expiry": "1700000001", "hwaddr": "00:16:3e:aa:bb:cd", "address": "10.251.3.10",
         "hostname": ""}]


def test_nft_isolated_ruleset() -> None:
    text = cfg.nft_ruleset("lxt-0", {"ipv4.address": "10.251.3.1/24", "ipv4.nat": "false",
                                     "ipv6.address": "none"})
    lines = text.splitlines()
    # atomic replacement: create if missing, delete, recreate, in one nft transaction
    assert lines[:3] == ["table inet lxfs_lxt_0", "delete table inet lxfs_lxt_0",
                         "table inet lxfs_lxt_0 {"]
    assert 'iifname "lxt-0" oifname != "lxt-0" meta nfproto ipv4 drop' in text
    assert 'oifname "lxt-0" iifname != "lxt-0" meta nfproto ipv4 drop' in text
    assert "masquerade" not in text and "hook postrouting" not in text


def test_nft_nat_ruleset() -> None:
    text = cfg.nft_ruleset("br0", {"ipv4.address": "10.251.3.1/24", "ipv4.nat": "true",
                                   "ipv6.address": "fd42:1::1/64", "ipv6.nat": "true"})
    assert "ip saddr 10.251.3.0/24 ip daddr != 10.251.3.0/24 masquerade" in text
    assert "ip6 saddr fd42:1::/64 ip6 daddr != fd42:1::/64 masquerade" in text
    assert 'iifname "br0" meta nfproto ipv4 accept' in text
    assert " drop" not in text
    assert cfg.nft_delete("br0") == "table inet lxfs_br0\ndelete table inet lxfs_br0\n"


def test_nic_validation() -> None:
    cfg.check_nic("eth0", {"type": "nic", "network": "lxdbr0", "ipv4.address": "10.0.0.5"})
    cfg.check_nic("eth0", {"type": "nic", "nictype": "bridged", "parent": "br0"})
    for bad, words in (({"type": "nic"}, "network=NAME"),
                       ({"type": "nic", "nictype": "bridged"}, "parent"),
                       ({"type": "nic", "network": "n", "nictype": "macvlan"}, "cannot"),
                       ({"type": "nic", "network": "n", "ipv4.address": "x"}, "ipv4.address"),
                       ({"type": "nic", "network": "n", "hwaddr": "zz"}, "MAC")):
        with pytest.raises(InvalidArgument, match=words):
            cfg.check_nic("eth0", bad)
    mac = cfg.random_mac(random.Random(3))
    assert mac.startswith("00:16:3e:") and len(mac) == 17
