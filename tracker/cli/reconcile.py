"""`tracker reconcile`: the tracker's calls compared with Bandwidth's own list, call by call."""

from __future__ import annotations

import sys
from dataclasses import asdict
from datetime import datetime
from typing import Any, Final

import click
from rich import box
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tracker import Call, ProviderCall, ProviderError, ReconciledCall, ReconcilePage
from tracker.cli.options import instant
from tracker.cli.output import call_json, echo_json, iso, stdout_console, when
from tracker.cli.session import Session, fail
from tracker.provider import KEPT_DAYS

# Missing or refused credentials, a missing account: a usage error, as a bad option is.
EXIT_USAGE: Final = 2
# Bandwidth's API failed part way (a timeout, a 5xx, a 429 still refused).
EXIT_PROVIDER: Final = 4

# What a refused or missing configuration's error adds: every variable reconcile reads.
_CONFIGURATION: Final = (
    "reconcile reads BANDWIDTH_USERNAME and BANDWIDTH_PASSWORD, or BANDWIDTH_CLIENT_ID and "
    "BANDWIDTH_CLIENT_SECRET; BANDWIDTH_ACCOUNT_ID unless --account is given; and "
    "TRACKER_BANDWIDTH_API_URL for another API than Bandwidth's"
)

# The table's columns, fixed so that the rows of every page line up under one header.
_WIDTHS: Final = {"call": 47, "status": 13, "here": 38, "there": 38, "note": 24}


@click.command()
@click.option(
    "--since",
    required=True,
    metavar="DATETIME",
    callback=instant,
    help="Compare the calls that started at or after this instant.",
)
@click.option(
    "--until",
    metavar="DATETIME",
    callback=instant,
    help="Only calls that started before it (default: now).",
)
@click.option(
    "--account",
    "account_id",
    metavar="ID",
    help="The Bandwidth account whose calls are listed (default: BANDWIDTH_ACCOUNT_ID).",
)
@click.option(
    "--apply",
    "write",
    is_flag=True,
    help="Apply Bandwidth's facts to the missing and live_here calls (never to differs).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object per call that does not agree, then a summary object.",
)
@click.pass_obj
def reconcile(
    session: Session,
    since: datetime,
    until: datetime | None,
    account_id: str | None,
    write: bool,
    as_json: bool,
) -> None:
    """Compare the calls Bandwidth lists for a window with the tracker's, call by call.

    Each call agrees, is missing (Bandwidth has it, the tracker has no record), live_here
    (ended there, live here or only swept), differs (another cause, end time or answer time,
    compared to the millisecond; or ended here while still active there) or unknown_there (the
    tracker has it, Bandwidth did not list it). The calls that do not agree are printed as
    Bandwidth's pages come, then a count per status. With --apply, Bandwidth's facts end the
    missing and live_here calls (end source provider, logged with origin provider); without
    it nothing is written.

    Credentials come from the environment only: BANDWIDTH_USERNAME and BANDWIDTH_PASSWORD, or
    BANDWIDTH_CLIENT_ID and BANDWIDTH_CLIENT_SECRET; TRACKER_BANDWIDTH_API_URL points at
    another API. Bandwidth keeps calls for 7 days: a window reaching further back says so, and
    the tracker's calls before that are not compared. Exit codes: 2 for missing credentials or
    account, 4 when Bandwidth's API failed part way (what was applied before stays).
    """
    printer = _JsonPrinter() if as_json else _TablePrinter()
    progress_console = Console(stderr=True)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("pages: {task.fields[pages]:,}, calls listed: {task.fields[calls]:,}"),
        TimeElapsedColumn(),
        console=progress_console,
        disable=not progress_console.is_terminal,
        transient=True,
        # Rows printed meanwhile go above the progress line when stdout is the same terminal,
        # and straight to stdout when it is a pipe.
        redirect_stdout=sys.stdout.isatty(),
        redirect_stderr=False,
    ) as progress:
        task = progress.add_task("Listing Bandwidth's calls", pages=0, calls=0)

        def on_page(page: ReconcilePage) -> None:
            printer.page(page)
            progress.update(task, pages=printer.pages, calls=printer.calls)
            if page.source == "tracker":
                progress.update(task, description="Looking for the tracker's calls there")

        try:
            report = session.tracker.reconcile(
                since, until, account_id=account_id, apply=write, on_page=on_page
            )
        except ValueError as error:
            raise click.UsageError(str(error)) from error
        except ProviderError as error:
            if error.refused and not printer.pages:
                fail(f"{error} ({_CONFIGURATION})", EXIT_USAGE)
            applied = f"; {_calls(printer.applied)} applied before it stay applied" if write else ""
            fail(
                f"{error} (after {printer.pages:,} of Bandwidth's pages{applied}; reconciling "
                "again is safe)",
                EXIT_USAGE if error.refused else EXIT_PROVIDER,
            )
    if report.reaches_past_kept:
        were = "was" if report.not_compared == 1 else "were"
        click.echo(
            f"Warning: the window starts before {when(report.kept_from)}: Bandwidth keeps calls "
            f"{KEPT_DAYS} days and lists none older, so {_calls(report.not_compared)} here that "
            f"started before it {were} not compared.",
            err=True,
        )
    if as_json:
        echo_json(
            {
                "summary": {
                    **report.counts,
                    "since": iso(report.since),
                    "until": iso(report.until),
                    "account_id": report.account_id,
                    "pages": report.pages,
                    "applying": report.applying,
                    "applied": report.applied,
                    "kept_from": iso(report.kept_from),
                    "reaches_past_kept": report.reaches_past_kept,
                    "not_compared": report.not_compared,
                }
            }
        )
        return
    counts = ", ".join(f"{count:,} {status}" for status, count in report.counts.items())
    click.echo(
        f"Reconciled account {report.account_id}, calls started in [{when(report.since)}, "
        f"{when(report.until)}), {report.pages:,} {'page' if report.pages == 1 else 'pages'} "
        f"from Bandwidth: {counts}."
    )
    if report.applying:
        click.echo(f"Applied Bandwidth's facts to {_calls(report.applied)}.")
    elif report.counts["missing"] or report.counts["live_here"]:
        click.echo(
            "Nothing was written: --apply applies Bandwidth's facts to the missing and "
            "live_here calls."
        )


