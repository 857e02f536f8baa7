"""Stage 1 of the pipeline: a callback body as received becomes a typed event, or a reason why not.

Nothing here knows about databases or lifecycles. The models follow what Bandwidth really sends
(Bandwidth's callback documentation and live captures): every documented field, unknown keys
kept, causes left as free strings, `from`/`to` as opaque strings (`Anonymous`, SIP URIs),
timestamps of any precision, and an explicit JSON `null` treated exactly like an absent key.
Every field that reaches a column has a bound checked here, so that no backend's column decides
what is stored; NaN and infinities, which are not JSON, are refused wherever they are.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Final, Literal, Union, cast
from urllib.parse import unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    Strict,
    TypeAdapter,
    ValidationError,
    create_model,
)
from pydantic.alias_generators import to_camel
from pydantic_core import CoreSchema, PydanticCustomError, from_json, to_json
from pydantic_core.core_schema import DatetimeSchema

from tracker import _private_apis, instants
from tracker.records import MAX_ID_LENGTH, InvalidReason

# Column sizes of the storage layer; a longer value is refused here, with a clear error, rather
# than failing (or being truncated) inside the database.
MAX_TEXT_LENGTH: Final = 4096
# A JSON object field (`diversion`, `sipHeaders`) is stored as compact UTF-8 JSON text: at most
# this many bytes, what a text field's 4,096 characters take at most in UTF-8, and a quarter of
# the 65,535 bytes MariaDB's TEXT holds. Counted on the text written (`to_json` of the parsed
# value, as the storage writes it), so escapes and spacing in the body do not count.
MAX_JSON_BYTES: Final = 4 * MAX_TEXT_LENGTH

# A callback is a few hundred bytes. A body over this limit is not parsed: it is `invalid`
# (`too_large`) and the log keeps its first `TOO_LARGE_PREFIX` bytes, with its length and hash in
# the detail, so that no backend's packet or column limit decides what is kept (MariaDB refuses
# statements over `max_allowed_packet`, 16 MiB by default). `Tracker(max_body_bytes=...)`.
MAX_BODY_BYTES: Final = 1024 * 1024
TOO_LARGE_PREFIX: Final = 64 * 1024

# Bandwidth stamps are UTC; MySQL/MariaDB DATETIME cannot hold years before 1000.
_EARLIEST: Final = datetime(1000, 1, 1, tzinfo=UTC)


class _UtcSince1000:
    """A stamp in UTC (`Z` or `+00:00`) from the year 1000 on, checked by pydantic-core itself:
    what nearly every body carries, so nearly every body is read without a line of Python."""

    def __get_pydantic_core_schema__(
        self, source: type[Any], handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        schema = cast(DatetimeSchema, handler(source))
        schema["tz_constraint"] = 0
        schema["ge"] = _EARLIEST
        return schema


# The models' stamps are UTC. A body whose stamps are not (no zone, another offset, a year
# before 1000) is read again by twins of the models that take any stamp (`_AnyZone`), and
# `_in_utc` converts it or explains the refusal, as if the model had read it.
Timestamp = Annotated[datetime, Strict(), _UtcSince1000()]
_AnyZoneTimestamp = Annotated[datetime, Strict()]
_TIMESTAMPS: Final = ("event_time", "enqueued_time", "start_time", "answer_time", "end_time")
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

# Tracked types are told apart by a plain tag, which pydantic resolves without leaving Rust;
# any other event type falls back to `Untracked`.
_TRACKED: Final[TypeAdapter[Event]] = TypeAdapter(
    Annotated[Event, Field(discriminator="event_type")]
)
# The adapter's own core validator: `TypeAdapter.validate_json`'s Python wrapper costs a tenth
# of a parse.
_read_tracked: Final = _private_apis.json_validator(_TRACKED)
_UNTRACKED_TAG: Final = frozenset({"union_tag_invalid", "union_tag_not_found"})


def _any_zone(model: type[_Callback]) -> type[_Callback]:
    """`model` with stamps of any zone and year: the same fields, aliases, order and errors."""
    stamps: dict[str, Any] = {
        name: (
            (_AnyZoneTimestamp, ...)
            if field.is_required()
            else (_AnyZoneTimestamp | None, field.default)
        )
        for name, field in model.model_fields.items()
        if name in _TIMESTAMPS
    }
    return create_model(f"{model.__name__}InAnyZone", __base__=model, **stamps)


# Each twin of a tracked type, and the type it stands for.
_AnyZone: Final[dict[type[_Callback], type[Event]]] = {
    _any_zone(model): model for model in Event.__args__
}
_any_zone_event: Any = Union[tuple(_AnyZone)]  # noqa: UP007 (a union built at run time)
_read_any_zone: Final = _private_apis.json_validator(
    TypeAdapter[Any](Annotated[_any_zone_event, Field(discriminator="event_type")])
)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Why a body is not a readable callback: a reason code and a sentence a person can act on.
    `call_id` is the body's `callId` when it is a usable id (see `identifier`)."""

    reason: InvalidReason
    detail: str
    call_id: str | None = None


