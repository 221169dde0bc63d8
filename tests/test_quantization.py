"""Quantization and KV precision against bytes and FLOPs worked out by hand: weight and KV memory, the
memory-bound decode and compute-bound prefill speedups, the hardware checks, and the sliding window."""
from __future__ import annotations

import pytest

import simserve
from simserve import quantization, resources
from simserve.cost import ops
from simserve.cost.batch import BatchShape
from simserve.cost.memory import kv_bytes_per_token, kv_tokens_held, plan_memory
from simserve.cost.step import Precision, RooflineStep
from simserve.errors import ScenarioError
from simserve.hardware import OpEfficiency, load_profile
from simserve.model import load_model
from simserve.scenario import load_scenario

IDEAL = OpEfficiency(flops_fraction=1.0, bandwidth_fraction=1.0, overhead_us=0.0)
PROFILES = resources.bundled_names("hardware_profiles")

# bytes per parameter, from the formats (not from simserve): int4 = 4 bits + one fp16 scale per 128
# weights (GPTQ/AWQ/Marlin, 4.125 bits); fp4 = NVFP4, 4 bits + one 8-bit scale per 16 values (4.5 bits)
INT4_BYTES = (4 + 16 / 128) / 8
FP4_BYTES = (4 + 8 / 16) / 8

WORKLOAD = {"kind": "synthetic", "num_requests": 20, "arrival": {"process": "offline"},
            "prompt_tokens": {"dist": "fixed", "value": 256}, "output_tokens": {"dist": "fixed", "value": 16}}


def scenario(model="llama-3.1-8b", hardware="h100-sxm-80gb", weights="bf16", activations="bf16", kv_cache="bf16",
             tp=1, **extra):
    return {"name": "quant", "model": model, "hardware": hardware, "workload": WORKLOAD,
            "precision": {"weights": weights, "activations": activations, "kv_cache": kv_cache},
            "deployment": {"tensor_parallel": tp}, **extra}


def error(data) -> ScenarioError:
    with pytest.raises(ScenarioError) as e:
        load_scenario(data)
    return e.value


def ideal_step(model, precision, hw_name="h100-sxm-80gb", tp=1):
    """The roofline with every efficiency at 1 and no overheads: times are exactly bytes/bw or flops/peak
    (FP8 linear layers too: without a gemm_fp8 efficiency they are GEMMs at the FP8 peak)."""
    hw = load_profile(hw_name)
    eff = hw.efficiency.model_copy(update={k: IDEAL for k in ("gemm", "attention_prefill", "attention_decode", "elementwise", "allreduce")}
                                   | {"gemm_fp8": None})
    hw = hw.model_copy(update={"efficiency": eff.model_copy(update={"step_overhead_us": 0.0})})
    return RooflineStep(model, hw, precision, tp), hw


# --- Llama-2-70B on one A100-80GB ----------------------------------------------------------------

def test_llama2_70b_fp16_does_not_fit_one_a100():
    e = error(scenario("llama-2-70b", "a100-sxm-80gb", "fp16", "fp16", "fp16"))
    params = load_model("llama-2-70b").num_params
    assert params * 2 > 0.9 * 80e9
    assert e.path == "deployment.tensor_parallel"
    assert f"llama-2-70b needs {params * 2 / 1e9:.1f} GB of weights per device at tensor_parallel=1 (2 bytes/param)" in str(e)
    assert "a100-sxm-80gb has 80.0 GB (72.0 GB usable at gpu_memory_utilization=0.9)" in str(e)


@pytest.mark.parametrize("weights, activations, bytes_per_param", [
    ("int8", "int8", 1.0),            # SmoothQuant W8A8 on the int8 tensor cores
    ("int8", "bf16", 1.0),            # int8 weight-only
    ("int4", "bf16", INT4_BYTES),     # GPTQ/AWQ W4A16
    ("int4", "int8", INT4_BYTES),     # QServe W4A8
])
def test_llama2_70b_runs_on_one_a100_when_quantized(weights, activations, bytes_per_param):
    data = scenario("llama-2-70b", "a100-sxm-80gb", weights, activations,
                    scheduler={"policy": "continuous", "max_num_seqs": 8, "max_num_batched_tokens": 1024})
    result = simserve.simulate(data)
    s = result.summary
    assert s["completed"] == 20
    params = load_model("llama-2-70b").num_params
    assert s["memory_per_device"]["weight_bytes"] == pytest.approx(params * bytes_per_param, rel=1e-12)
    assert s["memory_per_device"]["weight_bytes"] < 72e9


