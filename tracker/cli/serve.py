"""`tracker serve`: the webhook endpoint Bandwidth calls, served by uvicorn."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Final

import click

from tracker.asgi import BODY_TIMEOUT, MAX_BODY_BYTES, MAX_QUEUE
from tracker.cli.output import counted
from tracker.cli.session import Session

CREDENTIALS_VARIABLE: Final = "TRACKER_CALLBACK_CREDENTIALS"


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--credentials-file",
    type=click.File("r", encoding="utf-8"),
    help=f"One user:password a line (# starts a comment); instead of ${CREDENTIALS_VARIABLE}, "
    "which holds user:password pairs separated by commas. Every pair is accepted, several of "
    "one user too (a password being rotated).",
)
@click.option(
    "--max-body-bytes",
    default=MAX_BODY_BYTES,
    show_default=True,
    type=click.IntRange(min=1),
    help="A larger body is answered 413, unread (and the tracker parses no larger one).",
)
@click.option(
    "--max-queue",
    default=MAX_QUEUE,
    show_default=True,
    type=click.IntRange(min=1),
    help="Deliveries waiting to be written, at most; past it a request is answered 503 at once.",
)
@click.option(
    "--body-timeout",
    default=BODY_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="A body not complete in this time is answered 408.",
)
@click.pass_obj
def serve(
    session: Session,
    host: str,
    port: int,
    credentials_file: IO[str] | None,
    max_body_bytes: int,
    max_queue: int,
    body_timeout: float,
) -> None:
    """Serve the webhook endpoint Bandwidth calls: every POST is a callback, answered 204 once
    it is committed; GET /healthz and /metrics for the operator. Stops gracefully on SIGTERM."""
    try:
        import uvicorn

        from tracker.asgi import create_app
    except ImportError as error:
        raise click.UsageError(
            f"serving needs the serve extra ({error}); pip install 'tracker[serve]'"
        ) from error
    if credentials_file is not None:
        credentials = _credentials(credentials_file.read().splitlines(), credentials_file.name)
    else:
        variable = os.environ.get(CREDENTIALS_VARIABLE, "")
        credentials = _credentials(variable.split(","), f"${CREDENTIALS_VARIABLE}")
    if not credentials and not _is_loopback(host):
        raise click.UsageError(
            f"no credentials, so {host} would take callbacks from anyone; set "
            f"${CREDENTIALS_VARIABLE} or --credentials-file, or listen on a loopback address"
        )
    session.max_body_bytes = max_body_bytes
    tracker = session.tracker
    tracker.check()
    app = create_app(
        tracker, credentials=credentials, body_timeout=body_timeout, max_queue=max_queue
    )
    users = len({user for user, _password in credentials})
    guard = f"Basic authentication, {counted(users, 'user')}"
    if users < len(credentials):
        guard += f" ({counted(len(credentials), 'password')})"
    if not credentials:
        guard = "WITHOUT authentication (loopback only)"
    config = uvicorn.Config(
        app, host=host, port=port, access_log=False, server_header=False, lifespan="on"
    )
    listening = f"tracker: serving on http://{host}:{port} into {session.shown_url}, {guard}"

    class Server(uvicorn.Server):
        """Says where it listens once the socket is bound, not before: a taken port fails
        without a line claiming otherwise."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                click.echo(listening, err=True)

        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            """SIGTERM and SIGINT stop the server gracefully, and a graceful stop exits 0;
            uvicorn's own version raises the signal again once stopped, so the process would
            die by it."""
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {number: signal.signal(number, self.handle_exit) for number in handled}
            try:
                yield
            finally:
                for number, handler in previous.items():
                    signal.signal(number, handler)

    Server(config).run()


def _credentials(entries: Iterable[str], source: str) -> list[tuple[str, str]]:
    """(user, password) pairs, from `user:password` entries; blank entries and `#` comments are
    skipped. One user may have several (a password being rotated), and each is accepted. A bad
    entry is named by its position, never by its text: it holds a secret."""
    pairs: list[tuple[str, str]] = []
    for number, entry in enumerate(entries, start=1):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        user, colon, password = entry.partition(":")
        if not colon or not user or not password:
            raise click.UsageError(
                f"entry {number} of {source} is not user:password (both parts non-empty)"
            )
        pairs.append((user, password))
    return pairs


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
