"""Compatibility: the event log moved to `routing.eventlog` (import from there)."""

from routing.eventlog import *  # noqa: F403
from routing.eventlog import __all__  # noqa: F401
