"""``lxfs init``: the setup dialogue of ``lxd init``, ``--auto``, ``--preseed`` and ``--dump``.

Everything goes through a preseed (LXD's format: ``config``, ``networks``, ``storage_pools``,
``profiles``): the dialogue and ``--auto`` build one, then it is applied through the mount.
Applying is idempotent and prints what changed.
"""

from __future__ import annotations

import argparse
import errno
import getpass
import os
import sys
from pathlib import Path

from lxfs.cli.mount import CLIError, Mount, list_dirs, read_devices, read_dir_values, read_opt
from lxfs.cli.network import create_network, network_path, network_record, set_keys
from lxfs.cli.output import render_yaml

TYPE_CHECKING = False  # importing typing costs 2-4 ms of start-up
if TYPE_CHECKING:
    from typing import Any

DEFAULT_BRIDGE = "lxdbr0"


# --- building a preseed -------------------------------------------------------------------


def auto_preseed(mount: Mount, args: argparse.Namespace) -> dict[str, Any]:
    """``--auto``: the default pool, a bridge (unless one exists), eth0 in the default
    profile, and the HTTPS address when asked for."""
    seed: dict[str, Any] = {"config": {}, "networks": [], "storage_pools": [], "profiles": []}
    backend = args.storage_backend or "dir"
    seed["storage_pools"].append({"name": "default", "driver": backend, "config": {}})
    bridge = args.bridge_name or DEFAULT_BRIDGE
    seed["networks"].append({"name": bridge, "type": "bridge", "config": {
        "ipv4.address": args.bridge_ipv4 or "auto", "ipv6.address": args.bridge_ipv6 or "auto"}})
    seed["profiles"].append(_default_profile("default", bridge))
    if args.network_address:
        seed["config"]["core.https_address"] = f"{args.network_address}:{args.network_port}"
    if args.trust_password:
        seed["config"]["core.trust_password"] = args.trust_password
    return seed


def _default_profile(pool: str, bridge: str | None) -> dict[str, Any]:
    devices: dict[str, dict[str, str]] = {"root": {"type": "disk", "path": "/", "pool": pool}}
    if bridge:
        devices["eth0"] = {"type": "nic", "network": bridge, "name": "eth0"}
    return {"name": "default", "config": {}, "description": "Default lxfs profile",
            "devices": devices}


class Asker:
    """Questions with defaults on Enter, from a terminal or any stdin."""

    def __init__(self) -> None:
        self.tty = sys.stdin.isatty()

    def line(self, question: str, default: str = "") -> str:
        prompt = f"{question} [default={default}]: " if default else f"{question}: "
        sys.stdout.write(prompt)
        sys.stdout.flush()
        answer = sys.stdin.readline()
        if answer == "":
            raise CLIError("no answer (end of input)")
        return answer.strip() or default

    def yes(self, question: str, default: bool) -> bool:
        while True:
            answer = self.line(f"{question} (yes/no)", "yes" if default else "no").lower()
            if answer in ("yes", "y"):
                return True
            if answer in ("no", "n"):
                return False
            print("Invalid input, try again.")

    def choice(self, question: str, choices: list[str], default: str) -> str:
        while True:
            answer = self.line(f"{question} ({', '.join(choices)})", default)
            if answer in choices:
                return answer
            print(f"Invalid input, choose one of {', '.join(choices)}.")

    def secret(self, question: str) -> str:
        if self.tty:
            return getpass.getpass(f"{question}: ")
        return self.line(question)


