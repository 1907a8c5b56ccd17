"""A two-arm experiment ("e1": control=teacher, treatment=student) for serving tests."""

import sqlalchemy as sa

from abtest import db, services
from tests.gate_helpers import approved_student, reference_teacher


def make_two_arm_experiment(
    engine: sa.Engine, weights: tuple[float, float] = (0.5, 0.5), start: bool = True
) -> None:
    """Register both variants and create "e1" (started unless `start` is false)."""
    with db.session_scope(engine) as session:
        reference_teacher(session)
        approved_student(session, "student")
        services.create_experiment(
            session,
            services.ExperimentSpec(
                "e1",
                [
                    services.ArmSpec("control", "teacher", weights[0], True),
                    services.ArmSpec("treatment", "student", weights[1]),
                ],
            ),
        )
        if start:
            services.start_experiment(session, "e1")


def start_two_arm_experiment(url: str) -> sa.Engine:
    """Migrate the database at `url`, register both variants and start "e1"; returns the engine."""
    engine = db.make_engine(url)
    db.upgrade(engine)
    make_two_arm_experiment(engine)
    return engine
