"""Error bands: re-runs with step times scaled by (1 - e) and (1 + e)."""
from __future__ import annotations

import pytest

import simserve
from simserve.fidelity import UNCALIBRATED_DEFAULT, step_time_error
from simserve.hardware import load_profile

from conftest import TINY


def _tiny(rows_rate=None, n=1, out=3):
    wl = {"kind": "synthetic", "num_requests": n, "prompt_tokens": {"dist": "fixed", "value": 1},
          "output_tokens": {"dist": "fixed", "value": out},
          "arrival": {"process": "offline"} if rows_rate is None else {"process": "constant", "rate_per_s": rows_rate}}
    return dict(TINY, workload=wl)


def test_error_comes_from_the_profile():
    hw = load_profile("h100-sxm-80gb")
    e = step_time_error(hw)
    if hw.calibration.calibrated:
        assert e == pytest.approx(hw.calibration.heldout_p90_abs_pct_err / 100)
    else:
        assert e >= UNCALIBRATED_DEFAULT or e == pytest.approx(2 * hw.calibration.heldout_p90_abs_pct_err / 100)


def test_moe_models_take_the_larger_of_the_layer_and_moe_errors():
    hw = load_profile("h100-sxm-80gb")
    cal = hw.calibration
    assert cal.moe_heldout_p90_abs_pct_err is not None
    assert step_time_error(hw, moe=True) == pytest.approx(
        max(cal.heldout_p90_abs_pct_err, cal.moe_heldout_p90_abs_pct_err) / 100)
    plain = hw.model_copy(update={"calibration": cal.model_copy(update={"moe_heldout_p90_abs_pct_err": None})})
    assert step_time_error(plain, moe=True) == step_time_error(hw) == pytest.approx(cal.heldout_p90_abs_pct_err / 100)
    # a carried-over profile doubles the error it carries, the MoE one included
    h200 = load_profile("h200-sxm-141gb")
    assert not h200.calibration.calibrated
    assert step_time_error(h200, moe=True) == pytest.approx(2 * step_time_error(hw, moe=True))


def test_fp8_activations_take_the_fp8_linear_error_where_it_is_larger():
    hw = load_profile("h100-sxm-80gb")
    cal = hw.calibration
    assert cal.fp8_heldout_p90_abs_pct_err > cal.heldout_p90_abs_pct_err
    assert step_time_error(hw, fp8=True) == pytest.approx(cal.fp8_heldout_p90_abs_pct_err / 100)
    assert step_time_error(hw, moe=True, fp8=True) == pytest.approx(
        max(cal.moe_heldout_p90_abs_pct_err, cal.fp8_heldout_p90_abs_pct_err) / 100)
    assert load_profile("a100-sxm-80gb").calibration.fp8_heldout_p90_abs_pct_err is None     # no FP8 compute
    # the API passes the scenario's compute dtype
    scenario = dict(_tiny(), hardware="h100-sxm-80gb", precision={"weights": "fp8", "activations": "fp8"})
    assert simserve.simulate(scenario, bands=True).summary["fidelity"]["step_time_error"] == pytest.approx(
        cal.fp8_heldout_p90_abs_pct_err / 100)


def test_bands_scale_a_lone_request_exactly():
    r = simserve.simulate(_tiny(), bands=True)
    fid = r.summary["fidelity"]
    e = fid["step_time_error"]
    assert r.summary["mean_e2el_ms"] == pytest.approx(30.0)
    assert fid["low"]["mean_e2el_ms"] == pytest.approx(30.0 * (1 - e))
    assert fid["high"]["mean_e2el_ms"] == pytest.approx(30.0 * (1 + e))
    assert fid["low"]["cost_usd"] < r.summary["cost_usd"] < fid["high"]["cost_usd"]
    assert fid["low"]["failures.availability"] == fid["high"]["failures.availability"] == 1.0


def test_queueing_amplifies_the_band_near_saturation():
    # one sequence at a time, 3 steps of 10 ms per request; requests arrive evenly, a little slower than
    # one per 30 ms but faster than one per 30 ms * (1 + e): at nominal step times nobody queues, with
    # steps e slower the queue grows without bound, so p99 TTFT moves far more than e
    e = step_time_error(load_profile(TINY["hardware"]))
    rate = 1 / (0.030 * (1 + e / 2))
    r = simserve.simulate(_tiny(rows_rate=rate, n=300), ["scheduler.max_num_seqs=1"], bands=True)
    fid, s = r.summary["fidelity"], r.summary
    assert s["p99_ttft_ms"] == pytest.approx(10.0)
    assert fid["high"]["p99_ttft_ms"] / s["p99_ttft_ms"] - 1 > 5 * e
