"""`tracker serve --sweep-every` (`tracker.sweeping`): the server ends lost calls in the
background, one server at a time under the database lease `sweep`, stops between two
transactions on SIGTERM and gives the lease up; the ends it made, and its provider's requests,
are on `/metrics`."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from importlib.util import find_spec
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from tests.http_server import Server, migrate
from tests.http_support import SQLITE_AND_POSTGRESQL, _samples
from tests.test_asgi_mount import Client
from tracker import Call, Tracker, storage
from tracker.asgi import create_app
from tracker.cli import cli
from tracker.provider import ProviderError
from tracker.sweeping import BackgroundSweep
from tracker.testing import (
    FakeBandwidth,
    answer,
    call_state_from,
    disconnect,
    encode,
    initiate,
    new_call_id,
)

HOUR = timedelta(hours=1)
QUICKLY = timedelta(milliseconds=50)
# `tracker: swept as HOLDER from START to END: N live calls looked at ..., E expired, ...`
SWEPT = re.compile(
    r"swept as (?P<holder>\S+) from (?P<start>\S+) to (?P<end>\S+): (?P<checked>\d+) live calls "
    r"looked at \(older than [^)]*\), (?P<expired>\d+) expired"
)


def old_live_calls(tracker: Tracker, count: int) -> list[str]:
    """`count` calls ringing since the test kit's base time, months ago: the sweep's to end."""
    ids = [new_call_id() for _ in range(count)]
    tracker.apply_many([encode(initiate(call_id)) for call_id in ids])
    return ids


def sweep_entries(tracker: Tracker) -> Counter[str]:
    """How many sweep log entries each call has."""
    return Counter(
        str(entry.call_id) for entry in tracker.iter_events() if entry.event_type == "sweep"
    )


def lease_row(tracker: Tracker) -> storage.LeaseHolding | None:
    with tracker.engine.connect() as connection:
        return storage.find_lease(connection, "sweep")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}"
        time.sleep(0.02)


@pytest.fixture
def sweeps(sqlite_tracker: Tracker) -> Iterator[Callable[..., BackgroundSweep]]:
    """Background sweeps of the SQLite tracker, every one stopped afterwards."""
    made: list[BackgroundSweep] = []

    def make(tracker: Tracker = sqlite_tracker, **options: object) -> BackgroundSweep:
        settings: dict[str, object] = {"every": QUICKLY, "older_than": HOUR, **options}
        sweep = BackgroundSweep(tracker, **settings)  # type: ignore[arg-type]
        made.append(sweep)
        return sweep

    yield make
    for sweep in made:
        sweep.stop()


# --- in one process ----------------------------------------------------------------------------


def test_old_live_calls_are_ended_in_the_background_and_recent_ones_stay(
    sqlite_tracker: Tracker, sweeps: Callable[..., BackgroundSweep]
) -> None:
    old = old_live_calls(sqlite_tracker, 5)
    recent = new_call_id()
    sqlite_tracker.apply(encode(initiate(recent, start=datetime.now(UTC))))
    sweep = sweeps(batch_size=2)

    sweep.start()
    wait_for(lambda: sqlite_tracker.count_calls(state="disconnected") == 5, "the sweep")
    assert sweep.stop()

    for call_id in old:
        call = sqlite_tracker.get_call(call_id)
        assert call is not None and (call.disposition, call.swept) == ("expired", True)
    assert sqlite_tracker.get_call(recent).live  # type: ignore[union-attr]
    assert sweep.ended() == {"sweep": 5, "provider": 0}
    assert lease_row(sqlite_tracker) is None, "a stopped sweep gives its lease up"


def test_of_two_sweepers_the_lease_holder_alone_sweeps_until_it_stops(
    sqlite_tracker: Tracker, sweeps: Callable[..., BackgroundSweep]
) -> None:
    first, second = sweeps(), sweeps()
    first.start()
    wait_for(lambda: first.rounds >= 1, "the first sweeper's round")
    second.start()
    old_live_calls(sqlite_tracker, 3)
    wait_for(lambda: first.ended()["sweep"] == 3, "the holder to sweep")
    assert second.rounds == 0 and second.ended()["sweep"] == 0

    assert first.stop()
    old_live_calls(sqlite_tracker, 2)
    wait_for(lambda: second.ended()["sweep"] == 2, "the other to take over at once")
    holding = lease_row(sqlite_tracker)
    assert holding is not None and holding.holder == second.holder


def test_asked_to_stop_the_sweep_ends_between_two_batches(sqlite_tracker: Tracker) -> None:
    old_live_calls(sqlite_tracker, 10)
    asked = 0

    def after_two_batches() -> bool:
        nonlocal asked
        asked += 1
        return asked > 2

    report = sqlite_tracker.sweep(HOUR, batch_size=3, should_stop=after_two_batches)

    assert (report.checked, len(report.expired)) == (6, 6)
    assert sqlite_tracker.count_calls(state="disconnected") == 6
    assert sum(sweep_entries(sqlite_tracker).values()) == 6


def test_a_database_failure_ends_the_round_and_the_next_round_sweeps(
    tmp_path: Path, sweeps: Callable[..., BackgroundSweep], caplog: pytest.LogCaptureFixture
) -> None:
    url = tmp_path / "busy.db"
    with Tracker(f"sqlite:///{url}", timeout=0.2) as tracker:
        tracker.upgrade()
        old_live_calls(tracker, 4)
        blocker = sqlite3.connect(url, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # every write waits, and gives up after 0.2 s
        sweep = sweeps(tracker)
        with caplog.at_level(logging.ERROR, logger="tracker.sweeping"):
            sweep.start()
            wait_for(lambda: "the next round" in caplog.text, "the failure to be logged")
            blocker.rollback()
            blocker.close()
            wait_for(lambda: sweep.ended()["sweep"] == 4, "the next round to sweep")
        assert sweep.stop()
        assert "database is locked" in caplog.text


class RefusingResolver:
    """A resolver whose provider refuses its credentials, as a revoked API user's would."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, call: Call) -> bytes | None:
        self.asked.append(call.call_id)
        raise ProviderError("Bandwidth answered 401 Unauthorized", refused=True)


