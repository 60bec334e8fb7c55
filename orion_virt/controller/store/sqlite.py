"""SQLite store: one file, safe for many threads and processes (``BEGIN IMMEDIATE``, WAL)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from ... import fileperm
from ..exceptions import StoreError
from .base import Store

_SCHEMA = "CREATE TABLE IF NOT EXISTS docs (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


class SqliteStore(Store):
    """Each operation opens and closes its own connection (none stays open between calls, so
    a process may fork safely); writers serialise on the database lock, so commits never
    conflict. Errors (unwritable directory, corrupt file) raise ``StoreError``."""

    def __init__(self, path: str | Path, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        try:
            fileperm.make_dir(self.path.parent)
            # 0640 before SQLite opens it: its -wal and -shm files take the database's mode
            fileperm.create(self.path, fileperm.STORE_MODE)
            for extra in ("-wal", "-shm"):
                fileperm.restrict(f"{self.path}{extra}", fileperm.STORE_MODE)
            conn = self._connect()
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(_SCHEMA)
            finally:
                conn.close()
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"{self.describe()}: cannot open database: {e}") from None

    def describe(self) -> str:
        return f"sqlite://{self.path}"

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _begin(self) -> tuple[dict[str, str], Any]:
        try:
            conn = self._connect()
        except sqlite3.Error as e:
            raise StoreError(f"{self.describe()}: {e}") from None
        try:
            conn.execute("BEGIN IMMEDIATE")
            docs = dict(conn.execute("SELECT key, value FROM docs"))
        except sqlite3.Error as e:
            conn.close()
            raise StoreError(f"{self.describe()}: {e}") from None
        return docs, conn

    def _commit(self, handle: Any, puts: dict[str, str], deletes: list[str]) -> bool:
        conn: sqlite3.Connection = handle
        try:
            conn.executemany("INSERT OR REPLACE INTO docs (key, value) VALUES (?, ?)",
                             puts.items())
            conn.executemany("DELETE FROM docs WHERE key = ?", [(k,) for k in deletes])
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            self._abort(conn)
            raise StoreError(f"{self.describe()}: {e}") from None
        conn.close()
        return True

    def _abort(self, handle: Any) -> None:
        conn: sqlite3.Connection = handle
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        finally:
            conn.close()
