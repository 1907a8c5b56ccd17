"""Every text or JSON value an ORM write carries is one the database can store.

PostgreSQL refuses NUL characters, lone surrogates (e.g. undecodable command-line bytes),
NaN/Infinity in JSON and JSON nested too deep; SQLite stores them. A flush holding one raises
`Invalid` naming the column instead: a 422 or a one-line CLI error on both backends, never a
500, a traceback or "cannot open the database". Imported by `abtest.services`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, String, Text, event, inspect
from sqlalchemy.orm import Session

from abtest.errors import Invalid
from routing.eventlog import json_problem

# JSON that users write (configs, test settings); computed JSON (reports, gate metrics) is
# the analysis code's to keep storable
USER_JSON_TABLES = frozenset({"variants", "experiments"})


def check_instance(instance: Any) -> None:
    """`Invalid(column)` for the first text (or user JSON) value the database would refuse."""
    mapper = inspect(instance).mapper
    user_json = getattr(mapper.local_table, "name", None) in USER_JSON_TABLES
    for column in mapper.columns:
        if isinstance(column.type, JSON) and not user_json:
            continue
        if not isinstance(column.type, String | Text | JSON):
            continue
        key = mapper.get_property_by_column(column).key
        value = getattr(instance, key, None)
        if value is None:
            continue
        found = json_problem(value, key)
        if found is not None:
            where, reason = found
            raise Invalid(where, reason)


@event.listens_for(Session, "before_flush")
def _check_writes(session: Session, _context: Any, _instances: Any) -> None:
    for instance in (*session.new, *session.dirty):
        check_instance(instance)
