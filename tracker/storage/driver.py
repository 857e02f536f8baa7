"""The hot statements, compiled once per dialect by SQLAlchemy and run on the driver.

Part of the storage package: the statements `tracker.storage.statements` caches run here.
`Connection.execute` of a prebuilt statement costs several times what the driver does for the
same SQL (cache lookup, parameter construction, a result object per call), and a delivery runs
half a dozen statements. Here each statement is compiled once per dialect, its parameters
converted by the very bind and result processors SQLAlchemy would use, and it runs on the
`Connection`'s own DBAPI connection inside its transaction. What SQLAlchemy does around a
statement stays: `before_cursor_execute` and `after_cursor_execute` listeners see and may
strike every statement, and a driver error goes through the `Connection`'s own handling, so it
comes out as SQLAlchemy's exception class, and a lost connection is recognised and invalidated
as with `Connection.execute`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from operator import itemgetter
from typing import Any, Final, cast

from sqlalchemy import Connection, Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.selectable import ReturnsRows

from tracker import _private_apis

# The `Connection.info` entry counting the statements that reached the server in the current
# transaction: a transaction whose connection was lost before any did can be run again on a new
# connection with nothing to undo (see `tracker.writing.Writer.run`).
SENT: Final = "tracker_statements_sent"
# The DBAPI connection's `info` entry holding the one cursor every statement runs on. Making a
# cursor per statement costs psycopg about as much as sending a small statement; the entry goes
# with the DBAPI connection (SQLAlchemy clears `info` when it connects anew).
_CURSOR: Final = "tracker_cursor"


@dataclass(frozen=True, slots=True)
class Compiled:
    """One statement as the driver takes it: the SQL; the bind names in the order a positional
    paramstyle wants them; whether the driver wants them by position or by name; the binds and
    the result columns that need converting (by position, with their converter)."""

    sql: str
    names: tuple[str, ...]
    positional: bool
    converted_binds: tuple[tuple[int, Callable[[Any], Any]], ...]
    converted_results: tuple[tuple[int, Callable[[Any], Any]], ...]
    returns_rows: bool
    # The values the statement carries itself (the 1 of `version + 1`), by bind name.
    constants: Mapping[str, Any]
    # False: planned anew at each run, never prepared by the driver (see `compile_for`).
    prepare: bool = True
    # The values of `names`, in their order, from a mapping: in one C call where there are
    # several (a call's row has 36, and a batch binds thousands of rows).
    ordered_values: Callable[[Mapping[str, Any]], list[Any]] = dataclass_field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ordered_values", _values_of(self.names))

    def parameters(self, given: Mapping[str, Any]) -> Any:
        values = {**self.constants, **given} if self.constants else given
        ordered = self.ordered_values(values)
        for index, convert in self.converted_binds:
            ordered[index] = convert(ordered[index])
        return ordered if self.positional else dict(zip(self.names, ordered, strict=True))

    def parameters_of_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """`parameters` of each row, for an `executemany`. A value that is the very object the
        row before held (a batch's receipt time, a NULL) is converted once: a converter gives
        the same for the same value, and an instant's text costs more than the rest of its
        row's binding."""
        parameters = []
        previous: dict[int, tuple[Any, Any]] = {}
        for given in rows:
            values = {**self.constants, **given} if self.constants else given
            ordered = self.ordered_values(values)
            for index, convert in self.converted_binds:
                value = ordered[index]
                known = previous.get(index)
                if known is None or known[0] is not value:
                    known = previous[index] = (value, convert(value))
                ordered[index] = known[1]
            parameters.append(
                ordered if self.positional else dict(zip(self.names, ordered, strict=True))
            )
        return parameters


def _values_of(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], list[Any]]:
    if len(names) > 1:
        several = itemgetter(*names)
        return lambda values: list(several(values))
    return lambda values: [values[name] for name in names]


def plain(sql: str) -> Compiled:
    """A statement that takes no values and returns no rows, such as `BEGIN`."""
    return Compiled(sql, (), True, (), (), False, {})


