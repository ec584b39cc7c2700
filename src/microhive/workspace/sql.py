"""A tiny async SQL port, so the outbox relay and webhook log run on either engine.

The relay and the webhook dispatcher need a handful of plain statements. They
write them once, with ``?`` placeholders, in the SQL both SQLite and PostgreSQL
accept (``ON CONFLICT``, ``RETURNING``), and run them through a :class:`SqlPort`:

* :class:`SqlitePort` runs them on the embedded store's connection, in the
  event-loop thread (statements are sub-millisecond and never awaited midway,
  so a transaction cannot interleave with another task's);
* :class:`PostgresPort` rewrites ``?`` to ``$1, $2, ...`` and uses an asyncpg pool.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

__all__ = ["PostgresPort", "SqlPort", "SqlitePort"]

Row = tuple[Any, ...]


class SqlPort(Protocol):
    """What the relay and the dispatcher need from a database."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; returns the number of rows it changed."""
        ...

    def transaction(self) -> Any:
        """``async with port.transaction() as tx:`` -- tx is a port bound to the txn."""
        ...


class SqlitePort:
    """SqlPort over one sqlite3 connection (autocommit mode, explicit BEGIN)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [tuple(r) for r in self.conn.execute(sql, args).fetchall()]

    async def execute(self, sql: str, *args: Any) -> int:
        return self.conn.execute(sql, args).rowcount

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlitePort]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")


_PLACEHOLDER = re.compile(r"\?")


def to_dollar(sql: str) -> str:
    """``?`` placeholders -> ``$1, $2, ...`` (our statements never contain a literal '?')."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class PostgresPort:
    """SqlPort over an asyncpg pool (or one connection, inside a transaction).

    The pool's connections have ``search_path`` set to the workspace schema, so
    unqualified table names resolve there.
    """

    def __init__(self, pool: Any, conn: Any = None) -> None:
        self.pool = pool
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        target = self._conn or self.pool
        return [tuple(r) for r in await target.fetch(to_dollar(sql), *args)]

    async def execute(self, sql: str, *args: Any) -> int:
        target = self._conn or self.pool
        status: str = await target.execute(to_dollar(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresPort]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield PostgresPort(self.pool, conn)
