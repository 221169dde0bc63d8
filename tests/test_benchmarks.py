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


def test_performance_doc_shows_the_saved_benchmark_output():
    # docs/performance.md names the raw output it was made from; its table is that output, rendered
    import re
    root = BENCH.parents[1]
    doc = (root / "docs" / "performance.md").read_text()
    saved = re.search(r"`(benchmarks/results/speed-[0-9-]+\.json)`", doc).group(1)
    out = subprocess.run([sys.executable, str(BENCH), "--table", str(root / saved)], capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.strip() in doc