def test_refused_credentials_stop_the_round_said_once_and_leave_the_calls_live(
    sqlite_tracker: Tracker,
    sweeps: Callable[..., BackgroundSweep],
    caplog: pytest.LogCaptureFixture,
) -> None:
    old_live_calls(sqlite_tracker, 5)
    resolver = RefusingResolver()
    sweep = sweeps(every=HOUR, resolve=resolver, batch_size=2)
    with caplog.at_level(logging.ERROR, logger="tracker.sweeping"):
        sweep.start()
        wait_for(lambda: "refused" in caplog.text, "the refusal to be logged")
        assert sweep.stop()

    assert len(resolver.asked) == 1, "the round stops at the first refusal"
    assert sqlite_tracker.count_calls(state="disconnected") == 0
    refusals = [record for record in caplog.records if "refused the credentials" in record.message]
    assert len(refusals) == 1


class SlowResolver:
    """A provider that takes its time and finds nothing."""

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.asked = 0

    def __call__(self, call: Call) -> bytes | None:
        self.asked += 1
        time.sleep(self.pause)
        return None


def test_a_sweeper_whose_lease_was_taken_over_stops_at_its_next_renewal(
    sqlite_tracker: Tracker,
    sweeps: Callable[..., BackgroundSweep],
    caplog: pytest.LogCaptureFixture,
) -> None:
    old_live_calls(sqlite_tracker, 20)
    resolver = SlowResolver(0.05)
    sweep = sweeps(resolve=resolver, lease_term=timedelta(milliseconds=300))
    with caplog.at_level(logging.INFO, logger="tracker.sweeping"):
        sweep.start()
        wait_for(lambda: resolver.asked >= 2, "the sweep to ask")
        with sqlite_tracker.engine.begin() as connection:  # as if it expired unseen, and went
            connection.execute(
                storage.leases.update().values(
                    holder="elsewhere", expires_at=datetime.now(UTC) + HOUR
                )
            )
        wait_for(lambda: "lost to another server" in caplog.text, "the sweep to stop")
        assert sweep.stop()

    assert resolver.asked < 20
    holding = lease_row(sqlite_tracker)
    assert holding is not None and holding.holder == "elsewhere", "not given up: not its own"


