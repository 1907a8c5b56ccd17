"""Request bodies: unknown fields refused, and every value one the database can store.

A value PostgreSQL refuses (NUL characters, lone surrogates, NaN/Infinity, JSON nested too
deep) is a 422 naming the field here, never a 500 from the database later.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from routing.eventlog import json_problem


def storable(value: Any, path: str = "value") -> Any:
    """`value` unchanged, or ValueError naming what the database would refuse in it."""
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return value  # nested models check their own fields
    found = json_problem(value, path)
    if found is not None:
        where, reason = found
        raise ValueError(reason if where == path else f"{where.removeprefix(path + '.')} {reason}")
    return value


class StrictBody(BaseModel):
    """A JSON body: no unknown fields (a typo is an error, not ignored), storable values."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _text_is_storable(cls, value: Any) -> Any:
        return storable(value)
