"""What the tracker hands back: results of `apply`, call snapshots, history and the event log.

Plain frozen dataclasses, detached from any database session, safe to keep and pass around.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class Outcome(StrEnum):
    """What `apply` did with one body."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    INVALID = "invalid"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one delivery, with a stable `reason` code and a `detail` for people."""

    outcome: Outcome
    call_id: str | None
    reason: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class Transition:
    """One move of a call's state machine, at the instant the callback says it happened."""

    source: str
    target: str
    at: datetime
    event: str
    event_id: int


@dataclass(frozen=True, slots=True)
class Call:
    """A snapshot of one call (one leg) as the tracker knows it."""

    call_id: str
    parent_call_id: str | None
    legs: tuple[str, ...]
    account_id: str | None
    application_id: str | None
    direction: str | None
    from_number: str | None
    to_number: str | None
    state: str
    cause: str | None
    disposition: str | None
    start_time: datetime | None
    answer_time: datetime | None
    end_time: datetime | None
    enqueued_time: datetime | None
    tag: str | None
    error_message: str | None
    error_id: str | None
    history: tuple[Transition, ...]

    @property
    def answered(self) -> bool:
        return self.answer_time is not None

    @property
    def duration(self) -> timedelta | None:
        return _between(self.start_time, self.end_time)

    @property
    def talk_duration(self) -> timedelta | None:
        return _between(self.answer_time, self.end_time)

    @property
    def ring_duration(self) -> timedelta | None:
        return _between(self.start_time, self.answer_time)


def _between(start: datetime | None, end: datetime | None) -> timedelta | None:
    if start is None or end is None:
        return None
    return end - start


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the event log: a body exactly as received and what became of it."""

    id: int
    received_at: datetime
    body: bytes
    outcome: Outcome
    reason: str | None
    detail: str
    call_id: str | None
    event_type: str | None


@dataclass(frozen=True, slots=True)
class SchemaUpgrade:
    """What `Tracker.upgrade` did: the revision found (None: an empty database) and the head."""

    from_revision: str | None
    to_revision: str

    @property
    def changed(self) -> bool:
        return self.from_revision != self.to_revision