def identifier(value: object) -> str | None:
    """`value` when it can name a call in the log (a string of 1 to `MAX_ID_LENGTH` characters
    without NUL), else None. The one test every id read from a body passes before it reaches a
    column: an unreadable body's `callId` may be anything, and PostgreSQL refuses NUL in text."""
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and "\x00" not in value:
        return value
    return None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One body as received (`raw`, the bytes stored in the event log) and what it was read as."""

    raw: bytes
    content: Event | Untracked | Unreadable

    @property
    def call_id(self) -> str | None:
        content = self.content
        if isinstance(content, Unreadable):
            return content.call_id
        return identifier(content.call_id)


def read(body: object, max_body_bytes: int = MAX_BODY_BYTES) -> Delivery:
    """Turn whatever `apply` was handed into a `Delivery`. Never raises for bad input."""
    if type(body) is bytes:  # what a web framework hands over: no copy, no slower test
        raw = body
    elif isinstance(body, bytes | bytearray | memoryview):
        raw = bytes(body)
    elif isinstance(body, str):
        # A str is stored as its UTF-8 bytes; lone surrogates (possible in a Python str) would make
        # that impossible, so they are kept byte for byte and the body reported as not UTF-8.
        raw = body.encode("utf-8", "surrogatepass")
    elif isinstance(body, Mapping):
        try:
            text = json.dumps(
                body,
                ensure_ascii=False,
                separators=(",", ":"),
                allow_nan=False,
                default=_as_dict,
            )
        except (TypeError, ValueError, RecursionError) as error:
            # ValueError: NaN or an infinity (not JSON, RFC 8259), or an integer too long to
            # write; RecursionError: deep nesting.
            why = _first_line(error)
            if why.startswith("Out of range float"):
                why += ": JSON (RFC 8259) has no NaN or Infinity"
            return Delivery(
                _shown_object(body),
                Unreadable(
                    InvalidReason.NOT_JSON,
                    f"the mapping cannot be written as JSON ({why}); pass plain JSON values",
                ),
            )
        raw = text.encode("utf-8", "surrogatepass")
    else:
        return Delivery(
            _shown_object(body),
            Unreadable(
                InvalidReason.UNSUPPORTED_BODY,
                f"apply() takes bytes, str or a mapping, not {type(body).__name__}",
            ),
        )
    if len(raw) > max_body_bytes:
        return Delivery(raw[:TOO_LARGE_PREFIX], _too_large(raw, max_body_bytes))
    return Delivery(raw, _parse(raw))


def _as_dict(value: object) -> dict[Any, Any]:
    """A Mapping that is not a dict (`MappingProxyType`, `UserDict`), at any depth, is written
    as the JSON object it stands for; anything else the JSON encoder cannot write is refused."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _too_large(raw: bytes, limit: int) -> Unreadable:
    return Unreadable(
        InvalidReason.TOO_LARGE,
        f"the body is {len(raw):,} bytes, over the limit of {limit:,}; the log keeps its first "
        f"{min(len(raw), TOO_LARGE_PREFIX):,} bytes (sha256 of the whole body "
        f"{hashlib.sha256(raw).hexdigest()})",
    )


