"""The step-time core against FLOPs and bytes worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from simserve.cost import ops
from simserve.cost.batch import BatchShape
from simserve.cost.memory import plan_memory
from simserve.cost.step import Precision, RooflineStep
from simserve.errors import ScenarioError
from simserve.hardware import OpEfficiency, load_profile
from simserve.model import ModelSpec, load_model

IDEAL = OpEfficiency(flops_fraction=1.0, bandwidth_fraction=1.0, overhead_us=0.0)
BF16 = Precision.of("bf16", "bf16", "bf16")


def test_gemm_flops_and_bytes():
    # 8 x 4096 @ 4096 x 6144 in bf16
    assert ops.gemm_flops(8, 6144, 4096) == 2 * 8 * 6144 * 4096
    assert ops.gemm_bytes(8, 6144, 4096, 2, 2) == 4096 * 6144 * 2 + (8 * 4096 + 8 * 6144) * 2


def test_gemm_rows_staircase_per_row_tile():
    """Skinny products take the smallest power-of-two tile covering m; wider ones whole row tiles. With
    Hopper's 128-row tiles (H100 profile: gemm_row_tile) m of 129-256 all cost 256 rows, where 64-row tiles
    step at 192."""
    assert [ops.gemm_rows(m, 64) for m in (1, 3, 33, 64, 65, 128, 129, 192, 193, 256)] == \
        [1, 4, 64, 64, 128, 128, 192, 192, 256, 256]
    assert [ops.gemm_rows(m, 128) for m in (1, 3, 33, 64, 65, 128, 129, 192, 193, 256, 257)] == \
        [1, 4, 64, 64, 128, 128, 256, 256, 256, 256, 384]
    m = np.array([0.0, 33.0, 100.0, 136.0, 200.0, 257.0])
    assert ops.gemm_rows(m, 128).tolist() == [0.0, 64.0, 128.0, 256.0, 256.0, 384.0]
    # compute-bound: the time is flat inside a 128-row tile and steps when m passes it
    eff = OpEfficiency(flops_fraction=1.0, bandwidth_fraction=1.0, overhead_us=0.0, row_tile=128)
    t = [ops.gemm_time(m, 8192, 8192, 2, 2, 1e15, 1e15, eff).time_s for m in (136, 200, 256, 264)]
    assert t[0] == t[1] == t[2] < t[3]
    assert ops.gemm_time(136, 8192, 8192, 2, 2, 1e15, 1e15, eff).flops == ops.gemm_flops(136, 8192, 8192)
    assert load_profile("h100-sxm-80gb").gemm_row_tile == 128 and load_profile("a100-sxm-80gb").gemm_row_tile is None
    assert load_profile("h100-sxm-80gb").efficiency.gemm.row_tile == 128
    assert load_profile("a100-sxm-80gb").efficiency.gemm.row_tile == 64


def test_gemm_waves_slow_only_grids_beyond_one_wave():
    """A grid of 128 x 256 tiles over 108 SMs: 112 tiles (512 x 7168) take two whole waves, so the compute runs
    at 112/216 of the device; 84 tiles (384 rows) or exactly 108 (a full wave) are not slowed."""
    assert ops.gemm_wave_fill(512, 7168, 128, 256, 108) == 112 / 216
    assert ops.gemm_wave_fill(384, 7168, 128, 256, 108) == 1.0
    assert ops.gemm_wave_fill(128, 256 * 108, 128, 256, 108) == 1.0
    assert ops.gemm_wave_fill(np.array([384.0, 512.0, 1024.0]), 7168, 128, 256, 108).tolist() == [1.0, 112 / 216, 224 / 324]
    # compute-bound: 512 and 768 rows take the same two waves, 1024 rows three
    eff = OpEfficiency(flops_fraction=1.0, bandwidth_fraction=1.0, overhead_us=0.0, row_tile=64,
                       wave_tile={"rows": 128, "cols": 256}, concurrent_blocks=108)
    t = {m: ops.gemm_time(m, 7168, 4096, 2, 2, 1e15, 1e18, eff).time_s for m in (384, 512, 768, 1024)}
    assert t[512] == pytest.approx(t[768], rel=1e-12) and t[1024] == pytest.approx(1.5 * t[512], rel=1e-12)
    assert t[384] == pytest.approx(384 * 2 * 7168 * 4096 / 1e15, rel=1e-12)       # one wave: the plain roofline
    assert ops.gemm_time(512, 7168, 4096, 2, 2, 1e15, 1e18, eff).flops == ops.gemm_flops(512, 7168, 4096)
    a100 = load_profile("a100-sxm-80gb")
    assert (a100.gemm_wave_tile.rows, a100.gemm_wave_tile.cols) == (128, 256)
    assert a100.efficiency.gemm.wave_tile == a100.gemm_wave_tile and a100.efficiency.gemm.concurrent_blocks == a100.sm_count
    assert load_profile("a100-sxm-40gb").efficiency.gemm.wave_tile == a100.gemm_wave_tile
    for name in ("h100-sxm-80gb", "h200-sxm-141gb", "b200-180gb", "groq-lpu", "a40-48gb"):
        assert load_profile(name).efficiency.gemm.wave_tile is None
    with pytest.raises(ValueError, match="rows"):
        OpEfficiency(flops_fraction=1.0, bandwidth_fraction=1.0, overhead_us=0.0, wave_tile={"rows": 0, "cols": 256})


def test_roofline_picks_the_slower_bound_and_adds_overhead():
    eff = OpEfficiency(flops_fraction=0.5, bandwidth_fraction=0.5, overhead_us=10)
    t = ops.roofline_s(flops=1e12, bytes_=1e9, peak_flops_s=1e15, bandwidth_bytes_s=1e12, eff=eff)
    # compute 1e12 / 5e14 = 2 ms; memory 1e9 / 5e11 = 2 ms... make memory win:
    t = ops.roofline_s(flops=1e12, bytes_=2e9, peak_flops_s=1e15, bandwidth_bytes_s=1e12, eff=eff)
    assert t.time_s == pytest.approx(10e-6 + 4e-3) and t.bound == ops.MEMORY
    t = ops.roofline_s(flops=4e12, bytes_=1e9, peak_flops_s=1e15, bandwidth_bytes_s=1e12, eff=eff)
    assert t.time_s == pytest.approx(10e-6 + 8e-3) and t.bound == ops.COMPUTE
    t = ops.roofline_s(flops=1, bytes_=1, peak_flops_s=1e15, bandwidth_bytes_s=1e12, eff=eff)
    assert t.bound == ops.OVERHEAD


def test_prefill_attention_counts_causal_pairs():
    # one chunk of 3 new tokens after 5 cached: queries see 6, 7, 8 keys -> 21 pairs
    q, c = 3, 5
    flops = ops.prefill_attention_flops(32, 128, sum_q_ctx=q * c, sum_q_sq=q * q, num_tokens=q)
    assert flops == 4 * 32 * 128 * 21
    # a fresh 4-token prompt: 1+2+3+4 = 10 pairs
    assert ops.prefill_attention_flops(1, 1, 0, 16, 4) == 4 * 10


def test_decode_attention_reads_the_whole_cache():
    # two sequences with 100 and 300 cached tokens, GQA 32 heads / 8 KV heads, head 128, bf16 KV
    flops = ops.decode_attention_flops(32, 128, sum_ctx_plus_one=101 + 301)
    assert flops == 4 * 32 * 128 * 402
    by = ops.attention_bytes(32, 8, 128, num_tokens=2, kv_tokens_read=400, act_bytes=2, kv_bytes=2)
    assert by == 2 * 2 * 32 * 128 * 2 + 2 * 2 * 8 * 128 * 2 + 2 * 400 * 8 * 128 * 2


def test_allreduce_algorithms():
    # inside a node, small messages: the faster of one-shot (1 stage, reads 3 peers) and two-shot (2 stages, ring bytes)
    t = ops.allreduce_time(1e6, 4, link_bandwidth_bytes_s=1e11, link_latency_s=1e-6, eff=IDEAL)
    assert t.time_s == pytest.approx(min(1e-6 + 3e6 / 1e11, 2e-6 + 2 * 3 / 4 * 1e6 / 1e11)) and t.bound == ops.NETWORK
    assert ops.allreduce_time(1e3, 4, 1e11, 1e-6, IDEAL).time_s == pytest.approx(1e-6 + 3e3 / 1e11)
    # NCCL's ring from vLLM's custom-kernel limit on, and across nodes (where each of 2(p-1) steps pays the link latency)
    eff = IDEAL.model_copy(update={"overhead_us": 50.0})
    big = ops.CUSTOM_ALLREDUCE_MAX_BYTES
    assert ops.allreduce_time(big, 4, 1e11, 1e-6, eff).time_s == pytest.approx(50e-6 + 1.5 * big / 1e11)
    assert ops.allreduce_time(1e6, 4, 1e11, 1e-6, eff, custom_kernel=False).time_s == pytest.approx(50e-6 + 1.5e6 / 1e11 + 6e-6)
    assert ops.allreduce_time(1e6, 1, 1e11, 1e-6, IDEAL).time_s == 0.0
    # a reducing switch (NVLS): each device sends and receives the message once, if faster than the ring
    nvls = eff.model_copy(update={"switch_bandwidth_fraction": 0.8})
    assert ops.allreduce_time(big, 8, 1e11, 1e-6, nvls, switch_reduction=True).time_s == pytest.approx(50e-6 + big / 8e10)
    assert ops.allreduce_time(big, 2, 1e11, 1e-6, nvls, switch_reduction=True).time_s == pytest.approx(50e-6 + big / 1e11)
    assert ops.allreduce_time(big, 8, 1e11, 1e-6, nvls).time_s == pytest.approx(50e-6 + 1.75 * big / 1e11)
    assert ops.allreduce_time(1e6, 8, 1e11, 1e-6, nvls, switch_reduction=True).time_s == ops.allreduce_time(1e6, 8, 1e11, 1e-6, eff).time_s


def test_decode_attention_launch_grid_terms():
    eff = IDEAL.model_copy(update={"overhead_us": 10.0, "row_bandwidth_gb_s": 2.0, "relayout_overhead_us": 6.0,
                                   "unit_overhead_ns": 100.0})
    tile = 2 * 128 * 128 * 2            # a KV tile: K and V of 128 keys at head_dim 128, 2 bytes each
    by = 100 * 1024 * 2 * 128 * 2       # 100 (sequence, head) units of 1024 cached keys
    # as many query as KV heads: each of the 100 blocks walks 8 tiles, the first inside the fixed overhead,
    # the other 7 at 2 GB/s, in one wave (two blocks on each of 64 SMs)
    t = ops.decode_attention_time(0.0, by, 25, 4, 4, 1e15, 1e12, eff, sm_count=64, keys=25 * 1024)
    assert t.time_s == pytest.approx(10e-6 + 7 * tile / 2e9) and t.bound == ops.MEMORY
    # without an SM count: no launch grid, the roofline; the units' fixed cost runs alongside it (max, not sum)
    assert ops.decode_attention_time(0.0, by, 25, 4, 4, 1e15, 1e12, eff).time_s == pytest.approx(10e-6 + by / 1e12)
    t = ops.decode_attention_time(0.0, 1e3, 1000, 4, 4, 1e15, 1e12, eff)
    assert t.time_s == pytest.approx(10e-6 + 4000 * 100e-9) and t.bound == ops.OVERHEAD
    # grouped queries of several sequences and KV heads: the two regrouping copies (fixed cost plus the
    # queries and outputs each read and written once more); 100 blocks fill the GPU enough not to split
    copies = 4 * 25 * 8 * 128 * 2
    grouped = ops.decode_attention_time(0.0, by, 25, 8, 4, 1e15, 1e12, eff, 64, keys=25 * 1024)
    assert ops.decode_launch(25, 8, 4, 25 * 1024, 128, 64) == (100, 8, 1)
    assert grouped.time_s == pytest.approx(10e-6 + 7 * tile / 2e9 + 6e-6 + copies / 1e12)
    packed = eff.model_copy(update={"relayout_overhead_us": 0.0})     # no copies without their fixed cost
    assert ops.decode_attention_time(0.0, by, 25, 8, 4, 1e15, 1e12, packed, 64, keys=25 * 1024).time_s == pytest.approx(
        10e-6 + 7 * tile / 2e9)
    # one grouped sequence: no copies, but its 8 tiles are split 8 ways (one tile per block, no walk) and a
    # combine kernel merges the parts: its fixed cost, and its blocks walk 8 splits of 4 fp32 rows each
    one = 1024 * 2 * 128 * 2
    assert ops.decode_launch(1, 8, 1, 1024, 128, 64) == (8, 1, 8)
    assert ops.decode_attention_time(0.0, one, 1, 8, 1, 1e15, 1e12, eff, 64, keys=1024).time_s == pytest.approx(
        10e-6 + one / 1e12 + 6e-6 + 8 * 4 * 128 * 4 / 2e9)


def test_splitkv_heuristic():
    """FlashAttention-2's split count: the fewest splits whose waves are >= 85% as full as the fullest."""
    assert ops.splitkv_splits(200, 128, 8) == 1          # >= 80% of the slots filled: no split
    assert ops.splitkv_splits(1, 128, 8) == 8            # one block: as many splits as tiles
    assert ops.splitkv_splits(8, 216, 64) == 22          # 8 x 22 = 176 of 216 slots (3 tiles each)
    assert ops.splitkv_splits(1, 216, 256) == 128        # at most 128 splits
    assert ops.kv_tile(64) == 256 and ops.kv_tile(128) == 128 and ops.kv_tile(256) == 64
    assert ops.combine_rows(128) == 4 and ops.combine_rows(64) == 8 and ops.combine_rows(96) == 16


