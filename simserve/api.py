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


def simulate(scenario: str | Path | dict | Resolved, overrides: list[str] | tuple[str, ...] = ()) -> Result:
    """Run a scenario (a file path, a bundled scenario name, a mapping, or a resolved scenario)."""
    resolved = scenario if isinstance(scenario, Resolved) else load_scenario(scenario, overrides)
    rec = sim.run(resolved)
    df = requests_frame(rec)
    return Result(summarize(resolved, rec, df), df, resolved)
