"""`tracker show`, `tracker calls` and `tracker events`: calls and the event log, read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from tracker import ALL_DISPOSITIONS, LIVE_STATES, STATES, Call, Event, Outcome, Tracker
from tracker.cli.options import ACCOUNT_OPTION, SINCE_OPTION, UNTIL_OPTION
from tracker.cli.output import (
    call_json,
    clock,
    counted,
    echo_json,
    iso,
    seconds,
    shown,
    stdout_console,
    when,
)
from tracker.cli.session import EXIT_NOT_FOUND, Session, fail

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
        "duration": seconds(call.duration),
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
        label.append(f"  {clock(call.duration)}")
    if call.to_number is not None:
        label.append(f"  to {call.to_number}", style="dim")
    return label


@click.command()
@click.argument("call_id")
@click.option("--json", "as_json", is_flag=True, help="Print the call as one JSON object.")
@click.pass_obj
def show(session: Session, call_id: str, as_json: bool) -> None:
    """Show one call, its legs and its history.

    The legs are drawn as a tree: the legs a transfer created, and theirs in turn.
    """
    tracker = session.tracker
    call = tracker.get_call(call_id)
    if call is None:
        fail(f"no call {call_id} in {session.shown_url}", EXIT_NOT_FOUND)
    tree = _leg_tree(tracker, call)
    if as_json:
        echo_json({**call_json(call), "leg_tree": _leg_tree_json(tree)}, indent=2)
        return

    console = stdout_console()
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
                when(attempt.at),
                shown(attempt.transfer_to),
                shown(attempt.transfer_caller_id),
                f"{attempt.disposition} (cause {attempt.cause})",
                shown(attempt.error_message),
            )
        console.print(attempts)
        console.print()
    history = Table(title=Text("History"), title_justify="left")
    for column in ("transition", "at", "event", "event #"):
        history.add_column(column)
    for step in call.history:
        history.add_row(
            f"{step.source} -> {step.target}", when(step.at), step.event, str(step.event_id)
        )
    console.print(history)


def _facts(call: Call) -> list[tuple[str, str]]:
    cause = call.cause or ""
    return [
        ("state", call.state),
        ("disposition", shown(call.disposition) + (f" (cause {cause})" if cause else "")),
        ("answered", "yes" if call.answered else "no"),
        ("direction", shown(call.direction)),
        ("from", shown(call.from_number)),
        ("to", shown(call.to_number)),
        ("account", shown(call.account_id)),
        ("application", shown(call.application_id)),
        ("enqueued", when(call.enqueued_time)),
        ("started", when(call.start_time)),
        ("answered at", when(call.answer_time)),
        ("ended", when(call.end_time)),
        ("end source", shown(call.end_source)),
        ("duration", clock(call.duration)),
        ("ringing", clock(call.ring_duration)),
        ("talking", clock(call.talk_duration)),
        ("tag", shown(call.tag)),
        ("error", shown(call.error_message)),
        ("error id", shown(call.error_id)),
        ("caller name", shown(call.caller_display_name)),
        ("attestation", shown(call.attestation) + _suffix("verstat", call.verstat)),
        ("machine detection", shown(call.machine_detection)),
        *([("swept at", when(call.swept_at))] if call.swept else []),
    ]


def _suffix(name: str, value: str | None) -> str:
    return f" ({name} {value})" if value else ""


# --- calls ------------------------------------------------------------------------------------


@click.command()
@click.option("--state", type=click.Choice(STATES), help="Only calls in this state.")
@click.option(
    "--live", is_flag=True, help="Only calls ringing or talking now (initiated or answered)."
)
@click.option(
    "--disposition", type=click.Choice(ALL_DISPOSITIONS), help="Only calls that ended so."
)
@ACCOUNT_OPTION
@SINCE_OPTION
@UNTIL_OPTION
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
    session: Session,
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
    page = found[:limit]
    if as_json:
        echo_json([call_json(call) for call in page], indent=2)
        return

    table = Table()
    for column in ("call id", "state", "disposition", "direction", "from", "to", "account"):
        table.add_column(column, overflow="fold")
    table.add_column("started", overflow="fold")
    table.add_column("duration", justify="right")
    table.add_column("leg of / legs", overflow="fold")
    for call in page:
        table.add_row(
            *(
                Text(value)
                for value in (
                    call.call_id,
                    call.state,
                    shown(call.disposition),
                    shown(call.direction),
                    shown(call.from_number),
                    shown(call.to_number),
                    shown(call.account_id),
                    when(call.start_time),
                    clock(call.duration),
                    call.parent_call_id or counted(len(call.legs), "leg"),
                )
            )
        )
    console = stdout_console()
    console.print(table)
    if len(found) > limit:
        console.print(f"Only the first {limit} calls are shown; raise --limit to see more.")


# --- events -----------------------------------------------------------------------------------


@click.command()
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
    session: Session, call_id: str | None, outcome: str | None, limit: int, as_json: bool
) -> None:
    """List the event log, oldest first.

    Every body received is there, with its outcome and the reason for it.
    """
    found = session.tracker.events(call_id=call_id, outcome=outcome, limit=limit)
    if as_json:
        echo_json([_event_json(event) for event in found], indent=2)
        return
    table = Table()
    for column in ("#", "received", "outcome", "reason", "call id", "event type", "detail"):
        table.add_column(column, overflow="fold")
    for event in found:
        table.add_row(
            str(event.id),
            when(event.received_at),
            event.outcome.value,
            Text(shown(event.reason)),
            Text(shown(event.call_id)),
            Text(shown(event.event_type)),
            Text(event.detail),
        )
    stdout_console().print(table)


def _event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "received_at": iso(event.received_at),
        "outcome": event.outcome.value,
        "reason": event.reason,
        "detail": event.detail,
        "call_id": event.call_id,
        "event_type": event.event_type,
        "origin": event.origin,
        "body": event.body.decode("utf-8", "backslashreplace"),
    }
