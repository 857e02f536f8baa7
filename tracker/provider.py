"""What Bandwidth's own records say of a call: its call state document, read, and the error a
look-up that failed raises.

Bandwidth keeps each call's state for 7 days (`GET /accounts/{accountId}/calls/{callId}`, and a
list of calls per window). The tracker applies what it says to a call whose terminal callback
was lost, as the *provider's* end (`Call.end_source` `provider`): below every callback, so that
a real terminal callback arriving later replaces it entirely (`tracker.lifecycle.provide`).

No network here: `tracker.bandwidth` (extra `tracker[bandwidth]`) asks Bandwidth; this module
only reads what it answered, and is what the core knows of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError
from pydantic.alias_generators import to_camel

from tracker.callbacks import AnyZoneTimestamp, Identifier, Text
from tracker.errors import TrackerError
from tracker.instants import as_utc

# The log's origin for a provider answer, and the event type its log entry and history step
# name: Bandwidth calls the document a call state.
PROVIDER_ORIGIN: Final = "provider"
CALL_STATE: Final = "callState"
# How long Bandwidth keeps a call's state, as it documents it: a call older than this is
# unknown there whatever became of it.
KEPT_DAYS: Final = 7

# Bandwidth's call states; only `disconnected` says how the call ended.
DISCONNECTED: Final = "disconnected"


class ProviderError(TrackerError):
    """A question to the provider got no usable answer: a timeout, a 5xx, a 429 still refused
    after honouring `Retry-After`, refused credentials, an answer that is not a call state.
    A `TrackerError`, not a `StorageError`: the database is fine, and a call a look-up
    failed for stays live (never expired on a failure) for the next sweep to ask again.
    `refused` is True when the credentials are missing or refused: asking again will not
    help, so a sweep stops there."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class _CallStateDocument(BaseModel):
    """Bandwidth's call state, as `GET .../calls/{callId}` and the call list give it. Lenient
    like the callbacks: unknown keys kept, times of any precision and zone (read as UTC when
    they have none), causes as free strings."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, frozen=True)

    call_id: Identifier
    state: Annotated[str, Strict(), Field(min_length=1, max_length=64)]
    account_id: Identifier | None = None
    application_id: Identifier | None = None
    parent_call_id: Identifier | None = None
    direction: Literal["inbound", "outbound"] | None = None
    from_number: Text | None = Field(default=None, alias="from")
    to_number: Text | None = Field(default=None, alias="to")
    enqueued_time: AnyZoneTimestamp | None = None
    start_time: AnyZoneTimestamp | None = None
    answer_time: AnyZoneTimestamp | None = None
    end_time: AnyZoneTimestamp | None = None
    last_update: AnyZoneTimestamp | None = None
    disconnect_cause: Text | None = None
    error_message: Text | None = None
    error_id: Text | None = None


@dataclass(frozen=True, slots=True)
class ProviderCall:
    """One call as Bandwidth's records have it, times in UTC. `ended` when Bandwidth says it
    disconnected: only then do its facts end a call here."""

    call_id: str
    state: str
    account_id: str | None = None
    application_id: str | None = None
    parent_call_id: str | None = None
    direction: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    enqueued_time: datetime | None = None
    start_time: datetime | None = None
    answer_time: datetime | None = None
    end_time: datetime | None = None
    last_update: datetime | None = None
    cause: str | None = None
    error_message: str | None = None
    error_id: str | None = None

    @property
    def ended(self) -> bool:
        return self.state == DISCONNECTED

    @property
    def ended_at(self) -> datetime | None:
        """When it ended: `endTime`, else (a disconnected state without one) `lastUpdate`."""
        return self.end_time or self.last_update if self.ended else None


def read_call_state(document: bytes | str | dict[str, object]) -> ProviderCall:
    """Bandwidth's call state document as a `ProviderCall`; `ValueError` saying what is wrong
    when it is not one. Bandwidth has been seen to answer a single call as a one-element list:
    that is read as the call."""
    try:
        value = json.loads(document) if isinstance(document, bytes | str) else document
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        # Read as JSON, as a body is: strict times accept ISO text only there.
        model = _CallStateDocument.model_validate_json(json.dumps(value, allow_nan=False))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'the document'}: {e['msg'].lower()}"
            for e in error.errors()[:3]
        )
        raise ValueError(f"not a Bandwidth call state ({problems})") from error
    except (ValueError, TypeError) as error:
        raise ValueError(f"not a Bandwidth call state ({error})") from error

    def utc(instant: datetime | None) -> datetime | None:
        return as_utc(instant).astimezone(UTC) if instant is not None else None

    return ProviderCall(
        call_id=model.call_id,
        state=model.state,
        account_id=model.account_id,
        application_id=model.application_id,
        parent_call_id=model.parent_call_id,
        direction=model.direction,
        from_number=model.from_number,
        to_number=model.to_number,
        enqueued_time=utc(model.enqueued_time),
        start_time=utc(model.start_time),
        answer_time=utc(model.answer_time),
        end_time=utc(model.end_time),
        last_update=utc(model.last_update),
        cause=model.disconnect_cause,
        error_message=model.error_message,
        error_id=model.error_id,
    )
