"""Every use of a dependency's private or internal API, each behind one small function.

SQLAlchemy and pydantic offer no public way to do these, and an upgrade may change them without
notice: tests/test_dependencies.py holds each function to the behaviour the tracker relies on,
and fails naming the function to rewrite when an upgrade changes it. Nothing else in the
package reaches into a dependency's private names; add any new one here, with its test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from pydantic import TypeAdapter
from sqlalchemy import BindParameter, Connection, Engine
from sqlalchemy.engine.base import OptionEngine
from sqlalchemy.sql.compiler import SQLCompiler


def pool_owner(engine: Engine) -> Engine:
    """The engine that owns `engine`'s pool and connection listeners: `engine` itself, or the
    engine an `execution_options()` copy (an `OptionEngine`) was made from. SQLAlchemy keeps
    that parent as `OptionEngine._proxied` and has no public accessor for it."""
    owner = engine
    while isinstance(owner, OptionEngine):
        owner = owner._proxied
    return owner


def is_autocommit(connection: Connection) -> bool:
    """Whether SQLAlchemy runs `connection` at isolation level AUTOCOMMIT (by an execution
    option, or by the engine's `isolation_level`), so that no BEGIN is due. The public
    `get_isolation_level()` asks the database, and a pysqlite connection set up by the tracker
    reports the same level either way."""
    return connection._is_autocommit_isolation()


def bind_order(compiled: SQLCompiler) -> tuple[tuple[str, ...], bool]:
    """The names of `compiled`'s bind parameters in the order its SQL takes them, and whether
    the driver takes them by position (`positiontup`, set for a positional paramstyle only)
    rather than by name (the keys of `binds`). Both are attributes of SQLAlchemy's compiler,
    documented among its internals."""
    order = compiled.positiontup
    if order is not None:
        return tuple(order), True
    return tuple(compiled.binds), False


def bind_parameters(compiled: SQLCompiler) -> Mapping[str, BindParameter[Any]]:
    """`compiled`'s bind parameters by the name its SQL gives them (`SQLCompiler.binds`)."""
    return compiled.binds


def before_cursor_execute(
    connection: Connection, cursor: Any, statement: str, parameters: Any, many: bool
) -> tuple[str, Any]:
    """Run `connection`'s `before_cursor_execute` listeners, as `Connection.execute` does, for
    a statement run on the driver's cursor; the statement and parameters they hand back. The
    listeners are reached through the event system's `dispatch` collection."""
    for listener in connection.dispatch.before_cursor_execute:
        statement, parameters = listener(connection, cursor, statement, parameters, None, many)
    return statement, parameters


def after_cursor_execute(
    connection: Connection, cursor: Any, statement: str, parameters: Any, many: bool
) -> None:
    """Run `connection`'s `after_cursor_execute` listeners, as `Connection.execute` does."""
    dispatch = connection.dispatch
    if dispatch.after_cursor_execute:
        dispatch.after_cursor_execute(connection, cursor, statement, parameters, None, many)


def raise_as_sqlalchemy(
    connection: Connection, error: BaseException, statement: str, parameters: Any, cursor: Any
) -> NoReturn:
    """Raise `error`, which the driver raised running `statement`, as `Connection.execute`
    would: as SQLAlchemy's exception class (`IntegrityError`, `OperationalError`, ...), seen by
    `handle_error` listeners, with a connection SQLAlchemy recognises as lost invalidated. The
    `Connection`'s own `_handle_dbapi_exception` does all three."""
    connection._handle_dbapi_exception(error, statement, parameters, cursor, None)
    raise AssertionError(  # pragma: no cover (the call above always raises)
        "tracker._private_apis.raise_as_sqlalchemy: SQLAlchemy's "
        "Connection._handle_dbapi_exception returned instead of raising"
    ) from error


def json_validator(adapter: TypeAdapter[Any]) -> Callable[[str | bytes], Any]:
    """`adapter`'s core validator's `validate_json`: what `TypeAdapter.validate_json` calls,
    without its Python wrapper, which costs a tenth of a parse of a callback."""
    return adapter.validator.validate_json
