"""The step-time model's fast paths give the same bits as the straightforward computation.

Speed work must not move a result: the decode-only path (:meth:`RooflineStep.decode_cost`) and the
split caches behind ``_base`` are checked against sums written out here the plain way, on every
bundled hardware profile and on dense, GQA, MoE (with expert parallelism) and sliding-window models.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from simserve.cost import ops
from simserve.cost.batch import BatchShape
from simserve.cost.step import BOUNDS, Precision, RooflineStep, top_bound
from simserve.hardware import load_profile
from simserve.model import load_model
from simserve.resources import data_dir

PROFILES = sorted(p.stem for p in data_dir("hardware_profiles").glob("*.yaml"))
MODELS = [("llama-3.1-8b", 1, 1), ("llama-2-7b", 2, 1), ("mixtral-8x7b", 2, 2), ("mistral-7b", 1, 1)]


def _steps():
    out = []
    for hw_name in PROFILES:
        hw = load_profile(hw_name)
        dtype = "bf16" if "bf16" in hw.peak_tflops else "fp16"
        for model, tp, ep in MODELS:
            out.append(RooflineStep(load_model(model), hw, Precision.of(dtype, dtype, dtype), tp, ep, 1.3))
    return out


STEPS = _steps()


def plain_base(s: RooflineStep, T: int, logits: int) -> tuple:
    """Every kernel but attention summed in one pass, the order the model has always used."""
    totals = dict.fromkeys(BOUNDS, 0.0)
    flops = bytes_ = 0.0
    L = s.model.num_layers
    head = s.head_ops(BatchShape(num_tokens=T, num_logits=logits))
    for scale, group in ((L, s.linear_layer_ops(T)), (1, head)):
        for _, op in group:
            totals[op.bound] += scale * op.time_s
            flops += scale * op.flops
            if op.bound != ops.NETWORK:
                bytes_ += scale * op.bytes
    return tuple(totals[k] for k in BOUNDS), flops, bytes_


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.sampled_from(range(len(STEPS))), st.integers(1, 512), st.integers(0, 512), st.integers(0, 200_000))
def test_decode_fast_path_matches_the_general_step(i, n, extra_logits, extra_ctx):
    s = STEPS[i]
    logits = min(n, extra_logits) if extra_logits else n
    ctx = n + extra_ctx                          # every decoder has at least one cached token
    fresh = RooflineStep(s.model, s.hw, s.prec, s.tp, s.ep, s.moe_load_imbalance)
    general = fresh.general_step(BatchShape(n, n, logits, n, ctx))
    assert s.decode_cost(n, logits, ctx) == general
    assert s.step(BatchShape(n, n, logits, n, ctx)) == general


def plain_decode_attention(s: RooflineStep, n: int, keys: int) -> ops.OpTime:
    """The decode attention kernel straight from ops (its launch grid worked out afresh)."""
    d, ab, kb = s.model.head_size, s.prec.act_bytes, s.kv_value_bytes
    fl = ops.decode_attention_flops(s.heads, d, keys)
    by = ops.attention_bytes(s.heads, s.kv_heads, d, n, keys - n, ab, kb)
    return ops.decode_attention_time(fl, by, n, s.heads, s.kv_heads, s.attn_flops_s, s.bw_bytes_s,
                                     s.hw.efficiency.attention_decode, s.hw.sm_count, keys, d, ab, kb)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.sampled_from(range(len(STEPS))), st.integers(1, 512), st.integers(0, 400_000))
def test_mixed_step_decode_attention_matches_ops(i, n, extra_ctx):
    """A mixed iteration's decode kernel (hoisted constants, cached launch grid; with a sliding window,
    the general path) is ops' own, bit for bit."""
    s = STEPS[i]
    ctx = n + extra_ctx
    keys = ctx if s.window is None else min(ctx, n * s.window)    # a sliding window caps the keys read
    b = BatchShape(n, n, n, n, ctx)
    assert s._attention(b) == [plain_decode_attention(s, n, keys)]
    assert s._attention(b) == [plain_decode_attention(s, n, keys)]   # constants from the cache


@settings(max_examples=100, derandomize=True, deadline=None)
@given(st.sampled_from(range(len(STEPS))), st.integers(1, 9000), st.integers(0, 300))
def test_split_base_caches_match_one_pass(i, T, logits):
    s = STEPS[i]
    logits = min(T, logits)
    assert s._base(T, logits) == plain_base(s, T, logits)
    assert s._base(T, logits) == plain_base(s, T, logits)      # from the cache this time


