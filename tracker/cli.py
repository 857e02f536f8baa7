"""The `tracker` command line: a thin shell over the `Tracker` facade.

People get rich tables, a leg tree and a progress bar; scripts get `--json`, which prints one
JSON document and nothing else on stdout. The tracker's own failures end in one line on stderr
and an exit code a script can test, never in a traceback.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import re
import signal
import socket
import stat
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import IO, Any, Final, NoReturn, TextIO

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from rich.tree import Tree
from sqlalchemy.exc import ArgumentError

from tracker import (
    ALL_DISPOSITIONS,
    DEFAULT_DATABASE_URL,
    LIVE_STATES,
    REDRIVEN_OUTCOMES,
    STATES,
    Call,
    CallStatistics,
    Change,
    Event,
    Outcome,
    Result,
    SchemaError,
    StorageError,
    Tracker,
    plotting,
)
from tracker.asgi import BODY_TIMEOUT, MAX_BODY_BYTES, MAX_QUEUE
from tracker.exporting import (
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
from tracker.storage import DEFAULT_TIMEOUT

EXIT_NOT_FOUND: Final = 1
EXIT_SCHEMA: Final = 2
EXIT_STORAGE: Final = 3

# Bodies applied per transaction: one commit per chunk instead of per body, while a crash loses
# at most one chunk's work and memory stays bounded whatever the size of the stream.
CHUNK_SIZE: Final = 500

# A pipe has no width, and rich would otherwise cut tables at its default of 80 columns; tables
# take only the width they need, so a wide page loses nothing.
_PIPE_WIDTH: Final = 1000


class _TrackerGroup(click.Group):
    """Ends every command that meets a tracker error with one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SchemaError as error:
            _fail(str(error), EXIT_SCHEMA)
        except StorageError as error:
            _fail(str(error), EXIT_STORAGE)


def _fail(message: str, exit_code: int) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(exit_code)


class _Session:
    """The database named by --db, and the tracker opened on it when a command first needs one,
    so that `--help` works whatever --db says."""

    def __init__(self, database_url: str, schema: str | None, timeout: float | None) -> None:
        self.database_url = database_url
        self.schema = schema
        self.timeout = timeout
        # `serve --max-body-bytes`, set before the tracker is opened: one limit for both.
        self.max_body_bytes = MAX_BODY_BYTES

    @cached_property
    def tracker(self) -> Tracker:
        try:
            tracker = Tracker(
                self.database_url,
                schema=self.schema,
                timeout=self.timeout,
                max_body_bytes=self.max_body_bytes,
            )
        except (ArgumentError, ValueError) as error:
            raise click.BadParameter(str(error), param_hint="'--db'") from error
        except ImportError as error:
            raise click.BadParameter(
                f"the database driver is not installed ({error}); install the extra for it, "
                "e.g. pip install 'tracker[postgresql]' or 'tracker[mysql]'",
                param_hint="'--db'",
            ) from error
        click.get_current_context().call_on_close(tracker.close)
        return tracker

    @property
    def shown_url(self) -> str:
        return self.tracker.engine.url.render_as_string(hide_password=True)


@click.group(cls=_TrackerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    "database_url",
    envvar="TRACKER_DATABASE_URL",
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    show_envvar=True,
    metavar="URL",
    help="SQLAlchemy database URL, e.g. postgresql+psycopg://user@host/calls.",
)
@click.option(
    "--schema",
    envvar="TRACKER_DATABASE_SCHEMA",
    default=None,
    show_envvar=True,
    metavar="NAME",
    help="PostgreSQL only: keep the tracker's tables in this schema, apart from the host's.",
)
@click.option(
    "--timeout",
    envvar="TRACKER_DATABASE_TIMEOUT",
    default=DEFAULT_TIMEOUT,
    show_default=True,
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Longest wait of a delivery for a lock, a statement or a silent database server.",
)
@click.version_option(package_name="tracker")
@click.pass_context
def cli(ctx: click.Context, database_url: str, schema: str | None, timeout: float) -> None:
    """Follow Bandwidth Voice calls: apply callback bodies, then look at calls and their legs.

    Exit codes: 0 done; 1 call not found; 2 usage error, or the database schema needs
    `tracker upgrade`; 3 the database failed.
    """
    ctx.obj = _Session(database_url, schema, timeout)


# --- upgrade ----------------------------------------------------------------------------------


