"""Hardware profiles: frozen data read from ``hardware_profiles/*.yaml``, every number with a source.

Units are in the field names. Bandwidths are per device and per direction. ``efficiency`` holds the
step-time core's achievable fractions and fixed overheads per operator class; ``simserve calibrate``
fits them against measured kernel timings and records how in ``calibration``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from . import resources
from .config.base import Frozen, load_validated
from .errors import ScenarioError

Dtype = Literal["fp32", "tf32", "fp16", "bf16", "fp8", "int8", "fp4", "int4"]


class Memory(Frozen):
    capacity_gb: float = Field(gt=0, le=1e6, description="Device memory (HBM/GDDR) in 1e9 bytes")
    bandwidth_gb_s: float = Field(gt=0, description="Peak device memory bandwidth, 1e9 bytes/s")


class Sram(Frozen):
    capacity_mb: float = Field(gt=0, le=1e9, description="On-chip SRAM usable for weights/KV, 1e6 bytes")
    bandwidth_tb_s: float = Field(gt=0, description="On-chip SRAM bandwidth, 1e12 bytes/s")


class Link(Frozen):
    bandwidth_gb_s: float = Field(gt=0, description="Per device, per direction, 1e9 bytes/s")
    latency_us: float = Field(ge=0, description="One-way latency of a small message, microseconds")


class Interconnect(Frozen):
    devices_per_node: int = Field(ge=1, description="Devices sharing the intra-node fabric")
    intra_node: Link = Field(description="NVLink-class fabric inside a node")
    inter_node: Link = Field(description="Network between nodes (InfiniBand/RoCE or vendor fabric)")
    switch_reduction: bool = Field(
        default=False,
        description="The intra-node switch reduces in the fabric (NVLink SHARP on third-generation NVSwitch): "
                    "an all-reduce moves the message about once per device instead of a ring's 2 (p-1)/p")


class Power(Frozen):
    idle_w: float = Field(ge=0, description="Power of an idle device, watts")
    busy_w: float = Field(gt=0, description="Power of a device running a batch, watts")


class Price(Frozen):
    usd_per_device_hour: float = Field(gt=0)
    date: str = Field(description="When this price was observed (YYYY-MM)")


class GemmTile(Frozen):
    """A GEMM thread block's output tile: ``rows`` of the activation (tokens) by ``cols`` of the weight."""

    rows: int = Field(gt=0, le=4096)
    cols: int = Field(gt=0, le=4096)


