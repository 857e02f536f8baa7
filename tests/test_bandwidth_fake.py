"""The fake of Bandwidth's Voice API (`tracker.testing.FakeBandwidth`), spoken to in plain
HTTP: it answers as Bandwidth documents its API, so what the tracker proves against it holds
against Bandwidth."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from tracker.provider import read_call_state
from tracker.testing import (
    ACCOUNT,
    BASE_TIME,
    FakeBandwidth,
    answer,
    call_state,
    call_state_from,
    disconnect_between,
    initiate,
    stamp,
)


@pytest.fixture
def http(bandwidth_api: FakeBandwidth) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=bandwidth_api.url,
        auth=(bandwidth_api.username, bandwidth_api.password),
        timeout=5.0,
    ) as client:
        yield client


def _calls_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [document["callId"] for document in response.json()]


def test_a_call_state_is_served_under_its_own_account_only(
    bandwidth_api: FakeBandwidth, http: httpx.Client
) -> None:
    bandwidth_api.put(document := call_state())
    found = http.get(f"/accounts/{ACCOUNT}/calls/{document['callId']}")
    assert (found.status_code, found.json()) == (200, document)
    elsewhere = http.get(f"/accounts/9999/calls/{document['callId']}")
    assert elsewhere.status_code == 404
    assert set(elsewhere.json()) == {"type", "description", "id"}
    bandwidth_api.remove(document["callId"])
    assert http.get(f"/accounts/{ACCOUNT}/calls/{document['callId']}").status_code == 404


def test_a_request_without_the_credentials_is_answered_401(bandwidth_api: FakeBandwidth) -> None:
    bandwidth_api.put(document := call_state())
    path = f"{bandwidth_api.url}/accounts/{ACCOUNT}/calls/{document['callId']}"
    for auth in (
        None,
        ("tracker", "wrong"),
        (bandwidth_api.client_id, bandwidth_api.client_secret),
    ):
        refused = httpx.get(path, auth=auth)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Basic")


def test_the_token_endpoint_issues_a_bearer_token_for_the_client_credentials(
    bandwidth_api: FakeBandwidth,
) -> None:
    bandwidth_api.put(document := call_state())
    path = f"{bandwidth_api.url}/accounts/{ACCOUNT}/calls/{document['callId']}"
    grant = {"grant_type": "client_credentials"}
    issued = httpx.post(
        bandwidth_api.token_url,
        data=grant,
        auth=(bandwidth_api.client_id, bandwidth_api.client_secret),
    )
    assert issued.status_code == 200
    assert issued.json()["token_type"] == "Bearer" and issued.json()["expires_in"] == 3600
    bearer = {"Authorization": f"Bearer {issued.json()['access_token']}"}
    assert httpx.get(path, headers=bearer).status_code == 200
    bandwidth_api.revoke_tokens()
    assert httpx.get(path, headers=bearer).status_code == 401
    wrong = httpx.post(bandwidth_api.token_url, data=grant, auth=(bandwidth_api.client_id, "no"))
    assert (wrong.status_code, wrong.json()) == (401, {"error": "invalid_client"})
    other = httpx.post(
        bandwidth_api.token_url,
        data={"grant_type": "password"},
        auth=(bandwidth_api.client_id, bandwidth_api.client_secret),
    )
    assert other.status_code == 400


def test_the_list_pages_a_window_in_start_order_with_link_headers(
    bandwidth_api: FakeBandwidth, http: httpx.Client
) -> None:
    documents = [call_state(start=BASE_TIME + timedelta(seconds=n)) for n in range(7)]
    bandwidth_api.put_many(reversed(documents))
    window = {
        "minStartTime": stamp(BASE_TIME + timedelta(seconds=1)),
        "maxStartTime": stamp(BASE_TIME + timedelta(seconds=5)),  # both ends included
        "pageSize": "2",
    }
    listed: list[str] = []
    response = http.get(f"/accounts/{ACCOUNT}/calls", params=window)
    while True:
        listed += _calls_of(response)
        link = response.headers.get("Link")
        if link is None:
            break
        url, relation = link.split(">; ")
        assert relation == 'rel="next"' and url.startswith(f"<{bandwidth_api.url}/")
        assert "pageToken=" in url and "pageSize=2" in url
        response = http.get(url[1:])
    assert listed == [document["callId"] for document in documents[1:6]]


def test_the_list_gives_a_thousand_calls_a_page_unless_told(
    bandwidth_api: FakeBandwidth, http: httpx.Client
) -> None:
    bandwidth_api.put_many(
        call_state(start=BASE_TIME + timedelta(milliseconds=n)) for n in range(1001)
    )
    first = http.get(f"/accounts/{ACCOUNT}/calls")
    assert len(_calls_of(first)) == 1000
    assert len(_calls_of(http.get(first.headers["Link"][1:].split(">")[0]))) == 1


@pytest.mark.parametrize(
    "query",
    [{"pageSize": "0"}, {"pageSize": "10001"}, {"minStartTime": "yesterday"}, {"pageToken": "x"}],
)
def test_a_list_query_bandwidth_would_refuse_is_answered_400(
    http: httpx.Client, query: dict[str, str]
) -> None:
    assert http.get(f"/accounts/{ACCOUNT}/calls", params=query).status_code == 400


def test_faults_are_met_in_order_as_many_times_as_asked(
    bandwidth_api: FakeBandwidth, http: httpx.Client
) -> None:
    bandwidth_api.put(document := call_state())
    path = f"/accounts/{ACCOUNT}/calls/{document['callId']}"
    bandwidth_api.fail(document["callId"], status=429, retry_after=2, times=2)
    bandwidth_api.fail(status=500)
    statuses = [http.get(path) for _ in range(4)]
    assert [response.status_code for response in statuses] == [429, 429, 500, 200]
    assert statuses[0].headers["Retry-After"] == "2"
    assert [request.call_id for request in bandwidth_api.requests] == [document["callId"]] * 4
    with pytest.raises(ValueError, match="times"):
        bandwidth_api.fail(times=0)


def test_a_slow_answer_comes_after_its_delay(
    bandwidth_api: FakeBandwidth, http: httpx.Client
) -> None:
    bandwidth_api.put(document := call_state())
    bandwidth_api.slow(delay=0.2)
    response = http.get(f"/accounts/{ACCOUNT}/calls/{document['callId']}")
    assert response.status_code == 200
    assert bandwidth_api.requests[0].duration >= 0.2


def test_a_down_api_fails_everything_until_it_is_up_again(
    bandwidth_api: FakeBandwidth, http: httpx.Client
) -> None:
    bandwidth_api.put(document := call_state())
    path = f"/accounts/{ACCOUNT}/calls/{document['callId']}"
    bandwidth_api.fail(status=500, times=None)
    bandwidth_api.down()
    assert http.get(path).status_code == 503
    bandwidth_api.down(status=None)
    with pytest.raises(httpx.ConnectError):
        httpx.get(bandwidth_api.url + path)
    bandwidth_api.up()
    assert http.get(path).status_code == 200  # the same URL, every fault gone


def test_the_request_log_can_be_started_over(
    bandwidth_api: FakeBandwidth, http: httpx.Client
) -> None:
    http.get(f"/accounts/{ACCOUNT}/calls/c-1")
    assert bandwidth_api.max_in_flight == 1 and len(bandwidth_api.requests) == 1
    bandwidth_api.reset_requests()
    assert (bandwidth_api.max_in_flight, bandwidth_api.requests) == (0, [])


def test_a_built_call_state_reads_as_the_facts_it_was_built_with() -> None:
    answered = BASE_TIME + timedelta(seconds=3)
    ended = read_call_state(call_state("c-1", answered=answered, cause="busy"))
    assert (ended.call_id, ended.state, ended.cause) == ("c-1", "disconnected", "busy")
    assert (ended.answer_time, ended.end_time) == (answered, answered + timedelta(minutes=1))
    live = read_call_state(call_state(state="answered", answered=answered))
    assert (live.state, live.end_time, live.cause) == ("answered", None, None)
    assert "parentCallId" not in call_state(parentCallId=...)
    assert call_state(to="+15550000000", direction=...).get("direction") is None


def test_a_call_state_follows_from_the_last_callback_bandwidth_sent() -> None:
    start = BASE_TIME
    ended = call_state_from(
        disconnect_between(start, start + timedelta(seconds=30), "c-2", cause="timeout")
    )
    assert read_call_state(ended).state == "disconnected"
    assert (ended["disconnectCause"], ended["endTime"]) == (
        "timeout",
        stamp(start + timedelta(seconds=30)),
    )
    assert read_call_state(call_state_from(initiate("c-3"))).state == "initiated"
    assert read_call_state(call_state_from(answer("c-4"))).state == "answered"


def test_a_call_state_without_a_call_id_is_refused() -> None:
    with FakeBandwidth() as fake, pytest.raises(ValueError, match="callId"):
        fake.put({"state": "answered"})
