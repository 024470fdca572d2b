"""Row stores: where encrypted rows and keyrotate's journal live."""

from __future__ import annotations

from keyrotate.errors import ConfigError
from keyrotate.store.base import RowStore

REMOTE_SCHEMES = ("libsql://", "http://", "https://", "ws://", "wss://")


def open_store(url: str) -> RowStore:
    """Open the store a --db URL names. Raises ConfigError for unknown or bad URLs."""
    if url.startswith("file:"):
        from keyrotate.store.sqlite_file import SqliteFileStore

        return SqliteFileStore(url)
    if url.startswith(REMOTE_SCHEMES):
        from keyrotate.store.libsql_remote import LibsqlRemoteStore

        return LibsqlRemoteStore(url)
    if url.startswith("d1://"):
        from keyrotate.store.d1 import D1Store

        return D1Store(url)
    raise ConfigError(f"unsupported database URL {url!r}: use file:PATH, libsql://, "
                      "http(s)://, ws(s)://, d1://ACCOUNT_ID/DATABASE_ID")
