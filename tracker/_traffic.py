"""Realistic streams of callbacks: what an application on Bandwidth receives in an evening.

The generators of traffic behind `tracker.testing`, shared by the project's tests and its
benchmarks. They decide *which* calls happen and *when* (inbound and outbound calls, transfers
to one leg and to several, every documented cause, weighted by how often each occurs); how each
callback is spelled is left to the builders of `tracker._bodies`, so a field Bandwidth adds or
respells is changed there once. The draws are seeded: one seed is one stream, the same bytes on
every machine and every run, so a benchmark's figures stay comparable from one release to the next.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from tracker._bodies import (
    answer,
    call_url,
    disconnect_between,
    encode,
    initiate,
    machine_detection_complete,
    stamp,
    transfer_answer,
    transfer_complete,
    transfer_disconnect_between,
)

Delivery = tuple[float, dict[str, Any]]  # (arrival second, body)

EPOCH: Final = datetime(2026, 6, 10, 19, 0, 0, tzinfo=UTC)
"""When every stream starts."""
ACCOUNTS: Final = ("55555555", "9900112", "5002817")
"""The accounts a stream's calls belong to (each with two applications, `APPLICATIONS`)."""
APPLICATIONS: Final = {
    account: tuple(
        str(uuid.UUID(int=random.Random(account + str(n)).getrandbits(128))) for n in (1, 2)
    )
    for account in ACCOUNTS
}
# Weights from the causes' documented meanings: most calls end normally, every cause appears.
INBOUND_CAUSES: Final = {
    "hangup": 70, "cancel": 8, "rejected": 4, "timeout": 3, "callback-error": 3,
    "invalid-bxml": 2, "application-error": 2, "error": 2, "unknown": 1,
    "node-capacity-exceeded": 1, "account-limit": 1, "sip-503-service-unavailable": 1,
}  # fmt: skip
OUTBOUND_CAUSES: Final = {
    "hangup": 60, "busy": 12, "timeout": 10, "cancel": 5, "rejected": 5, "account-limit": 2,
    "error": 2, "callback-error": 1, "invalid-bxml": 1, "application-error": 1,
    "node-capacity-exceeded": 1, "unknown": 1,
}  # fmt: skip
NEVER_ANSWERED: Final = frozenset(
    {"busy", "timeout", "cancel", "rejected", "account-limit", "node-capacity-exceeded"}
)
ERROR_MESSAGES: Final = {
    "busy": "Callee is busy",
    "account-limit": "Account concurrent call limit exceeded",
    "callback-error": "Callback to https://example.com/voice/answer failed: connect timed out",
    "invalid-bxml": "Invalid BXML: unexpected element <Speak>",
    "application-error": "Unsupported audio format: audio/ogg",
    "error": "Internal error",
    "unknown": "Unknown error",
    "node-capacity-exceeded": "Node capacity exceeded",
    "sip-503-service-unavailable": "SIP 503 Service Unavailable",
}


def at(second: float) -> datetime:
    """The instant `second` seconds into a stream (streams start at `EPOCH`)."""
    return EPOCH + timedelta(seconds=second)


def realistic_bodies(count: int, seed: int = 1) -> list[bytes]:
    """`count` distinct callback bodies of every tracked type, compact JSON, in the order they
    would arrive: the first `count` deliveries of `Stream(seed)`, all `applied` on an empty
    database."""
    return Stream(seed).bodies(count)


@dataclass(frozen=True)
class _Caller:
    """What a top-level call says about itself, drawn before its end is known (a transferred
    call ends after its legs)."""

    call_id: str
    fields: dict[str, Any]  # overrides for `disconnect_between`, in Bandwidth's spelling
    report_delay: float  # seconds from the end to the callback's eventTime


# The keys a call's live callbacks repeat from its terminal one (not its cause or errors).
_IDENTITY: Final = ("accountId", "applicationId", "from", "to", "direction", "callUrl", "tag")


