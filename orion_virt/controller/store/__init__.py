"""Stores for the pool behind one interface (:class:`Store`): SQLite (embedded) and etcd v3."""

from __future__ import annotations

from ...errors import ConfigError
from .base import Store, decode, encode
from .etcd import EtcdStore
from .sqlite import SqliteStore

DEFAULT_SQLITE_PATH = "/var/lib/orion/controller.db"

__all__ = ["DEFAULT_SQLITE_PATH", "EtcdStore", "SqliteStore", "Store", "decode", "encode",
           "open_store"]


def open_store(url: str | None) -> Store:
    """``None``/``""``: SQLite at the default path; ``sqlite:///PATH``: SQLite at ``/PATH``;
    ``http(s)://HOST:PORT`` or ``etcd://HOST:PORT``: etcd's v3 JSON gateway. Anything else is a
    ``ConfigError``; an unreachable etcd or unwritable file is a ``StoreError`` on first use."""
    if not url:
        return SqliteStore(DEFAULT_SQLITE_PATH)
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        if not path.strip("/"):
            raise ConfigError(f"--kv {url!r}: sqlite URL needs a file path, e.g. "
                              f"sqlite:///var/lib/orion/controller.db")
        return SqliteStore(path)
    if url.startswith("etcd://"):
        url = "http://" + url[len("etcd://"):]
    if url.startswith(("http://", "https://")):
        return EtcdStore(url)
    raise ConfigError(f"--kv {url!r}: expected http://HOST:2379 (etcd) or sqlite:///PATH")
