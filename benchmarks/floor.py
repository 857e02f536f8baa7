"""The benchmark's floor: what any tracker honouring the contract must at least do, written
directly on the driver (stdlib `sqlite3`, `psycopg`): parse the JSON, hash its canonical form,
read the call row, insert the delivery under its unique hash, upsert the call, insert the
parent if unseen, commit; once per delivery, and once per batch. A delivery whose hash is
taken already is a duplicate: its body is kept in a table of repeats and no call is written."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy.engine import URL

_FLOOR_SCHEMA: Final = {
    "sqlite": (
        "CREATE TABLE deliveries (id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE,"
        " body BLOB NOT NULL, received_at TEXT NOT NULL)",
        "CREATE TABLE calls (call_id TEXT PRIMARY KEY, state TEXT NOT NULL, parent_call_id TEXT,"
        " account_id TEXT, application_id TEXT, direction TEXT, from_number TEXT, to_number TEXT,"
        " cause TEXT, start_time TEXT, answer_time TEXT, end_time TEXT, enqueued_time TEXT,"
        " tag TEXT, error_message TEXT, error_id TEXT)",
        "CREATE TABLE repeats (id INTEGER PRIMARY KEY, hash TEXT NOT NULL, body BLOB NOT NULL,"
        " received_at TEXT NOT NULL)",
    ),
    "postgresql": (
        "CREATE TABLE deliveries (id BIGSERIAL PRIMARY KEY, hash TEXT NOT NULL UNIQUE,"
        " body BYTEA NOT NULL, received_at TIMESTAMPTZ NOT NULL)",
        "CREATE TABLE calls (call_id TEXT PRIMARY KEY, state TEXT NOT NULL, parent_call_id TEXT,"
        " account_id TEXT, application_id TEXT, direction TEXT, from_number TEXT, to_number TEXT,"
        " cause TEXT, start_time TEXT, answer_time TEXT, end_time TEXT, enqueued_time TEXT,"
        " tag TEXT, error_message TEXT, error_id TEXT)",
        "CREATE TABLE repeats (id BIGSERIAL PRIMARY KEY, hash TEXT NOT NULL, body BYTEA NOT NULL,"
        " received_at TIMESTAMPTZ NOT NULL)",
    ),
}
_PAYLOAD: Final = (
    "parent_call_id", "account_id", "application_id", "direction", "from_number", "to_number",
    "cause", "start_time", "answer_time", "end_time", "enqueued_time", "tag", "error_message",
    "error_id",
)  # fmt: skip
_SELECT_CALL: Final = "SELECT state FROM calls WHERE call_id = ?"


_INSERT_DELIVERY: Final = (
    "INSERT INTO deliveries (hash, body, received_at) VALUES (?, ?, ?)"
    " ON CONFLICT (hash) DO NOTHING RETURNING id"
)
_INSERT_REPEAT: Final = "INSERT INTO repeats (hash, body, received_at) VALUES (?, ?, ?)"
_UPSERT_CALL: Final = (
    f"INSERT INTO calls (call_id, state, {', '.join(_PAYLOAD)})"
    f" VALUES (?, ?, {', '.join('?' for _ in _PAYLOAD)})"
    " ON CONFLICT (call_id) DO UPDATE SET state = excluded.state, "
    + ", ".join(f"{name} = excluded.{name}" for name in _PAYLOAD)
)
_INSERT_PARENT: Final = (
    "INSERT INTO calls (call_id, state, account_id, from_number, to_number)"
    " VALUES (?, 'initiated', ?, ?, ?) ON CONFLICT (call_id) DO NOTHING"
)


@dataclass(frozen=True)
class _FloorStatements:
    select_call: str
    insert_delivery: str
    insert_repeat: str
    upsert_call: str
    insert_parent: str

    @classmethod
    def with_placeholder(cls, placeholder: str) -> _FloorStatements:
        return cls(
            *(
                statement.replace("?", placeholder)
                for statement in (
                    _SELECT_CALL,
                    _INSERT_DELIVERY,
                    _INSERT_REPEAT,
                    _UPSERT_CALL,
                    _INSERT_PARENT,
                )
            )
        )


def _account_from_url(url: str | None) -> str | None:
    match = re.search(r"/accounts/([^/]+)/calls/", url or "")
    return match[1] if match else None


def _floor_transaction(
    execute: Callable[..., Any],
    statements: _FloorStatements,
    bodies: Sequence[bytes],
    now: Callable[[], object],
) -> None:
    """The least work for the deliveries of one transaction: parse each and hash its canonical
    form; insert the deliveries in hash order (its unique hash refuses a duplicate, which goes
    to the repeats); then read each call, upsert it, and insert each unseen parent, in call-id
    order. Both in one global order, so that concurrent writers never deadlock."""
    parsed: list[tuple[str, int, bytes, Any]] = []
    for order, body in enumerate(bodies):
        document = json.loads(body)
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        parsed.append((hashlib.sha256(canonical.encode()).hexdigest(), order, body, document))
    parsed.sort(key=lambda delivery: (delivery[0], delivery[1]))
    rows: list[tuple[str, int, str, tuple[Any, ...]]] = []
    for digest, order, body, document in parsed:
        if execute(statements.insert_delivery, (digest, body, now())).fetchone() is None:
            execute(statements.insert_repeat, (digest, body, now()))
            continue
        call_id = document["callId"]
        parent_id = document.get("parentCallId")
        leg = parent_id is not None
        account = document.get("accountId") or _account_from_url(document.get("callUrl"))
        call = (
            call_id,
            "disconnected",
            parent_id,
            account,
            document.get("applicationId"),
            document.get("direction"),
            document.get("transferCallerId" if leg else "from"),
            document.get("transferTo" if leg else "to"),
            document.get("cause"),
            document.get("startTime"),
            document.get("answerTime"),
            document.get("endTime"),
            document.get("enqueuedTime"),
            document.get("tag"),
            document.get("errorMessage"),
            document.get("errorId"),
        )
        rows.append((call_id, order, statements.upsert_call, call))
        if leg:
            parent = (parent_id, account, document.get("from"), document.get("to"))
            rows.append((parent_id, order, statements.insert_parent, parent))
    rows.sort(key=lambda row: (row[0], row[1]))
    for call_id, _order, statement, parameters in rows:
        if statement is statements.upsert_call:
            execute(statements.select_call, (call_id,)).fetchone()
        execute(statement, parameters)


def _now() -> datetime:
    return datetime.now(UTC)


def _now_text() -> str:
    return datetime.now(UTC).isoformat()


def chunks(items: Sequence[bytes], size: int) -> Iterator[Sequence[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class SqliteFloor:
    """The floor on stdlib sqlite3, with the durability the tracker keeps by default."""

    statements: Final = _FloorStatements.with_placeholder("?")
    rollbacks: Final = 0  # one writer at a time: a batch never loses a race

    def __init__(self, url: URL) -> None:
        assert url.database
        self.connection = sqlite3.connect(url.database, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")
        self.connection.execute("PRAGMA busy_timeout=60000")

    def create_schema(self) -> None:
        for statement in _FLOOR_SCHEMA["sqlite"]:
            self.connection.execute(statement)

    def run(self, bodies: Sequence[bytes], batch: int) -> None:
        cursor = self.connection.cursor()
        execute = cursor.execute
        for chunk in chunks(bodies, batch):
            execute("BEGIN IMMEDIATE")  # as the tracker: the write lock before the read
            _floor_transaction(execute, self.statements, chunk, _now_text)
            execute("COMMIT")

    def close(self) -> None:
        self.connection.close()


class _PostgresqlFloor:
    """The floor on psycopg: READ COMMITTED, and a batch that loses a deadlock is run again
    (counted in `rollbacks`)."""

    statements: Final = _FloorStatements.with_placeholder("%s")

    def __init__(self, url: URL) -> None:
        import psycopg

        self.connection = psycopg.connect(**conninfo(url))
        self.rollbacks = 0

    def create_schema(self) -> None:
        with self.connection.cursor() as cursor:
            for statement in _FLOOR_SCHEMA["postgresql"]:
                cursor.execute(statement.encode())
        self.connection.commit()

    def run(self, bodies: Sequence[bytes], batch: int) -> None:
        import psycopg

        cursor = self.connection.cursor()
        execute = cursor.execute
        for chunk in chunks(bodies, batch):
            while True:
                try:
                    _floor_transaction(execute, self.statements, chunk, _now)
                    self.connection.commit()
                    break
                except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                    self.connection.rollback()  # not expected (rows go in order); run it again
                    self.rollbacks += 1

    def close(self) -> None:
        self.connection.close()


def floor_for(url: URL) -> SqliteFloor | _PostgresqlFloor:
    backend = url.get_backend_name()
    if backend == "sqlite":
        return SqliteFloor(url)
    if backend == "postgresql":
        return _PostgresqlFloor(url)
    raise SystemExit(f"the benchmark's floor is written for SQLite and PostgreSQL, not {backend}")


def conninfo(url: URL) -> dict[str, Any]:
    values = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    return {key: value for key, value in values.items() if value is not None}
