"""The benchmark's measurements beside the rates: parsing one body against a plain pydantic
model, `apply` per event type, and the WAL frames a delivery writes on SQLite."""

from __future__ import annotations

import json
import math
import statistics
import time
import timeit
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from sqlalchemy import event
from sqlalchemy.engine import make_url

from benchmarks import wal
from benchmarks.floor import SqliteFloor
from benchmarks.runs import Databases, apply_with
from tracker import parsing
from tracker.tracker import Tracker

PARSE_TARGET: Final = 1.5  # tracker.parsing.read at most this many times a plain model
# The tracker's `apply` on SQLite writes at most this many WAL frames (pages) per delivery. Pages
# written are what a commit costs on a slow disk or a busy one, and unlike a rate they are a
# count: the same on any machine, so a change that writes more is seen at once.
WAL_FRAMES_TARGET: Final = 12
WAL_DELIVERIES: Final = 300  # the first deliveries of the stream counted (a count, not a timing)


# --- the parsing micro-benchmark ---------------------------------------------------------------


# The yardstick of the parse target (PARSE_TARGET: `tracker.parsing.read` at most that many times
# a plain pydantic model of the same fields). It is written out rather than derived from
# tracker.parsing because it must stay plain: no strictness, no length limits, no normalisation,
# no fallback for unknown event types, so the ratio shows what those cost. tests/test_bench.py
# keeps its fields and aliases equal to the tracker's models, so the two cannot drift apart.


class PlainCallback(BaseModel):
    """The same fields as tracker.parsing's models, with plain types and no validators."""

    model_config = ConfigDict(alias_generator=to_camel)

    event_time: datetime | None = None
    account_id: str | None = None
    application_id: str | None = None
    from_number: str | None = Field(default=None, alias="from")
    to_number: str | None = Field(default=None, alias="to")
    direction: Literal["inbound", "outbound"] | None = None
    call_id: str
    call_url: str | None = None
    enqueued_time: datetime | None = None
    start_time: datetime
    answer_time: datetime | None = None
    end_time: datetime
    cause: str
    error_message: str | None = None
    error_id: str | None = None
    tag: str | None = None
    sip_call_id: str | None = None
    sip_response_code: int | None = None


class PlainDisconnect(PlainCallback):
    event_type: Literal["disconnect"]


class PlainTransferDisconnect(PlainCallback):
    event_type: Literal["transferDisconnect"]
    parent_call_id: str
    transfer_caller_id: str | None = None
    transfer_to: str | None = None


@dataclass
class ParseFigures:
    tracker_us: float
    plain_us: float

    @property
    def ratio(self) -> float:
        return self.tracker_us / self.plain_us


def measure_parsing(bodies: Sequence[bytes], repeat: int = 7) -> ParseFigures:
    """µs per body of `tracker.parsing.read` and of a plain model's `model_validate_json` (the
    model picked per body in advance): the best of `repeat` interleaved timings of 50 ms or more.
    Terminal bodies only: the plain baseline models those two types, the ratio's yardstick since
    the first benchmark."""
    terminal = (b'"eventType":"disconnect"', b'"eventType":"transferDisconnect"')
    sample = [body for body in bodies if any(kind in body for kind in terminal)][:1000]
    plain: list[tuple[Callable[[bytes], object], bytes]] = [
        (
            PlainTransferDisconnect.model_validate_json
            if b'"transferDisconnect"' in body
            else PlainDisconnect.model_validate_json,
            body,
        )
        for body in sample
    ]
    read = parsing.read

    def tracker_pass() -> None:
        for body in sample:
            read(body)

    def plain_pass() -> None:
        for validate, body in plain:
            validate(body)

    tracker_timer = timeit.Timer(tracker_pass)
    plain_timer = timeit.Timer(plain_pass)
    number = max(1, math.ceil(0.05 / plain_timer.timeit(1)))
    tracker_times: list[float] = []
    plain_times: list[float] = []
    for _ in range(repeat):
        tracker_times.append(tracker_timer.timeit(number))
        plain_times.append(plain_timer.timeit(number))
    per_body = 1e6 / (number * len(sample))
    return ParseFigures(min(tracker_times) * per_body, min(plain_times) * per_body)


def measure_per_event_type(
    databases: Databases, bodies: Sequence[bytes], warmup: Sequence[bytes]
) -> dict[str, float]:
    """Mean µs of one `apply` per event type, over the stream in arrival order (one commit per
    delivery): a live callback should cost no more than a terminal one."""
    spent: defaultdict[str, list[float]] = defaultdict(list)
    with databases.fresh() as url, Tracker(url) as tracker:
        tracker.upgrade()
        apply_with(tracker, "apply", warmup, 1)
        for body in bodies:
            event_type = str(json.loads(body)["eventType"])
            started = time.perf_counter()
            tracker.apply(body)
            spent[event_type].append(time.perf_counter() - started)
    return {
        event_type: statistics.fmean(times) * 1e6
        for event_type, times in sorted(spent.items(), key=lambda item: -len(item[1]))
    }


# --- pages written per commit: WAL frames on SQLite --------------------------------------------


@dataclass(frozen=True)
class WalFrames:
    """WAL frames appended per delivery, one commit each, by the tracker's `apply` and the floor
    on the same deliveries."""

    deliveries: int
    tracker: float
    floor: float

    @property
    def passed(self) -> bool:
        return self.tracker <= WAL_FRAMES_TARGET


def measure_wal_frames(
    databases: Databases, bodies: Sequence[bytes], warmup: Sequence[bytes]
) -> WalFrames:
    """WAL frames per delivery of the floor and of `apply`, one commit per delivery, on the first
    `WAL_DELIVERIES` bodies, each after the warm-up. Counted before any connection closes: the
    last one to close checkpoints the WAL and deletes it. The stream is sorted by arrival, so its
    start, and the count, are the same for one seed once `--deliveries` is a few times larger."""
    sample = bodies[:WAL_DELIVERIES]
    with databases.fresh() as url:
        database = make_url(url).database
        assert database
        floor = SqliteFloor(make_url(url))
        try:
            wal.no_auto_checkpoint(floor.connection)
            wal.check_no_auto_checkpoint(
                floor.connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            )
            floor.create_schema()
            floor.run(warmup, 1)
            before = wal.mark(database)
            floor.run(sample, 1)
            floor_frames = wal.frames_between(before, wal.mark(database))
        finally:
            floor.close()
    with databases.fresh() as url, Tracker(url) as tracker:
        database = make_url(url).database
        assert database
        tracker.upgrade()
        # Added after the tracker's own connect listeners, so it runs after their pragmas; the
        # pool is emptied so that no connection made before it is used.
        event.listen(tracker.engine, "connect", wal.no_auto_checkpoint)
        tracker.engine.dispose()
        apply_with(tracker, "apply", warmup, 1)
        with tracker.engine.connect() as connection:
            wal.check_no_auto_checkpoint(
                connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
            )
        before = wal.mark(database)
        apply_with(tracker, "apply", sample, 1)
        tracker_frames = wal.frames_between(before, wal.mark(database))
    return WalFrames(len(sample), tracker_frames / len(sample), floor_frames / len(sample))