class Stream:
    """Calls starting one after another (about two a second), each producing every callback
    Bandwidth would send (`initiate` for an inbound call, `answer` and now and then machine
    detection for an answered outbound one, `transferAnswer` for an answered leg,
    `transferComplete` when a transfer ends while the caller is still there, and the terminal
    events), delivered in the order they would arrive."""

    def __init__(self, seed: int, calls_per_second: Callable[[float], float] | None = None) -> None:
        """`calls_per_second(second)`: the rate calls start at, `second` seconds into the stream
        (default: two a second throughout)."""
        self.random = random.Random(seed)
        self.clock = 0.0
        self.calls_per_second = calls_per_second or (lambda _second: 2.0)

    def bodies(self, count: int) -> list[bytes]:
        deliveries: list[Delivery] = []
        while len(deliveries) < count:
            self.clock += self.random.expovariate(self.calls_per_second(self.clock))
            scenario = self.random.choices(
                (self._single_call, self._transfer_to_one, self._transfer_to_several),
                weights=(70, 20, 10),
            )[0]
            deliveries.extend(scenario())
        deliveries.sort(key=lambda delivery: delivery[0])
        return [
            json.dumps(body, separators=(",", ":")).encode() for _at, body in deliveries[:count]
        ]

    # --- scenarios: each returns its deliveries ---------------------------------------------

    def _single_call(self) -> list[Delivery]:
        direction = self.random.choice(("inbound", "outbound"))
        causes = INBOUND_CAUSES if direction == "inbound" else OUTBOUND_CAUSES
        cause = self.random.choices(tuple(causes), weights=tuple(causes.values()))[0]
        start = self.clock
        answer = None if self._unanswered(cause) else start + self.random.uniform(0.5, 8.0)
        end = (answer or start) + (
            self.random.uniform(5.0, 600.0) if answer else self.random.uniform(1.0, 30.0)
        )
        call_id = self._call_id()
        caller = self._caller(call_id, direction, cause, start)
        body = self._disconnect(call_id, caller, cause, start, answer, end)
        return [*self._live_caller(caller, start, answer), self._arrival(end, body)]

    def _transfer_to_one(self) -> list[Delivery]:
        return self._transfer(legs=1)

    def _transfer_to_several(self) -> list[Delivery]:
        return self._transfer(legs=self.random.randint(2, 4))

    def _transfer(self, legs: int) -> list[Delivery]:
        """An answered call that runs <Transfer> to `legs` numbers ringing at once: the first to
        answer is bridged and the others cancelled; if none answers, each times out."""
        direction = self.random.choices(("inbound", "outbound"), weights=(70, 30))[0]
        parent_id = self._call_id()
        start = self.clock
        answer = start + self.random.uniform(0.5, 5.0)
        transfer_start = answer + self.random.uniform(5.0, 40.0)
        parent = self._caller(parent_id, direction, "hangup", start)
        answered = self.random.random() < 0.8
        ring = self.random.uniform(2.0, 12.0)
        leg_ids = [self._call_id(parent_id) for _ in range(legs)]
        arrivals = self._live_caller(parent, start, answer)
        if answered:
            talk_end = transfer_start + ring + self.random.uniform(10.0, 900.0)
            for index, leg_id in enumerate(leg_ids):
                if index == 0:  # the winner
                    leg = self._leg(
                        parent, leg_id, "hangup", transfer_start, transfer_start + ring, talk_end
                    )
                    arrivals.append(self._arrival(talk_end, leg))
                    arrivals.append(self._leg_answered(parent, leg))
                else:  # losers report first
                    leg = self._leg(
                        parent, leg_id, "cancel", transfer_start, None, transfer_start + ring
                    )
                    arrivals.append(self._arrival(transfer_start + ring, leg))
            # Either the caller hangs up with the leg (then no transferComplete comes), or
            # carries on after the transfer.
            parent_end = talk_end + self.random.choice((0.0, self.random.uniform(1.0, 60.0)))
            if parent_end > talk_end:
                arrivals.append(self._transfer_complete(parent, start, answer, talk_end, "hangup"))
        else:
            for leg_id in leg_ids:
                cause = self.random.choices(("timeout", "busy", "rejected"), weights=(8, 1, 1))[0]
                leg_end = transfer_start + (
                    30.0 if cause == "timeout" else self.random.uniform(0.2, 3)
                )
                leg = self._leg(parent, leg_id, cause, transfer_start, None, leg_end)
                arrivals.append(self._arrival(leg_end, leg))
            last_leg = max(at_ for at_, _leg in arrivals[-legs:])
            causes = [str(leg["cause"]) for _at, leg in arrivals[-legs:]]
            arrivals.append(self._transfer_complete(parent, start, answer, last_leg, causes[0]))
            parent_end = transfer_start + 30.0 + self.random.uniform(1.0, 20.0)
        body = self._disconnect(parent_id, parent, "hangup", start, answer, parent_end)
        arrivals.append(self._arrival(parent_end, body))
        return arrivals

    # --- the calls and legs of a scenario -----------------------------------------------------

    def _caller(self, call_id: str, direction: str, cause: str, start: float) -> _Caller:
        """Account, application, numbers and the optional fields of a top-level call."""
        account = self.random.choice(ACCOUNTS)
        company = self._number()
        remote = "Anonymous" if self.random.random() < 0.03 else self._number()
        report_delay = self.random.uniform(0.005, 0.05)
        fields: dict[str, Any] = {
            "accountId": account,
            "applicationId": self.random.choice(APPLICATIONS[account]),
            "from": remote if direction == "inbound" else company,
            "to": company if direction == "inbound" else remote,
            "direction": direction,
            "callUrl": call_url(call_id, account),
        }
        if direction == "outbound" and self.random.random() < 0.5:
            fields["enqueuedTime"] = stamp(at(start - self.random.uniform(0.05, 2.0)))
        self._errors(fields, cause, sip=direction == "outbound")
        if direction == "outbound" and self.random.random() < 0.4:
            fields["tag"] = self.random.choice(("campaign-17", "", '{"crm":"A-3321","queue":7}'))
        return _Caller(call_id, fields, report_delay)

    def _disconnect(
        self,
        call_id: str,
        caller: _Caller,
        cause: str,
        start: float,
        answer: float | None,
        end: float,
    ) -> dict[str, Any]:
        return disconnect_between(
            at(start),
            at(end),
            call_id,
            answered=None if answer is None else at(answer),
            cause=cause,
            eventTime=stamp(at(end + caller.report_delay)),
            **caller.fields,
        )

    def _leg(
        self,
        parent: _Caller,
        call_id: str,
        cause: str,
        start: float,
        answer: float | None,
        end: float,
    ) -> dict[str, Any]:
        """A transferDisconnect: the original call's from/to, the leg's own numbers in
        transferCallerId/transferTo, and (as documented) no accountId, most of the time."""
        account = parent.fields["accountId"]
        fields: dict[str, Any] = {"eventTime": stamp(at(end + self.random.uniform(0.005, 0.05)))}
        if self.random.random() < 0.3:  # the OpenAPI spec lists them
            fields["accountId"] = account
            fields["applicationId"] = parent.fields["applicationId"]
        inbound = parent.fields["direction"] == "inbound"
        fields |= {
            "from": parent.fields["from"],
            "to": parent.fields["to"],
            "callUrl": call_url(call_id, account),
            "transferCallerId": parent.fields["to"] if inbound else parent.fields["from"],
            "transferTo": (
                f"sip:agent{self.random.randint(1, 99)}@pbx.example.com"
                if self.random.random() < 0.2
                else self._number()
            ),
        }
        self._errors(fields, cause, sip=False)
        return transfer_disconnect_between(
            parent.call_id,
            at(start),
            at(end),
            call_id,
            answered=None if answer is None else at(answer),
            cause=cause,
            **fields,
        )

    # --- the live callbacks -------------------------------------------------------------------

    def _live_caller(self, caller: _Caller, start: float, answered: float | None) -> list[Delivery]:
        """An inbound call's `initiate`; an answered outbound call's `answer`, and for some its
        asynchronous machine detection."""
        fields: dict[str, Any] = {
            key: caller.fields[key] for key in _IDENTITY if key in caller.fields
        }
        if fields["direction"] == "inbound":
            return [(start + 0.05, initiate(caller.call_id, start=at(start), **fields))]
        if answered is None:
            return []
        said = {**fields, "answerTime": stamp(at(answered)), "eventTime": stamp(at(answered))}
        found = [(answered + 0.05, answer(caller.call_id, start=at(start), **said))]
        if self.random.random() < 0.3:
            result = self.random.choices(
                ("human", "answering-machine", "silence", "timeout"), weights=(70, 20, 5, 5)
            )[0]
            done = answered + self.random.uniform(2.0, 6.0)
            body = machine_detection_complete(
                caller.call_id,
                start=at(start),
                result=result,
                **said,
            )
            body["eventTime"] = stamp(at(done))
            found.append((done + 0.05, body))
        return found

    def _leg_answered(self, parent: _Caller, leg: dict[str, Any]) -> Delivery:
        """The winning leg's `transferAnswer`, most of the time with its `parentCallId`."""
        keys = ("from", "to", "callUrl", "transferCallerId", "transferTo", "startTime")
        body = transfer_answer(
            leg["parentCallId"] if self.random.random() < 0.9 else None,
            leg["callId"],
            **{key: leg[key] for key in keys},
            answerTime=leg["answerTime"],
            eventTime=leg["answerTime"],
            accountId=parent.fields["accountId"],
            applicationId=parent.fields["applicationId"],
        )
        answered = (datetime.fromisoformat(leg["answerTime"]) - EPOCH).total_seconds()
        return answered + 0.05, body

    def _transfer_complete(
        self, parent: _Caller, start: float, answered: float, ended: float, cause: str
    ) -> Delivery:
        fields = {key: parent.fields[key] for key in _IDENTITY if key in parent.fields}
        body = transfer_complete(
            parent.call_id,
            start=at(start),
            at=at(ended + 0.04),
            cause=cause,
            answerTime=stamp(at(answered)),
            **fields,
        )
        return ended + 0.1, body

    def _errors(self, fields: dict[str, Any], cause: str, *, sip: bool) -> None:
        message = ERROR_MESSAGES.get(cause)
        if message is not None:
            fields["errorMessage"] = message
            fields["errorId"] = str(uuid.UUID(int=self.random.getrandbits(128)))
        if sip and cause in ("busy", "rejected"):
            fields["sipResponseCode"] = 486 if cause == "busy" else 603

    def _unanswered(self, cause: str) -> bool:
        if cause in NEVER_ANSWERED:
            return True
        if cause == "hangup":
            return self.random.random() < 0.05
        return self.random.random() < 0.5

    def _arrival(self, end: float, body: dict[str, Any]) -> Delivery:
        return end + self.random.uniform(0.01, 0.3), body

    def _call_id(self, parent_id: str | None = None) -> str:
        """`c-<8 hex>-<uuid>`; a leg shares its parent's first group, as in Bandwidth's examples."""
        group = parent_id[2:10] if parent_id else f"{self.random.getrandbits(32):08x}"
        return f"c-{group}-{uuid.UUID(int=self.random.getrandbits(128))}"

    def _number(self) -> str:
        return f"+1{self.random.randint(201, 989)}{self.random.randint(2000000, 9999999)}"


