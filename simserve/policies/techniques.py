"""Serving techniques chosen by scenario keys rather than by a registered policy name: what
``simserve policies`` lists after the registries, so every technique the simulator models shows up by
kind with the YAML keys that select it and the module that models it. A test checks every key against
the scenario schema and every module against the package, so the list cannot drift."""
from __future__ import annotations

# (kind, name, summary, YAML keys, module that models it)
TECHNIQUES: tuple[tuple[str, str, str, tuple[str, ...], str], ...] = (
    ("kv_cache", "paged", "KV in fixed-size blocks allocated as tokens arrive (vLLM PagedAttention).",
     ("kv_cache.layout", "kv_cache.block_size"), "simserve.engine.kv"),
    ("kv_cache", "contiguous", "max_model_len of KV reserved per request at admission; the waste is reported.",
     ("kv_cache.layout",), "simserve.cost.memory"),
    ("kv_cache", "prefix_caching", "Full blocks keyed by content hash and shared, LRU eviction; Mooncake hash_ids.",
     ("kv_cache.enable_prefix_caching",), "simserve.engine.prefix"),
    ("kv_cache", "offload_tier", "A second prefix-cache tier in host memory or SSD with its capacity and bandwidth.",
     ("kv_cache.offload",), "simserve.engine.kv"),
    ("kv_cache", "swap_preemption", "Preempted requests' KV copied to host memory and back over the host link.",
     ("scheduler.preemption", "kv_cache.swap_space_gb"), "simserve.engine.swap"),
    ("sampling", "parallel_sampling", "n sequences per request sharing the prompt's blocks copy-on-write.",
     ("sampling.n",), "simserve.engine.scheduler"),
    ("sampling", "beam_search", "beam_width beams reshuffled every iteration; shared blocks copied on write.",
     ("sampling.beam_width", "sampling.beam_reshuffle"), "simserve.engine.beam"),
    ("quantization", "precision", "Bytes per weight, compute dtype and KV bytes (fp8, int8, int4, W4A8, fp4).",
     ("precision.weights", "precision.activations", "precision.kv_cache"), "simserve.quantization"),
    ("parallelism", "tensor", "Weights and heads sharded; two all-reduces per layer on the link the group spans.",
     ("deployment.tensor_parallel",), "simserve.cost.step"),
    ("parallelism", "pipeline", "Stages as SimPy processes fed micro-batches; bubbles and activation transfer.",
     ("deployment.pipeline_parallel",), "simserve.engine.pipeline"),
    ("parallelism", "expert", "MoE experts spread over devices, all-to-all per MoE layer, load imbalance.",
     ("deployment.expert_parallel", "deployment.moe_load_imbalance"), "simserve.cost.step"),
    ("parallelism", "sram_chips", "tensor_parallel/pipeline_parallel 'auto': chips derived from on-chip memory.",
     ("deployment.tensor_parallel", "deployment.pipeline_parallel"), "simserve.cost.memory"),
    ("cluster", "disaggregation", "Separate prefill and decode pools; KV crosses the link between them.",
     ("deployment.disaggregation",), "simserve.engine.disaggregation"),
    ("cluster", "admission_control", "Queue limit and request timeout; rejected requests are reported.",
     ("admission.max_queue", "admission.request_timeout_s"), "simserve.engine.admission"),
    ("cluster", "failures", "Replica failures at set times or by MTBF, spot reclaims with notice.",
     ("failures",), "simserve.engine.failures"),
)


def describe() -> list[dict]:
    return [{"kind": kind, "name": name, "summary": summary, "params": list(keys), "module": module}
            for kind, name, summary, keys, module in TECHNIQUES]
