"""Quantization schemes: which weight and activation dtypes run together, on which peak, at how many bytes.

A scenario names three dtypes (``precision: {weights, activations, kv_cache}``). The activations' dtype
is the compute dtype of the GEMMs: it picks the hardware profile's ``peak_tflops`` column, so the
device must list it. The weights' dtype sets the bytes every GEMM reads and the memory the weights
take; a weight dtype narrower than the activations is *weight-only* quantization (dequantized to the
activations' dtype inside the GEMM). :data:`SCHEMES` lists the pairs that exist in serving stacks;
any other pair is refused. The KV cache dtype is independent of both.

Bytes per value include the amortised scales of the formats named in the sources below.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import ScenarioError
from .hardware import HardwareProfile

WeightDtype = Literal["fp16", "bf16", "fp8", "int8", "int4", "fp4"]
ActivationDtype = Literal["fp16", "bf16", "fp8", "int8", "fp4"]
KVDtype = Literal["fp16", "bf16", "fp8", "int8", "int4"]

SIXTEEN_BIT = ("fp16", "bf16")

# Activations between kernels (residual stream, norms, all-reduce, attention Q/O) stay 16-bit in every
# scheme; W8A8/W4A8/FP4 quantize a GEMM's input inside (or fused into) the GEMM.
ACTIVATION_BYTES = 2.0

# Bytes per weight, scales included. int4: one fp16 scale per group of 128 weights (GPTQ/AWQ/Marlin
# format, 4.125 bits): IST-DASLab/marlin README, "optimal 3.87x (note the 0.125 bits storage overhead of
# the group scales)", 16 / 4.125 = 3.88. fp4: NVFP4, one FP8 E4M3 scale per block of 16 values (4.5
# bits; the per-tensor FP32 scale is negligible): Intel Neural Compressor "NVFP4 Quantization" format
# table; cuTile "Inference with NVFP4" ("8 packed FP4 bytes plus one FP8 scale byte" per 16 values).
# fp8/int8: per-tensor or per-output-channel scales, under 0.1% of the weights: left out.
WEIGHT_BYTES: dict[str, float] = {
    "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5 + 2.0 / 128, "fp4": 0.5 + 1.0 / 16,
}

# Bytes per cached K or V element, and bytes of scale + zero point per (token, KV head) for K and for V
# each. int8/int4 KV are quantized per token and head, asymmetrically, with an fp16 scale and an fp16
# zero point: mit-han-lab/qserve qserve/worker/cache_engine.py (num_bytes_per_block adds
# block_size * num_heads * 4 with zero points); LMDeploy docs "INT4/INT8 KV Cache" (per-head, per-token,
# asymmetric). fp8 KV uses per-tensor scales (vLLM docs "Quantized KV Cache"): none counted.
KV_BYTES: dict[str, float] = {"fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
KV_SCALE_BYTES: dict[str, float] = {"fp16": 0.0, "bf16": 0.0, "fp8": 0.0, "int8": 4.0, "int4": 4.0}


@dataclass(frozen=True, slots=True)
class Scheme:
    """A (weights, activations) pair that serving stacks run. The GEMMs compute in the activations' dtype."""

    name: str
    weights: str
    activations: tuple[str, ...]
    methods: str
    source: str


SCHEMES: tuple[Scheme, ...] = (
    Scheme("w16a16", "fp16", ("fp16",), "unquantized", "-"),
    Scheme("w16a16", "bf16", ("bf16",), "unquantized", "-"),
    Scheme("w8a8-fp8", "fp8", ("fp8",), "FP8 weights and activations (FP8 tensor cores, Ada/Hopper/Blackwell)",
           "vLLM docs 'FP8 W8A8'; NVIDIA Model Optimizer support matrix"),
    Scheme("w8a16-fp8", "fp8", SIXTEEN_BIT, "FP8 weight-only, FP8 Marlin on GPUs without FP8 compute",
           "vLLM docs 'FP8 W8A8' (Turing/Ampere run W8A16 via Marlin); vllm-project/vllm PR #5975"),
    Scheme("w8a8-int8", "int8", ("int8",), "SmoothQuant W8A8 (INT8 tensor cores, Ampere and later)",
           "NVIDIA Model Optimizer support matrix (INT8 SmoothQuant)"),
    Scheme("w8a16-int8", "int8", SIXTEEN_BIT, "INT8 weight-only (GPTQ 8-bit, TensorRT-LLM W8A16)",
           "TensorRT-LLM quantization docs (W8A16 weight-only)"),
    Scheme("w4a16", "int4", SIXTEEN_BIT, "GPTQ/AWQ 4-bit weight-only (Marlin kernels)",
           "IST-DASLab/marlin README; NVIDIA Model Optimizer support matrix (W4A16 AWQ)"),
    Scheme("w4a8-int8", "int4", ("int8",), "QServe QoQ W4A8 (INT8 tensor cores); pairs with int4 KV",
           "Lin et al. 2024, QServe: W4A8KV4 (arXiv:2405.04532)"),
    Scheme("w4a8-fp8", "int4", ("fp8",), "TensorRT-LLM W4A8 AWQ (INT4 weights, FP8 activations, Ada and later)",
           "NVIDIA Model Optimizer support matrix (W4A8)"),
    Scheme("w4a4-fp4", "fp4", ("fp4",), "NVFP4 weights and activations (FP4 tensor cores, Blackwell)",
           "NVIDIA Model Optimizer support matrix (FP4: Blackwell and later)"),
)


def scheme_of(weights: str, activations: str) -> Scheme | None:
    """The scheme a (weights, activations) pair belongs to, or None when no serving stack runs it."""
    for s in SCHEMES:
        if s.weights == weights and activations in s.activations:
            return s
    return None


def allowed_activations(weights: str) -> list[str]:
    return [a for s in SCHEMES if s.weights == weights for a in s.activations]


def attention_dtype(activations: str) -> str:
    """Dtype of attention and element-wise math: the activations' if 16-bit, else fp16 (the KV cache is
    dequantized to 16-bit inside the attention kernel; FP8 attention, e.g. FlashAttention-3, is not modelled)."""
    return activations if activations in SIXTEEN_BIT else "fp16"


def check_precision(weights: str, activations: str, hw: HardwareProfile) -> Scheme:
    """The scheme of a scenario's precision on ``hw``, or a ScenarioError naming the key and what is allowed."""
    if activations not in hw.peak_tflops:
        raise ScenarioError("precision.activations", f"{hw.name} has no {activations} compute; it has: "
                            + ", ".join(sorted(hw.peak_tflops)))
    scheme = scheme_of(weights, activations)
    if scheme is None:
        allowed = allowed_activations(weights)
        ok = [a for a in allowed if a in hw.peak_tflops]
        where = (f"with {weights} weights the activations may be: {', '.join(ok)}" if ok else
                 f"{weights} weights need {' or '.join(allowed)} activations, and {hw.name} has no "
                 f"{' or '.join(allowed)} compute (it has: {', '.join(sorted(hw.peak_tflops))})")
        raise ScenarioError("precision.activations",
                            f"{weights} weights do not run with {activations} activations; {where}")
    att = attention_dtype(activations)
    if att not in hw.peak_tflops:
        raise ScenarioError("precision.activations", f"{hw.name} has no {att} compute for attention; it has: "
                            + ", ".join(sorted(hw.peak_tflops)))
    return scheme
