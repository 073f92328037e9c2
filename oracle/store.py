"""Durable storage of accepted readings and of the settle transactions that carry them (SQLite).

Durability: WAL journal with ``synchronous=FULL``, so each commit fsyncs the WAL and an accepted
reading survives a power cut, not only a crash of the process. ``NORMAL`` would survive a SIGKILL
but could lose the last commits on power loss, breaking "nothing accepted is ever lost". The cost
is one fsync per commit (about 4 ms here, most of it waiting for the disk).

Group commit: accepted readings are inserted by one writer thread with its own connection. It takes
every request queued while its previous commit was on disk and stores them in one transaction (one
fsync), then answers each request's future; the API answers only then. So 200 concurrent requests
share a few fsyncs instead of queueing for 200, and the event loop verifies signatures meanwhile
instead of blocking in fsync.

A reading's life: ``pending`` (accepted, waiting) -> ``sending`` (in a settle transaction not yet
confirmed) -> one of ``settled`` (our transaction's ReadingsAccepted holds it), ``onchain`` (the
chain already held exactly this reading: another oracle relayed it), ``superseded`` (the chain
holds a newer reading of its meter, whose cumulative covers it), ``skipped`` (the contract
skipped it; ``skip_reason`` says why).

Retention: readings done (settled, onchain, superseded, skipped) and accepted longer ago than the
retention age are deleted, except each meter's newest, and so are old finished batches. SQLite
reuses the freed pages, and the WAL is truncated to ``WAL_LIMIT`` after each checkpoint, so the
file stays about as large as the readings of one retention period (``size_bytes`` reports it).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from oracle.readings import SignedReading

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY,
    meter TEXT NOT NULL,
    cumulative_wh INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    signature BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    batch_id INTEGER,
    skip_reason TEXT,
    received_at INTEGER NOT NULL,
    UNIQUE (meter, timestamp)
);
CREATE INDEX IF NOT EXISTS readings_waiting ON readings (meter, timestamp) WHERE status IN ('pending', 'sending');
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    nonce INTEGER NOT NULL,
    tx_hash TEXT NOT NULL,
    raw_tx BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'sent',
    gas_used INTEGER,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_received ON readings (received_at);
CREATE TABLE IF NOT EXISTS replaced_txs (batch_id INTEGER NOT NULL, tx_hash TEXT NOT NULL);
"""
# Columns added after the first release, as (table, column, declaration): added to older databases.
_ADDED_COLUMNS = (("batches", "sent_at", "INTEGER"),)
WAL_LIMIT = 64 * 1024 * 1024  # bytes the WAL keeps after a checkpoint
PRUNE_CHUNK = 5000  # rows deleted per statement, so the event loop is never held for long

_INSERT_READING = (
    "INSERT INTO readings (meter, cumulative_wh, timestamp, signature, received_at) VALUES (?, ?, ?, ?, ?)"
)
type _Row = tuple[str, int, int, bytes, int]
type NewReading = tuple[str, int, int, bytes]  # checksummed meter, cumulativeWh, timestamp, signature r‖s‖v

WAITING = ("pending", "sending")
DONE = ("settled", "onchain")


class StoreMismatchError(RuntimeError):
    """The database belongs to another chain or contract."""


@dataclass(frozen=True, slots=True)
class StoredReading:
    id: int
    reading: SignedReading
    status: str
    batch_id: int | None


@dataclass(frozen=True, slots=True)
class Batch:
    id: int
    nonce: int
    tx_hash: str  # the transaction last broadcast for this nonce
    raw_tx: bytes
    sent_at: int = 0  # Unix time it was broadcast
    replaced: tuple[str, ...] = ()  # earlier transactions of the same batch, replaced with a higher fee

    @property
    def hashes(self) -> tuple[str, ...]:
        """Every transaction that may carry this batch, newest first: any one of them may be mined."""
        return (self.tx_hash, *reversed(self.replaced))


@dataclass(frozen=True, slots=True)
class MeterSummary:
    last_accepted: tuple[int, int] | None  # (cumulativeWh, timestamp)
    last_settled: tuple[int, int] | None
    pending: int


