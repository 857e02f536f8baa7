"""`tracker stats`: the figures of the calls in a window, in a table, JSON or a plot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from tracker import ALL_DISPOSITIONS, END_SOURCES, CallStatistics, plotting
from tracker.cli.options import ACCOUNT_OPTION, SINCE_OPTION, UNTIL_OPTION, tz_option
from tracker.cli.output import echo_json, iso, stdout_console, when
from tracker.cli.session import Session


@click.command()
@click.option(
    "--by",
    type=click.Choice(["account", "hour", "day"]),
    help="One row per account, hour or day (UTC, or --tz's; default: one row; hour with --plot).",
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
    tz: str | None,
) -> None:
    """Attempts, answers, ASR, ACD, ring time, dispositions, causes and peak concurrent calls.

    Counts the calls (transfer legs included) that started in the window, by the UTC hour or day
    of their start (local ones with --tz, DST included) or by account; rows without an attempt
    are left out. ASR = answered / attempts; ACD = mean talk time of the answered calls that
    ended; times in seconds. The documentation (Statistics) defines every figure. --plot needs
    matplotlib (pip install 'tracker[plot]').
    """
    if plot_path is not None:
        if by == "account":
            raise click.UsageError("--plot draws figures over time: use --by hour or --by day")
        by = by or "hour"
        try:
            plotting.plot_format(plot_path)
            plotting.require_matplotlib()
        except (ValueError, ImportError) as error:
            raise click.BadParameter(str(error), param_hint="'--plot'") from error
    try:
        rows = session.tracker.stats(by=by, since=since, until=until, account_id=account_id, tz=tz)
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
        {"hour": f"hour ({zone})", "day": f"day ({zone})", "account": "account"}.get(
            by or "", "calls"
        )
    )
    for column in ("attempts", "answered", "ASR", "ACD", "ring", "peak", "live", *dispositions):
        table.add_column(column, justify="right")
    table.add_column("causes", overflow="fold")
    table.add_column("ended by", overflow="fold")
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
        )
    return table


def _bucket_label(row: CallStatistics, by: str | None) -> str:
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
