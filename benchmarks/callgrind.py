"""Count the instructions the simulation of case b executes, with valgrind's callgrind: a measure of the
simulator's cost that, unlike wall time, does not drift with the machine (docs/performance.md).

    python benchmarks/callgrind.py [--requests 20000]

Imports, the scenario and a 200-request warm-up run happen before counting starts; only ``sim.run`` of
case b at ``--requests`` is counted. Needs ``valgrind`` (with ``callgrind_control``) on the PATH.
"""
from __future__ import annotations

import argparse
import gc
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(requests: int) -> None:
    sys.path.insert(0, str(HERE))
    import speed
    from simserve.engine import sim
    from simserve.scenario import load_scenario
    resolved = load_scenario(speed.scenario_b(requests))
    sim.run(load_scenario(speed.scenario_b(200)))
    gc.collect()
    subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True, capture_output=True)
    sim.run(resolved)
    subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                              f"--callgrind-out-file={tmp}/callgrind.out", sys.executable, __file__, "--child",
                              "--requests", str(args.requests)], capture_output=True, text=True, check=True)
    collected = re.search(r"Collected : (\d+)", out.stderr)
    print(f"case b at {args.requests:,} requests: {int(collected.group(1)):,} instructions in sim.run")


if __name__ == "__main__":
    main()
