"""Alembic migrations for the tables in `abtest.tables`."""