class NotFoundResolver:
    """A resolver that finds none of the calls at the provider (each is older than it keeps),
    counting its requests as `tracker.bandwidth`'s resolver does."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()

    def __call__(self, call: Call) -> bytes | None:
        self.requests["not_found"] += 1
        return None


def test_the_metrics_count_the_ends_by_source_and_the_providers_requests(
    sqlite_tracker: Tracker, sweeps: Callable[..., BackgroundSweep]
) -> None:
    old_live_calls(sqlite_tracker, 3)
    resolver = NotFoundResolver()
    sweep = sweeps(resolve=resolver)
    client = Client(create_app(sqlite_tracker, sweep=sweep))
    ended, answered_then_ended, live = new_call_id(), new_call_id(), new_call_id()
    now = datetime.now(UTC)
    for body in (
        disconnect(ended),
        answer(answered_then_ended, start=now),
        disconnect(answered_then_ended, start=now),
        disconnect(ended),  # the same delivery again: a duplicate ends nothing
        initiate(live, start=now),
    ):
        assert client.post("/status", content=json.dumps(body)).status_code == 204
    sweep.start()  # as the lifespan's startup would
    wait_for(lambda: sweep.ended()["sweep"] == 3, "the sweep")

    samples = _samples(client.get("/metrics").text)
    ends = {
        labels["source"]: value
        for name, labels, value in samples
        if name == "tracker_call_ends_total"
    }
    requests = {
        labels["outcome"]: value
        for name, labels, value in samples
        if name == "tracker_provider_requests_total"
    }
    assert ends == {"callback": 2, "provider": 0, "sweep": 3}
    assert requests == {"not_found": 3}


# --- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--sweep-every", "5m"], "--sweep-every needs --sweep-older-than"),
        (["--sweep-older-than", "4h"], "--sweep-older-than needs --sweep-every"),
        (["--resolve", "bandwidth"], "--resolve is for the background sweep"),
        (["--sweep-every", "soon", "--sweep-older-than", "4h"], "is not a positive duration"),
        (["--sweep-every", "5m", "--sweep-older-than", "4h", "--resolve", "twilio"], "twilio"),
    ],
)
def test_background_sweep_options_that_do_not_go_together_are_usage_errors(
    tmp_path: Path, options: list[str], message: str
) -> None:
    result = CliRunner().invoke(cli, ["--db", f"sqlite:///{tmp_path / 'x.db'}", "serve", *options])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_resolving_without_the_extra_or_the_credentials_is_a_usage_error_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in (
        "BANDWIDTH_USERNAME",
        "BANDWIDTH_PASSWORD",
        "BANDWIDTH_CLIENT_ID",
        "BANDWIDTH_CLIENT_SECRET",
        "BANDWIDTH_ACCOUNT_ID",
    ):
        monkeypatch.delenv(variable, raising=False)
    options = ["--sweep-every", "5m", "--sweep-older-than", "4h", "--resolve", "bandwidth"]

    result = CliRunner().invoke(cli, ["--db", f"sqlite:///{tmp_path / 'x.db'}", "serve", *options])

    assert result.exit_code == 2, result.output
    if find_spec("tracker.bandwidth") is None:
        assert "pip install 'tracker[bandwidth]'" in result.output
    else:
        assert "BANDWIDTH_USERNAME" in result.output and "BANDWIDTH_CLIENT_ID" in result.output


# --- real servers ------------------------------------------------------------------------------


def sweeping_server(database_url: str, workdir: Path, *options: str) -> Server:
    return Server(
        database_url,
        workdir,
        serve_options=("--sweep-every", "0.2", "--sweep-older-than", "1h", *options),
    )


def listening(server: Server) -> bool:
    return "serving on" in server.stderr


def rounds_of(server: Server) -> list[tuple[str, datetime, datetime, int]]:
    """Each round the server's stderr says it swept: holder, start, end, calls expired."""
    return [
        (
            found["holder"],
            datetime.fromisoformat(found["start"]),
            datetime.fromisoformat(found["end"]),
            int(found["expired"]),
        )
        for found in SWEPT.finditer(server.stderr)
    ]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_two_servers_on_one_database_sweep_one_at_a_time_and_each_call_once(
    database_url: str, tmp_path: Path
) -> None:
    migrate(database_url)
    with Tracker(database_url) as tracker:
        ids = old_live_calls(tracker, 200)
        servers = [
            sweeping_server(database_url, tmp_path / name, "--sweep-batch-size", "10")
            for name in ("a", "b")
        ]
        try:
            for server in servers:  # both at once: their first rounds race for the lease
                server.launch()
            for server in servers:
                wait_for(partial(listening, server), "the servers to listen")
            wait_for(lambda: tracker.count_calls(state="disconnected") == 200, "the first sweep")
            holding = lease_row(tracker)
            assert holding is not None
            (holder,) = [server for server in servers if f":{server.pid}:" in holding.holder]
            (other,) = [server for server in servers if server is not holder]

            assert holder.terminate() == 0
            after = lease_row(tracker)
            assert after is None or after.holder != holding.holder, "given up on SIGTERM"
            ids += old_live_calls(tracker, 100)
            wait_for(lambda: tracker.count_calls(state="disconnected") == 300, "the takeover")
            assert other.terminate() == 0
        finally:
            for server in servers:
                server.close()

        assert lease_row(tracker) is None
        assert sweep_entries(tracker) == Counter(dict.fromkeys(ids, 1)), "each call swept once"
        rounds = sorted(rounds_of(servers[0]) + rounds_of(servers[1]), key=lambda r: r[1])
        assert sum(expired for *_, expired in rounds) == 300
        for earlier, later in pairwise(rounds):
            assert earlier[2] <= later[1], f"two sweeps at once: {earlier} and {later}"
        assert {round_[0].split(":")[1] for round_ in rounds} == {str(s.pid) for s in servers}


