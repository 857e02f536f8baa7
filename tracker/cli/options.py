"""Options several commands share, read the same way by each."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import click

from tracker import instants


def instant(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO 8601 date or datetime; one without a zone is UTC, as Bandwidth's times are."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or datetime "
            "(e.g. 2026-03-17 or 2026-03-17T14:00:00Z)"
        ) from None
    return instants.as_utc(parsed)


def batch_size_option(
    default: int, help: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--batch-size N` of the commands that work in batches (sweep, prune, export); `default`
    is the library's own constant, so the two cannot drift."""
    return click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=default,
        show_default=True,
        metavar="N",
        help=help,
    )


# The filters every read of calls by start time and account takes (calls, stats, export).
SINCE_OPTION: Final = click.option(
    "--since",
    metavar="DATETIME",
    callback=instant,
    help="Only calls that started at or after this instant.",
)
UNTIL_OPTION: Final = click.option(
    "--until", metavar="DATETIME", callback=instant, help="Only calls that started before it."
)
ACCOUNT_OPTION: Final = click.option(
    "--account", "account_id", metavar="ID", help="Only calls of this account."
)