def test_batch_shape_sums():
    b = BatchShape.from_pairs([(1, 10), (1, 20), (5, 0), (3, 7)])
    assert (b.num_seqs, b.num_tokens, b.decode_seqs, b.decode_ctx) == (4, 10, 2, 32)
    assert (b.prefill_seqs, b.prefill_tokens, b.prefill_q_ctx, b.prefill_q_sq, b.prefill_kv) == (2, 8, 21, 34, 15)


def _ideal_step(model, tp=1):
    hw = load_profile("h100-sxm-80gb")
    eff = hw.efficiency.model_copy(update={k: IDEAL for k in ("gemm", "attention_prefill", "attention_decode", "elementwise", "allreduce")})
    hw = hw.model_copy(update={"efficiency": eff.model_copy(update={"step_overhead_us": 0.0})})
    return RooflineStep(model, hw, BF16, tp), hw


def test_decode_step_flops_match_parameter_count():
    # A batch-1 decode does 2 FLOPs per linear-layer parameter (embedding lookup excluded, LM head
    # included) plus attention over the context.
    model = load_model("llama-2-7b")
    step, hw = _ideal_step(model)
    ctx = 1000
    cost = step.step(BatchShape.from_pairs([(1, ctx)]))
    linear = model.num_layers * model.params_per_layer + model.vocab_size * model.hidden_size
    attn = model.num_layers * 4 * model.num_heads * model.head_size * (ctx + 1)
    elementwise_flops = cost.flops - 2 * linear - attn
    assert 0 <= elementwise_flops < 1e-3 * cost.flops
    # memory-bound: weights plus the KV cache dominate the bytes
    weights = (model.num_layers * model.params_per_layer + model.vocab_size * model.hidden_size) * 2
    kv = model.num_layers * 2 * ctx * model.kv_size * 2
    assert cost.bytes == pytest.approx(weights + kv, rel=0.01)
    assert cost.bound == ops.MEMORY
    assert cost.time_s == pytest.approx(cost.bytes / hw.weight_bandwidth_bytes_s, rel=0.01)


