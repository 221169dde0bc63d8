"""Step-time models for tests and what-ifs: a constant, and a linear function of the batch."""
from __future__ import annotations

from .batch import BatchShape
from .ops import OVERHEAD
from .step import StepCost


class ConstantStep:
    """Every iteration takes ``step_s``, whatever the batch: exact timelines in tests."""

    def __init__(self, step_s: float):
        self.step_s = step_s

    def __call__(self, b: BatchShape) -> StepCost:
        return StepCost(self.step_s if b.num_tokens else 0.0, OVERHEAD, 0.0, 0.0)


class LinearStep:
    """``base_s + per_token_s * tokens + per_seq_s * sequences``."""

    def __init__(self, base_s: float, per_token_s: float, per_seq_s: float):
        self.base_s, self.per_token_s, self.per_seq_s = base_s, per_token_s, per_seq_s

    def __call__(self, b: BatchShape) -> StepCost:
        if not b.num_tokens:
            return StepCost(0.0, OVERHEAD, 0.0, 0.0)
        return StepCost(self.base_s + self.per_token_s * b.num_tokens + self.per_seq_s * b.num_seqs, OVERHEAD, 0.0, 0.0)
