"""Embedding student on the bundled 1,000-intent test split: offline scores and serving time.

Scores (analysis.offline_metrics.score_subsets: all / r3 / r5, per tool selection, quality,
final) for
the committed embedding student and, in the same process, the kNN char-n-gram baseline; the
time to serve the 1,000 intents through each arm's `predict_batch` (encoder already loaded).

    python bench/bench_embedding_student.py
"""

from __future__ import annotations

import asyncio
import time

from analysis.offline_metrics import score_subsets
from models.arms.factory import build_arm
from models.dataset import load_split
from models.distill.embedding_student import embedding_variant_config, ensure_embedding_student


def _serve(arm, intents) -> tuple[list, float]:
    started = time.perf_counter()
    predictions = asyncio.run(arm.predict_batch(intents))
    return predictions, time.perf_counter() - started


def main() -> None:
    test = load_split("test")
    intents = [r.intent for r in test]
    truth = [r.teacher for r in test]
    calls = [r.calls for r in test]
    path = ensure_embedding_student("/tmp/abtest-embedding-cache")
    started = time.perf_counter()
    arm = build_arm("local_student", "embedding-student", embedding_variant_config(path))
    load_s = time.perf_counter() - started
    asyncio.run(arm.predict_batch(intents[:8]))  # warm-up
    arms = {"embedding": arm, "knn": build_arm("knn_student", "knn", {"fit": "train"})}
    results = {}
    for label, each in arms.items():
        predictions, seconds = _serve(each, intents)
        results[label] = (score_subsets([p.config for p in predictions], truth, calls), seconds)
    print(f"embedding student {path} (arm load {load_s:.1f} s)")
    for label, (subsets, seconds) in results.items():
        print(
            f"{label:9s} overall {subsets['all'].overall:.4f}  r3 {subsets['r3'].overall:.4f}  "
            f"r5 {subsets['r5'].overall:.4f}  serve 1,000 intents {seconds:.2f} s"
        )
        for tool, s in subsets["all"].tools.items():
            print(
                f"    {tool:17s} selection {s.selection:.4f}  quality {s.quality:.4f}  "
                f"final {s.final:.4f}"
            )
    ratio = results["embedding"][0]["all"].overall / results["knn"][0]["all"].overall
    print(f"overall ratio embedding / knn: {ratio:.2f}")


if __name__ == "__main__":
    main()
