"""The speed benchmark runs and reports the keys the issue asks for (its timings are not tested)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


def test_speed_benchmark_child_reports_its_keys():
    out = subprocess.run([sys.executable, str(BENCH), "--child", "b", "3000"], capture_output=True, text=True,
                         check=True, timeout=600)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("requests", "iterations", "wall_s", "us_per_iteration", "peak_rss_mib", "mean_batch_size"):
        assert key in row, key
    assert row["requests"] == 3000 and row["completed"] == 3000 and row["iterations"] > 0