@pytest.mark.parametrize("i", range(0, len(STEPS), len(MODELS)))
def test_sliding_window_models_take_the_general_path(i):
    s = STEPS[i + 3]
    assert s.model.sliding_window is not None
    b = BatchShape(4, 4, 4, 4, 4 * 9000)
    assert s.decode_cost(4, 4, 4 * 9000) == s.general_step(b)


@settings(max_examples=80, derandomize=True, deadline=None)
@given(st.sampled_from(range(len(STEPS))), st.integers(1, 300), st.integers(0, 100_000), st.integers(1, 16))
def test_decode_span_matches_one_iteration_at_a_time(i, n, extra_ctx, count):
    s = STEPS[i]
    ctx = n + extra_ctx
    assert s.decode_span(n, ctx, count) == [s.general_step(BatchShape(n, n, n, n, ctx + j * n)) for j in range(count)]


def test_decode_launch_grid_terms_are_on_the_fast_path():
    """A100 decode: a few long MHA sequences walk their context block by block (far above the roofline),
    and grouped queries of several sequences pay the regrouping copies; the fast path gives the same bits."""
    hw = load_profile("a100-sxm-80gb")
    e = hw.efficiency.attention_decode
    assert e.row_bandwidth_gb_s is not None and e.relayout_overhead_us > 0 and hw.sm_count
    prec = Precision.of("bf16", "bf16", "bf16")
    for model, n, ctx in (("llama-2-7b", 2, 200_000), ("llama-2-7b", 64, 64 * 300), ("llama-3.1-8b", 64, 64 * 500)):
        s = RooflineStep(load_model(model), hw, prec, 1, 1, 1.0)
        b = BatchShape(n, n, n, n, ctx)
        assert s.decode_cost(n, n, ctx) == RooflineStep(s.model, hw, prec, 1, 1, 1.0).general_step(b)
    s = RooflineStep(load_model("llama-2-7b"), hw, prec, 8, 1, 1.0)     # 4 heads per device
    b = BatchShape(1, 1, 1, 1, 100_000)
    assert s.decode_cost(1, 1, 100_000) == RooflineStep(s.model, hw, prec, 8, 1, 1.0).general_step(b)
    (_, op), = s.attention_ops(b)
    roof = ops.attention_time(op.flops, op.bytes, s.kv_heads, s.attn_flops_s, s.bw_bytes_s, e)
    assert op.time_s > 5 * roof.time_s


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.sampled_from([None, 1.0, 1.7, 3.0]), st.integers(1, 300), st.integers(0, 100_000), st.integers(1, 8))
def test_decode_span_matches_the_general_step_for_any_overlap_exponent(p, n, extra_ctx, count):
    # the profiles fit decode attention with overlap_exponent 1.0 (a special case in decode_span)
    hw = load_profile("h100-sxm-80gb")
    eff = hw.efficiency.model_copy(update={"attention_decode": hw.efficiency.attention_decode.model_copy(
        update={"overlap_exponent": p})})
    hw = hw.model_copy(update={"efficiency": eff})
    make = lambda: RooflineStep(load_model("llama-3.1-8b"), hw, Precision.of("bf16", "bf16", "bf16"), 1, 1, 1.0)  # noqa: E731
    s, fresh = make(), make()
    ctx = n + extra_ctx
    assert s.decode_span(n, ctx, count) == [fresh.general_step(BatchShape(n, n, n, n, ctx + j * n)) for j in range(count)]


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1e-6, 2e-6, 0.5, 3.0]), min_size=4, max_size=4))
def test_top_bound_is_max_over_named_times(times):
    """The step's bound class: the largest time, ties to the later name, as max(zip(...)) gives."""
    assert top_bound(*times) == max(zip(times, BOUNDS))[1]


@pytest.mark.parametrize("i", range(len(STEPS)))
@pytest.mark.parametrize("n, ctx", [(7, 7 * 127 + 3), (1, 120), (33, 33 * 255 - 1), (64, 64 * 128 - 64 * 8)])
def test_decode_span_across_kv_tile_boundaries(i, n, ctx):
    """A span whose mean context crosses whole KV tiles (the launch grid changes within it)."""
    s = STEPS[i]
    assert s.decode_span(n, ctx, 16) == [s.general_step(BatchShape(n, n, n, n, ctx + j * n)) for j in range(16)]
