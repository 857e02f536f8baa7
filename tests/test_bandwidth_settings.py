"""`tracker.bandwidth`'s configuration: read from the environment only, refused with the
variables to set, and never showing a secret."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from tracker.bandwidth import (
    DEFAULT_API_URL,
    BandwidthClient,
    BandwidthResolver,
    BandwidthSettings,
    resolver_from_environment,
)
from tracker.provider import ProviderError
from tracker.testing import FakeBandwidth, call_state

BASIC = {"BANDWIDTH_USERNAME": "someone", "BANDWIDTH_PASSWORD": "pw-5ecret-basic"}
OAUTH = {"BANDWIDTH_CLIENT_ID": "client-7", "BANDWIDTH_CLIENT_SECRET": "pw-5ecret-oauth"}
SECRETS = ("pw-5ecret-basic", "pw-5ecret-oauth")


def _refusal(environ: dict[str, str]) -> ProviderError:
    with pytest.raises(ProviderError) as raised:
        BandwidthSettings.from_environment(environ)
    assert raised.value.refused
    return raised.value


def test_basic_credentials_and_the_default_url_come_from_the_environment() -> None:
    settings = BandwidthSettings.from_environment({**BASIC, "BANDWIDTH_ACCOUNT_ID": "9900"})
    assert (settings.auth, settings.api_url, settings.account_id) == (
        "basic",
        DEFAULT_API_URL,
        "9900",
    )
    assert settings.credential_variables == ("BANDWIDTH_USERNAME", "BANDWIDTH_PASSWORD")
    assert settings.token_url is None  # the SDK's own: Bandwidth's token endpoint


def test_oauth2_client_credentials_come_from_the_environment() -> None:
    settings = BandwidthSettings.from_environment(OAUTH)
    assert settings.auth == "oauth2"
    assert settings.account_id is None
    assert settings.credential_variables == ("BANDWIDTH_CLIENT_ID", "BANDWIDTH_CLIENT_SECRET")


def test_no_credentials_are_refused_naming_every_variable() -> None:
    message = str(_refusal({"BANDWIDTH_ACCOUNT_ID": "9900"}))
    for name in ("USERNAME", "PASSWORD", "CLIENT_ID", "CLIENT_SECRET"):
        assert f"BANDWIDTH_{name}" in message


@pytest.mark.parametrize(
    ("environ", "missing"),
    [
        ({"BANDWIDTH_USERNAME": "someone"}, "BANDWIDTH_PASSWORD"),
        ({"BANDWIDTH_PASSWORD": "pw-5ecret-basic"}, "BANDWIDTH_USERNAME"),
        ({"BANDWIDTH_CLIENT_ID": "client-7"}, "BANDWIDTH_CLIENT_SECRET"),
        ({"BANDWIDTH_CLIENT_SECRET": "pw-5ecret-oauth"}, "BANDWIDTH_CLIENT_ID"),
        ({**BASIC, "BANDWIDTH_PASSWORD": "  "}, "BANDWIDTH_PASSWORD"),
    ],
)
def test_a_half_set_pair_is_refused_naming_the_variable_missing(
    environ: dict[str, str], missing: str
) -> None:
    message = str(_refusal(environ))
    assert f"{missing} is not set" in message
    assert not any(secret in message for secret in SECRETS)


def test_both_pairs_at_once_are_refused_naming_them() -> None:
    message = str(_refusal({**BASIC, **OAUTH}))
    assert "unset one pair" in message
    assert all(f"BANDWIDTH_{name}" in message for name in ("USERNAME", "CLIENT_ID"))


def test_the_api_url_is_taken_without_its_trailing_slash_and_the_token_on_its_origin() -> None:
    settings = BandwidthSettings.from_environment(
        {**OAUTH, "TRACKER_BANDWIDTH_API_URL": "http://proxy.test:8080/bandwidth/api/v2/"}
    )
    assert settings.api_url == "http://proxy.test:8080/bandwidth/api/v2"
    assert settings.token_url == "http://proxy.test:8080/api/v1/oauth2/token"


@pytest.mark.parametrize("url", ["voice.bandwidth.com/api/v2", "ftp://host/api", "http://"])
def test_an_api_url_that_is_not_one_is_refused_naming_the_variable(url: str) -> None:
    message = str(_refusal({**BASIC, "TRACKER_BANDWIDTH_API_URL": url}))
    assert "TRACKER_BANDWIDTH_API_URL" in message


def test_an_api_url_holding_credentials_is_refused_without_quoting_them() -> None:
    url = "https://someone:pw-5ecret-basic@voice.bandwidth.com/api/v2"
    message = str(_refusal({**BASIC, "TRACKER_BANDWIDTH_API_URL": url}))
    assert "holds credentials" in message
    assert "pw-5ecret-basic" not in message


def test_secrets_never_show_in_a_repr_or_a_str() -> None:
    for environ in (BASIC, OAUTH):
        settings = BandwidthSettings.from_environment(environ)
        client = BandwidthClient(settings)
        shown = [repr(settings), str(settings), repr(client), repr(BandwidthResolver(client))]
        for text in shown:
            assert not any(secret in text for secret in SECRETS), text
        assert settings.auth in repr(settings)


def test_secrets_never_show_in_an_error_or_a_log_line(
    bandwidth_api: FakeBandwidth, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused credentials, Basic and OAuth2, at every log level of every logger."""
    bandwidth_api.put(document := call_state())
    caplog.set_level(logging.DEBUG)
    errors = []
    for pair in (BASIC, OAUTH):
        environ = {**bandwidth_api.environment(oauth=pair is OAUTH), **pair}
        settings = BandwidthSettings.from_environment(environ)
        with BandwidthClient(settings) as client, pytest.raises(ProviderError) as raised:
            client.call_state(document["callId"])
        assert raised.value.refused
        errors.append(raised.value)
    told = " ".join(f"{error} {error!r} {error.__cause__!r}" for error in errors) + caplog.text
    assert "refused" in told
    assert not any(secret in told for secret in SECRETS)


