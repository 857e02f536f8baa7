"""`tracker stats --plot FILE`: volume, ASR and peak concurrency over time, as PNG or SVG.

matplotlib is an optional extra (`pip install 'tracker[plot]'`), imported only here and only
when a plot is asked for. The figure is drawn on a `Figure` of its own with the Agg canvas (SVG
through matplotlib's SVG canvas), never through pyplot, so no window, no global state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from tracker.records import CallStatistics

FORMATS: Final = (".png", ".svg")
# Inches, and dots per inch for PNG: 1000 x 700 pixels; an SVG is 720 x 504 points.
SIZE: Final = (10.0, 7.0)
DPI: Final = 100
MISSING_EXTRA: Final = (
    "plotting needs matplotlib, which is not installed; install it with pip install 'tracker[plot]'"
)


def plot_format(path: str | Path) -> str:
    """`png` or `svg`, from the file name; a ValueError naming both for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"cannot tell the plot's format from {str(path)!r}: name the file *.png or *.svg"
        )
    return suffix[1:]


def require_matplotlib() -> None:
    """Fail before any work when the extra is missing, with the command that installs it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError(MISSING_EXTRA) from error


def write_plot(
    buckets: Sequence[CallStatistics],
    path: str | Path,
    *,
    bucket_length: timedelta,
    title: str,
    zone: str = "UTC",
) -> None:
    """Three panels over time, one bar or point per bucket (hour or day): attempts and answered,
    ASR, peak concurrent calls. Buckets without an attempt are absent from `buckets`: their bars
    stay empty and the lines break there. The axis reads the local times of `zone` (`stats
    --tz`); the buckets stand where their instants are, so a fall-back day's two 02:00 hours
    stand side by side and a spring-forward day has no 02:00."""
    file_format = plot_format(path)
    require_matplotlib()
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    volume, ratio, concurrency = figure.subplots(3, 1, sharex=True, height_ratios=(2, 1, 1))
    figure.suptitle(title)
    local = None if zone == "UTC" else ZoneInfo(zone)
    starts = [
        _naive(bucket.start) if local is None else _in_utc(bucket.start) for bucket in buckets
    ]
    width = bucket_length * 0.8
    volume.bar(starts, [b.attempts for b in buckets], width, align="edge", label="attempts")
    volume.bar(starts, [b.answered for b in buckets], width, align="edge", label="answered")
    volume.set_ylabel("calls")
    volume.legend(loc="upper left")

    middles = [start + bucket_length / 2 for start in starts]
    asr = [100.0 * (b.asr or 0.0) for b in buckets]
    peaks = [float(b.peak_concurrent_calls) for b in buckets]
    ratio.plot(*_broken(middles, asr, bucket_length), marker=".", color="tab:green")
    ratio.set_ylabel("ASR %")
    ratio.set_ylim(0, 100)
    concurrency.plot(*_broken(middles, peaks, bucket_length), marker=".", color="tab:red")
    concurrency.set_ylabel("peak concurrent")
    concurrency.set_ylim(bottom=0)
    locator = AutoDateLocator(tz=local)  # type: ignore[no-untyped-call]
    concurrency.xaxis.set_major_locator(locator)
    concurrency.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=local))  # type: ignore[no-untyped-call]
    concurrency.set_xlabel(zone)
    for axes in (volume, ratio, concurrency):
        axes.grid(axis="y", alpha=0.3)
    # No creation date in the file: the same figures give the same bytes.
    metadata: dict[str, Any] = {"Date": None} if file_format == "svg" else {}
    figure.savefig(path, format=file_format, dpi=DPI, metadata=metadata)


def _naive(instant: datetime | None) -> datetime:
    # matplotlib draws aware datetimes in its rcParams zone; the buckets are in the zone asked
    # for already (UTC by default), drawn at their wall-clock times.
    assert instant is not None, "a plot needs buckets of time"
    return instant.replace(tzinfo=None)


def _in_utc(instant: datetime | None) -> datetime:
    # In UTC, so a bucket's middle is half its length on: a zone's wall clock would put the
    # middle of a repeated hour in the wrong one. The axis shows them in the zone.
    assert instant is not None, "a plot needs buckets of time"
    return instant.astimezone(UTC)


def _broken(
    times: Sequence[datetime], values: Sequence[float], step: timedelta
) -> tuple[list[datetime], list[float]]:
    """The points with a NaN between two that are not neighbours, so the line breaks at a gap
    instead of joining across hours without calls."""
    xs: list[datetime] = []
    ys: list[float] = []
    for index, (time, value) in enumerate(zip(times, values, strict=True)):
        if index and time - times[index - 1] > step:
            xs.append(times[index - 1] + step)
            ys.append(math.nan)
        xs.append(time)
        ys.append(value)
    return xs, ys
