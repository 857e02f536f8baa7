"""Shared by the webhook tests (tests/test_http_*.py): credentials, constants, and helpers.

Every test starts `tracker --db URL serve` on a loopback port of its own (tests/http_server.py)
against a database of its own (tests/conftest.py), and talks to it with httpx, or over a plain
socket where a client must misbehave on purpose (a body that never ends, a body announced but not
sent). What the server did is read back from the database with `Tracker`, never from the
server's own word alone: a `204` promises that the delivery is in the log.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url

from tests.http_server import (
    Server,
)
from tracker import Call, Tracker
from tracker.schema import alembic_config, head_revision

# Two pairs valid at once, as during a rotation: the old one still configured at Bandwidth for
# some applications, the new one for others. The new password holds a colon and non-ASCII text
# (the realm says charset="UTF-8"; only the user name ends at the first colon).
OLD = ("bandwidth-2025", "0ld-s3cret")
NEW = ("bandwidth-2026", "n3w:sécret")
CREDENTIALS = f"{OLD[0]}:{OLD[1]},{NEW[0]}:{NEW[1]}"
REALM = 'Basic realm="tracker", charset="UTF-8"'
OUTCOME = "x-tracker-outcome"
REASON = "x-tracker-reason"
CALLBACK = "/bandwidth/voice/status"
BODY_TIMEOUT = 2.0  # --body-timeout of the servers under test
MAX_BODY = 1_048_576  # the default --max-body-bytes
TEN_MB = 10 * 1024 * 1024

# Status codes and the load tests need a database server's failure modes and its concurrency:
# SQLite and PostgreSQL (MariaDB's lock timeouts are separate settings; see faults_support.py).
SQLITE_AND_POSTGRESQL = pytest.mark.parametrize("backend", ["sqlite", "postgresql"])


def dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def outcome_of(response: httpx.Response) -> tuple[int, str | None, str | None]:
    return response.status_code, response.headers.get(OUTCOME), response.headers.get(REASON)


def _basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


def facts(calls: Sequence[Call]) -> dict[str, Call]:
    """Calls by id, their history without the event ids (a database numbers its log its own way:
    PostgreSQL's sequences skip numbers)."""
    return {
        call.call_id: replace(
            call, history=tuple(replace(step, event_id=0) for step in call.history)
        )
        for call in calls
    }


# --- helpers -----------------------------------------------------------------------------------


def _samples(exposition: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    ]


def _metrics_text(server: Server) -> str:
    response = httpx.get(server.url("/metrics"))
    assert response.status_code == 200
    return response.text


def _previous_revision() -> str:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config()).get_revision(head_revision())
    assert script is not None and isinstance(script.down_revision, str)
    return script.down_revision


def _set_revision(database_url: str, revision: str) -> None:
    with _admin(database_url) as admin:
        admin.execute(text("UPDATE tracker_alembic_version SET version_num = :v"), {"v": revision})


@contextmanager
def _admin(database_url: str) -> Iterator[Connection]:
    """An autocommitting session on the database, as an operator's console would be."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def _metric_values(server: Server) -> dict[str, float]:
    """The server's metrics without labels, by sample name."""
    return {name: value for name, labels, value in _samples(_metrics_text(server)) if not labels}


def _await_metrics(server: Server, **expected: float) -> None:
    """Wait until the server's metrics say `expected` (the state of its queue, which the
    requests in flight reach in their own time); fail if they never do."""
    deadline = time.monotonic() + 30.0
    while True:
        values = _metric_values(server)
        if all(values.get(name) == value for name, value in expected.items()):
            return
        assert time.monotonic() < deadline, f"the server never reached {expected}: {values}"
        time.sleep(0.02)