class OpEfficiency(Frozen):
    """time = overhead + max(flops / (peak * flops_fraction), bytes / (bandwidth * bandwidth_fraction)).

    The last two fields are optional shape terms of :mod:`simserve.cost.ops`; their defaults give exactly
    the plain roofline above. ``overlap_exponent`` joins compute and memory time (GEMM, attention);
    ``unit_overhead_ns`` is a fixed cost per parallel work unit (attention: one sequence times one head).
    Streaming kernels add ``row_bandwidth_gb_s``, ``concurrent_blocks``, ``reduction_overhead_us`` and ``l2_speedup`` (see
    :func:`simserve.cost.ops.streaming_s`); prefill attention uses ``concurrent_blocks`` for its occupancy.
    Collectives use ``bandwidth_fraction`` and ``overhead_us`` plus ``hop_latency_scale`` (all-reduce: see
    :func:`simserve.cost.ops.allreduce_s`); an all-reduce on a reducing switch adds ``switch_bandwidth_fraction``.
    GEMMs add ``splitk_latency_ns``, ``row_tile`` and, where the device's kernels run their grid in whole
    waves, ``wave_tile`` with ``concurrent_blocks`` (see :func:`simserve.cost.ops.gemm_time`).
    Decode attention uses ``row_bandwidth_gb_s`` (a thread block's walk over its KV tiles) and
    ``relayout_overhead_us`` (the small kernels around it); its ``unit_overhead_ns`` runs alongside the
    roofline rather than after it (see :func:`simserve.cost.ops.decode_attention_time`). MoE layers' fused
    experts add ``unit_overhead_ns`` per token-expert pair (see :func:`simserve.cost.ops.moe_time`).
    """

    flops_fraction: float = Field(gt=0, le=1)
    bandwidth_fraction: float = Field(gt=0, le=1)
    overhead_us: float = Field(ge=0, description="Fixed launch/latency cost per kernel, microseconds")
    overlap_exponent: float | None = Field(
        default=None, ge=1,
        description="p in (compute^p + memory^p)^(1/p): None is max() (full overlap), 1 is the sum (none)")
    unit_overhead_ns: float = Field(
        default=0.0, ge=0, description="Attention: fixed cost per (sequence, head) work unit, nanoseconds")
    row_bandwidth_gb_s: float | None = Field(
        default=None, gt=0,
        description="Streaming kernels with one thread block per token, decode attention's walk over KV tiles: "
                    "bytes one block moves, 1e9 bytes/s")
    concurrent_blocks: float | None = Field(
        default=None, gt=0,
        description="Thread blocks running at once (about SMs x blocks per SM): streaming kernels' token rows, "
                    "prefill attention's query tiles x heads, GEMM tiles with a wave_tile; fewer leave SMs idle")
    reduction_overhead_us: float = Field(
        default=0.0, ge=0,
        description="Streaming kernels with a block-wide reduction (norms): extra cost per row (per wave of "
                    "concurrent rows), microseconds")
    l2_speedup: float = Field(
        default=1.0, ge=1,
        description="Streaming kernels whose bytes fit in the device's L2 cache (l2_cache_mb): how many times "
                    "faster than DRAM they move; 1 is no cache")
    splitk_latency_ns: float = Field(
        default=0.0, ge=0,
        description="GEMM: latency that grows with the square root of the inner dimension k (split-K balances a "
                    "block's walk over k/splits against a reduction over splits), nanoseconds per sqrt(k)")
    row_tile: int | None = Field(
        default=None, gt=0,
        description="GEMM: activation rows one thread block's tile covers; the compute time counts whole tiles "
                    "(ops.gemm_rows); None: the rows themselves")
    wave_tile: GemmTile | None = Field(
        default=None,
        description="GEMM: the thread-block tile whose grid runs in whole "
                    "waves of concurrent_blocks tiles once it exceeds one wave (ops.gemm_wave_fill); None: no waves")
    hop_latency_scale: float = Field(
        default=1.0, ge=0, description="Collectives: link latencies per algorithm stage (all-reduce) or hop (send/recv)")
    relayout_overhead_us: float = Field(
        default=0.0, ge=0,
        description="Decode attention with grouped-query heads, several sequences and several KV heads: the two "
                    "copies that regroup queries and outputs (FlashAttention-2), microseconds together, plus "
                    "their bytes; a split context's combine kernel costs the same microseconds")
    switch_bandwidth_fraction: float | None = Field(
        default=None, gt=0, le=1,
        description="All-reduce reduced in the switch (interconnect.switch_reduction): achievable fraction of the "
                    "link bandwidth when each device sends and receives the message once; None: never used")


class Efficiency(Frozen):
    gemm: OpEfficiency
    attention_prefill: OpEfficiency
    attention_decode: OpEfficiency
    elementwise: OpEfficiency
    allreduce: OpEfficiency = Field(description="bandwidth_fraction of the link's bus bandwidth; overhead per call")
    send_recv: OpEfficiency
    gemm_fp8: OpEfficiency | None = Field(
        default=None, description="GEMMs with FP8 activations (W8A8-FP8: vLLM's per-tensor FP8 linear layers); "
                                  "None: the gemm parameters at the FP8 peak")
    moe: OpEfficiency | None = Field(
        default=None, description="MoE layers' fused experts kernels (ops.moe_time); None: the gemm fractions")
    step_overhead_us: float = Field(ge=0, description="Per-iteration framework cost (scheduling, sampling, launch)")


