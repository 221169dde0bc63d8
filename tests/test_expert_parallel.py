"""Expert parallelism for MoE models against bytes, FLOPs and times worked out by hand: the all-to-all
dispatch and combine, the experts held and read per device, the busiest device's load, the checks."""
from __future__ import annotations

from math import comb

import pytest

import simserve
from simserve.cost import ops
from simserve.cost.batch import BatchShape
from simserve.cost.memory import activation_bytes_per_device, expert_weight_bytes_per_device, weight_bytes_per_device
from simserve.cost.step import Precision, RooflineStep
from simserve.errors import ScenarioError
from simserve.hardware import OpEfficiency, load_profile
from simserve.model import ModelSpec, load_model
from simserve.scenario import load_scenario

IDEAL = OpEfficiency(flops_fraction=1.0, bandwidth_fraction=1.0, overhead_us=0.0)
BF16 = Precision.of("bf16", "bf16", "bf16")
MIXTRAL = load_model("mixtral-8x7b")     # 32 layers, hidden 4096, 8 experts of FFN 14336 (SwiGLU), top-2
EXPERT_BYTES = 3 * 4096 * 14336 * 2      # one whole expert of one layer, bf16
WORKLOAD = {"kind": "synthetic", "num_requests": 30, "arrival": {"process": "offline"},
            "prompt_tokens": {"dist": "fixed", "value": 256}, "output_tokens": {"dist": "fixed", "value": 16}}


def ideal_step(model=MIXTRAL, tp=1, ep=1, imbalance=1.0):
    """Every efficiency 1, no overheads, no latency: times are exactly bytes / bandwidth or FLOPs / peak."""
    hw = load_profile("h100-sxm-80gb")
    names = ("gemm", "attention_prefill", "attention_decode", "elementwise", "allreduce", "send_recv", "moe")
    eff = hw.efficiency.model_copy(update={k: IDEAL for k in names} | {"step_overhead_us": 0.0})
    hw = hw.model_copy(update={"efficiency": eff})
    return RooflineStep(model, hw, BF16, tp, ep, imbalance), hw


def layer(step, T, ctx=100):
    """The named kernels of one decoder layer for a decode batch of ``T`` sequences."""
    return dict(step.layer_ops(BatchShape.from_pairs([(1, ctx)] * T)))


def scenario(model="mixtral-8x7b", tp=2, ep=2, **deployment):
    return {"name": "ep", "model": model, "hardware": "h100-sxm-80gb", "workload": WORKLOAD,
            "deployment": {"tensor_parallel": tp, "expert_parallel": ep, **deployment}}


def error(data) -> ScenarioError:
    with pytest.raises(ScenarioError) as e:
        load_scenario(data)
    return e.value


# --- the all-to-all --------------------------------------------------------------------------------

def test_alltoall_sends_all_but_the_local_share_in_one_hop():
    t = ops.alltoall_time(8e6, 4, link_bandwidth_bytes_s=1e11, link_latency_s=2e-6, eff=IDEAL)
    assert t.bytes == 3 / 4 * 8e6 and t.flops == 0.0 and t.bound == ops.NETWORK
    assert t.time_s == pytest.approx(3 / 4 * 8e6 / 1e11 + 2e-6)
    assert ops.alltoall_time(8e6, 1, 1e11, 2e-6, IDEAL).time_s == 0.0


@pytest.mark.parametrize("T, ep", [(1, 2), (64, 2), (64, 8), (4096, 8)])
def test_alltoall_bytes_per_layer(T, ep):
    step, hw = ideal_step(tp=ep, ep=ep)
    ops_ = dict(step.linear_layer_ops(T))
    # each device owns T/ep tokens and sends each to its k = 2 experts (k copies), hidden 4096, bf16;
    # 1/ep of the copies land on the sender: dispatch and combine each move (ep-1)/ep of that
    per_direction = (ep - 1) / ep * (T / ep) * 2 * 4096 * 2
    assert ops_["moe_dispatch"].bytes == pytest.approx(per_direction, rel=1e-12)
    assert ops_["moe_dispatch"].bytes + ops_["moe_combine"].bytes == pytest.approx(2 * per_direction, rel=1e-12)
    link = hw.interconnect.intra_node      # ep <= 8 devices of a node: NVLink
    assert ops_["moe_dispatch"].time_s == pytest.approx(per_direction / (link.bandwidth_gb_s * 1e9) + link.latency_us * 1e-6)
    # the combine returns the expert outputs: no FFN all-reduce; the attention all-reduce stays
    assert "ffn_allreduce" not in ops_ and "attn_allreduce" in ops_


