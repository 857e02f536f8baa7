"""Under load and kill -9, every delivery answered 204 is logged once, as a serial run decides."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.http_server import (
    Server,
)
from tests.http_support import (
    OLD,
    SQLITE_AND_POSTGRESQL,
    _metrics_text,
    _samples,
    dumps,
    facts,
    outcome_of,
)
from tracker import Event, Tracker
from tracker.testing import (
    realistic_bodies,
    relayed,
)

# --- load ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int | None
    outcome: str | None = None
    reason: str | None = None
    error: str | None = None


def deliver_concurrently(
    url: str,
    bodies: Sequence[bytes],
    connections: int,
    *,
    kill_after: int | None = None,
    kill: Callable[[], None] | None = None,
) -> list[Answer | None]:
    """Send every body once, over `connections` keep-alive connections at once, each taking the
    next body as soon as its last one is answered. With `kill_after`, `kill()` is called when
    that many were answered 204, and no new request is started afterwards (None: not sent)."""
    answers: list[Answer | None] = [None] * len(bodies)
    pending = iter(range(len(bodies)))
    accepted = 0
    stopped = False

    async def connection() -> None:
        nonlocal accepted, stopped
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(auth=OLD, timeout=120.0, limits=limits) as session:
            for index in pending:
                if stopped:
                    return
                try:
                    response = await session.post(url, content=bodies[index])
                except httpx.HTTPError as error:
                    answers[index] = Answer(None, error=repr(error))
                    continue
                answers[index] = Answer(*outcome_of(response))
                if response.status_code == 204:
                    accepted += 1
                    if kill is not None and accepted == kill_after:
                        kill()
                        stopped = True

    async def run() -> None:
        await asyncio.gather(*(connection() for _ in range(connections)))

    asyncio.run(run())
    return answers


def load_bodies(seed: int, count: int) -> list[bytes]:
    """`count` deliveries: a realistic evening's callbacks (every tracked event type), exact
    repeats, re-serialized copies (other spacing and key order: the same delivery), terminal
    events conflicting with earlier ones, bodies that are no callback and untracked event
    types; shuffled, so legs come before parents and answers before their calls."""
    rng = random.Random(seed)
    distinct = realistic_bodies(count * 64 // 100, seed=seed)
    repeats = [rng.choice(distinct) for _ in range(count * 15 // 100)]
    reserialized = [
        relayed(json.loads(rng.choice(distinct)), seed=rng.getrandbits(32))
        for _ in range(count * 12 // 100)
    ]
    ends = [json.loads(body) for body in distinct if b'"eventType":"disconnect"' in body]
    conflicting = [
        dumps({**end, "cause": "busy" if end["cause"] != "busy" else "timeout"})
        for end in rng.sample(ends, count * 4 // 100)
    ]
    untracked = [
        dumps(
            {"eventType": rng.choice(["dtmf", "gather", "recordingComplete"]), "callId": f"c-{n}"}
        )
        for n in range(count * 2 // 100)
    ]
    junk = [b"", b"not json", b"[]", b"{}", b'{"eventType":"disconnect"}', b"\xff"]
    bodies = [*distinct, *repeats, *reserialized, *conflicting, *untracked]
    bodies += [junk[n % len(junk)] for n in range(count - len(bodies))]
    rng.shuffle(bodies)
    assert len(bodies) == count
    return bodies


def serial_replay(entries: Sequence[Event], tmp_path: Path) -> list[tuple[str, str | None]]:
    """The outcome and reason of each body applied one by one with `Tracker.apply`, in the
    order given, into a fresh SQLite database; and that tracker's calls (see `facts`)."""
    replay = Tracker(f"sqlite:///{tmp_path / 'serial.db'}", durable=False)
    replay.upgrade()
    try:
        return [
            (result.outcome.value, result.reason)
            for result in (replay.apply(entry.body) for entry in entries)
        ]
    finally:
        replay.close()


