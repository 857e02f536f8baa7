"""Ask Bandwidth itself how a call ended, with its official SDK (extra `tracker[bandwidth]`).

Bandwidth sends a terminal callback once, and again only when it could not connect: a
`disconnect` answered with a timeout or a 5xx is lost, and the call would stay live here until
the sweep expired it with no cause and no end. Bandwidth's call state API keeps every call for
`KEPT_DAYS` days, so the tracker asks it instead: `BandwidthResolver` is the sweep's `resolve`
hook (`tracker sweep --resolve bandwidth`), and `BandwidthClient.list_calls` pages through the
calls of a window for reconcile. What an answer says is read by `tracker.provider`; this module
only asks, through `bandwidth-sdk`'s `CallsApi`.

Configuration comes from the environment only, never the command line, so no secret lands in a
shell history or a process list:

- `BANDWIDTH_USERNAME` and `BANDWIDTH_PASSWORD` (HTTP Basic), or `BANDWIDTH_CLIENT_ID` and
  `BANDWIDTH_CLIENT_SECRET` (OAuth2 client credentials: the SDK fetches and renews the bearer
  token itself). One pair, complete; missing, half-set or both: a `ProviderError` naming the
  variables.
- `BANDWIDTH_ACCOUNT_ID`: the account to ask for a call whose own account is not known.
- `TRACKER_BANDWIDTH_API_URL`: the Voice API's base URL, `https://voice.bandwidth.com/api/v2`
  unless set (a proxy, a test's fake). When set, the OAuth2 token is fetched from the same
  origin, at `/api/v1/oauth2/token` (Bandwidth's own token path), instead of
  `https://api.bandwidth.com/api/v1/oauth2/token`: whatever stands in for the API serves both.

Every request has a timeout; at most `concurrency` are in flight at once; a 429 is honoured (no
request before its `Retry-After` has passed, for any thread; a 503's too), and a 429, a 5xx, a
timeout or a lost connection is tried again a bounded number of times with exponential backoff,
then raised as a `ProviderError`. Refused credentials (401, 403) are raised at once, `refused=True`:
asking again will not help. urllib3's own retries are off, so every attempt is counted here
(`BandwidthClient.requests`). A failed look-up never expires a call: the sweep keeps it live
and asks again next time.

Secrets never appear in a repr, an error message or a log line: the settings show which pair
of variables is in use, not their values.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import parse_qs, urlsplit

try:
    import urllib3
    from bandwidth import ApiClient, Configuration
    from bandwidth.api.calls_api import CallsApi
    from bandwidth.exceptions import ApiException
except ImportError as missing:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "tracker.bandwidth needs the Bandwidth SDK, which is not installed; install it with "
        "pip install 'tracker[bandwidth]'"
    ) from missing

from tracker.errors import check_window
from tracker.instants import as_utc, text
from tracker.provider import KEPT_DAYS, ProviderCall, ProviderError, read_call_state
from tracker.records import Call

__all__ = [
    "DEFAULT_API_URL",
    "OUTCOMES",
    "BandwidthClient",
    "BandwidthResolver",
    "BandwidthSettings",
    "next_page_token",
    "resolver_from_environment",
    "retry_after_seconds",
]

DEFAULT_API_URL: Final = "https://voice.bandwidth.com/api/v2"
# Bandwidth's token endpoint's path; on `DEFAULT_API_URL` the SDK's own default URL is used.
TOKEN_PATH: Final = "/api/v1/oauth2/token"

USERNAME: Final = "BANDWIDTH_USERNAME"
PASSWORD: Final = "BANDWIDTH_PASSWORD"
CLIENT_ID: Final = "BANDWIDTH_CLIENT_ID"
CLIENT_SECRET: Final = "BANDWIDTH_CLIENT_SECRET"
ACCOUNT_ID: Final = "BANDWIDTH_ACCOUNT_ID"
API_URL: Final = "TRACKER_BANDWIDTH_API_URL"

OUTCOMES: Final = ("ok", "not_found", "retried", "failed", "refused")
"""What became of each request, as `BandwidthClient.requests` counts them: `ok` (answered),
`not_found` (404: Bandwidth does not know the call), `retried` (a 429, 5xx, timeout or lost
connection, asked again), `failed` (the last attempt of a failed look-up, or an answer that
cannot be used), `refused` (401 or 403: the credentials)."""

# Bandwidth's page size when a request names none, and the largest it accepts.
DEFAULT_PAGE_SIZE: Final = 1000
MAX_PAGE_SIZE: Final = 10_000
# A bearer token is fetched again this long before it expires, more than the SDK's own margin
# (60 s), so the SDK never fetches one itself from a thread this module does not hold back.
_TOKEN_MARGIN: Final = 120
# How much of an error answer a `ProviderError` quotes.
_QUOTED: Final = 200


@dataclass(frozen=True)
class BandwidthSettings:
    """Where Bandwidth's Voice API is and how to sign in: one complete pair of credentials,
    HTTP Basic (`username`, `password`) or OAuth2 client credentials (`client_id`,
    `client_secret`). Read them with `from_environment`; a `ProviderError` (`refused=True`)
    names the variables to set when the pair is missing, half-set or doubled. The repr shows
    which pair is in use, never the values."""

    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    client_id: str | None = field(default=None, repr=False)
    client_secret: str | None = field(default=None, repr=False)
    account_id: str | None = None
    api_url: str = DEFAULT_API_URL

    def __post_init__(self) -> None:
        basic = (self.username, self.password)
        oauth = (self.client_id, self.client_secret)
        for name, value in (
            (USERNAME, self.username),
            (PASSWORD, self.password),
            (CLIENT_ID, self.client_id),
            (CLIENT_SECRET, self.client_secret),
            (ACCOUNT_ID, self.account_id),
        ):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ProviderError(f"{name} is set but empty: give it a value", refused=True)
        if any(basic) and any(oauth):
            raise ProviderError(
                f"both HTTP Basic ({USERNAME}, {PASSWORD}) and OAuth2 ({CLIENT_ID}, "
                f"{CLIENT_SECRET}) credentials are set: unset one pair",
                refused=True,
            )
        for pair in ((USERNAME, PASSWORD, basic), (CLIENT_ID, CLIENT_SECRET, oauth)):
            first, second, values = pair
            if any(values) and not all(values):
                unset = first if values[0] is None else second
                raise ProviderError(
                    f"{unset} is not set: {first} and {second} go together", refused=True
                )
        if not any(basic) and not any(oauth):
            raise ProviderError(
                f"no Bandwidth credentials: set {USERNAME} and {PASSWORD} (HTTP Basic), or "
                f"{CLIENT_ID} and {CLIENT_SECRET} (OAuth2 client credentials)",
                refused=True,
            )
        object.__setattr__(self, "api_url", _checked_url(self.api_url))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> BandwidthSettings:
        """The settings the environment gives (`os.environ` unless `environ`): the variables
        this module's docstring lists. A variable set to an empty string counts as unset."""
        environ = os.environ if environ is None else environ

        def read(name: str) -> str | None:
            value = environ.get(name, "").strip()
            return value or None

        return cls(
            username=read(USERNAME),
            password=read(PASSWORD),
            client_id=read(CLIENT_ID),
            client_secret=read(CLIENT_SECRET),
            account_id=read(ACCOUNT_ID),
            api_url=read(API_URL) or DEFAULT_API_URL,
        )

    @property
    def auth(self) -> Literal["basic", "oauth2"]:
        """Which pair of credentials is in use."""
        return "oauth2" if self.client_id is not None else "basic"

    @property
    def credential_variables(self) -> tuple[str, str]:
        """The names of the two variables that hold the credentials in use."""
        return (CLIENT_ID, CLIENT_SECRET) if self.auth == "oauth2" else (USERNAME, PASSWORD)

    @property
    def token_url(self) -> str | None:
        """Where the OAuth2 token is fetched: on the origin of `api_url` when it is not
        Bandwidth's own, else None (the SDK's default, Bandwidth's token endpoint)."""
        if self.api_url == DEFAULT_API_URL:
            return None
        parts = urlsplit(self.api_url)
        return f"{parts.scheme}://{parts.netloc}{TOKEN_PATH}"

    def __repr__(self) -> str:
        return (
            f"BandwidthSettings(api_url={self.api_url!r}, account_id={self.account_id!r}, "
            f"auth={self.auth!r})"
        )

    __str__ = __repr__


