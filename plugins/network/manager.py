"""Managed networks on the host: bridges through netlink (pyroute2), one supervised dnsmasq
per network, NAT/isolation in an nftables table per network, and nic devices for LXC.

Everything here blocks: it is called from worker threads (hooks, ``trio.to_thread``). Each
dnsmasq is watched by a small thread blocked in ``waitpid`` (it releases the GIL): when the
process dies while its network still exists, the thread starts it again. A thread rather
than a trio task because the manager is synchronous code reached from hooks that already run
in worker threads; those threads die with the daemon, dnsmasq does not (its own session), so
containers keep DHCP while the daemon restarts, and the next daemon replaces it.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute

from lxfs.errors import AlreadyExists, Busy, InvalidArgument, NotFound, OperationFailed
from lxfs.model import DEFAULT, Instance, split_profile_key

from . import config as cfg

if TYPE_CHECKING:
    from lxfs.api import Host

log = logging.getLogger("lxfs.network")

KIND = "networks"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def nft(script: str) -> None:
    """Apply an nft script in one transaction."""
    proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    if proc.returncode != 0:
        raise OperationFailed(f"nft failed: {proc.stderr.strip()}")


def host_routes() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The host's IPv4 routes (all tables) and addresses, as ``(address, prefix length)``."""
    with IPRoute() as ipr:
        routes = [(r.get("dst") or "", r["dst_len"]) for r in ipr.get_routes(family=2, table=0)]
        addrs = [(a.get("address") or "", a["prefixlen"]) for a in ipr.get_addr(family=2)]
    return routes, addrs


