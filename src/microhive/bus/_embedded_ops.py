"""The embedded bus's schema and the operations on it.

Each operation runs on the bus thread (:class:`~._embedded_log.LogThread`), or on
its caller's when it may, inside the transaction opened for it; none commits.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

from microhive.bus._core import ConsumerSpec, subject_matches
from microhive.errors import InvalidInput

__all__ = [
    "FANOUT_STALE",
    "SCHEMA",
    "check_claim",
    "housekeeping",
    "op_claim",
    "op_drop_consumer",
    "op_open_consumer",
    "op_pending",
    "op_ping",
    "op_publish",
    "op_settle",
]

_SCAN = 512
#: Unmatched messages after a cursor that make an idle poll move it on (a write).
_SKIP_AHEAD = 64
FANOUT_STALE = 600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    headers TEXT NOT NULL,
    data BLOB NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_ts ON messages(ts);
CREATE TABLE IF NOT EXISTS dedup (
    msg_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, expires REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumers (
    name TEXT PRIMARY KEY, pattern TEXT NOT NULL, cursor INTEGER NOT NULL,
    durable INTEGER NOT NULL, seen REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    consumer TEXT NOT NULL, seq INTEGER NOT NULL, deliveries INTEGER NOT NULL, due REAL NOT NULL,
    PRIMARY KEY (consumer, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_due ON pending(consumer, due);
"""


def op_publish(
    conn: sqlite3.Connection, subject: str, data: bytes, headers: str, msg_id: str, window: float
) -> tuple[int, bool]:
    now = time.time()
    row = conn.execute("SELECT seq, expires FROM dedup WHERE msg_id = ?", (msg_id,)).fetchone()
    if row is not None and row[1] > now:
        return int(row[0]), True
    cur = conn.execute(
        "INSERT INTO messages(subject, msg_id, headers, data, ts) VALUES (?, ?, ?, ?, ?)",
        (subject, msg_id, headers, data, now),
    )
    seq = int(cur.lastrowid or 0)
    conn.execute(
        "INSERT OR REPLACE INTO dedup(msg_id, seq, expires) VALUES (?, ?, ?)",
        (msg_id, seq, now + window),
    )
    return seq, False


def op_open_consumer(conn: sqlite3.Connection, spec: ConsumerSpec) -> None:
    row = conn.execute("SELECT pattern FROM consumers WHERE name = ?", (spec.name,)).fetchone()
    if row is not None:
        if row[0] != spec.pattern:
            raise InvalidInput(
                f"queue group {spec.name!r} already subscribes to {row[0]!r}, not {spec.pattern!r}"
            )
        return
    last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0]
    start = spec.start
    if start.kind == "beginning":
        cursor = 0
    elif start.kind == "sequence" and start.sequence is not None:
        cursor = min(start.sequence - 1, last)
    elif start.kind == "time" and start.time is not None:
        before = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE ts < ?", (start.time,)
        ).fetchone()[0]
        cursor = int(before)
    else:
        cursor = last
    conn.execute(
        "INSERT INTO consumers(name, pattern, cursor, durable, seen) VALUES (?, ?, ?, ?, ?)",
        (spec.name, spec.pattern, cursor, int(spec.durable), time.time()),
    )


