"""The scenario's ``workload:`` key: a synthetic generator or a trace replay, as frozen tagged unions.

Tags: ``kind`` picks the workload, ``process`` the arrival process, ``dist`` a length distribution.
Token counts are integers >= 1; times are seconds.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, ValidationInfo, field_validator

from ..config.base import Frozen

TraceFormat = Literal["azure", "mooncake"]
MAX_REQUESTS = 50_000_000      # a run this size needs tens of GB; anything larger is a typo
MAX_TOKENS = 10_000_000        # longer than any model context


# --- arrival processes ---------------------------------------------------------------------------

class PoissonArrival(Frozen):
    """Exponential inter-arrival times (an open loop with no burstiness beyond chance)."""

    process: Literal["poisson"]
    rate_per_s: float = Field(ge=1e-6, le=1e7, description="Mean arrival rate, requests per second")


class GammaArrival(Frozen):
    """Gamma inter-arrival times: same mean as Poisson at the same rate, tunable burstiness."""

    process: Literal["gamma"]
    rate_per_s: float = Field(ge=1e-6, le=1e7, description="Mean arrival rate, requests per second")
    cv: float = Field(ge=0.01, le=100, description="Coefficient of variation of inter-arrival times; 1 is Poisson, >1 burstier")


class ConstantArrival(Frozen):
    """Evenly spaced arrivals: request i arrives at i / rate_per_s."""

    process: Literal["constant"]
    rate_per_s: float = Field(ge=1e-6, le=1e7, description="Arrival rate, requests per second")


class ClosedLoopArrival(Frozen):
    """A fixed population of users; each sends its next request think_time_s after its last one finishes."""

    process: Literal["closed_loop"]
    users: int = Field(ge=1, description="Concurrent users, each with at most one request in flight")
    think_time_s: float = Field(ge=0, description="Pause between a response and the user's next request, seconds")


class OfflineArrival(Frozen):
    """A batch job: every request is present at t = 0."""

    process: Literal["offline"]


Arrival = Annotated[
    Union[PoissonArrival, GammaArrival, ConstantArrival, ClosedLoopArrival, OfflineArrival],
    Field(discriminator="process"),
]


# --- token-length distributions ------------------------------------------------------------------

def _not_below(value: int, info: ValidationInfo, other: str) -> int:
    """Cross-field check placed on the upper bound, so an error names that key (``...high``)."""
    lower = info.data.get(other)
    if lower is not None and value < lower:
        raise ValueError(f"must be >= {other} ({lower}), got {value}")
    return value


class FixedDist(Frozen):
    dist: Literal["fixed"]
    value: int = Field(ge=1, description="Every request has this many tokens")


class UniformDist(Frozen):
    dist: Literal["uniform"]
    low: int = Field(ge=1, description="Smallest length, inclusive")
    high: int = Field(ge=1, description="Largest length, inclusive; >= low")

    @field_validator("high")
    @classmethod
    def _high(cls, value: int, info: ValidationInfo) -> int:
        return _not_below(value, info, "low")


class NormalDist(Frozen):
    dist: Literal["normal"]
    mean: float = Field(ge=-1e7, le=1e7, description="Mean of the normal before rounding and clipping, tokens")
    std: float = Field(ge=0, le=1e7, description="Standard deviation before rounding and clipping, tokens")
    min: int = Field(default=1, ge=1, description="Samples below are clipped up to this")
    max: int = Field(ge=1, le=MAX_TOKENS, description="Samples above are clipped down to this; >= min")

    @field_validator("max")
    @classmethod
    def _max(cls, value: int, info: ValidationInfo) -> int:
        return _not_below(value, info, "min")


class LognormalDist(Frozen):
    dist: Literal["lognormal"]
    median: float = Field(gt=0, le=MAX_TOKENS, description="Median length before rounding and clipping, tokens")
    sigma: float = Field(ge=0, description="Standard deviation of the log of the length")
    min: int = Field(default=1, ge=1, description="Samples below are clipped up to this")
    max: int = Field(ge=1, le=MAX_TOKENS, description="Samples above are clipped down to this; >= min")

    @field_validator("max")
    @classmethod
    def _max(cls, value: int, info: ValidationInfo) -> int:
        return _not_below(value, info, "min")


class EmpiricalDist(Frozen):
    """Lengths drawn with replacement from one column of a trace."""

    dist: Literal["empirical"]
    path: str = Field(description="Bundled workload name (azure-conv) or trace file, relative to the scenario")
    column: Literal["prompt", "output"] = Field(description="Which length: prompt (input) or output tokens")
    format: TraceFormat | None = Field(default=None, description="Trace format; required unless path is bundled")


LengthDist = Annotated[
    Union[FixedDist, UniformDist, NormalDist, LognormalDist, EmpiricalDist],
    Field(discriminator="dist"),
]


# --- workloads -----------------------------------------------------------------------------------

class SyntheticWorkload(Frozen):
    """Requests generated from an arrival process and two independent length distributions."""

    kind: Literal["synthetic"]
    num_requests: int = Field(ge=1, le=MAX_REQUESTS, description="Requests in the run (for closed_loop: requests sent in total)")
    arrival: Arrival
    prompt_tokens: LengthDist
    output_tokens: LengthDist
    shared_prefix_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS, description="Every prompt starts with the same this many tokens (a system prompt), for prefix caching")


class TraceWorkload(Frozen):
    """Replay of a recorded trace: its arrival times (rescaled) and its token counts."""

    kind: Literal["trace"]
    path: str = Field(description="Bundled workload name (azure-conv) or trace file, relative to the scenario")
    format: TraceFormat | None = Field(default=None, description="Trace format; required unless path is bundled")
    time_scale: float = Field(default=1.0, gt=0, description="Inter-arrival times are multiplied by this; 0.5 is twice as fast")
    limit: int | None = Field(default=None, ge=1, description="Keep only the first N requests (after start_s)")
    start_s: float = Field(default=0.0, ge=0, description="Skip requests earlier than this, seconds after the trace's first request")
    repeat: int = Field(default=1, ge=1, le=10_000, description="Play the trace (from start_s) this many times back to back, before limit")


WorkloadConfig = Annotated[Union[SyntheticWorkload, TraceWorkload], Field(discriminator="kind")]