# --- closed-form bytes ---------------------------------------------------------------------------

@pytest.mark.parametrize("model, hardware, weights, activations, tp, bytes_per_param", [
    ("llama-3.1-8b", "h100-sxm-80gb", "bf16", "bf16", 1, 2.0),
    ("llama-3.1-70b", "h100-sxm-80gb", "fp8", "fp8", 2, 1.0),
    ("llama-3.1-70b", "a100-sxm-80gb", "fp8", "bf16", 2, 1.0),
    ("llama-3.1-70b", "h100-sxm-80gb", "int4", "fp8", 1, INT4_BYTES),
    ("llama-3.1-70b", "b200-180gb", "fp4", "fp4", 1, FP4_BYTES),
    ("llama-2-13b", "a100-sxm-40gb", "int4", "fp16", 2, INT4_BYTES),
])
def test_weight_bytes_per_device(model, hardware, weights, activations, tp, bytes_per_param):
    r = load_scenario(scenario(model, hardware, weights, activations, tp=tp))
    assert r.memory.weight_bytes == pytest.approx(load_model(model).num_params * bytes_per_param / tp, rel=1e-12)
    assert r.precision.compute_dtype == activations


@pytest.mark.parametrize("kv_cache, bytes_per_head_token", [
    # per layer, per KV head, K and V each: head_dim values, plus (int8/int4) an fp16 scale and fp16 zero
    ("bf16", 128 * 2), ("fp16", 128 * 2), ("fp8", 128 * 1), ("int8", 128 * 1 + 4), ("int4", 128 // 2 + 4),
])
def test_kv_bytes_per_token(kv_cache, bytes_per_head_token):
    # Llama-3.1-8B: 32 layers, 8 KV heads (GQA, 32 query heads), head_dim 128
    r = load_scenario(scenario(kv_cache=kv_cache))
    assert r.memory.kv_bytes_per_token == 2 * 32 * 8 * bytes_per_head_token
    blocks = (r.memory.usable_bytes - r.memory.weight_bytes - r.memory.activation_bytes) // (r.memory.kv_bytes_per_token * 16)
    assert r.memory.num_blocks == blocks


def test_gqa_and_mqa_shrink_the_kv_cache():
    bf16 = Precision.of("bf16", "bf16", "bf16")
    mha, gqa = load_model("llama-2-7b"), load_model("llama-3.1-8b")   # 32 KV heads vs 8, both 32 layers x 128
    assert kv_bytes_per_token(mha, bf16, 1) == 2 * 32 * 32 * 128 * 2
    assert kv_bytes_per_token(gqa, bf16, 1) == kv_bytes_per_token(mha, bf16, 1) / 4
    mqa = mha.model_copy(update={"name": "mqa", "num_kv_heads": 1})
    assert kv_bytes_per_token(mqa, bf16, 1) == 2 * 32 * 1 * 128 * 2
    # tensor parallelism splits KV heads, but a single KV head is replicated on every device
    assert kv_bytes_per_token(gqa, bf16, 4) == 2 * 32 * 2 * 128 * 2
    assert kv_bytes_per_token(mqa, bf16, 4) == kv_bytes_per_token(mqa, bf16, 1)
    int4 = Precision.of("int4", "int8", "int4")
    assert kv_bytes_per_token(gqa, int4, 1) == 2 * 32 * 8 * (64 + 4)


def test_int4_kv_holds_nearly_four_times_the_tokens():
    plans = {kv: load_scenario(scenario(weights="int4", activations="int8", kv_cache=kv)).memory for kv in ("bf16", "int4")}
    assert plans["bf16"].kv_bytes == plans["int4"].kv_bytes
    ratio = plans["int4"].kv_capacity_tokens / plans["bf16"].kv_capacity_tokens
    assert ratio == pytest.approx(256 / 68, rel=1e-3)   # 128 x 2 bytes vs 128 x 0.5 + 4 bytes per head and token


# --- step time: memory-bound decode, compute-bound prefill ---------------------------------------

def test_batch1_decode_speeds_up_with_the_weight_bytes():
    """Llama-2-7B, one sequence with 1,000 cached tokens: a decode step reads every weight once and the
    whole KV cache; at batch 1 it is memory-bound, so its time is bytes / bandwidth."""
    model = load_model("llama-2-7b")
    ctx = 1000
    batch = BatchShape.from_pairs([(1, ctx)])
    linear_params = model.num_layers * model.params_per_layer + model.vocab_size * model.hidden_size  # + LM head
    kv = model.num_layers * 2 * (ctx + 1) * model.kv_size * 2           # fp16 KV read (ctx) and written (1)
    times, moved = {}, {}
    for weights in ("fp16", "int4"):
        step, hw = ideal_step(model, Precision.of(weights, "fp16", "fp16"))
        cost = step.step(batch)
        assert cost.bound == ops.MEMORY
        times[weights] = cost.time_s
        moved[weights] = linear_params * {"fp16": 2.0, "int4": INT4_BYTES}[weights] + kv
        # activations, norms and the like add under 0.5% to what the weights and KV cache move
        assert cost.bytes == pytest.approx(moved[weights], rel=5e-3)
        assert cost.time_s == pytest.approx(cost.bytes / hw.weight_bandwidth_bytes_s, rel=1e-9)
    expected = moved["int4"] / moved["fp16"]        # ~0.29: 4.125/16 of the weights plus the same KV
    assert times["int4"] / times["fp16"] == pytest.approx(expected, rel=5e-3)
    assert 0.27 < expected < 0.30


def test_prefill_speeds_up_with_the_fp8_peak():
    """Llama-3.1-8B, a 4,096-token prompt on an H100: the GEMMs are compute-bound, so FP8 runs them at
    the FP8 peak (2x bf16). Attention and element-wise kernels stay 16-bit; the LM head (one row) is
    memory-bound and reads half the bytes."""
    model = load_model("llama-3.1-8b")
    T = 4096
    batch = BatchShape.from_pairs([(T, 0)])
    bf16, hw = ideal_step(model, Precision.of("bf16", "bf16", "bf16"))
    fp8, _ = ideal_step(model, Precision.of("fp8", "fp8", "bf16"))
    p16, p8 = hw.peak_tflops["bf16"] * 1e12, hw.peak_tflops["fp8"] * 1e12
    assert p8 / p16 == pytest.approx(2.0, rel=1e-3)
    gemms = ("qkv_proj", "o_proj", "ffn_up", "ffn_down")
    for (name, a), (_, b) in zip(bf16.layer_ops(batch), fp8.layer_ops(batch)):
        if name in gemms:
            assert a.bound == b.bound == ops.COMPUTE
            assert a.time_s / b.time_s == pytest.approx(p8 / p16, rel=1e-12)
        else:
            assert a.time_s == pytest.approx(b.time_s, rel=1e-12), name
    gemm_flops = 2 * T * model.num_layers * model.params_per_layer
    lm_head_bytes = model.vocab_size * model.hidden_size          # 2 - 1 bytes per weight saved
    t16, t8 = bf16.step(batch).time_s, fp8.step(batch).time_s
    expected_saving = gemm_flops * (1 / p16 - 1 / p8) + lm_head_bytes / hw.weight_bandwidth_bytes_s
    assert t16 - t8 == pytest.approx(expected_saving, rel=1e-6)
    # the whole step gains less than the peak ratio: attention and element-wise kernels do not speed up
    assert 1.6 < t16 / t8 < p8 / p16


def test_fp8_linear_layers_are_vllms_two_kernels_where_calibrated():
    """With the shipped H100 profile, FP8 activations price every dense linear layer as vLLM runs it: the input's
    quantization (one block per token) plus CUTLASS's FP8 GEMM in whole waves of its tiles (ops.fp8_linear_time,
    the gemm_fp8 efficiency); bf16 keeps the GEMM model. The LM head stays a GEMM."""
    model = load_model("llama-3.1-8b")
    hw = load_profile("h100-sxm-80gb")
    eff = hw.efficiency.gemm_fp8
    assert eff is not None and eff.concurrent_blocks == hw.sm_count and eff.row_bandwidth_gb_s > 0
    fp8 = RooflineStep(model, hw, Precision.of("fp8", "fp8", "bf16"), 1)
    bf16 = RooflineStep(model, hw, Precision.of("bf16", "bf16", "bf16"), 1)
    pk, bw = hw.peak_flops_s("fp8"), hw.weight_bandwidth_bytes_s
    for T in (1, 100, 4096):
        layer = dict(fp8.linear_layer_ops(T) + fp8._ffn_ops(T))
        want = ops.fp8_linear_time(T, model.hidden_size, model.q_size, 1.0, 2.0, pk, bw, eff)
        assert layer["o_proj"].time_s == want.time_s
        assert dict(bf16.linear_layer_ops(T))["o_proj"].time_s == ops.gemm_time(
            T, model.hidden_size, model.q_size, 2.0, 2.0, hw.peak_flops_s("bf16"), bw, hw.efficiency.gemm).time_s
    # the quantization alone: 4096 rows in waves of 132 blocks, 3 bytes per element at the per-block rate
    quant = ops.fp8_quant_s(4096, model.hidden_size, bw, eff)
    assert quant == pytest.approx(4096 / 132 * 3 * model.hidden_size / (eff.row_bandwidth_gb_s * 1e9), rel=1e-12)
    # FP8 speeds a long prefill up by less than the 2x peak ratio (vLLM's measured FP8 kernels do not reach it)
    batch = BatchShape.from_pairs([(4096, 0)])
    t16, t8 = bf16.step(batch).time_s, fp8.step(batch).time_s
    assert 1.0 < t16 / t8 < 1.6
    # docs/policies.md ("Step time") quotes these: update it with them
    assert (round(t16 * 1e3, 1), round(t8 * 1e3, 1), round(t16 / t8, 2)) == (94.3, 77.0, 1.23)
    # grids below one wave leave SMs idle: 128 rows of a 1024-wide weight are 16 tiles of 64 x 128 on 132 SMs
    tiles, tm, tn = ops.fp8_gemm_tiles(128, 1024)
    assert (float(tiles), float(tm), float(tn)) == (16.0, 64.0, 128.0)
    assert ops.fp8_wave_flops(128, 1024, 4096, 132) == 132 * 2 * 64 * 128 * 4096
    assert float(ops.fp8_gemm_tiles(8, 1024)[0]) == 16.0 and float(ops.fp8_gemm_tiles(8, 600)[0]) == 16.0   # clusters of 8 along n
    assert float(ops.fp8_gemm_tiles(300, 1024)[0]) == 4 * 8                                                 # 3 row tiles, clusters of 2


def test_int4_kv_cuts_decode_attention_bytes():
    model = load_model("llama-3.1-8b")
    ctx = 8000
    batch = BatchShape.from_pairs([(1, ctx)] * 8)
    attn = {}
    for kv in ("bf16", "int4"):
        step, _ = ideal_step(model, Precision.of("int4", "int8", kv))
        [(_, op)] = step.attention_ops(batch)
        attn[kv] = op.bytes
    q_and_o = 2 * 8 * 32 * 128 * 2
    per_token_head = {"bf16": 128 * 2 * 2, "int4": 2 * (64 + 4)}    # K and V
    for kv, b in attn.items():
        assert b == pytest.approx(q_and_o + 8 * (ctx + 1) * 8 * per_token_head[kv], rel=1e-12)


# --- what the hardware supports ------------------------------------------------------------------

def runs_on(hardware, weights, activations) -> bool:
    try:
        quantization.check_precision(weights, activations, load_profile(hardware))
        return True
    except ScenarioError as e:
        assert e.path == "precision.activations"
        return False


@pytest.mark.parametrize("weights, activations, supported", [
    ("fp8", "fp8", {"h100-sxm-80gb", "h200-sxm-141gb", "b200-180gb"}),
    ("fp4", "fp4", {"b200-180gb"}),
    ("int8", "int8", {"a100-sxm-40gb", "a100-sxm-80gb", "a40-48gb", "h100-sxm-80gb", "h200-sxm-141gb", "b200-180gb", "groq-lpu"}),
    ("int4", "int8", {"a100-sxm-40gb", "a100-sxm-80gb", "a40-48gb", "h100-sxm-80gb", "h200-sxm-141gb", "b200-180gb", "groq-lpu"}),
    ("int4", "fp16", set(PROFILES)),
    ("fp8", "fp16", set(PROFILES)),
])
def test_compute_dtypes_only_where_the_hardware_has_them(weights, activations, supported):
    assert {hw for hw in PROFILES if runs_on(hw, weights, activations)} == supported


def test_fp8_on_ampere_names_what_it_has():
    e = error(scenario(hardware="a100-sxm-80gb", weights="fp8", activations="fp8"))
    assert str(e) == "precision.activations: a100-sxm-80gb has no fp8 compute; it has: bf16, fp16, int8"


@pytest.mark.parametrize("weights, activations, hardware, message", [
    ("bf16", "fp8", "h100-sxm-80gb",
     "precision.activations: bf16 weights do not run with fp8 activations; with bf16 weights the activations may be: bf16"),
    ("fp16", "bf16", "h100-sxm-80gb",
     "precision.activations: fp16 weights do not run with bf16 activations; with fp16 weights the activations may be: fp16"),
    ("int4", "fp4", "b200-180gb",
     "precision.activations: int4 weights do not run with fp4 activations; with int4 weights the activations may be: fp16, bf16, int8, fp8"),
    ("fp4", "bf16", "h100-sxm-80gb",
     "precision.activations: fp4 weights do not run with bf16 activations; fp4 weights need fp4 activations, "
     "and h100-sxm-80gb has no fp4 compute (it has: bf16, fp16, fp8, int8)"),
    ("int8", "fp8", "h100-sxm-80gb",
     "precision.activations: int8 weights do not run with fp8 activations; with int8 weights the activations may be: int8, fp16, bf16"),
])
def test_unsupported_pairs_are_refused(weights, activations, hardware, message):
    assert str(error(scenario(hardware=hardware, weights=weights, activations=activations))) == message


@pytest.mark.parametrize("key, value", [("weights", "int2"), ("activations", "int4"), ("kv_cache", "fp4")])
def test_unknown_dtypes_are_refused(key, value):
    data = scenario()
    data["precision"][key] = value
    e = error(data)
    assert e.path == f"precision.{key}" and "must be one of" in str(e)


def test_every_scheme_is_reachable_and_named():
    names = {quantization.scheme_of(s.weights, a).name for s in quantization.SCHEMES for a in s.activations}
    assert {"w16a16", "w8a8-fp8", "w8a16-fp8", "w8a8-int8", "w8a16-int8", "w4a16", "w4a8-int8", "w4a8-fp8",
            "w4a4-fp4"} == names
    assert all(s.source for s in quantization.SCHEMES)


# --- sliding window -----------------------------------------------------------------------------

def test_sliding_window_caps_the_keys_attention_reads():
    mistral = load_model("mistral-7b")          # sliding_window 4096
    full = mistral.model_copy(update={"name": "mistral-no-window", "sliding_window": None})
    bf16 = Precision.of("bf16", "bf16", "bf16")
    step, _ = ideal_step(mistral, bf16)
    nowin, _ = ideal_step(full, bf16)
    # decode: the query sees min(c + 1, 4096) keys
    at = lambda s, c: s.step(BatchShape.from_pairs([(1, c)]))      # noqa: E731
    assert at(step, 10_000).time_s == at(step, 4095).time_s < at(nowin, 10_000).time_s
    assert at(step, 2000).time_s == at(nowin, 2000).time_s
    assert at(step, 20_000).bytes == pytest.approx(at(nowin, 4095).bytes, rel=1e-12)
    # prefill of a fresh 8,192-token prompt: at most 4,096 keys per query (an upper bound of the
    # true 8192 * 4096 - 4096 * 4095 / 2 pairs); shorter prompts are unchanged
    heads, d, W = mistral.num_heads, mistral.head_size, 4096
    [(_, op)] = step.attention_ops(BatchShape.from_pairs([(8192, 0)]))
    assert op.flops == 4 * heads * d * 8192 * W
    [(_, short)], [(_, short_full)] = (s.attention_ops(BatchShape.from_pairs([(2048, 0)])) for s in (step, nowin))
    assert short.flops == short_full.flops == 4 * heads * d * 2048 * 2049 / 2


def test_sliding_window_leaves_the_kv_block_plan_alone():
    mistral, hw = load_model("mistral-7b"), load_profile("a100-sxm-80gb")
    full = mistral.model_copy(update={"sliding_window": None})
    bf16 = Precision.of("bf16", "bf16", "bf16")
    a, b = (plan_memory(m, hw, bf16, 1, 0.9, 8192, 256, 16) for m in (mistral, full))
    assert a == b                                   # per-token KV bytes and capacity are unchanged
    assert kv_tokens_held(mistral, 10_000) == 4096 and kv_tokens_held(full, 10_000) == 10_000
    assert kv_tokens_held(mistral, 100) == 100