def _checked_url(url: str) -> str:
    """`url` without a trailing slash, when it is an http(s) URL with a host and no
    credentials in it; a `ProviderError` saying which otherwise (never quoting a URL that
    holds credentials)."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ProviderError(
            f"{API_URL} holds credentials: remove them from the URL and set {USERNAME} and "
            f"{PASSWORD}, or {CLIENT_ID} and {CLIENT_SECRET}",
            refused=True,
        )
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ProviderError(
            f"{API_URL}={url!r} is not a base URL such as {DEFAULT_API_URL}", refused=True
        )
    return url.rstrip("/")


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    headers: Mapping[str, str]


class BandwidthClient:
    """Bandwidth's Voice API, asked through `bandwidth-sdk`'s `CallsApi` with bounds: each
    request times out after `timeout` seconds; at most `concurrency` are in flight at once
    (threads beyond wait their turn); a 429, a 5xx, a timeout or a lost connection is tried
    up to `attempts` times in all, waiting `backoff` seconds and twice as long each time after
    (at most `max_backoff`), or as long as the `Retry-After` of a 429 or a 503 says (for every
    thread: none asks before then). A `Retry-After` longer than `max_retry_after` is not waited
    for: the look-up fails at once. Thread-safe: share one client between threads. Close it
    (or use it as a context manager) to close its connections.

    Use `BandwidthResolver` for the sweep; this class for any other question."""

    def __init__(
        self,
        settings: BandwidthSettings,
        *,
        timeout: float = 10.0,
        concurrency: int = 4,
        attempts: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_after: float = 60.0,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        if not isinstance(settings, BandwidthSettings):
            raise TypeError(
                f"settings must be BandwidthSettings, e.g. BandwidthSettings.from_environment(); "
                f"got {type(settings).__name__}"
            )
        for name, value in (("timeout", timeout), ("max_retry_after", max_retry_after)):
            _check_seconds(name, value, positive=True)
        for name, value in (("backoff", backoff), ("max_backoff", max_backoff)):
            _check_seconds(name, value, positive=False)
        for name, count in (("concurrency", concurrency), ("attempts", attempts)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{name} must be a whole number of at least 1; got {count!r}")
        if (
            isinstance(page_size, bool)
            or not isinstance(page_size, int)
            or not 1 <= page_size <= MAX_PAGE_SIZE
        ):
            raise ValueError(f"page_size must be 1 to {MAX_PAGE_SIZE}; got {page_size!r}")
        self.settings = settings
        self.timeout = float(timeout)
        self.concurrency = concurrency
        self.attempts = attempts
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_retry_after = float(max_retry_after)
        self.page_size = page_size
        self._slots = threading.BoundedSemaphore(concurrency)
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self._token_lock = threading.Lock()
        self._pause_lock = threading.Lock()
        self._not_before = 0.0
        self._configuration = _configuration(settings, concurrency)
        self._token_configuration = (
            None
            if settings.auth == "basic"
            else Configuration(
                client_id=settings.client_id,
                client_secret=settings.client_secret,
                access_token_url=settings.token_url,
            )
        )
        self._api_client = ApiClient(self._configuration)
        self._calls = CallsApi(self._api_client)

    def __repr__(self) -> str:
        return (
            f"BandwidthClient({self.settings!r}, timeout={self.timeout}, "
            f"concurrency={self.concurrency}, attempts={self.attempts})"
        )

    @property
    def requests(self) -> Counter[str]:
        """How many requests ended each way so far, by outcome (`OUTCOMES`), a copy: one
        count per request sent to the Voice API (each retry counts), and one per refusal of
        the OAuth2 token endpoint; none for a question not asked (a token fetched is not
        counted: the SDK fetches it, and it is fetched once an hour)."""
        with self._counts_lock:
            return Counter(self._counts)

    def close(self) -> None:
        """Close the connections kept open to Bandwidth."""
        self._api_client.rest_client.pool_manager.clear()

    def __enter__(self) -> BandwidthClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- the two questions ------------------------------------------------------------------

    def call_state(self, call_id: str, account_id: str | None = None) -> str | None:
        """Bandwidth's call state document for `call_id` of `account_id` (else the settings'
        account), as the JSON text Bandwidth answered, in its camelCase spelling: what
        `tracker.provider.read_call_state` reads, and what the log keeps as the provider's
        answer. None when Bandwidth does not know the call (404: never made there, or more than
        `KEPT_DAYS` days ago). A `ProviderError` when the look-up failed, when the answer is not
        this call's state, or when no account is known."""
        if not isinstance(call_id, str) or not call_id:
            raise ValueError(f"call_id must be a non-empty string; got {call_id!r}")
        account = self._account(account_id, f"call {call_id}")
        subject = f"Bandwidth's state of call {call_id} (account {account})"
        answer = self._ask(
            subject,
            partial(
                self._calls.get_call_state_without_preload_content,
                account,
                call_id,
                _request_timeout=self.timeout,
            ),
        )
        if answer is None:
            return None
        document = answer.body.decode("utf-8", errors="replace")
        try:
            found = read_call_state(document)
        except ValueError as error:
            self._count("failed")
            raise ProviderError(f"{subject}: {error}") from None
        if found.call_id != call_id:
            self._count("failed")
            raise ProviderError(f"{subject}: the answer is the state of call {found.call_id}")
        self._count("ok")
        return document

    def list_calls(
        self, account_id: str | None, since: datetime, until: datetime | None = None
    ) -> Iterator[list[ProviderCall]]:
        """The calls of `account_id` (else the settings' account) that started in `[since,
        until)` (`until` None: up to now), as Bandwidth lists them, one list per page of
        `page_size`: every `Link: <...>; rel="next"` page is followed, and only one page is
        held at a time, however many calls the window has. A `ProviderError` when a page could
        not be had or holds something that is not a call state: the pages already given stand.
        Bandwidth keeps calls `KEPT_DAYS` days: a window reaching further back lists only what
        it still has. The window and the account are checked at once, before any request."""
        check_window(since, until)
        account = self._account(account_id, "the call list")
        return self._pages(account, since, until)

    def _pages(
        self, account: str, since: datetime, until: datetime | None
    ) -> Iterator[list[ProviderCall]]:
        window = f"from {text(since)}" + (f" to {text(until)}" if until is not None else "")
        subject = f"Bandwidth's list of calls of account {account} {window}"
        token: str | None = None
        page_number = 0
        while True:
            page_number += 1
            asked_with = token
            answer = self._ask(
                f"{subject}, page {page_number}",
                partial(
                    self._calls.list_calls_without_preload_content,
                    account,
                    min_start_time=text(since, "milliseconds"),
                    max_start_time=None if until is None else text(until, "milliseconds"),
                    page_size=self.page_size,
                    page_token=asked_with,
                    _request_timeout=self.timeout,
                ),
            )
            if answer is None:
                raise ProviderError(f"{subject}: Bandwidth does not know account {account}")
            page = self._calls_of(answer, f"{subject}, page {page_number}")
            wanted = [
                call
                for call in page
                if call.start_time is None
                or (since <= call.start_time and (until is None or call.start_time < until))
            ]
            if wanted:
                yield wanted
            token = next_page_token(answer.headers.get("Link"))
            if token is None:
                return
            if token == asked_with:
                raise ProviderError(f"{subject}: page {page_number} links to itself")

    # --- asking -----------------------------------------------------------------------------

    def _account(self, account_id: str | None, subject: str) -> str:
        if account_id is not None and (not isinstance(account_id, str) or not account_id):
            raise ValueError(f"account_id must be a non-empty string or None; got {account_id!r}")
        account = account_id or self.settings.account_id
        if account is None:
            raise ProviderError(
                f"the account of {subject} is not known: set {ACCOUNT_ID} to the Bandwidth "
                "account to ask"
            )
        return account

    def _calls_of(self, answer: _Answer, subject: str) -> list[ProviderCall]:
        try:
            items = json.loads(answer.body)
            if not isinstance(items, list):
                raise ValueError(f"a JSON array of call states was expected, not {items!r:.40}")
            calls = [read_call_state(item) for item in items]
        except ValueError as error:
            self._count("failed")
            raise ProviderError(f"{subject}: {error}") from None
        self._count("ok")
        return calls

    def _ask(self, subject: str, send: Callable[[], Any]) -> _Answer | None:
        """One question, asked up to `attempts` times: the answer (a 2xx, not yet counted: the
        caller counts it once it could use it), None for a 404, else a `ProviderError`."""
        renew: str | None = None
        for attempt in range(1, self.attempts + 1):
            self._wait_for_pause()
            used: str | None = None
            with self._slots:
                try:
                    used = self._bearer_token(subject, renew)
                    answer = _sent(send)
                except (urllib3.exceptions.HTTPError, OSError, ApiException) as error:
                    failure = f"no answer ({_described(error)})"
                    wait = self._backoff(attempt)
                    answer = None
            renew = None
            if answer is not None:
                status = answer.status
                if 200 <= status < 300:
                    return answer
                if status == 404:
                    self._count("not_found")
                    return None
                if status == 401 and used is not None and attempt < self.attempts:
                    # A bearer token can be revoked before it expires: fetch another, once.
                    renew = used
                    self._count("retried")
                    continue
                if status in (401, 403):
                    self._count("refused")
                    first, second = self.settings.credential_variables
                    raise ProviderError(
                        f"{subject}: Bandwidth refused the credentials in {first} and {second} "
                        f"({status} {_quoted(answer.body)}); check them, and that they may "
                        "read this account",
                        refused=True,
                    )
                failure = f"{status} {_quoted(answer.body)}"
                if status != 429 and status != 408 and status < 500:
                    self._count("failed")
                    raise ProviderError(f"{subject}: Bandwidth answered {failure}")
                told = None
                if status in (429, 503):
                    told = retry_after_seconds(answer.headers.get("Retry-After"))
                if told is not None and told > self.max_retry_after:
                    self._count("failed")
                    raise ProviderError(
                        f"{subject}: Bandwidth answered {failure} and asks to wait "
                        f"{told:.0f} s, longer than the {self.max_retry_after:.0f} s this client "
                        "waits; the next sweep asks again"
                    )
                wait = self._backoff(attempt) if told is None else told
                if status == 429 or told is not None:
                    # A limit on the account, not on this request: every thread waits.
                    self._pause(wait)
            if attempt == self.attempts:
                self._count("failed")
                raise ProviderError(
                    f"{subject}: {failure}, after {self.attempts} attempt"
                    f"{'s' if self.attempts > 1 else ''}; the next sweep asks again"
                )
            self._count("retried")
            time.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff * 2.0 ** (attempt - 1), self.max_backoff)

    def _pause(self, seconds: float) -> None:
        """No request, from any thread, before `seconds` from now (a 429's `Retry-After`)."""
        with self._pause_lock:
            self._not_before = max(self._not_before, time.monotonic() + seconds)

    def _wait_for_pause(self) -> None:
        while True:
            with self._pause_lock:
                left = self._not_before - time.monotonic()
            if left <= 0:
                return
            time.sleep(left)

    def _bearer_token(self, subject: str, refused: str | None) -> str | None:
        """With OAuth2, the bearer token the next request carries (None with HTTP Basic):
        fetched again when missing, about to expire, or the one just `refused`. One thread
        fetches at a time, through the SDK's own `Configuration.get_access_token` on a
        configuration kept for that, and the token is then set on the one the requests use,
        whose cache the SDK reads: the SDK never fetches one itself mid-request. The SDK
        fetches with urllib3's defaults (a 3 s timeout, 3 retries)."""
        if self._token_configuration is None:
            return None
        configuration = self._configuration
        with self._token_lock:
            token: str | None = configuration.temp_access_token
            expires = configuration.temp_access_token_expiration
            if token and token != refused and expires > time.time() + _TOKEN_MARGIN:
                return token
            fetcher = self._token_configuration
            fetcher.temp_access_token = None
            try:
                fetcher.get_access_token()
            except KeyError:
                # The token endpoint answered JSON without a token: it refused the client.
                self._count("refused")
                first, second = self.settings.credential_variables
                raise ProviderError(
                    f"{subject}: Bandwidth's token endpoint refused the OAuth2 client "
                    f"credentials in {first} and {second}; check them",
                    refused=True,
                ) from None
            except (ValueError, TypeError) as error:
                # Not a JSON object: a proxy's or a failing server's page. No answer, then.
                raise urllib3.exceptions.HTTPError(
                    f"the token endpoint's answer is not a token ({type(error).__name__})"
                ) from None
            # The expiry first: a request reading both between the two writes takes the old
            # token, still valid (renewed `_TOKEN_MARGIN` early), never fetching its own.
            configuration.temp_access_token_expiration = fetcher.temp_access_token_expiration
            configuration.temp_access_token = fetcher.temp_access_token
            return str(fetcher.temp_access_token)

    def _count(self, outcome: str) -> None:
        with self._counts_lock:
            self._counts[outcome] += 1


