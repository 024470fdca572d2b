"""`libsql://`, `http(s)://`, `ws(s)://` URLs: a libSQL server (sqld, Turso) via libsql-client.

A libsql-client batch runs as one transaction on the server, so CAS writes and their
checkpoint commit together, in one round trip. The auth token comes from
LIBSQL_AUTH_TOKEN, never from the URL (a URL lands in argv and shell history).
"""

from __future__ import annotations

import os
from typing import Sequence

import libsql_client

from keyrotate.db.base import (
    DEFAULT_BATCH_SIZE,
    CasWrite,
    Statement,
    Target,
    Value,
    bounded_scan_page,
    cas_statements,
)
from keyrotate.db.urls import refuse_credentials
from keyrotate.errors import ConfigError, StoreError, StoreUnavailable


class LibsqlRemoteStore:
    preferred_batch_size = DEFAULT_BATCH_SIZE

    def __init__(self, url: str):
        refuse_credentials(url)  # also checked by open_database; stores can be made directly
        self.display_url = url
        try:
            self.client = libsql_client.create_client_sync(
                url, auth_token=os.environ.get("LIBSQL_AUTH_TOKEN") or None)
        except Exception as e:  # libsql-client raises several types for a bad URL
            raise ConfigError(f"cannot use database URL {url}: {e}") from None
        try:
            self.query("SELECT 1")
        except StoreError:
            self.client.close()
            raise

    def query(self, sql: str, params: Sequence[Value] = ()) -> list[tuple[Value, ...]]:
        try:
            rs = self.client.execute(sql, list(params))
        except Exception as e:
            raise _store_error(f"query failed on {self.display_url}", e) from None
        return [tuple(row) for row in rs.rows]

    def scan_page(self, target: Target, after: Value, first: bool, limit: int,
                  max_bytes: int) -> list[tuple[Value, Value]]:
        return bounded_scan_page(self, target, after, first, limit, max_bytes)

    def apply(self, writes: Sequence[CasWrite], target: Target | None,
              statements: Sequence[Statement]) -> list[bool]:
        stmts = cas_statements(target, writes) + list(statements)
        try:
            results = self.client.batch(
                [libsql_client.Statement(s.sql, list(s.params)) for s in stmts])
        except Exception as e:
            raise _store_error(f"write failed on {self.display_url}", e) from None
        return [rs.rows_affected == 1 for rs in results[:len(writes)]]

    def restore_point(self) -> None:
        return None  # no history kept: back the file or server up yourself

    def close(self) -> None:
        self.client.close()


def _store_error(what: str, e: Exception) -> StoreError:
    """SQL errors are the caller's to fix; a server that does not answer (or a locked
    database) may come back: resumable, exit 3."""
    import libsql_client

    message = f"{what}: {_reason(e)}"
    sql_error = isinstance(e, libsql_client.LibsqlError) and not any(
        t in str(e).upper() for t in ("SQLITE_BUSY", "LOCKED", "TIMEOUT"))
    return StoreError(message) if sql_error else StoreUnavailable(message)


def _reason(e: Exception) -> str:
    """libsql-client errors carry the server's message; never include statement params."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