def compile_for(
    dialect: Dialect, statement: ClauseElement, keys: Sequence[str], *, prepare: bool = True
) -> Compiled:
    """`statement` compiled for `dialect`, taking the bind parameters (or, for an INSERT or an
    UPDATE, the columns) named by `keys`.

    `prepare=False` for a statement whose best plan depends on the table's size, such as a
    look-up of many ids: psycopg prepares a statement on the server after five runs, and
    PostgreSQL may then keep one generic plan, made while the table was small (a scan of the
    whole table), until an ANALYZE replaces it; where autovacuum is off, for good. Such a
    statement is planned with its values at each run instead."""
    compiled = cast(SQLCompiler, statement.compile(dialect=dialect, column_keys=list(keys)))
    names, positional = _private_apis.bind_order(compiled)
    binds = _private_apis.bind_parameters(compiled)
    converted_binds = tuple(
        (index, processor)
        for index, name in enumerate(names)
        if (processor := binds[name].type.dialect_impl(dialect).bind_processor(dialect))
    )
    # The columns of a SELECT, or those an INSERT or UPDATE returns (none without RETURNING).
    shown = list(statement.exported_columns) if isinstance(statement, ReturnsRows) else []
    converted_results = tuple(
        (index, processor)
        for index, column in enumerate(shown)
        if (processor := column.type.dialect_impl(dialect).result_processor(dialect, None))
    )
    constants = {name: bind.effective_value for name, bind in binds.items() if name not in keys}
    return Compiled(
        str(compiled),
        names,
        positional,
        converted_binds,
        converted_results,
        bool(shown),
        constants,
        prepare,
    )


def run(
    connection: Connection,
    compiled: Compiled,
    values: dict[str, Any] | Sequence[dict[str, Any]],
) -> Any:
    """Run `compiled` with one set of `values` (a dict) or many (a list of them, as one
    `executemany`) on `connection`'s transaction. Returns the DBAPI cursor, for its rows,
    `rowcount` or `lastrowid`, read before the next statement: the cursor is the connection's
    one, kept (not to be closed). Rows read through it are not converted (see `rows`)."""
    if isinstance(values, dict):
        many = False
        parameters: Any = compiled.parameters(values)
    else:
        many = True
        parameters = compiled.parameters_of_rows(values)
    statement = compiled.sql
    # `Connection.connection` begins no transaction of its own: the caller's is open already.
    dbapi = connection.connection
    cursor = dbapi.info.get(_CURSOR)
    if cursor is None:
        cursor = dbapi.info[_CURSOR] = dbapi.cursor()
    try:
        statement, parameters = _private_apis.before_cursor_execute(
            connection, cursor, statement, parameters, many
        )
        if many:
            cursor.executemany(statement, parameters)
        elif not compiled.prepare and connection.dialect.driver == "psycopg":
            cast(Any, cursor).execute(statement, parameters, prepare=False)  # psycopg's own
        else:
            cursor.execute(statement, parameters)
        _private_apis.after_cursor_execute(connection, cursor, statement, parameters, many)
    except BaseException as error:
        dbapi.info.pop(_CURSOR, None)  # the handling below closes it
        # SQLAlchemy's own handling: its exception classes, `handle_error` listeners, and a
        # connection it recognises as lost invalidated, exactly as `Connection.execute` does.
        _private_apis.raise_as_sqlalchemy(connection, error, statement, parameters, cursor)
    info = connection.info
    info[SENT] = info.get(SENT, 0) + 1
    return cursor


def rows(compiled: Compiled, cursor: Any) -> list[Any]:
    """The rows `cursor` holds, each value through its column's result processor."""
    found: list[Any] = cursor.fetchall()
    converted = compiled.converted_results
    if not converted:
        return found
    result = []
    for row in found:
        values = list(row)
        for index, convert in converted:
            values[index] = convert(values[index])
        result.append(values)
    return result
