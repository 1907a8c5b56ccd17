"""A running two-arm experiment ("e1": control=teacher, treatment=student) for serving tests."""

import sqlalchemy as sa

from abtest import db, services


def start_two_arm_experiment(url: str) -> sa.Engine:
    """Migrate the database at `url`, register both variants and start "e1"; returns the engine."""
    engine = db.make_engine(url)
    db.upgrade(engine)
    with db.session_scope(engine) as session:
        services.register_variant(session, "teacher", "teacher")
        services.register_variant(session, "student", "teacher")
        services.create_experiment(
            session,
            services.ExperimentSpec(
                "e1",
                [
                    services.ArmSpec("control", "teacher", 0.5, True),
                    services.ArmSpec("treatment", "student", 0.5),
                ],
            ),
        )
        services.start_experiment(session, "e1")
    return engine