def _reading(row: Sequence[object]) -> SignedReading:
    meter, wh, ts, sig = row
    assert isinstance(sig, bytes)
    return SignedReading(
        meter=meter,  # type: ignore[arg-type]  # stored checksummed
        cumulative_wh=int(wh),  # type: ignore[call-overload]
        timestamp=int(ts),  # type: ignore[call-overload]
        v=sig[64],
        r=sig[:32],
        s=sig[32:64],
    )


def _connect(path: Path) -> sqlite3.Connection:
    """A connection with the settings SQLite keeps per connection: durable commits, bounded WAL."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
    return db


class GroupCommit:
    """The writer thread of accepted readings: each commit stores every request queued meanwhile.

    A request's future is resolved (on its event loop) only after the transaction holding its
    readings is durable, or with the error that kept it from being stored. When a group fails, each
    of its requests is tried again alone, so one request that cannot be stored fails only itself.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._wakeup = threading.Condition()
        self._queue: list[tuple[list[_Row], asyncio.Future[None]]] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the one loop whose requests it answers
        self._closing = False

    def insert(self, readings: Sequence[NewReading]) -> asyncio.Future[None]:
        """Queue `readings` for the next commit; the future is done once they are stored."""
        loop = asyncio.get_running_loop()
        stored: asyncio.Future[None] = loop.create_future()
        now = int(time.time())
        rows: list[_Row] = [(meter, wh, ts, signature, now) for meter, wh, ts, signature in readings]
        with self._wakeup:
            if self._closing:
                raise RuntimeError("the reading store is closed")
            if self._thread is None:
                self._loop = loop
                self._thread = threading.Thread(target=self._run, args=(loop,), name="group-commit", daemon=True)
                self._thread.start()
            elif loop is not self._loop:
                raise RuntimeError("a reading store answers the requests of one event loop only")
            self._queue.append((rows, stored))
            self._wakeup.notify()
        return stored

    def close(self) -> None:
        """Store what is queued, then end the writer thread."""
        with self._wakeup:
            self._closing = True
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        db = _connect(self._path)
        try:
            while True:
                with self._wakeup:
                    while not self._queue and not self._closing:
                        self._wakeup.wait()
                    group, self._queue = self._queue, []
                if not group:
                    return
                error = self._commit(db, [row for rows, _ in group for row in rows])
                if error is not None and len(group) > 1:
                    for rows, stored in group:
                        loop.call_soon_threadsafe(_resolve, [stored], self._commit(db, rows))
                else:
                    loop.call_soon_threadsafe(_resolve, [stored for _, stored in group], error)
        finally:
            db.close()

    @staticmethod
    def _commit(db: sqlite3.Connection, rows: list[_Row]) -> Exception | None:
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(_INSERT_READING, rows)
        except Exception as err:  # any failure: handed to the waiting requests, which raise it
            return err
        return None


def _resolve(waiting: list[asyncio.Future[None]], error: Exception | None) -> None:
    for stored in waiting:
        if stored.done():
            continue
        if error is None:
            stored.set_result(None)
        else:
            stored.set_exception(error)


