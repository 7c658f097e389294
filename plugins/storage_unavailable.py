"""Stand-ins for LXD's storage drivers that lxfs cannot offer here: asking for one gets the
reason (EOPNOTSUPP) instead of "unknown driver"."""

from __future__ import annotations

from lxfs import hookimpl
from lxfs.storage import StorageDriver

REASONS = {
    "lvm": "LVM needs device-mapper, which this kernel does not have",
    "ceph": "Ceph RBD needs a Ceph cluster and the rbd kernel driver (device-mapper too)",
    "cephfs": "CephFS needs a Ceph cluster",
    "cephobject": "Ceph object storage needs a Ceph cluster",
    "powerflex": "PowerFlex needs a Dell PowerFlex cluster",
}


def _stand_in(name: str, reason: str) -> type[StorageDriver]:
    return type(f"Unavailable_{name}", (StorageDriver,),
                {"name": name, "unavailable": reason, "__module__": __name__})


@hookimpl
def lxfs_storage_drivers() -> list[type[StorageDriver]]:
    return [_stand_in(name, reason) for name, reason in REASONS.items()]
