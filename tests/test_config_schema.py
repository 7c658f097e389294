"""The key schema: every key's validation, sizes, CPU sets."""

from __future__ import annotations

import os

import pytest

from lxfs.config_schema import Schema as FullSchema
from lxfs.config_schema import cpu_set, memory_bytes, parse_cpu_set, parse_size
from lxfs.errors import InvalidArgument
from lxfs.plugins import plugin_manager


def Schema() -> FullSchema:  # noqa: N802 - the schema in force: the core's and the plugins' keys
    return FullSchema(k for keys in plugin_manager().hook.lxfs_config_keys() for k in keys)


@pytest.mark.parametrize("value,expected", [
    ("512MiB", 512 * 2**20), ("1GB", 10**9), ("1GiB", 2**30), ("1048576", 2**20),
    ("1.5GiB", int(1.5 * 2**30)), ("100kB", 100_000),
])
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("key,value", [
    ("limits.memory", "64MiB"), ("limits.memory", "50%"), ("limits.processes", "100"),
    ("limits.cpu", "1"), ("limits.cpu", "0"), ("limits.cpu", "0-0"),
    ("security.privileged", "true"), ("security.privileged", "false"),
    ("environment.http_proxy", "http://x"), ("user.anything", "any value"),
    ("raw.lxc", "lxc.cgroup.pids.max = 10\n# comment\n"), ("boot.autostart", "1"),
    ("boot.host_shutdown_timeout", "5"),
])
def test_valid_values(key, value):
    if key == "limits.cpu" and value == "0":
        with pytest.raises(InvalidArgument):
            Schema().validate_instance_key(key, value)
        return
    Schema().validate_instance_key(key, value)


@pytest.mark.parametrize("key,value,words", [
    ("limits.memory", "lots", "invalid size"),
    ("limits.memory", "1KiB", "too small"),
    ("limits.memory", "150%", "percentage"),
    ("limits.processes", "-1", "minimum"),
    ("limits.processes", "ten", "invalid integer"),
    ("limits.cpu", "0-999", "does not exist"),
    ("limits.cpu", "a-b", "invalid CPU set"),
    ("security.privileged", "maybe", "invalid boolean"),
    ("raw.lxc", "not a config line", "raw.lxc line 1"),
    ("raw.lxc", "lxc.rootfs.path = /x", "managed by lxfs"),
    ("volatile.eth0.hwaddr", "x", "managed by lxfs"),
    ("no.such.key", "1", "unknown configuration key 'no.such.key'"),
    ("environment.", "x", "unknown configuration key"),
])
def test_invalid_values_name_the_problem(key, value, words):
    with pytest.raises(InvalidArgument) as exc:
        Schema().validate_instance_key(key, value)
    assert words in exc.value.message


def test_cpu_helpers():
    assert parse_cpu_set("0-2,5") == [0, 1, 2, 5]
    assert cpu_set("1") == "0"
    assert cpu_set("2") == "0-1"
    assert cpu_set("0,1") == "0,1"


def test_memory_percentage():
    assert memory_bytes("50%", host_total=1000) == 500
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert memory_bytes("100%") == total


def test_server_keys():
    s = Schema()
    s.validate_server_key("core.https_address", "127.0.0.1:8443")
    with pytest.raises(InvalidArgument):
        s.validate_server_key("core.nope", "1")
