"""Offline metrics on 1,000 rows: vectorised `analysis.offline_metrics` against a per-row loop.

Both run in this process on the same rows: the bundled test split as truth and the kNN student's
predictions (fit on the train split). Prints the median time of each, the ratio, and the time of
a 1,000-resample paired bootstrap. Target: scoring 1,000 rows well under a second.

    python bench/bench_offline.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

from analysis import offline_metrics
from analysis.offline_reference import reference_scores
from models.arms.knn import KnnStudent
from models.dataset import load_split


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    test = load_split("test")
    truth = [r.teacher for r in test]
    calls = [r.calls for r in test]
    predictions = KnnStudent().fit(load_split("train")).predict_configs([r.intent for r in test])
    assert len(truth) == 1000

    loop_s, loop = timed(lambda: reference_scores(predictions, truth), args.repeats)
    fast_s, fast = timed(lambda: offline_metrics.score(predictions, truth), args.repeats)
    encoded_pred, encoded_truth = offline_metrics.encode(predictions), offline_metrics.encode(truth)
    metrics_s, _ = timed(lambda: offline_metrics.score(encoded_pred, encoded_truth), args.repeats)
    subsets_s, _ = timed(
        lambda: offline_metrics.score_subsets(predictions, truth, calls), args.repeats
    )
    boot_s, _ = timed(
        lambda: offline_metrics.compare(predictions, truth, truth, resamples=1000),
        max(args.repeats // 2, 1),
    )
    assert abs(loop["overall"]["final"] - fast.overall) < 1e-9, "implementations disagree"

    print(f"rows: {len(truth)}  overall: {fast.overall:.4f}")
    print(f"per-row Python loop:        {loop_s * 1000:8.2f} ms")
    print(f"vectorised, incl. stacking: {fast_s * 1000:8.2f} ms  ratio {loop_s / fast_s:.1f}x")
    print(
        f"vectorised, stacked input:  {metrics_s * 1000:8.2f} ms  ratio {loop_s / metrics_s:.1f}x"
    )
    print(f"all + r3 + r5 subsets:      {subsets_s * 1000:8.2f} ms")
    print(f"paired bootstrap, B=1000:   {boot_s * 1000:8.2f} ms")
    print(f"under one second: {'yes' if fast_s < 1 and boot_s < 1 else 'NO'}")


if __name__ == "__main__":
    main()
