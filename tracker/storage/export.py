"""Export pages: call detail records read a keyset page at a time (`where_calls_page`), with
the legs of each conversation (`where_leg_answers`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, NamedTuple

from sqlalchemy import Connection, Integer, bindparam, func, or_, select
from sqlalchemy.sql.elements import ClauseElement

from tracker.storage import driver
from tracker.storage.columns import UTCDateTime
from tracker.storage.reads import BY_KNOWN_START_TIME
from tracker.storage.statements import cached, chunks
from tracker.storage.tables import calls, transfers


class ExportedCall(NamedTuple):
    """The facts of a call a call detail record shows, as read for an export: no history, no
    ranks, so a page of a million-call export parses no history JSON and builds no record."""

    call_id: str
    parent_call_id: str | None
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
    machine_detection: str | None
    attestation: str | None
    verstat: str | None
    caller_display_name: str | None
    swept_at: datetime | None
    end_source: str | None
    legs: int  # calls whose parent it is
    transfer_attempts: int


# Counted in the row's own statement, each an index look-up per call (the partial index of legs,
# the transfers' index on call id): no second statement with a list of a page's ids.
_LEG: Final = calls.alias("leg")
_LEGS_OF_CALL: Final = (
    select(func.count()).where(_LEG.c.parent_call_id == calls.c.call_id).scalar_subquery()
)
_TRANSFERS_OF_CALL: Final = (
    select(func.count()).where(transfers.c.call_id == calls.c.call_id).scalar_subquery()
)
_EXPORTED_COLUMNS: Final = (
    *(calls.c[name] for name in ExportedCall._fields[:-2]),
    _LEGS_OF_CALL,
    _TRANSFERS_OF_CALL,
)


def where_calls_page(
    connection: Connection,
    *,
    after: tuple[datetime | None, str] | None,
    since: datetime | None,
    until: datetime | None,
    account_id: str | None,
    originals_only: bool,
    limit: int,
) -> list[ExportedCall]:
    """The next `limit` calls after `after` (the start time and id of the last call of the
    previous page) in `BY_START_TIME` order: started in [since, until), of `account_id`, with no
    parent when `originals_only`. Placeholders (no start time) come after the others, and only
    when no time bound is given: their start is unknown, so no window holds them.

    A page starts where the last one ended (keyset pagination, never an offset), read along the
    start-time index or the (account, start time) one, so every page costs the same however deep
    into the table it is. The statement runs on the driver (`statements.cached`): a page is a
    thousand rows, and SQLAlchemy's result objects would cost more than reading them."""
    values: dict[str, Any] = {"limit": limit, "since": since, "until": until}
    values["account_id"] = account_id
    filters = (since is not None, until is not None, account_id is not None, originals_only)
    found: list[ExportedCall] = []
    if after is None or after[0] is not None:
        if after is not None:
            values["after_start"], values["after_id"] = after
        compiled = cached(connection, _select_calls_page, False, after is not None, *filters)
        cursor = driver.run(connection, compiled, values)
        found = [ExportedCall._make(row) for row in driver.rows(compiled, cursor)]
        if len(found) == limit or since is not None or until is not None:
            return found
    values["limit"] = limit - len(found)
    placeholders_after = after is not None and after[0] is None
    if placeholders_after:
        values["after_id"] = after[1] if after is not None else None
    compiled = cached(connection, _select_calls_page, True, placeholders_after, *filters)
    cursor = driver.run(connection, compiled, values)
    return found + [ExportedCall._make(row) for row in driver.rows(compiled, cursor)]


def _select_calls_page(
    placeholders: bool, after: bool, since: bool, until: bool, account: bool, originals: bool
) -> tuple[ClauseElement, Sequence[str]]:
    query = select(*_EXPORTED_COLUMNS).limit(bindparam("limit", type_=Integer))
    keys = ["limit"]
    if placeholders:
        query = query.where(calls.c.start_time.is_(None)).order_by(calls.c.call_id)
        if after:
            query = query.where(calls.c.call_id > bindparam("after_id"))
            keys.append("after_id")
    else:
        query = query.where(calls.c.start_time.is_not(None))
        query = query.order_by(*BY_KNOWN_START_TIME)
        if after:
            # The range alone bounds the index scan; the OR only skips the ties already read.
            after_start = bindparam("after_start", type_=UTCDateTime)
            query = query.where(
                calls.c.start_time >= after_start,
                or_(calls.c.start_time > after_start, calls.c.call_id > bindparam("after_id")),
            )
            keys += ["after_start", "after_id"]
    for wanted, name, condition in (
        (since, "since", calls.c.start_time >= bindparam("since", type_=UTCDateTime)),
        (until, "until", calls.c.start_time < bindparam("until", type_=UTCDateTime)),
        (account, "account_id", calls.c.account_id == bindparam("account_id")),
    ):
        if wanted:
            query = query.where(condition)
            keys.append(name)
    if originals:
        query = query.where(calls.c.parent_call_id.is_(None))
    return query, keys


_SELECT_LEG_ANSWERS: Final = select(
    calls.c.call_id,
    calls.c.parent_call_id,
    calls.c.to_number,
    calls.c.answer_time,
    calls.c.end_time,
    _TRANSFERS_OF_CALL,
    _LEGS_OF_CALL,
).where(calls.c.parent_call_id.in_(bindparam("call_ids", expanding=True)))


class LegAnswer(NamedTuple):
    """What a conversation's row needs of each of its legs."""

    call_id: str
    parent_call_id: str
    to_number: str | None
    answer_time: datetime | None
    end_time: datetime | None
    transfer_attempts: int
    legs: int


def where_leg_answers(connection: Connection, parent_ids: Sequence[str]) -> list[LegAnswer]:
    """The legs of these calls: one level of their transfer trees."""
    found: list[LegAnswer] = []
    for chunk in chunks(parent_ids):
        found.extend(
            LegAnswer._make(row)
            for row in connection.execute(_SELECT_LEG_ANSWERS, {"call_ids": chunk})
        )
    return found
