"""Workloads: the scenario's ``workload:`` key turned into :class:`RequestSpecs` for the engine.

``build(cfg, rng, base_dir)`` is the one entry point; ``cfg`` is a validated :data:`WorkloadConfig`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import SyntheticWorkload, TraceWorkload, WorkloadConfig
from .replay import BUNDLED_FORMATS, build_trace
from .specs import RequestSpecs
from .synthetic import build_synthetic
from .traces import TraceColumns, read_azure, read_mooncake

__all__ = [
    "BUNDLED_FORMATS", "RequestSpecs", "SyntheticWorkload", "TraceColumns", "TraceWorkload", "WorkloadConfig",
    "build", "read_azure", "read_mooncake",
]


def build(cfg: SyntheticWorkload | TraceWorkload, rng: np.random.Generator, base_dir: Path | None = None,
          where: str = "workload") -> RequestSpecs:
    """Generate or load the requests of a run.

    ``rng`` drives synthetic draws (traces ignore it); ``base_dir`` is the scenario's folder, against
    which relative trace paths are resolved; ``where`` prefixes the dotted paths of ScenarioErrors.
    Raises ScenarioError for a bad reference and TraceError for a bad trace file.
    """
    if isinstance(cfg, SyntheticWorkload):
        return build_synthetic(cfg, rng, base_dir, where)
    if isinstance(cfg, TraceWorkload):
        return build_trace(cfg, base_dir, where)
    raise TypeError(f"not a workload config: {type(cfg).__name__}")
