"""Stage 1 of the pipeline: a callback body as received becomes a typed event, or a reason why not.

Nothing here knows about databases or lifecycles. The models of Bandwidth's callbacks, with the
bound of every field that reaches a column, are in `tracker.callbacks`; this module reads a body
with them (stamps in any zone converted to UTC), refuses what the models alone let through (NaN
and infinities, which are not JSON, wherever they are; NUL in any stored field) and explains each
refusal in a sentence a person can act on. A delivery's identity is `tracker.content_key`. The
names of both are importable from here too.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final, Union, cast

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, create_model
from pydantic_core import from_json

from tracker import _private_apis, instants
from tracker.callbacks import (
    EARLIEST,
    FLAT_TYPES,
    MAX_JSON_BYTES,
    MAX_TEXT_LENGTH,
    TERMINAL_EVENT_TYPES,
    TIMESTAMP_FIELDS,
    TRACKED_EVENT_TYPES,
    Answer,
    AnyZoneTimestamp,
    CallUrl,
    Disconnect,
    Event,
    Identifier,
    Initiate,
    JsonObject,
    MachineDetectionComplete,
    MachineDetectionResult,
    StirShaken,
    Text,
    Timestamp,
    TransferAnswer,
    TransferComplete,
    TransferDisconnect,
    Untracked,
    nested_fields,
    read_call_url,
)
from tracker.content_key import content_key
from tracker.provider import ProviderCall, read_call_state
from tracker.records import MAX_ID_LENGTH, InvalidReason

# What other modules, the tests and the docs import from here: this module's own names and,
# where they always were, those of the callbacks' models and of the content key.
__all__ = [
    "MAX_BODY_BYTES",
    "MAX_JSON_BYTES",
    "MAX_TEXT_LENGTH",
    "SWEEP_ORIGIN",
    "TERMINAL_EVENT_TYPES",
    "TOO_LARGE_PREFIX",
    "TRACKED_EVENT_TYPES",
    "Answer",
    "CallUrl",
    "Delivery",
    "Disconnect",
    "Event",
    "Identifier",
    "Initiate",
    "JsonObject",
    "MachineDetectionComplete",
    "MachineDetectionResult",
    "StirShaken",
    "SweepEntry",
    "Text",
    "Timestamp",
    "TransferAnswer",
    "TransferComplete",
    "TransferDisconnect",
    "Unreadable",
    "Untracked",
    "content_key",
    "identifier",
    "read",
    "read_call_url",
    "read_provider_answer",
    "read_sweep_body",
    "shown",
    "sweep_body",
    "untracked_detail",
]

# A callback is a few hundred bytes. A body over this limit is not parsed: it is `invalid`
# (`too_large`) and the log keeps its first `TOO_LARGE_PREFIX` bytes, with its length and hash in
# the detail, so that no backend's packet or column limit decides what is kept (MariaDB refuses
# statements over `max_allowed_packet`, 16 MiB by default). `Tracker(max_body_bytes=...)`.
MAX_BODY_BYTES: Final = 1024 * 1024
TOO_LARGE_PREFIX: Final = 64 * 1024

# Tracked types are told apart by a plain tag, which pydantic resolves without leaving Rust;
# any other event type falls back to `Untracked`.
_TRACKED: Final[TypeAdapter[Event]] = TypeAdapter(
    Annotated[Event, Field(discriminator="event_type")]
)
# The adapter's own core validator: `TypeAdapter.validate_json`'s Python wrapper costs a tenth
# of a parse.
_read_tracked: Final = _private_apis.json_validator(_TRACKED)
_UNTRACKED_TAG: Final = frozenset({"union_tag_invalid", "union_tag_not_found"})


def _any_zone(model: type[BaseModel]) -> type[BaseModel]:
    """`model` with stamps of any zone and year: the same fields, aliases, order and errors."""
    stamps: dict[str, Any] = {
        name: (
            (AnyZoneTimestamp, ...)
            if field.is_required()
            else (AnyZoneTimestamp | None, field.default)
        )
        for name, field in model.model_fields.items()
        if name in TIMESTAMP_FIELDS
    }
    return create_model(f"{model.__name__}InAnyZone", __base__=model, **stamps)


# Each twin of a tracked type, and the type it stands for.
_AnyZone: Final[dict[type[BaseModel], type[Event]]] = {
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
    # A provider's answer (`read_provider_answer`) is read as Bandwidth's call state.
    content: Event | Untracked | Unreadable | ProviderCall

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


# The nested objects of each tracked type and of its twin: with the body's unknown keys, the only
# places a value of any JSON type (a float, an object with keys in any order) can be.
_NESTED_OF: Final[dict[type[BaseModel], tuple[tuple[str, str], ...]]] = {
    model: nested_fields(model) for model in (*Event.__args__, *_AnyZone)
}
_Path = tuple[str | int, ...]


def _non_finite_in_event(event: Event) -> Unreadable | None:
    """pydantic-core reads `NaN`, `Infinity` and `-Infinity`, and a number past a double's range
    as an infinity; none is JSON (RFC 8259), and JSON output could not carry one. A float can only
    be where any JSON value is taken: the unknown keys and the nested objects."""
    found = None
    extra = event.__pydantic_extra__
    if extra:
        for value in extra.values():
            if type(value) not in FLAT_TYPES:
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
        if type(item) not in FLAT_TYPES:
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
    for name in TIMESTAMP_FIELDS:
        value: datetime | None = getattr(event, name, None)
        if value is None:
            continue
        try:
            in_utc = instants.as_utc(value)
            if in_utc is not value:
                value = changes[name] = in_utc
            in_range = value.year >= EARLIEST.year
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


# --- the provider's answers -------------------------------------------------------------------


def read_provider_answer(body: object, max_body_bytes: int = MAX_BODY_BYTES) -> Delivery:
    """Read a provider's answer (origin `provider`): Bandwidth's call state document, or a
    terminal callback built from it (what a `resolve` hook of a host may return), both as the
    `ProviderCall` they say. Never raises for bad input: anything else is `invalid`, saying
    why."""
    delivery = read(body, max_body_bytes)
    content = delivery.content
    if isinstance(content, Disconnect | TransferDisconnect):
        url = read_call_url(content.call_url)
        answer = ProviderCall(
            call_id=content.call_id,
            state="disconnected",
            account_id=content.account_id or (url.account_id if url else None),
            application_id=content.application_id,
            parent_call_id=content.parent_call_id,
            direction=content.direction,
            from_number=content.own_from,
            to_number=content.own_to,
            enqueued_time=content.enqueued_time,
            start_time=content.start_time,
            answer_time=content.answer_time,
            end_time=content.end_time,
            cause=content.cause,
            error_message=content.error_message,
            error_id=content.error_id,
        )
        return Delivery(delivery.raw, answer)
    if isinstance(content, Event):
        return Delivery(
            delivery.raw,
            Unreadable(
                InvalidReason.NOT_A_CALL_STATE,
                f"a {content.event_type} callback does not say how the call ended; a "
                "provider's answer is a call state or a terminal callback",
                content.call_id,
            ),
        )
    if isinstance(content, Unreadable) and content.reason in _UNREADABLE_ANYWAY:
        return delivery
    if _holds_nul_escape(delivery.raw):
        return Delivery(
            delivery.raw,
            Unreadable(
                InvalidReason.INVALID_FIELD,
                "the call state holds a NUL character, which no column stores",
                delivery.call_id,
            ),
        )
    try:
        return Delivery(delivery.raw, read_call_state(delivery.raw))
    except ValueError as error:
        return Delivery(
            delivery.raw,
            Unreadable(InvalidReason.NOT_A_CALL_STATE, str(error), delivery.call_id),
        )


# What no reading as a call state can cure (a list may be Bandwidth's one-element answer).
_UNREADABLE_ANYWAY: Final = frozenset(
    {
        InvalidReason.NOT_UTF8,
        InvalidReason.NOT_JSON,
        InvalidReason.TOO_DEEPLY_NESTED,
        InvalidReason.TOO_LARGE,
        InvalidReason.UNSUPPORTED_BODY,
    }
)


def _holds_nul_escape(raw: bytes) -> bool:
    return _BACKSLASH in raw and _NUL_ESCAPE.search(raw) is not None
