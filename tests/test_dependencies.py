"""The private APIs of SQLAlchemy and pydantic the tracker relies on still behave as it relies
on: each test holds one function of `tracker._private_apis`, and names it when an upgrade of a
dependency breaks it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Connection, bindparam, create_engine, event, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler

from tracker import Tracker, _private_apis


@contextmanager
def relied_on(function: str, what: str) -> Iterator[None]:
    """Turn any failure inside into one message naming the function to rewrite."""
    try:
        yield
    except Exception as error:
        pytest.fail(
            f"tracker._private_apis.{function} relies on {what}, which this version of the "
            f"dependency changed ({error!r}): rewrite that function for it, then this test",
            pytrace=True,
        )


def test_pool_owner_is_the_engine_an_execution_options_copy_was_made_from(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    try:
        copy = engine.execution_options(one=1).execution_options(two=2)
        with relied_on("pool_owner", "OptionEngine._proxied, the engine a copy was made from"):
            assert _private_apis.pool_owner(engine) is engine
            assert _private_apis.pool_owner(copy) is engine
    finally:
        engine.dispose()


def test_is_autocommit_follows_the_execution_option_and_the_engines_isolation_level(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    autocommit_engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with relied_on("is_autocommit", "Connection._is_autocommit_isolation()"):
            with engine.connect() as connection:
                assert not _private_apis.is_autocommit(connection)
            with engine.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT")
                assert _private_apis.is_autocommit(connection)
            with autocommit_engine.connect() as connection:
                assert _private_apis.is_autocommit(connection)
    finally:
        engine.dispose()
        autocommit_engine.dispose()


def test_bind_order_gives_the_values_in_the_order_the_sql_takes_them(tracker: Tracker) -> None:
    statement = select(bindparam("second", "B"), bindparam("first", "A"))
    dialect = tracker.engine.dialect
    compiled = statement.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    with relied_on("bind_order", "SQLCompiler.positiontup and SQLCompiler.binds"):
        names, positional = _private_apis.bind_order(compiled)
        assert sorted(names) == ["first", "second"]
        assert positional == (dialect.paramstyle in ("qmark", "numeric", "format"))
        values = {"first": "A", "second": "B"}
        parameters: Any = [values[name] for name in names] if positional else values
        with tracker.engine.connect() as connection:
            cursor = connection.connection.cursor()
            cursor.execute(str(compiled), parameters)
            assert tuple(cursor.fetchone()) == ("B", "A")
            cursor.close()


def test_bind_parameters_are_the_statements_binds_by_name() -> None:
    engine = create_engine("sqlite://")  # the compiler's attribute, the same for every dialect
    compiled = select(bindparam("limit", 7)).compile(dialect=engine.dialect)
    assert isinstance(compiled, SQLCompiler)
    with relied_on("bind_parameters", "SQLCompiler.binds"):
        binds = _private_apis.bind_parameters(compiled)
        assert list(binds) == ["limit"]
        assert binds["limit"].effective_value == 7


def test_cursor_listeners_run_for_a_statement_run_on_the_driver(tracker: Tracker) -> None:
    seen: list[tuple[str, str]] = []

    def before(*arguments: Any) -> tuple[str, Any]:
        _connection, _cursor, statement, parameters, _context, _many = arguments
        seen.append(("before", statement))
        return statement + " -- seen", parameters

    def after(*arguments: Any) -> None:
        seen.append(("after", arguments[2]))

    event.listen(tracker.engine, "before_cursor_execute", before, retval=True)
    event.listen(tracker.engine, "after_cursor_execute", after)
    try:
        with tracker.engine.connect() as connection:
            cursor = connection.connection.cursor()
            with relied_on(
                "before_cursor_execute/after_cursor_execute", "Connection.dispatch's listeners"
            ):
                statement, _ = _private_apis.before_cursor_execute(
                    connection, cursor, "SELECT 1", (), False
                )
                assert statement == "SELECT 1 -- seen"
                _private_apis.after_cursor_execute(connection, cursor, statement, (), False)
                assert seen == [("before", "SELECT 1"), ("after", "SELECT 1 -- seen")]
            cursor.close()
    finally:
        event.remove(tracker.engine, "before_cursor_execute", before)
        event.remove(tracker.engine, "after_cursor_execute", after)


def test_a_driver_error_comes_out_as_sqlalchemys_class_seen_by_handle_error(
    tracker: Tracker,
) -> None:
    handled: list[BaseException] = []

    def on_error(context: Any) -> None:
        handled.append(context.original_exception)

    event.listen(tracker.engine, "handle_error", on_error)
    sql = "SELECT * FROM tracker_no_such_table"
    try:
        with tracker.engine.connect() as connection:
            cursor = connection.connection.cursor()
            try:
                cursor.execute(sql)
            except Exception as error:
                original = error
                raised = _raised(connection, error, sql, cursor)
            else:  # pragma: no cover
                pytest.fail("the database ran a SELECT from a table that does not exist")
            connection.rollback()
        with relied_on("raise_as_sqlalchemy", "Connection._handle_dbapi_exception"):
            assert isinstance(raised, DBAPIError)
            assert raised.orig is original
            assert raised.statement == sql
            assert handled == [original]
    finally:
        event.remove(tracker.engine, "handle_error", on_error)


def _raised(
    connection: Connection, error: BaseException, sql: str, cursor: Any
) -> BaseException | None:
    try:
        _private_apis.raise_as_sqlalchemy(connection, error, sql, (), cursor)
    except BaseException as raised:
        return raised
    return None  # pragma: no cover


def test_json_validator_reads_as_validate_json_does() -> None:
    adapter = TypeAdapter(dict[str, int])
    with relied_on("json_validator", "TypeAdapter.validator.validate_json"):
        read = _private_apis.json_validator(adapter)
        assert read(b'{"calls": 3}') == adapter.validate_json(b'{"calls": 3}') == {"calls": 3}
    with pytest.raises(ValidationError):
        read(b'{"calls": "three"}')
