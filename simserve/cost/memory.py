"""Device memory plan of one replica: weights, activation workspace, and what is left for the KV cache.

The KV cache is cut into blocks. ``paged`` (vLLM's PagedAttention): blocks of ``block_size`` tokens, taken
as a sequence grows. ``contiguous`` (servers before it): every request reserves ``max_model_len`` tokens
at admission, i.e. one block of ``max_model_len`` tokens, so the cache holds
floor(KV tokens / ``max_model_len``) requests whatever their lengths."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ScenarioError
from ..hardware import HardwareProfile
from ..model import ModelSpec
from .pipeline import StageSpec, stages
from .step import Precision


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """Per device of the replica. All sizes in bytes."""

    capacity_bytes: float
    usable_bytes: float              # capacity * gpu_memory_utilization
    weight_bytes: float
    activation_bytes: float          # peak transient workspace of one iteration
    kv_bytes: float                  # what remains for the KV cache
    kv_bytes_per_token: float        # all layers, K and V, this device's heads
    kv_capacity_tokens: int
    num_blocks: int
    block_size: int                  # tokens per block; max_model_len with the contiguous layout
    kv_layout: str = "paged"         # "paged" or "contiguous"

    def as_dict(self) -> dict:
        return asdict(self)


def weight_bytes_per_device(model: ModelSpec, precision: Precision, tp: int) -> float:
    """Every parameter at the weight dtype's bytes (scales included), split over ``tp`` devices. Expert
    parallelism does not change it: ``ep`` = ``tp`` devices hold ``num_experts / ep`` whole experts each
    instead of ``1/tp`` of every expert (:func:`expert_weight_bytes_per_device`), the same bytes."""
    return model.num_params * precision.weight_bytes / tp


def expert_weight_bytes_per_device(model: ModelSpec, precision: Precision, tp: int, ep: int = 1) -> float:
    """The routed experts' share of :func:`weight_bytes_per_device`: every layer's ``num_experts / ep``
    local experts, each split over the ``tp / ep`` devices of its expert group (ep = tp: whole experts)."""
    local_experts = model.num_experts / ep
    return model.num_layers * local_experts * model.expert_params * precision.weight_bytes * ep / tp


def kv_bytes_per_token(model: ModelSpec, precision: Precision, tp: int) -> float:
    """K and V of one token in every layer, for this device's KV heads (GQA/MQA: ``num_kv_heads``, replicated
    when tp > num_kv_heads), with the KV dtype's per-(token, head) scales."""
    kv_heads = max(1.0, model.num_kv_heads / tp)
    return 2 * model.num_layers * kv_heads * (model.head_size * precision.kv_bytes + precision.kv_scale_bytes)


def kv_tokens_held(model: ModelSpec, num_tokens: int) -> int:
    """Tokens of KV a sequence of ``num_tokens`` needs to keep: with a sliding window, only the last
    ``sliding_window`` (vLLM's sliding-window KV manager keeps about that many, rounded to blocks). The
    engine's block allocation does not apply this cap yet (docs/policies.md); the roofline caps the keys
    attention reads."""
    return num_tokens if model.sliding_window is None else min(num_tokens, model.sliding_window)


def activation_bytes_per_device(model: ModelSpec, precision: Precision, tp: int,
                                max_num_batched_tokens: int, max_num_seqs: int,
                                moe_load_imbalance: float = 1.0) -> float:
    """Peak transient memory of a forward pass over the token budget: a few hidden-size buffers, the FFN
    intermediate (up and gate) and fp32 logits for every sequence that samples. With expert parallelism
    the busiest device holds ``moe_load_imbalance`` times the mean token-expert pairs' intermediates."""
    T = max_num_batched_tokens
    hidden = 4 * T * model.hidden_size
    ffn = T * model.ffn_matrices * model.ffn_size * min(model.experts_per_token, model.num_experts) / tp
    if moe_load_imbalance != 1.0:
        ffn *= moe_load_imbalance
    logits_bytes = max_num_seqs * model.vocab_size / tp * 4.0
    return (hidden + ffn) * precision.act_bytes + logits_bytes


