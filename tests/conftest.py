"""One storage contract, proven on every backend.

Every test that takes the `database_url` (or `tracker`) fixture runs once per backend: SQLite
always, PostgreSQL and MariaDB when their servers answer. Each test gets a database of its own,
created empty and dropped afterwards, so runs never see each other's rows. Under CI (`CI` set),
a server that does not answer fails the run instead of skipping its tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.http_server import Server, migrate
from tests.http_support import BODY_TIMEOUT, CREDENTIALS, OLD
from tracker import Event, Tracker
from tracker._fake_bandwidth import FakeBandwidth

SERVERS = {
    "postgresql": os.environ.get(
        "TRACKER_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
    "mariadb": os.environ.get(
        "TRACKER_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"
    ),
}
BACKENDS = ("sqlite", *SERVERS)

# The public test kit's fixtures, as a host's suite enables them: `sqlite_tracker` is a tracker on
# a migrated SQLite database of the test's own, for behaviour that does not depend on the backend.
pytest_plugins = ["tracker.testing"]

_reachable: dict[str, str | None] = {}


def _server_problem(backend: str) -> str | None:
    """None when the server answers, else why not (checked once per run)."""
    if backend not in _reachable:
        try:
            engine = create_engine(SERVERS[backend])
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            engine.dispose()
            _reachable[backend] = None
        except Exception as error:
            _reachable[backend] = f"{backend} at {SERVERS[backend]} is not answering: {error}"
    return _reachable[backend]


def _require(backend: str) -> None:
    if backend == "sqlite":
        return
    problem = _server_problem(backend)
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{problem} (CI must test every backend; .ci/run starts the servers)")
    pytest.skip(problem)


def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """Create an empty database on `backend`, yield its URL, drop it afterwards."""
    _require(backend)
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'tracker.db'}"
        return
    name = f"tracker_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(SERVERS[backend], isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        if backend == "postgresql":
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        else:
            connection.execute(
                text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            )
    try:
        yield make_url(SERVERS[backend]).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            if backend == "postgresql":
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            else:
                connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show the concurrency figures (workers, deliveries, deliveries per second) in every run."""
    from tests.workers import FIGURES

    if FIGURES:
        terminalreporter.section("concurrency figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of its own, on each backend in turn."""
    yield from fresh_database(backend, tmp_path)


@pytest.fixture
def tracker(database_url: str) -> Iterator[Tracker]:
    """A tracker on a migrated, empty database of its own, on each backend in turn."""
    with Tracker(database_url) as instance:
        instance.upgrade()
        yield instance


@pytest.fixture
def two_trackers(
    database_url: str, backend: str, tmp_path: Path
) -> Iterator[tuple[Tracker, Tracker]]:
    """One database fed in order, one fed shuffled, on each backend; each example uses call ids
    of its own, so examples never meet."""
    second = tmp_path / "shuffled"
    second.mkdir()
    for shuffled_url in fresh_database(backend, second):
        with Tracker(database_url) as in_order, Tracker(shuffled_url) as shuffled:
            in_order.upgrade()
            shuffled.upgrade()
            yield in_order, shuffled


# --- the webhook tests' servers (tests/test_http_*.py) -------------------------------------


@pytest.fixture
def serve(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start `tracker serve` on the test's migrated database: `serve(*serve options,
    global_options=(...), credentials=...)`. Every server started is stopped afterwards."""
    migrate(database_url)
    started: list[Server] = []

    def start(
        *serve_options: str,
        global_options: Sequence[str] = (),
        credentials: str | None = CREDENTIALS,
    ) -> Server:
        server = Server(
            database_url,
            tmp_path / "server",
            serve_options=("--body-timeout", str(BODY_TIMEOUT), *serve_options),
            global_options=tuple(global_options),
            credentials=credentials,
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()


@pytest.fixture
def server(serve: Callable[..., Server]) -> Server:
    return serve()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(auth=OLD, timeout=30.0) as instance:
        yield instance


@pytest.fixture
def log(database_url: str) -> Iterator[Callable[[], list[Event]]]:
    """The event log as the database holds it now, read by a tracker of the test's own."""
    with Tracker(database_url) as reader:
        yield reader.events


# --- Bandwidth's Voice API, faked (tests/test_bandwidth*.py and the sweep's and reconcile's) --

_BANDWIDTH_VARIABLES = (
    "BANDWIDTH_USERNAME",
    "BANDWIDTH_PASSWORD",
    "BANDWIDTH_CLIENT_ID",
    "BANDWIDTH_CLIENT_SECRET",
    "BANDWIDTH_ACCOUNT_ID",
    "TRACKER_BANDWIDTH_API_URL",
)


@pytest.fixture
def bandwidth_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBandwidth]:
    """A fake of Bandwidth's Voice API on loopback, and the environment pointing
    `tracker.bandwidth` at it with HTTP Basic credentials (every other Bandwidth variable
    unset; `monkeypatch.setenv(...)` from `bandwidth_api.environment(oauth=True)` for OAuth2)."""
    with FakeBandwidth() as fake:
        for name in _BANDWIDTH_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in fake.environment().items():
            monkeypatch.setenv(name, value)
        yield fake
