"""Billing increments (`--billing FIRST/NEXT`, `billing=` of `Tracker.export` and `stats`): the
seconds a carrier bills for a call's talk time.

A call with talk time `t > 0` (end - answer, in whole microseconds as stored) bills `FIRST`
seconds if `t <= FIRST`, else `FIRST + ceil((t - FIRST) / NEXT) * NEXT`. An unanswered call, and
an answered one with no end time (talking now, or ended by the sweep with its end unknown),
bills 0: no talk time is known yet, and `CallStatistics.answered_without_end` counts those calls
so nobody mistakes them for free ones (docs/reporting.md).

The rule is written twice on purpose, once in Python (`BillingPolicy.billable_seconds`, for the
export's rows) and once in SQL (`billable_seconds_sql`, for the sums of `stats`, counted in the
database); both are integer arithmetic on microseconds, and tests/test_billing.py holds them
to one reference on every backend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import BigInteger, ColumnElement, case, literal_column
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

_MICROSECONDS: Final = 1_000_000
_POLICY_TEXT: Final = re.compile(r"([0-9]+)/([0-9]+)")
# A day of seconds: a larger increment is a typo, and keeps every product far inside 64 bits.
_LONGEST_INCREMENT: Final = 86_400
_EXPECTED: Final = "FIRST/NEXT in whole seconds above 0, such as 60/60, 30/6, 6/6 or 1/1"


@dataclass(frozen=True, slots=True)
class BillingPolicy:
    """Bill `first` seconds for any talk up to `first`, then whole increments of `next`."""

    first: int
    next: int

    def __post_init__(self) -> None:
        for name, value in (("first", self.first), ("next", self.next)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 0 < value <= _LONGEST_INCREMENT
            ):
                raise ValueError(
                    f"billing {name} must be whole seconds from 1 to {_LONGEST_INCREMENT}; "
                    f"got {value!r} (expected {_EXPECTED})"
                )

    @classmethod
    def parse(cls, text: str) -> BillingPolicy:
        """`"30/6"` -> `BillingPolicy(first=30, next=6)`; anything else is a ValueError."""
        match = _POLICY_TEXT.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"billing policy {text!r} is malformed: expected {_EXPECTED}")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.first}/{self.next}"

    def billable_seconds(self, answer: datetime | None, end: datetime | None) -> int:
        """The seconds billed for a call answered at `answer` and ended at `end` (0 without
        either: no talk time known)."""
        if answer is None or end is None:
            return 0
        talk = end - answer
        return self.billable_of_microseconds(
            (talk.days * 86_400 + talk.seconds) * _MICROSECONDS + talk.microseconds
        )

    def billable_of_microseconds(self, talk: int) -> int:
        """The seconds billed for `talk` whole microseconds of talk time."""
        if talk <= 0:
            return 0
        first, increment = self.first * _MICROSECONDS, self.next * _MICROSECONDS
        if talk <= first:
            return self.first
        return self.first + (talk - first + increment - 1) // increment * self.next


def billing_policy(value: BillingPolicy | str | None) -> BillingPolicy | None:
    """The policy `billing=` names: a `BillingPolicy`, its text `"FIRST/NEXT"`, or None."""
    if value is None or isinstance(value, BillingPolicy):
        return value
    if isinstance(value, str):
        return BillingPolicy.parse(value)
    raise ValueError(f"billing must be a BillingPolicy or text; got {value!r} ({_EXPECTED})")


class integer_quotient(FunctionElement[int]):  # noqa: N801 (used like a SQL function)
    """`dividend / divisor` of two non-negative integers, rounded down, as an integer:
    PostgreSQL's and SQLite's `/` of integers truncate, MariaDB's gives a DECIMAL (its `DIV`
    truncates)."""

    type = BigInteger()
    name = "integer_quotient"
    inherit_cache = True


@compiles(integer_quotient)
def _integer_quotient(element: integer_quotient, compiler: SQLCompiler, **kw: Any) -> str:
    dividend, divisor = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"(({dividend}) / ({divisor}))"


@compiles(integer_quotient, "mysql")
@compiles(integer_quotient, "mariadb")
def _integer_quotient_mysql(element: integer_quotient, compiler: SQLCompiler, **kw: Any) -> str:
    dividend, divisor = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"(({dividend}) DIV ({divisor}))"


def billable_seconds_sql(
    policy: BillingPolicy, talk_microseconds: ColumnElement[Any]
) -> ColumnElement[Any]:
    """`BillingPolicy.billable_of_microseconds` in SQL, of an integer talk time. The policy's
    numbers are literals (checked integers), not parameters: PostgreSQL would otherwise have
    to guess the type of a parameter divided by."""
    first = literal_column(str(policy.first * _MICROSECONDS), BigInteger())
    increment = literal_column(str(policy.next * _MICROSECONDS), BigInteger())
    more = integer_quotient(talk_microseconds - first + increment - 1, increment)
    return case(
        (talk_microseconds <= 0, literal_column("0", BigInteger())),
        (talk_microseconds <= first, literal_column(str(policy.first), BigInteger())),
        else_=literal_column(str(policy.first), BigInteger())
        + more * literal_column(str(policy.next), BigInteger()),
    )
