"""Error bands: how far a result can move if every step time is off by the step-time model's error.

A step-time error is not a latency error: near saturation queueing amplifies it. So the scenario is
re-run with every step time scaled by ``1 - e`` and ``1 + e``, where ``e`` is the held-out p90 error of
the hardware's calibration (for a mixture-of-experts model the larger of that and the fused MoE kernels'),
and every numeric summary metric gets a low and a high.
"""
from __future__ import annotations

from .hardware import HardwareProfile

UNCALIBRATED_DEFAULT = 0.25     # no measurement behind the profile at all
UNCALIBRATED_FACTOR = 2.0       # carried over from a measured device: twice that device's error


def step_time_error(hw: HardwareProfile, moe: bool = False, fp8: bool = False) -> float:
    """Relative step-time error ``e`` used for the bands of results on ``hw``; ``moe``: of a mixture-of-experts
    model, whose fused expert kernels may be predicted worse than whole dense layers; ``fp8``: with FP8
    activations, whose linear layers likewise (the largest that applies)."""
    cal = hw.calibration
    if cal.heldout_p90_abs_pct_err is None:
        return UNCALIBRATED_DEFAULT
    p90 = cal.heldout_p90_abs_pct_err
    if moe and cal.moe_heldout_p90_abs_pct_err is not None:
        p90 = max(p90, cal.moe_heldout_p90_abs_pct_err)
    if fp8 and cal.fp8_heldout_p90_abs_pct_err is not None:
        p90 = max(p90, cal.fp8_heldout_p90_abs_pct_err)
    e = p90 / 100.0
    return e if cal.calibrated else UNCALIBRATED_FACTOR * e


def _numbers(summary: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in summary.items():
        if isinstance(value, bool) or key in ("seed", "slo", "memory_per_device"):
            continue
        if isinstance(value, (int, float)):
            out[prefix + key] = float(value)
        elif isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}."))
    return out


def fidelity_block(base: dict, faster: dict, slower: dict, error: float, calibrated: bool) -> dict:
    """``low``/``high`` per numeric metric (dotted keys for nested ones) over the three runs."""
    b, f, s = _numbers(base), _numbers(faster), _numbers(slower)
    low, high = {}, {}
    for key in b:
        values = [v for v in (b[key], f.get(key), s.get(key)) if v is not None]
        low[key], high[key] = min(values), max(values)
    return {"step_time_error": error, "calibrated": calibrated, "step_time_scales": [1 - error, 1 + error],
            "low": low, "high": high}
