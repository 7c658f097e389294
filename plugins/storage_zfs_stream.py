"""The zfs driver's migration streams as commands (``stream_send_command``,
``stream_receive_command``): ``python -m lxfs_plugins.storage_zfs_stream send SNAP [PARENT]``
writes ``SNAP``'s stream (incremental from ``PARENT``) to stdout with ``lzc_send``;
``... receive SNAP`` makes snapshot ``SNAP`` (its dataset too, on a full stream) from
stdin with ``lzc_receive``, rolling the dataset back to the stream's parent if needed. A
failure says why on stderr and exits 1; a cut stream receives nothing (ZFS discards it).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None, stdin: int = 0, stdout: int = 1) -> int:
    parser = argparse.ArgumentParser(prog="lxfs_plugins.storage_zfs_stream")
    sub = parser.add_subparsers(dest="action", required=True)
    send = sub.add_parser("send", help="write a snapshot's stream to stdout")
    send.add_argument("snapshot")
    send.add_argument("parent", nargs="?", default="")
    receive = sub.add_parser("receive", help="make a snapshot from the stream on stdin")
    receive.add_argument("snapshot")
    args = parser.parse_args(argv)
    try:
        import libzfs_core as lzc
    except ImportError as exc:
        print(f"zfs {args.action}: pyzfs (module libzfs_core) is missing: {exc}",
              file=sys.stderr)
        return 1
    try:
        if args.action == "send":
            lzc.lzc_send(args.snapshot.encode(),
                         args.parent.encode() if args.parent else None, stdout)
        else:
            dataset = args.snapshot.split("@", 1)[0]
            # a new dataset: mounted by lxfs where it wants it, as the pool's others
            props = None if lzc.lzc_exists(dataset.encode()) else {b"mountpoint": b"legacy"}
            lzc.lzc_receive(args.snapshot.encode(), stdin, force=True, props=props)
    except (lzc.exceptions.ZFSError, OSError) as exc:
        print(f"zfs {args.action} {args.snapshot}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
