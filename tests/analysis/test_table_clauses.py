"""analysis may not import the ORM (abtest.tables: layering), so it reads the tables through
light `table()` clauses; each must name a real table and only its real columns, with types of
the same kind, or a renamed column would only fail in a query at report time."""

import sqlalchemy as sa
from sqlalchemy.sql.expression import TableClause

from abtest.tables import Base
from analysis import queries, rollup

KINDS = {
    sa.Integer: "number", sa.BigInteger: "number", sa.Float: "number", sa.Numeric: "number",
    sa.String: "text", sa.Text: "text", sa.Boolean: "bool", sa.Date: "date",
    sa.DateTime: "time", sa.JSON: "json",
}  # fmt: skip


def _kind(column_type: sa.types.TypeEngine) -> str | None:
    for base, kind in KINDS.items():
        if isinstance(column_type, base):
            return kind
    return None


def _clauses() -> list[tuple[str, TableClause]]:
    found = []
    for module in (queries, rollup):
        for name, value in vars(module).items():
            if isinstance(value, TableClause) and not isinstance(value, sa.Table):
                found.append((f"{module.__name__}.{name}", value))
    return found


def test_every_table_clause_of_analysis_matches_the_orm():
    clauses = _clauses()
    assert len(clauses) >= 8  # the events, assignments, experiments, arms and rollup tables
    for where, clause in clauses:
        assert clause.name in Base.metadata.tables, f"{where}: no table {clause.name!r}"
        real = Base.metadata.tables[clause.name].c
        for column in clause.c:
            assert column.name in real, f"{where}: {clause.name} has no column {column.name!r}"
            ours, theirs = _kind(column.type), _kind(real[column.name].type)
            if ours is not None and theirs is not None:
                assert ours == theirs, f"{where}.{column.name}: {ours} here, {theirs} in the ORM"