def plan_memory(model: ModelSpec, hw: HardwareProfile, precision: Precision, tp: int,
                gpu_memory_utilization: float, max_num_batched_tokens: int, max_num_seqs: int,
                block_size: int, layout: str = "paged", max_model_len: int | None = None,
                moe_load_imbalance: float = 1.0) -> MemoryPlan:
    """Raises :class:`ScenarioError` (with the numbers) when weights and workspace do not fit, or, with
    the ``contiguous`` layout, when not even one request's ``max_model_len`` tokens of KV fit.
    ``moe_load_imbalance`` is that of expert parallelism (1.0 without it)."""
    capacity = hw.weight_memory_bytes
    usable = capacity * gpu_memory_utilization
    weights = weight_bytes_per_device(model, precision, tp)
    acts = activation_bytes_per_device(model, precision, tp, max_num_batched_tokens, max_num_seqs,
                                       moe_load_imbalance)
    per_token = kv_bytes_per_token(model, precision, tp)
    if weights > usable:
        raise ScenarioError(
            "deployment.tensor_parallel",
            f"{model.name} needs {weights / 1e9:.1f} GB of weights per device at tensor_parallel={tp} "
            f"({precision.weight_bytes:.4g} bytes/param), but {hw.name} has {capacity / 1e9:.1f} GB "
            f"({usable / 1e9:.1f} GB usable at gpu_memory_utilization={gpu_memory_utilization:g}); "
            f"raise tensor_parallel or use a smaller weight precision")
    kv = usable - weights - acts
    blocks = int(kv // (per_token * block_size)) if kv > 0 else 0
    if blocks < 1:
        raise ScenarioError(
            "kv_cache.gpu_memory_utilization",
            f"no room for the KV cache: {usable / 1e9:.2f} GB usable - {weights / 1e9:.2f} GB weights - "
            f"{acts / 1e9:.2f} GB activations (max_num_batched_tokens={max_num_batched_tokens}) leaves "
            f"less than one block of {block_size} tokens; raise tensor_parallel, the memory fraction, or "
            f"lower scheduler.max_num_batched_tokens")
    if layout == "contiguous":
        block_size = max_model_len
        blocks = int(kv // (per_token * block_size))
        if blocks < 1:
            raise ScenarioError(
                "scheduler.max_model_len",
                f"the contiguous KV layout reserves max_model_len={max_model_len} tokens "
                f"({per_token * max_model_len / 1e9:.2f} GB) per request, but the KV cache has "
                f"{kv / 1e9:.2f} GB ({int(kv // per_token):,} tokens); lower scheduler.max_model_len or use "
                f"kv_cache.layout: paged")
    return MemoryPlan(capacity, usable, weights, acts, kv, per_token, blocks * block_size, blocks, block_size,
                      layout)


# --- pipeline parallelism: one plan per stage ---------------------------------------------------------

def stage_weight_bytes_per_device(model: ModelSpec, precision: Precision, tp: int, stage: StageSpec) -> float:
    """A stage's decoder layers, plus the embedding table on the first stage and the LM head on the last
    (with tied embeddings each end holds a copy, as vLLM does), split over ``tp`` devices."""
    table = model.vocab_size * model.hidden_size
    ends = model.embedding_params if stage.first and stage.last else table * (stage.first + stage.last)
    return (stage.num_layers * model.params_per_layer + ends) * precision.weight_bytes / tp


def stage_activation_bytes_per_device(model: ModelSpec, precision: Precision, tp: int, stage: StageSpec,
                                      max_num_batched_tokens: int, max_num_seqs: int,
                                      moe_load_imbalance: float = 1.0) -> float:
    """:func:`activation_bytes_per_device`, with the fp32 logits on the last stage only."""
    full = activation_bytes_per_device(model, precision, tp, max_num_batched_tokens, max_num_seqs, moe_load_imbalance)
    return full if stage.last else full - max_num_seqs * model.vocab_size / tp * 4.0


def stage_kv_bytes_per_token(model: ModelSpec, precision: Precision, tp: int, stage: StageSpec) -> float:
    """:func:`kv_bytes_per_token` for the stage's layers only."""
    return kv_bytes_per_token(model, precision, tp) * stage.num_layers / model.num_layers


def plan_pipeline_memory(model: ModelSpec, hw: HardwareProfile, precision: Precision, tp: int, pp: int,
                         gpu_memory_utilization: float, max_num_batched_tokens: int, max_num_seqs: int,
                         block_size: int, layout: str = "paged", max_model_len: int | None = None,
                         moe_load_imbalance: float = 1.0) -> tuple[MemoryPlan, tuple[MemoryPlan, ...]]:
    """Per stage: its weights and workspace, and the KV of its layers in what is left. A token's KV takes a
    slot on every stage, so the replica holds as many tokens as its tightest stage. Returns that stage's
    plan (with the replica's blocks) and every stage's plan. Raises :class:`ScenarioError` naming the
    stage that does not fit."""
    capacity = hw.weight_memory_bytes
    usable = capacity * gpu_memory_utilization
    plans = []
    for st in stages(model.num_layers, pp):
        weights = stage_weight_bytes_per_device(model, precision, tp, st)
        acts = stage_activation_bytes_per_device(model, precision, tp, st, max_num_batched_tokens, max_num_seqs,
                                                 moe_load_imbalance)
        per_token = stage_kv_bytes_per_token(model, precision, tp, st)
        where = f"stage {st.index} ({st.num_layers} layers{', embedding' * st.first}{', LM head' * st.last})"
        if weights > usable:
            raise ScenarioError(
                "deployment.pipeline_parallel",
                f"{model.name} needs {weights / 1e9:.1f} GB of weights per device on {where} at "
                f"tensor_parallel={tp}, pipeline_parallel={pp} ({precision.weight_bytes:.4g} bytes/param), but "
                f"{hw.name} has {capacity / 1e9:.1f} GB ({usable / 1e9:.1f} GB usable at gpu_memory_utilization="
                f"{gpu_memory_utilization:g}); raise pipeline_parallel or tensor_parallel")
        kv = usable - weights - acts
        unit = block_size if layout == "paged" else max_model_len
        blocks = int(kv // (per_token * unit)) if kv > 0 else 0
        if blocks < 1:
            raise ScenarioError(
                "kv_cache.gpu_memory_utilization",
                f"no room for the KV cache on {where}: {usable / 1e9:.2f} GB usable - {weights / 1e9:.2f} GB "
                f"weights - {acts / 1e9:.2f} GB activations leaves less than one block of {unit} tokens; raise "
                f"pipeline_parallel or tensor_parallel, or lower scheduler.max_num_batched_tokens")
        plans.append(MemoryPlan(capacity, usable, weights, acts, kv, per_token, blocks * unit, blocks, unit, layout))
    tight = min(plans, key=lambda p: p.num_blocks)
    return tight, tuple(plans)


def stage_fits(model: ModelSpec, hw: HardwareProfile, precision: Precision, tp: int, pp: int,
               gpu_memory_utilization: float, max_num_batched_tokens: int, max_num_seqs: int,
               kv_tokens: int, moe_load_imbalance: float = 1.0) -> bool:
    """Whether every stage of ``tp x pp`` devices holds its weights, its workspace and the KV of
    ``kv_tokens`` tokens for its layers."""
    usable = hw.weight_memory_bytes * gpu_memory_utilization
    for st in stages(model.num_layers, pp):
        need = (stage_weight_bytes_per_device(model, precision, tp, st)
                + stage_activation_bytes_per_device(model, precision, tp, st, max_num_batched_tokens,
                                                    max_num_seqs, moe_load_imbalance)
                + stage_kv_bytes_per_token(model, precision, tp, st) * kv_tokens)
        if need > usable:
            return False
    return True
