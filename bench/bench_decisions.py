"""Simulated error rates and power of the decision rules, with Monte-Carlo standard errors.

The same simulations as tests/analysis/test_decision_simulation.py, with more runs:

    python bench/bench_decisions.py [--scale 1]

--scale multiplies every run count (1 takes about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import time

from analysis import simulation as sim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    scale = parser.parse_args().scale

    def runs(n: int) -> int:
        return max(50, int(n * scale))

    started = time.perf_counter()
    figures = [
        sim.aa_false_positive_rate(runs(100_000)),
        sim.peeking_false_positive_rate(runs(20_000)),
        sim.power_through_decide(runs(5_000))[0],
        sim.non_inferiority_type_one(runs(100_000)),
        sim.non_inferiority_type_one(runs(100_000), sequential=True),
        sim.delayed_export_aa(runs(2_000)),
        sim.delayed_export_aa(runs(500), attribution=False),
        *sim.ramp_srm(runs(5_000)),
        sim.ramp_through_decide(runs(2_000)),
    ]
    for figure in figures:
        print(f"| {figure.name} | {figure.rate:.4f} | {figure.se:.4f} | {figure.experiments} |")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
