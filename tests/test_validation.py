"""The public validation table: every replayed value is the reference row's, and docs/validation.md is what
benchmarks/validation.py writes (so a change to the simulator that moves any case shows up in the doc)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("validation", ROOT / "benchmarks" / "validation.py")
validation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(validation)
CASES = yaml.safe_load((validation.HERE / "cases.yaml").read_text())
ROWS = pd.read_csv(validation.HERE / "published_measurements.csv")


def test_reference_copy_is_the_shared_set_when_present():
    shared = ROOT.parent / "shared" / "reference" / "published_measurements.csv"
    if not shared.is_file():
        pytest.skip("the shared reference set is not beside this checkout")
    assert (validation.HERE / "published_measurements.csv").read_bytes() == shared.read_bytes()


def test_every_case_quotes_its_row_and_every_row_is_accounted_for():
    for case in CASES:
        validation.check_value(case, ROWS)
        assert case["metric"] in validation.METRICS
        assert (validation.HERE / case["template"]).is_file()
    replayed = {c["case"] for c in CASES}
    assert replayed.isdisjoint(validation.NOT_REPLAYED)
    assert replayed | set(validation.NOT_REPLAYED) == set(ROWS.case_id)


def test_a_value_not_in_the_row_is_refused():
    case = dict(CASES[0], published=CASES[0]["published"] + 1)
    with pytest.raises(ValueError, match="but the row says"):
        validation.check_value(case, ROWS)
    with pytest.raises(ValueError, match="not in the row's notes"):
        validation.check_value(dict(case, **{"from": "notes"}, published=123456.0), ROWS)
    with pytest.raises(ValueError, match="not a row"):
        validation.check_value(dict(case, case="C999"), ROWS)


def test_static_batch_is_the_most_sequences_that_fit():
    template = validation.HERE / "static-offline.yaml"
    batch = validation._static_batch(template, ["model=llama-2-13b"])
    probe = validation.simulate(template, ["model=llama-2-13b", "workload.num_requests=1"]).summary
    capacity = probe["memory_per_device"]["kv_capacity_tokens"]
    assert batch * 1536 <= capacity < (batch + 1) * 1536
    assert validation._static_batch(template, []) == validation.STATIC_BATCH_CAP    # Llama-3-8B: capped


def test_validation_doc_is_current():
    table = validation.run()
    assert len(table) == len(CASES) and (table.simserve > 0).all()
    assert (ROOT / "docs" / "validation.md").read_text() == validation.render(table), \
        "docs/validation.md is stale: run python benchmarks/validation.py"