class Calibration(Frozen):
    calibrated: bool = Field(description="True when efficiency was fitted to measurements of this device")
    method: str = Field(description="How the efficiency numbers were obtained")
    data_sha256: str | None = None
    date: str | None = None
    heldout_p90_abs_pct_err: float | None = Field(default=None, ge=0)
    moe_heldout_p90_abs_pct_err: float | None = Field(
        default=None, ge=0, description="Held-out p90 error of the fused MoE kernels (MoE models' error bands)")
    fp8_heldout_p90_abs_pct_err: float | None = Field(
        default=None, ge=0, description="Held-out p90 error of the FP8 linear layers (error bands with FP8 activations)")


class HardwareProfile(Frozen):
    name: str
    display_name: str
    kind: Literal["gpu", "sram_accelerator"]
    peak_tflops: dict[Dtype, float] = Field(description="Dense (non-sparse) peak per compute dtype, 1e12 FLOP/s")
    sm_count: int | None = Field(default=None, ge=1,
                                 description="GPUs: streaming multiprocessors, the thread blocks that run at once "
                                             "for a kernel of one block per SM")
    l2_cache_mb: float | None = Field(default=None, gt=0,
                                      description="GPUs: L2 cache, 1e6 bytes (streaming kernels whose tensors fit in "
                                                  "it move them faster than DRAM); None: not modelled")
    gemm_row_tile: int | None = Field(default=None, ge=1,
                                      description="GPUs: activation rows of one thread block's tile in the device's "
                                                  "dense GEMM kernels (ops.gemm_rows); None: 64, the calibration's "
                                                  "default")
    gemm_wave_tile: GemmTile | None = Field(
        default=None,
        description="GPUs: the dense GEMM thread-block tile whose grid runs in whole waves "
                    "over the SMs beyond one wave (ops.gemm_wave_fill); None: the kernels fill the last wave")
    memory: Memory | None = Field(default=None, description="Off-chip memory; absent on SRAM-only chips")
    sram: Sram | None = None
    host_link: Link = Field(description="Device <-> host memory link (PCIe or C2C)")
    interconnect: Interconnect
    power: Power
    pricing: dict[str, Price] = Field(description="Pricing models; 'on_demand' is the default")
    efficiency: Efficiency
    calibration: Calibration
    sources: dict[str, str] = Field(description="Dotted path of a number (or its group) -> where it comes from")

    @model_validator(mode="after")
    def _check(self) -> "HardwareProfile":
        if self.memory is None and self.sram is None:
            raise ValueError("a profile needs 'memory' or 'sram'")
        if "on_demand" not in self.pricing:
            raise ValueError("pricing needs an 'on_demand' entry")
        for dtype, value in self.peak_tflops.items():
            if value <= 0:
                raise ValueError(f"peak_tflops.{dtype} must be > 0")
        return self

    # Derived quantities used by the cost model (bytes and seconds, never GB or us).
    @property
    def weight_memory_bytes(self) -> float:
        """Capacity that holds weights and KV: HBM if present, else on-chip SRAM."""
        if self.memory is not None:
            return self.memory.capacity_gb * 1e9
        return self.sram.capacity_mb * 1e6

    @property
    def weight_bandwidth_bytes_s(self) -> float:
        if self.memory is not None:
            return self.memory.bandwidth_gb_s * 1e9
        return self.sram.bandwidth_tb_s * 1e12

    def peak_flops_s(self, dtype: str) -> float:
        """Peak dense FLOP/s for a compute dtype; ScenarioError if the device lacks it."""
        if dtype not in self.peak_tflops:
            known = ", ".join(sorted(self.peak_tflops))
            raise ScenarioError("precision", f"{self.name} has no {dtype} compute; it supports: {known}")
        return self.peak_tflops[dtype] * 1e12


def load_profile(ref: str, base: Path | None = None, where: str = "hardware") -> HardwareProfile:
    """Load a bundled profile by name or a profile file by path."""
    path = resources.resolve("hardware_profiles", ref, base=base)
    if path is None:
        known = ", ".join(resources.bundled_names("hardware_profiles"))
        raise ScenarioError(where, f"unknown profile '{ref}', known: {known} (or a path to a .yaml file)")
    return load_validated(HardwareProfile, path, "a hardware profile")
