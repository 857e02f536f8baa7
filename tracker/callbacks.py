"""The callbacks Bandwidth sends, as pydantic models: what a body must hold to be a typed event.

The models follow what Bandwidth really sends (Bandwidth's callback documentation and live
captures): every documented field, unknown keys kept, causes left as free strings, `from`/`to`
as opaque strings (`Anonymous`, SIP URIs), timestamps of any precision, and an explicit JSON
`null` treated exactly like an absent key. Every field that reaches a column has a bound here,
so that no backend's column decides what is stored. `tracker.parsing` reads bodies with them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Final, Literal, cast
from urllib.parse import unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    Strict,
)
from pydantic.alias_generators import to_camel
from pydantic_core import CoreSchema, PydanticCustomError, to_json
from pydantic_core.core_schema import DatetimeSchema

from tracker.records import MAX_ID_LENGTH

# Column sizes of the storage layer; a longer value is refused here, with a clear error, rather
# than failing (or being truncated) inside the database.
MAX_TEXT_LENGTH: Final = 4096
# A JSON object field (`diversion`, `sipHeaders`) is stored as compact UTF-8 JSON text: at most
# this many bytes, what a text field's 4,096 characters take at most in UTF-8, and a quarter of
# the 65,535 bytes MariaDB's TEXT holds. Counted on the text written (`to_json` of the parsed
# value, as the storage writes it), so escapes and spacing in the body do not count.
MAX_JSON_BYTES: Final = 4 * MAX_TEXT_LENGTH

# Bandwidth stamps are UTC; MySQL/MariaDB DATETIME cannot hold years before 1000.
EARLIEST: Final = datetime(1000, 1, 1, tzinfo=UTC)


class _UtcSince1000:
    """A stamp in UTC (`Z` or `+00:00`) from the year 1000 on, checked by pydantic-core itself:
    what nearly every body carries, so nearly every body is read without a line of Python."""

    def __get_pydantic_core_schema__(
        self, source: type[Any], handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        schema = cast(DatetimeSchema, handler(source))
        schema["tz_constraint"] = 0
        schema["ge"] = EARLIEST
        return schema


# The models' stamps are UTC. A body whose stamps are not (no zone, another offset, a year
# before 1000) is read again by twins of the models that take any stamp (`AnyZoneTimestamp` in
# the `TIMESTAMP_FIELDS`), and `tracker.parsing` converts it or explains the refusal, as if the
# model had read it.
Timestamp = Annotated[datetime, Strict(), _UtcSince1000()]
AnyZoneTimestamp = Annotated[datetime, Strict()]
TIMESTAMP_FIELDS: Final = ("event_time", "enqueued_time", "start_time", "answer_time", "end_time")
Identifier = Annotated[str, Strict(), Field(min_length=1, max_length=MAX_ID_LENGTH)]
Text = Annotated[str, Strict(), Field(max_length=MAX_TEXT_LENGTH)]


def _bounded_json(value: dict[str, Any]) -> dict[str, Any]:
    size = len(to_json(value))
    if size > MAX_JSON_BYTES:
        raise PydanticCustomError(
            "json_too_large",
            "should be at most {limit} bytes written as compact JSON (UTF-8), not {size}",
            {"limit": f"{MAX_JSON_BYTES:,}", "size": f"{size:,}"},
        )
    return value


JsonObject = Annotated[dict[str, Any], Strict(), AfterValidator(_bounded_json)]


class _Model(BaseModel):
    """Bandwidth's spelling (camelCase keys) and `extra="allow"`: an unknown key is never a
    reason to refuse a body (live captures carry keys no document lists)."""

    model_config = ConfigDict(
        extra="allow", alias_generator=to_camel, validate_by_name=False, frozen=True
    )


class MachineDetectionResult(_Model):
    """`machineDetectionResult`: the value is kept verbatim (`human`, `answering-machine`,
    `silence`, `timeout`, `error`, or values no list names yet)."""

    value: Annotated[str, Strict(), Field(min_length=1, max_length=MAX_TEXT_LENGTH)]
    duration: Text | None = None


class StirShaken(_Model):
    """`stirShaken` on `initiate`: how far the carrier vouches for the caller's number."""

    verstat: Text | None = None
    attestation_indicator: Text | None = None
    originating_id: Text | None = None


