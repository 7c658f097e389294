"""SQLite persistence (WAL). Blocking: the server calls it from worker threads.

Records are JSON documents keyed by name; every change is one transaction, so the state on disk
is never half-written.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from lxfs.errors import LxfsError

SCHEMA_VERSION = 1

_TABLES = {
    "instances": "name TEXT PRIMARY KEY, data TEXT NOT NULL",
    "images": "fingerprint TEXT PRIMARY KEY, data TEXT NOT NULL",
    "aliases": "name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, description TEXT NOT NULL",
    "profiles": "name TEXT PRIMARY KEY, data TEXT NOT NULL",
    "pools": "name TEXT PRIMARY KEY, data TEXT NOT NULL",
    "projects": "name TEXT PRIMARY KEY, data TEXT NOT NULL",
    # operations in progress (intent written before the first step, removed after the last):
    # what a crash interrupted, for the next start to finish or undo
    "journal": "id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
               "target TEXT NOT NULL, data TEXT NOT NULL, started REAL NOT NULL",
    "server_config": "key TEXT PRIMARY KEY, value TEXT NOT NULL",
    # records of plugins (networks...), by kind
    "documents": "kind TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL, "
                 "PRIMARY KEY (kind, name)",
}
_KEYS = {"instances": "name", "images": "fingerprint", "profiles": "name", "pools": "name",
         "projects": "name"}


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        # root's alone (SQLite gives the -wal and -shm files the database file's mode)
        read_only = False
        try:
            for part in (path, path.with_name(path.name + "-wal"),
                         path.with_name(path.name + "-shm")):
                if part == path or part.exists():
                    os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
                    os.chmod(part, 0o600)
        except OSError as exc:
            if exc.errno != errno.EROFS or not path.exists():
                raise
            read_only = True  # a read-only data directory: the state is served as it is
        if read_only:
            self._conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True,
                                         check_same_thread=False, isolation_level=None)
        else:
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        try:
            with self.transaction() as cur:
                for table, columns in _TABLES.items():
                    cur.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
                cur.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except LxfsError:
            # full or read-only: the state can still be read if the tables are there
            with self._lock:
                present = {r[0] for r in self._conn.execute(
                    "SELECT name FROM sqlite_master WHERE type='table'")}
            if not set(_TABLES) <= present:
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """One atomic transaction: everything inside commits together or not at all. A
        full or read-only data directory is refused with ENOSPC or EROFS and its reason."""
        with self._lock, _storage_errors(self.path):
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                with suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")

    # --- documents ------------------------------------------------------------------------

    def load(self, table: str) -> dict[str, dict[str, Any]]:
        key = _KEYS[table]
        with self._lock:
            rows = self._conn.execute(f"SELECT {key}, data FROM {table}").fetchall()
        return {k: json.loads(d) for k, d in rows}

    def put(self, table: str, name: str, data: dict[str, Any]) -> None:
        key = _KEYS[table]
        with self.transaction() as cur:
            cur.execute(f"INSERT OR REPLACE INTO {table} ({key}, data) VALUES (?, ?)",
                        (name, json.dumps(data)))

    def delete(self, table: str, name: str) -> None:
        key = _KEYS[table]
        with self.transaction() as cur:
            cur.execute(f"DELETE FROM {table} WHERE {key} = ?", (name,))

    def rename(self, table: str, old: str, new: str, data: dict[str, Any]) -> None:
        key = _KEYS[table]
        with self.transaction() as cur:
            cur.execute(f"DELETE FROM {table} WHERE {key} = ?", (old,))
            cur.execute(f"INSERT INTO {table} ({key}, data) VALUES (?, ?)",
                        (new, json.dumps(data)))

    def apply(self, changes: list[tuple[str, str, dict[str, Any] | None]]) -> None:
        """Several puts (data) and deletes (None) across tables, in one transaction."""
        with self.transaction() as cur:
            for table, name, data in changes:
                key = _KEYS[table]
                if data is None:
                    cur.execute(f"DELETE FROM {table} WHERE {key} = ?", (name,))
                else:
                    cur.execute(f"INSERT OR REPLACE INTO {table} ({key}, data) VALUES (?, ?)",
                                (name, json.dumps(data)))

    # --- the journal of operations ----------------------------------------------------------

    def journal_begin(self, kind: str, target: str, data: dict[str, Any]) -> int:
        """Record the intent of an operation; returns its id for ``journal_end``."""
        import time

        with self.transaction() as cur:
            cur.execute("INSERT INTO journal (kind, target, data, started) VALUES (?, ?, ?, ?)",
                        (kind, target, json.dumps(data), time.time()))
            return int(cur.lastrowid or 0)

    def journal_end(self, op_id: int) -> None:
        with self.transaction() as cur:
            cur.execute("DELETE FROM journal WHERE id = ?", (op_id,))

    def journal_pending(self) -> list[tuple[int, str, str, dict[str, Any]]]:
        """Operations begun and never ended, oldest first: (id, kind, target, data)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, kind, target, data FROM journal ORDER BY id").fetchall()
        return [(i, k, t, json.loads(d)) for i, k, t, d in rows]

    # --- aliases and server config ----------------------------------------------------------

    def load_aliases(self) -> dict[str, tuple[str, str]]:
        with self._lock:
            rows = self._conn.execute("SELECT name, fingerprint, description FROM aliases")
            return {n: (f, d) for n, f, d in rows.fetchall()}

    def put_alias(self, name: str, fingerprint: str, description: str = "") -> None:
        with self.transaction() as cur:
            cur.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?, ?)",
                        (name, fingerprint, description))

    def delete_alias(self, name: str) -> None:
        with self.transaction() as cur:
            cur.execute("DELETE FROM aliases WHERE name = ?", (name,))

    def rename_alias(self, old: str, new: str) -> None:
        with self.transaction() as cur:
            cur.execute("UPDATE aliases SET name = ? WHERE name = ?", (new, old))

    def delete_image(self, fingerprint: str) -> None:
        """Delete an image and the aliases pointing to it, atomically."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM aliases WHERE fingerprint = ?", (fingerprint,))
            cur.execute("DELETE FROM images WHERE fingerprint = ?", (fingerprint,))

    # --- plugins' documents ----------------------------------------------------------------

    def load_documents(self, kind: str) -> dict[str, dict[str, Any]]:
        """All records of one kind a plugin stored (``networks``...)."""
        with self._lock:
            rows = self._conn.execute("SELECT name, data FROM documents WHERE kind = ?",
                                      (kind,)).fetchall()
        return {n: json.loads(d) for n, d in rows}

    def put_document(self, kind: str, name: str, data: dict[str, Any]) -> None:
        with self.transaction() as cur:
            cur.execute("INSERT OR REPLACE INTO documents VALUES (?, ?, ?)",
                        (kind, name, json.dumps(data)))

    def delete_document(self, kind: str, name: str) -> None:
        with self.transaction() as cur:
            cur.execute("DELETE FROM documents WHERE kind = ? AND name = ?", (kind, name))

    def load_server_config(self) -> dict[str, str]:
        with self._lock:
            return dict(self._conn.execute("SELECT key, value FROM server_config").fetchall())

    def set_server_config(self, key: str, value: str | None) -> None:
        with self.transaction() as cur:
            if value is None:
                cur.execute("DELETE FROM server_config WHERE key = ?", (key,))
            else:
                cur.execute("INSERT OR REPLACE INTO server_config VALUES (?, ?)", (key, value))


@contextmanager
def _storage_errors(path: Path) -> Iterator[None]:
    """SQLite's errors of a full or read-only disk, as the errors users see."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc).lower()
        if "full" in text:
            raise LxfsError(f"the data directory is full ({path.parent}): nothing was "
                            "changed; free some space", errno.ENOSPC) from None
        if "readonly" in text or "read-only" in text:
            raise LxfsError(f"the data directory is read-only ({path.parent}): nothing was "
                            "changed", errno.EROFS) from None
        if "disk i/o error" in text:
            raise LxfsError(f"the data directory cannot be written ({path.parent}: I/O "
                            "error): nothing was changed", errno.EIO) from None
        raise
