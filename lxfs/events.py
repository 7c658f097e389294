"""The event bus behind the ``events`` file (LXD's event format, one JSON object per line)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import trio


def timestamp() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


class EventBus:
    """Fan-out of events to subscribers; a slow subscriber loses events, never blocks others."""

    def __init__(self, buffer: int = 1024) -> None:
        self._buffer = buffer
        self._subscribers: set[trio.MemorySendChannel[bytes]] = set()
        #: called with each event as it is emitted (the mount drops what it kept of values)
        self.listeners: list[Callable[[bytes], None]] = []

    def subscribe(self) -> trio.MemoryReceiveChannel[bytes]:
        send, receive = trio.open_memory_channel[bytes](self._buffer)
        self._subscribers.add(send)
        return receive

    def unsubscribe(self, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        for send in list(self._subscribers):
            # channels of one pair share their state; compare through statistics identity
            if send._state is receive._state:  # noqa: SLF001
                self._subscribers.discard(send)
                send.close()
        receive.close()

    def emit(self, event_type: str, metadata: dict[str, Any], project: str = "default"
             ) -> None:
        line = json.dumps({
            "type": event_type,
            "timestamp": timestamp(),
            "metadata": metadata,
            "location": "none",
            "project": project,
        }).encode() + b"\n"
        for send in list(self._subscribers):
            try:
                send.send_nowait(line)
            except trio.WouldBlock:
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(send)
        for listener in self.listeners:
            listener(line)

    def lifecycle(self, action: str, source: str, **context: Any) -> None:
        """A lifecycle event: ``instance-started``, ``image-created``...; its project is the
        source's ``?project=`` (``default`` without)."""
        _, _, query = source.partition("?project=")
        self.emit("lifecycle", {"action": action, "source": source, "context": context},
                  project=query or "default")

    def log(self, level: str, message: str, **context: Any) -> None:
        self.emit("logging", {"level": level, "message": message, "context": context})
