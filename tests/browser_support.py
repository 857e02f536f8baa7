"""Shared by the pages' tests (tests/test_ui*.py): a `tracker serve --ui` process, its
credentials, and a headless Chromium that records what a page does.

The browser is Debian's `chromium` (.ci/run installs it), driven by playwright and launched
from its own path: nothing is downloaded. Every page a test opens is watched: each request it
makes is recorded (and one for any host but 127.0.0.1 is refused), and every console error and
uncaught exception is kept, so that a test can say that none happened.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.http_server import Server, migrate
from tests.http_support import CREDENTIALS, OLD

CHROMIUM = "/usr/bin/chromium"
UI_VARIABLE = "TRACKER_UI_CREDENTIALS"
UI_USER = ("operator", "l00k:ing-glass")
UI_CREDENTIALS = f"{UI_USER[0]}:{UI_USER[1]}"
CALLBACK_USER = OLD
CALLBACK_PATH = "/bandwidth/voice/status"
# The screenshots of docs/ui.md are written only when asked: a run in CI must not change the
# tree it tests.
SCREENSHOTS = os.environ.get("TRACKER_UI_SCREENSHOTS") == "1"


@dataclass
class UiServer(Server):
    """`tracker serve --ui` with the pages' credentials in their variable."""

    ui_credentials: str | None = UI_CREDENTIALS
    credentials: str | None = CREDENTIALS
    serve_options: tuple[str, ...] = ("--ui",)

    def launch(self) -> None:
        with _environment(UI_VARIABLE, self.ui_credentials):
            super().launch()

    def post(self, body: bytes) -> httpx.Response:
        """One callback, as Bandwidth posts it; fails unless it was applied."""
        response = httpx.post(self.url(CALLBACK_PATH), content=body, auth=CALLBACK_USER)
        assert response.status_code == 204, response.text
        return response

    def get(self, path: str, auth: tuple[str, str] | None = UI_USER) -> httpx.Response:
        return httpx.get(self.url(path), auth=auth, timeout=30.0)


def running_ui(database_url: str, directory: Path) -> Iterator[UiServer]:
    """`tracker serve --ui` on `database_url`, migrated first, started; closed afterwards."""
    migrate(database_url)
    server = UiServer(database_url, directory)
    try:
        yield server.start()
    finally:
        server.close()


@contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    previous = os.environ.pop(name, None)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
        if previous is not None:
            os.environ[name] = previous


@dataclass
class Watched:
    """A page and what it did: the URLs it requested, its console errors, its uncaught
    exceptions and the dialogs it tried to open (an injected `alert` would be one)."""

    page: Any
    requests: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.refused == [], f"requests left 127.0.0.1: {self.refused}"
        assert all(urlsplit(url).hostname == "127.0.0.1" for url in self.requests)
        assert self.errors == [], f"console errors: {self.errors}"
        assert self.dialogs == [], f"dialogs opened: {self.dialogs}"


def watch(context: Any) -> Watched:
    """A new page of `context` with every request routed through a recorder."""
    page = context.new_page()
    watched = Watched(page)

    def route(route: Any) -> None:
        url = route.request.url
        watched.requests.append(url)
        if urlsplit(url).hostname != "127.0.0.1":
            watched.refused.append(url)
            route.abort()
        else:
            route.continue_()

    def dialog(dialog: Any) -> None:
        watched.dialogs.append(dialog.message)
        dialog.dismiss()

    page.route("**/*", route)
    page.on(
        "console", lambda message: message.type == "error" and watched.errors.append(message.text)
    )
    page.on("pageerror", lambda error: watched.errors.append(f"uncaught: {error}"))
    page.on("dialog", dialog)
    return watched