def test_long_prefill_is_compute_bound_and_tp_shards_it():
    model = load_model("llama-3.1-70b")
    one, _ = _ideal_step(model, tp=8)
    cost = one.step(BatchShape.from_pairs([(4096, 0)]))
    assert cost.bound == ops.COMPUTE
    # per device: 1/8 of the linear FLOPs of 4096 tokens (+ attention and LM head for one row)
    linear = model.num_layers * model.params_per_layer * 2 * 4096 / 8
    assert cost.flops == pytest.approx(linear, rel=0.06)
    ops_names = [name for name, _ in one.layer_ops(BatchShape.from_pairs([(4096, 0)]))]
    assert ops_names.count("attn_allreduce") == 1 and ops_names.count("ffn_allreduce") == 1


def test_tp_beyond_a_node_uses_the_network_link():
    model = load_model("llama-3.1-405b")
    hw = load_profile("h100-sxm-80gb")
    inside = RooflineStep(model, hw, BF16, 8)
    across = RooflineStep(model, hw, BF16, 16)
    assert inside.link_bw_bytes_s == hw.interconnect.intra_node.bandwidth_gb_s * 1e9
    assert across.link_bw_bytes_s == hw.interconnect.inter_node.bandwidth_gb_s * 1e9


def test_moe_reads_only_touched_experts():
    model = load_model("mixtral-8x7b")
    step, _ = _ideal_step(model, tp=2)
    one = step.step(BatchShape.from_pairs([(1, 100)]))
    many = step.step(BatchShape.from_pairs([(1, 100)] * 64))
    # batch 1 touches 2 of 8 experts; batch 64 touches essentially all 8
    expert_bytes = model.num_layers * 8 * model.expert_params * 2 / 2
    assert many.bytes - one.bytes == pytest.approx(expert_bytes * (1 - 2 / 8), rel=0.05)


