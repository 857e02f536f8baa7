"""The README and the documentation site are the user's contract: their commands, tables and
references must match the code, and the site must build."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tracker
from tracker import ALL_DISPOSITIONS, DISPOSITIONS, IgnoredReason, InvalidReason, Reason

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
# The page holding the outcomes, reason codes and dispositions tables.
CONCEPTS = (DOCS / "concepts.md").read_text()
README_MAX_LINES = 300


def shell_commands(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL)]


def test_ci_runs_exactly_the_readmes_test_command_last() -> None:
    test_command = next(c for c in shell_commands(README) if "pytest" in c)
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci_lines[-1] == test_command


def test_getting_started_shows_the_readmes_two_commands() -> None:
    page = shell_commands((DOCS / "getting-started.md").read_text())
    readme = shell_commands(README)
    assert next(c for c in readme if "pytest" in c) in page
    assert next(c for c in readme if "ingest samples/" in c) in page


def test_ci_builds_the_docs_strictly() -> None:
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^[^#\n]*mkdocs build --strict", ci_script, re.M)


def test_the_readme_stays_short() -> None:
    assert len(README.splitlines()) <= README_MAX_LINES


def test_the_readmes_links_into_the_docs_resolve() -> None:
    targets = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", README)
    assert targets
    missing = [target for target in targets if not (ROOT / target).is_file()]
    assert missing == []


def test_every_reason_code_is_documented() -> None:
    documented = set(
        re.findall(r"^\| `([a-z0-9_]+)` \| (?:rejected|invalid|ignored) \|", CONCEPTS, re.M)
    )
    codes = [code.value for enum in (Reason, InvalidReason, IgnoredReason) for code in enum]
    assert set(codes) == documented


def test_every_disposition_is_documented() -> None:
    for cause, disposition in DISPOSITIONS.items():
        assert f"| `{cause}` | `{disposition}` |" in CONCEPTS
    for disposition in ALL_DISPOSITIONS:
        assert f"`{disposition}`" in CONCEPTS


def test_the_python_reference_covers_every_public_name() -> None:
    page = (DOCS / "reference" / "python.md").read_text()
    referenced = set(re.findall(r"^::: tracker\.(\w+)$", page, re.M))
    assert referenced == set(tracker.__all__)


def test_sample_call_the_readme_shows_is_in_the_sample() -> None:
    newcomer = next(c for c in shell_commands(README) if "ingest samples/" in c)
    shown = newcomer.rsplit("show ", 1)[1].strip()
    assert shown in (ROOT / "samples" / "callbacks.jsonl").read_text()


@pytest.mark.slow
def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    """What .ci/run does: a broken link or anchor, or a reference to a name the code lacks,
    fails the build."""
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "reference" / "python" / "index.html").is_file()
    assert (tmp_path / "reference" / "cli" / "index.html").is_file()