def in_netns(pid: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in the network namespace of ``pid``, in a short-lived thread of its own so
    that no other thread ever runs in that namespace."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            result["error"] = exc
            return
        try:
            _setns(target)
            try:
                result["value"] = fn()
            finally:
                _setns(own)
        except Exception as exc:  # reported to the caller's thread
            result["error"] = exc
        finally:
            os.close(own)
            os.close(target)

    thread = threading.Thread(target=run, name=f"netns {pid}", daemon=True)
    thread.start()
    thread.join(5)
    if "error" in result:
        raise result["error"]
    return result.get("value")


ADDRESS_CACHE_SECONDS = 0.5


def netns_addresses(pid: int) -> list[tuple[int, str, int, str]]:
    """``(family, address, prefix length, interface)`` of the global addresses in the network
    namespace of ``pid``."""

    def read() -> list[tuple[int, str, int, str]]:
        with IPRoute() as ipr:
            names = {link["index"]: link.get("ifname") for link in ipr.get_links()}
            return [(a["family"], a.get("address"), a["prefixlen"], names.get(a["index"], ""))
                    for a in ipr.get_addr() if a["scope"] == 0
                    and names.get(a["index"]) != "lo"]

    return in_netns(pid, read) or []


def shape(ifname: str, rate: str) -> None:
    """A token bucket on ``ifname``'s egress (in the current network namespace)."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise NotFound(f"interface {ifname} not found for traffic limits")
        bits = cfg.parse_rate(rate)
        burst = max(16384, bits // 8 // 100)  # 10 ms worth, at least 16 KiB
        ipr.tc("replace", "tbf", found[0], 0x10000, rate=bits // 8, burst=burst,
               latency="50ms")


def host_veth_name(server_dir: str, instance: str, device: str) -> str:
    """A stable host-side veth name (15 characters at most) for a nic."""
    import hashlib

    return "lxf" + hashlib.sha1(f"{server_dir}/{instance}/{device}".encode()).hexdigest()[:10]


class NetworkManager:
    """The managed networks of one host: records (plugin documents ``networks``) and what
    they own on the host."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.root = host.data_dir / "networks"
        self.records: dict[str, dict[str, Any]] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.lock = threading.RLock()
        self.closing = False
        self.errors: dict[str, str] = {}
        self._addresses: dict[int, tuple[float, list[tuple[int, str, int, str]]]] = {}

    # --- records ----------------------------------------------------------------------------

    def load(self) -> None:
        self.records = self.host.load_documents(KIND)

    def _save(self, name: str) -> None:
        self.host.put_document(KIND, name, self.records[name])

    def get(self, name: str) -> dict[str, Any]:
        rec = self.records.get(name)
        if rec is None:
            raise NotFound(f"network {name!r} not found")
        return rec

    def state_dir(self, name: str) -> Path:
        return self.root / name

    def used_by(self, name: str) -> list[str]:
        """Profiles and instances with a nic on this network (LXD's used_by)."""
        users = [_path("profiles", *reversed(split_profile_key(p.name)))
                 for p in self.host.profiles().values()
                 if any(_on_network(d, name) for d in p.devices.values())]
        users += [_path("instances", i.local_name, i.project)
                  for i in self.host.instances().values()
                  if any(_on_network(d, name) for d in i.expanded_devices.values())]
        return sorted(users)

    # --- operations -------------------------------------------------------------------------

    def create(self, name: str, config: dict[str, str] | None = None,
               description: str = "") -> None:
        cfg.validate_name(name)
        with self.lock:
            if name in self.records:
                raise AlreadyExists(f"network {name!r} already exists")
            if _link_index(name) is not None:
                raise AlreadyExists(f"an interface named {name} already exists on the host")
            conf = cfg.defaults()
            conf.update(config or {})
            cfg.validate_config(conf)
            conf = cfg.resolve_auto(conf, self._used(exclude=None))
            self.records[name] = {"name": name, "type": "bridge", "managed": True,
                                  "description": description, "config": conf}
            try:
                self.apply(name)
                self._save(name)
            except BaseException:
                self.records.pop(name, None)
                self._teardown(name)
                raise
        log.info("created network %s (%s)", name, conf.get("ipv4.address"))

    def delete(self, name: str) -> None:
        with self.lock:
            self.get(name)
            users = self.used_by(name)
            if users:
                raise Busy(f"network {name} is in use by {', '.join(users)}")
            self.host.delete_document(KIND, name)
            del self.records[name]
            self._teardown(name)
        log.info("deleted network %s", name)

    def set_key(self, name: str, key: str, value: str) -> None:
        """Set (empty value: unset) one key and apply the result to the host."""
        value = value.removesuffix("\n")
        with self.lock:
            rec = self.get(name)
            old = dict(rec["config"])
            new = dict(old)
            if value == "":
                new.pop(key, None)
            else:
                cfg.validate_key(key, value)
                new[key] = value
            cfg.validate_config(new)
            new = cfg.resolve_auto(new, self._used(exclude=name))
            self._check_static_leases(name, new)
            rec["config"] = new
            try:
                self.apply(name)
                self._save(name)
            except BaseException:
                rec["config"] = old
                self.apply(name)
                raise

    def set_description(self, name: str, value: str) -> None:
        with self.lock:
            self.get(name)["description"] = value.removesuffix("\n")
            self._save(name)

    def update(self, name: str, description: str, config: dict[str, str]) -> None:
        """Replace the description and the whole config (REST's PUT) and apply the result;
        on a failure the old record is applied again and nothing changes."""
        with self.lock:
            rec = self.get(name)
            new = {k: v for k, v in config.items() if v != ""}
            for key, value in new.items():
                cfg.validate_key(key, value)
            cfg.validate_config(new)
            new = cfg.resolve_auto(new, self._used(exclude=name))
            self._check_static_leases(name, new)
            old = dict(rec)
            rec["config"], rec["description"] = new, description
            try:
                if new != old["config"]:
                    self.apply(name)
                self._save(name)
            except BaseException:
                rec.clear()
                rec.update(old)
                self.apply(name)
                raise

    def rename(self, old: str, new: str) -> None:
        """Rename an unused network: its bridge, rules and dnsmasq are made again under the
        new name (a bridge cannot be renamed while it is up)."""
        cfg.validate_name(new)
        with self.lock:
            rec = self.get(old)
            users = self.used_by(old)
            if users:
                raise Busy(f"network {old} is in use by {', '.join(users)}")
            if new in self.records:
                raise AlreadyExists(f"network {new!r} already exists")
            if _link_index(new) is not None:
                raise AlreadyExists(f"an interface named {new} already exists on the host")
            self._teardown(old)
            del self.records[old]
            self.records[new] = {**rec, "name": new}
            try:
                self.apply(new)
                self._save(new)
            except BaseException:
                del self.records[new]
                self._teardown(new)
                self.records[old] = rec
                self.apply(old)
                raise
            self.host.delete_document(KIND, old)
        log.info("renamed network %s to %s", old, new)

    def restore(self) -> None:
        """At daemon start: every network's bridge, rules and dnsmasq back in place."""
        with self.lock:
            self.load()
            names = sorted(self.records)
        for name in names:
            try:
                with self.lock:
                    self.apply(name)
            except Exception as exc:
                self.errors[name] = str(exc)
                log.error("could not restore network %s: %s", name, exc)

    def shutdown(self) -> None:
        """Daemon stop: leave bridges and dnsmasq running for the containers, stop watching."""
        self.closing = True

    def _used(self, exclude: str | None) -> list[ipaddress.IPv4Network]:
        routes, addrs = host_routes()
        used = cfg.used_networks(routes, addrs)
        for other, rec in self.records.items():
            v4 = cfg.ipv4_interface(rec["config"])
            if v4 and other != exclude:
                used.append(v4.network)
        return used

    def _check_static_leases(self, name: str, config: dict[str, str]) -> None:
        v4 = cfg.ipv4_interface(config)
        for inst, _dev, device in self._nics_on(name):
            ip = device.get("ipv4.address")
            if ip and (v4 is None or ipaddress.IPv4Address(ip) not in v4.network):
                raise InvalidArgument(f"instance {inst.name} has the static address {ip}, "
                                      f"outside the new subnet")

    # --- applying to the host ---------------------------------------------------------------

    def apply(self, name: str) -> None:
        """Make the host match the record: bridge, addresses, rules, dnsmasq (restarted)."""
        conf = self.get(name)["config"]
        d = self.state_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
        self._ensure_bridge(name, conf)
        nft(cfg.nft_ruleset(name, conf))
        self._write_dnsmasq_files(name)
        self._stop_dnsmasq(name)
        if cfg.ipv4_interface(conf) or cfg.ipv6_interface(conf):
            self._start_dnsmasq(name)
        self.errors[name] = ""

    def _teardown(self, name: str) -> None:
        """Remove whatever the network owns on the host (tolerates partial states)."""
        self._stop_dnsmasq(name)
        try:
            nft(cfg.nft_delete(name))
        except OperationFailed as exc:
            log.warning("network %s: %s", name, exc)
        idx = _link_index(name)
        if idx is not None:
            with IPRoute() as ipr:
                ipr.link("del", index=idx)
        d = self.state_dir(name)
        for f in ("dnsmasq.leases", "dnsmasq.hosts", "dnsmasq.raw", "dnsmasq.pid",
                  "dnsmasq.log"):
            (d / f).unlink(missing_ok=True)
        try:
            d.rmdir()
        except OSError:
            pass

    def _ensure_bridge(self, name: str, conf: dict[str, str]) -> None:
        want = [i for i in (cfg.ipv4_interface(conf), cfg.ipv6_interface(conf)) if i]
        with IPRoute() as ipr:
            idx = _link_index(name, ipr)
            if idx is None:
                ipr.link("add", ifname=name, kind="bridge", br_forward_delay=0)
                idx = _link_index(name, ipr)
                assert idx is not None
            else:
                link = ipr.get_links(idx)[0]
                if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "bridge":
                    raise AlreadyExists(f"{name} exists on the host and is not a bridge")
            # no duplicate address detection (dnsmasq binds at once to an address of a bridge
            # that has no port yet), and no addresses from the bridge's own advertisements
            for key in ("accept_dad", "accept_ra", "autoconf"):
                _sysctl(f"net/ipv6/conf/{name}/{key}", "0", missing_ok=True)
            attrs: dict[str, Any] = {"mtu": int(conf.get("bridge.mtu") or 1500)}
            if conf.get("bridge.hwaddr"):
                attrs["address"] = conf["bridge.hwaddr"].lower()
            ipr.link("set", index=idx, **attrs)
            have = {(a.get("address"), a["prefixlen"]) for a in ipr.get_addr(index=idx)
                    if a["scope"] == 0}
            wanted = {(str(i.ip), i.network.prefixlen) for i in want}
            for addr, plen in have - wanted:
                ipr.addr("del", index=idx, address=addr, prefixlen=plen)
            for iface in want:
                if (str(iface.ip), iface.network.prefixlen) in have:
                    continue
                extra: dict[str, Any] = {}
                if iface.version == 4:
                    extra["broadcast"] = str(iface.network.broadcast_address)
                ipr.addr("add", index=idx, address=str(iface.ip),
                         prefixlen=iface.network.prefixlen, **extra)
            ipr.link("set", index=idx, state="up")

    # --- dnsmasq ----------------------------------------------------------------------------

    def _write_dnsmasq_files(self, name: str) -> None:
        d = self.state_dir(name)
        conf = self.get(name)["config"]
        _write(d / "dnsmasq.raw", conf.get("raw.dnsmasq", "") + "\n")
        self.write_hosts(name)
        leases = d / "dnsmasq.leases"
        if not leases.exists():
            leases.touch(mode=0o644)

    def write_hosts(self, name: str, reload: bool = False) -> None:
        """The static leases of the network's nics (``ipv4.address``), then SIGHUP dnsmasq."""
        entries = []
        for inst, dev, device in self._nics_on(name):
            mac = device.get("hwaddr") or inst.config.get(f"volatile.{dev}.hwaddr")
            if mac and device.get("ipv4.address"):
                entries.append((mac.lower(), device["ipv4.address"], inst.name))
        _write(self.state_dir(name) / "dnsmasq.hosts", cfg.hosts_file(entries))
        proc = self.procs.get(name)
        if reload and proc and proc.poll() is None:
            proc.send_signal(signal.SIGHUP)

    def _nics_on(self, name: str) -> list[tuple[Instance, str, dict[str, str]]]:
        return [(inst, dev, device) for inst in self.host.instances().values()
                for dev, device in inst.expanded_devices.items() if _on_network(device, name)]

    def _start_dnsmasq(self, name: str) -> None:
        d = self.state_dir(name)
        self._kill_stale(name)
        args = cfg.dnsmasq_args(name, self.get(name)["config"], d)
        with open(d / "dnsmasq.log", "ab") as logf:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    start_new_session=True, close_fds=True)
        self.procs[name] = proc
        # dnsmasq fails at once on a bad option or a taken port: report that here
        for _ in range(20):
            if proc.poll() is not None or (d / "dnsmasq.pid").exists():
                break
            time.sleep(0.01)
        if proc.poll() is not None:
            tail = (d / "dnsmasq.log").read_text(errors="replace").strip().splitlines()[-1:]
            self.procs.pop(name, None)
            raise OperationFailed(f"dnsmasq for {name} exited at start: {' '.join(tail)}")
        threading.Thread(target=self._watch, args=(name, proc), name=f"dnsmasq {name}",
                         daemon=True).start()
        log.info("network %s: dnsmasq running (pid %d)", name, proc.pid)

    def _watch(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        """Restart dnsmasq when it dies while its network still wants it."""
        code = proc.wait()
        delay = 0.1
        while True:
            with self.lock:
                if self.closing or self.procs.get(name) is not proc or name not in self.records:
                    return
                log.warning("network %s: dnsmasq (pid %d) exited with %s: restarting",
                            name, proc.pid, code)
                try:
                    self._start_dnsmasq(name)
                    return
                except Exception as exc:
                    log.error("network %s: %s", name, exc)
                    self.errors[name] = str(exc)
            time.sleep(delay)
            delay = min(delay * 2, 10)

    def _stop_dnsmasq(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._kill_stale(name)

    def _kill_stale(self, name: str) -> None:
        """A dnsmasq of this network left by an earlier daemon (found by its pid file and
        checked by its command line): stop it."""
        pidfile = self.state_dir(name) / "dnsmasq.pid"
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            pidfile.unlink(missing_ok=True)
            return
        if f"--pid-file={pidfile}".encode() not in cmdline:
            pidfile.unlink(missing_ok=True)
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for _ in range(200):
            if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
                break
            time.sleep(0.01)
        pidfile.unlink(missing_ok=True)

    def dnsmasq_pid(self, name: str) -> int:
        proc = self.procs.get(name)
        return proc.pid if proc is not None and proc.poll() is None else 0

    # --- reading ----------------------------------------------------------------------------

    def leases(self, name: str) -> list[dict[str, str]]:
        self.get(name)
        try:
            text = (self.state_dir(name) / "dnsmasq.leases").read_text()
        except FileNotFoundError:
            return []
        leases = cfg.parse_leases(text)
        static = {(m, ip) for inst, dev, device in self._nics_on(name)
                  for m, ip in [((device.get("hwaddr") or inst.config.get(
                      f"volatile.{dev}.hwaddr", "")).lower(), device.get("ipv4.address", ""))]}
        for lease in leases:
            lease["type"] = "static" if (lease["hwaddr"], lease["address"]) in static \
                else "dynamic"
        return leases

    def link_state(self, name: str) -> dict[str, Any]:
        """Operational state of the bridge: up/down, mtu, MAC, addresses, counters."""
        with IPRoute() as ipr:
            idx = _link_index(name, ipr)
            if idx is None:
                return {"state": "down", "mtu": "", "hwaddr": "", "addresses": [],
                        "counters": {}}
            link = ipr.get_links(idx)[0]
            addrs = [f"{a.get('address')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx)]
            stats = link.get("stats64") or {}
            flags = link["flags"]
        return {
            "state": "up" if flags & 1 else "down",
            "mtu": str(link.get("mtu")),
            "hwaddr": link.get("address") or "",
            "addresses": addrs,
            "counters": {k: str(stats.get(k, 0)) for k in
                         ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")},
        }

    # --- nic devices ------------------------------------------------------------------------

    def prepare(self, inst: Instance) -> None:
        """Before a start: generate ``volatile.DEV.hwaddr`` once for nics without ``hwaddr``,
        check every nic, and refresh the static leases of the networks they are on."""
        networks = set()
        for dev, device in sorted(inst.expanded_devices.items()):
            if device.get("type") != "nic":
                continue
            cfg.check_nic(dev, device)
            key = f"volatile.{dev}.hwaddr"
            if not device.get("hwaddr") and key not in inst.config:
                self.host.set_volatile(inst, key, cfg.random_mac())
            if device.get("network"):
                self.get(device["network"])
                networks.add(device["network"])
        for net in sorted(networks):
            self.write_hosts(net, reload=True)

    def lxc_lines(self, inst: Instance) -> list[str]:
        """``lxc.net.N.*`` for the instance's nics (sorted by device name); a query: what
        it needs was made by ``prepare``."""
        nics = sorted((dev, device) for dev, device in inst.expanded_devices.items()
                      if device.get("type") == "nic")
        if not nics:
            return []
        lines: list[str] = []
        for n, (dev, device) in enumerate(nics):
            p = f"lxc.net.{n}"
            mac = device.get("hwaddr") or inst.config.get(f"volatile.{dev}.hwaddr", "")
            nictype = device.get("nictype") or "bridged"
            mtu = device.get("mtu")
            if device.get("network"):
                net = device["network"]
                rec = self.get(net)
                static = device.get("ipv4.address")
                v4 = cfg.ipv4_interface(rec["config"])
                if static and (v4 is None or ipaddress.IPv4Address(static) not in v4.network
                               or ipaddress.IPv4Address(static) == v4.ip):
                    raise InvalidArgument(f"device {dev}: ipv4.address {static} is not a free "
                                          f"address of network {net} ({v4})")
                link = net
                mtu = mtu or rec["config"].get("bridge.mtu")
            else:
                link = device.get("parent", "")
                if link and _link_index(link) is None:
                    raise NotFound(f"device {dev}: parent interface {link} does not exist")
            if nictype == "macvlan":
                lines += [f"{p}.type = macvlan", f"{p}.macvlan.mode = bridge",
                          f"{p}.link = {link}"]
            else:
                lines.append(f"{p}.type = veth")
                if nictype != "p2p":
                    lines.append(f"{p}.link = {link}")
                pair = device.get("host_name") or host_veth_name(
                    str(self.host.data_dir), inst.name, dev)
                lines.append(f"{p}.veth.pair = {pair}")
            lines += [f"{p}.flags = up", f"{p}.hwaddr = {mac}",
                      f"{p}.name = {device.get('name') or dev}"]
            if mtu:
                lines.append(f"{p}.mtu = {mtu}")
        return lines

    def apply_limits(self, inst: Instance) -> None:
        """``limits.ingress`` (towards the instance: the host side's egress) and
        ``limits.egress`` (from it: its own side's egress) as token buckets, via netlink."""
        pid = self.host.instance_pid(inst)
        for dev, device in sorted(inst.expanded_devices.items()):
            if device.get("type") != "nic" or device.get("nictype") in ("macvlan",):
                continue
            if device.get("limits.ingress"):
                shape(device.get("host_name") or host_veth_name(
                    str(self.host.data_dir), inst.name, dev), device["limits.ingress"])
            if device.get("limits.egress") and pid > 0:
                name, rate = device.get("name") or dev, device["limits.egress"]
                in_netns(pid, lambda n=name, r=rate: shape(n, r))

    def instance_addresses(self, inst: Instance, family: int) -> list[str]:
        """``ADDRESS (IFACE)`` lines of a running instance, from netlink in its namespace."""
        return [f"{addr} ({iface})" for addr, iface in self.instance_address_pairs(inst, family)]

    def instance_address_pairs(self, inst: Instance, family: int) -> list[tuple[str, str]]:
        """``(address, interface)`` of a running instance, from netlink in its namespace."""
        if inst.storage_state != "ready":
            return []
        pid = self.host.instance_pid(inst)
        if pid <= 0:
            return []
        now = time.monotonic()
        cached = self._addresses.get(pid)
        if cached is not None and now - cached[0] < ADDRESS_CACHE_SECONDS:
            addrs = cached[1]
        else:
            try:
                addrs = netns_addresses(pid)
            except OSError:
                return []
            # one netlink dump serves both families (``ipv4`` then ``ipv6``, ``lxfs list``)
            self._addresses = {p: v for p, v in self._addresses.items()
                               if now - v[0] < ADDRESS_CACHE_SECONDS}
            self._addresses[pid] = (now, addrs)
        return [(addr, iface) for fam, addr, _plen, iface in addrs if fam == family]


def _path(kind: str, name: str, project: str) -> str:
    """The mount's path of an instance or profile (another project's under ``projects/P/``)."""
    return f"{kind}/{name}" if project == DEFAULT else f"projects/{project}/{kind}/{name}"


def _on_network(device: dict[str, str], name: str) -> bool:
    return device.get("type") == "nic" and device.get("network") == name


def _link_index(name: str, ipr: IPRoute | None = None) -> int | None:
    if ipr is None:
        with IPRoute() as own:
            return _link_index(name, own)
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _sysctl(key: str, value: str, missing_ok: bool = False) -> None:
    try:
        Path("/proc/sys", key).write_text(value)
    except FileNotFoundError:
        if not missing_ok:
            raise


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True