class _Senders:
    """Requests in flight, each on a thread of its own, answered in their own time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[httpx.Response | None] = []
        self.threads: list[threading.Thread] = []

    def send(self, body: bytes) -> None:
        index = len(self.answers)
        self.answers.append(None)

        def post() -> None:
            with httpx.Client(auth=OLD, timeout=120.0) as session:
                self.answers[index] = session.post(self.url, content=body)

        thread = threading.Thread(target=post, daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self) -> list[httpx.Response]:
        for thread in self.threads:
            thread.join(120.0)
        answers = [answer for answer in self.answers if answer is not None]
        assert len(answers) == len(self.answers), "a request was never answered"
        return answers


def _send_one_by_one(server: Server, bodies: Sequence[bytes]) -> _Senders:
    """Send `bodies` while the group being written is held up (by a lock the test holds): the
    first becomes that group, each of the others is sent once the one before it is queued, so
    the queue holds them in this order and they make the next group together."""
    senders = _Senders(server.url())
    for index, body in enumerate(bodies):
        senders.send(body)
        if index == 0:
            _await_metrics(server, tracker_writing_deliveries=1, tracker_queued_deliveries=0)
        else:
            _await_metrics(server, tracker_queued_deliveries=index)
    return senders


def _deliver_as_one_group(
    server: Server, backend: str, database_url: str, first: bytes, group: Sequence[bytes]
) -> list[httpx.Response]:
    """`first` alone in a group held up by a lock, then every body of `group` in one group of
    their own, in this order, once the lock goes: the answers, in the order sent."""
    with _write_lock(backend, database_url) as release:
        senders = _send_one_by_one(server, [first, *group])
        release()
        return senders.join()


def _outcomes_alone(bodies: Sequence[bytes], tmp_path: Path) -> list[tuple[str, str | None]]:
    """The outcome and reason of each body applied one by one into a fresh database."""
    with Tracker(f"sqlite:///{tmp_path / 'alone.db'}", durable=False) as alone:
        alone.upgrade()
        return [(result.outcome.value, result.reason) for result in map(alone.apply, bodies)]


def _refuse_tag(backend: str, database_url: str, tag: str | None) -> None:
    """Make the database refuse to store a call with `tag` (None: stop refusing): a CHECK
    constraint on the servers, triggers on SQLite, which cannot add a constraint to a table."""
    with _admin(database_url) as admin:
        if backend == "sqlite":
            for verb in ("INSERT", "UPDATE"):
                name = f"test_refuse_{verb.lower()}"
                admin.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
                if tag is not None:
                    admin.execute(
                        text(
                            f"CREATE TRIGGER {name} BEFORE {verb} ON tracker_calls "
                            f"WHEN NEW.tag = '{tag}' "
                            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                        )
                    )
        elif tag is None:
            admin.execute(text("ALTER TABLE tracker_calls DROP CONSTRAINT test_refuse"))
        else:
            admin.execute(
                text(
                    "ALTER TABLE tracker_calls ADD CONSTRAINT test_refuse "
                    f"CHECK (tag IS NULL OR tag <> '{tag}')"
                )
            )


@contextmanager
def _write_lock(backend: str, database_url: str) -> Iterator[Callable[[], None]]:
    """Another session holding what a delivery needs to write, until `release()` (called by the
    `with` body, or on leaving): SQLite's write lock (BEGIN IMMEDIATE); PostgreSQL's ACCESS
    EXCLUSIVE lock on the event log; MariaDB's table lock on it (LOCK TABLES ... WRITE)."""
    released = False
    if backend == "sqlite":
        path = make_url(database_url).database
        assert path is not None
        sqlite = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        sqlite.execute("BEGIN IMMEDIATE")

        def unlock() -> None:
            sqlite.execute("ROLLBACK")
            sqlite.close()

    elif backend == "mariadb":
        engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
        connection = engine.connect()
        connection.execute(text("LOCK TABLES tracker_events WRITE"))

        def unlock() -> None:
            connection.execute(text("UNLOCK TABLES"))
            connection.close()
            engine.dispose()

    else:
        engine = create_engine(database_url)
        connection = engine.connect()
        connection.execute(text("LOCK TABLE tracker_events IN ACCESS EXCLUSIVE MODE"))

        def unlock() -> None:
            connection.rollback()
            connection.close()
            engine.dispose()

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            unlock()

    try:
        yield release
    finally:
        release()
