"""Basic authentication: 401 for bad credentials, rotated pairs taken, checked before the body."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.http_server import (
    Server,
    close_quietly,
    connect,
    read_response,
    readable,
    request_head,
)
from tests.http_support import (
    CALLBACK,
    NEW,
    OLD,
    OUTCOME,
    REALM,
    SQLITE_AND_POSTGRESQL,
    TEN_MB,
    _basic,
    dumps,
    outcome_of,
)
from tracker import Event
from tracker.testing import (
    disconnect,
)

# --- 401: authentication -----------------------------------------------------------------------


BAD_AUTHORIZATION = {
    "wrong user": _basic(b"bandwidth-2024:" + OLD[1].encode()),
    "wrong password": _basic(OLD[0].encode() + b":0ld-s3cret!"),
    "old user, new password": _basic(f"{OLD[0]}:{NEW[1]}".encode()),
    "new user, old password": _basic(f"{NEW[0]}:{OLD[1]}".encode()),
    "password cut at its colon": _basic(f"{NEW[0]}:n3w".encode()),
    "empty password": _basic(OLD[0].encode() + b":"),
    "empty": "",
    "scheme only": "Basic",
    "not base64": "Basic !!!not-base64!!!",
    "no colon": _basic(OLD[0].encode()),
    "other scheme": "Bearer " + base64.b64encode(f"{OLD[0]}:{OLD[1]}".encode()).decode(),
    "no scheme": base64.b64encode(f"{OLD[0]}:{OLD[1]}".encode()).decode(),
    "latin-1 password": _basic(NEW[0].encode() + b":" + NEW[1].encode("latin-1")),
}


@SQLITE_AND_POSTGRESQL
def test_missing_wrong_or_malformed_credentials_are_401_and_nothing_is_logged(
    server: Server, log: Callable[[], list[Event]]
) -> None:
    body = dumps(disconnect())
    cases: dict[str, dict[str, str]] = {"no header": {}}
    cases.update({name: {"Authorization": value} for name, value in BAD_AUTHORIZATION.items()})
    with httpx.Client(timeout=30.0) as anonymous:
        for name, headers in cases.items():
            response = anonymous.post(server.url(), content=body, headers=headers)
            assert response.status_code == 401, name
            assert response.headers["www-authenticate"] == REALM, name
            assert OUTCOME not in response.headers, name
    assert log() == []


@SQLITE_AND_POSTGRESQL
def test_each_of_two_rotated_credential_pairs_is_accepted(
    server: Server, log: Callable[[], list[Event]]
) -> None:
    bodies = {OLD: dumps(disconnect()), NEW: dumps(disconnect())}
    for pair, body in bodies.items():
        with httpx.Client(auth=pair, timeout=30.0) as authorized:
            assert outcome_of(authorized.post(server.url(), content=body)) == (
                204,
                "applied",
                None,
            )
    # The scheme name is case-insensitive (RFC 7617 / 9110).
    lower = "basic " + base64.b64encode(f"{OLD[0]}:{OLD[1]}".encode()).decode()
    third = dumps(disconnect())
    response = httpx.post(server.url(), content=third, headers={"Authorization": lower})
    assert outcome_of(response) == (204, "applied", None)
    assert [entry.body for entry in log()] == [*bodies.values(), third]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_credentials_from_a_file_one_pair_a_line(
    serve: Callable[..., Server], tmp_path: Path, log: Callable[[], list[Event]]
) -> None:
    path = tmp_path / "credentials"
    path.write_text(f"# rotated 2026-01-01\n{OLD[0]}:{OLD[1]}\n\n{NEW[0]}:{NEW[1]}\n", "utf-8")
    server = serve("--credentials-file", str(path), credentials=None)
    for pair in (OLD, NEW):
        assert httpx.post(server.url(), content=b"x", auth=pair).status_code == 204
    assert httpx.post(server.url(), content=b"x", auth=("other", "x")).status_code == 401
    assert httpx.post(server.url(), content=b"x").status_code == 401
    assert len(log()) == 2


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("source", ["environment", "file"])
def test_two_passwords_of_one_user_are_both_accepted_during_a_rotation(
    serve: Callable[..., Server], tmp_path: Path, log: Callable[[], list[Event]], source: str
) -> None:
    """A Bandwidth application has one user name and one password, so a rotation keeps the
    user: both of its entries hold, from $TRACKER_CALLBACK_CREDENTIALS as from a file."""
    user = "bandwidth"
    old, new = (user, "0ld-s3cret"), (user, "n3w:sécret")
    entries = [f"{user}:{password}" for _user, password in (old, new)]
    if source == "environment":
        server = serve(credentials=",".join(entries))
    else:
        path = tmp_path / "credentials"
        path.write_text("\n".join(entries) + "\n", "utf-8")
        server = serve("--credentials-file", str(path), credentials=None)
    bodies = [dumps(disconnect()), dumps(disconnect())]
    for pair, body in zip((old, new), bodies, strict=True):
        response = httpx.post(server.url(), content=body, auth=pair)
        assert outcome_of(response) == (204, "applied", None)
    assert httpx.post(server.url(), content=b"x", auth=(user, "0ld-s3cret!")).status_code == 401
    assert httpx.post(server.url(), content=b"x", auth=("other", old[1])).status_code == 401
    assert [entry.body for entry in log()] == bodies
    assert "1 user (2 passwords)" in server.stderr


@SQLITE_AND_POSTGRESQL
def test_authentication_comes_before_the_body_is_read(server: Server) -> None:
    """A stranger announcing 10 MB is turned away with 401, not 413, and before sending any."""
    sock = connect(server.port)
    try:
        sock.sendall(request_head("POST", CALLBACK, {"Content-Length": str(TEN_MB)}))
        assert readable(sock, 10.0), "no answer to the head alone"
        assert read_response(sock).status == 401
    finally:
        close_quietly(sock)