def test_alltoall_beyond_a_node_uses_the_network():
    moe16 = MIXTRAL.model_copy(update={"name": "moe16", "num_experts": 16})
    hw = load_profile("h100-sxm-80gb")
    assert RooflineStep(moe16, hw, BF16, 8, 8).ep_link_bw_bytes_s == hw.interconnect.intra_node.bandwidth_gb_s * 1e9
    assert RooflineStep(moe16, hw, BF16, 16, 16).ep_link_bw_bytes_s == hw.interconnect.inter_node.bandwidth_gb_s * 1e9


# --- weights held and read -------------------------------------------------------------------------

@pytest.mark.parametrize("tp, ep", [(2, 2), (8, 8), (2, 1), (8, 1)])
def test_expert_weight_bytes_per_device(tp, ep):
    # ep = tp: 8/ep whole experts per layer; ep = 1: 1/tp of all 8. The same bytes either way.
    expected = 32 * 8 / tp * EXPERT_BYTES
    assert expert_weight_bytes_per_device(MIXTRAL, BF16, tp, ep) == pytest.approx(expected, rel=1e-12)
    if ep > 1:
        assert expected == 32 * (8 // ep) * EXPERT_BYTES
    # attention, router and embeddings per tensor-parallel rules, plus the experts: the total per device
    rest = MIXTRAL.num_params - 32 * 8 * MIXTRAL.expert_params
    assert weight_bytes_per_device(MIXTRAL, BF16, tp) == pytest.approx(rest * 2 / tp + expected, rel=1e-12)


def touched_experts(T, n, E=8, k=2):
    """Local experts a device with work reads: n * P(one touched) / P(any of its n touched)."""
    return n * (1 - (1 - k / E) ** T) / (1 - (comb(E - n, k) / comb(E, k)) ** T)


def stream_bytes(T, devices, ep):
    """What the kernels around the grouped GEMMs move (ops.moe_work): the activation reads gate and up and
    writes one intermediate, and the GEMM outputs are read by the top-k sum, for every one of the T*k pairs;
    the sum writes T hidden states; with EP the GEMMs also write zeros for the other devices' pairs."""
    ffn = 14336 if ep > 1 else 14336 / devices
    pairs = T * 2
    return (pairs * (3 * ffn + 4096) + T * 4096 + pairs * (1 - 1 / ep) * (2 * ffn + 4096)) * 2


@pytest.mark.parametrize("devices", [2, 8])
@pytest.mark.parametrize("T", [1, 64])
def test_mixtral_decode_expert_reads_and_flops(devices, T):
    tp_step, _ = ideal_step(tp=devices)
    ep_step, hw = ideal_step(tp=devices, ep=devices)
    tp_ops, ep_ops = layer(tp_step, T), layer(ep_step, T)
    # tensor parallel: every touched expert (8 (1 - (6/8)^T) of them), 1/devices of each; all T*k
    # token-expert pairs read and write the whole hidden state and 1/devices of the intermediates
    tp_weights = 8 * (1 - 0.75 ** T) * EXPERT_BYTES / devices
    tp_act = T * 2 * (2 * 4096 + 3 * 14336 / devices) * 2
    assert tp_ops["moe_experts"].bytes == pytest.approx(tp_weights + tp_act + stream_bytes(T, devices, 1), rel=1e-12)
    # expert parallel: 8/devices whole experts per device; a device with work reads those it got, and
    # sees T*k/devices pairs with whole intermediates
    ep_weights = touched_experts(T, 8 // devices) * EXPERT_BYTES
    ep_act = T * 2 / devices * (2 * 4096 + 3 * 14336) * 2
    ep_stream = stream_bytes(T, devices, devices)
    assert ep_ops["moe_experts"].bytes == pytest.approx(ep_weights + ep_act + ep_stream, rel=1e-12)
    # the same FLOPs: T*k/ep pairs over whole experts = T*k pairs over 1/tp of each
    flops = 2 * T * 2 * 3 * 4096 * 14336 / devices
    assert tp_ops["moe_experts"].flops == pytest.approx(flops, rel=1e-12)
    assert ep_ops["moe_experts"].flops == pytest.approx(flops, rel=1e-12)
    # decode is memory-bound: the time is the bytes over HBM bandwidth
    assert ep_ops["moe_experts"].bound == ops.MEMORY
    assert ep_ops["moe_experts"].time_s == pytest.approx(ep_ops["moe_experts"].bytes / hw.weight_bandwidth_bytes_s)
    if T == 1:
        # batch 1 on 8 devices: 2 devices each read 1 whole expert, vs 2 experts x 1/8 with TP; 4x the reads
        expected_ratio = {2: 28 / 22, 8: 4.0}[devices]
        assert ep_weights / tp_weights == pytest.approx(expected_ratio)
    else:
        # batch 64 touches every expert: the same weight reads
        assert ep_weights / tp_weights == pytest.approx(1.0, rel=1e-7)


@pytest.mark.parametrize("T, rows", [(1, 16), (8, 16), (9, 64), (256, 64), (257, 128)])
def test_mixtral_expert_rows_padded_to_whole_blocks(T, rows):
    # vLLM pads every expert's rows to blocks of 16 (no more tokens than experts) or 64: on one device
    # (TP 1) the 8 (1 - (6/8)^T) touched experts share the T*2 pairs, each padded to ``rows`` rows
    w = ops.moe_work(T, 2, 8, 1, 1.0, 4096, 14336, 3, 2.0, 2.0)
    assert w.tile_flops == pytest.approx(8 * (1 - 0.75 ** T) * rows * 2 * 3 * 14336 * 4096, rel=1e-12)
    assert w.flops == pytest.approx(T * 2 * 2 * 3 * 14336 * 4096, rel=1e-12)


def test_mixtral_decode_step_on_8_h100():
    # whole steps: expert parallelism does no more FLOPs; batch 1 waits on whole-expert reads
    tp_step, _ = ideal_step(tp=8)
    ep_step, _ = ideal_step(tp=8, ep=8)
    for T in (1, 64):
        batch = BatchShape.from_pairs([(1, 100)] * T)
        a, b = tp_step.step(batch), ep_step.step(batch)
        assert b.flops == pytest.approx(a.flops, rel=1e-12)
        assert b.bound == ops.MEMORY
    one = BatchShape.from_pairs([(1, 100)])
    # per layer: 1 expert instead of 2/8 of one, and 1/8 of the pairs' hidden states instead of all; the
    # streaming kernels around the GEMMs see every pair either way, with whole intermediates under EP
    extra_reads = 32 * ((1 - 2 / 8) * EXPERT_BYTES - 2 * 2 * 4096 * (1 - 1 / 8) * 2
                        + stream_bytes(1, 8, 8) - stream_bytes(1, 8, 1))
    assert ep_step.step(one).bytes - tp_step.step(one).bytes == pytest.approx(extra_reads, rel=1e-9)


# --- imbalance -------------------------------------------------------------------------------------

@pytest.mark.parametrize("imbalance", [1.25, 1.5, 2.0])
def test_imbalance_scales_the_expert_time_exactly(imbalance):
    T = 4096                          # a long prefill: the grouped GEMMs are compute-bound (not their streaming)
    base, hw = ideal_step(tp=8, ep=8)
    skew, _ = ideal_step(tp=8, ep=8, imbalance=imbalance)
    a, b = dict(base.linear_layer_ops(T)), dict(skew.linear_layer_ops(T))
    w = ops.moe_work(T, 2, 8, 8, 1.0, 4096, 14336, 3, 2.0, 2.0)
    assert w.tile_flops / hw.peak_flops_s("bf16") > w.gemm_bytes / hw.weight_bandwidth_bytes_s
    # the busiest device's grouped GEMMs scale with its pairs; the streaming over every pair does not
    stream_s = stream_bytes(T, 8, 8) / hw.weight_bandwidth_bytes_s
    assert b["moe_experts"].time_s - stream_s == pytest.approx(imbalance * (a["moe_experts"].time_s - stream_s), rel=1e-12)
    assert b["moe_experts"].flops == pytest.approx(imbalance * a["moe_experts"].flops, rel=1e-12)
    for name in ("moe_router", "moe_dispatch", "moe_combine", "qkv_proj", "attn_allreduce"):
        assert b[name].time_s == a[name].time_s


def test_imbalance_grows_the_activation_workspace():
    tokens, seqs = 4096, 128
    base = activation_bytes_per_device(MIXTRAL, BF16, 2, tokens, seqs)
    skew = activation_bytes_per_device(MIXTRAL, BF16, 2, tokens, seqs, moe_load_imbalance=1.5)
    assert skew - base == pytest.approx(0.5 * tokens * 3 * 14336 * 2 / 2 * 2, rel=1e-12)
    r1, r2 = load_scenario(scenario()), load_scenario(scenario(moe_load_imbalance=1.5))
    assert r2.memory.activation_bytes > r1.memory.activation_bytes


# --- scenarios -------------------------------------------------------------------------------------

def test_mixtral_fits_on_2_h100_with_ep_2():
    r = load_scenario(scenario())
    assert r.memory.weight_bytes == pytest.approx(MIXTRAL.num_params * 2 / 2, rel=1e-12)
    assert r.memory.weight_bytes < 0.9 * 80e9 and r.memory.kv_capacity_tokens > 0
    assert r.num_devices == 2          # EP reuses the tensor-parallel devices
    # one H100 cannot hold the 93 GB of weights
    assert error(scenario(tp=1, ep=1)).path == "deployment.tensor_parallel"
    s = simserve.simulate(scenario()).summary
    assert s["completed"] == 30 and s["devices"] == 2


def test_default_is_tensor_parallel_only():
    a = load_scenario(scenario(ep=1)).config.deployment
    assert (a.expert_parallel, a.moe_load_imbalance) == (1, 1.0)
    hw = load_profile("h100-sxm-80gb")
    plain, explicit = RooflineStep(MIXTRAL, hw, BF16, 2), RooflineStep(MIXTRAL, hw, BF16, 2, 1, 1.0)
    batch = BatchShape.from_pairs([(1, 100)] * 8 + [(300, 0)])
    assert plain.step(batch) == explicit.step(batch)


@pytest.mark.parametrize("data, path, message", [
    (scenario("llama-3.1-8b", tp=2, ep=2), "deployment.expert_parallel", "needs a mixture-of-experts model; llama-3.1-8b is dense"),
    (scenario(tp=1, ep=3), "deployment.expert_parallel", "must divide the model's 8 experts, got 3"),
    (scenario(tp=2, ep=4), "deployment.expert_parallel", "must be 1 or deployment.tensor_parallel (2)"),
    (scenario(tp=2, ep=1, moe_load_imbalance=1.5), "deployment.moe_load_imbalance", "applies to expert parallelism only"),
    (scenario(moe_load_imbalance=0.5), "deployment.moe_load_imbalance", ""),
    (scenario(ep=0), "deployment.expert_parallel", ""),
])
def test_bad_configs(data, path, message):
    e = error(data)
    assert e.path == path and message in str(e)


def test_dense_draft_model_ignores_ep():
    # a speculative draft model gets the deployment's cost-model arguments; it has no experts
    dense = ModelSpec(name="d", num_layers=2, hidden_size=256, num_heads=8, num_kv_heads=2, ffn_size=512,
                      ffn_gated=True, vocab_size=1000, max_context=1024)
    hw = load_profile("h100-sxm-80gb")
    batch = BatchShape.from_pairs([(1, 10)] * 4)
    assert RooflineStep(dense, hw, BF16, 2, 2, 1.5).step(batch) == RooflineStep(dense, hw, BF16, 2).step(batch)
