"""The `tracker` command line: a thin shell over the `Tracker` facade.

People get rich tables, a leg tree and a progress bar; scripts get `--json`, which prints one
JSON document and nothing else on stdout (`reconcile`: one per line, as its pages come). The
tracker's own failures end in one line on stderr and an exit code a script can test, never in
a traceback.

One module per group of commands, each calling the facade: `calls` (show, calls, events),
`ingest`, `stats`, `follow`, `export`, `serve`, `housekeeping` (sweep, prune, redrive,
rebuild), `reconcile` and `schema` (upgrade); `session`, `options` and `output` are what they
share.
"""

from __future__ import annotations

from typing import Any

import click

from tracker import DEFAULT_DATABASE_URL, SchemaError, StorageError
from tracker.cli import calls, export, follow, housekeeping, ingest, reconcile, schema, serve, stats
from tracker.cli.ingest import CHUNK_SIZE
from tracker.cli.serve import CREDENTIALS_VARIABLE
from tracker.cli.session import EXIT_NOT_FOUND, EXIT_SCHEMA, EXIT_STORAGE, Session, fail
from tracker.tracker import DEFAULT_TIMEOUT

__all__ = [
    "CHUNK_SIZE",
    "CREDENTIALS_VARIABLE",
    "EXIT_NOT_FOUND",
    "EXIT_SCHEMA",
    "EXIT_STORAGE",
    "cli",
    "main",
]


class _TrackerGroup(click.Group):
    """Ends every command that meets a tracker error with one line on stderr and its exit code,
    and is the `tracker` console script itself."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SchemaError as error:
            fail(str(error), EXIT_SCHEMA)
        except StorageError as error:
            fail(str(error), EXIT_STORAGE)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        # Called as the console script, or as `python -m tracker.cli`, or by a test's child
        # interpreter: usage lines say `tracker` whatever sys.argv[0] holds.
        kwargs.setdefault("prog_name", "tracker")
        return super().main(*args, **kwargs)


@click.group("tracker", cls=_TrackerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    "database_url",
    envvar="TRACKER_DATABASE_URL",
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    show_envvar=True,
    metavar="URL",
    help="SQLAlchemy database URL, e.g. postgresql+psycopg://user@host/calls.",
)
@click.option(
    "--schema",
    envvar="TRACKER_DATABASE_SCHEMA",
    default=None,
    show_envvar=True,
    metavar="NAME",
    help="PostgreSQL only: keep the tracker's tables in this schema, apart from the host's.",
)
@click.option(
    "--timeout",
    envvar="TRACKER_DATABASE_TIMEOUT",
    default=DEFAULT_TIMEOUT,
    show_default=True,
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Longest wait of a delivery for a lock, a statement or a silent database server.",
)
@click.version_option(package_name="tracker")
@click.pass_context
def cli(ctx: click.Context, database_url: str, schema: str | None, timeout: float) -> None:
    """Follow Bandwidth Voice calls: apply callback bodies, then look at calls and their legs.

    Exit codes: 0 done; 1 call not found; 2 usage error, or the database schema needs
    `tracker upgrade`; 3 the database failed; 4 Bandwidth's API failed (reconcile).
    """
    ctx.obj = Session(database_url, schema, timeout)


for _command in (
    schema.upgrade,
    ingest.ingest,
    calls.show,
    calls.calls,
    calls.events,
    stats.stats,
    follow.follow,
    housekeeping.redrive,
    housekeeping.rebuild,
    housekeeping.sweep,
    housekeeping.prune,
    reconcile.reconcile,
    export.export,
    serve.serve,
):
    cli.add_command(_command)

# The console script (`tracker = "tracker.cli:main"`) and the command the reference is
# generated from: the group itself.
main = cli