@cli.command()
@click.pass_obj
def upgrade(session: _Session) -> None:
    """Create or migrate the tracker's tables. Safe to run again, and from many hosts at once."""
    done = session.tracker.upgrade()
    before, head = done.from_revision, done.to_revision
    if not done.changed:
        click.echo(f"The tracker schema in {session.shown_url} is already at revision {head}.")
    else:
        click.echo(
            f"Upgraded the tracker schema in {session.shown_url} "
            f"from {f'revision {before}' if before else 'nothing'} to revision {head}."
        )


# --- ingest -----------------------------------------------------------------------------------


class _LineReader:
    """Reads one JSON Lines stream lazily, counting lines and bytes as they go by."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.lines = 0
        self.blank_lines = 0
        self.bytes_read = 0

    def bodies(self) -> Iterator[bytes]:
        """Each non-blank line as the exact bytes received, without its line ending."""
        for line in self._stream:
            self.lines += 1
            self.bytes_read += len(line)
            body = _without_line_ending(line)
            if body.strip():
                yield body
            else:
                self.blank_lines += 1

    def chunks(self) -> Iterator[tuple[int, list[bytes]]]:
        """The bodies CHUNK_SIZE at a time, each chunk with the count of lines read before it."""
        bodies = self.bodies()
        while True:
            lines_before = self.lines
            chunk = list(islice(bodies, CHUNK_SIZE))
            if not chunk:
                return
            yield lines_before, chunk


def _without_line_ending(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


@dataclass
class _Tally:
    """What an ingest did, in counters only: a run over millions of lines keeps no results."""

    lines: int = 0
    blank_lines: int = 0
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    reasons: Counter[tuple[Outcome, str]] = field(default_factory=Counter)

    def count(self, results: Iterable[Result]) -> None:
        for result in results:
            self.outcomes[result.outcome] += 1
            if result.reason is not None:
                self.reasons[result.outcome, result.reason] += 1

    def as_json(self) -> dict[str, Any]:
        reasons: Counter[str] = Counter()
        for (_outcome, reason), count in self.reasons.items():
            reasons[reason] += count
        return {
            "lines": self.lines,
            "blank_lines": self.blank_lines,
            "bodies": self.lines - self.blank_lines,
            "outcomes": {outcome.value: self.outcomes[outcome] for outcome in Outcome},
            "reasons": dict(sorted(reasons.items())),
        }


def _stream_size(path: str) -> int | None:
    """The byte count the progress bar runs to: known for a regular file, not for a pipe."""
    if path == "-":
        return None
    status = os.stat(path)
    return status.st_size if stat.S_ISREG(status.st_mode) else None


@cli.command()
@click.argument(
    "files",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object.")
@click.pass_obj
def ingest(session: _Session, files: tuple[str, ...], as_json: bool) -> None:
    """Apply callback bodies from JSON Lines files.

    FILES hold one body per line; `-` reads stdin. Each line goes to the tracker as the exact
    bytes received, less its line ending, so the event log keeps what was sent. Empty and
    whitespace-only lines are skipped and counted. Files are streamed and applied 500 bodies
    per transaction, so any size fits in memory.

    Bodies that are invalid, rejected or ignored are recorded in the event log with their
    reason and counted in the summary; they do not change the exit code, which is 0 once every
    line was read. See them with `tracker events --outcome invalid`.
    """
    tracker = session.tracker
    tally = _Tally()
    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[lines]:,} lines"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    ) as progress:
        for path in files:
            name = "stdin" if path == "-" else path
            task = progress.add_task(name, total=_stream_size(path), lines=0)
            with click.open_file(path, "rb") as stream:
                reader = _LineReader(stream)
                for lines_before, chunk in reader.chunks():
                    try:
                        tally.count(tracker.apply_many(chunk))
                    except StorageError as error:
                        raise StorageError(
                            f"{error} (stopped at {name} line {lines_before + 1}: the lines "
                            "before it were applied; ingesting again is safe, bodies already "
                            "applied come back as duplicates)"
                        ) from error
                    progress.update(task, completed=reader.bytes_read, lines=reader.lines)
                # Blank lines after the last body were read but belong to no chunk.
                progress.update(task, completed=reader.bytes_read, lines=reader.lines)
            tally.lines += reader.lines
            tally.blank_lines += reader.blank_lines

    if as_json:
        click.echo(json.dumps(tally.as_json()))
    else:
        _stdout().print(_tally_table(tally, files))


def _tally_table(tally: _Tally, files: tuple[str, ...]) -> Table:
    sources = ", ".join("stdin" if path == "-" else path for path in files)
    table = Table(
        title=Text(f"Ingested {sources}"),
        caption=f"{tally.lines:,} lines read, {tally.blank_lines:,} blank lines skipped",
    )
    table.add_column("outcome")
    table.add_column("reason")
    table.add_column("count", justify="right")
    for outcome in Outcome:
        table.add_row(outcome.value, "", f"{tally.outcomes[outcome]:,}")
        for (of, reason), count in sorted(tally.reasons.items()):
            if of is outcome:
                table.add_row("", Text(reason), f"{count:,}", style="dim")
    return table


# --- show -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _LegNode:
    call: Call
    legs: tuple[_LegNode, ...]


def _leg_tree(tracker: Tracker, call: Call, above: frozenset[str] = frozenset()) -> _LegNode:
    """The call and its legs, their legs in turn, as deep as transfers went. A leg already
    above in the tree is not followed again: the tracker refuses cycles, but a database written
    by an older version may hold one, and `show` must still show it."""
    above = above | {call.call_id}
    legs = (tracker.get_call(leg_id) for leg_id in call.legs if leg_id not in above)
    return _LegNode(call, tuple(_leg_tree(tracker, leg, above) for leg in legs if leg is not None))


def _leg_tree_json(node: _LegNode) -> dict[str, Any]:
    call = node.call
    return {
        "call_id": call.call_id,
        "state": call.state,
        "cause": call.cause,
        "disposition": call.disposition,
        "duration": _seconds(call.duration),
        "legs": [_leg_tree_json(leg) for leg in node.legs],
    }


def _leg_tree_rich(node: _LegNode, tree: Tree | None = None) -> Tree:
    label = _leg_label(node.call)
    branch = Tree(label) if tree is None else tree.add(label)
    for leg in node.legs:
        _leg_tree_rich(leg, branch)
    return branch


def _leg_label(call: Call) -> Text:
    label = Text(call.call_id, style="bold")
    label.append(f"  {call.state}")
    if call.cause is not None:
        label.append(f"  {call.cause} -> {call.disposition}")
    if call.duration is not None:
        label.append(f"  {_clock(call.duration)}")
    if call.to_number is not None:
        label.append(f"  to {call.to_number}", style="dim")
    return label


@cli.command()
@click.argument("call_id")
@click.option("--json", "as_json", is_flag=True, help="Print the call as one JSON object.")
@click.pass_obj
def show(session: _Session, call_id: str, as_json: bool) -> None:
    """Show one call, its legs and its history.

    The legs are drawn as a tree: the legs a transfer created, and theirs in turn.
    """
    tracker = session.tracker
    call = tracker.get_call(call_id)
    if call is None:
        _fail(f"no call {call_id} in {session.shown_url}", EXIT_NOT_FOUND)
    tree = _leg_tree(tracker, call)
    if as_json:
        click.echo(json.dumps({**_call_json(call), "leg_tree": _leg_tree_json(tree)}, indent=2))
        return

    console = _stdout()
    console.print(Text(f"Call {call.call_id}", style="bold"))
    if call.parent_call_id is not None:
        console.print(Text(f"A leg of {call.parent_call_id}, created by <Transfer>."))
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    for name, value in _facts(call):
        facts.add_row(name, Text(value))
    console.print(facts)

    console.print()
    if call.legs:
        console.print(Text("Legs", style="bold"))
        console.print(_leg_tree_rich(tree))
    else:
        console.print(Text("No legs.", style="bold"))

    console.print()
    if call.transfers:
        attempts = Table(title=Text("Transfer attempts"), title_justify="left")
        for column in ("at", "to", "caller id", "outcome", "error"):
            attempts.add_column(column)
        for attempt in call.transfers:
            attempts.add_row(
                _when(attempt.at),
                _shown(attempt.transfer_to),
                _shown(attempt.transfer_caller_id),
                f"{attempt.disposition} (cause {attempt.cause})",
                _shown(attempt.error_message),
            )
        console.print(attempts)
        console.print()
    history = Table(title=Text("History"), title_justify="left")
    for column in ("transition", "at", "event", "event #"):
        history.add_column(column)
    for step in call.history:
        history.add_row(
            f"{step.source} -> {step.target}", _when(step.at), step.event, str(step.event_id)
        )
    console.print(history)


def _facts(call: Call) -> list[tuple[str, str]]:
    cause = call.cause or ""
    return [
        ("state", call.state),
        ("disposition", _shown(call.disposition) + (f" (cause {cause})" if cause else "")),
        ("answered", "yes" if call.answered else "no"),
        ("direction", _shown(call.direction)),
        ("from", _shown(call.from_number)),
        ("to", _shown(call.to_number)),
        ("account", _shown(call.account_id)),
        ("application", _shown(call.application_id)),
        ("enqueued", _when(call.enqueued_time)),
        ("started", _when(call.start_time)),
        ("answered at", _when(call.answer_time)),
        ("ended", _when(call.end_time)),
        ("duration", _clock(call.duration)),
        ("ringing", _clock(call.ring_duration)),
        ("talking", _clock(call.talk_duration)),
        ("tag", _shown(call.tag)),
        ("error", _shown(call.error_message)),
        ("error id", _shown(call.error_id)),
        ("caller name", _shown(call.caller_display_name)),
        ("attestation", _shown(call.attestation) + _suffix("verstat", call.verstat)),
        ("machine detection", _shown(call.machine_detection)),
        *([("swept at", _when(call.swept_at))] if call.swept else []),
    ]


def _suffix(name: str, value: str | None) -> str:
    return f" ({name} {value})" if value else ""


# --- calls ------------------------------------------------------------------------------------


def _instant(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO 8601 date or datetime; one without a zone is UTC, as Bandwidth's times are."""
    if value is None:
        return None
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or datetime "
            "(e.g. 2026-03-17 or 2026-03-17T14:00:00Z)"
        ) from None
    if instant.tzinfo is None:
        return instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC)