class _Callback(_Model):
    """Fields every lifecycle callback may carry; each event type below says which it
    requires. The properties give the lifecycle one vocabulary for all of them."""

    event_time: Timestamp | None = None
    account_id: Identifier | None = None
    application_id: Identifier | None = None
    from_number: Text | None = Field(default=None, alias="from")
    to_number: Text | None = Field(default=None, alias="to")
    direction: Literal["inbound", "outbound"] | None = None
    call_id: Identifier
    call_url: Text | None = None
    enqueued_time: Timestamp | None = None
    start_time: Timestamp | None = None
    answer_time: Timestamp | None = None
    tag: Text | None = None
    sip_call_id: Text | None = None

    # Whether the event says the call is a transfer leg: True for the transfer events, False
    # for those only an original call receives, None where either may (see `parent_call_id`).
    IS_LEG: ClassVar[bool | None] = None

    @property
    def own_from(self) -> str | None:
        """This call's own caller: `from`, except on a leg's events (`transferCallerId`)."""
        return self.from_number

    @property
    def own_to(self) -> str | None:
        return self.to_number

    @property
    def machine_detection(self) -> str | None:
        return None


# The same names are fields on some event types and properties on the others, so that the
# lifecycle reads every event the same way (a pydantic field may not shadow a parent's
# property, hence mixins rather than defaults on `_Callback`).


class _NoParent:
    """An event that names no parent call."""

    @property
    def parent_call_id(self) -> str | None:
        return None


class _Ongoing:
    """An event that does not end the call."""

    @property
    def end_time(self) -> datetime | None:
        return None

    @property
    def ending_cause(self) -> str | None:
        return None


class _Terminal(_Callback):
    """The event that ends a call, with the call's complete facts."""

    start_time: Timestamp
    end_time: Timestamp
    cause: Annotated[str, Strict(), Field(min_length=1, max_length=MAX_TEXT_LENGTH)]
    error_message: Text | None = None
    error_id: Text | None = None
    sip_response_code: Annotated[int, Strict()] | None = None

    @property
    def ending_cause(self) -> str | None:
        return self.cause


class _LegEvent(_Callback):
    """On a leg created by `<Transfer>`, `from`/`to` are the original call's numbers; the leg's
    own are `transferCallerId`/`transferTo`. Always outbound."""

    IS_LEG: ClassVar[bool | None] = True

    transfer_caller_id: Text | None = None
    transfer_to: Text | None = None

    @property
    def own_from(self) -> str | None:
        return self.transfer_caller_id

    @property
    def own_to(self) -> str | None:
        return self.transfer_to


class Disconnect(_NoParent, _Terminal):
    """`disconnect`: an original call ended, for any reason."""

    IS_LEG: ClassVar[bool | None] = False

    event_type: Literal["disconnect"]


class TransferDisconnect(_Terminal, _LegEvent):
    """`transferDisconnect`: a leg created by `<Transfer>` ended."""

    event_type: Literal["transferDisconnect"]
    parent_call_id: Identifier


class Initiate(_NoParent, _Ongoing, _Callback):
    """`initiate`: an inbound call arrived and is ringing; nothing has answered it yet."""

    IS_LEG: ClassVar[bool | None] = False

    event_type: Literal["initiate"]
    start_time: Timestamp
    diversion: JsonObject | None = None
    stir_shaken: StirShaken | None = None
    caller_display_name: Text | None = None
    uui: Text | None = None
    sip_headers: JsonObject | None = None


class Answer(_NoParent, _Ongoing, _Callback):
    """`answer`: an outbound call was answered (inbound calls get none)."""

    IS_LEG: ClassVar[bool | None] = False

    event_type: Literal["answer"]
    start_time: Timestamp
    answer_time: Timestamp
    machine_detection_result: MachineDetectionResult | None = None

    @property
    def machine_detection(self) -> str | None:
        result = self.machine_detection_result
        return result.value if result else None


