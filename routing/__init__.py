"""Routing: the production path of an editing project.

`hashing` (seed + project id -> [0, 1)), `assignment` (weights, coverage, overrides,
namespaces, stickiness), `router` (assign -> call the arm with timeout and fallback -> log) and
`events` (idempotent writes, batch ingest, spool and replay), `storage` (experiment definitions
and the first-assignment store over tables the app passes in), `pg_gateway` (the request
path's one-statement group commit on PostgreSQL, on the event loop) and `metrics` (Prometheus).
Depends on `models` only; `abtest.runtime.build_router` wires it to the app's tables.
"""
