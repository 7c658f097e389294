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
    """Fan-out of events to subscribers; a slow subscriber loses events, never blocks others.
    Each event belongs to a project (``project``) or to none (logging: every subscriber
    sees it); a subscriber follows one project or all of them, as LXD's listeners do."""

    def __init__(self, buffer: int = 1024) -> None:
        self._buffer = buffer
        #: each subscriber's channel → the project it follows (None: every project)
        self._subscribers: dict[trio.MemorySendChannel[bytes], str | None] = {}
        #: called with each event as it is emitted (the mount drops what it kept of values)
        self.listeners: list[Callable[[bytes], None]] = []

    def subscribe(self, project: str | None = None) -> trio.MemoryReceiveChannel[bytes]:
        """A channel of the events of ``project`` and of those of no project (``None``: of
        every project)."""
        send, receive = trio.open_memory_channel[bytes](self._buffer)
        self._subscribers[send] = project
        return receive

    def unsubscribe(self, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        for send in list(self._subscribers):
            # channels of one pair share their state; compare through statistics identity
            if send._state is receive._state:  # noqa: SLF001
                del self._subscribers[send]
                send.close()
        receive.close()

    def emit(self, event_type: str, metadata: dict[str, Any], project: str | None = "default"
             ) -> None:
        """Send an event of ``project`` (None: of no project, for every subscriber)."""
        event: dict[str, Any] = {
            "type": event_type,
            "timestamp": timestamp(),
            "metadata": metadata,
            "location": "none",
        }
        if project is not None:
            event["project"] = project
        line = json.dumps(event).encode() + b"\n"
        for send, follows in list(self._subscribers.items()):
            if project is not None and follows is not None and follows != project:
                continue
            try:
                send.send_nowait(line)
            except trio.WouldBlock:
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.pop(send, None)
        for listener in self.listeners:
            listener(line)

    def lifecycle(self, action: str, source: str, **context: Any) -> None:
        """A lifecycle event: ``instance-started``, ``image-created``...; its project is the
        source's ``?project=`` (``default`` without), a project's own events belong to it."""
        path, _, query = source.partition("?project=")
        project = query or "default"
        if path.startswith("/1.0/projects/"):
            project = path.removeprefix("/1.0/projects/").split("/", 1)[0]
        self.emit("lifecycle", {"action": action, "source": source, "context": context},
                  project=project)

    def log(self, level: str, message: str, **context: Any) -> None:
        """A logging event (of no project, as LXD's)."""
        self.emit("logging", {"level": level, "message": message, "context": context},
                  project=None)
