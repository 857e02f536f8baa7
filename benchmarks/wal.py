"""Pages a SQLite commit wrote, counted from its WAL file: exact and repeatable however busy the
machine is. Used by the benchmark (`benchmarks.bench`) and the growth measurements
(`benchmarks.growth`).

Count on connections with automatic checkpoints off (`no_auto_checkpoint` as a `connect`
listener, `check_no_auto_checkpoint` to prove it took), between two `mark`s of the WAL file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

# A WAL file is a header, then one frame per page a commit wrote: a frame header and the page.
_WAL_HEADER_BYTES: Final = 32
_WAL_FRAME_HEADER_BYTES: Final = 24


@dataclass(frozen=True)
class Mark:
    size: int
    header: bytes


def mark(database: str) -> Mark:
    path = Path(f"{database}-wal")
    with path.open("rb") as wal:
        header = wal.read(_WAL_HEADER_BYTES)
    return Mark(path.stat().st_size, header)


def frames_between(before: Mark, after: Mark) -> int:
    """Frames appended to the WAL from `before` to `after`. A checkpoint that reset the WAL
    would make new frames overwrite old ones and the count silently low: a reset changes the
    header's checkpoint sequence and salts (bytes 12-24), so it is refused instead."""
    if after.header[12:24] != before.header[12:24]:
        raise RuntimeError(
            "the WAL was checkpointed and reset while its frames were counted: something turned "
            "wal_autocheckpoint back on (or checkpointed by hand) on the measured connection"
        )
    page_size = int.from_bytes(before.header[8:12], "big")
    frame_bytes = _WAL_FRAME_HEADER_BYTES + (65536 if page_size == 1 else page_size)
    frames, rest = divmod(after.size - before.size, frame_bytes)
    if rest:
        raise RuntimeError(f"the WAL grew by {after.size - before.size} bytes: not whole frames")
    return frames


def no_auto_checkpoint(connection: Any, _record: Any = None) -> None:
    """Without this, SQLite checkpoints once the WAL holds 1000 pages, and whichever commit
    crosses that line does it: the WAL's growth would no longer count the pages written."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def check_no_auto_checkpoint(pages: object) -> None:
    if pages != 0:
        raise RuntimeError(
            f"wal_autocheckpoint is {pages} on the measured connection, not 0: something set it "
            "after the benchmark's connect listener, so the WAL frames cannot be counted"
        )
