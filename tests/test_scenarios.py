"""Every bundled scenario validates and runs, at a small size (its first requests only)."""
from __future__ import annotations

from pathlib import Path

import pytest

import simserve
from simserve import resources
from simserve.scenario import load_scenario

SCENARIOS = sorted(resources.data_dir("scenarios").glob("*.yaml"))
SMALL = 150


def small_overrides(path: Path) -> list[str]:
    kind = load_scenario(path).config.workload.kind
    return [f"workload.limit={SMALL}"] if kind == "trace" else [f"workload.num_requests={SMALL}"]


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_bundled_scenario_runs(path):
    result = simserve.simulate(path, small_overrides(path))
    s = result.summary
    assert s["num_requests"] == SMALL
    assert s["completed"] + s["rejected"] + s["unfinished"] == SMALL
    assert len(result.requests) == SMALL
    assert s["completed"] > 0 and s["output_throughput"] > 0


def test_quickstart_is_what_the_readme_says():
    r = load_scenario("quickstart")
    assert (r.model.name, r.hardware.name, r.config.scheduler.policy) == ("llama-3.1-8b", "h100-sxm-80gb", "continuous")
    assert r.config.workload.path == "azure-conv" and r.config.workload.limit == 2000
