"""The plugin boundary: plugins use only the documented API (``lxfs.api`` and the modules it
lists), names are never registered twice, and a third-party plugin installed through its
entry point adds a storage driver, a key of its own and a mount entry."""

from __future__ import annotations

import ast
import errno
import os
import re
from pathlib import Path

import pytest

from lxfs import hookimpl
from lxfs.api import Host
from lxfs.config_schema import KeySpec
from lxfs.plugins import plugin_manager
from lxfs.server import PluginError, Server

REPO = Path(__file__).resolve().parent.parent
THIRDPARTY = REPO / "tests" / "fixtures" / "thirdparty"
#: the modules of lxfs a plugin may import (lxfs.api's docstring lists them)
ALLOWED_MODULES = {"lxfs", "lxfs.api", "lxfs.errors", "lxfs.config_schema", "lxfs.model",
                   "lxfs.storage", "lxfs.runtime", "lxfs.devices", "lxfs.nodes",
                   "lxfs.image_servers"}
#: names plugins give the Host (``host``; the network plugin's nodes call it ``srv``)
HOST_NAMES = {"host", "srv"}


def plugin_files() -> list[Path]:
    return sorted([*REPO.glob("plugins/**/*.py"), THIRDPARTY / "lxfs_thirdparty_example.py"])


def host_members() -> set[str]:
    return {name for name in dir(Host) if not name.startswith("_")}


@pytest.mark.parametrize("path", plugin_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_plugins_use_only_the_documented_api(path):
    tree = ast.parse(path.read_text(), str(path))
    members = host_members()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                node.module.split(".")[0] == "lxfs":
            assert node.module in ALLOWED_MODULES, f"{path}:{node.lineno} imports {node.module}"
            if node.module == "lxfs":  # ``from lxfs import x`` names a module of the core too
                for alias in node.names:
                    assert alias.name in {"hookimpl", "__version__"} or \
                        f"lxfs.{alias.name}" in ALLOWED_MODULES, \
                        f"{path}:{node.lineno} imports lxfs.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "lxfs":
                    assert alias.name in ALLOWED_MODULES, f"{path}:{node.lineno} {alias.name}"
        elif isinstance(node, ast.Attribute):
            owner = node.value
            name = owner.id if isinstance(owner, ast.Name) else \
                owner.attr if isinstance(owner, ast.Attribute) and isinstance(
                    owner.value, ast.Name) and owner.value.id == "self" else None
            if name in HOST_NAMES:
                assert node.attr in members, \
                    f"{path}:{node.lineno} uses {name}.{node.attr}, which lxfs.api.Host lacks"


def test_the_api_module_lists_what_plugins_may_import():
    import lxfs.api

    for module in ALLOWED_MODULES - {"lxfs"}:
        assert f"``{module}``" in lxfs.api.__doc__, module


def test_core_names_no_backend():
    """Backend names (drivers, runtimes, helpers) appear in the core's docstrings and
    comments only."""
    names = re.compile(r"\b(btrfs|zfs|lvm|ceph|lxc|dnsmasq|nftables|apparmor|seccomp)\b|"
                       r"[\"']dir[\"']", re.IGNORECASE)
    for path in sorted((REPO / "lxfs").glob("*.py")):
        if path.name in ("hookspecs.py",):  # the plugin author's reference: prose only
            continue
        source = path.read_text()
        tree = ast.parse(source)
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                           ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    id(node) not in docstrings and names.search(node.value):
                pytest.fail(f"{path.name}:{node.lineno}: {node.value!r}")
            if isinstance(node, ast.Name) and names.search(node.id):
                pytest.fail(f"{path.name}:{node.lineno}: name {node.id}")


class _Driver:
    pass


def _driver_plugin(driver_name: str) -> object:
    cls = type(f"Driver_{driver_name}", (_Driver,), {"name": driver_name})

    class Plugin:
        @hookimpl
        def lxfs_storage_drivers(self):
            return [cls]

    return Plugin()


def test_duplicate_driver_names_are_refused(tmp_path):
    from lxfs_plugins import storage_dir

    pm = plugin_manager(load_entry_points=False, extra=(storage_dir, _driver_plugin("dir")))
    with pytest.raises(PluginError, match="storage driver 'dir' is provided by two plugins"):
        Server(tmp_path, tmp_path / "mnt", pm)


def test_duplicate_keys_are_refused(tmp_path):
    class Twice:
        @hookimpl
        def lxfs_config_keys(self):
            return [KeySpec("boot.autostart")]

    pm = plugin_manager(load_entry_points=True, extra=(Twice(),))
    with pytest.raises(PluginError, match="boot.autostart"):
        Server(tmp_path, tmp_path / "mnt", pm)


def test_a_misspelled_hook_stops_the_start():
    class Typo:
        @hookimpl
        def lxfs_instance_pre_strat(self, host, instance):
            pass

    from pluggy import PluginValidationError

    with pytest.raises(PluginValidationError, match="lxfs_instance_pre_strat"):
        plugin_manager(load_entry_points=False, extra=(Typo(),))


# --- against the real daemon --------------------------------------------------------------


def test_third_party_plugin_through_its_entry_point(lxfs_daemon_factory):
    d = lxfs_daemon_factory(env={"PYTHONPATH": str(THIRDPARTY)})
    # a storage driver
    assert "example" in d.read("environment", "storage_drivers").split()
    d.cli("storage", "create", "p1", "example")
    assert d.read("storage-pools", "p1", "driver") == "example"
    d.cli("storage", "volume", "create", "p1", "v1")
    assert (d.data_dir / "example-pools" / "p1" / "custom" / "v1").is_dir()
    # a mount entry
    assert d.read("example", "hello") == "hello from a plugin"
    assert d.read("example", "data_dir") == str(d.data_dir.resolve())
    # a configuration key: validated, shown on the mount, refused when invalid
    os.mkdir(d.path("instances", "x1"))
    d.write("instances", "x1", "config", "example.greeting", "good morning")
    assert d.read("instances", "x1", "config", "example.greeting") == "good morning"
    assert "x1: good morning" in d.read("example", "hello")
    with pytest.raises(OSError) as exc:
        d.write("instances", "x1", "config", "example.greeting", "Bad Value!")
    assert exc.value.errno == errno.EINVAL
    assert "lowercase words" in d.read("instances", "x1", "error")
    assert d.read("instances", "x1", "config", "example.greeting") == "good morning"
    d.cli("storage", "volume", "delete", "p1", "v1")
    d.cli("storage", "delete", "p1")


def test_without_the_dir_plugin_the_daemon_says_so(lxfs_daemon_factory):
    d = lxfs_daemon_factory(extra_args=["--disable-plugin", "storage_dir"])
    assert "dir" not in d.read("environment", "storage_drivers").split()
    assert "no storage driver can make the default pool" in d.read("error")
    assert "no storage driver can make the default pool" in d.log_path.read_text()
    assert os.listdir(d.path("storage-pools")) == []
    # a btrfs pool named default makes it usable
    d.cli("storage", "create", "default", "btrfs", "size=256MiB")
    assert d.read("storage-pools", "default", "driver") == "btrfs"


def test_the_runtime_cleans_what_the_exec_agent_leaves():
    from lxfs_plugins.runtime_lxc import EXEC_AGENT_FILES

    from lxfs.cli import exec_agent

    assert set(EXEC_AGENT_FILES) == {exec_agent.SOCKET_NAME, exec_agent.LOCK_NAME}
