"""Options several commands share, read the same way by each."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

import click

from tracker import instants
from tracker.billing import BillingPolicy
from tracker.housekeeping import Resolve
from tracker.provider import ProviderError


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


_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT_SECONDS: Final = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> timedelta | None:
    """`4h`, `90m`, `1h30m`, `2d`, or plain seconds; None when the option was not given."""
    if value is None:
        return None
    text = value.strip().lower()
    seconds: float | None = None
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    elif text and re.fullmatch(f"(?:{_DURATION_PART.pattern})+", text):
        seconds = sum(
            float(amount) * _UNIT_SECONDS[unit] for amount, unit in _DURATION_PART.findall(text)
        )
    if not seconds:
        raise click.BadParameter(
            f"{value!r} is not a positive duration; write it like 4h, 90m, 1h30m, 2d or 14400 "
            "(seconds)"
        )
    return timedelta(seconds=seconds)


# The providers `--resolve` can ask; each is configured from the environment, never from the
# command line (a secret there shows in `ps`).
RESOLVERS: Final = ("bandwidth",)


def resolve_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--resolve bandwidth` of the commands that ask the provider before expiring a call (sweep,
    serve): the provider's name, turned into a resolver by `resolver` once the command has
    checked its other options."""
    return click.option(
        "--resolve",
        type=click.Choice(RESOLVERS),
        help=help,
    )


def resolver(name: str | None) -> Resolve | None:
    """The resolver `--resolve NAME` asks for, configured from the environment; None for None.
    A missing extra or missing credentials are the command line's errors (exit 2), naming the
    fix; the credentials themselves are never shown."""
    if name is None:
        return None
    try:
        from tracker.bandwidth import resolver_from_environment
    except ImportError as error:
        raise click.UsageError(
            f"--resolve bandwidth needs the bandwidth extra ({error}); "
            "pip install 'tracker[bandwidth]'"
        ) from error
    try:
        return resolver_from_environment()
    except ProviderError as error:  # `tracker.bandwidth`'s words name the variables to set
        raise click.UsageError(f"--resolve bandwidth: {error}") from error


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


def billing(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> BillingPolicy | None:
    """`FIRST/NEXT` in whole seconds, such as `60/60` or `30/6`; None when not given."""
    if value is None:
        return None
    try:
        return BillingPolicy.parse(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


BILLING_OPTION: Final = click.option(
    "--billing",
    metavar="FIRST/NEXT",
    callback=billing,
    help="Bill FIRST seconds for talk up to FIRST, then whole NEXT-second increments "
    "(60/60, 30/6, 6/6, 1/1).",
)


def time_zone(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """An IANA time zone name, checked now so a wrong one is a usage error (exit 2)."""
    if value is None:
        return None
    try:
        instants.zone(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    return value


def tz_option(help_text: str) -> Callable[[Any], Any]:
    return click.option("--tz", metavar="ZONE", callback=time_zone, help=help_text)
