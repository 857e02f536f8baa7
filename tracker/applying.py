"""Applying a batch of deliveries inside one transaction: decide each in order, write once.

Each delivery is decided (by `lifecycle.decide`) against the calls as the earlier deliveries of
the batch left them, kept in memory; the rows are then written in a handful of statements
whatever the batch size: one per table, plus one compare-and-set UPDATE per call that existed
before. `apply` is a batch of one, so both paths are the same code and give the same outcomes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from tracker import lifecycle, parsing, storage
from tracker.lifecycle import CallRecord, Decision, TransitionTaken
from tracker.parsing import Delivery, Event, Unreadable, Untracked
from tracker.provider import CALL_STATE, PROVIDER_ORIGIN, ProviderCall
from tracker.records import (
    MAX_DETAIL_LENGTH,
    IgnoredReason,
    Outcome,
    Result,
    TransferAttempt,
    Transition,
    clipped,
)

if TYPE_CHECKING:
    from tracker.writing import Writer


def apply_bodies(
    writer: Writer,
    bodies: Iterable[bytes | str | object],
    max_body_bytes: int,
    origin: str | None = None,
) -> list[Result]:
    """Read `bodies` (`parsing.read`, a body over `max_body_bytes` unread) and apply them in
    order in one transaction of `writer`, run again when it loses a race: the path of
    `Tracker.apply_many`, of a re-drive and of a rebuild's replay, and of the provider's answers
    (`origin` `provider`: read as Bandwidth's call state, applied by `lifecycle.provide`)."""
    read = parsing.read_provider_answer if origin == PROVIDER_ORIGIN else parsing.read
    deliveries = [read(body, max_body_bytes) for body in bodies]
    received_at = datetime.now(UTC)
    return writer.run(
        lambda connection: apply_deliveries(
            connection, deliveries, received_at, origin, lock=len(deliveries) > 1
        ),
        subject="these deliveries" if len(deliveries) > 1 else "this delivery",
    )


def apply_deliveries(
    connection: Connection,
    deliveries: Sequence[Delivery],
    received_at: datetime,
    origin: str | None = None,
    *,
    lock: bool = False,
) -> list[Result]:
    """`origin` marks each log entry: None for bodies handed to `apply`, `provider` for the
    provider's answers, `sweep` for the bodies a sweep's `resolve` hook returned that were not
    (a live callback).

    `lock`: first lock every call the deliveries name (`storage.lock_calls`), so that a batch
    sharing calls with another one being written waits for it and then decides on what it
    wrote, instead of losing the race to it and running again whole (the writer gives the
    MySQL/MariaDB locks back, `Writer.run`). A single delivery goes without: run again, it
    costs as little as the lock's round trip would on every delivery."""
    batch = _Batch(connection, received_at, origin)
    named = named_calls(deliveries)
    if lock:
        storage.lock_calls(connection, named)
    batch.prefetch(deliveries, named)
    results = [batch.apply(delivery) for delivery in deliveries]
    batch.flush()
    return results


def expire_calls(
    connection: Connection,
    call_ids: Sequence[str],
    swept_at: datetime,
    cutoff: datetime | None,
    *,
    replaying: bool = False,
) -> list[str]:
    """The sweep's transaction: end each of these calls that is still live and was last heard
    of before `cutoff` (`lifecycle.expire`), each with a log entry of its own; the ids of those
    it ended. The calls are read again here, inside the transaction, and written by
    compare-and-set, so a delivery committed since the sweep chose them wins: a call it ended is
    left alone, and one it changed meanwhile makes this transaction retry. `replaying` (a
    rebuild replaying a sweep's entry, `cutoff` None) logs a call it cannot end as not applied,
    so that the replay's log still has one entry for each entry replayed."""
    batch = _Batch(connection, swept_at, parsing.SWEEP_ORIGIN)
    found = storage.where_calls_by_id(connection, call_ids)
    batch.known.update({call_id: found.get(call_id) for call_id in call_ids})
    ended = [call_id for call_id in call_ids if batch.expire(call_id, swept_at, cutoff, replaying)]
    batch.flush()
    return ended


def named_calls(deliveries: Sequence[Delivery]) -> set[str]:
    """The calls these deliveries name, each's own and its parent: the ones a batch reads first,
    and locks before it does (`apply_deliveries`)."""
    named: set[str] = set()
    for delivery in deliveries:
        content = delivery.content
        if isinstance(content, Event | ProviderCall):
            named.add(content.call_id)
            if content.parent_call_id:
                named.add(content.parent_call_id)
    return named


class _Batch:
    """The calls this batch touched, as it leaves them, and the rows still to be written."""

    def __init__(
        self, connection: Connection, received_at: datetime, origin: str | None = None
    ) -> None:
        self.connection = connection
        self.received_at = received_at
        self.origin = origin
        # Latest record of every call looked at (None: not in the database, not created yet).
        self.known: dict[str, CallRecord | None] = {}
        # The record each changed call had in the database: the compare-and-set expectation.
        self.stored: dict[str, CallRecord | None] = {}
        self.events: list[dict[str, Any]] = []
        # Each changed call's history as the batch leaves it: every step with the index (in
        # `events`) of the delivery that made it, or the step as stored, which stays.
        self.steps: dict[str, list[tuple[TransitionTaken, int | Transition]]] = {}
        self.transfers: list[tuple[int, str, TransferAttempt, str]] = []
        # Content key of each tracked event of the batch, by identity: computed once.
        self.keys: dict[int, str] = {}
        self.stored_keys: set[str] = set()
        self.batch_keys: set[str] = set()

    # --- reading ----------------------------------------------------------------------------

    def prefetch(self, deliveries: Sequence[Delivery], ids: set[str]) -> None:
        """Read every call the batch names (`ids`, `named_calls`) in one query, and the content
        keys that may repeat an applied delivery in another."""
        events = [d.content for d in deliveries if isinstance(d.content, Event)]
        self.keys = {id(event): parsing.content_key(event) for event in events}
        found, self.stored_keys = storage.where_calls_and_applied_keys(
            self.connection, ids, [(event.call_id, self.keys[id(event)]) for event in events]
        )
        self.known.update({call_id: found.get(call_id) for call_id in ids})

    def _load(self, call_ids: set[str]) -> None:
        missing = call_ids - self.known.keys()
        if missing:
            found = storage.where_calls_by_id(self.connection, missing)
            self.known.update({call_id: found.get(call_id) for call_id in missing})

    def record(self, call_id: str) -> CallRecord | None:
        if call_id not in self.known:
            self._load({call_id})
        return self.known[call_id]

    def ancestry(self, call: CallRecord) -> list[str]:
        """The ids above `call`, nearest first; stops at a repeat so a corrupt loop cannot hang."""
        chain: list[str] = []
        parent_id = call.parent_call_id
        while parent_id is not None and parent_id not in chain and parent_id != call.call_id:
            chain.append(parent_id)
            parent = self.record(parent_id)
            parent_id = parent.parent_call_id if parent else None
        return chain

    # --- deciding ---------------------------------------------------------------------------

    def apply(self, delivery: Delivery) -> Result:
        content = delivery.content
        if isinstance(content, Unreadable):
            return self._log(
                delivery.raw,
                Result(Outcome.INVALID, content.call_id, content.reason, content.detail),
            )
        if isinstance(content, Untracked):
            return self._log(
                delivery.raw,
                Result(
                    Outcome.IGNORED,
                    delivery.call_id,
                    IgnoredReason.UNTRACKED_EVENT_TYPE,
                    parsing.untracked_detail(content.event_type),
                ),
                event_type=content.event_type,
            )
        if isinstance(content, ProviderCall):
            return self._provide(delivery.raw, content)
        return self._apply_event(delivery, content)

    def _provide(self, raw: bytes, answer: ProviderCall) -> Result:
        call = self.record(answer.call_id)
        parent = self.record(answer.parent_call_id) if answer.parent_call_id else None
        decision = lifecycle.provide(answer, call, parent)
        result = Result(
            decision.outcome,
            answer.call_id,
            decision.reason.value if decision.reason else None,
            decision.detail,
        )
        self._log(raw, result, event_type=CALL_STATE)
        if decision.outcome is Outcome.APPLIED:
            self._keep(answer.call_id, decision)
        return result

    def _apply_event(self, delivery: Delivery, event: Event) -> Result:
        key = self.keys[id(event)]
        call = self.record(event.call_id)
        parent = self.record(event.parent_call_id) if event.parent_call_id else None
        if key in self.batch_keys or key in self.stored_keys:
            return self._log(
                delivery.raw,
                Result(
                    Outcome.DUPLICATE,
                    event.call_id,
                    None,
                    "the same delivery was already applied",
                ),
                event_type=event.event_type,
            )
        # Only a call that already exists can have legs, and so become its own ancestor.
        ancestry = self.ancestry(parent) if call is not None and parent is not None else []
        decision = lifecycle.decide(event, call, parent, ancestry)
        result = Result(
            decision.outcome,
            event.call_id,
            decision.reason.value if decision.reason else None,
            decision.detail,
        )
        if decision.outcome is not Outcome.APPLIED:
            return self._log(delivery.raw, result, event_type=event.event_type)
        self.batch_keys.add(key)
        self._log(delivery.raw, result, event_type=event.event_type, dedup_key=key)
        if decision.transfer is not None:
            self.transfers.append((len(self.events) - 1, event.call_id, decision.transfer, key))
        for ancestor_id in ancestry:
            # The cycle rule read the ancestry: each ancestor is compare-and-set like the call
            # and its parent, on the version this decision read, so a writer that re-parents one
            # meanwhile makes one of us retry. Registered before `_keep`, whose account fill
            # writes what is pending and forgets what it read.
            if self.known.get(ancestor_id) is not None:
                self.stored.setdefault(ancestor_id, self.known[ancestor_id])
        self._keep(event.call_id, decision)
        return result

    def expire(
        self, call_id: str, swept_at: datetime, cutoff: datetime | None, replaying: bool
    ) -> bool:
        call = self.record(call_id)
        decision = lifecycle.expire(call, swept_at, cutoff)
        if decision is None and not replaying:
            return False
        known = lifecycle.last_known_time(call) if call is not None else None
        body = parsing.sweep_body(call_id, swept_at, known)
        if decision is None:
            detail = f"call {call_id} was not live where the replay met its sweep"
            self._log(
                body, Result(Outcome.IGNORED, call_id, None, detail), event_type=lifecycle.SWEEP
            )
            return False
        result = Result(Outcome.APPLIED, call_id, None, decision.detail)
        self._log(body, result, event_type=lifecycle.SWEEP)
        self._keep(call_id, decision)
        return True

    def _keep(self, call_id: str, decision: Decision) -> None:
        assert decision.call is not None
        for change in (decision.parent, decision.call):
            if change is not None:
                before, after = change
                # The first `before` is the row as read from the database: the compare-and-set
                # expectation, however often the batch changes the call afterwards.
                self.stored.setdefault(after.call_id, before)
                self.known[after.call_id] = after
        self._restep(call_id, decision.history)
        if decision.fill_account is not None:
            # Rare (a tree whose calls carry no account learning one late): the tree is walked
            # in the database, so write what is pending first, and read back what changed.
            self.flush()
            storage.fill_account(self.connection, call_id, decision.fill_account)
            self.known.clear()

    def _restep(self, call_id: str, wanted: tuple[TransitionTaken, ...]) -> None:
        """Bring the call's history to `wanted`, the one its facts now give: the steps it shares
        with the history held so far stay as they are, the rest are this delivery's."""
        index = len(self.events) - 1
        steps = self.steps.get(call_id)
        if steps is None:
            before = self.stored[call_id]
            if before is None or not before.history:  # a new call: every step is this one's
                self.steps[call_id] = [(step, index) for step in wanted]
                return
            steps = self.steps[call_id] = [
                (TransitionTaken(step.source, step.target, step.at, step.event), step)
                for step in before.history
            ]
        kept = 0
        while kept < min(len(steps), len(wanted)) and steps[kept][0] == wanted[kept]:
            kept += 1
        steps[kept:] = [(step, index) for step in wanted[kept:]]

    def _log(
        self,
        body: bytes,
        result: Result,
        *,
        event_type: str | None = None,
        dedup_key: str | None = None,
    ) -> Result:
        if len(result.detail) > MAX_DETAIL_LENGTH:
            result = replace(result, detail=clipped(result.detail))
        self.events.append(
            {
                "received_at": self.received_at,
                "body": body,
                "outcome": result.outcome.value,
                "reason": result.reason,
                "detail": result.detail,
                "call_id": result.call_id,
                # A hostile untracked type (megabytes, a NUL) stays in the body alone.
                "event_type": parsing.identifier(event_type),
                "dedup_key": dedup_key,
                "origin": self.origin,
            }
        )
        return result

    # --- writing ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Write everything pending, in the order foreign keys need: events, then calls (whose
        history names the events that made each step), then transfer attempts."""
        event_ids = storage.insert_events(self.connection, self.events)
        changes: list[tuple[CallRecord | None, CallRecord]] = []
        for call_id, before in self.stored.items():
            after = self.known[call_id]
            assert after is not None  # only calls a decision produced are in `stored`
            steps = self.steps.get(call_id)
            if steps is not None:
                history = tuple(_stored(step, event_ids) for step in steps)
                after = lifecycle.changed(after, {"history": history})
                self.known[call_id] = after
            changes.append((before, after))
        storage.write_calls(self.connection, changes)
        storage.insert_transfers(
            self.connection,
            [
                (call_id, event_ids[index], attempt, key)
                for index, call_id, attempt, key in self.transfers
            ],
        )
        self.events.clear()
        self.steps.clear()
        self.transfers.clear()
        self.stored.clear()


def _stored(step: tuple[TransitionTaken, int | Transition], event_ids: list[int]) -> Transition:
    taken, made_by = step
    if isinstance(made_by, Transition):
        return made_by
    return Transition(taken.source, taken.target, taken.at, taken.event, event_ids[made_by])
