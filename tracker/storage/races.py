"""Errors and races: how a write that lost a race to another writer is told apart from a
failure, so that only a lost race is retried."""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy.exc import IntegrityError


class LostRaceError(Exception):
    """Another writer changed a row between our read and our write; the delivery is retried."""


# A unique key taken by another writer between our read and our insert: the call row (two
# deliveries creating one call or one placeholder), the dedup key (one body applied by two
# workers) or a history step. PostgreSQL's SQLSTATE, MySQL's error numbers (duplicate entry,
# duplicate key), SQLite's extended result codes (UNIQUE, PRIMARY KEY).
_UNIQUE_SQLSTATES: Final = frozenset({"23505"})
_UNIQUE_MYSQL_CODES: Final = frozenset({1062, 1586})
_UNIQUE_SQLITE_CODES: Final = frozenset(
    {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}
)


def is_unique_violation(error: IntegrityError) -> bool:
    """True when `error` is a lost race on a unique key, the only constraint a race can break
    (calls are never deleted, and nothing refers to a log entry, which `prune` deletes, so a
    foreign key or NOT NULL failure is always a bug)."""
    original = error.orig
    if getattr(original, "sqlstate", None) in _UNIQUE_SQLSTATES:
        return True
    if getattr(original, "sqlite_errorname", None) in _UNIQUE_SQLITE_CODES:
        return True
    arguments: tuple[Any, ...] = getattr(original, "args", ())
    return bool(arguments) and arguments[0] in _UNIQUE_MYSQL_CODES