# The bodies `Stream.bodies` is asked for at a time by `terminal_bodies`: bounded memory
# whatever the count.
_STREAM_CHUNK: Final = 20_000
_TERMINAL: Final = (b'"eventType":"disconnect"', b'"eventType":"transferDisconnect"')


def terminal_bodies(
    count: int, seed: int = 1, calls_per_second: Callable[[float], float] | None = None
) -> Iterator[bytes]:
    """The terminal callbacks (`disconnect`, `transferDisconnect`, which carry every time a call
    has) of `Stream(seed, calls_per_second)`, `count` of them, one per call or leg: ended calls
    in bulk, in bounded memory. The stream is drawn a chunk at a time; a call whose end falls
    past a chunk's last delivery loses its terminal callback, so a few parents are known only
    through their legs."""
    stream = Stream(seed, calls_per_second)
    made = 0
    while True:
        for body in stream.bodies(_STREAM_CHUNK):
            if body.startswith(_TERMINAL, 1):
                yield body
                made += 1
                if made == count:
                    return


def call_trees(count: int, seed: int = 1) -> Iterator[bytes]:
    """Terminal callbacks of `count` calls and legs, a conversation starting every half second:
    most alone (a few never answered, `busy` or `timeout`), some transferred to one leg, some to
    two to four ringing at once (one answered and the others cancelled, or none answered), each
    transfer told by a `transferComplete` too. Every body is `applied` on an empty database; a
    cheap, steady stream of trees for loading many calls."""
    draw = random.Random(seed)
    made = 0
    serial = 0
    while made < count:
        serial += 1
        start = serial * 0.5
        account = draw.choice(ACCOUNTS)
        application = draw.choice(APPLICATIONS[account])
        call_id = f"c-{serial:08x}-{draw.getrandbits(64):016x}"
        wanted = draw.choices((0, 1, 2, 3, 4), weights=(70, 20, 4, 3, 3))[0]
        wanted = min(wanted, count - made - 1)
        answered = start + draw.uniform(0.5, 6.0)
        if not wanted and draw.random() < 0.15:
            end = start + draw.uniform(5.0, 30.0)
            yield encode(
                disconnect_between(
                    at(start), at(end), call_id, cause=draw.choice(("busy", "timeout")),
                    callUrl=call_url(call_id, account), accountId=account,
                    applicationId=application,
                )
            )  # fmt: skip
            made += 1
            continue
        transfer_start = answered + draw.uniform(2.0, 20.0)
        bridged = draw.random() < 0.8
        leg_end = transfer_start + draw.uniform(15.0, 600.0)
        end = leg_end + draw.uniform(0.0, 30.0)
        yield encode(
            disconnect_between(
                at(start), at(end), call_id, answered=at(answered),
                callUrl=call_url(call_id, account), accountId=account,
                applicationId=application,
            )
        )  # fmt: skip
        for index in range(wanted):
            leg_id = f"{call_id}-{index}"
            winner = bridged and index == 0
            yield encode(
                transfer_disconnect_between(
                    call_id,
                    at(transfer_start),
                    at(leg_end if winner else transfer_start + draw.uniform(5.0, 14.0)),
                    leg_id,
                    answered=at(transfer_start + draw.uniform(1.0, 4.0)) if winner else None,
                    cause="hangup" if winner else "cancel",
                    callUrl=call_url(leg_id, account),
                )
            )
        if wanted:
            yield encode(
                transfer_complete(
                    call_id, start=at(start), at=at(leg_end), callUrl=call_url(call_id, account),
                    accountId=account, applicationId=application,
                )
            )  # fmt: skip
        made += 1 + wanted


def with_retries(bodies: Sequence[bytes], share: float, seed: int = 1) -> list[bytes]:
    """`bodies` in their order, with a `share` of them delivered again 1 to 20 deliveries
    later, byte for byte, as Bandwidth retries a callback that was not acknowledged in time:
    each repeat is a `duplicate`."""
    draw = random.Random(seed)
    placed = [(float(index), body) for index, body in enumerate(bodies)]
    placed += [
        (index + draw.randint(1, 20) + 0.5, body)
        for index, body in enumerate(bodies)
        if draw.random() < share
    ]
    placed.sort(key=lambda item: item[0])
    return [body for _position, body in placed]
