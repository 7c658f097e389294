"""``lxfs stop|start --all`` against a real daemon: the stop order of ``boot.stop.priority``,
seen in the order of the daemon's ``instance-stopped`` events."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.integration

PRIORITIES = {"high": "10", "mid": "5", "low": "0"}


class EventReader:
    """``cat events`` in the background, its lifecycle events collected in order."""

    def __init__(self, d: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(["cat", str(d.path("events"))], stdout=subprocess.PIPE,
                                     text=True)
        threading.Thread(target=self._read, daemon=True).start()
        for i in range(100):  # subscribed once a probe's own events come through
            os.mkdir(d.path("instances", f"probe{i}"))
            os.rmdir(d.path("instances", f"probe{i}"))
            time.sleep(0.05)
            if self.events:
                return
        raise AssertionError("no events from the daemon")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            if event["type"] == "lifecycle":
                self.events.append(event)

    def names(self, action: str) -> list[str]:
        """The instances of ``action`` events, in the order the daemon emitted them."""
        prefix = "/1.0/instances/"
        return [e["metadata"]["source"].removeprefix(prefix) for e in self.events
                if e["metadata"]["action"] == action]

    def wait_for(self, action: str, count: int, timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.names(action)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.names(action)

    def clear(self) -> None:
        self.events.clear()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)


@pytest.fixture
def events(daemon_with_busybox: Any) -> Iterator[EventReader]:
    reader = EventReader(daemon_with_busybox)
    try:
        yield reader
    finally:
        reader.close()


def states(d: Any) -> dict[str, str]:
    return {name: d.read("instances", name, "state") for name in PRIORITIES}


def test_stop_all_by_priority_then_start_all(daemon_with_busybox: Any,
                                             events: EventReader) -> None:
    d = daemon_with_busybox
    for name, priority in sorted(PRIORITIES.items()):  # launched in another order (by name)
        d.cli("launch", "busybox", name, "-c", f"boot.stop.priority={priority}")
    assert set(states(d).values()) == {"RUNNING"}
    events.clear()

    d.cli("stop", "--all", timeout=120)  # graceful: busybox's init halts on its signal
    assert events.wait_for("instance-stopped", 3) == ["high", "mid", "low"]
    assert set(states(d).values()) == {"STOPPED"}

    events.clear()
    d.cli("start", "--all")
    assert sorted(events.wait_for("instance-started", 3)) == ["high", "low", "mid"]
    assert set(states(d).values()) == {"RUNNING"}

    # the order holds for --force too, and follows a change of the key
    d.cli("config", "set", "low", "boot.stop.priority", "20")
    events.clear()
    d.cli("stop", "--all", "--force")
    assert events.wait_for("instance-stopped", 3) == ["low", "high", "mid"]
    assert set(states(d).values()) == {"STOPPED"}
    # nothing left to stop: no error, no event
    d.cli("stop", "--all")
    time.sleep(0.3)
    assert events.names("instance-stopped") == ["low", "high", "mid"]
