"""How commands print: strict JSON for scripts, and for people a console, instants, durations
and facts written the same way by every command."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, Final

import click
from rich.console import Console

from tracker import Call, instants

# A pipe has no width, and rich would otherwise cut tables at its default of 80 columns; tables
# take only the width they need, so a wide page loses nothing.
_PIPE_WIDTH: Final = 1000


def echo_json(document: Any, *, indent: int | None = None) -> None:
    """Print `document` as JSON (RFC 8259), which has no NaN or Infinity. The tracker refuses
    them in bodies, but a database written by an older release may hold one (in a call's
    diversion, say): such a number is printed as null, so every reader can parse the output."""
    try:
        text = json.dumps(document, indent=indent, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(document), indent=indent, allow_nan=False)
    click.echo(text)


def _finite(value: Any) -> Any:
    """`value` with every float that is NaN or infinite, at any depth, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def call_json(call: Call) -> dict[str, Any]:
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
        "start_time": iso(call.start_time),
        "answer_time": iso(call.answer_time),
        "end_time": iso(call.end_time),
        "enqueued_time": iso(call.enqueued_time),
        "duration": seconds(call.duration),
        "talk_duration": seconds(call.talk_duration),
        "ring_duration": seconds(call.ring_duration),
        "tag": call.tag,
        "error_message": call.error_message,
        "error_id": call.error_id,
        "history": [
            {
                "source": step.source,
                "target": step.target,
                "at": iso(step.at),
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
        "transfers": [{**asdict(attempt), "at": iso(attempt.at)} for attempt in call.transfers],
        "swept_at": iso(call.swept_at),
        "end_source": call.end_source,
    }


def stdout_console() -> Console:
    """A console on stdout for tables and trees, as wide as a pipe needs."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _PIPE_WIDTH
    return console


def iso(instant: datetime | None) -> str | None:
    """An instant for JSON: ISO 8601, UTC written `Z`."""
    return None if instant is None else instants.text(instant)


def when(instant: datetime | None) -> str:
    """An instant for people: UTC to the millisecond, as Bandwidth writes them."""
    if instant is None:
        return "-"
    return instants.text(instant, "milliseconds")


def seconds(duration: timedelta | None) -> float | None:
    return None if duration is None else duration.total_seconds()


def clock(duration: timedelta | None) -> str:
    """A duration for people: hours:minutes:seconds to the millisecond."""
    if duration is None:
        return "-"
    minutes, milliseconds = divmod(round(duration.total_seconds() * 1000), 60_000)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{milliseconds / 1000:06.3f}"


def counted(number: int, noun: str) -> str:
    """`1 leg`, `3 legs`, or nothing for none."""
    if number == 0:
        return ""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def shown(value: str | None) -> str:
    """A text fact for people: `-` when unknown, and an empty string visibly empty."""
    if value is None:
        return "-"
    return value or '""'