def _configuration(settings: BandwidthSettings, concurrency: int) -> Configuration:
    """The SDK's configuration: the base URL for every operation (each has Bandwidth's own
    URL built in unless `ignore_operation_servers`), the credentials, a connection pool as
    large as the concurrency, and no retries of urllib3's own: this module counts its own."""
    configuration = Configuration(
        host=settings.api_url,
        ignore_operation_servers=True,
        username=settings.username,
        password=settings.password,
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        access_token_url=settings.token_url,
        retries=False,
    )
    configuration.connection_pool_maxsize = concurrency
    return configuration


def _sent(send: Callable[[], Any]) -> _Answer:
    """Send one request through the SDK (its `*_without_preload_content` variant: the raw
    answer, any status, as Bandwidth wrote it) and read the whole answer."""
    response = send()
    try:
        body = response.data
        return _Answer(response.status, body, response.headers)
    finally:
        response.release_conn()


def _described(error: BaseException) -> str:
    """What went wrong with a request, briefly; urllib3 wraps the cause in its own errors."""
    reason = getattr(error, "reason", None)
    if isinstance(reason, BaseException):
        error = reason
    if isinstance(error, urllib3.exceptions.TimeoutError | TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}"[:_QUOTED]


def _quoted(body: bytes) -> str:
    """An error answer's own words: Bandwidth's `description`, else the body's start."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("description"), str):
        said = document["description"]
    else:
        said = body[:_QUOTED].decode("utf-8", errors="replace")
    said = " ".join(said.split())[:_QUOTED]
    return f"({said})" if said else "(no body)"


def _check_seconds(name: str, value: object, *, positive: bool) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not (value > 0 if positive else value >= 0):  # type: ignore[operator]
        bound = "more than 0" if positive else "0 or more"
        raise ValueError(f"{name} must be a number of seconds, {bound}; got {value!r}")


def next_page_token(link: str | None) -> str | None:
    """The `pageToken` of the `rel="next"` link in a `Link` header (RFC 8288: several links,
    each with parameters, quoted values that may hold commas and semicolons, `rel` quoted or
    not and possibly naming several relations); None when there is no next page. A next link
    without a `pageToken` is a `ProviderError`."""
    for target, parameters in _links(link or ""):
        relations = parameters.get("rel", "").lower().split()
        if "next" in relations:
            tokens = parse_qs(urlsplit(target).query).get("pageToken")
            if not tokens or not tokens[-1]:
                raise ProviderError(f"Bandwidth's next page link has no pageToken: {target!r}")
            return tokens[-1]
    return None


_TARGET: Final = re.compile(r"\s*,?\s*<([^>]*)>")
_PARAMETER: Final = re.compile(r'\s*;\s*([^\s=;,]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^;,\s]*)))?')


def _links(header: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Each link of a `Link` header: its target and its parameters (names in lower case, the
    first of a name kept, as RFC 8288 says). Stops at the first thing that is not a link."""
    position = 0
    while True:
        target = _TARGET.match(header, position)
        if target is None:
            return
        position = target.end()
        parameters: dict[str, str] = {}
        while (parameter := _PARAMETER.match(header, position)) is not None:
            position = parameter.end()
            name, quoted, bare = parameter.groups()
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare or ""
            parameters.setdefault(name.lower(), value)
        yield target.group(1), parameters


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """How long a `Retry-After` header asks to wait, in seconds: a number of seconds, or an
    HTTP date (then from `now`, by default the clock); None when absent or unreadable. A date
    already past is 0."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds == float("inf"):
        return None
    return max(seconds, 0.0)


class BandwidthResolver:
    """The sweep's `resolve` hook on Bandwidth: `resolver(call)` is Bandwidth's call state
    document for a live call the sweep is about to expire (JSON text in Bandwidth's spelling),
    which the sweep applies: disconnected there, it ends the call with Bandwidth's facts;
    active there, it keeps the call live. None when Bandwidth does not know the call (404), or
    without asking when the call started more than `KEPT_DAYS` days ago (Bandwidth no longer
    has it): the sweep expires it. A `ProviderError` when the look-up failed: the sweep keeps
    the call live for the next sweep to ask again.

    Thread-safe: the sweep calls it from `concurrency` threads at once. The call's own account
    is asked, else `BANDWIDTH_ACCOUNT_ID`. `tracker sweep --resolve bandwidth` builds one with
    `from_environment`."""

    def __init__(
        self, client: BandwidthClient, *, now: Callable[[], datetime] | None = None
    ) -> None:
        if not isinstance(client, BandwidthClient):
            raise TypeError(f"client must be a BandwidthClient; got {type(client).__name__}")
        self.client = client
        self.concurrency = client.concurrency
        self._now = now or (lambda: datetime.now(UTC))

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, **options: Any
    ) -> BandwidthResolver:
        """A resolver configured by the environment (`BandwidthSettings.from_environment`);
        `options` are `BandwidthClient`'s (`timeout`, `concurrency`, `attempts`, ...). A
        `ProviderError` (`refused=True`) naming the variables when the credentials are not
        set."""
        return cls(BandwidthClient(BandwidthSettings.from_environment(environ), **options))

    def __call__(self, call: Call) -> str | None:
        started = call.start_time
        if started is not None and as_utc(started) < self._now() - timedelta(days=KEPT_DAYS):
            return None
        return self.client.call_state(call.call_id, call.account_id)

    @property
    def requests(self) -> Counter[str]:
        """The client's requests by outcome (`BandwidthClient.requests`)."""
        return self.client.requests

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def __repr__(self) -> str:
        return f"BandwidthResolver({self.client!r})"


def resolver_from_environment() -> BandwidthResolver:
    """`BandwidthResolver.from_environment()`: the resolver `--resolve bandwidth` names."""
    return BandwidthResolver.from_environment()
