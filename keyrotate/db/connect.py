"""Open the database a URL names: an SQLite file, a libSQL server or Cloudflare D1."""

from __future__ import annotations

from keyrotate.db.base import RowStore
from keyrotate.db.d1 import D1Store
from keyrotate.db.sqlite_file import SqliteFileStore
from keyrotate.db.urls import (
    D1_SCHEME,
    DB_URL_HELP,
    FILE_SCHEME,
    LIBSQL_SCHEMES,
    refuse_credentials,
)
from keyrotate.errors import ConfigError


def open_database(url: str) -> RowStore:
    """Open the database a --db URL names. Raises ConfigError for unknown or bad URLs."""
    refuse_credentials(url)
    if url.startswith(FILE_SCHEME):
        return SqliteFileStore(url)
    if url.startswith(LIBSQL_SCHEMES):
        # imported when used: libsql-client brings aiohttp, which costs every process
        # (and every forked crypto worker) tens of MB and a second of start-up
        from keyrotate.db.libsql_remote import LibsqlRemoteStore

        return LibsqlRemoteStore(url)
    if url.startswith(D1_SCHEME):
        return D1Store(url)
    raise ConfigError(f"unsupported database URL {url!r}: use {DB_URL_HELP}")