class _Printer:
    """Prints each page's calls as they come, and counts what the error message needs."""

    def __init__(self) -> None:
        self.pages = 0
        self.calls = 0
        self.applied = 0

    def page(self, page: ReconcilePage) -> None:
        if page.source == "bandwidth":
            self.pages += 1
            self.calls += page.compared
        self.applied += sum(
            call.result is not None and call.result.outcome == "applied" for call in page.calls
        )
        if page.calls:
            self.print(page.calls)

    def print(self, calls: tuple[ReconciledCall, ...]) -> None:
        raise NotImplementedError


class _JsonPrinter(_Printer):
    def print(self, calls: tuple[ReconciledCall, ...]) -> None:
        for call in calls:
            echo_json(
                {
                    "call_id": call.call_id,
                    "status": call.status.value,
                    "differing": list(call.differing),
                    "here": None if call.here is None else call_json(call.here),
                    "there": None if call.there is None else _provider_json(call.there),
                    "result": None
                    if call.result is None
                    else {**asdict(call.result), "outcome": call.result.outcome.value},
                }
            )


class _TablePrinter(_Printer):
    """One table whose header is printed with the first rows, then rows as pages come."""

    def __init__(self) -> None:
        super().__init__()
        self.console = stdout_console()
        self.headed = False

    def print(self, calls: tuple[ReconciledCall, ...]) -> None:
        table = Table(box=box.SIMPLE_HEAD, show_header=not self.headed, show_edge=False)
        self.headed = True
        for name, width in _WIDTHS.items():
            table.add_column(name, width=width, overflow="fold")
        for call in calls:
            table.add_row(
                Text(call.call_id),
                call.status.value,
                Text(_here(call.here)),
                Text(_there(call.there)),
                Text(_note(call)),
            )
        self.console.print(table)


def _calls(count: int) -> str:
    return f"{count:,} call" if count == 1 else f"{count:,} calls"


def _here(call: Call | None) -> str:
    if call is None:
        return "no record"
    if call.live:
        return call.state
    if call.swept:
        return "swept"
    return f"{call.cause or 'no cause'}, ended {when(call.end_time)}"


def _there(call: ProviderCall | None) -> str:
    if call is None:
        return "not listed"
    if not call.ended:
        return call.state
    return f"{call.cause or 'no cause'}, ended {when(call.ended_at)}"


def _note(call: ReconciledCall) -> str:
    if call.result is not None:
        return call.result.outcome.value
    if call.differing:
        return "differs: " + ", ".join(call.differing)
    if call.there is not None and not call.there.ended:
        return "active there: no end yet"
    return ""


def _provider_json(call: ProviderCall) -> dict[str, Any]:
    """Every fact of Bandwidth's record, instants as ISO 8601."""
    return {
        name: iso(value) if isinstance(value, datetime) else value
        for name, value in asdict(call).items()
    } | {"ended": call.ended}