def interactive_preseed(mount: Mount, args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """The dialogue of seed 000; returns the preseed and whether to print it."""
    ask = Asker()
    seed: dict[str, Any] = {"config": {}, "networks": [], "storage_pools": [], "profiles": []}
    if ask.yes("Would you like to use clustering?", False):
        print("Clustering is not supported by lxfs yet: going on as a single server.")
    pool = None
    if ask.yes("Do you want to configure a new storage pool?", True):
        pool = ask.line("Name of the new storage pool", "default")
        drivers = mount.env("storage_drivers").split() or ["dir"]
        default_driver = "dir" if "dir" in drivers else drivers[0]
        existing = mount.root / "storage-pools" / pool
        if existing.is_dir():
            default_driver = read_opt(existing / "driver") or default_driver
        driver = ask.choice("Name of the storage backend to use", drivers, default_driver)
        entry: dict[str, Any] = {"name": pool, "driver": driver, "config": {}}
        if driver != "dir" and not existing.is_dir():
            source = ask.line(f"Path of an existing {driver} filesystem or device to use "
                              "(empty: let lxfs choose)", "")
            if source:
                entry["config"]["source"] = source
        seed["storage_pools"].append(entry)
    bridge = None
    if ask.yes("Would you like to create a new local network bridge?", True):
        bridge = ask.line("What should the new bridge be called?", DEFAULT_BRIDGE)
        v4 = ask.line("What IPv4 address should be used? (CIDR subnet notation, “auto” or "
                      "“none”)", "auto")
        v6 = ask.line("What IPv6 address should be used? (CIDR subnet notation, “auto” or "
                      "“none”)", "auto")
        seed["networks"].append({"name": bridge, "type": "bridge",
                                 "config": {"ipv4.address": v4, "ipv6.address": v6}})
    if pool or bridge:
        seed["profiles"].append(_default_profile(pool or "default", bridge))
    if ask.yes("Would you like the lxfs server to be available over the network?", False):
        address = ask.line("Address to bind lxfs to (not including port)", "all")
        port = ask.line("Port to bind lxfs to", "8443")
        host = "[::]" if address == "all" else (f"[{address}]" if ":" in address else address)
        seed["config"]["core.https_address"] = f"{host}:{port}"
        while True:
            password = ask.secret("Trust password for new clients")
            if ask.secret("Again") == password:
                break
            print("The passwords do not match, try again.")
        if password:
            seed["config"]["core.trust_password"] = password
    if not ask.yes("Would you like stale cached images to be updated automatically?", True):
        seed["config"]["images.auto_update_interval"] = "0"
    show = ask.yes('Would you like a YAML "lxfs init" preseed to be printed?', False)
    return seed, show


# --- applying a preseed -------------------------------------------------------------------


class Applier:
    def __init__(self, mount: Mount) -> None:
        self.mount = mount
        self.changes: list[str] = []

    def apply(self, seed: dict[str, Any]) -> None:
        if not isinstance(seed, dict):
            raise CLIError("the preseed must be a YAML mapping")
        unknown = set(seed) - {"config", "networks", "storage_pools", "profiles", "cluster",
                               "projects", "storage_volumes"}
        if unknown:
            raise CLIError(f"unknown preseed sections: {', '.join(sorted(unknown))}")
        if seed.get("cluster"):
            raise CLIError("clustering is not supported by lxfs")
        for key, value in (seed.get("config") or {}).items():
            self._server_key(str(key), _str(value))
        for pool in seed.get("storage_pools") or []:
            self._pool(pool)
        for net in seed.get("networks") or []:
            self._network(net)
        for profile in seed.get("profiles") or []:
            self._profile(profile)

    def _server_key(self, key: str, value: str) -> None:
        path = self.mount.root / "config" / key
        if read_opt(path) == value:
            return
        self.mount.write(path, value, None)
        self.changes.append(f"Server config {key} set" if key != "core.trust_password"
                            else "Trust password set")

    def _pool(self, pool: dict[str, Any]) -> None:
        name, driver = str(pool.get("name", "")), str(pool.get("driver", "dir"))
        config = {str(k): _str(v) for k, v in (pool.get("config") or {}).items()}
        path = self.mount.root / "storage-pools" / name
        if not name:
            raise CLIError("a storage pool in the preseed has no name")
        if path.is_dir() and read_opt(path / "driver"):
            have = read_opt(path / "driver")
            if have != driver:
                raise CLIError(f"Storage pool {name} exists with driver {have}, not {driver}")
            current = read_dir_values(path / "config")
            for key, value in config.items():
                if current.get(key) != value:
                    self.mount.write(path / "config" / key, value, None)
                    self.changes.append(f"Storage pool {name}: {key} set")
            return
        if not path.is_dir():
            self.mount.do(lambda: os.mkdir(path), None, messages={
                errno.EACCES: "This lxfs daemon cannot create storage pools yet",
                errno.EOPNOTSUPP: "This lxfs daemon cannot create storage pools yet"})
        for key, value in config.items():
            self.mount.write(path / "config" / key, value, None)
        self.mount.write(path / "driver", driver, None)
        self.changes.append(f"Storage pool {name} created ({driver})")

    def _network(self, net: dict[str, Any]) -> None:
        name = str(net.get("name", ""))
        if str(net.get("type") or "bridge") != "bridge":
            raise CLIError(f"network {name}: only bridge networks are supported")
        config = {str(k): _str(v) for k, v in (net.get("config") or {}).items()}
        path = network_path(self.mount, name, must_exist=False)
        if not path.is_dir():
            create_network(self.mount, name, config, str(net.get("description") or ""))
            self.changes.append(f"Network {name} created "
                                f"({read_opt(path / 'config' / 'ipv4.address') or 'no IPv4'})")
            return
        current = read_dir_values(path / "config")
        for key, value in config.items():
            if value == "auto" and current.get(key) not in (None, "none"):
                continue  # an address was chosen already
            if current.get(key) != value:
                set_keys(self.mount, path, {key: value})
                self.changes.append(f"Network {name}: {key} set to {value}")

    def _profile(self, profile: dict[str, Any]) -> None:
        name = str(profile.get("name", ""))
        path = self.mount.profiles / name
        if not path.is_dir():
            self.mount.do(lambda: os.mkdir(path), None)
            self.changes.append(f"Profile {name} created")
        if "description" in profile:
            desc = str(profile.get("description") or "")
            if read_opt(path / "description") != desc:
                self.mount.write(path / "description", desc, None)
        current = read_dir_values(path / "config")
        for key, value in (profile.get("config") or {}).items():
            if current.get(str(key)) != _str(value):
                self.mount.write(path / "config" / str(key), _str(value), None)
                self.changes.append(f"Profile {name}: {key} set")
        devices = read_devices(path / "devices")
        for dev, keys in (profile.get("devices") or {}).items():
            keys = {str(k): _str(v) for k, v in keys.items()}
            if devices.get(dev) == keys:
                continue
            dpath = path / "devices" / str(dev)
            if dev not in devices:
                self.mount.do(lambda p=dpath: os.mkdir(p), None)
                self.changes.append(f"Profile {name}: device {dev} added")
            else:
                self.changes.append(f"Profile {name}: device {dev} updated")
            order = ["type"] + sorted(k for k in keys if k != "type")
            for key in order:
                if key in keys and devices.get(dev, {}).get(key) != keys[key]:
                    self.mount.write(dpath / key, keys[key], None)


def _str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def dump(mount: Mount) -> dict[str, Any]:
    """The current state as a preseed."""
    networks = []
    for name in sorted(list_dirs(mount.root / "networks")):
        rec = network_record(mount.root / "networks" / name)
        networks.append({"config": rec["config"], "description": rec["description"],
                         "name": name, "type": rec["type"], "project": "default"})
    pools = []
    for name in sorted(list_dirs(mount.root / "storage-pools")):
        p = mount.root / "storage-pools" / name
        pools.append({"config": read_dir_values(p / "config"),
                      "description": read_opt(p / "description"), "name": name,
                      "driver": read_opt(p / "driver")})
    profiles = []
    for name in sorted(list_dirs(mount.profiles)):
        p = mount.profiles / name
        profiles.append({"config": read_dir_values(p / "config"),
                         "description": read_opt(p / "description"),
                         "devices": read_devices(p / "devices"), "name": name})
    config = read_dir_values(mount.root / "config")
    config.pop("core.trust_password", None)
    return {"config": config, "networks": networks, "storage_pools": pools,
            "profiles": profiles, "projects": [], "cluster": None}


def cmd_init(args: argparse.Namespace) -> int:
    mount = Mount()
    if sum(bool(x) for x in (args.auto, args.preseed, args.dump)) > 1:
        raise CLIError("--auto, --preseed and --dump are exclusive")
    if args.dump:
        sys.stdout.write(render_yaml(dump(mount)))
        return 0
    show = False
    if args.preseed:
        import yaml  # noqa: PLC0415 - only a preseed needs it

        source = sys.stdin if args.preseed == "-" else open(Path(args.preseed))
        try:
            seed = yaml.safe_load(source.read()) or {}
        except yaml.YAMLError as exc:
            raise CLIError(f"invalid preseed YAML: {exc}") from None
        finally:
            if source is not sys.stdin:
                source.close()
    elif args.auto:
        seed = auto_preseed(mount, args)
    else:
        seed, show = interactive_preseed(mount, args)
    applier = Applier(mount)
    applier.apply(seed)
    if show:
        sys.stdout.write(render_yaml(seed))
    for change in applier.changes:
        print(change)
    if not applier.changes:
        print("Nothing to change: lxfs is already set up so")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``init``."""
    p = sub.add_parser("init", help="Set up lxfs: storage, network, default profile")
    p.add_argument("--auto", action="store_true", help="use defaults, no questions")
    p.add_argument("--preseed", nargs="?", const="-", metavar="FILE",
                   help="apply an LXD preseed (YAML) from FILE or stdin")
    p.add_argument("--dump", action="store_true", help="print the current state as a preseed")
    p.add_argument("--storage-backend", help="--auto: storage driver of the default pool")
    p.add_argument("--network-address", help="--auto: address to serve the API on")
    p.add_argument("--network-port", default="8443", help="--auto: port (default 8443)")
    p.add_argument("--trust-password", help="--auto: password for new clients")
    p.add_argument("--bridge-name", help=f"--auto: name of the bridge ({DEFAULT_BRIDGE})")
    p.add_argument("--bridge-ipv4", default=os.environ.get("LXFS_INIT_BRIDGE_IPV4"),
                   help="--auto: IPv4 CIDR of the bridge (auto; env LXFS_INIT_BRIDGE_IPV4)")
    p.add_argument("--bridge-ipv6", default=os.environ.get("LXFS_INIT_BRIDGE_IPV6"),
                   help="--auto: IPv6 CIDR of the bridge (auto, none)")
    p.set_defaults(func=cmd_init)
