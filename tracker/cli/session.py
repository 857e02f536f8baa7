"""The database a command works on, opened when it first needs it, and how a command fails."""

from __future__ import annotations

from functools import cached_property
from typing import Final, NoReturn

import click
from sqlalchemy.exc import ArgumentError

from tracker import Tracker
from tracker.asgi import MAX_BODY_BYTES

EXIT_NOT_FOUND: Final = 1
EXIT_SCHEMA: Final = 2
EXIT_STORAGE: Final = 3


def fail(message: str, exit_code: int) -> NoReturn:
    """End the command with one line on stderr and `exit_code`."""
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(exit_code)


class Session:
    """The database named by --db, and the tracker opened on it when a command first needs one,
    so that `--help` works whatever --db says."""

    def __init__(self, database_url: str, schema: str | None, timeout: float | None) -> None:
        self.database_url = database_url
        self.schema = schema
        self.timeout = timeout
        # `serve --max-body-bytes`, set before the tracker is opened: one limit for both.
        self.max_body_bytes = MAX_BODY_BYTES

    @cached_property
    def tracker(self) -> Tracker:
        try:
            tracker = Tracker(
                self.database_url,
                schema=self.schema,
                timeout=self.timeout,
                max_body_bytes=self.max_body_bytes,
            )
        except (ArgumentError, ValueError) as error:
            raise click.BadParameter(str(error), param_hint="'--db'") from error
        except ImportError as error:
            raise click.BadParameter(
                f"the database driver is not installed ({error}); install the extra for it, "
                "e.g. pip install 'tracker[postgresql]' or 'tracker[mysql]'",
                param_hint="'--db'",
            ) from error
        click.get_current_context().call_on_close(tracker.close)
        return tracker

    @property
    def shown_url(self) -> str:
        return self.tracker.engine.url.render_as_string(hide_password=True)
