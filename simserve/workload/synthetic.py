"""Synthetic workloads: arrival times and token lengths drawn from the numpy Generator passed in.

Draw order is fixed (arrivals, then prompt lengths, then output lengths), so one seed gives one workload.
Open-loop arrivals start at 0.0: request 0 arrives at t = 0 and request i after i inter-arrival gaps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import replay
from .config import (
    Arrival, ClosedLoopArrival, ConstantArrival, EmpiricalDist, FixedDist, GammaArrival, LengthDist,
    LognormalDist, NormalDist, OfflineArrival, PoissonArrival, SyntheticWorkload, UniformDist,
)
from .specs import RequestSpecs


def build_synthetic(cfg: SyntheticWorkload, rng: np.random.Generator, base_dir: Path | None = None,
                    where: str = "workload") -> RequestSpecs:
    """Generate ``cfg.num_requests`` requests. ``base_dir`` resolves empirical trace paths."""
    n = cfg.num_requests
    arrival_s = arrivals(cfg.arrival, n, rng)
    prompt = lengths(cfg.prompt_tokens, n, rng, base_dir, f"{where}.prompt_tokens")
    output = lengths(cfg.output_tokens, n, rng, base_dir, f"{where}.output_tokens")
    closed = cfg.arrival if isinstance(cfg.arrival, ClosedLoopArrival) else None
    return RequestSpecs(
        arrival_s=arrival_s,
        prompt_tokens=prompt,
        output_tokens=output,
        closed_loop_users=closed.users if closed else None,
        think_time_s=closed.think_time_s if closed else 0.0,
        shared_prefix_tokens=cfg.shared_prefix_tokens,
    )


def arrivals(cfg: Arrival, n: int, rng: np.random.Generator) -> np.ndarray:
    """Arrival times in seconds, float64, non-decreasing, the first at 0.0."""
    if isinstance(cfg, (OfflineArrival, ClosedLoopArrival)):
        return np.zeros(n)
    if isinstance(cfg, ConstantArrival):
        return np.arange(n, dtype=np.float64) / cfg.rate_per_s
    if isinstance(cfg, PoissonArrival):
        gaps = rng.exponential(1.0 / cfg.rate_per_s, size=n - 1)
    elif isinstance(cfg, GammaArrival):
        # shape k = 1/cv^2 gives the requested cv; scale 1/(rate k) keeps the mean gap at 1/rate
        shape = 1.0 / cfg.cv**2
        gaps = rng.gamma(shape, 1.0 / (cfg.rate_per_s * shape), size=n - 1)
    else:
        raise TypeError(f"unknown arrival process {type(cfg).__name__}")
    return np.concatenate(([0.0], np.cumsum(gaps)))


def lengths(cfg: LengthDist, n: int, rng: np.random.Generator, base_dir: Path | None = None,
            where: str = "") -> np.ndarray:
    """``n`` token lengths, int64 >= 1. Continuous draws are clipped to [min, max] and rounded."""
    if isinstance(cfg, FixedDist):
        return np.full(n, cfg.value, dtype=np.int64)
    if isinstance(cfg, UniformDist):
        return rng.integers(cfg.low, cfg.high, size=n, endpoint=True, dtype=np.int64)
    if isinstance(cfg, NormalDist):
        return _clip_round(rng.normal(cfg.mean, cfg.std, size=n), cfg.min, cfg.max)
    if isinstance(cfg, LognormalDist):
        return _clip_round(rng.lognormal(np.log(cfg.median), cfg.sigma, size=n), cfg.min, cfg.max)
    if isinstance(cfg, EmpiricalDist):
        path, fmt = replay.locate(cfg.path, cfg.format, base_dir, where)
        trace = replay.read(path, fmt)
        column = trace.prompt_tokens if cfg.column == "prompt" else trace.output_tokens
        return column[rng.integers(0, len(column), size=n)]
    raise TypeError(f"unknown length distribution {type(cfg).__name__}")


def _clip_round(samples: np.ndarray, low: int, high: int) -> np.ndarray:
    # clip before the cast, so huge or infinite draws cannot overflow int64
    return np.rint(np.clip(samples, low, high)).astype(np.int64)
