"""Results are pinned: a fixed scenario and seed on a frozen test-only hardware profile must give
byte-identical outputs, so speed work (or any refactor) provably changes no result.

A deliberate change of results regenerates the pins: ``SIMSERVE_UPDATE_PINS=1 pytest tests/test_pinned.py``
(and the commit says why)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import simserve

DATA = Path(__file__).resolve().parent / "data"


# scenario -> stem of its pin files
PINNED = {"pinned": "pinned", "pinned_steady": "pinned_steady", "pinned_cut": "pinned_cut"}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pinned_scenario_is_byte_identical(name):
    result = simserve.simulate(DATA / f"{name}.yaml")
    summary, csv_hash = result.summary_json(), hashlib.sha256(result.requests_csv().encode()).hexdigest()
    summary_file, hash_file = DATA / f"{PINNED[name]}_summary.json", DATA / f"{PINNED[name]}_requests.sha256"
    if os.environ.get("SIMSERVE_UPDATE_PINS") == "1":
        summary_file.write_text(summary)
        hash_file.write_text(csv_hash + "\n")
    assert summary == summary_file.read_text()
    assert csv_hash == hash_file.read_text().strip()
