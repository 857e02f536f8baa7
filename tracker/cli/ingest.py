"""`tracker ingest`: callback bodies applied from JSON Lines files, streamed in chunks."""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import IO, Any, Final

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

from tracker import Outcome, Result, StorageError
from tracker.cli.output import echo_json, stdout_console
from tracker.cli.session import Session

# Bodies applied per transaction: one commit per chunk instead of per body, while a crash loses
# at most one chunk's work and memory stays bounded whatever the size of the stream.
CHUNK_SIZE: Final = 500


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


@click.command()
@click.argument(
    "files",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object.")
@click.pass_obj
def ingest(session: Session, files: tuple[str, ...], as_json: bool) -> None:
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
        echo_json(tally.as_json())
    else:
        stdout_console().print(_tally_table(tally, files))


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
