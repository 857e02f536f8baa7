"""`tracker serve`: the webhook endpoint Bandwidth calls, served by uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from types import FrameType
from typing import IO, Final

import click

from tracker.asgi import BODY_TIMEOUT, MAX_BODY_BYTES, MAX_QUEUE
from tracker.cli.options import duration, resolve_option, resolver
from tracker.cli.output import clock, counted
from tracker.cli.session import Session
from tracker.housekeeping import SWEEP_BATCH_SIZE

CREDENTIALS_VARIABLE: Final = "TRACKER_CALLBACK_CREDENTIALS"
UI_CREDENTIALS_VARIABLE: Final = "TRACKER_UI_CREDENTIALS"


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
@click.option(
    "--sweep-every",
    metavar="DURATION",
    callback=duration,
    help="Sweep in the background this often (5m, 1h, seconds), with --sweep-older-than; of "
    "several servers on one database, one at a time sweeps.",
)
@click.option(
    "--sweep-older-than",
    metavar="DURATION",
    callback=duration,
    help="The background sweep ends live calls last heard of longer ago than this (4h, 2d).",
)
@click.option(
    "--sweep-batch-size",
    type=click.IntRange(min=1),
    default=SWEEP_BATCH_SIZE,
    show_default=True,
    metavar="N",
    help="Calls the background sweep ends per transaction; it stops between two.",
)
@click.option(
    "--ui",
    is_flag=True,
    help=f"Also serve the read-only pages (/ui/) and their JSON (/api/), behind the credentials "
    f"in ${UI_CREDENTIALS_VARIABLE} (user:password pairs separated by commas, none of them a "
    "callback pair); needs the ui extra.",
)
@resolve_option(
    "Before expiring a call, the background sweep asks the provider how it ended "
    "(credentials from the environment)."
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
    sweep_every: timedelta | None,
    sweep_older_than: timedelta | None,
    sweep_batch_size: int,
    resolve: str | None,
    ui: bool,
) -> None:
    """Serve the webhook endpoint Bandwidth calls: every POST is a callback, answered 204 once
    it is committed; GET /healthz and /metrics for the operator. Stops gracefully on SIGTERM.

    With --sweep-every and --sweep-older-than it also ends, in the background, the calls whose
    terminal callback was lost (as `tracker sweep` does), asking Bandwidth first with --resolve
    bandwidth. Of several servers on one database, one at a time sweeps: the one holding the
    lease `sweep` in the database, which it keeps from round to round; another takes over when
    it stops (SIGTERM gives it up at once) or dies (once it expires: three sweep periods, at
    least 30 s, at most 15 minutes). On SIGTERM the sweep stops between two transactions. Each
    round that looked at calls says what it did in one line on stderr.

    With --ui it also serves pages to look at calls (live calls, one call, recent calls, the last
    day's numbers) and the JSON they read, behind credentials of their own.
    """
    if (sweep_every is None) != (sweep_older_than is None):
        given, missing = "--sweep-every", "--sweep-older-than"
        if sweep_every is None:
            given, missing = missing, given
        raise click.UsageError(
            f"{given} needs {missing}: the background sweep runs every --sweep-every and ends "
            "the calls last heard of longer ago than --sweep-older-than"
        )
    if resolve is not None and sweep_every is None:
        raise click.UsageError(
            "--resolve is for the background sweep: give --sweep-every and --sweep-older-than too"
        )
    try:
        import uvicorn

        from tracker.asgi import create_app
        from tracker.sweeping import BackgroundSweep
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
    ui_credentials = _ui_credentials(credentials) if ui else None
    resolving = resolver(resolve)
    session.max_body_bytes = max_body_bytes
    tracker = session.tracker
    tracker.check()
    sweep = None
    if sweep_every is not None and sweep_older_than is not None:
        sweep = BackgroundSweep(
            tracker,
            every=sweep_every,
            older_than=sweep_older_than,
            resolve=resolving,
            batch_size=sweep_batch_size,
        )
        _say_sweeps_on_stderr()
    app = create_app(
        tracker,
        credentials=credentials,
        body_timeout=body_timeout,
        max_queue=max_queue,
        sweep=sweep,
        ui_credentials=ui_credentials,
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
    if ui_credentials is not None:
        listening += f"; pages on http://{host}:{port}/ui/"
    if sweep is not None:
        listening += (
            f"; sweeping every {clock(sweep.every)} the calls older than "
            f"{clock(sweep.older_than)}{' (asking Bandwidth first)' if resolve else ''}, "
            f"as {sweep.holder}"
        )

    class Server(uvicorn.Server):
        """Says where it listens once the socket is bound, not before: a taken port fails
        without a line claiming otherwise."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                click.echo(listening, err=True)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            """The sweep is told at once, so that it stops while the requests under way end."""
            if sweep is not None:
                sweep.request_stop()
            super().handle_exit(sig, frame)

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

    try:
        Server(config).run()
    finally:
        close = getattr(resolving, "close", None)
        if close is not None:
            close()


def _say_sweeps_on_stderr() -> None:
    """The background sweep's lines (logger `tracker.sweeping`) on stderr, as the server's own
    are: uvicorn configures only its own loggers."""
    logger = logging.getLogger("tracker.sweeping")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("tracker: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


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


def _ui_credentials(callback: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pages' credentials, from their variable: required, and apart from the callback ones,
    since whoever posts callbacks must not read the phone numbers the pages show."""
    try:
        import tracker.ui  # noqa: F401
    except ImportError as error:
        raise click.UsageError(
            f"--ui needs the ui extra ({error}); pip install 'tracker[ui]'"
        ) from error
    variable = os.environ.get(UI_CREDENTIALS_VARIABLE, "")
    pairs = _credentials(variable.split(","), f"${UI_CREDENTIALS_VARIABLE}")
    if not pairs:
        raise click.UsageError(
            f"--ui needs ${UI_CREDENTIALS_VARIABLE} (user:password pairs separated by commas): "
            "the pages show phone numbers, so they never serve without credentials of their own"
        )
    if variable.strip() == os.environ.get(CREDENTIALS_VARIABLE, "").strip() or any(
        pair in callback for pair in pairs
    ):
        raise click.UsageError(
            f"${UI_CREDENTIALS_VARIABLE} holds callback credentials: whoever posts callbacks "
            "(Bandwidth) must not read the pages; give the pages a user:password of their own"
        )
    return pairs


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
