"""Group a py-spy raw profile of the speed benchmark into the parts docs/performance.md reports.

    py-spy record -r 100 --format raw -o prof.txt -- python benchmarks/speed.py --child b 1000000
    python benchmarks/profile_groups.py prof.txt

A sample counts for a part when any frame of its stack is one of the part's functions (a sample can
count for two parts only if one part's function calls another's; these do not).
"""
from __future__ import annotations

import sys
from collections import Counter

PARTS = {
    "quiet iterations in spans, and the check for them (`Replica._start_span`, `_end_span`, `quiet_ticks`)":
        ("Replica._start_span", "Replica._end_span", "Scheduler.quiet_ticks"),
    "other iterations: scheduling (`ContinuousBatching.schedule`)": ("ContinuousBatching.schedule",),
    "other iterations: step cost (`RooflineStep.step`)": ("RooflineStep.step",),
    "other iterations: update and finishes (`Scheduler.update`)": ("Scheduler.update",),
    "arrivals and routing (`Cluster.open_loop`)": ("Cluster.open_loop",),
    "summary and per-request table (`summarize`, `requests_frame`)": ("summarize", "requests_frame"),
}


def main(path: str) -> None:
    total, counts = 0, Counter()
    with open(path) as f:
        for line in f:
            stack, n = line.rstrip().rsplit(" ", 1)
            total += int(n)
            names = {frame.split(" (")[0] for frame in stack.split(";")}
            for part, functions in PARTS.items():
                if names.intersection(functions):
                    counts[part] += int(n)
    print("| part | share of samples |\n|---|---|")
    for part in PARTS:
        print(f"| {part} | {100 * counts[part] / total:.0f}% |")
    rest = 100 - sum(100 * counts[p] / total for p in PARTS)
    print(f"| everything else (SimPy's event loop, the replica loop's statistics, imports, the workload) | {rest:.0f}% |")


if __name__ == "__main__":
    main(sys.argv[1])
