"""Starting and stopping `tracker serve`: start-up refusals; SIGTERM commits what is in flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.http_server import (
    Server,
    migrate,
)
from tests.http_support import (
    CREDENTIALS,
    SQLITE_AND_POSTGRESQL,
    _previous_revision,
    _set_revision,
    _write_lock,
    dumps,
    outcome_of,
)
from tracker import Event
from tracker.testing import (
    disconnect,
)

# --- starting and stopping ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("schema", ["missing", "behind"])
def test_serve_refuses_a_database_whose_schema_is_not_current(
    database_url: str, tmp_path: Path, schema: str
) -> None:
    if schema == "behind":
        migrate(database_url)
        _set_revision(database_url, _previous_revision())
    server = Server(database_url, tmp_path / "server", credentials=CREDENTIALS)
    server.launch()
    assert server.wait() == 2
    assert "tracker" in server.stderr and "upgrade" in server.stderr
    assert "serving on" not in server.stderr


@pytest.mark.parametrize("backend", ["sqlite"])
def test_serve_without_credentials_refuses_a_non_loopback_address(
    database_url: str, tmp_path: Path
) -> None:
    migrate(database_url)
    server = Server(database_url, tmp_path / "server", host="0.0.0.0", credentials=None)
    server.launch()
    assert server.wait() == 2
    assert "serving on" not in server.stderr
    assert "credentials" in server.stderr.lower()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_serve_without_credentials_on_loopback_warns_and_takes_anyone(
    serve: Callable[..., Server], log: Callable[[], list[Event]]
) -> None:
    server = serve(credentials=None)
    lowered = server.stderr.lower()
    assert "without authentication" in lowered or "unauthenticated" in lowered
    assert httpx.post(server.url(), content=b"{}").status_code == 204
    assert len(log()) == 1


@SQLITE_AND_POSTGRESQL
def test_sigterm_finishes_and_commits_the_deliveries_in_flight_then_exits_0(
    serve: Callable[..., Server],
    backend: str,
    database_url: str,
    client: httpx.Client,
    log: Callable[[], list[Event]],
) -> None:
    """A delivery is waiting on a lock held elsewhere when SIGTERM comes; the lock is released
    after it: the delivery is committed, answered 204, and only then does the server exit 0."""
    server = serve(global_options=("--timeout", "20"))
    body = dumps(disconnect())
    answers: list[httpx.Response] = []
    with _write_lock(backend, database_url) as release:
        sender = threading.Thread(
            target=lambda: answers.append(client.post(server.url(), content=body))
        )
        sender.start()
        time.sleep(0.5)
        server.sigterm()
        time.sleep(0.5)
        assert server.alive(), "the server must wait for the delivery in flight"
        release()
        sender.join(30.0)
    exit_code = server.wait()
    assert [outcome_of(response) for response in answers] == [(204, "applied", None)]
    assert [entry.body for entry in log()] == [body]
    assert exit_code == 0, f"exit code {exit_code}, stderr:\n{server.stderr}"