def _shown_object(body: object) -> bytes:
    """What the log keeps of something that is not a JSON body: its repr, bounded. `repr` itself
    may fail on hostile values (an integer too long to print, nesting deeper than the stack)."""
    try:
        shown = repr(body)
    except (ValueError, RecursionError) as error:
        shown = f"<{type(body).__name__} that cannot be shown: {_first_line(error)}>"
    return shown[:TOO_LARGE_PREFIX].encode("utf-8", "backslashreplace")


def _first_line(error: BaseException) -> str:
    return str(error).split("\n", 1)[0][:200]


# Only PostgreSQL refuses NUL in text, but the same body must get the same outcome on every
# database, so a NUL in any stored string is refused everywhere.
_NUL_ESCAPE: Final = re.compile(rb"\\u0000")
# Most bodies hold no escape at all: one `memchr` for a backslash is ten times cheaper than the
# search for the escape itself.
_BACKSLASH: Final = ord("\\")


def _parse(raw: bytes) -> Event | Untracked | Unreadable:
    try:
        event = _read_tracked(raw)
    except ValidationError as error:
        return _parse_refused(raw, error)
    return _refusal(raw, event) or event


def _parse_refused(raw: bytes, error: ValidationError) -> Event | Untracked | Unreadable:
    """A body the models refused: an untracked type, a stamp not in UTC, or no callback."""
    if error.errors(include_url=False)[0]["type"] in _UNTRACKED_TAG:
        try:
            untracked = Untracked.model_validate_json(raw)
        except ValidationError as untracked_error:
            return _explain(raw, untracked_error)
        found = _non_finite(untracked.call_id, ("callId",)) or _non_finite(
            untracked.__pydantic_extra__, ()
        )
        return untracked if found is None else _not_finite(found, untracked.call_id)
    try:
        event = _read_any_zone(raw)
    except ValidationError as any_zone_error:
        return _explain(raw, any_zone_error)
    return _refusal(raw, event) or _in_utc(event)


def _refusal(raw: bytes, event: Event) -> Unreadable | None:
    """Why a body the models read is refused all the same, if it is."""
    refusal = _non_finite_in_event(event)
    if refusal is not None:
        return refusal
    if _BACKSLASH in raw and _NUL_ESCAPE.search(raw):
        # Only the declared fields are stored in columns; an unknown key may hold anything,
        # it lives on in the body alone.
        for name in type(event).model_fields:
            if _holds_nul(getattr(event, name)):
                return Unreadable(
                    InvalidReason.INVALID_FIELD,
                    f"field '{_alias(event, name)}' contains a NUL character (\\u0000), "
                    "which no call field may hold",
                    identifier(event.call_id),
                )
    url = event.call_url
    if url is None or (len(url) <= MAX_ID_LENGTH and "%" not in url):
        return None  # the common case: too short for a long id, no escape to hide a NUL
    return _check_call_url(event, url)


def _holds_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, BaseModel):
        return any(_holds_nul(item) for _name, item in value)
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


# The fields whose values are JSON objects: free-form (`diversion`, `sipHeaders`) or models that
# keep unknown keys (`stirShaken`, `machineDetectionResult`). With the body's unknown keys, the
# only places a value of any JSON type (a float, an object with keys in any order) can be.
_NESTED: Final = ("diversion", "sip_headers", "stir_shaken", "machine_detection_result")
_NESTED_OF: Final[dict[type[BaseModel], tuple[tuple[str, str], ...]]] = {
    model: tuple(
        (name, model.model_fields[name].alias or name)
        for name in _NESTED
        if name in model.model_fields
    )
    for model in (*Event.__args__, *_AnyZone)
}
# What a walk for floats or nested objects need not enter.
_FLAT: Final = frozenset({str, int, bool, type(None)})
_Path = tuple[str | int, ...]