def op_claim(
    conn: sqlite3.Connection,
    name: str,
    pattern: str,
    want: int,
    ack_wait: float,
    touch: bool,
    acks: tuple[int, ...] = (),
) -> tuple[list[tuple[Any, ...]], float | None]:
    """Settle ``acks`` (the member's acks since its last claim), then hand out up to
    ``want`` messages: expired leases first, then new ones."""
    conn.executemany(
        "DELETE FROM pending WHERE consumer = ? AND seq = ?", [(name, s) for s in acks]
    )
    now = time.time()
    claimed: list[tuple[int, int]] = []  # (seq, deliveries)
    for seq, deliveries in conn.execute(
        "SELECT seq, deliveries FROM pending WHERE consumer = ? AND due <= ? ORDER BY due LIMIT ?",
        (name, now, want),
    ).fetchall():
        claimed.append((seq, deliveries + 1))
    conn.executemany(
        "UPDATE pending SET deliveries = ?, due = ? WHERE consumer = ? AND seq = ?",
        [(d, now + ack_wait, name, s) for s, d in claimed],
    )
    row = conn.execute("SELECT cursor FROM consumers WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise InvalidInput(f"consumer {name!r} no longer exists (removed as stale?)")
    cursor = int(row[0])
    fresh: list[int] = []
    while len(claimed) + len(fresh) < want:
        rows = conn.execute(
            "SELECT seq, subject FROM messages WHERE seq > ? ORDER BY seq LIMIT ?", (cursor, _SCAN)
        ).fetchall()
        if not rows:
            break
        for seq, subject in rows:
            cursor = seq
            if subject_matches(pattern, subject):
                fresh.append(seq)
                if len(claimed) + len(fresh) >= want:
                    break
    conn.executemany(
        "INSERT OR REPLACE INTO pending(consumer, seq, deliveries, due) VALUES (?, ?, 1, ?)",
        [(name, s, now + ack_wait) for s in fresh],
    )
    if cursor != int(row[0]) or touch:  # an idle poll writes nothing
        conn.execute(
            "UPDATE consumers SET cursor = ?, seen = ? WHERE name = ?", (cursor, now, name)
        )
    claimed.extend((s, 1) for s in fresh)
    out: list[tuple[Any, ...]] = []
    if claimed:
        counts = dict(claimed)
        marks = ",".join("?" * len(counts))
        for r in conn.execute(
            f"SELECT seq, subject, data, headers, msg_id, ts FROM messages WHERE seq IN ({marks})",
            list(counts),
        ).fetchall():
            out.append((*r, counts.pop(r[0])))
        for gone in counts:  # removed by retention: nothing left to deliver
            conn.execute("DELETE FROM pending WHERE consumer = ? AND seq = ?", (name, gone))
        out.sort(key=lambda r: r[0])
    next_due = conn.execute("SELECT MIN(due) FROM pending WHERE consumer = ?", (name,)).fetchone()[
        0
    ]
    return out, next_due


def check_claim(
    conn: sqlite3.Connection,
    name: str,
    pattern: str,
    want: int,
    ack_wait: float,
    touch: bool,
    acks: tuple[int, ...] = (),
) -> tuple[list[tuple[Any, ...]], float | None] | None:
    """Read-only: ``_op_claim``'s answer when it has nothing to write, else None (claim).

    Messages after the cursor that the pattern does not match are looked at
    again next time; once there are many, the claim runs to move the cursor on.
    """
    if touch or acks:
        return None
    row = conn.execute("SELECT cursor FROM consumers WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None  # the claim says why
    next_due = conn.execute("SELECT MIN(due) FROM pending WHERE consumer = ?", (name,)).fetchone()[
        0
    ]
    if next_due is not None and next_due <= time.time():
        return None
    rows = conn.execute(
        "SELECT subject FROM messages WHERE seq > ? ORDER BY seq LIMIT ?", (row[0], _SKIP_AHEAD)
    ).fetchall()
    if len(rows) >= _SKIP_AHEAD or any(subject_matches(pattern, r[0]) for r in rows):
        return None
    return [], next_due


def op_settle(
    conn: sqlite3.Connection, name: str, seqs: tuple[int, ...], due: float | None
) -> None:
    """Acknowledge the leases ``seqs`` (``due`` None), or hand them out again at ``due``."""
    if due is None:
        conn.executemany(
            "DELETE FROM pending WHERE consumer = ? AND seq = ?", [(name, s) for s in seqs]
        )
    else:
        conn.executemany(
            "UPDATE pending SET due = ? WHERE consumer = ? AND seq = ?",
            [(due, name, s) for s in seqs],
        )


def op_pending(conn: sqlite3.Connection, name: str, pattern: str) -> tuple[int, int]:
    """(messages after the consumer's cursor matching its pattern, its unsettled leases)."""
    row = conn.execute("SELECT cursor FROM consumers WHERE name = ?", (name,)).fetchone()
    if row is None:
        return 0, 0
    waiting = sum(
        count
        for subject, count in conn.execute(
            "SELECT subject, COUNT(*) FROM messages WHERE seq > ? GROUP BY subject", (row[0],)
        )
        if subject_matches(pattern, subject)
    )
    unacked = conn.execute("SELECT COUNT(*) FROM pending WHERE consumer = ?", (name,)).fetchone()
    return waiting, int(unacked[0])


def op_drop_consumer(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("DELETE FROM pending WHERE consumer = ?", (name,))
    conn.execute("DELETE FROM consumers WHERE name = ?", (name,))


def housekeeping(retention: float) -> Callable[[sqlite3.Connection, float], None]:
    def run(conn: sqlite3.Connection, now: float) -> None:
        conn.execute("DELETE FROM dedup WHERE expires < ?", (now,))
        conn.execute("DELETE FROM messages WHERE ts < ?", (now - retention,))
        for (name,) in conn.execute(
            "SELECT name FROM consumers WHERE durable = 0 AND seen < ?", (now - FANOUT_STALE,)
        ).fetchall():
            op_drop_consumer(conn, name)

    return run


def op_ping(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1").fetchone()
