"""Hosts on one machine: network namespaces joined by veth pairs on a bridge of the root
namespace, for the tests (``tests/conftest.py``'s ``host_network``) and the benchmark's moves
between hosts (``bench/migrate.py``)."""

from __future__ import annotations

import os
import signal
import subprocess


class HostNetwork:
    """Network namespaces standing for hosts, on one bridge of the root namespace (a
    subnet of 10.251.0.0/16, nothing routed or NATed out). ``add(name)`` makes one and
    returns ``(netns, address)``; ``gateway`` is the bridge's address (the test's side)."""

    def __init__(self, index: int) -> None:
        self.tag = f"{os.getpid() % 10000}{index}"
        self.bridge = f"lxfsmh{self.tag}"[:15]
        self.subnet = self._free_subnet(os.getpid() + index)
        self.gateway = f"{self.subnet}.1"
        self.namespaces: list[str] = []
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge],
                       check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)

    @staticmethod
    def _free_subnet(seed: int) -> str:
        """A /24 of 10.251.200.0-10.251.249.0 that no interface uses (test runs side by side
        must not share one)."""
        used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True,
                              check=False).stdout
        for step in range(50):
            subnet = f"10.251.{200 + (seed + step) % 50}"
            if f" {subnet}." not in used:
                return subnet
        raise RuntimeError("no free subnet in 10.251.200.0/19 for test hosts")

    def add(self, name: str) -> tuple[str, str]:
        n = len(self.namespaces) + 2
        netns = f"lxfs-{name}-{self.tag}"
        host_end, ns_end = f"vmh{self.tag}{n}"[:15], f"vmn{self.tag}{n}"[:15]
        self.namespaces.append(netns)
        address = f"{self.subnet}.{n}"
        for cmd in (
            ["ip", "netns", "add", netns],
            ["ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end],
            ["ip", "link", "set", host_end, "master", self.bridge, "up"],
            ["ip", "link", "set", ns_end, "netns", netns],
            ["ip", "-n", netns, "link", "set", "lo", "up"],
            ["ip", "-n", netns, "link", "set", ns_end, "name", "eth0"],
            ["ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0"],
            ["ip", "-n", netns, "link", "set", "eth0", "up"],
        ):
            subprocess.run(cmd, check=True, capture_output=True)
        return netns, address

    def teardown(self) -> None:
        for netns in self.namespaces:
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True,
                                  text=True, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
