"""Pipeline parallelism: how layers are split into stages, which link joins two stages, what the
activations cost to send, and the closed forms of a pipeline's bubble and per-user speed bound.

A replica of ``tp x pp`` devices: stage ``s`` (0-based) is devices ``s*tp .. (s+1)*tp - 1``, numbered
node by node (``interconnect.devices_per_node`` per node). Tensor rank ``r`` of stage ``s`` sends its
activations to rank ``r`` of stage ``s + 1``. Pure functions; units in the names.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..hardware import HardwareProfile, Link, OpEfficiency
from . import ops

INTRA_NODE, INTER_NODE = "intra_node", "inter_node"


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One pipeline stage: its decoder layers, and whether it holds the embedding (first) and the final
    norm and LM head (last). A single stage (``pp = 1``) is both first and last."""

    index: int
    num_layers: int
    first: bool
    last: bool


def split_layers(num_layers: int, pp: int) -> list[int]:
    """Decoder layers per stage, as vLLM splits them (``vllm.distributed.utils.get_pp_indices``): ``L // pp``
    each, and the ``L % pp`` left over go one each to the stages just before the last, counting back
    (the last stage already carries the LM head). 126 layers on 4 stages: [31, 32, 32, 31]."""
    if not 1 <= pp <= num_layers:
        raise ValueError(f"pipeline_parallel must be between 1 and {num_layers}, got {pp}")
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return parts


def stages(num_layers: int, pp: int) -> list[StageSpec]:
    return [StageSpec(i, n, i == 0, i == pp - 1) for i, n in enumerate(split_layers(num_layers, pp))]


def boundary_crosses_node(stage: int, tp: int, devices_per_node: int) -> bool:
    """Whether some tensor rank of ``stage`` and its peer in ``stage + 1`` sit on different nodes."""
    return any((stage * tp + r) // devices_per_node != ((stage + 1) * tp + r) // devices_per_node
               for r in range(tp))


def boundary_links(hw: HardwareProfile, tp: int, pp: int) -> list[str]:
    """``intra_node`` or ``inter_node`` for each of the ``pp - 1`` stage boundaries."""
    dpn = hw.interconnect.devices_per_node
    return [INTER_NODE if boundary_crosses_node(s, tp, dpn) else INTRA_NODE for s in range(pp - 1)]


def link_of(hw: HardwareProfile, name: str) -> Link:
    return hw.interconnect.inter_node if name == INTER_NODE else hw.interconnect.intra_node


def activation_bytes(num_tokens: int, hidden_size: int, act_bytes: float) -> float:
    """What one device sends to the next stage for a micro-batch: the hidden state of every token."""
    return num_tokens * hidden_size * act_bytes


def activation_transfer_s(num_tokens: int, hidden_size: int, act_bytes: float, link: Link,
                          eff: OpEfficiency) -> float:
    """Point-to-point send of a micro-batch's activations over ``link`` (``ops.send_recv_time``)."""
    msg = activation_bytes(num_tokens, hidden_size, act_bytes)
    return ops.send_recv_time(msg, link.bandwidth_gb_s * 1e9, link.latency_us * 1e-6, eff).time_s


def gpipe_bubble_fraction(pp: int, num_microbatches: int) -> float:
    """Idle share of stage time while ``m`` micro-batches of equal stage time ``t`` flow through ``p``
    stages back to back (GPipe, forward only): each stage is busy ``m t`` of ``(m + p - 1) t``."""
    return (pp - 1) / (num_microbatches + pp - 1)


def per_user_decode_tps_bound(stage_weight_bytes: list[float], stage_flops: list[float],
                              bandwidth_bytes_s: float, peak_flops_s: float,
                              hop_latencies_s: list[float]) -> float:
    """Roofline bound on one user's decode speed, tokens/s: a token passes every stage in turn, each
    reading its devices' weights at peak bandwidth (or computing at peak, whichever is longer), and
    each hop costs at least the link latency. KV reads, overheads and efficiencies are left out, so no
    simulated run can beat it."""
    time_s = sum(max(b / bandwidth_bytes_s, f / peak_flops_s) for b, f in zip(stage_weight_bytes, stage_flops))
    return 1.0 / (time_s + sum(hop_latencies_s))
