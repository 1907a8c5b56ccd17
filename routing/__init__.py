"""Routing: the production path of an editing project.

`hashing` (seed + project id -> [0, 1)), `assignment` (weights, coverage, overrides,
namespaces, stickiness), `router` (assign -> call the arm with timeout and fallback -> log) and
`events` (idempotent writes, batch ingest, spool and replay). Depends on `models` only; storage
comes in through the small protocols it defines, implemented by `abtest`.
"""
