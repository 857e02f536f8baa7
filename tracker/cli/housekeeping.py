"""`tracker sweep`, `prune`, `redrive` and `rebuild`: keeping the calls and the log in order."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta

import click
from rich.table import Table
from rich.text import Text

from tracker import REDRIVEN_OUTCOMES, ProviderError
from tracker.cli.options import batch_size_option, duration, instant, resolve_option
from tracker.cli.options import resolver as resolver_named
from tracker.cli.output import clock, echo_json, iso, shown, stdout_console, when
from tracker.cli.session import Session
from tracker.housekeeping import PRUNE_BATCH_SIZE, SWEEP_BATCH_SIZE

# --- sweep ------------------------------------------------------------------------------------


@click.command()
@click.option(
    "--older-than",
    required=True,
    metavar="DURATION",
    callback=duration,
    help="End live calls last heard of longer ago than this (4h, 90m, 2d, seconds).",
)
@click.option(
    "--now",
    metavar="DATETIME",
    callback=instant,
    help="Measure ages from this instant instead of the current time.",
)
@batch_size_option(SWEEP_BATCH_SIZE, "Calls ended per transaction.")
@resolve_option(
    "Ask Bandwidth's call state API first (credentials from the environment): a call it says "
    "disconnected ends with its facts, one still going stays live, one it does not know is "
    "expired, and one it could not answer for stays live for the next sweep."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_obj
def sweep(
    session: Session,
    older_than: timedelta,
    now: datetime | None,
    batch_size: int,
    resolve: str | None,
    as_json: bool,
) -> None:
    """End the calls whose terminal event was lost.

    Every call still initiated or answered whose latest known time (start, answer) is older than
    --older-than becomes disconnected with disposition expired, no cause, and a history step
    and log entry of its own. With --resolve bandwidth, Bandwidth is asked first. A real
    terminal event arriving later replaces either end entirely. Safe to run (from cron, say)
    while workers apply.
    """
    resolver = resolver_named(resolve)
    try:
        report = session.tracker.sweep(older_than, now=now, batch_size=batch_size, resolve=resolver)
    except ProviderError as error:
        if error.refused:  # nothing more can be asked: what was done stays, the rest waits
            raise click.UsageError(f"--resolve {resolve}: {error}") from error
        raise click.ClickException(str(error)) from error
    finally:
        if resolver is not None and hasattr(resolver, "close"):
            resolver.close()
    if as_json:
        echo_json(
            {
                "checked": report.checked,
                "expired": list(report.expired),
                "resolved": list(report.resolved),
                "kept": list(report.kept),
                "failed": list(report.failed),
                "older_than": older_than.total_seconds(),
            }
        )
        return
    expired = len(report.expired)
    click.echo(
        f"Expired {expired:,} {'call' if expired == 1 else 'calls'} of {report.checked:,} live "
        f"calls looked at (last heard of more than {clock(older_than)} ago)."
    )
    for call_id in report.expired:
        click.echo(f"  {call_id}")
    if resolve is not None:
        click.echo(
            f"Bandwidth ended {len(report.resolved):,}, kept {len(report.kept):,} live (still "
            f"going there), and could not answer for {len(report.failed):,} (left live for the "
            "next sweep)."
        )
        for call_id in report.failed:
            click.echo(f"  failed: {call_id}")


# --- prune ------------------------------------------------------------------------------------


@click.command()
@click.option(
    "--before",
    required=True,
    metavar="DATETIME",
    callback=instant,
    help="Delete the log entries received before this instant.",
)
@batch_size_option(PRUNE_BATCH_SIZE, "Entries looked at, and at most deleted, per transaction.")
@click.option("--json", "as_json", is_flag=True, help="Print the count as one JSON object.")
@click.pass_obj
def prune(session: Session, before: datetime, batch_size: int, as_json: bool) -> None:
    """Delete old entries from the event log; calls and their history stay.

    --before takes an ISO 8601 date or datetime; one without a zone is UTC. Entries are deleted
    in batches, each its own short transaction, so workers applying meanwhile are not held up.
    A pruned log can no longer rebuild the calls, nor tell a late retry of a pruned delivery
    from a new one: see the documentation (Housekeeping, Prune).
    """
    deleted = session.tracker.prune(before, batch_size=batch_size)
    if as_json:
        echo_json({"deleted": deleted, "before": iso(before)})
    else:
        entries = "log entry" if deleted == 1 else "log entries"
        click.echo(f"Deleted {deleted:,} {entries} received before {when(before)}.")


# --- redrive ---------------------------------------------------------------------------------


@click.command()
@click.option(
    "--outcome",
    required=True,
    type=click.Choice([outcome.value for outcome in REDRIVEN_OUTCOMES]),
    help="Re-drive the deliveries logged with this outcome.",
)
@click.option("--reason", metavar="CODE", help="Only those logged with this reason.")
@click.option("--call", "call_id", metavar="CALL_ID", help="Only those about this call.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object.")
@click.pass_obj
def redrive(
    session: Session, outcome: str, reason: str | None, call_id: str | None, as_json: bool
) -> None:
    """Apply logged deliveries again, after an upgrade that accepts more or once the calls they
    met changed.

    Each new outcome is logged as a new entry; the entries re-driven stay. Only entries logged
    before the command started are read, 500 per transaction, and a body held by several of them
    is applied once. `too_large` entries are skipped: only the start of their body was kept.
    """
    report = session.tracker.redrive(outcome, reason=reason, call_id=call_id)
    outcomes = sorted(report.outcomes.items(), key=lambda item: (item[0][0], item[0][1] or ""))
    if as_json:
        document = {
            "redriven": report.redriven,
            "outcomes": [
                {"outcome": of.value, "reason": why, "count": count}
                for (of, why), count in outcomes
            ],
            "repeats": report.repeats,
            "too_large": report.too_large,
        }
        echo_json(document)
        return
    caption = [f"{report.redriven:,} re-driven"]
    if report.repeats:
        caption.append(f"{report.repeats:,} repeating a body already re-driven")
    if report.too_large:
        caption.append(f"{report.too_large:,} too_large skipped (body cut when logged)")
    table = Table(title=Text(f"Re-drove the {outcome} deliveries"), caption=", ".join(caption))
    table.add_column("new outcome")
    table.add_column("reason")
    table.add_column("count", justify="right")
    for (of, why), count in outcomes:
        table.add_row(of.value, Text(shown(why)), f"{count:,}")
    stdout_console().print(table)


# --- rebuild ----------------------------------------------------------------------------------


@click.command()
@click.option(
    "--apply",
    "write",
    is_flag=True,
    help="Write the recomputed records of the calls that differ.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_obj
def rebuild(session: Session, write: bool, as_json: bool) -> None:
    """Recompute every call from the event log and list the calls whose record differs.

    On a log that was never pruned none should. With --apply, the recomputed records are
    written, in batches, each by compare-and-set; writing stops if deliveries are applied
    meanwhile (run it with the workers stopped).
    """
    report = session.tracker.rebuild(apply=write)
    if as_json:
        echo_json(asdict(report), indent=2)
        return
    console = stdout_console()
    if report.differences:
        table = Table()
        for column in ("call id", "difference", "fields"):
            table.add_column(column, overflow="fold")
        for difference in report.differences:
            table.add_row(
                Text(difference.call_id), difference.kind, Text(", ".join(difference.fields))
            )
        console.print(table)
    console.print(
        f"{report.calls_checked} calls checked against {report.deliveries_replayed} applied "
        f"deliveries replayed: {report.calls_differing} differ"
        + (
            f" (the first {len(report.differences)} are listed)."
            if len(report.differences) < report.calls_differing
            else "."
        )
    )
    if report.not_reapplied:
        listed = ", ".join(str(event_id) for event_id in report.not_reapplied[:10])
        console.print(
            f"{len(report.not_reapplied)} logged deliveries were not applied again by the "
            f"replay (log ids {listed}{', ...' if len(report.not_reapplied) > 10 else ''})."
        )
    if report.applied:
        console.print(f"{report.calls_written} calls written.")
        if report.calls_moved:
            console.print(
                f"{report.calls_moved} calls changed by a delivery meanwhile were left alone."
            )
    if report.stopped:
        console.print(f"Writing stopped: {report.stopped}.")
