"""Rows of a hot read statement straight from the driver's cursor.

SQLAlchemy's result handling (result metadata, row objects, per-column processing) costs
more than an indexed lookup on PostgreSQL: about a third of a FHIR read's one statement. For
the few statements on the read path that run on every request, :func:`driver_rows` hands the
compiled statement to psycopg's cursor and applies the result processors SQLAlchemy would
(the UTC timestamps), so callers get the same values either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from sqlalchemy import Select
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

_COMPILED: dict[Select[Any], tuple[str, list[Callable[[Any], Any] | None]]] = {}


def driver_rows(session: Session, stmt: Select[Any], params: dict[str, str]
                ) -> Sequence[Sequence[Any]]:
    """The rows of ``stmt`` (built once, at import) with ``params``.

    From the driver's cursor on PostgreSQL in a read session (autocommit), where a failed
    statement leaves no transaction behind: a driver error re-runs the statement through
    SQLAlchemy, which raises it the usual way (a lost connection invalidates the pool and
    answers 503). Everywhere else through SQLAlchemy.
    """
    conn = session.connection()
    if conn.dialect.name == "postgresql" and \
            conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        compiled = _COMPILED.get(stmt)
        if compiled is None:
            compiled = _COMPILED[stmt] = (
                str(stmt.compile(dialect=conn.dialect)),
                [c.type.result_processor(conn.dialect, None) for c in stmt.selected_columns])
        sql, processors = compiled
        try:
            with conn.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
                cursor.execute(sql, params)
                return [tuple(value if process is None else process(value)
                              for process, value in zip(processors, row, strict=True))
                        for row in cursor.fetchall()]
        except psycopg.Error:
            log.debug("a read through the driver failed; again through SQLAlchemy",
                      exc_info=True)
    return conn.execute(stmt, params).all()
