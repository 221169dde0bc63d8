"""What a workload hands the engine: one column per request property, checked once on construction."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class RequestSpecs:
    """The requests of one run, in arrival order; request ``i`` is row ``i`` of every column.

    Arrays are made read-only, so a ``RequestSpecs`` can be shared between runs.
    """

    arrival_s: np.ndarray
    """float64 seconds from the start of the run, non-decreasing. Synthetic open-loop arrivals start at
    0.0; traces are shifted so their first kept request arrives at 0.0. All zeros for closed loop and
    offline workloads."""
    prompt_tokens: np.ndarray
    """int64 prompt (input) length of each request, >= 1."""
    output_tokens: np.ndarray
    """int64 number of tokens to generate for each request, >= 1."""
    prefix_hashes: tuple[tuple[int, ...], ...] | None = None
    """Per request, ids of its prompt's consecutive ``prefix_block_tokens``-token blocks (Mooncake
    ``hash_ids``): equal ids mean equal content, so a shared leading run is a shared prefix. The last
    block may be partial. None when the workload carries no prefix information."""
    prefix_block_tokens: int = 512
    """Tokens named by one prefix hash."""
    closed_loop_users: int | None = None
    """When set, the engine issues requests itself: each of this many users sends request after request
    (taking the next row in order), waiting ``think_time_s`` after each response; ``arrival_s`` is ignored."""
    think_time_s: float = 0.0
    """Closed loop only: pause between a user's response and its next request, seconds."""
    shared_prefix_tokens: int = 0
    """Every prompt starts with the same this many tokens (a shared system prompt)."""

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        for name, kind in (("arrival_s", "f"), ("prompt_tokens", "i"), ("output_tokens", "i")):
            column = getattr(self, name)
            if not isinstance(column, np.ndarray) or column.ndim != 1 or column.dtype.kind != kind:
                raise TypeError(f"RequestSpecs.{name} must be a 1-D numpy {kind!r} array")
            if len(column) != n:
                raise ValueError(f"RequestSpecs.{name} has {len(column)} rows, arrival_s has {n}")
            column.flags.writeable = False
        if n and (not np.all(np.isfinite(self.arrival_s)) or self.arrival_s[0] < 0
                  or np.any(np.diff(self.arrival_s) < 0)):
            raise ValueError("RequestSpecs.arrival_s must be finite, >= 0 and non-decreasing")
        if n and (self.prompt_tokens.min() < 1 or self.output_tokens.min() < 1):
            raise ValueError("RequestSpecs token counts must be >= 1")
        if self.prefix_hashes is not None and len(self.prefix_hashes) != n:
            raise ValueError(f"RequestSpecs.prefix_hashes has {len(self.prefix_hashes)} rows, arrival_s has {n}")
        if self.closed_loop_users is not None and self.closed_loop_users < 1:
            raise ValueError("RequestSpecs.closed_loop_users must be >= 1 or None")
        if self.think_time_s < 0:
            raise ValueError("RequestSpecs.think_time_s must be >= 0")

    def __len__(self) -> int:
        return len(self.arrival_s)