@pytest.mark.slow
@SQLITE_AND_POSTGRESQL
def test_load_from_64_connections_every_204_is_logged_once_as_a_serial_run_decides(
    server: Server, database_url: str, tmp_path: Path
) -> None:
    """5,000 deliveries over 64 concurrent connections.

    Arrival order among 64 connections is not the send order, and outcomes do depend on order
    (of two conflicting terminal events the first is applied and the second rejected; of two
    copies of one delivery the first is applied), so the reference is the serial run in the
    order the server applied them: the event log, oldest first (one writer applies groups in
    arrival order, so the log's order is the application order). Checked:
    1. every request was answered 204, none failed or raised;
    2. answers and log agree exactly: the multiset of (body, outcome, reason) answered equals the
       multiset logged, so each body answered 204 is in the log once per delivery, no more;
    3. applying the logged bodies one by one with `Tracker.apply`, in log order, into a fresh
       database gives each the outcome and reason the server gave, and the same calls;
    4. the server is still healthy, and its metrics counted every delivery and no error.
    """
    bodies = load_bodies(seed=8, count=5000)
    started = time.monotonic()
    answers = deliver_concurrently(server.url(), bodies, connections=64)
    seconds = time.monotonic() - started

    failed = [answer for answer in answers if answer is None or answer.status != 204]
    assert failed == [], f"{len(failed)} not answered 204, e.g. {failed[:3]}"
    assert server.alive()
    with Tracker(database_url) as reader:
        logged = reader.events()
        calls = facts(reader.calls())
    answered = Counter(
        (body, answer.outcome, answer.reason)
        for body, answer in zip(bodies, answers, strict=True)
        if answer is not None
    )
    assert Counter((entry.body, entry.outcome.value, entry.reason) for entry in logged) == answered
    assert {outcome for _body, outcome, _reason in answered} == {
        "applied",
        "duplicate",
        "rejected",
        "invalid",
        "ignored",
    }

    serial = serial_replay(logged, tmp_path)
    assert [(entry.outcome.value, entry.reason) for entry in logged] == serial
    with Tracker(f"sqlite:///{tmp_path / 'serial.db'}") as reference:
        assert calls == facts(reference.calls())

    assert httpx.get(server.url("/healthz")).status_code == 200
    samples = _samples(_metrics_text(server))
    total = sum(value for name, _labels, value in samples if name == "tracker_deliveries_total")
    assert total == len(bodies)
    errors = [value for name, _labels, value in samples if name == "tracker_storage_errors_total"]
    assert errors == [0]
    # Concurrent requests did share commits: fewer groups than deliveries.
    groups = [value for name, _labels, value in samples if name == "tracker_group_size_count"]
    assert groups and groups[0] < len(bodies)
    assert "Traceback" not in server.stderr
    print(f"load: {len(bodies)} deliveries, 64 connections, {len(bodies) / seconds:.0f}/s")


@pytest.mark.slow
@SQLITE_AND_POSTGRESQL
def test_kill_9_under_load_loses_no_delivery_answered_204(
    serve: Callable[..., Server], database_url: str
) -> None:
    """SIGKILL while 64 connections deliver: no shutdown, no flush. After a restart on the same
    database, every delivery answered 204 before the kill is in the log (a 204 is sent only
    after the commit); deliveries in flight may or may not be, but none is half there: the
    restarted server is healthy and applies their redelivery."""
    server = serve()
    bodies = load_bodies(seed=9, count=3000)
    answers = deliver_concurrently(
        server.url(), bodies, connections=64, kill_after=1200, kill=server.kill
    )
    assert not server.alive()

    accepted = Counter(
        body
        for body, answer in zip(bodies, answers, strict=True)
        if answer and answer.status == 204
    )
    cut_off = [answer for answer in answers if answer is not None and answer.status is None]
    assert sum(accepted.values()) >= 1200
    assert cut_off, "the kill should have cut requests in flight"

    restarted = serve()
    assert httpx.get(restarted.url("/healthz")).status_code == 200
    with Tracker(database_url) as reader:
        logged = Counter(entry.body for entry in reader.events())
    missing = accepted - logged
    assert missing == Counter(), f"{sum(missing.values())} deliveries answered 204 are lost"
    assert logged - Counter(bodies) == Counter(), "the log holds deliveries never sent"

    unanswered = [
        body
        for body, answer in zip(bodies, answers, strict=True)
        if not answer or answer.status != 204
    ]
    redelivered = deliver_concurrently(restarted.url(), unanswered, connections=16)
    assert all(answer is not None and answer.status == 204 for answer in redelivered)
    with Tracker(database_url) as reader:
        assert len(reader.events()) == sum(logged.values()) + len(unanswered)
    assert "Traceback" not in restarted.stderr
