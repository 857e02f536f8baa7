"""Instants: how the tracker reads a time that may lack a zone, and writes one as text.

Three rules, one home each. A caller's argument without a zone names no instant and is refused
(`errors.check_instant`). A time Bandwidth wrote without a zone is UTC, as Bandwidth documents
its times, and so is one typed on the command line (`as_utc`). An instant written as text is
ISO 8601 in UTC with `Z` (`text`). Nothing reads a naive datetime as the host's local time:
that would make a stored time move with the TZ variable.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tracker.errors import check_instant


def as_utc(value: datetime) -> datetime:
    """`value` in UTC, reading one without a zone as UTC (Bandwidth's, and the command line's,
    times). One at offset zero is kept as it is: it names its instant in UTC already."""
    offset = value.utcoffset()
    if offset is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC) if offset else value


def text(instant: datetime, timespec: str = "auto") -> str:
    """`instant` as ISO 8601 text in UTC with `Z`, e.g. `2026-03-17T14:00:00.123Z`:
    `timespec` as `datetime.isoformat` takes it (`microseconds` for one width, sortable as
    text; `milliseconds` as Bandwidth writes its times). A naive datetime is refused, as an
    argument would be (`check_instant`): it names no instant. Cheap for the instants the tracker
    reads back (in UTC already): an export writes millions."""
    if instant.tzinfo is not UTC:
        if instant.utcoffset() is None:
            check_instant("an instant written as text", instant)
        instant = instant.astimezone(UTC)
    return instant.isoformat("T", timespec)[:-6] + "Z"
