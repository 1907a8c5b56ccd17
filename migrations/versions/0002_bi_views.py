"""SQL views for BI tools: abtest_arm_daily and abtest_results

The views apply the counting rules of `analysis/queries.py` to every experiment at once:
starts = distinct projects with a start event (by the UTC day of the first start), exports =
started projects with an export (by the UTC day of max(first start, first export)); the arm is
the project's assignment, else the arm on its start events; exports without experiment are
matched to the experiments their project is assigned in. `abtest_results` adds per-arm totals,
the completion rate and the latest stored report's decision and SRM flag.

The views are not in the ORM metadata (autogenerate ignores them: see migrations/env.py).

Revision ID: 0002_bi_views
Revises: 0001
Create Date: 2026-11-26 21:56:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002_bi_views"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DAY = {
    "postgresql": "CAST(timezone('UTC', {0}) AS DATE)",
    "sqlite": "substr({0}, 1, 10)",
}

ARM_DAILY = """
CREATE VIEW abtest_arm_daily AS
WITH scoped AS (
    SELECT e.experiment_id, e.project_id, e.type, e.occurred_at, e.arm_id
    FROM events e
    WHERE e.experiment_id IS NOT NULL
    UNION ALL
    SELECT a.experiment_id, e.project_id, e.type, e.occurred_at, NULL
    FROM events e JOIN assignments a ON a.project_id = e.project_id
    WHERE e.experiment_id IS NULL
),
per_project AS (
    SELECT experiment_id, project_id,
           MIN(CASE WHEN type = 'start' THEN occurred_at END) AS first_start,
           MIN(CASE WHEN type = 'export' THEN occurred_at END) AS first_export,
           MIN(CASE WHEN type = 'start' THEN arm_id END) AS event_arm_id
    FROM scoped
    GROUP BY experiment_id, project_id
),
projects AS (
    SELECT p.experiment_id, COALESCE(a.arm_id, p.event_arm_id) AS arm_id,
           p.first_start, p.first_export,
           CASE WHEN p.first_export > p.first_start THEN p.first_export
                ELSE p.first_start END AS completed_at
    FROM per_project p
    LEFT JOIN assignments a
           ON a.experiment_id = p.experiment_id AND a.project_id = p.project_id
    WHERE p.first_start IS NOT NULL
),
flags AS (
    SELECT experiment_id, arm_id, {start_day} AS day, 1 AS started, 0 AS exported
    FROM projects WHERE arm_id IS NOT NULL
    UNION ALL
    SELECT experiment_id, arm_id, {completion_day} AS day, 0 AS started, 1 AS exported
    FROM projects WHERE arm_id IS NOT NULL AND first_export IS NOT NULL
)
SELECT x.key AS experiment_key, f.experiment_id, ar.name AS arm, f.arm_id,
       ar.is_control, f.day, SUM(f.started) AS starts, SUM(f.exported) AS exports
FROM flags f
JOIN experiments x ON x.id = f.experiment_id
JOIN experiment_arms ar ON ar.id = f.arm_id
GROUP BY x.key, f.experiment_id, ar.name, f.arm_id, ar.is_control, f.day
"""

RESULTS = """
CREATE VIEW abtest_results AS
WITH totals AS (
    SELECT experiment_id, arm_id, SUM(starts) AS starts, SUM(exports) AS exports
    FROM abtest_arm_daily
    GROUP BY experiment_id, arm_id
),
latest AS (
    SELECT r.experiment_id, r.period_end, r.decision, r.srm
    FROM reports r
    WHERE r.period_end = (
        SELECT MAX(r2.period_end) FROM reports r2 WHERE r2.experiment_id = r.experiment_id
    )
)
SELECT x.key AS experiment_key, x.id AS experiment_id, x.status, ar.name AS arm,
       ar.id AS arm_id, ar.is_control, ar.weight,
       COALESCE(t.starts, 0) AS starts, COALESCE(t.exports, 0) AS exports,
       CAST(t.exports AS FLOAT) / NULLIF(t.starts, 0) AS completion_rate,
       latest.period_end AS latest_report_period_end,
       latest.decision AS latest_decision, latest.srm AS latest_srm
FROM experiments x
JOIN experiment_arms ar ON ar.experiment_id = x.id
LEFT JOIN totals t ON t.arm_id = ar.id
LEFT JOIN latest ON latest.experiment_id = x.id
"""


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    day = DAY.get(dialect, DAY["postgresql"])
    op.execute(
        ARM_DAILY.format(
            start_day=day.format("first_start"), completion_day=day.format("completed_at")
        )
    )
    op.execute(RESULTS)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS abtest_results")
    op.execute("DROP VIEW IF EXISTS abtest_arm_daily")
