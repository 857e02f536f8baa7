"""`tracker follow`: each applied delivery printed as one JSON line, as it comes."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click

from tracker import Change
from tracker.cli.output import call_json, echo_json, iso
from tracker.cli.session import Session


@click.command()
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
def follow(session: Session, after: str | None, poll: float) -> None:
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
                echo_json(_change_json(change))
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
        "received_at": iso(change.received_at),
        "event_type": change.event_type,
        "outcome": change.outcome.value,
        "origin": change.origin,
        "call_id": change.call_id,
        "call": None if change.call is None else call_json(change.call),
    }
