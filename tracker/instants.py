"""Instants: how the tracker reads a time that may lack a zone, and writes one as text.

Three rules, one home each. A caller's argument without a zone names no instant and is refused
(`errors.check_instant`). A time Bandwidth wrote without a zone is UTC, as Bandwidth documents
its times, and so is one typed on the command line (`as_utc`). An instant written as text is
ISO 8601 in UTC with `Z` (`text`). Nothing reads a naive datetime as the host's local time:
that would make a stored time move with the TZ variable.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (`Europe/Berlin`) that `stats` and `export` may show local
    times in, or a ValueError naming what was given and what is expected."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as error:
        raise ValueError(
            f"unknown time zone {name!r}: give an IANA name such as 'UTC', 'Europe/Berlin'"
            " or 'America/New_York'"
        ) from error


def local_text(instant: datetime) -> str:
    """`instant` as ISO 8601 with microseconds and its own offset (`+02:00`), or as `text`
    writes it (`Z`) when in UTC: how an export in a time zone writes its times."""
    if instant.tzinfo is UTC:
        return text(instant, "microseconds")
    return instant.isoformat("T", "microseconds")
