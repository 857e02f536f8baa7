"""`tracker stats`: the figures of the calls in a window, in a table, JSON or a plot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from tracker import ALL_DISPOSITIONS, END_SOURCES, CallStatistics, plotting
from tracker.billing import BillingPolicy
from tracker.cli.options import (
    ACCOUNT_OPTION,
    BILLING_OPTION,
    SINCE_OPTION,
    UNTIL_OPTION,
    tz_option,
)
from tracker.cli.output import echo_json, iso, stdout_console, when
from tracker.cli.session import Session


@click.command()
@click.option(
    "--by",
    type=click.Choice(["account", "hour", "day", "number"]),
    help="One row per account, hour or day (UTC, or --tz's) or number (default: one row; hour "
    "with --plot).",
)
@SINCE_OPTION
@UNTIL_OPTION
@ACCOUNT_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per row.")
@click.option(
    "--plot",
    "plot_path",
    metavar="FILE",
    type=click.Path(dir_okay=False, writable=True),
    help="Also draw volume, ASR and peak concurrency over time into FILE (.png or .svg).",
)
@BILLING_OPTION
@click.option(
    "--number-side",
    type=click.Choice(["to", "from"]),
    default="to",
    show_default=True,
    help="With --by number: the called (to) or the calling (from) number.",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    metavar="N",
    help="With --by number: only the N numbers with the most attempts.",
)
@tz_option("Hours and days of this IANA zone, DST included (e.g. Europe/Berlin; default UTC).")
@click.pass_obj
def stats(
    session: Session,
    by: str | None,
    since: datetime | None,
    until: datetime | None,
    account_id: str | None,
    as_json: bool,
    plot_path: str | None,
    billing: BillingPolicy | None,
    number_side: str,
    top: int | None,
    tz: str | None,
) -> None:
    """Attempts, answers, ASR, ACD, ring time, dispositions, causes and peak concurrent calls.

    Counts the calls (transfer legs included) that started in the window, by the UTC hour or day
    of their start (local ones with --tz, DST included) or by account; rows without an attempt
    are left out. ASR = answered / attempts; ACD = mean talk time of the answered calls that
    ended; times in seconds. The documentation (Statistics) defines every figure. --plot needs
    matplotlib (pip install 'tracker[plot]'). --billing FIRST/NEXT adds the billable seconds;
    --by number gives one row per number, most attempts first (Reporting and billing).
    """
    if top is not None and by != "number":
        raise click.UsageError("--top keeps the first numbers: use it with --by number")
    if plot_path is not None:
        if by in ("account", "number"):
            raise click.UsageError("--plot draws figures over time: use --by hour or --by day")
        by = by or "hour"
        try:
            plotting.plot_format(plot_path)
            plotting.require_matplotlib()
        except (ValueError, ImportError) as error:
            raise click.BadParameter(str(error), param_hint="'--plot'") from error
    try:
        rows = session.tracker.stats(
            by=by,
            since=since,
            until=until,
            account_id=account_id,
            billing=billing,
            number_side=number_side,
            top=top,
            tz=tz,
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    if plot_path is not None:
        assert by in ("hour", "day")
        plotting.write_plot(
            rows,
            plot_path,
            bucket_length=timedelta(hours=1) if by == "hour" else timedelta(days=1),
            title=_plot_title(by, since, until, account_id),
            zone=tz or "UTC",
        )
    if as_json:
        echo_json([_statistics_json(row) for row in rows], indent=2)
        return
    console = stdout_console()
    console.print(_statistics_table(rows, by, tz))
    if plot_path is not None:
        console.print(f"Plot written to {plot_path}.")


def _plot_title(
    by: str, since: datetime | None, until: datetime | None, account_id: str | None
) -> str:
    title = f"Calls per {by}"
    if account_id is not None:
        title += f", account {account_id}"
    if since is not None or until is not None:
        title += f", {when(since) if since else '...'} to {when(until) if until else '...'}"
    return title


def _statistics_json(row: CallStatistics) -> dict[str, Any]:
    return {
        "start": _bound(row.start),
        "end": _bound(row.end),
        "account_id": row.account_id,
        "attempts": row.attempts,
        "answered": row.answered,
        "live": row.live,
        "asr": row.asr,
        "acd": row.acd,
        "mean_ring_time": row.mean_ring_time,
        "peak_concurrent_calls": row.peak_concurrent_calls,
        "dispositions": dict(row.dispositions),
        "causes": dict(row.causes),
        "end_sources": dict(row.end_sources),
        "billable_seconds": row.billable_seconds,
        "mean_billable_seconds": row.mean_billable_seconds,
        "answered_without_end": row.answered_without_end,
        "number": row.number,
    }


def _bound(instant: datetime | None) -> str | None:
    """A bucket's bound for JSON: UTC written `Z` as every instant, a local one (`--tz`) with
    its offset, which tells a fall-back day's two 02:00 hours apart."""
    if instant is None or instant.tzinfo is UTC:
        return iso(instant)
    return instant.isoformat()


