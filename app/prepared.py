"""The upload's statements compiled once per dialect and run on the driver's cursor, with SQLAlchemy's error handling.

`Connection.execute` costs about 15 µs of Python per statement on top of the driver (the compiled cache's lookup,
an execution context, each parameter's processing, a result object), and `exec_driver_sql` most of that: a fifth of
a 50-finding upload's CPU, spread over its dozen statements. `run` does that work once per statement and dialect
(its SQL text, the order of its parameters, their type processors and fixed values, its columns' result processors)
and then only converts the values and calls the cursor. What SQLAlchemy does with a driver's error is kept: it goes
through the connection's own handling (`DBAPIError` and its subclasses, so `app.db.unavailable` classifies it; a
lost connection invalidated, with the pool's older ones; `handle_error` events). An engine with cursor-execute
listeners (a test counting statements) gets the same SQL through `exec_driver_sql`, which calls them.

For statements run once per upload, in a transaction their caller began; rows come back as named tuples. What
SQLAlchemy would compile or bind differently at each execution is refused: when first prepared, parameters it expands
or computes then (`IN` lists, callables, columns' callable defaults); at each run, a parameter named after a column
the INSERT or UPDATE does not write (SQLAlchemy would add the column).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

_Processor = Callable[[Any], Any] | None


@dataclass
class _Compiled:
    sql: str
    names: tuple[str, ...]  # the parameters in the order the driver takes them (named: any order)
    positional: bool
    processors: dict[str, Callable[[Any], Any]]  # by parameter name, for those whose type converts values
    fixed: dict[str, Any]  # parameters the statement gives itself: literal values and columns' scalar defaults
    columns_named: frozenset[str]  # parameter names that would make SQLAlchemy write one more column: refused
    row: type[tuple[Any, ...]] | None  # the named tuple of a result row; None: the statement returns no rows
    types: tuple[Any, ...]  # the result columns' types (dialect implementations)
    results: tuple[_Processor, ...] | None = None  # their processors, made from the driver's first description


_compiled: dict[tuple[int, str], tuple[_Compiled, sa.Executable]] = {}


def run(conn: sa.Connection, statement: sa.Executable, params: Mapping[str, Any]) -> list[Any]:
    """Run `statement` with `params` on `conn`, in the transaction it is in; its rows, as named tuples (none for
    DML)."""
    dialect = conn.dialect
    found = _compiled.get((id(statement), dialect.name))
    if found is None:  # the statement is held with its entry, so its id is not reused while the entry lives
        found = _compiled[(id(statement), dialect.name)] = (_compile(statement, dialect), statement)
    c = found[0]
    if c.columns_named and not c.columns_named.isdisjoint(params):
        raise ValueError(f"parameters named after columns this statement does not write: {c.sql}")
    values = {**c.fixed, **params}
    processors = c.processors
    args: Sequence[Any] | dict[str, Any]
    if c.positional:
        args = tuple(processors[n](values[n]) if n in processors else values[n] for n in c.names)
    else:
        args = {n: processors[n](values[n]) if n in processors else values[n] for n in c.names}
    fetch = c.row is not None
    rows, description = _execute(conn, c.sql, args, many=False, fetch=fetch, describe=fetch and c.results is None)
    if c.row is None:
        return []
    if c.results is None:  # as SQLAlchemy makes them: for the type the driver says it returns
        c.results = tuple(t.result_processor(dialect, d[1]) for t, d in zip(c.types, description, strict=True))
    make, results = c.row, c.results
    return [make(*(f(v) if f is not None else v for f, v in zip(results, r, strict=True))) for r in rows]


def run_many(conn: sa.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """Run the driver's `sql` (its own parameter style) once for each of `rows`, values as the driver takes them, on
    `conn`, in the transaction it is in."""
    _execute(conn, sql, rows, many=True, fetch=False)


def copy_rows(conn: sa.Connection, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    """PostgreSQL's `COPY ... FROM STDIN` (`sql`) of `rows`, written as they come, on `conn`'s driver connection in
    the transaction it is in; the driver's errors handled as `Connection.execute` would (a statement cancelled or
    timed out is a `DBAPIError` that app.db.unavailable classifies: a 503, not a 500)."""
    if not conn.in_transaction():
        raise RuntimeError("prepared statements run in a transaction begun by their caller")
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None  # a live connection has one (for mypy)
    cursor = None
    try:
        cursor = dbapi_connection.cursor()
        with cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)
        cursor.close()
    except BaseException as exc:  # as _execute
        conn._handle_dbapi_exception(exc, sql, (), cursor, None)
        raise  # not reached: the handler always raises


def begin(conn: sa.Connection, sql: str) -> None:
    """Run the driver's `sql` that begins a transaction (SQLite's `BEGIN IMMEDIATE`), from the engine's `begin` event
    on `conn`: SQLAlchemy's `begin` event, then this, is how SQLAlchemy's documentation has SQLite begin; errors as
    `Connection.execute` would raise them (a lock held past the busy timeout: an `OperationalError`)."""
    if conn.dispatch.before_cursor_execute or conn.dispatch.after_cursor_execute:
        conn.exec_driver_sql(sql)
        return
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None  # a live connection has one (for mypy)
    cursor = None
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute(sql)
        cursor.close()
    except BaseException as exc:  # as _execute
        conn._handle_dbapi_exception(exc, sql, (), cursor, None)
        raise  # not reached: the handler always raises


def _execute(
    conn: sa.Connection, sql: str, args: Any, *, many: bool, fetch: bool, describe: bool = False
) -> tuple[Sequence[Any], Any]:
    """The rows of `sql` run with `args` (with `fetch`), and with `describe` the cursor's description (psycopg
    makes its column objects afresh at each reading: read once per statement, not at each run)."""
    if not conn.in_transaction():  # where Connection.execute would begin one (on SQLite, not IMMEDIATE): a bug
        raise RuntimeError("prepared statements run in a transaction begun by their caller")
    if conn.dispatch.before_cursor_execute or conn.dispatch.after_cursor_execute:
        result = conn.exec_driver_sql(sql, args)
        if not fetch:
            return (), None
        description = result.cursor.description if describe else None  # before the fetch, which closes the cursor
        return result.fetchall(), description
    dbapi_connection = conn.connection.dbapi_connection  # outside the handler: its own errors are SQLAlchemy's
    assert dbapi_connection is not None  # a live connection has one (for mypy)
    cursor = None
    try:
        cursor = dbapi_connection.cursor()
        if many:
            cursor.executemany(sql, args)
        else:
            cursor.execute(sql, args)
        found = (cursor.fetchall(), cursor.description if describe else None) if fetch else ((), None)
        cursor.close()
        return found
    except BaseException as exc:  # as Connection.execute handles it (and raises), interruptions included
        # SQLAlchemy's own handler (private: the version is pinned, and tests/test_prepared.py runs it).
        conn._handle_dbapi_exception(exc, sql, args, cursor, None)
        raise  # not reached: the handler always raises


def _compile(statement: sa.Executable, dialect: sa.Dialect) -> _Compiled:
    if not isinstance(statement, sa.ClauseElement):
        raise TypeError(f"not a statement: {statement!r}")
    compiled = statement.compile(dialect=dialect, column_keys=[])
    if not isinstance(compiled, sa.sql.compiler.SQLCompiler):
        raise TypeError(f"not a SQL statement: {statement!r}")
    if compiled.literal_execute_params or compiled.post_compile_params or compiled.escaped_bind_names:
        raise ValueError(f"parameters expanded at execution: {compiled.string}")
    if compiled.effective_returning and not compiled.implicit_returning:  # the primary key SQLAlchemy adds: unread
        raise ValueError(f"RETURNING is not read here: {compiled.string}")
    fixed: dict[str, Any] = {}
    processors: dict[str, Callable[[Any], Any]] = {}
    for bind, name in compiled.bind_names.items():
        if bind.callable is not None:
            raise ValueError(f"a parameter computed at execution ({name}): {compiled.string}")
        if not bind.required:
            fixed[name] = bind.value
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors[name] = processor
    prefetch = [(c, c.default) for c in compiled.insert_prefetch] + [(c, c.onupdate) for c in compiled.update_prefetch]
    for column, default in prefetch:
        if default is None or not default.is_scalar:
            raise ValueError(f"a default computed at execution ({column.key}): {compiled.string}")
        fixed[column.key] = default.arg  # type: ignore[attr-defined]
    columns_named: set[str] = set()
    if isinstance(statement, (sa.Insert, sa.Update)):  # a parameter named after a column adds it to the statement
        for key in statement.table.c.keys():  # noqa: SIM118 (a column collection)
            if statement.compile(dialect=dialect, column_keys=[key]).string != compiled.string:
                columns_named.add(key)
    rendered = tuple(dict.fromkeys(compiled.bind_names.values()))
    names = tuple(compiled.positiontup or ()) if compiled.positional else rendered
    row: type[tuple[Any, ...]] | None = None
    types: tuple[Any, ...] = ()
    if isinstance(statement, sa.Select):
        selected = statement.selected_columns
        row = collections.namedtuple("Row", selected.keys())  # type: ignore[misc,no-redef]
        types = tuple(c.type.dialect_impl(dialect) for c in selected)
    named = frozenset(columns_named)
    return _Compiled(compiled.string, names, compiled.positional, processors, fixed, named, row, types)
