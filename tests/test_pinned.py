"""Results are pinned: a fixed scenario and seed on a frozen test-only hardware profile must give
byte-identical outputs, so speed work (or any refactor) provably changes no result.

A deliberate change of results regenerates the pins: ``SIMSERVE_UPDATE_PINS=1 pytest tests/test_pinned.py``
(and the commit says why)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import simserve

DATA = Path(__file__).resolve().parent / "data"


def test_pinned_scenario_is_byte_identical():
    result = simserve.simulate(DATA / "pinned.yaml")
    summary, csv_hash = result.summary_json(), hashlib.sha256(result.requests_csv().encode()).hexdigest()
    if os.environ.get("SIMSERVE_UPDATE_PINS") == "1":
        (DATA / "pinned_summary.json").write_text(summary)
        (DATA / "pinned_requests.sha256").write_text(csv_hash + "\n")
    assert summary == (DATA / "pinned_summary.json").read_text()
    assert csv_hash == (DATA / "pinned_requests.sha256").read_text().strip()
