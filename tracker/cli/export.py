"""`tracker export`: call detail records written as CSV, JSON Lines or Parquet."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import click

from tracker.billing import BillingPolicy
from tracker.cli.options import (
    ACCOUNT_OPTION,
    BILLING_OPTION,
    UNTIL_OPTION,
    batch_size_option,
    instant,
    tz_option,
)
from tracker.cli.session import Session
from tracker.exporting import (
    EXPORT_BATCH_SIZE,
    FORMATS,
    PER_CONVERSATION,
    PER_LEG,
    PERS,
    Column,
    columns,
    require_pyarrow,
    write_csv,
    write_jsonl,
    write_parquet,
)


@click.command()
@click.option(
    "--format",
    "file_format",
    type=click.Choice(FORMATS),
    default="csv",
    show_default=True,
    help="CSV, JSON Lines, or Parquet (needs the extra: pip install 'tracker[parquet]').",
)
@click.option(
    "--per",
    type=click.Choice(PERS),
    default=PER_LEG,
    show_default=True,
    help="One row per leg (every call), or per conversation (an original call, legs folded in).",
)
@click.option(
    "--since",
    metavar="DATETIME",
    callback=instant,
    help="Only calls (conversations: original calls) that started at or after this instant.",
)
@UNTIL_OPTION
@ACCOUNT_OPTION
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    metavar="FILE",
    help="Write to FILE (replaced only once the export is whole); stdout when left out.",
)
@batch_size_option(EXPORT_BATCH_SIZE, "Calls read per statement.")
@BILLING_OPTION
@tz_option("Write every time in this IANA zone, with its offset (e.g. Europe/Berlin; default UTC).")
@click.pass_obj
def export(
    session: Session,
    file_format: str,
    per: str,
    since: datetime | None,
    until: datetime | None,
    account_id: str | None,
    output: str | None,
    batch_size: int,
    billing: BillingPolicy | None,
    tz: str | None,
) -> None:
    """Write call detail records, oldest start first.

    One row per leg, or with --per conversation one per original call with its transfer legs
    folded in (which leg answered, the legs' talk time, transfer attempts, legs). --since and
    --until take ISO 8601 dates or datetimes; one without a zone is UTC. Placeholders (parents
    known only through their legs) have no start time and come last, only when neither bound is
    given. The columns are in the documentation (Export). Memory stays bounded whatever the
    number of calls. --billing FIRST/NEXT adds a last column, billable_seconds (Reporting and
    billing).
    """
    if file_format == "parquet":
        if output is None:
            raise click.UsageError(
                "--format parquet needs -o FILE: a Parquet file ends with a footer that points "
                "back into it, so it cannot be streamed to stdout"
            )
        try:
            require_pyarrow()
        except ImportError as error:
            raise click.UsageError(str(error)) from error
    try:
        rows = session.tracker.export(
            per=per,
            since=since,
            until=until,
            account_id=account_id,
            batch_size=batch_size,
            billing=billing,
            tz=tz,
        )
    except ValueError as error:  # checked before any row is read
        raise click.UsageError(str(error)) from error
    names = columns(per, billing=billing)
    if output is None:
        _export_to_stdout(rows, names, file_format)
        return
    target = Path(output)
    partial = target.with_name(f".{target.name}.partial")
    try:
        if file_format == "parquet":
            written = write_parquet(rows, names, partial, tz=tz)
        else:
            with partial.open("w", encoding="utf-8", newline="") as stream:
                written = _write_text(rows, names, file_format, stream)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    noun = "conversation" if per == PER_CONVERSATION else "leg"
    click.echo(f"Wrote {written:,} {noun}{'' if written == 1 else 's'} to {output}.")


def _write_text(
    rows: Iterable[dict[str, Any]], names: tuple[Column, ...], file_format: str, stream: TextIO
) -> int:
    if file_format == "csv":
        return write_csv(rows, names, stream)
    return write_jsonl(rows, names, stream)


def _export_to_stdout(
    rows: Iterable[dict[str, Any]], names: tuple[Column, ...], file_format: str
) -> int:
    """Write to stdout as UTF-8 whatever the locale; a reader that stops early (`| head`) ends
    the export quietly."""
    stream = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
    try:
        written = _write_text(rows, names, file_format, stream)
        stream.flush()
    except BrokenPipeError:
        # Python flushes stdout once more at exit and would fail again: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        raise click.exceptions.Exit(0) from None
    finally:
        stream.detach()  # leave sys.stdout's buffer open
    return written
