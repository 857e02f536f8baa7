"""Write `samples/callbacks.jsonl` with the public test kit, `tracker.testing`.

    python samples/make_samples.py

One afternoon of account 9901287, one body per line in arrival order (what each line is and
the outcome it gets: `samples/README.md`). Ended calls come first, then the calls still ringing
or talking when the file was cut, so `tracker calls --live` has something to show.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracker.testing import (
    answer,
    call_url,
    conversation,
    disconnect_between,
    encode,
    relayed,
    stamp,
    transfer_disconnect_between,
    untracked,
)

ACCOUNT = "9901287"
APPLICATION = "909b8599-4673-48f7-932b-9ac7143766e3"
OFFICE = "+19195550100"  # the company's number
OUT = Path(__file__).resolve().parent / "callbacks.jsonl"


def at(clock: str) -> datetime:
    """An instant of the afternoon, `"14:02:11.418"`."""
    return datetime.fromisoformat(f"2026-03-17T{clock}").replace(tzinfo=UTC)


def of_account(call_id: str, **fields: Any) -> dict[str, Any]:
    """The fields every call of the sample shares, and `fields`."""
    return {
        "accountId": ACCOUNT,
        "applicationId": APPLICATION,
        "callUrl": call_url(call_id, ACCOUNT),
        **fields,
    }


def ended(
    call_id: str, caller: str, called: str, start: str, end: str, reported: str, **fields: Any
) -> dict[str, Any]:
    """The `disconnect` of an original call of the sample (`answered`: the answer's clock)."""
    answered = fields.pop("answered", None)
    direction = "inbound" if called == OFFICE else "outbound"
    return disconnect_between(
        at(start),
        at(end),
        call_id,
        answered=None if answered is None else at(answered),
        eventTime=stamp(at(reported)),
        **of_account(call_id, direction=direction, **{"from": caller, "to": called}),
        **fields,
    )


def leg(
    parent: dict[str, Any],
    call_id: str,
    to: str,
    start: str,
    end: str,
    reported: str,
    **fields: Any,
) -> dict[str, Any]:
    """The `transferDisconnect` of a leg of `parent` dialling `to` (no accountId, as Bandwidth's
    documentation shows it)."""
    answered = fields.pop("answered", None)
    return transfer_disconnect_between(
        parent["callId"],
        at(start),
        at(end),
        call_id,
        answered=None if answered is None else at(answered),
        cause=fields.pop("cause", "hangup"),
        eventTime=stamp(at(reported)),
        callUrl=call_url(call_id, ACCOUNT),
        transferCallerId=parent["from"] if parent["direction"] == "inbound" else parent["to"],
        transferTo=to,
        **{"from": parent["from"], "to": parent["to"]},
        **fields,
    )


def afternoon() -> list[bytes]:
    first = ended(
        "c-b34ba78d-31a5ad2d-550c-417a-9d8f-4115c0293829", "+17045550187", OFFICE,
        "14:02:11.418", "14:05:47.260", "14:05:47.297", answered="14:02:11.902",
    )  # fmt: skip
    busy = ended(
        "c-d4cb05e3-18c9cd25-9d57-4610-bf9b-78f4e3849a8c", OFFICE, "+18285550164",
        "14:06:03.125", "14:06:09.871", "14:06:09.904", cause="busy",
        errorMessage="Callee is busy", errorId="9325dab8-1b6a-4005-a582-6c79e1f7f70c",
        tag="campaign=renewals-q1",
    )  # fmt: skip
    renewal = ended(
        "c-f5ca92c4-467193eb-b01a-4829-9db3-e54d3585bdd6", OFFICE, "+13365550122",
        "14:10:00.512", "14:13:31.447", "14:13:31.489", answered="14:10:07.836",
        tag="campaign=renewals-q1",
    )  # fmt: skip
    renewal_answered = answer(
        renewal["callId"],
        start=at("14:10:00.512"),
        ring=7.324,
        eventTime=stamp(at("14:10:07.851")),
        tag="campaign=renewals-q1",
        **of_account(renewal["callId"], **{"from": OFFICE, "to": "+13365550122"}),
    )
    renewal_agent = leg(
        renewal, "c-f5ca92c4-42808c71-26a0-4b16-bbbf-62f18e3c0265", "+19195550141",
        "14:10:21.004", "14:13:31.402", "14:13:31.430", answered="14:10:26.318",
    )  # fmt: skip
    ring_group = ended(
        "c-99e07ec9-658e8b3e-1136-4f5a-aa70-31b554d82886", "+17045550187", OFFICE,
        "14:21:20.204", "14:26:12.533", "14:26:12.561", answered="14:21:20.689",
    )  # fmt: skip
    cancelled = [
        leg(
            ring_group, call_id, to, start, "14:21:40" + end, "14:21:40" + reported, cause="cancel"
        )
        for call_id, to, start, end, reported in (
            ("c-99e07ec9-4f630df0-62ad-416b-9c18-3a222720696c", "+19195550142", "14:21:33.950",
             ".361", ".377"),
            ("c-99e07ec9-c33cd17d-31af-4fbb-b688-9d75f7e61e5a", "+19195550143", "14:21:33.951",
             ".365", ".392"),
        )
    ]  # fmt: skip
    agent = leg(
        ring_group, "c-99e07ec9-11c030a3-8e86-400f-b96c-81be1a519687", "+19195550141",
        "14:21:33.948", "14:26:12.490", "14:26:12.518", answered="14:21:40.312", tag="agent=2041",
    )  # fmt: skip
    unknown_cause = ended(
        "c-9c0315de-4106d789-d8b2-4a0e-ab4e-43df1b56262d", OFFICE, "+16155550119",
        "14:30:01.113", "14:30:02.708", "14:30:02.746", cause="sip-503-service-unavailable",
        errorMessage="Service Unavailable", errorId="29b98869-f14d-476f-ac64-3d598ba4f539",
        sipResponseCode=503, tag="campaign=renewals-q1",
    )  # fmt: skip
    anonymous = ended(
        "c-a2643dbf-f6c97247-7d50-4b27-9da1-98a261b6163e", "Anonymous", OFFICE,
        "14:35:04.835", "14:38:55.142", "14:38:55.174", answered="14:35:05.290",
    )  # fmt: skip
    front_desk = leg(
        anonymous, "c-a2643dbf-f680b02f-76cf-4106-9753-3d2416efb762",
        "sip:frontdesk@pbx.example.net", "14:35:12.660", "14:38:55.101", "14:38:55.129",
        answered="14:35:15.007",
    )  # fmt: skip
    no_end_time = ended(
        "c-bf78a23d-273bf851-8f00-45b7-bfc4-eacdff38ea1a", "+15045550176", OFFICE,
        "14:40:49.021", "14:41:18.500", "14:41:18.530", answered="14:40:49.533", endTime=...,
    )  # fmt: skip
    digit = untracked(
        first["callId"],
        start=at("14:02:11.418"),
        eventTime=stamp(at("14:02:11.204")),
        answerTime=first["answerTime"],
        **of_account(first["callId"], **{"from": "+17045550187", "to": OFFICE}),
    )
    # Still going when the file was cut: a call ringing, an outbound call talking (an answering
    # machine detected as a human), and an outbound call bridged to one of two agents.
    shared: dict[str, Any] = {"account": ACCOUNT, "application": APPLICATION, "ended": False}
    ringing = conversation(
        "inbound", answered=False, start=at("14:44:58.120"), caller="+12525550133",
        called=OFFICE, call_id="c-e1d4a0b7-5f2a7c19-8d3e-4b6a-9c51-2f7e0d9a4b13", **shared,
    )  # fmt: skip
    talking = conversation(
        "outbound", machine_detection="human", start=at("14:42:30.004"), caller=OFFICE,
        called="+19805550171", call_id="c-37b9c2e8-0a6d4f15-2c8b-4e7a-b3d9-6f1a5e2c8d47",
        **shared,
    )  # fmt: skip
    bridged = conversation(
        "outbound", legs=2, start=at("14:43:10.530"), caller=OFFICE, called="+17575550126",
        call_id="c-5a8f3e61-9b2c7d40-4e1f-4a8b-9d6c-3b7e2f1a0c58",
        leg_ids=(
            "c-5a8f3e61-0c7e2b94-7a3d-4f6e-8b1c-5d9a2e4f7b30",
            "c-5a8f3e61-d2b6f8a1-3c9e-4d7b-a5f2-8e1c6b3d9a74",
        ),
        leg_numbers=("+19195550141", "+19195550143"),
        **shared,
    )  # fmt: skip
    return [
        encode(first),
        encode(busy),
        encode(renewal_answered),
        encode(renewal_agent),
        encode(renewal),
        encode(first),  # delivered again, byte for byte
        *(encode(body) for body in cancelled),
        encode(agent),
        encode(ring_group),
        relayed(busy),  # re-serialized by a relay: the same delivery
        encode(unknown_cause),
        encode(front_desk),
        encode(anonymous),
        encode(no_end_time),
        encode(digit),
        *sorted(
            (*ringing.encoded(), *talking.encoded(), *bridged.encoded()),
            key=lambda body: body[body.index(b'"eventTime"') :],
        ),
    ]


def main() -> None:
    OUT.write_bytes(b"".join(body + b"\n" for body in afternoon()))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