def test_memory_plan_and_the_70b_example():
    hw = load_profile("a100-sxm-80gb")
    model = load_model("llama-2-70b")
    with pytest.raises(ScenarioError) as err:
        plan_memory(model, hw, BF16, 1, 0.9, 8192, 256, 16)
    assert "138.0 GB of weights" in str(err.value) and "80.0 GB" in str(err.value)
    plan = plan_memory(model, hw, BF16, 4, 0.9, 8192, 256, 16)
    assert plan.weight_bytes == pytest.approx(model.num_params * 2 / 4)
    # 80 layers x 8 KV heads / 4 devices x 128 x 2 (K, V) x 2 bytes
    assert plan.kv_bytes_per_token == 80 * 2 * 128 * 2 * 2
    assert plan.kv_capacity_tokens == plan.num_blocks * 16
    assert plan.num_blocks == int((72e9 - plan.weight_bytes - plan.activation_bytes) // (plan.kv_bytes_per_token * 16))


def test_gqa_kv_heads_replicate_when_tp_exceeds_them():
    model = ModelSpec(name="m", num_layers=2, hidden_size=256, num_heads=8, num_kv_heads=2, ffn_size=512,
                      ffn_gated=True, vocab_size=1000, max_context=1024)
    hw = load_profile("h100-sxm-80gb")
    plan = plan_memory(model, hw, BF16, 8, 0.9, 64, 4, 16)
    assert plan.kv_bytes_per_token == 2 * 2 * 1 * 32 * 2   # one KV head per device
