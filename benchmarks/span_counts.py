"""How case b's iterations split into spans and other iterations (docs/performance.md).

    python benchmarks/span_counts.py [--requests 100000]

Counts, by wrapping the replica's and scheduler's methods for one run: spans, the iterations they
price and those priced but never run (the span was cut short by an arrival), spans cut, and iterations
scheduled one at a time (admissions, mostly).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100000)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import speed
    from simserve.engine import replica, sim
    from simserve.policies.continuous import ContinuousBatching
    from simserve.scenario import load_scenario
    counts = Counter()
    start_span, cut_span, schedule = replica.Replica._start_span, replica.Replica._cut_span, ContinuousBatching.schedule

    def counted_start_span(self, ticks):
        counts["spans"] += 1
        counts["iterations priced by spans"] += ticks
        return start_span(self, ticks)

    def counted_cut_span(self):
        cut_span(self)
        counts["spans cut by an arrival"] += 1
        counts["iterations priced, never run"] += len(self._span[4]) - self._span_stop

    def counted_schedule(self):
        step = schedule(self)
        counts["iterations scheduled one at a time"] += step is not None
        return step

    replica.Replica._start_span, replica.Replica._cut_span = counted_start_span, counted_cut_span
    ContinuousBatching.schedule = counted_schedule
    rec = sim.run(load_scenario(speed.scenario_b(args.requests)))
    print(f"case b at {args.requests:,} requests, {sum(r.stats.iterations for r in rec.replicas):,} iterations")
    for key, value in counts.items():
        print(f"  {key}: {value:,}")


if __name__ == "__main__":
    main()
