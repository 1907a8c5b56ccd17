"""Building the arm behind a variant: one place for the router, the gate and the demo."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from abtest.errors import Invalid
from abtest.settings import Settings, base_url_allowlist, get_settings, model_dirs
from models.arms.base import Arm
from models.arms.factory import PATH_KEYS, build_arm, validate_config
from models.dataset import bundled_path, file_hash, load_records


class VariantLike(Protocol):
    name: str
    kind: str
    config: dict[str, Any]


@lru_cache(maxsize=2)
def _fitted_knn(train_sha256: str) -> Any:
    from models.arms.knn import KnnStudent

    return KnnStudent().fit(load_records(bundled_path("train")))


def _invalid(exc: ValueError) -> Invalid:
    field, _, reason = str(exc).partition(": ")
    return Invalid(field, reason) if reason else Invalid("config", str(exc))


def check_variant_config(
    kind: str, config: Mapping[str, Any] | None, settings: Settings | None = None
) -> dict[str, Any]:
    """The config of a variant of `kind`, checked and normalised for storing.

    Per-kind keys, types and required values (`models.arms.factory.validate_config`); model
    paths resolved to absolute paths that must lie under an allowed model directory
    (`ABTEST_MODEL_DIR`) and exist there; `base_url` restricted to the allowlist
    (`ABTEST_ARM_BASE_URL_ALLOWLIST`). `Invalid` naming the field; touches no model file.
    """
    settings = settings or get_settings()
    try:
        checked = validate_config(kind, config, openai_base_url=settings.openai_base_url)
    except ValueError as exc:
        raise _invalid(exc) from None
    for key in PATH_KEYS.get(kind, ()):
        if checked.get(key) is not None:
            checked[key] = str(_model_path(kind, key, checked[key], settings))
    url = checked.get("base_url")
    if url is not None:
        _check_base_url(url, settings)
    return checked


def under_model_dir(value: str | Path, field: str, settings: Settings | None = None) -> Path:
    """`value` as an absolute path under an allowed model directory (relative: under the
    first), else `Invalid(field)`; the message is the same whether or not the path exists."""
    roots = model_dirs(settings or get_settings())
    candidate = Path(value).expanduser()
    resolved = (candidate if candidate.is_absolute() else roots[0] / candidate).resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        where = ", ".join(str(r) for r in roots)
        raise Invalid(field, f"must lie under the model directory ({where}; ABTEST_MODEL_DIR)")
    return resolved


def _model_path(kind: str, key: str, value: str, settings: Settings) -> Path:
    resolved = under_model_dir(value, f"config.{key}", settings)
    want_file = kind == "knn_student"
    if want_file and not resolved.is_file():
        raise Invalid(f"config.{key}", f"{resolved} is not a file")
    if not want_file and not resolved.is_dir():
        raise Invalid(f"config.{key}", f"{resolved} is not a directory")
    return resolved


def _check_base_url(url: str, settings: Settings) -> None:
    allowed = base_url_allowlist(settings)
    if "*" in allowed:
        return
    host = (urlsplit(url).hostname or "").lower()
    for entry in allowed:
        if entry.startswith(("http://", "https://")):
            if url.startswith(entry):
                return
        elif host == entry.lower().strip("[]"):
            return
    raise Invalid(
        "config.base_url",
        f"host {host or url!r} is not in the allowlist ({', '.join(allowed) or 'empty'}; "
        "ABTEST_ARM_BASE_URL_ALLOWLIST)",
    )


def build_variant_arm(variant: VariantLike, settings: Settings | None = None) -> Arm:
    """The arm behind a variant, built by `models.arms.factory.build_arm`.

    A kNN student fitted on the bundled train split (`{"fit": "train"}`) is fitted once per
    process and shared (the fit is deterministic); everything else goes through the factory.
    A bad configuration is an `Invalid` naming the field.
    """
    settings = settings or get_settings()
    config = check_variant_config(variant.kind, variant.config, settings)
    if variant.kind == "knn_student" and config == {"fit": "train"}:
        model = copy.copy(_fitted_knn(file_hash(bundled_path("train"))))
        model.name = variant.name
        return model
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
        error = _invalid(exc)
        raise Invalid(
            error.field, f"cannot build variant {variant.name!r}: {error.reason}"
        ) from None
