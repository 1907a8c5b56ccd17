"""Distillation services: read teacher outputs and exports from the events table, register a
trained student as a variant. The pure work lives in `models.distill`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from abtest import services
from abtest.errors import Invalid, NotFound
from abtest.tables import Event, Experiment, Variant
from models.dataset import IntentRecord
from models.distill.dataset_builder import LoggedCall
from models.distill.train import TrainError, read_model_card
from models.tools import ToolConfig


def read_logged_calls(
    session: Session,
    served_by: Sequence[str] = (),
    experiment_key: str | None = None,
) -> list[LoggedCall]:
    """One `LoggedCall` per logged start with an intent and an output (no fallback, no error).

    `exported` is whether the same project (in the same experiment) has an export event.
    `served_by` keeps only starts answered by those variants; by default, starts answered by a
    teacher variant (kind teacher or recorded): the dataset distils the teacher, not students.
    """
    experiment_id = None
    if experiment_key is not None:
        experiment_id = session.scalar(
            select(Experiment.id).where(Experiment.key == experiment_key)
        )
        if experiment_id is None:
            raise NotFound("experiment", f"no experiment with key {experiment_key!r}")
    for name in served_by:
        if session.scalar(select(Variant.id).where(Variant.name == name)) is None:
            raise NotFound("served_by", f"no variant named {name!r}")
    if not served_by:
        served_by = session.scalars(
            select(Variant.name).where(Variant.kind.in_(services.TEACHER_KINDS))
        ).all()

    exports = select(Event.project_id, Event.experiment_id).where(Event.type == "export")
    starts = select(Event.project_id, Event.experiment_id, Event.intent, Event.output).where(
        Event.type == "start",
        Event.intent.is_not(None),
        Event.output.is_not(None),
        Event.error.is_(None),
        Event.fallback.is_(False),
    )
    if experiment_id is not None:
        exports = exports.where(Event.experiment_id == experiment_id)
        starts = starts.where(Event.experiment_id == experiment_id)
    starts = starts.where(Event.served_by.in_(list(served_by)))
    exported = {(row.project_id, row.experiment_id) for row in session.execute(exports)}
    return [
        LoggedCall(row.intent, row.output, (row.project_id, row.experiment_id) in exported)
        for row in session.execute(starts.order_by(Event.id))
    ]


def student_variant_config(path: str | Path) -> dict[str, Any]:
    """The `local_student` variant config for a trained model directory (checked)."""
    directory = Path(path).resolve()
    try:
        card = read_model_card(directory)
    except TrainError as exc:
        raise Invalid("path", str(exc).removeprefix("path: ")) from None
    # `kind` is what models.arms.factory calls the architecture of a local student.
    return {"path": str(directory), "kind": card["architecture"]}


def register_trained_student(
    session: Session, name: str, path: str | Path, actor: str = "unknown"
) -> Variant:
    """Register a trained student directory as a `local_student` variant (status registered)."""
    config = student_variant_config(path)
    card = read_model_card(config["path"])
    overall = (card.get("metrics") or {}).get("overall")
    description = (
        f"{card['architecture']} student, best epoch {card['best_epoch']}"
        + (f", offline overall {overall:.3f}" if overall is not None else "")
        + f", train sha256 {card['data']['train_sha256'][:12]}"
    )
    return services.register_variant(session, name, "local_student", config, description, actor)


# --- analysis.offline_metrics wired into models.distill (models never import analysis) ----


def offline_evaluator(
    configs: Sequence[ToolConfig],
    records: Sequence[IntentRecord],
    failures: Sequence[tuple[str, ...]],
) -> dict[str, Any]:
    """The paper's metric suite on all rows and the r3 / r5 subsets; `overall` on top."""
    from analysis.offline_metrics import score_subsets

    subsets = score_subsets(
        configs, [r.teacher for r in records], [r.calls for r in records], failures
    )
    return {"overall": subsets["all"].overall, **{k: v.as_dict() for k, v in subsets.items()}}


def offline_mistakes(
    predictions: Sequence[ToolConfig], truth: Sequence[ToolConfig]
) -> dict[str, Any]:
    from analysis.offline_metrics import mistakes

    return mistakes(predictions, truth)