def _non_finite_in_event(event: Event) -> Unreadable | None:
    """pydantic-core reads `NaN`, `Infinity` and `-Infinity`, and a number past a double's range
    as an infinity; none is JSON (RFC 8259), and JSON output could not carry one. A float can only
    be where any JSON value is taken: the unknown keys and the nested objects."""
    found = None
    extra = event.__pydantic_extra__
    if extra:
        for value in extra.values():
            if type(value) not in _FLAT:
                found = _non_finite(extra, ())
                break
    if found is None:
        for name, alias in _NESTED_OF[type(event)]:
            value = getattr(event, name)
            if value is None:
                continue
            if type(value) is not dict:
                value = value.__pydantic_extra__  # a model: its declared fields are typed
            if value:
                found = _non_finite(value, (alias,))
                if found is not None:
                    break
    return None if found is None else _not_finite(found, event.call_id)


def _non_finite(value: object, path: _Path) -> tuple[_Path, float] | None:
    """Where in `value` (a parsed JSON value) the first NaN or infinity is, and which it is."""
    kind = type(value)
    if kind is float:
        return None if math.isfinite(cast(float, value)) else (path, cast(float, value))
    if kind is dict:
        items: Any = cast(dict[str, Any], value).items()
    elif kind is list:
        items = enumerate(cast(list[Any], value))
    else:
        return None
    for key, item in items:
        if type(item) not in _FLAT:
            found = _non_finite(item, (*path, key))
            if found is not None:
                return found
    return None


def _not_finite(found: tuple[_Path, float], call_id: object) -> Unreadable:
    path, number = found
    where = f" at '{'.'.join(map(str, path))}'" if path else ""
    spelled = "NaN" if math.isnan(number) else "Infinity" if number > 0 else "-Infinity"
    return Unreadable(
        InvalidReason.NOT_JSON,
        f"the body is not valid JSON (RFC 8259): {spelled}{where}; JSON has no NaN or Infinity "
        "(and a number past ±1.8e308 reads as Infinity): send a finite number or null",
        identifier(call_id),
    )


def _check_call_url(event: Event, text: str) -> Unreadable | None:
    """The ids a `callUrl` path names are stored (the account, when the body has none), so they
    pass the same test as the body's own ids."""
    url = read_call_url(text)
    if url is None or (identifier(url.account_id) and identifier(url.call_id)):
        return None
    return Unreadable(
        InvalidReason.INVALID_FIELD,
        f"field 'callUrl' names account {shown(url.account_id)} and call {shown(url.call_id)}; "
        f"ids are 1 to {MAX_ID_LENGTH} characters without NUL",
        event.call_id,
    )


def _in_utc(event: Event) -> Event | Unreadable:
    """Bandwidth documents its times as UTC: a stamp without a zone is read as UTC, one with an
    offset is converted, and instants MySQL cannot store (before the year 1000) are refused.
    `event` is an `_AnyZone` twin; what is returned is of the model it stands for."""
    model = _AnyZone[type(event)]
    changes: dict[str, datetime] = {}
    for name in _TIMESTAMPS:
        value: datetime | None = getattr(event, name, None)
        if value is None:
            continue
        try:
            in_utc = instants.as_utc(value)
            if in_utc is not value:
                value = changes[name] = in_utc
            in_range = value.year >= _EARLIEST.year
        except OverflowError:
            in_range = False
        if not in_range:
            return Unreadable(
                InvalidReason.INVALID_FIELD,
                f"field '{_alias(event, name)}' is {getattr(event, name).isoformat()}, outside "
                "the years 1000 to 9999 (UTC)",
                event.call_id,
            )
    in_model = model.__new__(model)
    in_model.__setstate__(event.__getstate__())  # pickle's way: fields, extras, fields set
    return in_model.model_copy(update=changes) if changes else in_model


