"""What the pages read, and the JSON they read it as.

The facade lists calls oldest first (`Tracker.calls`), the order an export or a report wants;
a person looking for "the call that just dropped" wants the newest first, and a number to find
it by. So the recent calls are read here, newest first, a keyset page at a time, with the same
snapshots (`tracker.reading.snapshots`) every other reader of calls gets.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Select, and_, or_, select

from tracker import lifecycle, storage
from tracker.errors import check_account, check_choice, check_text, check_window
from tracker.reading import check_states, database_errors, one_moment, snapshots
from tracker.records import Call, CallStatistics, Event
from tracker.storage.tables import calls
from tracker.tracker import Tracker

PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 500
# The deliveries and legs one call page shows, at most: a call has a handful of each; the
# bound keeps a call flooded with repeats (a relay gone mad) from making one huge page.
MAX_DELIVERIES: Final = 500
MAX_TREE: Final = 100
WINDOWS: Final = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


@dataclass(frozen=True, slots=True)
class CallQuery:
    """The filters of the recent calls list, checked once, for the page and `/api/calls`."""

    state: list[str] | None = None
    disposition: str | None = None
    account_id: str | None = None
    number: str | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None
    before: tuple[datetime, str] | None = None
    limit: int = PAGE_SIZE

    @classmethod
    def parse(cls, query: dict[str, str], now: datetime) -> CallQuery:
        """From a request's query string: `state` (one or several, comma-separated, or
        `live`), `disposition`, `account`, `number`, `window` (1h, 24h, 7d, 30d) or `since`
        and `until` (ISO 8601 with an offset), `cursor` (the `next` of the page before) and
        `limit`. A bad value raises ValueError, whose text names it."""
        state: object = None
        if query.get("state"):
            text = query["state"]
            state = list(lifecycle.LIVE_STATES) if text == "live" else text.split(",")
        states = check_states(state)
        disposition = query.get("disposition") or None
        if disposition is not None:
            check_choice("disposition", disposition, lifecycle.ALL_DISPOSITIONS)
        account_id = query.get("account") or None
        check_account(account_id)
        number = (query.get("number") or "").strip() or None
        check_text("number", number)
        since = _instant("since", query.get("since"))
        until = _instant("until", query.get("until"))
        window = query.get("window") or None
        if window is not None:
            if window not in WINDOWS:
                raise ValueError(f"window must be one of {', '.join(WINDOWS)}, not {window!r}")
            if since is not None:
                raise ValueError("give window or since, not both")
            since = now - WINDOWS[window]
        check_window(since, until)
        limit = _limit(query.get("limit"))
        return cls(states, disposition, account_id, number, since, until, _cursor(query), limit)

    def select(self) -> Select[Any]:
        """The start times and ids of the page's calls, newest first. Calls whose start is not
        known yet (heard of only through a leg's callback) are not listed: they have no place
        in time; a search by id finds them."""
        query = select(calls.c.start_time, calls.c.call_id).where(calls.c.start_time.is_not(None))
        if self.state is not None:
            query = query.where(calls.c.state.in_(self.state))
        if self.disposition is not None:
            query = query.where(calls.c.disposition == self.disposition)
        if self.account_id is not None:
            query = query.where(calls.c.account_id == self.account_id)
        if self.number is not None:
            query = query.where(
                or_(calls.c.from_number == self.number, calls.c.to_number == self.number)
            )
        if self.started_after is not None:
            query = query.where(calls.c.start_time >= self.started_after)
        if self.started_before is not None:
            query = query.where(calls.c.start_time < self.started_before)
        if self.before is not None:
            start, call_id = self.before
            query = query.where(
                or_(
                    calls.c.start_time < start,
                    and_(calls.c.start_time == start, calls.c.call_id < call_id),
                )
            )
        order = (calls.c.start_time.desc(), calls.c.call_id.desc())
        return query.order_by(*order).limit(self.limit + 1)


def recent_calls(tracker: Tracker, query: CallQuery) -> tuple[list[Call], str | None]:
    """One page of the calls matching `query`, newest first, and the cursor of the next page
    (None on the last), read at one moment."""
    with database_errors(), one_moment(tracker.engine) as connection:
        found = list(connection.execute(query.select()))
        page = found[: query.limit]
        records = storage.where_calls_by_id(connection, [row.call_id for row in page])
        listed = snapshots(connection, [records[row.call_id] for row in page])
    cursor = None
    if len(found) > query.limit:
        last = page[-1]
        cursor = _encode_cursor(last.start_time, last.call_id)
    return listed, cursor


@dataclass(frozen=True, slots=True)
class CallPage:
    """One call, its tree of calls (the original call and every leg under it), and the
    deliveries logged for the calls of the tree, oldest first."""

    call: Call
    root: Call
    children: dict[str, list[Call]]
    deliveries: list[Event]
    more_deliveries: bool


def call_page(tracker: Tracker, call_id: str) -> CallPage | None:
    """Everything the call page shows of `call_id`; None when the tracker never heard of it."""
    call = tracker.get_call(call_id)
    if call is None:
        return None
    root = call
    seen = {call.call_id}
    while root.parent_call_id is not None and len(seen) < MAX_TREE:
        parent = tracker.get_call(root.parent_call_id)
        if parent is None or parent.call_id in seen:
            break
        seen.add(parent.call_id)
        root = parent
    children: dict[str, list[Call]] = {}
    waiting = [root]
    known = {root.call_id}
    while waiting and len(known) < MAX_TREE:
        parent = waiting.pop(0)
        for leg_id in parent.legs:
            if leg_id in known or len(known) >= MAX_TREE:
                continue
            leg = tracker.get_call(leg_id)
            if leg is None:
                continue
            known.add(leg_id)
            children.setdefault(parent.call_id, []).append(leg)
            waiting.append(leg)
    deliveries: list[Event] = []
    more = False
    for member in sorted(known):
        for event in tracker.iter_events(member, page_size=MAX_DELIVERIES):
            if len(deliveries) >= MAX_DELIVERIES:
                more = True
                break
            deliveries.append(event)
    deliveries.sort(key=lambda event: event.id)
    return CallPage(call, root, children, deliveries, more)


def call_json(call: Call) -> dict[str, Any]:
    """A call as `/api/calls` and `/api/live` give it: its facts, instants in ISO 8601 UTC."""
    return {
        "call_id": call.call_id,
        "parent_call_id": call.parent_call_id,
        "legs": list(call.legs),
        "account_id": call.account_id,
        "application_id": call.application_id,
        "direction": call.direction,
        "from_number": call.from_number,
        "to_number": call.to_number,
        "state": call.state,
        "cause": call.cause,
        "disposition": call.disposition,
        "start_time": iso(call.start_time),
        "answer_time": iso(call.answer_time),
        "end_time": iso(call.end_time),
        "duration": _seconds(call.duration),
        "talk_duration": _seconds(call.talk_duration),
        "tag": call.tag,
        "error_message": call.error_message,
        "error_id": call.error_id,
        "end_source": call.end_source,
        "machine_detection": call.machine_detection,
        "attestation": call.attestation,
        "verstat": call.verstat,
        "caller_display_name": call.caller_display_name,
    }


def call_page_json(page: CallPage) -> dict[str, Any]:
    """`/api/calls/{id}`: the call, its history, its transfer attempts, the tree of calls it
    belongs to (each node with its facts and its `legs` as nodes), and the deliveries."""

    def node(call: Call) -> dict[str, Any]:
        return call_json(call) | {
            "legs": [node(leg) for leg in page.children.get(call.call_id, [])]
        }

    return {
        "call": call_json(page.call)
        | {
            "history": [
                {
                    "source": step.source,
                    "target": step.target,
                    "at": iso(step.at),
                    "event": step.event,
                    "event_id": step.event_id,
                }
                for step in page.call.history
            ],
            "transfers": [
                {
                    "at": iso(attempt.at),
                    "cause": attempt.cause,
                    "disposition": attempt.disposition,
                    "transfer_to": attempt.transfer_to,
                    "transfer_caller_id": attempt.transfer_caller_id,
                    "error_message": attempt.error_message,
                    "error_id": attempt.error_id,
                }
                for attempt in page.call.transfers
            ],
        },
        "tree": node(page.root),
        "deliveries": [delivery_json(event) for event in page.deliveries],
        "more_deliveries": page.more_deliveries,
    }


def delivery_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "received_at": iso(event.received_at),
        "call_id": event.call_id,
        "event_type": event.event_type,
        "outcome": str(event.outcome),
        "reason": event.reason,
        "detail": event.detail,
        "origin": event.origin,
        "body": body_text(event.body),
    }


def body_text(body: bytes) -> str:
    """A delivery's body for a person: JSON indented, anything else as text, as received."""
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body.decode("utf-8", errors="replace")


def statistics_json(figures: CallStatistics) -> dict[str, Any]:
    return {
        "start": iso(figures.start),
        "end": iso(figures.end),
        "attempts": figures.attempts,
        "answered": figures.answered,
        "live": figures.live,
        "asr": figures.asr,
        "acd": figures.acd,
        "mean_ring_time": figures.mean_ring_time,
        "peak_concurrent_calls": figures.peak_concurrent_calls,
        "dispositions": dict(figures.dispositions),
        "causes": dict(figures.causes),
        "end_sources": dict(figures.end_sources),
    }


def iso(instant: datetime | None) -> str | None:
    return None if instant is None else instant.astimezone(UTC).isoformat()


def _seconds(length: timedelta | None) -> float | None:
    return None if length is None else length.total_seconds()


def _instant(name: str, text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} is not an ISO 8601 instant: {text!r}") from None
    if instant.tzinfo is None:
        raise ValueError(f"{name} needs an offset (2026-01-31T12:00:00+00:00 or ...Z): {text!r}")
    return instant


def _limit(text: str | None) -> int:
    if not text:
        return PAGE_SIZE
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}: {text!r}")
    return int(text)


def _encode_cursor(start: datetime, call_id: str) -> str:
    raw = json.dumps([start.astimezone(UTC).isoformat(), call_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor(query: dict[str, str]) -> tuple[datetime, str] | None:
    text = query.get("cursor")
    if not text:
        return None
    try:
        start, call_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        instant = datetime.fromisoformat(start)
    except (ValueError, TypeError, binascii.Error):
        raise ValueError("cursor is not one this server gave: start again without it") from None
    if instant.tzinfo is None or not isinstance(call_id, str):
        raise ValueError("cursor is not one this server gave: start again without it")
    return instant, call_id


def tree_order(page: CallPage) -> Sequence[tuple[int, Call]]:
    """The tree's calls depth first, each with its depth: the rows of the legs tree."""
    rows: list[tuple[int, Call]] = []

    def walk(call: Call, depth: int) -> None:
        rows.append((depth, call))
        for leg in page.children.get(call.call_id, []):
            walk(leg, depth + 1)

    walk(page.root, 0)
    return rows
