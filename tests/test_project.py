"""The README is the user's contract: its commands and tables must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from tracker import ALL_DISPOSITIONS, DISPOSITIONS, IgnoredReason, InvalidReason, Reason

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def shell_commands(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL)]


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    test_command = next(c for c in shell_commands(README) if "pytest" in c)
    ci_script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_script


def test_every_reason_code_is_documented() -> None:
    documented = set(
        re.findall(r"^\| `([a-z0-9_]+)` \| (?:rejected|invalid|ignored) \|", README, re.M)
    )
    codes = [code.value for enum in (Reason, InvalidReason, IgnoredReason) for code in enum]
    assert set(codes) == documented


def test_every_disposition_is_documented() -> None:
    for cause, disposition in DISPOSITIONS.items():
        assert f"| `{cause}` | `{disposition}` |" in README
    for disposition in ALL_DISPOSITIONS:
        assert f"`{disposition}`" in README


def test_sample_call_the_readme_shows_is_in_the_sample() -> None:
    newcomer = next(c for c in shell_commands(README) if "ingest samples/" in c)
    shown = newcomer.rsplit("show ", 1)[1].strip()
    assert shown in (ROOT / "samples" / "callbacks.jsonl").read_text()