def _alias(event: BaseModel, name: str) -> str:
    return type(event).model_fields[name].alias or name


_JSON_TYPE_NAMES: Final = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _explain(raw: bytes, error: ValidationError) -> Unreadable:
    """Turn pydantic's report into one reason code and a sentence naming every bad field."""
    problems = error.errors(include_url=False)
    first = problems[0]
    if first["type"] == "json_invalid":
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as decode_error:
            return Unreadable(
                InvalidReason.NOT_UTF8,
                f"the body is not valid UTF-8 (byte {decode_error.start}); "
                "Bandwidth sends UTF-8 JSON",
            )
        message = first["ctx"].get("error", first["msg"]) if "ctx" in first else first["msg"]
        if "recursion limit" in str(message):
            return Unreadable(
                InvalidReason.TOO_DEEPLY_NESTED,
                f"the body nests arrays or objects too deeply to read ({message}); "
                "a callback is a flat JSON object",
            )
        return Unreadable(InvalidReason.NOT_JSON, f"the body is not valid JSON: {message}")
    # pydantic has just read it, so this cannot fail (and the same reader cannot meet a number
    # or a nesting the standard library's would refuse).
    document = from_json(raw)
    found = _non_finite(document, ())
    if found is not None:
        return _not_finite(found, document.get("callId") if isinstance(document, dict) else None)
    if not isinstance(document, dict):
        kind = _JSON_TYPE_NAMES.get(type(document), type(document).__name__)
        return Unreadable(
            InvalidReason.NOT_AN_OBJECT, f"the body is {kind}, but a callback is a JSON object"
        )
    call_id = identifier(document.get("callId"))
    event_type = document.get("eventType")
    what = f"the {shown(event_type)} callback" if isinstance(event_type, str) else "the callback"
    missing = [p for p in problems if p["type"] == "missing"]
    if missing:
        names = ", ".join(f"'{_field_name(p['loc'])}'" for p in missing)
        plural = "s" if len(missing) > 1 else ""
        return Unreadable(
            InvalidReason.MISSING_FIELD,
            f"required field{plural} {names} missing from {what}",
            call_id,
        )
    sentences = [
        f"field '{_field_name(p['loc'])}' {_lower_first(p['msg'])} (got {shown(p['input'])})"
        for p in problems[:5]
    ]
    return Unreadable(InvalidReason.INVALID_FIELD, f"in {what}: " + "; ".join(sentences), call_id)


def _field_name(location: tuple[int | str, ...]) -> str:
    # The first element is the union tag ('disconnect', 'other', ...), not part of the body.
    return ".".join(str(part) for part in location[1:]) or "eventType"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def shown(value: object) -> str:
    """A value quoted for a detail: JSON-escaped (so a NUL or a control character shows as an
    escape, never reaches a column raw) and short, whatever its size."""
    if isinstance(value, str) and len(value) > 60:
        value = value[:60]  # before escaping: quoting a megabyte to show 60 characters is waste
    shown = json.dumps(value, ensure_ascii=False, default=repr)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def untracked_detail(event_type: str) -> str:
    tracked = ", ".join(TRACKED_EVENT_TYPES)
    return f"{shown(event_type)} events are not tracked; only {tracked} are"


