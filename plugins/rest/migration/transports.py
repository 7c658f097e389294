"""LXD's native migration transports (``MigrationFSType`` ``BTRFS`` and ``ZFS``): the features
each negotiates in the migration headers, and the migration header each sends on the ``fs``
websocket before its streams (the source's snapshots with their ids; on a refresh, the
sink's reply narrows what is sent).

A storage driver declares the transports it streams with (``migration_transports``); the
streams themselves are the driver's (``stream_send_command``...), the same calls for every
transport. The protocol around them is one code path (``Source``/``Sink`` in this package)
parameterised by a ``Transport``; nothing here knows a driver.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from . import migrate_pb2 as pb


@dataclass
class Plan:
    """What a sink expects from the source: the streams in order (a snapshot's name, ``""``
    for the volume), the snapshots it has that go first (replaced or gone from the source),
    and its reply to the source's migration header (None: no reply)."""

    streams: list[str]
    drop: list[str]
    reply: dict[str, Any] | None


class Transport(ABC):
    """One native transport: its name (LXD's ``MigrationFSType``, as drivers declare it),
    the header field of its features, the features lxfs speaks, and the one without which a
    refresh cannot be incremental (it then goes by rsync)."""

    name: ClassVar[str]
    features_field: ClassVar[str]
    features: ClassVar[tuple[str, ...]]
    refresh_feature: ClassVar[str]

    @property
    def fs(self) -> int:
        return pb.MigrationFSType.Value(self.name)

    def features_of(self, header: Any) -> list[str]:
        """The features of this transport a header names (those lxfs speaks)."""
        if not header.HasField(self.features_field):
            return []
        message = getattr(header, self.features_field)
        return [name for name in self.features if getattr(message, name)]

    def set_features(self, header: Any, features: Iterable[str]) -> None:
        chosen = set(features)
        getattr(header, self.features_field).CopyFrom(getattr(pb, self.features_field)(
            **{name: name in chosen for name in self.features}))

    @abstractmethod
    def source_header(self, snapshots: list[tuple[str, str]]) -> dict[str, Any]:
        """The source's migration header: its ``(snapshot, id)`` pairs, oldest first."""

    @abstractmethod
    def to_send(self, reply: dict[str, Any], snapshots: list[tuple[str, str]]) -> list[str]:
        """The snapshots to send (oldest first) after the sink's reply on a refresh."""

    @abstractmethod
    def sink_plan(self, header: dict[str, Any] | None, offered: list[str],
                  have: dict[str, str] | None) -> Plan:
        """The sink's plan from the source's header (None when not sent), the snapshots
        offered (oldest first) and, on a refresh, the ids of those the sink has (by name:
        the id each was received from). ValueError: a header lxfs cannot take."""


def _entries(header: dict[str, Any] | None, key: str) -> list[dict[str, Any]] | None:
    value = (header or {}).get(key)
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else None


class BtrfsTransport(Transport):
    """LXD's BTRFS transport: a header of subvolumes (each snapshot with its uuid, then the
    volume); on a refresh the sink sends back the subvolumes it lacks (no snapshot of that
    name received from that uuid), and gets those as streams."""

    name = "BTRFS"
    features_field = "btrfsFeatures"
    features = ("migration_header", "header_subvolumes", "header_subvolume_uuids")
    refresh_feature = "header_subvolume_uuids"

    def source_header(self, snapshots: list[tuple[str, str]]) -> dict[str, Any]:
        return {"subvolumes": [{"path": "/", "snapshot": n, "readonly": True, "uuid": i}
                               for n, i in snapshots] +
                [{"path": "/", "snapshot": "", "readonly": False, "uuid": str(uuid.uuid4())}]}

    def to_send(self, reply: dict[str, Any], snapshots: list[tuple[str, str]]) -> list[str]:
        names = [n for n, _ in snapshots]
        return [v.get("snapshot") for v in _entries(reply, "subvolumes") or []
                if v.get("path") == "/" and v.get("snapshot") in names]

    def sink_plan(self, header: dict[str, Any] | None, offered: list[str],
                  have: dict[str, str] | None) -> Plan:
        subvolumes = _entries(header, "subvolumes")
        if subvolumes is None:
            subvolumes = [{"path": "/", "snapshot": n, "readonly": True, "uuid": ""}
                          for n in offered] + \
                [{"path": "/", "snapshot": "", "readonly": False, "uuid": ""}]
        if any(v.get("path") != "/" for v in subvolumes):
            raise ValueError("the source's volume holds nested subvolumes: not supported by "
                             "lxfs")
        reply = None
        if have is not None:
            subvolumes = [v for v in subvolumes if not v.get("snapshot") or not v.get("uuid")
                          or have.get(v["snapshot"]) != v.get("uuid")]
            reply = {"subvolumes": subvolumes}
        streams = [str(v.get("snapshot") or "") for v in subvolumes]
        return Plan(streams, [s for s in streams if s and s in (have or {})], reply)


class ZfsTransport(Transport):
    """LXD's ZFS transport: a header of the source's snapshots with their ZFS guids (kept by
    send/receive); on a refresh the sink keeps its snapshots that match the source's from the
    first on (an incremental stream needs its parent as the sink's latest snapshot), drops
    the others, replies with those it kept, and gets the rest as incremental streams."""

    name = "ZFS"
    features_field = "zfsFeatures"
    features = ("migration_header",)  # "compress" (sending blocks as stored) is not offered
    refresh_feature = "migration_header"

    def source_header(self, snapshots: list[tuple[str, str]]) -> dict[str, Any]:
        return {"snapshot_datasets": [{"name": n, "guid": i} for n, i in snapshots]}

    def to_send(self, reply: dict[str, Any], snapshots: list[tuple[str, str]]) -> list[str]:
        theirs = {str(d.get("guid")) for d in _entries(reply, "snapshot_datasets") or []}
        return [n for n, guid in snapshots if guid not in theirs]

    def sink_plan(self, header: dict[str, Any] | None, offered: list[str],
                  have: dict[str, str] | None) -> Plan:
        if have is None:
            return Plan([*offered, ""], [], None)
        datasets = [d for d in _entries(header, "snapshot_datasets") or []
                    if d.get("name") in offered]
        kept = 0
        for dataset in datasets:
            guid = str(dataset.get("guid") or "")
            if not guid or have.get(str(dataset["name"])) != guid:
                break
            kept += 1
        keep = [{"name": d["name"], "guid": str(d.get("guid"))} for d in datasets[:kept]]
        names = {d["name"] for d in keep}
        return Plan([*(str(d["name"]) for d in datasets[kept:]), ""],
                    [n for n in have if n not in names], {"snapshot_datasets": keep})


#: the native transports this bridge speaks, by name
TRANSPORTS: dict[str, Transport] = {t.name: t for t in (BtrfsTransport(), ZfsTransport())}


def native_transport(declared: Iterable[str]) -> Transport | None:
    """The first transport a pool's driver declares that this bridge speaks."""
    return next((TRANSPORTS[n] for n in declared if n in TRANSPORTS), None)


def offered_transport(offer: Any, declared: Iterable[str]) -> Transport | None:
    """The transport of a source's offer when the sink's pool declares it too."""
    try:
        name = pb.MigrationFSType.Name(offer.fs)
    except ValueError:
        return None
    return TRANSPORTS.get(name) if name in set(declared) else None