def _batch_size_option(
    default: int, help: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--batch-size N` of the commands that work in batches (sweep, prune, export); `default`
    is the library's own."""
    return click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=default,
        show_default=True,
        metavar="N",
        help=help,
    )


# The filters every read of calls by start time and account takes (calls, stats, export).
_SINCE_OPTION: Final = click.option(
    "--since",
    metavar="DATETIME",
    callback=_instant,
    help="Only calls that started at or after this instant.",
)
_UNTIL_OPTION: Final = click.option(
    "--until", metavar="DATETIME", callback=_instant, help="Only calls that started before it."
)
_ACCOUNT_OPTION: Final = click.option(
    "--account", "account_id", metavar="ID", help="Only calls of this account."
)


@cli.command()
@click.option("--state", type=click.Choice(STATES), help="Only calls in this state.")
@click.option(
    "--live", is_flag=True, help="Only calls ringing or talking now (initiated or answered)."
)
@click.option(
    "--disposition", type=click.Choice(ALL_DISPOSITIONS), help="Only calls that ended so."
)
@_ACCOUNT_OPTION
@_SINCE_OPTION
@_UNTIL_OPTION
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    metavar="N",
    help="At most N calls.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of calls.")
@click.pass_obj
def calls(
    session: _Session,
    state: str | None,
    live: bool,
    disposition: str | None,
    account_id: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List calls, oldest first, with filters.

    Calls are ordered by start time; parents known only through their legs come last.
    --since and --until take ISO 8601 dates or datetimes; one without a zone is UTC.
    """
    if live and state is not None:
        raise click.UsageError("--live and --state cannot be combined; --live is both live states")
    found = session.tracker.calls(
        state=LIVE_STATES if live else state,
        disposition=disposition,
        account_id=account_id,
        started_after=since,
        started_before=until,
        limit=limit + 1,  # one more than shown tells whether the list was cut
    )
    shown = found[:limit]
    if as_json:
        click.echo(json.dumps([_call_json(call) for call in shown], indent=2))
        return

    table = Table()
    for column in ("call id", "state", "disposition", "direction", "from", "to", "account"):
        table.add_column(column, overflow="fold")
    table.add_column("started", overflow="fold")
    table.add_column("duration", justify="right")
    table.add_column("leg of / legs", overflow="fold")
    for call in shown:
        table.add_row(
            *(
                Text(value)
                for value in (
                    call.call_id,
                    call.state,
                    _shown(call.disposition),
                    _shown(call.direction),
                    _shown(call.from_number),
                    _shown(call.to_number),
                    _shown(call.account_id),
                    _when(call.start_time),
                    _clock(call.duration),
                    call.parent_call_id or _count(len(call.legs), "leg"),
                )
            )
        )
    console = _stdout()
    console.print(table)
    if len(found) > limit:
        console.print(f"Only the first {limit} calls are shown; raise --limit to see more.")


# --- events -----------------------------------------------------------------------------------


@cli.command()
@click.option("--call", "call_id", metavar="CALL_ID", help="Only events about this call.")
@click.option(
    "--outcome", type=click.Choice([outcome.value for outcome in Outcome]), help="Only these."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print a JSON array; `body` is the text received (bytes that are not UTF-8 escaped).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Show only the newest N entries.",
)
@click.pass_obj
def events(
    session: _Session, call_id: str | None, outcome: str | None, limit: int, as_json: bool
) -> None:
    """List the event log, oldest first.

    Every body received is there, with its outcome and the reason for it.
    """
    found = session.tracker.events(call_id=call_id, outcome=outcome, limit=limit)
    if as_json:
        click.echo(json.dumps([_event_json(event) for event in found], indent=2))
        return
    table = Table()
    for column in ("#", "received", "outcome", "reason", "call id", "event type", "detail"):
        table.add_column(column, overflow="fold")
    for event in found:
        table.add_row(
            str(event.id),
            _when(event.received_at),
            event.outcome.value,
            Text(_shown(event.reason)),
            Text(_shown(event.call_id)),
            Text(_shown(event.event_type)),
            Text(event.detail),
        )
    _stdout().print(table)


def _event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "received_at": _iso(event.received_at),
        "outcome": event.outcome.value,
        "reason": event.reason,
        "detail": event.detail,
        "call_id": event.call_id,
        "event_type": event.event_type,
        "origin": event.origin,
        "body": event.body.decode("utf-8", "backslashreplace"),
    }


# --- stats ------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--by",
    type=click.Choice(["account", "hour", "day"]),
    help="One row per account, UTC hour or UTC day (default: one row; hour with --plot).",
)
@_SINCE_OPTION
@_UNTIL_OPTION
@_ACCOUNT_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per row.")
@click.option(
    "--plot",
    "plot_path",
    metavar="FILE",
    type=click.Path(dir_okay=False, writable=True),
    help="Also draw volume, ASR and peak concurrency over time into FILE (.png or .svg).",
)
@click.pass_obj
def stats(
    session: _Session,
    by: str | None,
    since: datetime | None,
    until: datetime | None,
    account_id: str | None,
    as_json: bool,
    plot_path: str | None,
) -> None:
    """Attempts, answers, ASR, ACD, ring time, dispositions, causes and peak concurrent calls.

    Counts the calls (transfer legs included) that started in the window, by the UTC hour or day
    of their start or by account; rows without an attempt are left out. ASR = answered /
    attempts; ACD = mean talk time of the answered calls that ended; times in seconds. The
    README ("Statistics") defines every figure. --plot needs matplotlib
    (pip install 'tracker[plot]').
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
        rows = session.tracker.stats(by=by, since=since, until=until, account_id=account_id)
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    if plot_path is not None:
        assert by in ("hour", "day")
        plotting.write_plot(
            rows,
            plot_path,
            bucket_length=timedelta(hours=1) if by == "hour" else timedelta(days=1),
            title=_plot_title(by, since, until, account_id),
        )
    if as_json:
        click.echo(json.dumps([_statistics_json(row) for row in rows], indent=2))
        return
    console = _stdout()
    console.print(_statistics_table(rows, by))
    if plot_path is not None:
        console.print(f"Plot written to {plot_path}.")


def _plot_title(
    by: str, since: datetime | None, until: datetime | None, account_id: str | None
) -> str:
    title = f"Calls per {by}"
    if account_id is not None:
        title += f", account {account_id}"
    if since is not None or until is not None:
        title += f", {_when(since) if since else '...'} to {_when(until) if until else '...'}"
    return title


def _statistics_json(row: CallStatistics) -> dict[str, Any]:
    return {
        "start": _iso(row.start),
        "end": _iso(row.end),
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
    }


def _statistics_table(rows: list[CallStatistics], by: str | None) -> Table:
    dispositions = [
        name for name in ALL_DISPOSITIONS if any(name in row.dispositions for row in rows)
    ]
    table = Table(caption="ASR = answered / attempts; ACD and ring: mean seconds.")
    table.add_column(
        {"hour": "hour (UTC)", "day": "day (UTC)", "account": "account"}.get(by or "", "calls")
    )
    for column in ("attempts", "answered", "ASR", "ACD", "ring", "peak", "live", *dispositions):
        table.add_column(column, justify="right")
    table.add_column("causes", overflow="fold")
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
        )
    return table


def _bucket_label(row: CallStatistics, by: str | None) -> str:
    if by == "hour":
        return row.start.strftime("%Y-%m-%d %H:00") if row.start else "-"
    if by == "day":
        return row.start.strftime("%Y-%m-%d") if row.start else "-"
    if by == "account":
        return row.account_id if row.account_id is not None else "(no account)"
    since = _when(row.start) if row.start else "the first call"
    until = _when(row.end) if row.end else "now"
    return f"{since} to {until}"


# --- follow ---------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--after",
    metavar="CURSOR",
    help="Resume after this cursor (a line's `cursor`); without it, from the log's beginning.",
)
@click.option(
    "--poll",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    metavar="SECONDS",
    help="Pause between reads once caught up.",
)
@click.pass_obj
def follow(session: _Session, after: str | None, poll: float) -> None:
    """Print each applied delivery as one JSON line, as it comes, until Ctrl-C or SIGTERM.

    Each line has the `cursor` to resume after it (`--after`), the log `id`, `received_at`,
    `event_type`, `outcome`, `origin` and the `call` as it is when read (as `show --json`
    prints it, without the leg tree). Every applied delivery is printed at least once after the
    cursor, none skipped, even while many workers commit out of order.
    """
    tracker = session.tracker
    stopped = threading.Event()
    # A signal only asks to stop: the page being read is printed whole, so every cursor printed
    # stays valid; the pause between reads ends at once.
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, lambda *_: stopped.set()) for number in handled}
    try:
        cursor = after
        while not stopped.is_set():
            try:
                page = tracker.changes(after=cursor)
            except ValueError as error:
                raise click.BadParameter(str(error), param_hint="'--after'") from error
            for change in page.changes:
                click.echo(json.dumps(_change_json(change)))
            sys.stdout.flush()
            cursor = page.cursor
            if not page.more:
                stopped.wait(poll)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _change_json(change: Change) -> dict[str, Any]:
    return {
        "cursor": change.cursor,
        "id": change.id,
        "received_at": _iso(change.received_at),
        "event_type": change.event_type,
        "outcome": change.outcome.value,
        "origin": change.origin,
        "call_id": change.call_id,
        "call": None if change.call is None else _call_json(change.call),
    }


# --- redrive ---------------------------------------------------------------------------------


@cli.command()
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
    session: _Session, outcome: str, reason: str | None, call_id: str | None, as_json: bool
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
        click.echo(json.dumps(document))
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
        table.add_row(of.value, Text(_shown(why)), f"{count:,}")
    _stdout().print(table)


# --- rebuild ----------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--apply",
    "write",
    is_flag=True,
    help="Write the recomputed records of the calls that differ.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_obj
def rebuild(session: _Session, write: bool, as_json: bool) -> None:
    """Recompute every call from the event log and list the calls whose record differs.

    On a log that was never pruned none should. With --apply, the recomputed records are
    written, in batches, each by compare-and-set; writing stops if deliveries are applied
    meanwhile (run it with the workers stopped).
    """
    report = session.tracker.rebuild(apply=write)
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2))
        return
    console = _stdout()
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
        shown = ", ".join(str(event_id) for event_id in report.not_reapplied[:10])
        console.print(
            f"{len(report.not_reapplied)} logged deliveries were not applied again by the "
            f"replay (log ids {shown}{', ...' if len(report.not_reapplied) > 10 else ''})."
        )
    if report.applied:
        console.print(f"{report.calls_written} calls written.")
        if report.calls_moved:
            console.print(
                f"{report.calls_moved} calls changed by a delivery meanwhile were left alone."
            )
    if report.stopped:
        console.print(f"Writing stopped: {report.stopped}.")


# --- shared -----------------------------------------------------------------------------------


def _call_json(call: Call) -> dict[str, Any]:
    """Every attribute of a Call as JSON: instants as ISO 8601, durations as float seconds."""
    return {
        "call_id": call.call_id,
        "parent_call_id": call.parent_call_id,
        "legs": list(call.legs),
        "account_id": call.account_id,
        "application_id": call.application_id,
        "direction": call.direction,
        "from_number": call.from_number,
        "to_number": call.to_number,
        "state": call.state,
        "cause": call.cause,
        "disposition": call.disposition,
        "answered": call.answered,
        "start_time": _iso(call.start_time),
        "answer_time": _iso(call.answer_time),
        "end_time": _iso(call.end_time),
        "enqueued_time": _iso(call.enqueued_time),
        "duration": _seconds(call.duration),
        "talk_duration": _seconds(call.talk_duration),
        "ring_duration": _seconds(call.ring_duration),
        "tag": call.tag,
        "error_message": call.error_message,
        "error_id": call.error_id,
        "history": [
            {
                "source": step.source,
                "target": step.target,
                "at": _iso(step.at),
                "event": step.event,
                "event_id": step.event_id,
            }
            for step in call.history
        ],
        "machine_detection": call.machine_detection,
        "attestation": call.attestation,
        "verstat": call.verstat,
        "diversion": None if call.diversion is None else dict(call.diversion),
        "caller_display_name": call.caller_display_name,
        "transfers": [{**asdict(attempt), "at": _iso(attempt.at)} for attempt in call.transfers],
        "swept_at": _iso(call.swept_at),
    }


def _stdout() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _PIPE_WIDTH
    return console


def _iso(instant: datetime | None) -> str | None:
    return None if instant is None else instant.isoformat().replace("+00:00", "Z")


def _when(instant: datetime | None) -> str:
    """An instant for people: UTC to the millisecond, as Bandwidth writes them."""
    if instant is None:
        return "-"
    return instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(duration: timedelta | None) -> float | None:
    return None if duration is None else duration.total_seconds()


def _clock(duration: timedelta | None) -> str:
    if duration is None:
        return "-"
    minutes, milliseconds = divmod(round(duration.total_seconds() * 1000), 60_000)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{milliseconds / 1000:06.3f}"


def _count(number: int, noun: str) -> str:
    if number == 0:
        return ""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _shown(value: str | None) -> str:
    """A text fact for people: `-` when unknown, and an empty string visibly empty."""
    if value is None:
        return "-"
    return value or '""'


# --- sweep ------------------------------------------------------------------------------------

_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT_SECONDS: Final = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def _duration(_ctx: click.Context, _param: click.Parameter, value: str) -> timedelta:
    """`4h`, `90m`, `1h30m`, `2d`, or plain seconds."""
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


@cli.command()
@click.option(
    "--older-than",
    required=True,
    metavar="DURATION",
    callback=_duration,
    help="End live calls last heard of longer ago than this (4h, 90m, 2d, seconds).",
)
@click.option(
    "--now",
    metavar="DATETIME",
    callback=_instant,
    help="Measure ages from this instant instead of the current time.",
)
@_batch_size_option(200, "Calls ended per transaction.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_obj
def sweep(
    session: _Session,
    older_than: timedelta,
    now: datetime | None,
    batch_size: int,
    as_json: bool,
) -> None:
    """End the calls whose terminal event was lost.

    Every call still initiated or answered whose latest known time (start, answer) is older than
    --older-than becomes disconnected with disposition expired, no cause, and a history step
    and log entry of its own. A real terminal event arriving later replaces the sweep entirely.
    Safe to run (from cron, say) while workers apply.
    """
    report = session.tracker.sweep(older_than, now=now, batch_size=batch_size)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "checked": report.checked,
                    "expired": list(report.expired),
                    "older_than": older_than.total_seconds(),
                }
            )
        )
        return
    expired = len(report.expired)
    click.echo(
        f"Expired {expired:,} {'call' if expired == 1 else 'calls'} of {report.checked:,} live "
        f"calls looked at (last heard of more than {_clock(older_than)} ago)."
    )
    for call_id in report.expired:
        click.echo(f"  {call_id}")


# --- prune ------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--before",
    required=True,
    metavar="DATETIME",
    callback=_instant,
    help="Delete the log entries received before this instant.",
)
@_batch_size_option(1000, "Entries looked at, and at most deleted, per transaction.")
@click.option("--json", "as_json", is_flag=True, help="Print the count as one JSON object.")
@click.pass_obj
def prune(session: _Session, before: datetime, batch_size: int, as_json: bool) -> None:
    """Delete old entries from the event log; calls and their history stay.

    --before takes an ISO 8601 date or datetime; one without a zone is UTC. Entries are deleted
    in batches, each its own short transaction, so workers applying meanwhile are not held up.
    A pruned log can no longer rebuild the calls, nor tell a late retry of a pruned delivery
    from a new one: see the README.
    """
    deleted = session.tracker.prune(before, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps({"deleted": deleted, "before": _iso(before)}))
    else:
        entries = "log entry" if deleted == 1 else "log entries"
        click.echo(f"Deleted {deleted:,} {entries} received before {_when(before)}.")


# --- export -----------------------------------------------------------------------------------


@cli.command()
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
    callback=_instant,
    help="Only calls (conversations: original calls) that started at or after this instant.",
)
@_UNTIL_OPTION
@_ACCOUNT_OPTION
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    metavar="FILE",
    help="Write to FILE (replaced only once the export is whole); stdout when left out.",
)
@_batch_size_option(1000, "Calls read per statement.")
@click.pass_obj
def export(
    session: _Session,
    file_format: str,
    per: str,
    since: datetime | None,
    until: datetime | None,
    account_id: str | None,
    output: str | None,
    batch_size: int,
) -> None:
    """Write call detail records, oldest start first.

    One row per leg, or with --per conversation one per original call with its transfer legs
    folded in (which leg answered, the legs' talk time, transfer attempts, legs). --since and
    --until take ISO 8601 dates or datetimes; one without a zone is UTC. Placeholders (parents
    known only through their legs) have no start time and come last, only when neither bound is
    given. The columns are in the README. Memory stays bounded whatever the number of calls.
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
            per=per, since=since, until=until, account_id=account_id, batch_size=batch_size
        )
    except ValueError as error:  # checked before any row is read
        raise click.UsageError(str(error)) from error
    names = columns(per)
    if output is None:
        _export_to_stdout(rows, names, file_format)
        return
    target = Path(output)
    partial = target.with_name(f".{target.name}.partial")
    try:
        if file_format == "parquet":
            written = write_parquet(rows, names, partial)
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


# --- serve ------------------------------------------------------------------------------------

CREDENTIALS_VARIABLE: Final = "TRACKER_CALLBACK_CREDENTIALS"


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--credentials-file",
    type=click.File("r", encoding="utf-8"),
    help=f"One user:password a line (# starts a comment); instead of ${CREDENTIALS_VARIABLE}, "
    "which holds user:password pairs separated by commas. Every pair is accepted, several of "
    "one user too (a password being rotated).",
)
@click.option(
    "--max-body-bytes",
    default=MAX_BODY_BYTES,
    show_default=True,
    type=click.IntRange(min=1),
    help="A larger body is answered 413, unread (and the tracker parses no larger one).",
)
@click.option(
    "--max-queue",
    default=MAX_QUEUE,
    show_default=True,
    type=click.IntRange(min=1),
    help="Deliveries waiting to be written, at most; past it a request is answered 503 at once.",
)
@click.option(
    "--body-timeout",
    default=BODY_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="A body not complete in this time is answered 408.",
)
@click.pass_obj
def serve(
    session: _Session,
    host: str,
    port: int,
    credentials_file: IO[str] | None,
    max_body_bytes: int,
    max_queue: int,
    body_timeout: float,
) -> None:
    """Serve the webhook endpoint Bandwidth calls: every POST is a callback, answered 204 once
    it is committed; GET /healthz and /metrics for the operator. Stops gracefully on SIGTERM."""
    try:
        import uvicorn

        from tracker.asgi import create_app
    except ImportError as error:
        raise click.UsageError(
            f"serving needs the serve extra ({error}); pip install 'tracker[serve]'"
        ) from error
    if credentials_file is not None:
        credentials = _credentials(credentials_file.read().splitlines(), credentials_file.name)
    else:
        variable = os.environ.get(CREDENTIALS_VARIABLE, "")
        credentials = _credentials(variable.split(","), f"${CREDENTIALS_VARIABLE}")
    if not credentials and not _is_loopback(host):
        raise click.UsageError(
            f"no credentials, so {host} would take callbacks from anyone; set "
            f"${CREDENTIALS_VARIABLE} or --credentials-file, or listen on a loopback address"
        )
    session.max_body_bytes = max_body_bytes
    tracker = session.tracker
    tracker.check()
    app = create_app(
        tracker, credentials=credentials, body_timeout=body_timeout, max_queue=max_queue
    )
    users = len({user for user, _password in credentials})
    guard = f"Basic authentication, {_count(users, 'user')}"
    if users < len(credentials):
        guard += f" ({_count(len(credentials), 'password')})"
    if not credentials:
        guard = "WITHOUT authentication (loopback only)"
    config = uvicorn.Config(
        app, host=host, port=port, access_log=False, server_header=False, lifespan="on"
    )
    listening = f"tracker: serving on http://{host}:{port} into {session.shown_url}, {guard}"

    class Server(uvicorn.Server):
        """Says where it listens once the socket is bound, not before: a taken port fails
        without a line claiming otherwise."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                click.echo(listening, err=True)

        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            """SIGTERM and SIGINT stop the server gracefully, and a graceful stop exits 0;
            uvicorn's own version raises the signal again once stopped, so the process would
            die by it."""
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {number: signal.signal(number, self.handle_exit) for number in handled}
            try:
                yield
            finally:
                for number, handler in previous.items():
                    signal.signal(number, handler)

    Server(config).run()


def _credentials(entries: Iterable[str], source: str) -> list[tuple[str, str]]:
    """(user, password) pairs, from `user:password` entries; blank entries and `#` comments are
    skipped. One user may have several (a password being rotated), and each is accepted. A bad
    entry is named by its position, never by its text: it holds a secret."""
    pairs: list[tuple[str, str]] = []
    for number, entry in enumerate(entries, start=1):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        user, colon, password = entry.partition(":")
        if not colon or not user or not password:
            raise click.UsageError(
                f"entry {number} of {source} is not user:password (both parts non-empty)"
            )
        pairs.append((user, password))
    return pairs


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main() -> None:
    """The `tracker` console script."""
    cli.main(prog_name="tracker")


if __name__ == "__main__":
    main()
