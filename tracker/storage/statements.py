"""The statement cache: the statements of the hot paths, compiled once per dialect and run on
the driver (`tracker.storage.driver`), and the chunks that keep their lists of ids bounded.

A builder returns a statement and the names of the values it takes; `cached` compiles what a
builder makes for given arguments once per dialect. The other statements are built once at
import, as module constants beside the functions that run them, so SQLAlchemy reuses their
compiled form.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Final, TypeVar

from sqlalchemy import Connection, Dialect
from sqlalchemy.sql.elements import ClauseElement

from tracker.storage import driver

# Big IN lists are split so no backend hits its bound-parameter limit.
CHUNK: Final = 500

Build = Callable[..., tuple[ClauseElement, Sequence[str]]]
_Item = TypeVar("_Item")

_compiled: Final = weakref.WeakKeyDictionary[Dialect, dict[Hashable, driver.Compiled]]()
# The builders whose statements the driver plans at each run (see `planned_at_each_run`).
_planned_at_each_run: Final[set[Build]] = set()


def planned_at_each_run(build: Build) -> Build:
    """Mark `build` as making a look-up of a list of ids, whose best plan follows the table's
    size, so the driver plans it at each run rather than preparing it once (see
    `driver.compile_for`)."""
    _planned_at_each_run.add(build)
    return build


def cached(connection: Connection, build: Build, *arguments: Hashable) -> driver.Compiled:
    """The statement `build(*arguments)` makes (with the names of the values it takes),
    compiled for `connection`'s dialect the first time it is asked for."""
    dialect = connection.dialect
    known = _compiled.get(dialect)
    if known is None:
        known = _compiled.setdefault(dialect, {})
    name = (build, arguments)
    compiled = known.get(name)
    if compiled is None:
        statement, keys = build(*arguments)
        prepare = build not in _planned_at_each_run
        compiled = known[name] = driver.compile_for(dialect, statement, keys, prepare=prepare)
    return compiled


def padded_chunks(items: list[_Item], most: int) -> Iterator[list[_Item]]:
    """`items` in chunks of at most `most` (a power of two), each padded to a power of two by
    repeating its last item (a look-up does not mind a repeat), so that a handful of compiled
    statements serve every size: a delivery's call and its parent, an `apply_many` of hundreds."""
    for start in range(0, len(items), most):
        chunk = items[start : start + most]
        size = 1 << (len(chunk) - 1).bit_length()
        yield chunk + chunk[-1:] * (size - len(chunk))


def chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    """`items` in chunks of at most `CHUNK`, one IN list each."""
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