class TransferAnswer(_Ongoing, _LegEvent):
    """`transferAnswer`: a leg created by `<Transfer>` answered. The docs list `parentCallId`;
    Bandwidth's SDK model drops it, so it is optional: such a leg is linked to its parent when
    its `transferDisconnect` comes."""

    event_type: Literal["transferAnswer"]
    start_time: Timestamp
    answer_time: Timestamp
    parent_call_id: Identifier | None = None


class TransferComplete(_NoParent, _Ongoing, _Callback):
    """`transferComplete`: one `<Transfer>` attempt of this (original) call ended. Its `cause`
    is the transfer's outcome, never the call's: the call goes on."""

    event_type: Literal["transferComplete"]
    cause: Annotated[str, Strict(), Field(min_length=1, max_length=MAX_TEXT_LENGTH)]
    transfer_caller_id: Text | None = None
    transfer_to: Text | None = None
    error_message: Text | None = None
    error_id: Text | None = None


class MachineDetectionComplete(_NoParent, _Ongoing, _Callback):
    """`machineDetectionComplete`: the answering-machine detection of this call finished."""

    event_type: Literal["machineDetectionComplete"]
    machine_detection_result: MachineDetectionResult

    @property
    def machine_detection(self) -> str | None:
        return self.machine_detection_result.value


class Untracked(BaseModel):
    """Any other event type: readable, needs only a string `eventType`, and is not tracked."""

    model_config = ConfigDict(extra="allow", frozen=True)

    event_type: Annotated[str, Strict()] = Field(alias="eventType")
    call_id: Any = Field(default=None, alias="callId")


Event = (
    Initiate
    | Answer
    | TransferAnswer
    | TransferComplete
    | MachineDetectionComplete
    | Disconnect
    | TransferDisconnect
)
TRACKED_EVENT_TYPES: Final = (
    "initiate",
    "answer",
    "transferAnswer",
    "transferComplete",
    "machineDetectionComplete",
    "disconnect",
    "transferDisconnect",
)
TERMINAL_EVENT_TYPES: Final = frozenset({"disconnect", "transferDisconnect"})


# The fields whose values are JSON objects: free-form (`diversion`, `sipHeaders`) or models that
# keep unknown keys (`stirShaken`, `machineDetectionResult`). With the body's unknown keys, the
# only places a value of any JSON type (a float, an object with keys in any order) can be.
NESTED_FIELDS: Final = ("diversion", "sip_headers", "stir_shaken", "machine_detection_result")


def nested_fields(model: type[BaseModel]) -> tuple[tuple[str, str], ...]:
    """The `NESTED_FIELDS` `model` has, each as its name and its alias (the body's key)."""
    return tuple(
        (name, model.model_fields[name].alias or name)
        for name in NESTED_FIELDS
        if name in model.model_fields
    )


# What a walk for floats or nested objects need not enter.
FLAT_TYPES: Final = frozenset({str, int, bool, type(None)})


# --- what a `callUrl` names ------------------------------------------------------------------

_CALL_PATH: Final = re.compile(r"/accounts/(?P<account>[^/]+)/calls/(?P<call>[^/?#]+)/?$")


@dataclass(frozen=True, slots=True)
class CallUrl:
    """What the path of a `callUrl` names. The host varies (test.voice.bandwidth.com), the path
    `/accounts/{accountId}/calls/{callId}` does not."""

    account_id: str
    call_id: str


def read_call_url(url: str | None) -> CallUrl | None:
    """What `url`'s path names, or None when it names no call. The several callbacks of one
    call carry one URL within minutes, so the URLs of usual length are remembered."""
    if not url:
        return None
    if len(url) <= _REMEMBERED_URL_LENGTH:
        return _read_remembered_call_url(url)
    return _read_call_url(url)


# At most `maxsize` URLs of at most this length are remembered: a bounded memory, whatever the
# bodies say.
_REMEMBERED_URL_LENGTH: Final = 256


@lru_cache(maxsize=4096)
def _read_remembered_call_url(url: str) -> CallUrl | None:
    return _read_call_url(url)


def _read_call_url(url: str) -> CallUrl | None:
    match = _CALL_PATH.search(urlsplit(url).path)
    if match is None:
        return None
    return CallUrl(unquote(match["account"]), unquote(match["call"]))
