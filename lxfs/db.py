"""SQLite persistence (WAL). Blocking: the server calls it from worker threads.

Records are JSON documents keyed by name; every change is one transaction, so the state on disk
is never half-written.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

_TABLES = {
    "instances": "name TEXT PRIMARY KEY, data TEXT NOT NULL",
    "images": "fingerprint TEXT PRIMARY KEY, data TEXT NOT NULL",
    "aliases": "name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, description TEXT NOT NULL",
    "profiles": "name TEXT PRIMARY KEY, data TEXT NOT NULL",
    "pools": "name TEXT PRIMARY KEY, data TEXT NOT NULL",
    "projects": "name TEXT PRIMARY KEY, data TEXT NOT NULL",
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
        for part in (path, path.with_name(path.name + "-wal"),
                     path.with_name(path.name + "-shm")):
            if part == path or part.exists():
                os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
                os.chmod(part, 0o600)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self.transaction() as cur:
            for table, columns in _TABLES.items():
                cur.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
            cur.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """One atomic transaction: everything inside commits together or not at all."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
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