@SQLITE_AND_POSTGRESQL
def test_sigterm_during_a_sweep_exits_0_with_whole_batches_and_the_lease_given_up(
    database_url: str, tmp_path: Path
) -> None:
    migrate(database_url)
    with Tracker(database_url) as tracker:
        old_live_calls(tracker, 1500)
        server = sweeping_server(database_url, tmp_path, "--sweep-batch-size", "5")
        try:
            server.start()
            wait_for(lambda: tracker.count_calls(state="disconnected") > 0, "the sweep to start")
            assert httpx.get(server.url("/healthz")).status_code == 200
            began = time.monotonic()
            assert server.terminate() == 0
            assert time.monotonic() - began < 10.0
        finally:
            server.close()

        swept = tracker.count_calls(state="disconnected")
        assert 0 < swept < 1500, "the sweep stopped part-way"
        assert swept % 5 == 0, "only whole batches were written"
        assert sum(sweep_entries(tracker).values()) == swept
        assert lease_row(tracker) is None
        assert "stopped early: the server is stopping" in server.stderr


def metric_samples(server: Server, name: str, label: str) -> dict[str, float]:
    samples = _samples(httpx.get(server.url("/metrics")).text)
    return {labels[label]: value for sample, labels, value in samples if sample == name}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_server_resolving_with_bandwidth_ends_calls_by_its_answers_and_counts_them(
    serve: Callable[..., Server], database_url: str, bandwidth_api: FakeBandwidth
) -> None:
    """Disconnected at Bandwidth: ended by the provider; still active there: kept live;
    unknown there: expired. The metrics count the ends by source and the requests by outcome."""
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    ended, active, unknown = new_call_id(), new_call_id(), new_call_id()
    bodies = {call_id: answer(call_id, start=two_hours_ago) for call_id in (ended, active, unknown)}
    with Tracker(database_url) as tracker:
        migrate(database_url)
        tracker.apply_many([encode(body) for body in bodies.values()])
        bandwidth_api.put(
            call_state_from(
                disconnect(ended, start=two_hours_ago, cause="busy"), disconnectCause="busy"
            )
        )
        bandwidth_api.put(call_state_from(bodies[active]))
        server = serve("--sweep-every", "0.2", "--sweep-older-than", "1h", "--resolve", "bandwidth")

        wait_for(lambda: tracker.count_calls(state="disconnected") == 2, "the sweep")
        ends = metric_samples(server, "tracker_call_ends_total", "source")
        requests = metric_samples(server, "tracker_provider_requests_total", "outcome")
        assert server.terminate() == 0

        by_provider, expired, kept = (tracker.get_call(i) for i in (ended, unknown, active))
        assert by_provider is not None and (by_provider.cause, by_provider.end_source) == (
            "busy",
            "provider",
        )
        assert expired is not None and expired.end_source == "sweep"
        assert kept is not None and kept.live
    assert ends == {"callback": 0, "provider": 1, "sweep": 1}
    assert requests["ok"] >= 2 and requests["not_found"] >= 1
    assert bandwidth_api.password not in server.stderr


@pytest.mark.parametrize("backend", ["sqlite"])
def test_refused_credentials_are_said_once_a_round_while_the_server_serves_on(
    serve: Callable[..., Server],
    database_url: str,
    bandwidth_api: FakeBandwidth,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BANDWIDTH_PASSWORD", "not-the-password")
    with Tracker(database_url) as tracker:
        migrate(database_url)
        tracker.apply_many(
            [encode(answer(new_call_id(), start=datetime.now(UTC) - HOUR * 2)) for _ in range(20)]
        )
        server = serve("--sweep-every", "0.2", "--sweep-older-than", "1h", "--resolve", "bandwidth")
        wait_for(lambda: server.stderr.count("refused the credentials") >= 3, "three rounds")
        assert httpx.get(server.url("/healthz")).status_code == 200
        assert server.terminate() == 0
        rounds = server.stderr.count("refused the credentials")

        assert tracker.count_calls(state="disconnected") == 0, "none expired unasked"
    assert len(bandwidth_api.requests) <= 4 * rounds, "a refusal stops the round's look-ups"
    assert "not-the-password" not in server.stderr
