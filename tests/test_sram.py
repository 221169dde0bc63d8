"""SRAM-resident accelerators: the chip count derived from SRAM capacity (checked by hand), the pipeline
across chips, and one scenario file run on a Groq LPU, a Cerebras CS-3 and an H100."""
from __future__ import annotations

import pytest

import simserve
from simserve.cost import pipeline as pl
from simserve.cost.memory import stage_fits
from simserve.scenario import load_scenario

SCENARIO = "sram-groq-llama3-8b"


def test_groq_chips_by_hand():
    r = load_scenario(SCENARIO)
    dep = r.config.deployment
    assert (dep.tensor_parallel, dep.pipeline_parallel) == (16, 9) and r.devices_per_replica == 144
    assert r.derived == ("tensor_parallel", "pipeline_parallel")
    # Llama-3-8B: a layer has 4096 x (4096 + 2 x 1024) + 4096 x 4096 + 3 x 4096 x 14336 parameters, the
    # embedding table and the LM head 128256 x 4096 each; fp16 weights, KV and activations (2 bytes).
    layer, table = 4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336, 128256 * 4096
    assert r.model.params_per_layer == layer == 218_103_808
    usable = 230e6 * 0.95                                  # SRAM per chip x gpu_memory_utilization
    kv_tokens = 8 * 4096                                   # max_num_seqs x max_model_len
    kv_per_layer = 2 * 1 * 128 * 2                         # K and V, 1 of 8 KV heads (replicated at tp 16)
    work = (4 * 512 * 4096 + 512 * 3 * 14336 / 16) * 2     # max_num_batched_tokens 512: hidden + FFN buffers
    logits = 8 * 128256 / 16 * 4                           # fp32 logits of max_num_seqs rows, last stage only
    # 9 stages: 32 layers as [3, 3, 3, 4, 4, 4, 4, 4, 3] (vLLM's split; the extra 5 go before the last)
    assert pl.split_layers(32, 9) == [3, 3, 3, 4, 4, 4, 4, 4, 3]
    first = (3 * layer + table) * 2 / 16 + 3 * kv_per_layer * kv_tokens + work      # 217.3 MB
    middle = 4 * layer * 2 / 16 + 4 * kv_per_layer * kv_tokens + work               # 195.7 MB
    last = (3 * layer + table) * 2 / 16 + 3 * kv_per_layer * kv_tokens + work + logits      # 217.6 MB
    assert (first, middle, last) == pytest.approx((217.32e6, 195.69e6, 217.57e6), rel=1e-4)
    assert max(first, middle, last) <= usable == 218.5e6
    # 8 stages of 4 layers: the first would need (4 x layer + table) x 2 / 16 + KV + workspace = 261 MB
    first8 = (4 * layer + table) * 2 / 16 + 4 * kv_per_layer * kv_tokens + work
    assert first8 == pytest.approx(261.36e6, rel=1e-4) and first8 > usable
    limits = (0.95, 512, 8, kv_tokens)       # memory fraction, token budget, max_num_seqs, KV tokens
    assert stage_fits(r.model, r.hardware, r.precision, 16, 9, *limits)
    assert not stage_fits(r.model, r.hardware, r.precision, 16, 8, *limits)
    # no split at tensor_parallel 8 or less fits: even one layer beside the 1.05 GB / 8 embedding is too much
    assert (128256 * 4096 * 2 / 8 + layer * 2 / 8 + kv_per_layer * 1 * kv_tokens + (4 * 512 * 4096 + 512 * 3 * 14336 / 8) * 2) > usable
    assert not any(stage_fits(r.model, r.hardware, r.precision, tp, pp, *limits)
                   for tp in (1, 2, 4, 8) for pp in range(1, 33))


@pytest.mark.parametrize("hardware, tp, pp", [("cerebras-cs3", 1, 1), ("h100-sxm-80gb", 1, 1)])
def test_the_same_file_on_a_wafer_and_a_gpu(hardware, tp, pp):
    r = load_scenario(SCENARIO, [f"hardware={hardware}"])
    assert (r.config.deployment.tensor_parallel, r.config.deployment.pipeline_parallel) == (tp, pp)


def test_pipeline_parallel_auto_on_a_gpu():
    # 405B at tensor_parallel 8: one node cannot hold the weights; two stages hold them and the KV of
    # 64 sequences of 8,192 tokens (16.9 GB per device)
    r = load_scenario("pipeline-parallel-405b", ["deployment.pipeline_parallel=auto"])
    assert r.config.deployment.pipeline_parallel == 2 and r.derived == ("pipeline_parallel",)


@pytest.fixture(scope="module")
def runs():
    return {hw: simserve.simulate(SCENARIO, [f"hardware={hw}", "workload.num_requests=12"]).summary
            for hw in ("groq-lpu", "cerebras-cs3", "h100-sxm-80gb")}


def test_reports_chips_speed_bound_and_cost(runs):
    for hw, s in runs.items():
        p = s["pipeline"]
        assert s["completed"] == 12
        assert s["devices"] == p["devices_per_replica"] == {"groq-lpu": 144, "cerebras-cs3": 1, "h100-sxm-80gb": 1}[hw]
        assert 0 < s["mean_user_decode_tps"] < p["per_user_decode_tps_bound"]
        assert s["cost_per_million_output_tokens_usd"] > 0
    assert runs["groq-lpu"]["pipeline"]["stage_links"] == ["inter_node"] * 8     # 16 chips per stage, 8 per node


def test_roofline_bound_by_hand(runs):
    # one token: every stage reads its weights at peak bandwidth (or computes 2 FLOPs per weight at peak,
    # whichever is longer), plus one link latency per stage boundary; the embedding table is not read (a
    # lookup reads one row)
    n = load_scenario(SCENARIO).model.num_params - 128256 * 4096
    # Groq: 9 stages of 16 chips, memory-bound (80 TB/s vs 188 TFLOP/s), 8 inter-node hops of 2 us
    groq = 1 / (n * 2 / 16 / 80e12 + 8 * 2e-6)
    assert runs["groq-lpu"]["pipeline"]["per_user_decode_tps_bound"] == pytest.approx(groq)
    # Cerebras: one wafer, compute-bound at batch 1 (2 n / 15,625 TFLOP/s > 2 n bytes / 21 PB/s)
    assert runs["cerebras-cs3"]["pipeline"]["per_user_decode_tps_bound"] == pytest.approx(15.625e15 / (2 * n))
    # H100: memory-bound, 2 n bytes at 3.35 TB/s
    assert runs["h100-sxm-80gb"]["pipeline"]["per_user_decode_tps_bound"] == pytest.approx(3.35e12 / (2 * n))