class ReadingStore:
    """All SQLite access. Synchronous, on the event loop (each call is short), except the inserts
    of accepted readings: those go through the `GroupCommit` writer thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = _connect(path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._writer = GroupCommit(path)
        for table, column, declaration in _ADDED_COLUMNS:
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def size_bytes(self) -> int:
        """The database on disk: the file, its WAL and shared-memory index."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                total += Path(f"{self.path}{suffix}").stat().st_size
        return total

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self._writer.close()
        self._db.close()

    def bind(self, chain_id: int, contract: str) -> None:
        """Tie the database to one chain and contract; refuse a database made for another."""
        wanted = f"{chain_id}:{contract}"
        row = self._db.execute("SELECT value FROM meta WHERE key = 'market'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta (key, value) VALUES ('market', ?)", (wanted,))
        elif row[0] != wanted:
            raise StoreMismatchError(f"it holds readings for chain:contract {row[0]}, not {wanted}")

    # ------------------------------------------------------------------ ingest

    def insert_readings(self, readings: Sequence[NewReading]) -> asyncio.Future[None]:
        """Store accepted readings (group commit); the future is done once they are durable, and
        only then may the API answer that they are accepted."""
        return self._writer.insert(readings)

    def last_accepted(self) -> dict[str, tuple[int, int]]:
        """Per meter, the newest stored reading as (timestamp, cumulativeWh)."""
        rows = self._db.execute(
            "SELECT meter, timestamp, cumulative_wh FROM readings r WHERE timestamp = "
            "(SELECT MAX(timestamp) FROM readings WHERE meter = r.meter)"
        )
        return {meter: (ts, wh) for meter, ts, wh in rows}

    def meter_summary(self, meter: str) -> MeterSummary:
        accepted = self._db.execute(
            "SELECT cumulative_wh, timestamp FROM readings WHERE meter = ? ORDER BY timestamp DESC LIMIT 1", (meter,)
        ).fetchone()
        settled = self._db.execute(
            "SELECT cumulative_wh, timestamp FROM readings WHERE meter = ? AND status IN ('settled', 'onchain') "
            "ORDER BY timestamp DESC LIMIT 1",
            (meter,),
        ).fetchone()
        (pending,) = self._db.execute(
            "SELECT COUNT(*) FROM readings WHERE meter = ? AND status IN ('pending', 'sending')", (meter,)
        ).fetchone()
        return MeterSummary(
            last_accepted=tuple(accepted) if accepted else None,
            last_settled=tuple(settled) if settled else None,
            pending=int(pending),
        )

    def queue(self) -> tuple[int, int | None]:
        """Readings waiting to settle, and when the oldest of them was accepted (Unix seconds).
        Acceptance, not the meter's timestamp: a meter that back-fills a day of buffered readings
        has not made the oracle a day late."""
        count, oldest = self._db.execute(
            "SELECT COUNT(*), MIN(received_at) FROM readings WHERE status IN ('pending', 'sending')"
        ).fetchone()
        return int(count), oldest

    # ------------------------------------------------------------------ relayer

    def newest_pending(self) -> list[StoredReading]:
        """The newest pending reading of each meter that has no reading in flight."""
        rows = self._db.execute(
            "SELECT id, meter, cumulative_wh, timestamp, signature FROM readings r WHERE status = 'pending' "
            "AND timestamp = (SELECT MAX(timestamp) FROM readings WHERE meter = r.meter AND status = 'pending') "
            "AND NOT EXISTS (SELECT 1 FROM readings WHERE meter = r.meter AND status = 'sending') ORDER BY id"
        )
        return [StoredReading(row[0], _reading(row[1:]), "pending", None) for row in rows]

    def resolve_covered(self, meter: str, chain_timestamp: int, chain_wh: int) -> None:
        """The chain holds `meter`'s reading at `chain_timestamp`: waiting readings up to it are done."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE readings SET status = 'onchain', batch_id = NULL WHERE meter = ? AND timestamp = ? "
                "AND cumulative_wh = ? AND status IN ('pending', 'sending')",
                (meter, chain_timestamp, chain_wh),
            )
            self._db.execute(
                "UPDATE readings SET status = 'superseded', batch_id = NULL WHERE meter = ? AND timestamp <= ? "
                "AND status IN ('pending', 'sending')",
                (meter, chain_timestamp),
            )

    def record_batch(self, nonce: int, tx_hash: str, raw_tx: bytes, reading_ids: Iterable[int]) -> int:
        """Remember a signed settle transaction and mark its readings in flight, before it is sent."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            now = int(time.time())
            cursor = self._db.execute(
                "INSERT INTO batches (nonce, tx_hash, raw_tx, created_at, sent_at) VALUES (?, ?, ?, ?, ?)",
                (nonce, tx_hash, raw_tx, now, now),
            )
            batch_id = int(cursor.lastrowid or 0)
            self._db.executemany(
                "UPDATE readings SET status = 'sending', batch_id = ? WHERE id = ?",
                [(batch_id, rid) for rid in reading_ids],
            )
        return batch_id

    def open_batches(self) -> list[Batch]:
        rows = self._db.execute(
            "SELECT id, nonce, tx_hash, raw_tx, COALESCE(sent_at, created_at) FROM batches WHERE status = 'sent' "
            "ORDER BY nonce"
        ).fetchall()
        out = []
        for batch_id, nonce, tx_hash, raw_tx, sent_at in rows:
            replaced = self._db.execute(
                "SELECT tx_hash FROM replaced_txs WHERE batch_id = ? ORDER BY rowid", (batch_id,)
            ).fetchall()
            out.append(Batch(batch_id, nonce, tx_hash, raw_tx, int(sent_at), tuple(h for (h,) in replaced)))
        return out

    def replace_batch_tx(self, batch_id: int, tx_hash: str, raw_tx: bytes) -> None:
        """Record the higher-fee transaction that replaces a batch's transaction (same nonce, same
        readings), before it is broadcast; the replaced one is remembered, as it may still be mined."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO replaced_txs (batch_id, tx_hash) SELECT id, tx_hash FROM batches WHERE id = ?", (batch_id,)
            )
            self._db.execute(
                "UPDATE batches SET tx_hash = ?, raw_tx = ?, sent_at = ? WHERE id = ?",
                (tx_hash, raw_tx, int(time.time()), batch_id),
            )

    def batch_readings(self, batch_id: int) -> list[StoredReading]:
        rows = self._db.execute(
            "SELECT id, meter, cumulative_wh, timestamp, signature FROM readings "
            "WHERE batch_id = ? AND status = 'sending'",
            (batch_id,),
        )
        return [StoredReading(row[0], _reading(row[1:]), "sending", batch_id) for row in rows]

    def complete_batch(
        self,
        batch_id: int,
        gas_used: int,
        settled: Sequence[int],
        skipped: Sequence[tuple[int, str]],
        retry: Sequence[int],
    ) -> None:
        """Apply a confirmed receipt: settled readings (and older waiting ones of the same meters,
        which their cumulative covers), skipped ones with their reason, and ones to send again."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE batches SET status = 'mined', gas_used = ? WHERE id = ?", (gas_used, batch_id))
            self._db.executemany("UPDATE readings SET status = 'settled' WHERE id = ?", [(i,) for i in settled])
            self._db.executemany(
                "UPDATE readings SET status = 'superseded' WHERE status = 'pending' "
                "AND meter = (SELECT meter FROM readings WHERE id = ?) "
                "AND timestamp < (SELECT timestamp FROM readings WHERE id = ?)",
                [(i, i) for i in settled],
            )
            self._db.executemany(
                "UPDATE readings SET status = 'skipped', skip_reason = ? WHERE id = ?",
                [(reason, i) for i, reason in skipped],
            )
            self._db.executemany(
                "UPDATE readings SET status = 'pending', batch_id = NULL WHERE id = ?", [(i,) for i in retry]
            )

    def drop_batch(self, batch_id: int) -> None:
        """The transaction will never be mined (its nonce went to another): its readings wait again."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE batches SET status = 'dropped' WHERE id = ?", (batch_id,))
            self._db.execute(
                "UPDATE readings SET status = 'pending', batch_id = NULL WHERE batch_id = ? AND status = 'sending'",
                (batch_id,),
            )

    # ------------------------------------------------------------------ retention

    def prune(self, older_than: int, limit: int = PRUNE_CHUNK) -> int:
        """Delete up to `limit` readings that are done and were accepted before `older_than` (Unix
        seconds), keeping each meter's newest, and finished batches of that age; returns the
        readings deleted. Call again while it returns `limit`."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            deleted = self._db.execute(
                "DELETE FROM readings WHERE id IN (SELECT id FROM readings r WHERE received_at < ? "
                "AND status NOT IN ('pending', 'sending') "
                "AND EXISTS (SELECT 1 FROM readings n WHERE n.meter = r.meter AND n.timestamp > r.timestamp) LIMIT ?)",
                (older_than, limit),
            ).rowcount
            self._db.execute(
                "DELETE FROM replaced_txs WHERE batch_id IN "
                "(SELECT id FROM batches WHERE status != 'sent' AND created_at < ?)",
                (older_than,),
            )
            self._db.execute("DELETE FROM batches WHERE status != 'sent' AND created_at < ?", (older_than,))
        return int(deleted)
