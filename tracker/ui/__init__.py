"""Read-only pages to look at calls, and the JSON they read (`tracker serve --ui`).

`/ui/` shows the calls ringing and talking now, updating without a reload; `/ui/calls` the
recent calls, filtered and paged, and a search by call id or number; `/ui/calls/{id}` one call
with its legs, its history and every delivery received for it; `/ui/stats` the last 24 hours'
figures with their plot. `/api/live`, `/api/calls`, `/api/calls/{id}` and `/api/stats` are the
same facts as JSON (docs/ui.md).

The pages show phone numbers, so they take credentials of their own, never the callback ones:
an account that can post callbacks (Bandwidth's) must not read them. Everything they load
ships in this package (templates, one script, one style sheet); the Content-Security-Policy
allows nothing else, and every fact of a call, the attacker-controllable `tag` included, is
escaped by the templates or set as text by the script.

Needs the `ui` extra (`pip install 'tracker[ui]'`: Jinja2 and Starlette); the plot needs the
`plot` extra too, and the stats page says so when it is missing.
"""

from __future__ import annotations

from tracker.ui._app import (
    API_PREFIX,
    LIVE_LIMIT,
    LIVE_REFRESH,
    PAGES_PREFIX,
    STATS_REFRESH,
    create_ui_app,
    is_ui_path,
)

__all__ = [
    "API_PREFIX",
    "LIVE_LIMIT",
    "LIVE_REFRESH",
    "PAGES_PREFIX",
    "STATS_REFRESH",
    "create_ui_app",
    "is_ui_path",
]