def content_key(event: Event) -> str:
    """The identity of a delivery: the parsed content, whatever its spelling.

    Two bodies share a key when they differ only in key order (at any depth), whitespace,
    explicit nulls for absent keys (at any depth, in objects: a null in an array is a value), or
    the spelling of an instant (offset, fraction digits): the ways a relay re-serializes a body.
    Timestamps are compared to the microsecond.
    """
    # Declared fields serialise in declaration order, so only unknown keys need sorting. The
    # bytes are those of `model_dump_json(...).encode()` and `json.dumps(...)`, which stored keys
    # were made of; the serializer and the encoder are called directly because their wrappers
    # cost as much as the work. Nested objects are put in canonical form only when the body
    # has one that may need it, so a flat body costs what it did and keeps its key; a nested
    # one already canonical (keys sorted, no null) keeps the key it had too.
    unknown = event.__pydantic_extra__
    exclude = set(unknown) if unknown else None
    serializer = event.__pydantic_serializer__
    nested = _canonical_nested(event)
    if nested:
        document = serializer.to_python(
            event, mode="json", by_alias=True, exclude_none=True, exclude=exclude
        )
        document.update(nested)  # in place: each key keeps its position
        canonical = to_json(document)
    else:
        canonical = serializer.to_json(event, by_alias=True, exclude_none=True, exclude=exclude)
    if unknown:
        extras = {
            key: value if type(value) in _FLAT else _canonical(value)
            for key, value in unknown.items()
            if value is not None
        }
        if extras:
            canonical += _EXTRAS_JSON.encode(extras).encode("utf-8", "surrogatepass")
    return hashlib.sha256(canonical).hexdigest()


def _canonical_nested(event: Event) -> dict[str, Any] | None:
    """The nested objects of `event` that the serializer would not write canonically, in
    canonical form by alias: a free-form object, or a model with unknown keys (its declared
    fields stay first, in declaration order, as the serializer writes them)."""
    nested: dict[str, Any] | None = None
    for name, alias in _NESTED_OF[type(event)]:
        value = getattr(event, name)
        if value is None:
            continue
        if type(value) is not dict:  # a model
            extra = value.__pydantic_extra__
            if not extra:
                continue  # declared fields only: written in declaration order, nulls left out
            canonical = value.__pydantic_serializer__.to_python(
                value, mode="json", by_alias=True, exclude_none=True, exclude=set(extra)
            )
            canonical.update(_canonical(extra))
        else:
            canonical = _canonical(value)
        if nested is None:
            nested = {}
        nested[alias] = canonical
    return nested


def _canonical(value: Any) -> Any:
    """A parsed JSON value with the keys of its objects sorted and their nulls left out, at every
    depth; arrays keep their order and their nulls."""
    kind = type(value)
    if kind is dict:
        return {key: _canonical(value[key]) for key in sorted(value) if value[key] is not None}
    if kind is list:
        return [item if type(item) in _FLAT else _canonical(item) for item in value]
    return value


# `json.dumps(extras, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`, built once.
_EXTRAS_JSON: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


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


# --- the sweep's own log entries ----------------------------------------------------------------
# A call the sweep ends gets a log entry like a delivery's (origin `sweep`), so that its history
# step names an entry, a rebuild can replay it, and the log tells what happened. Its body is the
# tracker's own JSON, not a Bandwidth callback: handed to `apply`, it is `ignored`.

SWEEP_ORIGIN: Final = "sweep"


@dataclass(frozen=True, slots=True)
class SweepEntry:
    """What a sweep's log entry says: which call it ended, and when."""

    call_id: str
    swept_at: datetime


def sweep_body(call_id: str, swept_at: datetime, last_known: datetime | None) -> bytes:
    def instant(value: datetime | None) -> str | None:
        return instants.text(value) if value else None

    return json.dumps(
        {
            "eventType": "sweep",
            "callId": call_id,
            "sweptAt": instant(swept_at),
            "lastKnownTime": instant(last_known),
        },
        separators=(",", ":"),
    ).encode()


def read_sweep_body(raw: bytes) -> SweepEntry:
    document = json.loads(raw)
    return SweepEntry(document["callId"], datetime.fromisoformat(document["sweptAt"]))
