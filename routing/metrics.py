"""Prometheus metrics of the router, in a registry of their own (one per app)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "abtest_arm_latency_seconds",
            "Time to answer a project, by assigned arm",
            ["experiment", "arm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.projects = Counter(
            "abtest_projects",
            "Projects routed",
            ["experiment", "arm", "in_experiment"],
            registry=r,
        )
        self.fallbacks = Counter(
            "abtest_fallbacks",
            "Answers served by the control arm instead of the assigned arm",
            ["experiment", "arm", "reason"],
            registry=r,
        )
        self.arm_errors = Counter(
            "abtest_arm_errors", "Arm calls that failed", ["arm", "reason"], registry=r
        )
        self.cache_hits = Counter(
            "abtest_cache_hits", "Answers an arm served from its cache", ["arm"], registry=r
        )
        self.assignment_lookups = Gauge(
            "abtest_assignment_cache_lookups",
            "Assignment lookups answered by the in-process/Redis cache (hit) or not (miss)",
            ["result"],
            registry=r,
        )
        self.events = Counter(
            "abtest_events",
            "Events by outcome (stored, duplicate, spooled)",
            ["outcome"],
            registry=r,
        )
        self.circuit_open = Gauge(
            "abtest_circuit_open", "1 while an arm's circuit breaker is open", ["arm"], registry=r
        )
        self.spool_depth = Gauge(
            "abtest_spool_depth", "Events and assignments waiting in the local spool", registry=r
        )
        self.dead_letters = Gauge(
            "abtest_dead_letters",
            "Spooled entries the database refused at replay, kept in the spool's dead letters "
            "(`abtest spool dead-letters`)",
            registry=r,
        )
        self.assignment_conflicts = Counter(
            "abtest_assignment_conflicts",
            "New assignments that found the project already stored in another arm (a concurrent "
            "first request during a weight change); the stored arm wins",
            registry=r,
        )
        self._children: dict[tuple[str, str, bool], tuple[Any, Any]] = {}
        self._outcomes: dict[str, Any] = {}

    def event_outcome(self, outcome: str) -> None:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self.events.labels(outcome)
        child.inc()

    def project_children(self, experiment: str, arm: str, in_experiment: bool) -> tuple[Any, Any]:
        """The latency histogram and project counter of one (experiment, arm), looked up once
        (`labels()` costs more than the observation on the request path)."""
        key = (experiment, arm, in_experiment)
        children = self._children.get(key)
        if children is None:
            children = (
                self.latency.labels(experiment, arm),
                self.projects.labels(experiment, arm, str(in_experiment).lower()),
            )
            self._children[key] = children
        return children

    def watch_spool(
        self, depth: Callable[[], float], dead_letters: Callable[[], float] | None = None
    ) -> None:
        self.spool_depth.set_function(depth)
        if dead_letters is not None:
            self.dead_letters.set_function(dead_letters)

    def watch_assignment_cache(
        self, hits: Callable[[], float], misses: Callable[[], float]
    ) -> None:
        self.assignment_lookups.labels("hit").set_function(hits)
        self.assignment_lookups.labels("miss").set_function(misses)
