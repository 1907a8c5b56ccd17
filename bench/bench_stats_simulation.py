"""The validity simulations: vectorised `analysis.stats` cores against a per-experiment loop.

Both run in this process on the same simulated counts: 2,000 A/A experiments with 14 daily looks
(10,000 projects per arm in the end). The loop calls the public per-experiment functions
(`compare` each day for the naive test, `sequential_path` for the sequential one); the vectorised
path calls `fixed_horizon_significant` and `sequential_bounds` on (experiments, days) arrays. The
two must agree on every experiment. Prints median times and the ratio.

    python bench/bench_stats_simulation.py [--experiments 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from analysis import stats

DAYS, DAILY, RATE, ALPHA = 14, 1_000, 0.93, 0.05


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def simulate(experiments: int, seed: int = 5):
    rng = np.random.default_rng(seed)
    starts = rng.poisson(DAILY, size=(2, experiments, DAYS))
    exports = rng.binomial(starts, RATE)
    return exports, starts


def vectorised(exports, starts):
    xc, nc, xt, nt = (np.cumsum(a, axis=-1) for a in (exports[0], starts[0], exports[1], starts[1]))
    naive = stats.fixed_horizon_significant(xc, nc, xt, nt, ALPHA).any(axis=-1)
    diff, var = stats.difference_stats(xc, nc, xt, nt)
    _, _, p = stats.sequential_bounds(diff, var, np.minimum(nc, nt), DAYS * DAILY, ALPHA)
    return naive, (p < ALPHA).any(axis=-1)


def looped(exports, starts):
    naive, sequential = [], []
    for i in range(exports.shape[1]):
        xc, nc, xt, nt = exports[0, i], starts[0, i], exports[1, i], starts[1, i]
        cxc, cnc, cxt, cnt = (np.cumsum(a) for a in (xc, nc, xt, nt))
        naive.append(
            any(
                stats.compare(cxc[d], cnc[d], cxt[d], cnt[d], ALPHA).p_value < ALPHA
                for d in range(DAYS)
            )
        )
        path = stats.sequential_path(xc, nc, xt, nt, ALPHA, horizon=DAYS * DAILY)
        sequential.append(min(path.p_value) < ALPHA)
    return np.array(naive), np.array(sequential)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    exports, starts = simulate(args.experiments)
    t_vec, (naive_v, seq_v) = timed(lambda: vectorised(exports, starts), args.repeats)
    t_loop, (naive_l, seq_l) = timed(lambda: looped(exports, starts), 1)
    assert np.array_equal(naive_v, naive_l) and np.array_equal(seq_v, seq_l), "paths disagree"
    print(f"{args.experiments} A/A experiments x {DAYS} looks")
    print(f"false positives: naive {naive_v.mean():.4f}, sequential {seq_v.mean():.4f}")
    print(f"vectorised: {t_vec * 1000:.1f} ms (median of {args.repeats})")
    print(f"per-experiment loop: {t_loop:.2f} s")
    print(f"ratio loop / vectorised: {t_loop / t_vec:.0f}x")


if __name__ == "__main__":
    main()