def test_a_bad_option_is_refused_naming_it() -> None:
    settings = BandwidthSettings.from_environment(BASIC)
    for option, value in [
        ("timeout", 0),
        ("concurrency", 0),
        ("attempts", True),
        ("backoff", -1),
        ("page_size", 10_001),
    ]:
        with pytest.raises(ValueError, match=option):
            BandwidthClient(settings, **{option: value})
    with pytest.raises(TypeError, match="BandwidthSettings"):
        BandwidthClient(BASIC)  # type: ignore[arg-type]


def test_the_resolver_is_built_from_the_environment(bandwidth_api: FakeBandwidth) -> None:
    resolver = resolver_from_environment()
    assert resolver.client.settings.api_url == bandwidth_api.url
    assert resolver.concurrency == resolver.client.concurrency
    chosen = BandwidthResolver.from_environment(concurrency=7, timeout=1.5)
    assert (chosen.concurrency, chosen.client.timeout) == (7, 1.5)


def test_the_resolver_from_an_empty_environment_names_the_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (*BASIC, *OAUTH):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ProviderError, match="BANDWIDTH_USERNAME and BANDWIDTH_PASSWORD") as raised:
        resolver_from_environment()
    assert raised.value.refused


def test_only_tracker_bandwidth_imports_the_sdk() -> None:
    """The core install stays small: the package, its CLI and its test kit run without it."""
    code = (
        "import sys, tracker, tracker.cli, tracker.testing, tracker.provider; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('bandwidth', 'urllib3')))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_without_the_sdk_the_import_error_names_the_extra() -> None:
    code = "import sys; sys.modules['bandwidth'] = None; import tracker.bandwidth"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode != 0
    assert "pip install 'tracker[bandwidth]'" in run.stderr
