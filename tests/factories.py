"""Small factories for callback bodies: each test states only what it is about."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

_serial = itertools.count(1)

ACCOUNT = "55555555"
APPLICATION = "7fc9698a-b04a-468b-9e8f-91238c0d0086"
BASE_TIME = datetime(2026, 6, 10, 19, 15, 0, tzinfo=UTC)


def new_call_id() -> str:
    return f"c-95ac8d6e-{next(_serial):08x}-b38f-4198-93c1-51633ec68f8d"


def stamp(at: datetime) -> str:
    """Bandwidth's spelling: milliseconds, `Z`."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def call_url(call_id: str, account: str = ACCOUNT) -> str:
    return f"https://voice.bandwidth.com/api/v2/accounts/{account}/calls/{call_id}"


def disconnect(
    call_id: str | None = None,
    *,
    start: datetime = BASE_TIME,
    ring: float | None = 3.0,
    talk: float = 60.0,
    cause: str = "hangup",
    **fields: Any,
) -> dict[str, Any]:
    """A `disconnect` body. `ring=None` means never answered; extra keyword arguments override
    or add fields (use their Bandwidth spelling); a value of `...` removes the key."""
    call_id = call_id or new_call_id()
    answered = start + timedelta(seconds=ring) if ring is not None else None
    end = (answered or start) + timedelta(seconds=talk if answered else 20.0)
    body: dict[str, Any] = {
        "eventType": "disconnect",
        "eventTime": stamp(end + timedelta(milliseconds=10)),
        "accountId": ACCOUNT,
        "applicationId": APPLICATION,
        "from": "+15551112222",
        "to": "+15553334444",
        "direction": "outbound",
        "callId": call_id,
        "callUrl": call_url(call_id),
        "startTime": stamp(start),
        "endTime": stamp(end),
        "cause": cause,
    }
    if answered is not None:
        body["answerTime"] = stamp(answered)
    return _override(body, fields)


def transfer_disconnect(
    parent_call_id: str,
    call_id: str | None = None,
    *,
    start: datetime = BASE_TIME + timedelta(seconds=10),
    ring: float | None = 2.0,
    talk: float = 30.0,
    cause: str = "hangup",
    **fields: Any,
) -> dict[str, Any]:
    """A `transferDisconnect` body for a leg of `parent_call_id` (no accountId, as documented)."""
    call_id = call_id or new_call_id()
    answered = start + timedelta(seconds=ring) if ring is not None else None
    end = (answered or start) + timedelta(seconds=talk if answered else 15.0)
    body: dict[str, Any] = {
        "eventType": "transferDisconnect",
        "eventTime": stamp(end + timedelta(milliseconds=10)),
        "from": "+15551112222",
        "to": "+15553334444",
        "direction": "outbound",
        "callId": call_id,
        "parentCallId": parent_call_id,
        "callUrl": call_url(call_id),
        "transferCallerId": "+15551115555",
        "transferTo": "+15556667777",
        "startTime": stamp(start),
        "endTime": stamp(end),
        "cause": cause,
    }
    if answered is not None:
        body["answerTime"] = stamp(answered)
    return _override(body, fields)


def _override(body: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    for key, value in fields.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body
