"""Valid Bandwidth callbacks for tests: single bodies, whole conversations, realistic streams.

A host application tests its integration with these, and so does this project (its tests, its
benchmarks and `samples/callbacks.jsonl` are built with nothing else):

    from tracker.testing import conversation, relayed, shuffled, sqlite_tracker

    talk = conversation("inbound", legs=3)           # a simultaneous ring, the first leg answers
    with sqlite_tracker(tmp_path) as tracker:
        tracker.apply_many(shuffled(talk.encoded()))
        assert talk.expected[talk.call_id].compare(tracker.get_call(talk.call_id)) == {}
        assert tracker.apply(relayed(talk.bodies[-1])).outcome == "duplicate"

- Single bodies (`initiate`, `answer`, `transfer_answer`, `transfer_complete`,
  `machine_detection_complete`, `disconnect`, `transfer_disconnect`, `untracked`) are plain
  `dict`s in Bandwidth's spelling with defaults for everything a test is not about; keyword
  arguments override or add fields in Bandwidth's spelling, and `...` removes one.
- `conversation` builds every callback of one call and its transfer legs, in the order Bandwidth
  sends them, with the ids, the times and the facts the tracker should end up with.
- `relayed` re-serializes a body as a relay might (the tracker reads it as the same delivery);
  `shuffled` and `with_retries` reorder and repeat deliveries.
- `Stream`, `realistic_bodies`, `terminal_bodies` and `call_trees` draw seeded, realistic
  traffic in bulk (the project's benchmarks measure these bytes).
- `FakeBandwidth` is Bandwidth's Voice API faked by a real HTTP server on loopback, for
  `tracker.bandwidth` (the sweep's resolver, reconcile) to talk to through the real SDK: call
  states stored with `put`, built by `call_state` (or `call_state_from` a callback body a test
  withholds), the call list paged with `Link` headers, Basic and OAuth2 credentials checked,
  faults on demand (`fail`, `slow`, `down`), every request logged as a `FakeRequest`.
- `sqlite_tracker(directory)` opens a migrated tracker on a temporary SQLite file; enable this
  module as a pytest plugin (`pytest_plugins = ["tracker.testing"]` in a `conftest.py`) to get
  it as the `sqlite_tracker` fixture. pytest is needed only then: importing this module does not
  import it.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from tracker import Call, Tracker
from tracker._bodies import (
    ACCOUNT,
    APPLICATION,
    BASE_TIME,
    CALLED,
    CALLER,
    TRANSFER_CALLER_ID,
    TRANSFER_TO,
    answer,
    call_url,
    disconnect,
    disconnect_between,
    encode,
    initiate,
    live_events_of,
    machine_detection_complete,
    new_call_id,
    stamp,
    transfer_answer,
    transfer_complete,
    transfer_disconnect,
    transfer_disconnect_between,
    untracked,
)
from tracker._fake_bandwidth import FakeBandwidth, FakeRequest, call_state, call_state_from
from tracker._traffic import (
    ACCOUNTS,
    APPLICATIONS,
    EPOCH,
    Stream,
    at,
    call_trees,
    realistic_bodies,
    terminal_bodies,
    with_retries,
)
from tracker.lifecycle import disposition_of

if TYPE_CHECKING:
    import pytest

__all__ = [
    "ACCOUNT",
    "ACCOUNTS",
    "APPLICATION",
    "APPLICATIONS",
    "BASE_TIME",
    "CALLED",
    "CALLER",
    "EPOCH",
    "RELAY_CHANGES",
    "TRANSFER_CALLER_ID",
    "TRANSFER_TO",
    "Conversation",
    "ExpectedCall",
    "FakeBandwidth",
    "FakeRequest",
    "Stream",
    "answer",
    "at",
    "call_state",
    "call_state_from",
    "call_trees",
    "call_url",
    "conversation",
    "disconnect",
    "disconnect_between",
    "encode",
    "initiate",
    "live_events_of",
    "machine_detection_complete",
    "new_call_id",
    "realistic_bodies",
    "relayed",
    "relayed_variants",
    "shuffled",
    "sqlite_tracker",
    "stamp",
    "terminal_bodies",
    "transfer_answer",
    "transfer_complete",
    "transfer_disconnect",
    "transfer_disconnect_between",
    "untracked",
    "with_retries",
]

T = TypeVar("T")

# --- relays and order -------------------------------------------------------------------------

RELAY_CHANGES: Final = ("key_order", "whitespace", "nulls", "instants")
"""What `relayed` may change in a body, each leaving it the same delivery for the tracker."""

_INSTANTS: Final = ("eventTime", "enqueuedTime", "startTime", "answerTime", "endTime")
# Absent keys a relay may write as an explicit null, at the top and one level down.
_NULLS: Final = ("tag", "enqueuedTime")
_NESTED_NULLS: Final = {
    "stirShaken": "originatingId",
    "machineDetectionResult": "duration",
    "diversion": "reason",
}
_ELSEWHERE: Final = timezone(timedelta(hours=-5))
_ZONES: Final = (UTC, _ELSEWHERE, timezone(timedelta(hours=5, minutes=30)))


def relayed(body: Mapping[str, Any], *changes: str, seed: int | None = None) -> bytes:
    """`body` as a relay that parses and writes JSON again might deliver it: the `changes`
    named (by default every one of `RELAY_CHANGES`): keys in reverse order at every depth,
    spaces between tokens, an explicit `null` for absent optional keys at the top and in nested
    objects, every instant spelled at another UTC offset with microseconds. With a `seed`, each
    change is drawn instead: keys shuffled at every depth, one of several indentations and
    spacings, explicit nulls added for absent keys or left out at every depth, instants at one
    of several offsets. The tracker reads any of these as the same delivery as `encode(body)`:
    a `duplicate` once one was applied."""
    unknown = set(changes) - set(RELAY_CHANGES)
    if unknown:
        raise ValueError(f"unknown relay changes {sorted(unknown)}: name some of {RELAY_CHANGES}")
    wanted = set(changes or RELAY_CHANGES)
    draw = None if seed is None else random.Random(seed)
    document: dict[str, Any] = json.loads(encode(body))
    if "instants" in wanted:
        zone = _ELSEWHERE if draw is None else draw.choice(_ZONES)
        for key in _INSTANTS:
            if isinstance(document.get(key), str):
                instant = datetime.fromisoformat(document[key]).astimezone(zone)
                document[key] = instant.isoformat(timespec="microseconds")
    if "nulls" in wanted:
        if draw is not None:
            document = _drawn_nulls(document, draw)
        for key in _NULLS:
            if draw is None or draw.random() < 0.5:
                document.setdefault(key, None)
        for key, inner in _NESTED_NULLS.items():
            if isinstance(document.get(key), dict):
                document[key].setdefault(inner, None)
    if "key_order" in wanted:
        document = _reordered(document, draw)
    if "whitespace" not in wanted:
        return json.dumps(document, separators=(",", ":")).encode()
    if draw is None:
        return f" {json.dumps(document, separators=(' , ', ' : '))} ".encode()
    indent = draw.choice([None, 1, 2, 4, "\t"])
    separators = draw.choice([(",", ":"), (", ", ": "), (" , ", " : ")])
    text = json.dumps(document, indent=indent, separators=separators)
    return f"{' ' * draw.randint(0, 2)}{text}{' ' * draw.randint(0, 2)}".encode()


def relayed_variants(body: Mapping[str, Any]) -> dict[str, bytes]:
    """`relayed(body, change)` for each of `RELAY_CHANGES`, and every change at once under
    `"all"`: each a `duplicate` of `body` once `body` was applied."""
    variants = {change: relayed(body, change) for change in RELAY_CHANGES}
    variants["all"] = relayed(body)
    return variants


def _reordered(value: Any, draw: random.Random | None) -> Any:
    """`value` with the keys of every object reversed, or shuffled by `draw`."""
    if isinstance(value, list):
        return [_reordered(item, draw) for item in value]
    if not isinstance(value, dict):
        return value
    keys = list(reversed(value))
    if draw is not None:
        draw.shuffle(keys)
    return {key: _reordered(value[key], draw) for key in keys}


def _drawn_nulls(value: Any, draw: random.Random) -> Any:
    """`value` with, in each object, an explicit null added for an absent key or the explicit
    nulls left out (arrays keep their items, nulls included)."""
    if isinstance(value, list):
        return [_drawn_nulls(item, draw) for item in value]
    if not isinstance(value, dict):
        return value
    found = {key: _drawn_nulls(item, draw) for key, item in value.items()}
    if draw.random() < 0.5:
        found = {key: item for key, item in found.items() if item is not None}
    if draw.random() < 0.5:
        found.setdefault(f"absent{draw.randrange(1000)}", None)
    return found


def shuffled(deliveries: Sequence[T], seed: int = 0) -> list[T]:
    """`deliveries` in a random order drawn from `seed`: the tracker's records must not depend
    on the order callbacks arrive in."""
    return random.Random(seed).sample(list(deliveries), len(deliveries))


# --- conversations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedCall:
    """What the tracker should know of one call once a conversation's bodies were applied, in
    any order and any number of times: the attributes of `tracker.Call` they name."""

    call_id: str
    parent_call_id: str | None
    legs: tuple[str, ...]
    direction: str | None
    state: str
    cause: str | None
    disposition: str | None
    start_time: datetime | None
    answer_time: datetime | None
    end_time: datetime | None
    machine_detection: str | None

    def compare(self, call: Call | None) -> dict[str, tuple[Any, Any]]:
        """The attributes where `call` differs from this, as `{name: (expected, actual)}`:
        empty when the tracker agrees (`assert expected.compare(call) == {}`)."""
        if call is None:
            return {"call_id": (self.call_id, None)}
        found: dict[str, tuple[Any, Any]] = {}
        for field in fields(self):
            wanted, actual = getattr(self, field.name), getattr(call, field.name)
            if wanted != actual:
                found[field.name] = (wanted, actual)
        return found


@dataclass(frozen=True)
class Conversation:
    """Every callback of one call and its transfer legs, in the order Bandwidth sends them,
    with what a test reads back: the ids, the times, and the facts the tracker should hold."""

    call_id: str
    """The original call."""
    leg_ids: tuple[str, ...]
    """Its transfer legs, in the order they were dialled."""
    answering_leg_id: str | None
    """The leg that answered; None when none did (or there were no legs)."""
    start_time: datetime
    """When the original call started."""
    answer_time: datetime | None
    """When the original call was answered; None when it never was."""
    end_time: datetime | None
    """When the original call ended; None while it is still ringing or talking."""
    bodies: tuple[dict[str, Any], ...]
    """The callbacks, in arrival order."""
    expected: Mapping[str, ExpectedCall]
    """For the original call and each leg seen, the facts the tracker should end up with."""

    def encoded(self) -> list[bytes]:
        """The bodies as Bandwidth sends them (`encode`), in arrival order."""
        return [encode(body) for body in self.bodies]


def conversation(
    direction: Literal["inbound", "outbound"] = "inbound",
    *,
    answered: bool = True,
    cause: str | None = None,
    legs: int = 0,
    answering_leg: int | None = 0,
    machine_detection: str | None = None,
    ended: bool = True,
    start: datetime = BASE_TIME,
    call_id: str | None = None,
    leg_ids: Sequence[str] | None = None,
    leg_numbers: Sequence[str] | None = None,
    account: str = ACCOUNT,
    application: str = APPLICATION,
    caller: str = CALLER,
    called: str = CALLED,
) -> Conversation:
    """Every callback of one call, as Bandwidth sends them.

    An inbound call gets its `initiate`, an answered outbound call its `answer` (and, given
    `machine_detection`, the detection's result four seconds later). The call rings 3 seconds,
    then talks 60 (never answered: it ends after 20 seconds with `cause`, by default `cancel`
    inbound and `timeout` outbound). With `legs`, ten seconds after the answer the call is
    transferred to that many numbers ringing at once: the leg `answering_leg` (from 0) answers
    after 2 seconds (`transferAnswer`), the others are cancelled, the answering leg talks 30
    seconds; with `answering_leg=None` every leg times out after 30 seconds. Each transfer ends
    with a `transferComplete` on the call, which hangs up 5 seconds after its last leg.
    `call_id`, `leg_ids` and the numbers the legs dial (`leg_numbers`) are drawn when not given.
    `ended=False` stops at the call's live moment: an inbound call ringing, an outbound one
    talking, a transfer bridged (its cancelled legs already ended) or ringing.
    """
    if legs and not answered:
        raise ValueError("a transfer runs on an answered call: pass answered=True, or legs=0")
    if legs and answering_leg is not None and not 0 <= answering_leg < legs:
        raise ValueError(f"answering_leg {answering_leg} is not one of the {legs} legs")
    if machine_detection is not None and (direction != "outbound" or not answered):
        raise ValueError("machine detection runs on an answered outbound call")
    if direction == "outbound" and not answered and not ended:
        raise ValueError(
            "Bandwidth sends an outbound call no callback before it is answered or ends: "
            "pass answered=True or ended=True"
        )
    call_id = call_id or new_call_id()
    leg_ids = tuple(leg_ids) if leg_ids is not None else tuple(new_call_id() for _ in range(legs))
    if len(leg_ids) != legs:
        raise ValueError(f"{len(leg_ids)} leg ids for {legs} legs: give one id per leg")
    numbers = tuple(leg_numbers or (f"+1555666{index:04d}" for index in range(legs)))
    if len(numbers) != legs:
        raise ValueError(f"{len(numbers)} leg numbers for {legs} legs: give one per leg")
    if cause is None:
        cause = "hangup" if answered else ("cancel" if direction == "inbound" else "timeout")
    answer_at = start + timedelta(seconds=3) if answered else None
    own: dict[str, Any] = {
        "accountId": account,
        "applicationId": application,
        "from": caller,
        "to": called,
        "direction": direction,
        "callUrl": call_url(call_id, account),
    }
    said = own | ({"answerTime": stamp(answer_at)} if answer_at else {})
    arrivals: list[tuple[datetime, dict[str, Any]]] = []
    if direction == "inbound":
        arrivals.append((start, initiate(call_id, start=start, **own)))
    elif answer_at is not None:
        arrivals.append((answer_at, answer(call_id, start=start, **said)))
        if machine_detection is not None:
            done = answer_at + timedelta(seconds=4)
            body = machine_detection_complete(
                call_id, start=start, result=machine_detection, **said, eventTime=stamp(done)
            )
            arrivals.append((done, body))
    now: datetime = answer_at + timedelta(seconds=5) if answer_at else start + timedelta(seconds=1)
    end = answer_at + timedelta(seconds=60) if answer_at else start + timedelta(seconds=20)
    winner: str | None = None
    if legs and answer_at is not None:
        transfer_start = answer_at + timedelta(seconds=10)
        leg_answer = transfer_start + timedelta(seconds=2)
        winner = None if answering_leg is None else leg_ids[answering_leg]
        last = (
            leg_answer + timedelta(seconds=30) if winner else transfer_start + timedelta(seconds=30)
        )
        for index, leg_id in enumerate(leg_ids):
            leg: dict[str, Any] = {
                "accountId": account,
                "applicationId": application,
                "from": caller,
                "to": called,
                "callUrl": call_url(leg_id, account),
                "transferCallerId": called if direction == "inbound" else caller,
                "transferTo": numbers[index],
            }
            if leg_id == winner:
                arrivals.append(
                    (leg_answer, transfer_answer(call_id, leg_id, start=transfer_start, **leg))
                )
            leg_answered = leg_answer if leg_id == winner else None
            leg_end = last if winner is None or leg_id == winner else leg_answer
            leg_cause = "hangup" if leg_id == winner else ("cancel" if winner else "timeout")
            ended_leg = transfer_disconnect_between(
                call_id, transfer_start, leg_end, leg_id, answered=leg_answered, cause=leg_cause,
                **leg | {"accountId": ...},
            )  # fmt: skip
            arrivals.append((leg_end + timedelta(milliseconds=10 + index), ended_leg))
        completed = last + timedelta(milliseconds=40)
        transfer = transfer_complete(
            call_id,
            start=start,
            at=completed,
            cause="hangup" if winner else "timeout",
            **said | {"transferTo": numbers[leg_ids.index(winner or leg_ids[0])]},
        )
        arrivals.append((completed, transfer))
        now = leg_answer + timedelta(seconds=1) if winner else transfer_start + timedelta(seconds=1)
        end = last + timedelta(seconds=5)
    arrivals.append(
        (
            end + timedelta(milliseconds=10),
            disconnect_between(start, end, call_id, answered=answer_at, cause=cause, **own),
        )
    )
    if not ended:
        arrivals = [(instant, body) for instant, body in arrivals if instant <= now]
    arrivals.sort(key=lambda arrival: arrival[0])
    bodies = tuple(body for _instant, body in arrivals)
    return Conversation(
        call_id=call_id,
        leg_ids=leg_ids,
        answering_leg_id=winner,
        start_time=start,
        answer_time=answer_at,
        end_time=end if ended else None,
        bodies=bodies,
        expected=_expected(bodies),
    )


_TERMINAL: Final = ("disconnect", "transferDisconnect")


def _expected(bodies: Sequence[Mapping[str, Any]]) -> dict[str, ExpectedCall]:
    """The facts a set of mutually consistent bodies tell of each call they name."""
    told: dict[str, dict[str, Any]] = {}
    for body in bodies:
        facts = told.setdefault(body["callId"], {})
        parent = body.get("parentCallId")
        if parent is not None:
            facts["parent_call_id"] = parent
            told.setdefault(parent, {})
        for key, name in (("direction", "direction"), ("startTime", "start_time")):
            if key in body:
                facts[name] = body[key]
        if "answerTime" in body:
            facts["answer_time"] = body["answerTime"]
        if body["eventType"] in _TERMINAL:
            facts |= {"cause": body["cause"], "end_time": body["endTime"]}
        if "machineDetectionResult" in body:
            facts["machine_detection"] = body["machineDetectionResult"]["value"]
    expected: dict[str, ExpectedCall] = {}
    for call_id, facts in told.items():
        legs = sorted(
            (told[leg]["start_time"], leg)
            for leg in told
            if told[leg].get("parent_call_id") == call_id
        )
        cause = facts.get("cause")
        expected[call_id] = ExpectedCall(
            call_id=call_id,
            parent_call_id=facts.get("parent_call_id"),
            legs=tuple(leg for _start, leg in legs),
            direction=facts.get("direction"),
            state="disconnected"
            if cause
            else "answered"
            if "answer_time" in facts
            else "initiated",
            cause=cause,
            disposition=None if cause is None else disposition_of(cause),
            start_time=_instant(facts.get("start_time")),
            answer_time=_instant(facts.get("answer_time")),
            end_time=_instant(facts.get("end_time")),
            machine_detection=facts.get("machine_detection"),
        )
    return expected


def _instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


# --- a tracker for a test ---------------------------------------------------------------------


@contextmanager
def sqlite_tracker(
    directory: str | os.PathLike[str], name: str = "tracker.db"
) -> Iterator[Tracker]:
    """A `Tracker` on a migrated, empty SQLite database `name` in `directory` (pytest's
    `tmp_path`, a `tempfile.TemporaryDirectory()`), closed when the block ends."""
    with Tracker(f"sqlite:///{Path(directory) / name}") as tracker:
        tracker.upgrade()
        yield tracker


def pytest_configure(config: pytest.Config) -> None:
    """pytest's hook, run when a suite enables this module as a plugin: adds the
    `sqlite_tracker` fixture (a tracker on a migrated, empty SQLite database of the test's own).
    pytest is imported here, so the library never needs it."""
    name = "tracker.testing.fixtures"
    if not config.pluginmanager.has_plugin(name):
        config.pluginmanager.register(_fixtures(), name)


def _fixtures() -> object:
    import pytest

    opened = sqlite_tracker

    class Fixtures:
        @pytest.fixture
        def sqlite_tracker(self, tmp_path: Path) -> Iterator[Tracker]:
            """A tracker on a migrated, empty SQLite database of this test's own."""
            with opened(tmp_path) as tracker:
                yield tracker

    return Fixtures()
