"""`tracker upgrade`: the tracker's tables created or migrated."""

from __future__ import annotations

import click

from tracker.cli.session import Session


@click.command()
@click.pass_obj
def upgrade(session: Session) -> None:
    """Create or migrate the tracker's tables. Safe to run again, and from many hosts at once."""
    done = session.tracker.upgrade()
    before, head = done.from_revision, done.to_revision
    if not done.changed:
        click.echo(f"The tracker schema in {session.shown_url} is already at revision {head}.")
    else:
        click.echo(
            f"Upgraded the tracker schema in {session.shown_url} "
            f"from {f'revision {before}' if before else 'nothing'} to revision {head}."
        )
