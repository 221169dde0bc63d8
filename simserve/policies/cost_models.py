"""Step-time models selectable with ``cost_model.kind``: the roofline, or constant/linear for tests."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..config.base import Frozen
from ..cost.simple import ConstantStep, LinearStep
from ..cost.step import RooflineStep
from .registry import COST_MODELS


class RooflineParams(Frozen):
    kind: Literal["roofline"]


class ConstantParams(Frozen):
    kind: Literal["constant"]
    step_s: float = Field(gt=0, description="Duration of every iteration, seconds (of every stage's part of it "
                          "with deployment.pipeline_parallel > 1)")
    transfer_s: float = Field(0.0, ge=0, description="With deployment.pipeline_parallel > 1: seconds of each "
                              "activation transfer between two stages")


class LinearParams(Frozen):
    kind: Literal["linear"]
    base_s: float = Field(ge=0, description="Fixed part of every iteration, seconds")
    per_token_s: float = Field(0.0, ge=0, description="Seconds per token in the iteration")
    per_seq_s: float = Field(0.0, ge=0, description="Seconds per sequence in the iteration")

    @model_validator(mode="after")
    def _positive(self) -> "LinearParams":
        if self.base_s == 0 and self.per_token_s == 0 and self.per_seq_s == 0:
            raise ValueError("a linear cost model needs at least one positive term")
        return self


@COST_MODELS.register(RooflineParams)
def roofline(params, model, hw, precision, tp, ep=1, moe_load_imbalance=1.0, stage=None):
    """Operator-level roofline with the hardware profile's (calibrated) efficiencies."""
    return RooflineStep(model, hw, precision, tp, ep, moe_load_imbalance, stage)


@COST_MODELS.register(ConstantParams)
def constant(params, model, hw, precision, tp, stage=None, **expert_parallelism):
    """Every iteration takes step_s (exact timelines in tests)."""
    return ConstantStep(params.step_s)


@COST_MODELS.register(LinearParams)
def linear(params, model, hw, precision, tp, stage=None, **expert_parallelism):
    """base_s + per_token_s * tokens + per_seq_s * sequences."""
    return LinearStep(params.base_s, params.per_token_s, params.per_seq_s)