def _statistics_table(rows: list[CallStatistics], by: str | None, tz: str | None = None) -> Table:
    dispositions = [
        name for name in ALL_DISPOSITIONS if any(name in row.dispositions for row in rows)
    ]
    table = Table(caption="ASR = answered / attempts; ACD and ring: mean seconds.")
    zone = tz or "UTC"
    table.add_column(
        {
            "hour": f"hour ({zone})",
            "day": f"day ({zone})",
            "account": "account",
            "number": "number",
        }.get(by or "", "calls")
    )
    billed = any(row.billable_seconds is not None for row in rows)
    for column in ("attempts", "answered", "ASR", "ACD", "ring", "peak", "live", *dispositions):
        table.add_column(column, justify="right")
    table.add_column("causes", overflow="fold")
    table.add_column("ended by", overflow="fold")
    if billed:
        for column in ("billed s", "billed mean", "no end yet"):
            table.add_column(column, justify="right")
    for row in rows:
        causes = sorted(row.causes.items(), key=lambda item: (-item[1], item[0]))
        table.add_row(
            Text(_bucket_label(row, by)),
            f"{row.attempts:,}",
            f"{row.answered:,}",
            "-" if row.asr is None else f"{row.asr:.1%}",
            "-" if row.acd is None else f"{row.acd:,.1f}",
            "-" if row.mean_ring_time is None else f"{row.mean_ring_time:,.1f}",
            f"{row.peak_concurrent_calls:,}",
            f"{row.live:,}",
            *(f"{row.dispositions.get(name, 0):,}" for name in dispositions),
            Text(", ".join(f"{cause} {count:,}" for cause, count in causes)),
            Text(
                ", ".join(
                    f"{source} {row.end_sources[source]:,}"
                    for source in END_SOURCES
                    if source in row.end_sources
                )
            ),
            *(_billing_cells(row) if billed else ()),
        )
    return table


def _billing_cells(row: CallStatistics) -> tuple[str, str, str]:
    mean = row.mean_billable_seconds
    return (
        f"{row.billable_seconds or 0:,}",
        "-" if mean is None else f"{mean:,.1f}",
        f"{row.answered_without_end or 0:,}",
    )


def _bucket_label(row: CallStatistics, by: str | None) -> str:
    if by == "number":
        return row.number if row.number is not None else "(no number)"
    if by == "hour" and row.start is not None and row.start.tzinfo is not UTC:
        # A local hour shows its offset: a fall-back day has two 02:00 hours.
        return row.start.strftime("%Y-%m-%d %H:00%z")
    if by == "hour":
        return row.start.strftime("%Y-%m-%d %H:00") if row.start else "-"
    if by == "day":
        return row.start.strftime("%Y-%m-%d") if row.start else "-"
    if by == "account":
        return row.account_id if row.account_id is not None else "(no account)"
    since = when(row.start) if row.start else "the first call"
    until = when(row.end) if row.end else "now"
    return f"{since} to {until}"
