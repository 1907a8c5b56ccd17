"""Building the arm behind a variant: one place for the router, the gate and the demo."""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any, Protocol

from abtest.errors import Invalid
from abtest.settings import Settings, get_settings
from models.arms.base import Arm
from models.arms.factory import build_arm
from models.dataset import bundled_path, file_hash, load_records


class VariantLike(Protocol):
    name: str
    kind: str
    config: dict[str, Any]


@lru_cache(maxsize=2)
def _fitted_knn(train_sha256: str) -> Any:
    from models.arms.knn import KnnStudent

    return KnnStudent().fit(load_records(bundled_path("train")))


def build_variant_arm(variant: VariantLike, settings: Settings | None = None) -> Arm:
    """The arm behind a variant, built by `models.arms.factory.build_arm`.

    A kNN student fitted on the bundled train split (`{"fit": "train"}`) is fitted once per
    process and shared (the fit is deterministic); everything else goes through the factory.
    A bad configuration is an `Invalid` naming the field.
    """
    config = dict(variant.config or {})
    if variant.kind == "knn_student" and config == {"fit": "train"}:
        model = copy.copy(_fitted_knn(file_hash(bundled_path("train"))))
        model.name = variant.name
        return model
    settings = settings or get_settings()
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    try:
        return build_arm(
            variant.kind,
            variant.name,
            config,
            openai_api_key=key,
            openai_base_url=settings.openai_base_url,
            timeout_s=settings.arm_timeout_s,
        )
    except ValueError as exc:
        field, _, reason = str(exc).partition(": ")
        if not reason:
            field, reason = "config", str(exc)
        raise Invalid(field, f"cannot build variant {variant.name!r}: {reason}") from None
