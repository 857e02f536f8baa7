"""The content key: the identity of a delivery, its parsed content whatever its spelling.

Two deliveries with one key are one callback sent twice (a retry, a relay's re-serialization);
the log keeps both, the lifecycle applies one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final

from pydantic import BaseModel
from pydantic_core import to_json

from tracker.callbacks import FLAT_TYPES, Event, nested_fields

# The nested objects of each tracked type (a parsed event is always of one of them).
_NESTED_OF: Final[dict[type[BaseModel], tuple[tuple[str, str], ...]]] = {
    model: nested_fields(model) for model in Event.__args__
}


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
            key: value if type(value) in FLAT_TYPES else _canonical(value)
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
        return [item if type(item) in FLAT_TYPES else _canonical(item) for item in value]
    return value


# `json.dumps(extras, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`, built once.
_EXTRAS_JSON: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
