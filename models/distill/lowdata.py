"""The shape of the paper's Table 3 at this machine's scale: train subsets with and without
mistake-driven augmentation (section 4.2, RQ2).

For each fraction (100, 50, 25, 12.5% by default) of a seeded training pool, train a student,
score it on the test split, then (for fractions below 100%, as in the paper) run one
augmentation iteration with mistakes found on a sample of the subset (1,000 rows, or all rows
of a smaller subset), retrain on subset + augmentations and score again.

Defaults are sized for two CPU cores: a pool of 1,000 training intents, the demo's tiny
from-scratch model, 3 epochs, 300 test rows. Every trained model is kept under the work
directory. Scoring, mistake detection and the augmentation LLM are injected.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from models.dataset import IntentRecord
from models.distill.augment import DEFAULT_SAMPLE_SIZE, IntentWriter, MistakeFinder, augment_once
from models.distill.demo_student import DEMO_SETTINGS
from models.distill.train import Evaluator, StudentPredictor, TrainSettings, train_student

DEFAULT_FRACTIONS = (1.0, 0.5, 0.25, 0.125)
DEFAULT_POOL = 1000
LOWDATA_SETTINGS = replace(DEMO_SETTINGS, epochs=3, eval_limit=300, evaluate_every_epoch=False)


@dataclass(frozen=True)
class LowDataRow:
    fraction: float
    augmented: bool
    augmentations: int
    train_size: int
    overall: float
    model_path: str

    @property
    def augmentation_share(self) -> float:
        return self.augmentations / self.train_size if self.train_size else 0.0


def _subset(pool: Sequence[IntentRecord], fraction: float, seed: int) -> list[IntentRecord]:
    size = max(1, round(len(pool) * fraction))
    return random.Random(seed).sample(list(pool), size)


def run_lowdata(
    train: Sequence[IntentRecord],
    test: Sequence[IntentRecord],
    work_dir: str | Path,
    evaluate: Evaluator,
    find_mistakes: MistakeFinder,
    write_similar: IntentWriter,
    *,
    settings: TrainSettings = LOWDATA_SETTINGS,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    pool_size: int | None = DEFAULT_POOL,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    show_progress: bool = True,
    on_row: Callable[[LowDataRow], None] | None = None,
) -> list[LowDataRow]:
    """Train and score every (fraction, with/without augmentation) cell; return the rows."""
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"fractions: {fraction} is not in (0, 1]")
    work = Path(work_dir)
    pool = list(train)
    if pool_size is not None and pool_size < len(pool):
        pool = random.Random(seed).sample(pool, pool_size)
    rows: list[LowDataRow] = []

    def run(name: str, records: list[IntentRecord], fraction: float, added: int) -> Path:
        path = work / name
        result = train_student(records, test, path, settings, evaluate, show_progress=show_progress)
        row = LowDataRow(
            fraction, added > 0 or name.endswith("-aug"), added, len(records),
            float(result.metrics["overall"]) if result.metrics else float("nan"), str(path),
        )  # fmt: skip
        rows.append(row)
        if on_row:
            on_row(row)
        return path

    for fraction in fractions:
        subset = _subset(pool, fraction, seed)
        label = f"{fraction * 100:g}pct"
        path = run(label, subset, fraction, 0)
        if fraction >= 1:
            continue
        predictor = StudentPredictor(path, batch_size=settings.eval_batch_size,
                                     max_new_tokens=settings.max_new_tokens)  # fmt: skip
        added, _ = augment_once(
            subset, predictor, find_mistakes, write_similar, sample_size=sample_size, seed=seed
        )
        run(f"{label}-aug", subset + added, fraction, len(added))
    return rows


def table_markdown(rows: Sequence[LowDataRow]) -> str:
    """Rows in the layout of the paper's Table 3."""
    lines = ["| Train % | Augmentations | Train size | Overall |", "|---|---|---|---|"]
    for row in rows:
        augmentations = (
            f"{row.augmentations} ({row.augmentation_share * 100:.1f}%)" if row.augmented else ""
        )
        lines.append(
            f"| {row.fraction * 100:g} | {augmentations} | {row.train_size} | {row.overall:.2f} |"
        )
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[LowDataRow], out_dir: str | Path, meta: dict[str, Any]) -> Path:
    """`lowdata.md` and `lowdata.json` under `out_dir`; returns the markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {
        **meta,
        "rows": [{**asdict(r), "augmentation_share": r.augmentation_share} for r in rows],
    }
    (out / "lowdata.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    markdown = out / "lowdata.md"
    markdown.write_text(
        "# Low-data study (shape of the paper's Table 3)\n\n" + table_markdown(rows)
    )
    return markdown
