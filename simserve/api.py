"""The Python entry point: ``simulate(scenario) -> Result``. Nothing here writes files."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .engine import sim
from .metrics import requests_frame, summarize
from .scenario import Resolved, load_scenario


@dataclass(frozen=True)
class Result:
    summary: dict
    requests: pd.DataFrame
    scenario: Resolved

    def summary_json(self) -> str:
        return json.dumps(self.summary, indent=2) + "\n"

    def requests_csv(self) -> str:
        return self.requests.to_csv(index=False, lineterminator="\n")


def simulate(scenario: str | Path | dict | Resolved, overrides: list[str] | tuple[str, ...] = (),
             bands: bool = False) -> Result:
    """Run a scenario (a file path, a bundled scenario name, a mapping, or a resolved scenario).

    ``bands``: also run it with every step time scaled by ``1 - e`` and ``1 + e`` (``e`` the hardware's
    step-time error, :mod:`simserve.fidelity`) and add a ``fidelity`` block with low/high per metric."""
    resolved = scenario if isinstance(scenario, Resolved) else load_scenario(scenario, overrides)
    rec = sim.run(resolved)
    df = requests_frame(rec)
    summary = summarize(resolved, rec, df)
    if bands:
        from .fidelity import fidelity_block, step_time_error
        e = step_time_error(resolved.hardware, moe=resolved.model.num_experts > 1,
                            fp8=resolved.precision.compute_dtype == "fp8")
        faster, slower = (summarize(resolved, sim.run(resolved, step_scale=k)) for k in (1 - e, 1 + e))
        summary["fidelity"] = fidelity_block(summary, faster, slower, e, resolved.hardware.calibration.calibrated)
    return Result(summary, df, resolved)
